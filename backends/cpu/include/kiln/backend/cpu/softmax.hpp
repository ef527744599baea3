// kiln/backend/cpu/softmax.hpp — fused softmax, log-softmax and cross-entropy kernels (forward and
// backward) over the last axis of [rows, cols] buffers. Builds on simd.hpp and thread_pool.hpp.
#pragma once

#include <kiln/backend/cpu/simd.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

// Conventions: `T` is float or double; buffers are contiguous and row-major; outputs are
// overwritten (an output may be the same buffer as the input of the same shape). Rows are
// spread over threads, each row computed by one thread with the same code, so results do not
// depend on the number of threads.

namespace kiln::backend::cpu {

// Vectorized operations on one row, shared by the softmax, cross-entropy and attention kernels.
namespace row_ops {

template <class T>
using Vec = simd::Vec<T>;

// A packet of `lanes` elements at p (all when lanes == width; else the first `lanes`, zeros
// after them, nothing past p[lanes - 1] read), and its store.
template <class T>
KILN_FORCEINLINE Vec<T> load(const T* p, int lanes) {
  return lanes == Vec<T>::size ? Vec<T>::load(p) : Vec<T>::load_partial(p, lanes);
}
template <class T>
KILN_FORCEINLINE void store(T* p, Vec<T> v, int lanes) {
  if (lanes == Vec<T>::size)
    v.store(p);
  else
    v.store_partial(p, lanes);
}
// The first `lanes` lanes set.
template <class T>
KILN_FORCEINLINE simd::Mask<T> first_lanes(int lanes) {
  alignas(64) static constexpr T iota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  static_assert(Vec<T>::size <= 16, "row_ops::first_lanes covers packets of up to 16 lanes");
  return Vec<T>::load(iota) < Vec<T>(static_cast<T>(lanes));
}

// Calls body(i, lanes) on packets covering [0, n): full ones, then one partial packet.
template <class T, class Body>
KILN_FORCEINLINE void for_each_packet(index_t n, Body&& body) {
  constexpr int W = Vec<T>::size;
  index_t i = 0;
  for (; i + W <= n; i += W) body(i, W);
  if (i < n) body(i, static_cast<int>(n - i));
}

// max_i x[i] for n >= 1 (-inf for n == 0).
template <class T>
inline T max_of(const T* x, index_t n) {
  using V = Vec<T>;
  constexpr int W = V::size;
  const V lowest(-std::numeric_limits<T>::infinity());
  V a0 = lowest, a1 = lowest;
  index_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    a0 = max(a0, V::load(x + i));  // a NaN may be dropped here; exp_sum still turns it into NaN
    a1 = max(a1, V::load(x + i + W));
  }
  if (i + W <= n) {
    a0 = max(a0, V::load(x + i));
    i += W;
  }
  if (i < n) {
    const int lanes = static_cast<int>(n - i);
    a1 = max(a1, select(first_lanes<T>(lanes), V::load_partial(x + i, lanes), lowest));
  }
  return hmax(max(a0, a1));
}

// Sum_i exp(x[i] - shift), also writing the terms to y when y is not null (y may be x).
template <class T>
inline T exp_sum(const T* x, index_t n, T shift, T* y) {
  using V = Vec<T>;
  constexpr int W = V::size;
  const V s(shift);
  V a0 = V::zero(), a1 = V::zero();
  index_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V e0 = simd::exp(V::load(x + i) - s);
    const V e1 = simd::exp(V::load(x + i + W) - s);
    if (y) {
      e0.store(y + i);
      e1.store(y + i + W);
    }
    a0 += e0;
    a1 += e1;
  }
  if (i + W <= n) {
    const V e = simd::exp(V::load(x + i) - s);
    if (y) e.store(y + i);
    a0 += e;
    i += W;
  }
  if (i < n) {
    const int lanes = static_cast<int>(n - i);
    const V e =
        select(first_lanes<T>(lanes), simd::exp(V::load_partial(x + i, lanes) - s), V::zero());
    if (y) e.store_partial(y + i, lanes);
    a1 += e;
  }
  return hsum(a0 + a1);
}

// {m, s} with m = max_i x[i] and s = sum_i exp(x[i] - m), in chunks small enough to stay in L1
// between their max and exp passes, so a long row is read from memory once; a chunk with a new
// maximum rescales the running sum by exp(m_old - m_new).
template <class T>
inline std::array<T, 2> max_and_exp_sum(const T* x, index_t n) {
  constexpr index_t chunk = 4096;
  T m = -std::numeric_limits<T>::infinity(), s = T(0);
  for (index_t c0 = 0; c0 < n; c0 += chunk) {
    const index_t len = std::min(chunk, n - c0);
    const T chunk_max = max_of(x + c0, len);
    if (chunk_max > m) {
      s *= std::exp(m - chunk_max);
      m = chunk_max;
    }
    s += exp_sum(x + c0, len, m, static_cast<T*>(nullptr));
  }
  return {m, s};
}

// Sum_i a[i] * b[i] (b null: sum_i a[i]).
template <class T>
inline T dot(const T* a, const T* b, index_t n) {
  using V = Vec<T>;
  constexpr int W = V::size;
  V a0 = V::zero(), a1 = V::zero();
  index_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    if (b) {
      a0 = fma(V::load(a + i), V::load(b + i), a0);
      a1 = fma(V::load(a + i + W), V::load(b + i + W), a1);
    } else {
      a0 += V::load(a + i);
      a1 += V::load(a + i + W);
    }
  }
  for_each_packet<T>(n - i, [&](index_t j, int lanes) {
    const V u = load(a + i + j, lanes);
    a0 = b ? fma(u, load(b + i + j, lanes), a0) : a0 + u;  // zero lanes past the end add nothing
  });
  return hsum(a0 + a1);
}

// y[i] = x[i] * s.
template <class T>
inline void scale(const T* x, index_t n, T s, T* y) {
  for_each_packet<T>(
      n, [&](index_t i, int lanes) { store(y + i, load(x + i, lanes) * Vec<T>(s), lanes); });
}

template <class T>
constexpr void check_type() {
  static_assert(
      std::is_same_v<T, float> || std::is_same_v<T, double>,
      "kiln's CPU softmax, cross-entropy and attention kernels take float or double buffers");
}

// Rows per thread-pool piece for rows of `cols` elements: about 32K elements of work.
inline index_t rows_per_task(index_t cols) {
  return std::max<index_t>(1, 32768 / std::max<index_t>(cols, 1));
}

inline void check_rows_cols(const char* op, index_t rows, index_t cols) {
  if (rows < 0 || cols < 0 || (rows > 0 && cols == 0))
    throw_value_error(op, "expected rows >= 0 and cols >= 1, got rows = " + std::to_string(rows) +
                              ", cols = " + std::to_string(cols));
}

}  // namespace row_ops

// ================================================================================== softmax

// y = softmax(x) over the last axis of [rows, cols]:
//   y_i = exp(x_i - max x) / sum_j exp(x_j - max x).
template <class T>
void softmax_forward(const T* x, index_t rows, index_t cols, T* y) {
  row_ops::check_type<T>();
  row_ops::check_rows_cols("softmax_forward", rows, cols);
  parallel_for(0, rows, row_ops::rows_per_task(cols), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      const T sum = row_ops::exp_sum(xr, cols, row_ops::max_of(xr, cols), yr);
      row_ops::scale(yr, cols, T(1) / sum, yr);
    }
  });
}

// Backward of softmax_forward from its output y. With y_i = e^(x_i) / sum_j e^(x_j),
// d y_i / d x_k = y_i (delta_ik - y_k), so
//   gx_k = sum_i gy_i y_i (delta_ik - y_k) = y_k (gy_k - sum_i gy_i y_i).
template <class T>
void softmax_backward(const T* gy, const T* y, index_t rows, index_t cols,
                      std::type_identity_t<T>* gx) {
  using V = simd::Vec<T>;
  row_ops::check_type<T>();
  row_ops::check_rows_cols("softmax_backward", rows, cols);
  parallel_for(0, rows, row_ops::rows_per_task(cols), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* gyr = gy + r * cols;
      const T* yr = y + r * cols;
      T* gxr = gx + r * cols;
      const V d(row_ops::dot(gyr, yr, cols));
      row_ops::for_each_packet<T>(cols, [&](index_t i, int lanes) {
        row_ops::store(gxr + i, row_ops::load(yr + i, lanes) * (row_ops::load(gyr + i, lanes) - d),
                       lanes);
      });
    }
  });
}

// y = log_softmax(x) over the last axis: y_i = x_i - max x - log(sum_j exp(x_j - max x)).
template <class T>
void log_softmax_forward(const T* x, index_t rows, index_t cols, T* y) {
  using V = simd::Vec<T>;
  row_ops::check_type<T>();
  row_ops::check_rows_cols("log_softmax_forward", rows, cols);
  parallel_for(0, rows, row_ops::rows_per_task(cols), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      const auto [m, sum] = row_ops::max_and_exp_sum(xr, cols);
      // (x - max) - log(sum): x - max is exact for the large terms, which m + log(sum) is not.
      const V shift(m), log_sum(std::log(sum));
      row_ops::for_each_packet<T>(cols, [&](index_t i, int lanes) {
        row_ops::store(yr + i, (row_ops::load(xr + i, lanes) - shift) - log_sum, lanes);
      });
    }
  });
}

// Backward of log_softmax_forward from its output y. With y_i = x_i - logsumexp(x),
// d y_i / d x_k = delta_ik - softmax_k, so gx_k = gy_k - exp(y_k) * sum_i gy_i.
template <class T>
void log_softmax_backward(const T* gy, const T* y, index_t rows, index_t cols,
                          std::type_identity_t<T>* gx) {
  using V = simd::Vec<T>;
  row_ops::check_type<T>();
  row_ops::check_rows_cols("log_softmax_backward", rows, cols);
  parallel_for(0, rows, row_ops::rows_per_task(cols), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* gyr = gy + r * cols;
      const T* yr = y + r * cols;
      T* gxr = gx + r * cols;
      const V s(row_ops::dot(gyr, static_cast<const T*>(nullptr), cols));
      row_ops::for_each_packet<T>(cols, [&](index_t i, int lanes) {
        const V p = simd::exp(row_ops::load(yr + i, lanes));
        row_ops::store(gxr + i, row_ops::load(gyr + i, lanes) - p * s, lanes);
      });
    }
  });
}

// ============================================================================= cross-entropy

namespace row_ops {

inline void check_cross_entropy(const char* op, const index_t* targets, index_t rows,
                                index_t classes, index_t ignore_index, double label_smoothing) {
  if (rows < 0 || classes < 0 || (rows > 0 && classes == 0))
    throw_value_error(op, "expected rows >= 0 and classes >= 1, got logits [" +
                              std::to_string(rows) + ", " + std::to_string(classes) + "]");
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
    throw_value_error(op,
                      "label_smoothing must be in [0, 1], got " + std::to_string(label_smoothing));
  for (index_t r = 0; r < rows; ++r) {
    const index_t t = targets[r];
    if (t != ignore_index && (t < 0 || t >= classes))
      throw_value_error(op, "target " + std::to_string(t) + " of row " + std::to_string(r) +
                                " is outside [0, " + std::to_string(classes) +
                                ") and is not ignore_index (" + std::to_string(ignore_index) + ")");
  }
}

}  // namespace row_ops

// Cross-entropy of logits [rows, classes] against class indices targets [rows], as
// torch.nn.functional.cross_entropy(..., reduction='none', ignore_index, label_smoothing):
// with eps = label_smoothing, target distribution q = (1 - eps) * onehot(t) + eps / classes and
// lse = logsumexp of the row,
//   loss = -sum_j q_j log_softmax_j = lse - (1 - eps) * x_t - eps / classes * sum_j x_j.
// Rows whose target is ignore_index get loss 0 (their lse is still written). loss [rows] is the
// per-row loss (a mean reduction divides the sum by the count of rows not ignored); lse [rows]
// (may be null) keeps the log-sum-exp for the backward. A target outside [0, classes) that is
// not ignore_index, or eps outside [0, 1], throws ValueError.
template <class T>
void cross_entropy_forward(const T* logits, const index_t* targets, index_t rows, index_t classes,
                           index_t ignore_index, std::type_identity_t<T> label_smoothing, T* loss,
                           std::type_identity_t<T>* lse) {
  row_ops::check_type<T>();
  row_ops::check_cross_entropy("cross_entropy_forward", targets, rows, classes, ignore_index,
                               static_cast<double>(label_smoothing));
  const double eps = static_cast<double>(label_smoothing);
  parallel_for(0, rows, row_ops::rows_per_task(classes), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* xr = logits + r * classes;
      const auto [m, sum] = row_ops::max_and_exp_sum(xr, classes);
      const double row_lse = static_cast<double>(m) + std::log(static_cast<double>(sum));
      if (lse) lse[r] = static_cast<T>(row_lse);
      const index_t t = targets[r];
      if (t == ignore_index) {
        loss[r] = T(0);
        continue;
      }
      double l = row_lse - (1.0 - eps) * static_cast<double>(xr[t]);
      if (eps > 0.0)
        l -= eps / static_cast<double>(classes) *
             static_cast<double>(row_ops::dot(xr, static_cast<const T*>(nullptr), classes));
      loss[r] = static_cast<T>(l);
    }
  });
}

// Backward of cross_entropy_forward from its saved lse [rows]. The loss of a row is
// lse - sum_j q_j x_j with sum_j q_j = 1 and d lse / d x_j = softmax_j, so
//   gx_j = g * (exp(x_j - lse) - q_j) = g * (softmax_j - eps / classes - (1 - eps) [j == t]),
// with g = grad_scale * grad_loss[r] (grad_loss [rows] may be null: g = grad_scale, e.g.
// 1 / count for a mean reduction). Rows whose target is ignore_index get gx = 0.
template <class T>
void cross_entropy_backward(const T* logits, const index_t* targets,
                            const std::type_identity_t<T>* lse,
                            const std::type_identity_t<T>* grad_loss,
                            std::type_identity_t<T> grad_scale, index_t rows, index_t classes,
                            index_t ignore_index, std::type_identity_t<T> label_smoothing,
                            std::type_identity_t<T>* gx) {
  using V = simd::Vec<T>;
  row_ops::check_type<T>();
  row_ops::check_cross_entropy("cross_entropy_backward", targets, rows, classes, ignore_index,
                               static_cast<double>(label_smoothing));
  const T smooth = label_smoothing / static_cast<T>(classes);
  parallel_for(0, rows, row_ops::rows_per_task(classes), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* xr = logits + r * classes;
      T* gxr = gx + r * classes;
      const index_t t = targets[r];
      if (t == ignore_index) {
        std::fill(gxr, gxr + classes, T(0));
        continue;
      }
      const T g = grad_loss ? grad_scale * grad_loss[r] : grad_scale;
      const V vg(g), shift(lse[r]), vsmooth(smooth);
      row_ops::for_each_packet<T>(classes, [&](index_t i, int lanes) {
        const V p = simd::exp(row_ops::load(xr + i, lanes) - shift);
        row_ops::store(gxr + i, vg * (p - vsmooth), lanes);
      });
      gxr[t] -= g * (T(1) - label_smoothing);
    }
  });
}

}  // namespace kiln::backend::cpu
