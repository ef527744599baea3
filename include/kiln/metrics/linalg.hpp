// kiln/metrics/linalg.hpp — small dense float64 linear algebra for the metrics: a row-major Matrix,
// products, the symmetric eigen-decomposition (Householder tridiagonalization + implicit QL) and
// the symmetric positive semi-definite square root. Builds on core/error.hpp and the CPU backend's
// gemm (backend/cpu/gemm.hpp) and parallel_for (backend/cpu/thread_pool.hpp).
#pragma once

#include <kiln/backend/cpu/gemm.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace kiln::metrics::linalg {

// A dense rows × cols matrix of doubles stored row-major in `values`.
struct Matrix {
  index_t rows = 0, cols = 0;
  std::vector<double> values;

  Matrix() = default;
  Matrix(index_t rows_, index_t cols_, double fill = 0.0)
      : rows(rows_), cols(cols_), values(checked_size(rows_, cols_), fill) {}

  static Matrix identity(index_t n) {
    Matrix m(n, n);
    for (index_t i = 0; i < n; ++i) m(i, i) = 1.0;
    return m;
  }

  double& operator()(index_t i, index_t j) {
    return values[static_cast<std::size_t>(i * cols + j)];
  }
  double operator()(index_t i, index_t j) const {
    return values[static_cast<std::size_t>(i * cols + j)];
  }
  double* data() { return values.data(); }
  const double* data() const { return values.data(); }
  double* row(index_t i) { return values.data() + i * cols; }
  const double* row(index_t i) const { return values.data() + i * cols; }
  bool is_square() const { return rows == cols; }

 private:
  static std::size_t checked_size(index_t r, index_t c) {
    if (r < 0 || c < 0)
      throw ValueError("kiln::metrics::linalg::Matrix: negative extent " + std::to_string(r) +
                       " x " + std::to_string(c));
    return static_cast<std::size_t>(r) * static_cast<std::size_t>(c);
  }
};

// "3 x 4"
inline std::string shape_text(const Matrix& m) {
  return std::to_string(m.rows) + " x " + std::to_string(m.cols);
}

// a · b with the CPU backend's threaded GEMM (O(rows·cols·inner)).
inline Matrix matmul(const Matrix& a, const Matrix& b) {
  if (a.cols != b.rows)
    throw ShapeError("kiln::metrics::linalg::matmul: inner extents differ: " + shape_text(a) +
                     " times " + shape_text(b));
  Matrix c(a.rows, b.cols);
  backend::cpu::gemm(false, false, a.rows, b.cols, a.cols, 1.0, a.data(), a.cols, b.data(), b.cols,
                     0.0, c.data(), c.cols);
  return c;
}

// aᵀ · b without forming aᵀ.
inline Matrix matmul_transposed_left(const Matrix& a, const Matrix& b) {
  if (a.rows != b.rows)
    throw ShapeError(
        "kiln::metrics::linalg::matmul_transposed_left: aᵀ·b needs equal row counts: " +
        shape_text(a) + " and " + shape_text(b));
  Matrix c(a.cols, b.cols);
  backend::cpu::gemm(true, false, a.cols, b.cols, a.rows, 1.0, a.data(), a.cols, b.data(), b.cols,
                     0.0, c.data(), c.cols);
  return c;
}

inline Matrix transpose(const Matrix& a) {
  Matrix t(a.cols, a.rows);
  for (index_t i = 0; i < a.rows; ++i)
    for (index_t j = 0; j < a.cols; ++j) t(j, i) = a(i, j);
  return t;
}

inline double trace(const Matrix& a) {
  if (!a.is_square())
    throw ShapeError("kiln::metrics::linalg::trace: needs a square matrix, got " + shape_text(a));
  double t = 0;
  for (index_t i = 0; i < a.rows; ++i) t += a(i, i);
  return t;
}

// The QL iteration did not converge (does not happen for finite symmetric input in practice).
class ConvergenceError : public Error {
 public:
  using Error::Error;
};

// Eigenvalues in ascending order and, when asked for, the orthonormal eigenvectors as the COLUMNS
// of `vectors` (column j belongs to values[j]), as numpy.linalg.eigh returns them.
struct SymmetricEigen {
  std::vector<double> values;
  Matrix vectors;
};

namespace detail {

// Rows per parallel_for chunk so that one chunk does at least ~32k flops on rows of `length`.
inline index_t rows_per_chunk(index_t length) {
  return std::max<index_t>(4, 32768 / std::max<index_t>(length, 1));
}

inline void check_symmetric_input(const char* op, const Matrix& a) {
  if (!a.is_square())
    throw ShapeError(std::string("kiln::metrics::linalg::") + op + ": needs a square matrix, got " +
                     shape_text(a));
  for (index_t i = 0; i < a.rows; ++i)
    for (index_t j = 0; j <= i; ++j)
      if (!std::isfinite(a(i, j)))
        throw ValueError(std::string("kiln::metrics::linalg::") + op + ": element (" +
                         std::to_string(i) + ", " + std::to_string(j) + ") is not finite");
}

// The Householder reflector H = I − τ v vᵀ with H x = β e₁ for x (length m >= 1), LAPACK
// dlarfg's convention: β = −sign(x₀)‖x‖, τ = (β − x₀)/β, v = (1, x₁/(x₀ − β), ...) written over x
// (no cancellation: x₀ and β have opposite signs). When x₁.. are already zero, H = I: τ = 0, β =
// x₀.
struct Reflector {
  double beta, tau;
};
inline Reflector make_reflector(double* x, index_t m) {
  double tail = 0;
  for (index_t i = 1; i < m; ++i) tail += x[i] * x[i];
  if (tail == 0.0) return {x[0], 0.0};
  const double alpha = x[0];
  const double beta = -std::copysign(std::sqrt(alpha * alpha + tail), alpha);
  const double scale = 1.0 / (alpha - beta);
  x[0] = 1.0;
  for (index_t i = 1; i < m; ++i) x[i] *= scale;
  return {beta, (beta - alpha) / beta};
}

// y = B x for the symmetric block B = a[base:, base:] (a is n × n row-major) reading only B's
// lower triangle, once: row r adds a[r][j]·x_j to y_r and a[r][j]·x_r to y_j for j < r. That
// halves the memory read of a row-by-row product, which bounds the speed at large n. The rows
// are cut into `groups` bands of equal triangle area, each accumulating into its own buffer in
// `partial`; the buffers are summed in a fixed order, so the result is the same for every thread
// count.
inline void symmetric_matvec_lower(const double* a, index_t n, index_t base, const double* x,
                                   double* y, std::vector<double>& partial) {
  constexpr index_t groups = 8;
  const index_t m = n - base;
  partial.assign(static_cast<std::size_t>(groups * m), 0.0);
  index_t bounds[groups + 1];
  for (index_t g = 0; g <= groups; ++g)
    bounds[g] = static_cast<index_t>(
        std::lround(static_cast<double>(m) * std::sqrt(static_cast<double>(g) / groups)));
  backend::cpu::parallel_for(0, groups, 1, [&](index_t first, index_t last) {
    for (index_t g = first; g < last; ++g) {
      double* out = partial.data() + g * m;
      for (index_t i = bounds[g]; i < bounds[g + 1]; ++i) {
        const double* row = a + (base + i) * n + base;
        const double xi = x[i];
        double sum = row[i] * xi;
        for (index_t j = 0; j < i; ++j) {
          sum += row[j] * x[j];
          out[j] += row[j] * xi;
        }
        out[i] += sum;
      }
    }
  });
  for (index_t i = 0; i < m; ++i) {
    double sum = 0;
    for (index_t g = 0; g < groups; ++g) sum += partial[static_cast<std::size_t>(g * m + i)];
    y[i] = sum;
  }
}

// Householder reduction of the symmetric n × n matrix `a` (full storage; only its lower triangle
// is read) to tridiagonal T = Qᵀ A Q with Q = H_0 H_1 ⋯ H_{n-3}: diagonal `d` (n), subdiagonal `e`
// (e[i] = T[i+1][i], e[n-1] = 0). Step k reflects x = A[k+1:, k] onto β e₁ (make_reflector) and
// updates the trailing block A₂₂ ← H A₂₂ H = A₂₂ − v wᵀ − w vᵀ with p = τ A₂₂ v and
// w = p − (τ/2)(pᵀv) v (Golub & Van Loan, Matrix Computations, 4th ed., §8.3.1). On return row k
// of `a` holds v_k in columns k+1.. and tau[k] its τ (0 when no reflection was needed).
//
// Cost 4n³/3 flops. Blocked as LAPACK's dsytrd/dlatrd: a panel of `panel` columns is reduced
// with the trailing block left as it was, using A_current = A − V Wᵀ − W Vᵀ (V, W the panel's
// v and w so far) for the panel's own columns and products; then one GEMM of rank 2·panel
// updates the trailing block. Half the flops become GEMM, and the other half (A v, one read of
// the lower half of the trailing block per column, symmetric_matvec_lower) reads a sixth of the
// memory the unblocked step does (all of A v, then the read-modify-write of the rank-2 update).
// The last columns run unblocked. The loops here split work by rows or by fixed bands, so they
// give the same result for every thread count.
inline void tridiagonalize(std::vector<double>& a, index_t n, std::vector<double>& d,
                           std::vector<double>& e, std::vector<double>& tau) {
  d.assign(static_cast<std::size_t>(n), 0.0);
  e.assign(static_cast<std::size_t>(n), 0.0);
  tau.assign(static_cast<std::size_t>(n), 0.0);
  const auto at = [&](index_t i, index_t j) -> double& {
    return a[static_cast<std::size_t>(i * n + j)];
  };
  // Full symmetric storage from the lower triangle.
  for (index_t i = 0; i < n; ++i)
    for (index_t j = i + 1; j < n; ++j) at(i, j) = at(j, i);

  constexpr index_t panel = 32, unblocked_below = 160;
  index_t k = 0;
  if (n > unblocked_below) {
    const index_t rows = n;  // panel arrays are indexed by (global row − k0), at most n rows
    std::vector<double> vp(static_cast<std::size_t>(rows * panel)),
        wp(static_cast<std::size_t>(rows * panel));
    std::vector<double> y(static_cast<std::size_t>(n)), s1(panel), s2(panel), partial;
    for (; n - k > unblocked_below; k += panel) {
      const index_t k0 = k;
      const auto V = [&](index_t r, index_t p) -> double& {
        return vp[static_cast<std::size_t>((r - k0) * panel + p)];
      };
      const auto W = [&](index_t r, index_t p) -> double& {
        return wp[static_cast<std::size_t>((r - k0) * panel + p)];
      };
      std::fill(vp.begin(), vp.end(), 0.0);
      std::fill(wp.begin(), wp.end(), 0.0);
      for (index_t i = 0; i < panel; ++i) {
        const index_t c = k0 + i, m = n - c - 1, base = c + 1;
        // Row c of A_current: a[c][j] − Σ_p (V[j][p] W[c][p] + W[j][p] V[c][p]), j >= c.
        double* row_c = &at(c, 0);
        for (index_t j = c; j < n; ++j) {
          double correction = 0;
          for (index_t p = 0; p < i; ++p) correction += V(j, p) * W(c, p) + W(j, p) * V(c, p);
          row_c[j] -= correction;
        }
        d[static_cast<std::size_t>(c)] = row_c[c];
        double* x = row_c + base;
        const Reflector h = make_reflector(x, m);
        e[static_cast<std::size_t>(c)] = h.beta;
        tau[static_cast<std::size_t>(c)] = h.tau;
        if (h.tau == 0.0) continue;  // v, w stay zero in the panel: H = I
        for (index_t r = base; r < n; ++r) V(r, i) = x[r - base];
        // y = A_current[base:, base:] v = A v − V (Wᵀ v) − W (Vᵀ v), rows of A read as they were at
        // the panel's start (rows > c are only changed after their own reflector is made).
        symmetric_matvec_lower(a.data(), n, base, x, y.data() + base, partial);
        for (index_t p = 0; p < i; ++p) {
          double wv = 0, vv = 0;
          for (index_t r = base; r < n; ++r) {
            wv += W(r, p) * x[r - base];
            vv += V(r, p) * x[r - base];
          }
          s1[static_cast<std::size_t>(p)] = wv;
          s2[static_cast<std::size_t>(p)] = vv;
        }
        double pv = 0;
        for (index_t r = base; r < n; ++r) {
          double sum = y[static_cast<std::size_t>(r)];
          for (index_t p = 0; p < i; ++p)
            sum -= V(r, p) * s1[static_cast<std::size_t>(p)] +
                   W(r, p) * s2[static_cast<std::size_t>(p)];
          y[static_cast<std::size_t>(r)] = h.tau * sum;  // p = τ A_current v
          pv += y[static_cast<std::size_t>(r)] * x[r - base];
        }
        const double half = 0.5 * h.tau * pv;
        for (index_t r = base; r < n; ++r)
          W(r, i) = y[static_cast<std::size_t>(r)] - half * x[r - base];
      }
      // Trailing block (k0 + panel:, k0 + panel:) −= V Wᵀ + W Vᵀ.
      const index_t t0 = k0 + panel, mt = n - t0;
      const double* v_rows = &V(t0, 0);
      const double* w_rows = &W(t0, 0);
      backend::cpu::gemm(false, true, mt, mt, panel, -1.0, v_rows, panel, w_rows, panel, 1.0,
                         &at(t0, t0), n);
      backend::cpu::gemm(false, true, mt, mt, panel, -1.0, w_rows, panel, v_rows, panel, 1.0,
                         &at(t0, t0), n);
    }
  }

  std::vector<double> p(static_cast<std::size_t>(n)), w(static_cast<std::size_t>(n));
  for (; k + 2 < n; ++k) {
    const index_t m = n - k - 1;  // trailing block A[k+1:, k+1:] is m × m
    double* x = &at(k, k + 1);    // row k, equal to column k below the diagonal
    d[static_cast<std::size_t>(k)] = at(k, k);
    const Reflector h = make_reflector(x, m);
    e[static_cast<std::size_t>(k)] = h.beta;
    tau[static_cast<std::size_t>(k)] = h.tau;
    if (h.tau == 0.0) continue;
    const double t = h.tau;
    const index_t base = k + 1;
    // p = τ A₂₂ v
    backend::cpu::parallel_for(0, m, rows_per_chunk(m), [&](index_t first, index_t last) {
      for (index_t i = first; i < last; ++i) {
        const double* row = &at(base + i, base);
        double s = 0;
        for (index_t j = 0; j < m; ++j) s += row[j] * x[j];
        p[static_cast<std::size_t>(i)] = t * s;
      }
    });
    double pv = 0;
    for (index_t i = 0; i < m; ++i) pv += p[static_cast<std::size_t>(i)] * x[i];
    const double half = 0.5 * t * pv;
    for (index_t i = 0; i < m; ++i)
      w[static_cast<std::size_t>(i)] = p[static_cast<std::size_t>(i)] - half * x[i];
    // A₂₂ −= v wᵀ + w vᵀ
    backend::cpu::parallel_for(0, m, rows_per_chunk(m), [&](index_t first, index_t last) {
      const double* wv = w.data();
      for (index_t i = first; i < last; ++i) {
        double* row = &at(base + i, base);
        const double vi = x[i], wi = wv[i];
        for (index_t j = 0; j < m; ++j) row[j] -= vi * wv[j] + wi * x[j];
      }
    });
  }
  if (n >= 2) {
    d[static_cast<std::size_t>(n - 2)] = at(n - 2, n - 2);
    e[static_cast<std::size_t>(n - 2)] = at(n - 2, n - 1);
  }
  if (n >= 1) d[static_cast<std::size_t>(n - 1)] = at(n - 1, n - 1);
}

// Qᵀ (row-major, n × n) from the reflectors tridiagonalize left in `a` and `tau`, with
// Q = H_0 H_1 ⋯ H_{n-3} accumulated backwards in blocks of b reflectors (LAPACK dorgtr/dlarft/
// dlarfb): H_j ⋯ H_{j+b-1} = I − V T Vᵀ with V = [v_j … v_{j+b-1}] and T upper triangular,
// T_ii = τ_i, T[0:i, i] = −τ_i T[0:i, 0:i] Vᵀ v_i (from (I − VTVᵀ)(I − τvvᵀ) expanded); then
// Q ← (I − V T Vᵀ) Q = Q − V (T (Vᵀ Q)) with three GEMMs on the block (j+1:, j+1:), the only
// part of Q that differs from I at that point. 4n³/3 flops, nearly all in GEMM.
inline Matrix accumulate_reflectors_transposed(const std::vector<double>& a, index_t n,
                                               const std::vector<double>& tau) {
  Matrix q = Matrix::identity(n);
  constexpr index_t block = 32;
  for (index_t j1 = n - 2; j1 > 0;) {  // reflectors 0 .. n-3, blocks from the last
    const index_t j0 = std::max<index_t>(0, j1 - block), b = j1 - j0, base = j0 + 1, m = n - base;
    Matrix v(m, b), t(b, b);
    for (index_t p = 0; p < b; ++p) {
      const index_t k = j0 + p;
      v(k + 1 - base, p) = 1.0;
      for (index_t r = k + 2; r < n; ++r) v(r - base, p) = a[static_cast<std::size_t>(k * n + r)];
    }
    std::vector<double> z(static_cast<std::size_t>(b));
    for (index_t i = 0; i < b; ++i) {
      const double ti = tau[static_cast<std::size_t>(j0 + i)];
      t(i, i) = ti;
      if (ti == 0.0) continue;
      for (index_t p = 0; p < i; ++p) {  // z = Vᵀ[0:i] v_i; v_i is zero above row i
        double s = 0;
        for (index_t r = i; r < m; ++r) s += v(r, p) * v(r, i);
        z[static_cast<std::size_t>(p)] = s;
      }
      for (index_t p = 0; p < i; ++p) {
        double s = 0;
        for (index_t l = p; l < i; ++l) s += t(p, l) * z[static_cast<std::size_t>(l)];
        t(p, i) = -ti * s;
      }
    }
    double* q_block = q.row(base) + base;
    Matrix vq(b, m), tvq(b, m);
    backend::cpu::gemm(true, false, b, m, m, 1.0, v.data(), b, q_block, n, 0.0, vq.data(), m);
    backend::cpu::gemm(false, false, b, m, b, 1.0, t.data(), b, vq.data(), m, 0.0, tvq.data(), m);
    backend::cpu::gemm(false, false, m, m, b, -1.0, v.data(), b, tvq.data(), m, 1.0, q_block, n);
    j1 = j0;
  }
  return transpose(q);
}

// The plane rotations of QL sweeps, kept to be applied to Zᵀ together. One sweep rotates rows
// (top, top+1), then (top−1, top), ... down to (top−count+1, top−count+2); rotation j of the
// sweep has cosine c[start + j] and sine s[start + j].
struct RotationSweeps {
  struct Sweep {
    index_t top, count;
    std::size_t start;
  };
  std::vector<Sweep> sweeps;
  std::vector<double> c, s;
  bool empty() const { return c.empty(); }
  void clear() {
    sweeps.clear();
    c.clear();
    s.clear();
  }
};

// Zᵀ (n × n) stored as strips of 16 columns, each strip a contiguous n × 16 block (the last one
// padded with zeros). Rotations touch one short row segment per row; in plain row-major storage
// with n a power of two those segments sit exactly n·8 bytes apart and fight over the same few
// cache sets, while a contiguous strip of n·128 bytes stays in cache.
struct StripMatrix {
  static constexpr index_t width = 16;
  index_t rows = 0, cols = 0, strips = 0;
  std::vector<double> values;

  explicit StripMatrix(const Matrix& m)
      : rows(m.rows),
        cols(m.cols),
        strips((m.cols + width - 1) / width),
        values(static_cast<std::size_t>(strips * m.rows * width), 0.0) {
    for (index_t r = 0; r < rows; ++r)
      for (index_t k = 0; k < cols; ++k) at(k / width, r)[k % width] = m(r, k);
  }
  double* at(index_t strip, index_t row) { return values.data() + (strip * rows + row) * width; }
  void copy_to(Matrix& m) {
    for (index_t r = 0; r < rows; ++r)
      for (index_t k = 0; k < cols; ++k) m(r, k) = at(k / width, r)[k % width];
  }
};

// Applies the rotations in order to the rows of zt: rotation (c, s) at row q sets
// row_q ← c·row_q − s·row_{q+1}, row_{q+1} ← s·row_q + c·row_{q+1}. Columns are independent, so
// the strips run in parallel, each applying every sweep of the batch while it stays in cache.
// Within a sweep, row q+1 is final once rotation q is applied, and the new row q is what
// rotation q−1 reads: it stays in registers (`carry`), so each rotation loads one row segment
// and stores one.
inline void apply_rotations(StripMatrix& zt, const RotationSweeps& batch) {
  if (batch.empty()) return;
  constexpr index_t width = StripMatrix::width;
  const index_t work_per_strip = static_cast<index_t>(batch.c.size()) * width * 6;
  backend::cpu::parallel_for(
      0, zt.strips, std::max<index_t>(1, 65536 / std::max<index_t>(work_per_strip, 1)),
      [&](index_t first, index_t last) {
        for (index_t strip = first; strip < last; ++strip) {
          for (const RotationSweeps::Sweep& sweep : batch.sweeps) {
            double carry[width];
            const double* top = zt.at(strip, sweep.top + 1);
            for (index_t k = 0; k < width; ++k) carry[k] = top[k];
            for (index_t j = 0; j < sweep.count; ++j) {
              const index_t q = sweep.top - j;
              const double c = batch.c[sweep.start + static_cast<std::size_t>(j)];
              const double s = batch.s[sweep.start + static_cast<std::size_t>(j)];
              const double* lower = zt.at(strip, q);
              double* upper = zt.at(strip, q + 1);
              for (index_t k = 0; k < width; ++k) {
                const double l = lower[k];
                upper[k] = s * l + c * carry[k];
                carry[k] = c * l - s * carry[k];
              }
            }
            double* bottom = zt.at(strip, sweep.top - sweep.count + 1);
            for (index_t k = 0; k < width; ++k) bottom[k] = carry[k];
          }
        }
      });
}

// Eigenvalues of the symmetric tridiagonal matrix (diagonal d, subdiagonal e[i] = T[i+1][i]) by
// the QL algorithm with implicit Wilkinson shifts (Bowdler, Martin, Reinsch & Wilkinson, "The QR
// and QL algorithms for symmetric matrices", Numer. Math. 11 (1968), EISPACK tql2). Each sweep
// chases the bulge from row m−1 up to row l with plane rotations; e[m] counts as zero once
// |e[m]| ≤ ε ‖T‖ with ‖T‖ = maxᵢ (|dᵢ| + |eᵢ|), an absolute test as tql2's (the eigenvalues
// carry errors of size ε‖A‖ from the reduction anyway). A relative test such as
// |e[m]| ≤ ε (|d[m]| + |d[m+1]|) never passes inside a cluster of eigenvalues at rounding level
// (a low-rank covariance): rounding in a sweep that also passes large entries keeps those e[m]
// near ε‖T‖. When `zt` is given (rows = vectors), every rotation G in plane
// (i, i+1) is also applied to rows i and i+1 of zt (zt ← Gᵀ zt, i.e. Z ← Z G); rotations are
// collected over many sweeps (about 32n rotations) and applied together by apply_rotations. Cost:
// O(n²) without vectors, about 6n³ flops with them (roughly two sweeps per eigenvalue, each of n−l
// rotations on rows of n). Throws ConvergenceError after 60 sweeps on one eigenvalue.
inline void tridiagonal_ql(std::vector<double>& d, std::vector<double>& e, Matrix* zt) {
  const index_t n = static_cast<index_t>(d.size());
  if (n == 0) return;
  e[static_cast<std::size_t>(n - 1)] = 0.0;
  double norm = 0;
  for (index_t i = 0; i < n; ++i)
    norm = std::max(norm, std::fabs(d[static_cast<std::size_t>(i)]) +
                              std::fabs(e[static_cast<std::size_t>(i)]));
  const double negligible = std::numeric_limits<double>::epsilon() * norm;
  RotationSweeps pending;
  StripMatrix strips = zt ? StripMatrix(*zt) : StripMatrix(Matrix());
  const std::size_t flush_at = static_cast<std::size_t>(32 * n);
  const auto D = [&](index_t i) -> double& { return d[static_cast<std::size_t>(i)]; };
  const auto E = [&](index_t i) -> double& { return e[static_cast<std::size_t>(i)]; };
  for (index_t l = 0; l < n; ++l) {
    for (int sweep = 0;; ++sweep) {
      index_t m = l;
      for (; m < n - 1; ++m) {
        if (std::fabs(E(m)) <= negligible) break;
      }
      if (m == l) break;
      if (sweep == 60)
        throw ConvergenceError(
            "kiln::metrics::linalg::symmetric_eigen: the QL iteration did not converge for "
            "eigenvalue " +
            std::to_string(l) + " of " + std::to_string(n));
      // Wilkinson shift from the leading 2 × 2 block at l, folded into the first rotation.
      double g = (D(l + 1) - D(l)) / (2.0 * E(l));
      double r = std::hypot(g, 1.0);
      g = D(m) - D(l) + E(l) / (g + std::copysign(r, g));
      double s = 1.0, c = 1.0, p = 0.0;
      bool underflow = false;
      for (index_t i = m - 1; i >= l; --i) {
        const double f = s * E(i), b = c * E(i);
        r = std::hypot(f, g);
        E(i + 1) = r;
        if (r == 0.0) {  // the bulge vanished: deflate and start a new sweep
          D(i + 1) -= p;
          E(m) = 0.0;
          underflow = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = D(i + 1) - p;
        r = (D(i) - g) * s + 2.0 * c * b;
        p = s * r;
        D(i + 1) = g + p;
        g = c * r - b;
        if (zt) {
          pending.c.push_back(c);
          pending.s.push_back(s);
        }
      }
      if (zt) {
        const std::size_t start = pending.sweeps.empty()
                                      ? 0
                                      : pending.sweeps.back().start +
                                            static_cast<std::size_t>(pending.sweeps.back().count);
        const auto count = static_cast<index_t>(pending.c.size() - start);
        if (count > 0) pending.sweeps.push_back({m - 1, count, start});
      }
      if (zt && pending.c.size() >= flush_at) {
        apply_rotations(strips, pending);
        pending.clear();
      }
      if (underflow) continue;
      D(l) -= p;
      E(l) = g;
      E(m) = 0.0;
    }
  }
  if (zt) {
    apply_rotations(strips, pending);
    strips.copy_to(*zt);
  }
}

}  // namespace detail

// Eigen-decomposition A = V diag(λ) Vᵀ of the symmetric matrix `a` (only its lower triangle is
// read, like numpy.linalg.eigh's default UPLO='L'): eigenvalues ascending, eigenvectors as the
// orthonormal columns of `vectors`. Blocked Householder tridiagonalization (4n³/3 flops, half in
// GEMM), blocked accumulation of its orthogonal factor (4n³/3, GEMM) and implicit-shift QL
// (≈6n³ in plane rotations), all O(n³) parts threaded: about 1 s for n = 1000 and 7 s for
// n = 2048 on one core (x86-64 with AVX2, -O2), where cyclic Jacobi (≈10 sweeps of ≈4n³ each)
// would take minutes. Backward stable: the computed pairs are exact for A + E with ‖E‖ ≈ ε‖A‖, so
// each eigenvalue is within about ε‖A‖ of the true one (Weyl). Throws ShapeError for a non-square
// matrix and ValueError for a non-finite element.
inline SymmetricEigen symmetric_eigen(const Matrix& a) {
  detail::check_symmetric_input("symmetric_eigen", a);
  const index_t n = a.rows;
  std::vector<double> work = a.values, d, e, tau;
  detail::tridiagonalize(work, n, d, e, tau);
  Matrix zt = detail::accumulate_reflectors_transposed(work, n, tau);
  detail::tridiagonal_ql(d, e, &zt);
  std::vector<index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), index_t{0});
  std::stable_sort(order.begin(), order.end(), [&](index_t x, index_t y) {
    return d[static_cast<std::size_t>(x)] < d[static_cast<std::size_t>(y)];
  });
  SymmetricEigen out;
  out.values.resize(static_cast<std::size_t>(n));
  out.vectors = Matrix(n, n);
  for (index_t j = 0; j < n; ++j) {
    const index_t from = order[static_cast<std::size_t>(j)];
    out.values[static_cast<std::size_t>(j)] = d[static_cast<std::size_t>(from)];
    const double* v = zt.row(from);
    for (index_t i = 0; i < n; ++i) out.vectors(i, j) = v[i];
  }
  return out;
}

// The eigenvalues alone, ascending (4n³/3 flops for the tridiagonalization, O(n²) for QL).
inline std::vector<double> symmetric_eigenvalues(const Matrix& a) {
  detail::check_symmetric_input("symmetric_eigenvalues", a);
  std::vector<double> work = a.values, d, e, tau;
  detail::tridiagonalize(work, a.rows, d, e, tau);
  detail::tridiagonal_ql(d, e, nullptr);
  std::sort(d.begin(), d.end());
  return d;
}

// The symmetric positive semi-definite square root V diag(√max(λ, 0)) Vᵀ of the symmetric
// matrix `a` (lower triangle read): for a PSD matrix the unique PSD root; eigenvalues that
// rounding made slightly negative are clamped to 0. Cost: symmetric_eigen plus one n³ product.
inline Matrix symmetric_sqrt(const Matrix& a) {
  SymmetricEigen eig = symmetric_eigen(a);
  const index_t n = a.rows;
  Matrix scaled = eig.vectors;  // V diag(λ^{1/4}), so that scaled · scaledᵀ = V diag(√λ) Vᵀ
  for (index_t j = 0; j < n; ++j) {
    const double root4 =
        std::sqrt(std::sqrt(std::max(eig.values[static_cast<std::size_t>(j)], 0.0)));
    for (index_t i = 0; i < n; ++i) scaled(i, j) *= root4;
  }
  Matrix out(n, n);
  backend::cpu::gemm(false, true, n, n, n, 1.0, scaled.data(), n, scaled.data(), n, 0.0, out.data(),
                     n);
  for (index_t i = 0; i < n; ++i)  // exact symmetry
    for (index_t j = 0; j < i; ++j) out(j, i) = out(i, j) = 0.5 * (out(i, j) + out(j, i));
  return out;
}

}  // namespace kiln::metrics::linalg
