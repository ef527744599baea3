// kiln/metrics/linalg.hpp — small dense float64 linear algebra for the metrics: a row-major Matrix,
// products, the symmetric eigen-decomposition (Householder tridiagonalization + implicit QL) and the
// symmetric positive semi-definite square root. Builds on core/error.hpp and the CPU backend's
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

  double& operator()(index_t i, index_t j) { return values[static_cast<std::size_t>(i * cols + j)]; }
  double operator()(index_t i, index_t j) const { return values[static_cast<std::size_t>(i * cols + j)]; }
  double* data() { return values.data(); }
  const double* data() const { return values.data(); }
  double* row(index_t i) { return values.data() + i * cols; }
  const double* row(index_t i) const { return values.data() + i * cols; }
  bool is_square() const { return rows == cols; }

 private:
  static std::size_t checked_size(index_t r, index_t c) {
    if (r < 0 || c < 0)
      throw ValueError("kiln::metrics::linalg::Matrix: negative extent " + std::to_string(r) + " x " +
                       std::to_string(c));
    return static_cast<std::size_t>(r) * static_cast<std::size_t>(c);
  }
};

// "3 x 4"
inline std::string shape_text(const Matrix& m) { return std::to_string(m.rows) + " x " + std::to_string(m.cols); }

// a · b with the CPU backend's threaded GEMM (O(rows·cols·inner)).
inline Matrix matmul(const Matrix& a, const Matrix& b) {
  if (a.cols != b.rows)
    throw ShapeError("kiln::metrics::linalg::matmul: inner extents differ: " + shape_text(a) + " times " +
                     shape_text(b));
  Matrix c(a.rows, b.cols);
  backend::cpu::gemm(false, false, a.rows, b.cols, a.cols, 1.0, a.data(), a.cols, b.data(), b.cols, 0.0,
                     c.data(), c.cols);
  return c;
}

// aᵀ · b without forming aᵀ.
inline Matrix matmul_transposed_left(const Matrix& a, const Matrix& b) {
  if (a.rows != b.rows)
    throw ShapeError("kiln::metrics::linalg::matmul_transposed_left: aᵀ·b needs equal row counts: " +
                     shape_text(a) + " and " + shape_text(b));
  Matrix c(a.cols, b.cols);
  backend::cpu::gemm(true, false, a.cols, b.cols, a.rows, 1.0, a.data(), a.cols, b.data(), b.cols, 0.0,
                     c.data(), c.cols);
  return c;
}

inline Matrix transpose(const Matrix& a) {
  Matrix t(a.cols, a.rows);
  for (index_t i = 0; i < a.rows; ++i)
    for (index_t j = 0; j < a.cols; ++j) t(j, i) = a(i, j);
  return t;
}

inline double trace(const Matrix& a) {
  if (!a.is_square()) throw ShapeError("kiln::metrics::linalg::trace: needs a square matrix, got " + shape_text(a));
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
inline index_t rows_per_chunk(index_t length) { return std::max<index_t>(4, 32768 / std::max<index_t>(length, 1)); }

inline void check_symmetric_input(const char* op, const Matrix& a) {
  if (!a.is_square()) throw ShapeError(std::string("kiln::metrics::linalg::") + op + ": needs a square matrix, got " + shape_text(a));
  for (index_t i = 0; i < a.rows; ++i)
    for (index_t j = 0; j <= i; ++j)
      if (!std::isfinite(a(i, j)))
        throw ValueError(std::string("kiln::metrics::linalg::") + op + ": element (" + std::to_string(i) + ", " +
                         std::to_string(j) + ") is not finite");
}

// Householder reduction of the symmetric n × n matrix `a` (full storage; only its lower triangle
// is read) to tridiagonal T = Qᵀ A Q with Q = H_0 H_1 ⋯ H_{n-3}: diagonal `d` (n), subdiagonal `e`
// (e[i] = T[i+1][i], e[n-1] = 0). Step k reflects x = A[k+1:, k] onto β e₁ with
// H_k = I − τ v vᵀ, v₀ = 1, β = −sign(x₀)‖x‖, τ = (β − x₀)/β, v_i = x_i/(x₀ − β) (LAPACK dlarfg's
// convention, no cancellation since x₀ and β have opposite signs), then updates the trailing block
// A₂₂ ← H A₂₂ H = A₂₂ − v wᵀ − w vᵀ with p = τ A₂₂ v, w = p − (τ/2)(pᵀv) v (Golub & Van Loan,
// Matrix Computations, 4th ed., §8.3.1). On return row k of `a` holds v_k in columns k+1.. and
// `tau[k]` its τ (0 when no reflection was needed). Cost 4n³/3 flops; the matrix-vector product
// and the rank-2 update run in parallel over rows (each row computed by one thread, so the result
// does not depend on the thread count).
inline void tridiagonalize(std::vector<double>& a, index_t n, std::vector<double>& d, std::vector<double>& e,
                           std::vector<double>& tau) {
  d.assign(static_cast<std::size_t>(n), 0.0);
  e.assign(static_cast<std::size_t>(n), 0.0);
  tau.assign(static_cast<std::size_t>(n), 0.0);
  const auto at = [&](index_t i, index_t j) -> double& { return a[static_cast<std::size_t>(i * n + j)]; };
  // Full symmetric storage from the lower triangle.
  for (index_t i = 0; i < n; ++i)
    for (index_t j = i + 1; j < n; ++j) at(i, j) = at(j, i);
  std::vector<double> p(static_cast<std::size_t>(n)), w(static_cast<std::size_t>(n));
  for (index_t k = 0; k + 2 < n; ++k) {
    const index_t m = n - k - 1;  // trailing block A[k+1:, k+1:] is m × m
    double* x = &at(k, k + 1);    // row k, equal to column k below the diagonal
    d[static_cast<std::size_t>(k)] = at(k, k);
    double tail = 0;
    for (index_t i = 1; i < m; ++i) tail += x[i] * x[i];
    if (tail == 0.0) {  // already zero below the subdiagonal: H = I
      e[static_cast<std::size_t>(k)] = x[0];
      continue;
    }
    const double alpha = x[0];
    const double beta = -std::copysign(std::sqrt(alpha * alpha + tail), alpha);
    const double t = (beta - alpha) / beta;
    const double scale = 1.0 / (alpha - beta);
    x[0] = 1.0;
    for (index_t i = 1; i < m; ++i) x[i] *= scale;
    e[static_cast<std::size_t>(k)] = beta;
    tau[static_cast<std::size_t>(k)] = t;
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
    for (index_t i = 0; i < m; ++i) w[static_cast<std::size_t>(i)] = p[static_cast<std::size_t>(i)] - half * x[i];
    // A₂₂ −= v wᵀ + w vᵀ
    backend::cpu::parallel_for(0, m, rows_per_chunk(m), [&](index_t first, index_t last) {
      const double* wp = w.data();
      for (index_t i = first; i < last; ++i) {
        double* row = &at(base + i, base);
        const double vi = x[i], wi = wp[i];
        for (index_t j = 0; j < m; ++j) row[j] -= vi * wp[j] + wi * x[j];
      }
    });
  }
  if (n >= 2) {
    d[static_cast<std::size_t>(n - 2)] = at(n - 2, n - 2);
    e[static_cast<std::size_t>(n - 2)] = at(n - 2, n - 1);
  }
  if (n >= 1) d[static_cast<std::size_t>(n - 1)] = at(n - 1, n - 1);
}

// Qᵀ (row-major, n × n) from the reflectors tridiagonalize left in `a` and `tau`:
// Qᵀ = H_{n-3} ⋯ H_1 H_0, built as M ← M H_k for k = n-3 down to 0 starting from I. M differs
// from I only in its trailing block (k+1:, k+1:) at that point, so each step costs 4(n−k)² flops:
// row r gets r −= τ (r·v) vᵀ, one pass over each row, rows in parallel. Total 4n³/3 flops.
inline Matrix accumulate_reflectors_transposed(const std::vector<double>& a, index_t n, const std::vector<double>& tau) {
  Matrix qt = Matrix::identity(n);
  for (index_t k = n - 3; k >= 0; --k) {
    const double t = tau[static_cast<std::size_t>(k)];
    if (t == 0.0) continue;
    const index_t m = n - k - 1, base = k + 1;
    const double* v = &a[static_cast<std::size_t>(k * n + base)];
    backend::cpu::parallel_for(base, n, rows_per_chunk(m), [&](index_t first, index_t last) {
      for (index_t r = first; r < last; ++r) {
        double* row = qt.row(r) + base;
        double s = 0;
        for (index_t j = 0; j < m; ++j) s += row[j] * v[j];
        s *= t;
        for (index_t j = 0; j < m; ++j) row[j] -= s * v[j];
      }
    });
  }
  return qt;
}

// One plane rotation of tridiagonal_ql, acting on rows (row, row + 1) of Zᵀ.
struct PlaneRotation {
  index_t row;
  double c, s;
};

// Applies `rotations` in order to the rows of zt (rows i, i+1 ← c·row_i − s·row_{i+1},
// s·row_i + c·row_{i+1}). Columns are independent, so blocks of 64 columns run in parallel, each
// applying the whole list: a block of n rows × 64 columns (n·512 bytes) stays in cache across the
// many sweeps that one list holds, instead of streaming all of Zᵀ from memory once per sweep.
inline void apply_rotations(Matrix& zt, const std::vector<PlaneRotation>& rotations) {
  if (rotations.empty()) return;
  constexpr index_t block = 64;
  const index_t cols = zt.cols, blocks = (cols + block - 1) / block;
  const index_t work_per_block = static_cast<index_t>(rotations.size()) * block * 6;
  backend::cpu::parallel_for(0, blocks, std::max<index_t>(1, 65536 / std::max<index_t>(work_per_block, 1)),
                             [&](index_t first, index_t last) {
    for (index_t b = first; b < last; ++b) {
      const index_t k0 = b * block, k1 = std::min(cols, k0 + block);
      for (const PlaneRotation& r : rotations) {
        const double c = r.c, s = r.s;  // locals: stores to the rows cannot alias them
        double* lower = zt.row(r.row);
        double* upper = zt.row(r.row + 1);
        for (index_t k = k0; k < k1; ++k) {
          const double f = upper[k];
          upper[k] = s * lower[k] + c * f;
          lower[k] = c * lower[k] - s * f;
        }
      }
    }
  });
}

// Eigenvalues of the symmetric tridiagonal matrix (diagonal d, subdiagonal e[i] = T[i+1][i]) by
// the QL algorithm with implicit Wilkinson shifts (Bowdler, Martin, Reinsch & Wilkinson, "The QR
// and QL algorithms for symmetric matrices", Numer. Math. 11 (1968), EISPACK tql2). Each sweep
// chases the bulge from row m−1 up to row l with plane rotations; e[m] counts as zero once
// |e[m]| ≤ ε (|d[m]| + |d[m+1]|). When `zt` is given (rows = vectors), every rotation G in plane
// (i, i+1) is also applied to rows i and i+1 of zt (zt ← Gᵀ zt, i.e. Z ← Z G); rotations are
// collected over many sweeps and applied together by apply_rotations. Cost: O(n²) without
// vectors, about 6n³ flops with them (roughly two sweeps per eigenvalue, each of n−l rotations
// on rows of n). Throws ConvergenceError after 60 sweeps on one eigenvalue.
inline void tridiagonal_ql(std::vector<double>& d, std::vector<double>& e, Matrix* zt) {
  const index_t n = static_cast<index_t>(d.size());
  if (n == 0) return;
  e[static_cast<std::size_t>(n - 1)] = 0.0;
  const double eps = std::numeric_limits<double>::epsilon();
  std::vector<PlaneRotation> pending;
  const std::size_t flush_at = static_cast<std::size_t>(32 * n);
  const auto D = [&](index_t i) -> double& { return d[static_cast<std::size_t>(i)]; };
  const auto E = [&](index_t i) -> double& { return e[static_cast<std::size_t>(i)]; };
  for (index_t l = 0; l < n; ++l) {
    for (int sweep = 0;; ++sweep) {
      index_t m = l;
      for (; m < n - 1; ++m) {
        const double dd = std::fabs(D(m)) + std::fabs(D(m + 1));
        if (std::fabs(E(m)) <= eps * dd || std::fabs(E(m)) <= std::numeric_limits<double>::min()) break;
      }
      if (m == l) break;
      if (sweep == 60)
        throw ConvergenceError("kiln::metrics::linalg::symmetric_eigen: the QL iteration did not converge for "
                               "eigenvalue " + std::to_string(l) + " of " + std::to_string(n));
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
        if (zt) pending.push_back({i, c, s});
      }
      if (zt && pending.size() >= flush_at) {
        apply_rotations(*zt, pending);
        pending.clear();
      }
      if (underflow) continue;
      D(l) -= p;
      E(l) = g;
      E(m) = 0.0;
    }
  }
  if (zt) apply_rotations(*zt, pending);
}

}  // namespace detail

// Eigen-decomposition A = V diag(λ) Vᵀ of the symmetric matrix `a` (only its lower triangle is
// read, like numpy.linalg.eigh's default UPLO='L'): eigenvalues ascending, eigenvectors as the
// orthonormal columns of `vectors`. Householder tridiagonalization (4n³/3 flops), accumulation of
// its orthogonal factor (4n³/3) and implicit-shift QL (≈6n³), the O(n³) parts threaded with
// parallel_for: n = 2048 takes seconds, where cyclic Jacobi (≈10 sweeps of O(n³)) would take
// minutes. Backward stable: the computed pairs are exact for A + E with ‖E‖ ≈ ε‖A‖, so each
// eigenvalue is within about ε‖A‖ of the true one (Weyl). Throws ShapeError for a non-square
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
  std::stable_sort(order.begin(), order.end(),
                   [&](index_t x, index_t y) { return d[static_cast<std::size_t>(x)] < d[static_cast<std::size_t>(y)]; });
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
    const double root4 = std::sqrt(std::sqrt(std::max(eig.values[static_cast<std::size_t>(j)], 0.0)));
    for (index_t i = 0; i < n; ++i) scaled(i, j) *= root4;
  }
  Matrix out(n, n);
  backend::cpu::gemm(false, true, n, n, n, 1.0, scaled.data(), n, scaled.data(), n, 0.0, out.data(), n);
  for (index_t i = 0; i < n; ++i)  // exact symmetry
    for (index_t j = 0; j < i; ++j) out(j, i) = out(i, j) = 0.5 * (out(i, j) + out(j, i));
  return out;
}

}  // namespace kiln::metrics::linalg
