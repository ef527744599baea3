// kiln/backend/cpu/norm.hpp — fused layer, RMS, group and batch norm kernels (forward and backward)
// on contiguous float/double buffers. Builds on simd.hpp, thread_pool.hpp and core/error.hpp.
#pragma once

#include <kiln/backend/cpu/simd.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

// Conventions of every kernel here:
// - Buffers are contiguous and row-major; `T` is float or double. Statistics are summed in T
//   lanes over short blocks and in double across blocks and for the final scalars.
// - Outputs are overwritten, never accumulated into. Gradients of the affine parameters
//   (gw, gb) are sums over every row (or sample and position) of the batch.
// - Results do not depend on the number of threads: every row (group, channel) is computed by
//   one thread, and sums across rows are taken over fixed blocks combined in a fixed order.
// - Optional pointers may be null: weight/bias (no affine transform, i.e. w = 1, b = 0), the
//   saved statistics in forward, and any gradient output in backward that is not wanted.

namespace kiln::backend::cpu {

namespace norm_detail {

template <class T>
using Vec = simd::Vec<T>;

// Elements of one statistics block summed in T lanes (32 per lane and accumulator) before
// joining the double total: float sums stay accurate for any packet width.
template <class T>
inline constexpr index_t sum_block = 64 * Vec<T>::size;
// Rows whose parameter-gradient contributions are summed together before the ordered join.
inline constexpr index_t param_block_rows = 64;

// A packet of `lanes` elements at p (all of them when lanes == width, else the first `lanes`
// with zeros after them; nothing past p[lanes - 1] is read).
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
  static_assert(Vec<T>::size <= 16, "norm_detail::first_lanes covers packets of up to 16 lanes");
  return Vec<T>::load(iota) < Vec<T>(static_cast<T>(lanes));
}

// Calls body(i, lanes) for packets covering [0, n): full ones, then one partial packet.
template <class T, class Body>
KILN_FORCEINLINE void for_each_packet(index_t n, Body&& body) {
  constexpr int W = Vec<T>::size;
  index_t i = 0;
  for (; i + W <= n; i += W) body(i, W);
  if (i < n) body(i, static_cast<int>(n - i));
}

// K sums over i in [0, n) of the packets f(i, lanes) returns (std::array<Vec<T>, K>); lanes
// past the end of a partial packet are dropped.
template <int K, class T, class F>
KILN_FORCEINLINE std::array<double, K> sums(index_t n, F&& f) {
  using V = Vec<T>;
  constexpr int W = V::size;
  std::array<double, K> total{};
  for (index_t b0 = 0; b0 < n; b0 += sum_block<T>) {
    const index_t b1 = std::min(n, b0 + sum_block<T>);
    std::array<V, K> a0, a1;
    for (int k = 0; k < K; ++k) a0[k] = a1[k] = V::zero();
    index_t i = b0;
    for (; i + 2 * W <= b1; i += 2 * W) {
      const std::array<V, K> u = f(i, W);
      const std::array<V, K> w = f(i + W, W);
      for (int k = 0; k < K; ++k) {
        a0[k] += u[k];
        a1[k] += w[k];
      }
    }
    for (; i + W <= b1; i += W) {
      const std::array<V, K> u = f(i, W);
      for (int k = 0; k < K; ++k) a0[k] += u[k];
    }
    if (i < b1) {
      const int lanes = static_cast<int>(b1 - i);
      const std::array<V, K> u = f(i, lanes);
      const simd::Mask<T> keep = first_lanes<T>(lanes);
      for (int k = 0; k < K; ++k) a1[k] += select(keep, u[k], V::zero());
    }
    for (int k = 0; k < K; ++k) total[k] += static_cast<double>(hsum(a0[k] + a1[k]));
  }
  return total;
}

// Mean and 1/sqrt(biased variance + eps) of n >= 1 elements, by two passes (the second over
// deviations from the first's mean, so that a large mean costs no precision).
template <class T>
KILN_FORCEINLINE std::array<T, 2> moments(const T* x, index_t n, T eps) {
  const double mean =
      sums<1, T>(n, [&](index_t i, int lanes) { return std::array{load(x + i, lanes)}; })[0] /
      static_cast<double>(n);
  const T m = static_cast<T>(mean);
  const double var = sums<1, T>(n,
                                [&](index_t i, int lanes) {
                                  const Vec<T> d = load(x + i, lanes) - Vec<T>(m);
                                  return std::array{d * d};
                                })[0] /
                     static_cast<double>(n);
  return {m, static_cast<T>(1.0 / std::sqrt(var + static_cast<double>(eps)))};
}

// y = (x - m) * a + c over n elements (subtracting first keeps precision when a is large).
template <class T>
KILN_FORCEINLINE void center_scale_shift(const T* x, index_t n, T m, T a, T c, T* y) {
  for_each_packet<T>(n, [&](index_t i, int lanes) {
    store(y + i, fma(load(x + i, lanes) - Vec<T>(m), Vec<T>(a), Vec<T>(c)), lanes);
  });
}

// out = u * a + (x - m) * k2 + k1 over n elements (the backward of the per-group and
// per-channel normalizations).
template <class T>
KILN_FORCEINLINE void combine_backward(const T* u, const T* x, index_t n, T a, T m, T k2, T k1,
                                       T* out) {
  for_each_packet<T>(n, [&](index_t i, int lanes) {
    const Vec<T> d = load(x + i, lanes) - Vec<T>(m);
    store(out + i, fma(load(u + i, lanes), Vec<T>(a), fma(d, Vec<T>(k2), Vec<T>(k1))), lanes);
  });
}

// Rows per thread-pool piece for rows of `cols` elements: about 32K elements of work.
inline index_t rows_per_task(index_t cols) {
  return std::max<index_t>(1, 32768 / std::max<index_t>(cols, 1));
}

template <class T>
constexpr void check_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "kiln's CPU normalization kernels take float or double buffers");
}

inline void check_rows_cols(const char* op, index_t rows, index_t cols) {
  if (rows < 0 || cols < 0 || (rows > 0 && cols == 0))
    throw_value_error(op, "expected rows >= 0 and cols >= 1, got rows = " + std::to_string(rows) +
                              ", cols = " + std::to_string(cols));
}

// [N, C, HW]: sizes non-negative.
inline void check_nchw(const char* op, index_t N, index_t C, index_t HW) {
  if (N < 0 || C < 0 || HW < 0)
    throw_value_error(op, "expected non-negative sizes, got input [N, C, HW] = [" +
                              std::to_string(N) + ", " + std::to_string(C) + ", " +
                              std::to_string(HW) + "]");
}

// G >= 1 groups dividing C channels.
inline void check_groups(const char* op, index_t C, index_t G) {
  if (G < 1 || C % G != 0)
    throw_value_error(op, "the number of channels C = " + std::to_string(C) +
                              " must be divisible by the number of groups G = " +
                              std::to_string(G) + " (G >= 1)");
}

// Sums of the per-block partial rows part[b * cols + c] over b, in block order: out[c].
template <class T>
void join_partials(const std::vector<T>& part, index_t blocks, index_t cols, T* out) {
  constexpr index_t chunk = 256;
  parallel_for(0, (cols + chunk - 1) / chunk,
               std::max<index_t>(1, 32768 / std::max<index_t>(blocks * chunk, 1)),
               [&](index_t c0, index_t c1) {
                 const index_t end = std::min(cols, c1 * chunk);
                 for (index_t c = c0 * chunk; c < end; ++c) out[c] = T(0);
                 for (index_t b = 0; b < blocks; ++b) {
                   const T* p = part.data() + b * cols;
                   const index_t begin = c0 * chunk;
                   for_each_packet<T>(end - begin, [&](index_t i, int lanes) {
                     store(out + begin + i,
                           load(out + begin + i, lanes) + load(p + begin + i, lanes), lanes);
                   });
                 }
               });
}

}  // namespace norm_detail

// ===================================================================================== layer norm

// Layer normalization over the last axis of x [rows, cols] (Ba, Kiros, Hinton 2016):
//   y = (x - mean) * rstd * weight + bias,  mean = E[x],  rstd = 1 / sqrt(Var[x] + eps),
// with the biased variance, as torch.nn.functional.layer_norm. weight and bias [cols] may be
// null; mean_out and rstd_out [rows] (may be null) keep the statistics for the backward.
template <class T>
void layer_norm_forward(const T* x, const std::type_identity_t<T>* weight,
                        const std::type_identity_t<T>* bias, index_t rows, index_t cols,
                        std::type_identity_t<T> eps, T* y, std::type_identity_t<T>* mean_out,
                        std::type_identity_t<T>* rstd_out) {
  using V = simd::Vec<T>;
  norm_detail::check_type<T>();
  norm_detail::check_rows_cols("layer_norm_forward", rows, cols);
  parallel_for(0, rows, norm_detail::rows_per_task(cols), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      const auto [mean, rstd] = norm_detail::moments(xr, cols, eps);
      if (mean_out) mean_out[r] = mean;
      if (rstd_out) rstd_out[r] = rstd;
      const V m(mean), s(rstd);
      norm_detail::for_each_packet<T>(cols, [&](index_t i, int lanes) {
        V v = (norm_detail::load(xr + i, lanes) - m) * s;
        if (weight && bias)
          v = fma(v, norm_detail::load(weight + i, lanes), norm_detail::load(bias + i, lanes));
        else if (weight)
          v = v * norm_detail::load(weight + i, lanes);
        else if (bias)
          v = v + norm_detail::load(bias + i, lanes);
        norm_detail::store(yr + i, v, lanes);
      });
    }
  });
}

// Backward of layer_norm_forward, from the saved mean and rstd [rows]. With n = cols,
// xhat = (x - mean) * rstd and g = gy * weight (g = gy without weight):
//   d xhat_j / d x_k = rstd * (delta_jk - 1/n) - xhat_j * xhat_k * rstd / n
// (d mean / d x_k = 1/n, d rstd / d x_k = -rstd^3 (x_k - mean) / n = -rstd^2 xhat_k / n), so
//   gx_k = sum_j g_j d xhat_j / d x_k = rstd * (g_k - mean_j(g_j) - xhat_k * mean_j(g_j * xhat_j)),
//   gw_j = sum over rows of gy_j * xhat_j,   gb_j = sum over rows of gy_j
// (the same as PyTorch's layer_norm_backward and llm.c's layernorm_backward). Any of gx, gw,
// gb may be null. gw/gb are summed per block of 64 rows, the blocks then joined in order.
template <class T>
void layer_norm_backward(const T* gy, const T* x, const std::type_identity_t<T>* weight,
                         const T* mean, const T* rstd, index_t rows, index_t cols,
                         std::type_identity_t<T>* gx, std::type_identity_t<T>* gw,
                         std::type_identity_t<T>* gb) {
  using V = simd::Vec<T>;
  norm_detail::check_type<T>();
  norm_detail::check_rows_cols("layer_norm_backward", rows, cols);
  if (cols == 0) return;
  const index_t block_rows = norm_detail::param_block_rows;
  const index_t blocks = (rows + block_rows - 1) / block_rows;
  std::vector<T> part_w(gw ? static_cast<std::size_t>(blocks * cols) : 0);
  std::vector<T> part_b(gb ? static_cast<std::size_t>(blocks * cols) : 0);
  const double inv_n = 1.0 / static_cast<double>(cols);
  parallel_for(0, blocks, std::max<index_t>(1, norm_detail::rows_per_task(cols) / block_rows),
               [&](index_t b0, index_t b1) {
                 for (index_t b = b0; b < b1; ++b) {
                   T* pw = gw ? part_w.data() + b * cols : nullptr;
                   T* pb = gb ? part_b.data() + b * cols : nullptr;
                   if (pw) std::fill(pw, pw + cols, T(0));
                   if (pb) std::fill(pb, pb + cols, T(0));
                   const index_t r_end = std::min(rows, (b + 1) * block_rows);
                   for (index_t r = b * block_rows; r < r_end; ++r) {
                     const T* gyr = gy + r * cols;
                     const T* xr = x + r * cols;
                     const V m(mean[r]), s(rstd[r]);
                     V c1(T(0)), c2(T(0));
                     if (gx) {
                       // sum g and sum g * (x - mean), then c1 = rstd * mean(g), c2 = rstd * mean(g
                       // * xhat).
                       const auto t = norm_detail::sums<2, T>(cols, [&](index_t i, int lanes) {
                         V g = norm_detail::load(gyr + i, lanes);
                         if (weight) g = g * norm_detail::load(weight + i, lanes);
                         return std::array{g, g * (norm_detail::load(xr + i, lanes) - m)};
                       });
                       const double rs = static_cast<double>(rstd[r]);
                       c1 = V(static_cast<T>(rs * t[0] * inv_n));
                       c2 = V(static_cast<T>(rs * rs * t[1] * inv_n));
                     }
                     T* gxr = gx ? gx + r * cols : nullptr;
                     norm_detail::for_each_packet<T>(cols, [&](index_t i, int lanes) {
                       const V dy = norm_detail::load(gyr + i, lanes);
                       const V xhat = (norm_detail::load(xr + i, lanes) - m) * s;
                       if (gxr) {
                         const V g = weight ? dy * norm_detail::load(weight + i, lanes) : dy;
                         norm_detail::store(gxr + i, fma(g, s, -fma(xhat, c2, c1)), lanes);
                       }
                       if (pw)
                         norm_detail::store(pw + i, fma(dy, xhat, norm_detail::load(pw + i, lanes)),
                                            lanes);
                       if (pb)
                         norm_detail::store(pb + i, dy + norm_detail::load(pb + i, lanes), lanes);
                     });
                   }
                 }
               });
  if (gw) norm_detail::join_partials(part_w, blocks, cols, gw);
  if (gb) norm_detail::join_partials(part_b, blocks, cols, gb);
}

// ======================================================================================= RMS norm

// RMS normalization over the last axis of x [rows, cols] (Zhang & Sennrich 2019; LLaMA):
//   y = x * rstd * weight,  rstd = 1 / sqrt(mean(x^2) + eps).
// weight [cols] may be null; rstd_out [rows] (may be null) keeps the statistic for the backward.
template <class T>
void rms_norm_forward(const T* x, const std::type_identity_t<T>* weight, index_t rows, index_t cols,
                      std::type_identity_t<T> eps, T* y, std::type_identity_t<T>* rstd_out) {
  using V = simd::Vec<T>;
  norm_detail::check_type<T>();
  norm_detail::check_rows_cols("rms_norm_forward", rows, cols);
  parallel_for(0, rows, norm_detail::rows_per_task(cols), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      const double ms = norm_detail::sums<1, T>(cols,
                                                [&](index_t i, int lanes) {
                                                  const V v = norm_detail::load(xr + i, lanes);
                                                  return std::array{v * v};
                                                })[0] /
                        static_cast<double>(cols);
      const T rstd = static_cast<T>(1.0 / std::sqrt(ms + static_cast<double>(eps)));
      if (rstd_out) rstd_out[r] = rstd;
      const V s(rstd);
      norm_detail::for_each_packet<T>(cols, [&](index_t i, int lanes) {
        V v = norm_detail::load(xr + i, lanes) * s;
        if (weight) v = v * norm_detail::load(weight + i, lanes);
        norm_detail::store(yr + i, v, lanes);
      });
    }
  });
}

// Backward of rms_norm_forward from the saved rstd [rows]. With n = cols, g = gy * weight and
// rstd = (mean(x^2) + eps)^(-1/2), d rstd / d x_k = -rstd^3 x_k / n, so
//   gx_k = rstd * g_k - x_k * rstd^3 / n * sum_j g_j x_j,
//   gw_j = sum over rows of gy_j * x_j * rstd.
// Any of gx, gw may be null; gw is summed per block of 64 rows, the blocks joined in order.
template <class T>
void rms_norm_backward(const T* gy, const T* x, const std::type_identity_t<T>* weight,
                       const T* rstd, index_t rows, index_t cols, std::type_identity_t<T>* gx,
                       std::type_identity_t<T>* gw) {
  using V = simd::Vec<T>;
  norm_detail::check_type<T>();
  norm_detail::check_rows_cols("rms_norm_backward", rows, cols);
  if (cols == 0) return;
  const index_t block_rows = norm_detail::param_block_rows;
  const index_t blocks = (rows + block_rows - 1) / block_rows;
  std::vector<T> part_w(gw ? static_cast<std::size_t>(blocks * cols) : 0);
  const double inv_n = 1.0 / static_cast<double>(cols);
  parallel_for(0, blocks, std::max<index_t>(1, norm_detail::rows_per_task(cols) / block_rows),
               [&](index_t b0, index_t b1) {
                 for (index_t b = b0; b < b1; ++b) {
                   T* pw = gw ? part_w.data() + b * cols : nullptr;
                   if (pw) std::fill(pw, pw + cols, T(0));
                   const index_t r_end = std::min(rows, (b + 1) * block_rows);
                   for (index_t r = b * block_rows; r < r_end; ++r) {
                     const T* gyr = gy + r * cols;
                     const T* xr = x + r * cols;
                     const V s(rstd[r]);
                     V c(T(0));
                     if (gx) {
                       const double dot = norm_detail::sums<1, T>(cols, [&](index_t i, int lanes) {
                         V g = norm_detail::load(gyr + i, lanes);
                         if (weight) g = g * norm_detail::load(weight + i, lanes);
                         return std::array{g * norm_detail::load(xr + i, lanes)};
                       })[0];
                       const double rs = static_cast<double>(rstd[r]);
                       c = V(static_cast<T>(rs * rs * rs * dot * inv_n));
                     }
                     T* gxr = gx ? gx + r * cols : nullptr;
                     norm_detail::for_each_packet<T>(cols, [&](index_t i, int lanes) {
                       const V dy = norm_detail::load(gyr + i, lanes);
                       const V xv = norm_detail::load(xr + i, lanes);
                       if (gxr) {
                         const V g = weight ? dy * norm_detail::load(weight + i, lanes) : dy;
                         norm_detail::store(gxr + i, fma(g, s, -(xv * c)), lanes);
                       }
                       if (pw)
                         norm_detail::store(
                             pw + i, fma(dy, xv * s, norm_detail::load(pw + i, lanes)), lanes);
                     });
                   }
                 }
               });
  if (gw) norm_detail::join_partials(part_w, blocks, cols, gw);
}

// ===================================================================================== group norm

// Group normalization (Wu & He 2018) of x [N, C, HW] with G groups of C/G consecutive channels,
// as torch.nn.GroupNorm(G, C): each (sample, group) block of C/G * HW elements is normalized
// with its mean and biased variance, then y = xhat * weight[c] + bias[c]. weight and bias [C]
// may be null; mean_out and rstd_out [N, G] (may be null) keep the statistics.
template <class T>
void group_norm_forward(const T* x, const std::type_identity_t<T>* weight,
                        const std::type_identity_t<T>* bias, index_t N, index_t C, index_t HW,
                        index_t G, std::type_identity_t<T> eps, T* y,
                        std::type_identity_t<T>* mean_out, std::type_identity_t<T>* rstd_out) {
  norm_detail::check_type<T>();
  norm_detail::check_nchw("group_norm_forward", N, C, HW);
  norm_detail::check_groups("group_norm_forward", C, G);
  if (N * C * HW == 0) return;
  const index_t Cg = C / G, group_size = Cg * HW;
  parallel_for(0, N * G, norm_detail::rows_per_task(group_size), [&](index_t t0, index_t t1) {
    for (index_t t = t0; t < t1; ++t) {
      const index_t g = t % G;
      const index_t offset = t * group_size;  // (n * C + g * Cg) * HW
      const auto [mean, rstd] = norm_detail::moments(x + offset, group_size, eps);
      if (mean_out) mean_out[t] = mean;
      if (rstd_out) rstd_out[t] = rstd;
      for (index_t j = 0; j < Cg; ++j) {
        const index_t c = g * Cg + j;
        const T a = weight ? rstd * weight[c] : rstd;
        norm_detail::center_scale_shift(x + offset + j * HW, HW, mean, a, bias ? bias[c] : T(0),
                                        y + offset + j * HW);
      }
    }
  });
}

// Backward of group_norm_forward from the saved mean and rstd [N, G]. The group is a layer
// norm over its M = C/G * HW elements with g = gy * weight[c], so (see layer_norm_backward)
//   gx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//      = rstd * weight[c] * gy + (x - mean) * k2 + k1,
//   k2 = -rstd^3 * sum(g * (x - mean)) / M,   k1 = -rstd * sum(g) / M,
// where sum(g) = sum_c weight[c] * sum_hw(gy) and
//       sum(g * (x - mean)) = sum_c weight[c] * sum_hw(gy * (x - mean));
//   gw[c] = sum_n rstd * sum_hw(gy * (x - mean)),   gb[c] = sum_n sum_hw(gy),
// the per-sample terms joined in sample order. Any of gx, gw, gb may be null.
template <class T>
void group_norm_backward(const T* gy, const T* x, const std::type_identity_t<T>* weight,
                         const T* mean, const T* rstd, index_t N, index_t C, index_t HW, index_t G,
                         std::type_identity_t<T>* gx, std::type_identity_t<T>* gw,
                         std::type_identity_t<T>* gb) {
  using V = simd::Vec<T>;
  norm_detail::check_type<T>();
  norm_detail::check_nchw("group_norm_backward", N, C, HW);
  norm_detail::check_groups("group_norm_backward", C, G);
  if (N * C == 0) return;
  const index_t Cg = C / G, group_size = Cg * HW;
  std::vector<double> part_w(static_cast<std::size_t>(N * C)),
      part_b(static_cast<std::size_t>(N * C));
  if (HW > 0) {
    parallel_for(0, N * G, norm_detail::rows_per_task(group_size), [&](index_t t0, index_t t1) {
      for (index_t t = t0; t < t1; ++t) {
        const index_t n = t / G, g = t % G;
        const index_t offset = t * group_size;
        const T m = mean[t];
        const double r = static_cast<double>(rstd[t]);
        double sum_g = 0, sum_gd = 0;
        for (index_t j = 0; j < Cg; ++j) {
          const index_t c = g * Cg + j;
          const T* gyc = gy + offset + j * HW;
          const T* xc = x + offset + j * HW;
          const auto s = norm_detail::sums<2, T>(HW, [&](index_t i, int lanes) {
            const V dy = norm_detail::load(gyc + i, lanes);
            return std::array{dy, dy * (norm_detail::load(xc + i, lanes) - V(m))};
          });
          part_b[static_cast<std::size_t>(n * C + c)] = s[0];
          part_w[static_cast<std::size_t>(n * C + c)] = r * s[1];
          const double w = weight ? static_cast<double>(weight[c]) : 1.0;
          sum_g += w * s[0];
          sum_gd += w * s[1];
        }
        if (!gx) continue;
        const double inv_m = 1.0 / static_cast<double>(group_size);
        const T k2 = static_cast<T>(-r * r * r * sum_gd * inv_m);
        const T k1 = static_cast<T>(-r * sum_g * inv_m);
        for (index_t j = 0; j < Cg; ++j) {
          const index_t c = g * Cg + j;
          const T a = static_cast<T>(weight ? r * static_cast<double>(weight[c]) : r);
          norm_detail::combine_backward(gy + offset + j * HW, x + offset + j * HW, HW, a, m, k2, k1,
                                        gx + offset + j * HW);
        }
      }
    });
  }
  for (index_t c = 0; c < C; ++c) {
    double sw = 0, sb = 0;
    for (index_t n = 0; n < N; ++n) {
      sw += part_w[static_cast<std::size_t>(n * C + c)];
      sb += part_b[static_cast<std::size_t>(n * C + c)];
    }
    if (gw) gw[c] = static_cast<T>(sw);
    if (gb) gb[c] = static_cast<T>(sb);
  }
}

// ===================================================================================== batch norm

namespace norm_detail {

// Sums over the N segments of HW elements of channel c in [N, C, HW], in sample order, of the
// K packets f(pointer offset of the segment, i, lanes) returns.
template <int K, class T, class F>
std::array<double, K> channel_sums(index_t N, index_t C, index_t HW, index_t c, F&& f) {
  std::array<double, K> total{};
  for (index_t n = 0; n < N; ++n) {
    const index_t offset = (n * C + c) * HW;
    const auto s = sums<K, T>(HW, [&](index_t i, int lanes) { return f(offset, i, lanes); });
    for (int k = 0; k < K; ++k) total[k] += s[k];
  }
  return total;
}

inline void check_batch_norm_training(const char* op, index_t N, index_t C, index_t HW) {
  check_nchw(op, N, C, HW);
  if (C > 0 && N * HW <= 1)
    throw_value_error(
        op, "expected more than 1 value per channel when training, got input [N, C, HW] = [" +
                std::to_string(N) + ", " + std::to_string(C) + ", " + std::to_string(HW) + "]");
}

}  // namespace norm_detail

// Batch normalization in training mode (Ioffe & Szegedy 2015) of x [N, C, HW], as
// torch.nn.BatchNorm{1,2,3}d: per channel c, the mean and biased variance over the M = N * HW
// values normalize x, y = xhat * weight[c] + bias[c]; save_mean and save_rstd [C] (may be null)
// keep mean and 1/sqrt(var + eps) for the backward. When running_mean / running_var [C] are
// given they are updated in place with the UNBIASED variance, as PyTorch does:
//   running_mean = (1 - momentum) * running_mean + momentum * mean,
//   running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1).
// M must be at least 2 (ValueError otherwise, like PyTorch).
template <class T>
void batch_norm_forward_training(
    const T* x, const std::type_identity_t<T>* weight, const std::type_identity_t<T>* bias,
    index_t N, index_t C, index_t HW, std::type_identity_t<T> eps, std::type_identity_t<T> momentum,
    std::type_identity_t<T>* running_mean, std::type_identity_t<T>* running_var, T* y,
    std::type_identity_t<T>* save_mean, std::type_identity_t<T>* save_rstd) {
  using V = simd::Vec<T>;
  norm_detail::check_type<T>();
  norm_detail::check_batch_norm_training("batch_norm_forward_training", N, C, HW);
  if (C == 0) return;
  const index_t M = N * HW;
  parallel_for(0, C, norm_detail::rows_per_task(M), [&](index_t c0, index_t c1) {
    for (index_t c = c0; c < c1; ++c) {
      const double mean_d = norm_detail::channel_sums<1, T>(
                                N, C, HW, c,
                                [&](index_t off, index_t i, int lanes) {
                                  return std::array{norm_detail::load(x + off + i, lanes)};
                                })[0] /
                            static_cast<double>(M);
      const T mean = static_cast<T>(mean_d);
      const double sq =
          norm_detail::channel_sums<1, T>(N, C, HW, c, [&](index_t off, index_t i, int lanes) {
            const V d = norm_detail::load(x + off + i, lanes) - V(mean);
            return std::array{d * d};
          })[0];
      const double var = sq / static_cast<double>(M);
      const T rstd = static_cast<T>(1.0 / std::sqrt(var + static_cast<double>(eps)));
      if (save_mean) save_mean[c] = mean;
      if (save_rstd) save_rstd[c] = rstd;
      const double mom = static_cast<double>(momentum);
      if (running_mean)
        running_mean[c] =
            static_cast<T>((1.0 - mom) * static_cast<double>(running_mean[c]) + mom * mean_d);
      if (running_var)
        running_var[c] = static_cast<T>((1.0 - mom) * static_cast<double>(running_var[c]) +
                                        mom * sq / static_cast<double>(M - 1));
      const T a = weight ? rstd * weight[c] : rstd;
      for (index_t n = 0; n < N; ++n) {
        const index_t off = (n * C + c) * HW;
        norm_detail::center_scale_shift(x + off, HW, mean, a, bias ? bias[c] : T(0), y + off);
      }
    }
  });
}

// Batch normalization in evaluation mode: y = (x - running_mean[c]) / sqrt(running_var[c] + eps)
// * weight[c] + bias[c] over x [N, C, HW]; weight and bias may be null.
template <class T>
void batch_norm_forward_eval(const T* x, const std::type_identity_t<T>* weight,
                             const std::type_identity_t<T>* bias,
                             const std::type_identity_t<T>* running_mean,
                             const std::type_identity_t<T>* running_var, index_t N, index_t C,
                             index_t HW, std::type_identity_t<T> eps, T* y) {
  norm_detail::check_type<T>();
  norm_detail::check_nchw("batch_norm_forward_eval", N, C, HW);
  parallel_for(0, N * C, norm_detail::rows_per_task(HW), [&](index_t t0, index_t t1) {
    for (index_t t = t0; t < t1; ++t) {
      const index_t c = t % C;
      const T rstd = static_cast<T>(
          1.0 / std::sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps)));
      const T a = weight ? rstd * weight[c] : rstd;
      norm_detail::center_scale_shift(x + t * HW, HW, running_mean[c], a, bias ? bias[c] : T(0),
                                      y + t * HW);
    }
  });
}

// Backward of batch_norm_forward_training from save_mean and save_rstd [C]. Per channel this is
// a layer norm over its M = N * HW values with g = gy * weight[c] (see layer_norm_backward):
//   gx = weight[c] * rstd * (gy - sum(gy) / M - xhat * sum(gy * xhat) / M)
//      = weight[c] * rstd * gy + (x - mean) * k2 + k1,
//   k2 = -weight[c] * rstd^3 * S / M,   k1 = -weight[c] * rstd * sum(gy) / M,
//   gw[c] = rstd * S,  gb[c] = sum(gy),  with S = sum(gy * (x - mean)) over the channel.
// The running statistics do not enter (they receive no gradient). Any of gx, gw, gb may be null.
template <class T>
void batch_norm_backward_training(const T* gy, const T* x, const std::type_identity_t<T>* weight,
                                  const std::type_identity_t<T>* save_mean,
                                  const std::type_identity_t<T>* save_rstd, index_t N, index_t C,
                                  index_t HW, std::type_identity_t<T>* gx,
                                  std::type_identity_t<T>* gw, std::type_identity_t<T>* gb) {
  using V = simd::Vec<T>;
  norm_detail::check_type<T>();
  norm_detail::check_batch_norm_training("batch_norm_backward_training", N, C, HW);
  if (C == 0) return;
  const index_t M = N * HW;
  parallel_for(0, C, norm_detail::rows_per_task(M), [&](index_t c0, index_t c1) {
    for (index_t c = c0; c < c1; ++c) {
      const T mean = save_mean[c];
      const double r = static_cast<double>(save_rstd[c]);
      const auto s =
          norm_detail::channel_sums<2, T>(N, C, HW, c, [&](index_t off, index_t i, int lanes) {
            const V dy = norm_detail::load(gy + off + i, lanes);
            return std::array{dy, dy * (norm_detail::load(x + off + i, lanes) - V(mean))};
          });
      if (gw) gw[c] = static_cast<T>(r * s[1]);
      if (gb) gb[c] = static_cast<T>(s[0]);
      if (!gx) continue;
      const double w = weight ? static_cast<double>(weight[c]) : 1.0;
      const double inv_m = 1.0 / static_cast<double>(M);
      const T a = static_cast<T>(w * r);
      const T k2 = static_cast<T>(-w * r * r * r * s[1] * inv_m);
      const T k1 = static_cast<T>(-w * r * s[0] * inv_m);
      for (index_t n = 0; n < N; ++n) {
        const index_t off = (n * C + c) * HW;
        norm_detail::combine_backward(gy + off, x + off, HW, a, mean, k2, k1, gx + off);
      }
    }
  });
}

// Backward of batch_norm_forward_eval: the statistics are constants, so with
// rstd = 1/sqrt(running_var[c] + eps): gx = gy * weight[c] * rstd,
// gw[c] = rstd * sum(gy * (x - running_mean[c])), gb[c] = sum(gy). Any output may be null.
template <class T>
void batch_norm_backward_eval(const T* gy, const T* x, const std::type_identity_t<T>* weight,
                              const std::type_identity_t<T>* running_mean,
                              const std::type_identity_t<T>* running_var, index_t N, index_t C,
                              index_t HW, std::type_identity_t<T> eps, std::type_identity_t<T>* gx,
                              std::type_identity_t<T>* gw, std::type_identity_t<T>* gb) {
  using V = simd::Vec<T>;
  norm_detail::check_type<T>();
  norm_detail::check_nchw("batch_norm_backward_eval", N, C, HW);
  if (C == 0) return;
  parallel_for(0, C, norm_detail::rows_per_task(N * HW), [&](index_t c0, index_t c1) {
    for (index_t c = c0; c < c1; ++c) {
      const double r =
          1.0 / std::sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps));
      const T mean = running_mean[c];
      if (gw || gb) {
        const auto s =
            norm_detail::channel_sums<2, T>(N, C, HW, c, [&](index_t off, index_t i, int lanes) {
              const V dy = norm_detail::load(gy + off + i, lanes);
              return std::array{dy, dy * (norm_detail::load(x + off + i, lanes) - V(mean))};
            });
        if (gw) gw[c] = static_cast<T>(r * s[1]);
        if (gb) gb[c] = static_cast<T>(s[0]);
      }
      if (!gx) continue;
      const T a = static_cast<T>(weight ? r * static_cast<double>(weight[c]) : r);
      for (index_t n = 0; n < N; ++n) {
        const index_t off = (n * C + c) * HW;
        norm_detail::center_scale_shift(gy + off, HW, T(0), a, T(0), gx + off);
      }
    }
  });
}

}  // namespace kiln::backend::cpu
