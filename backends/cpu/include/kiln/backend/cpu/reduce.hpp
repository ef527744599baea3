// kiln/backend/cpu/reduce.hpp — reductions over the middle axis of a contiguous [outer, R, inner]
// block (sum, mean, max, min, var, logsumexp, argmax/argmin), vectorized and threaded, with
// results that do not depend on the thread count. Builds on backend/cpu/simd.hpp and thread_pool.hpp.
#pragma once

#include <kiln/backend/cpu/simd.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/device.hpp>
#include <kiln/expr/math.hpp>

#include <cmath>
#include <limits>
#include <vector>

namespace kiln::backend::cpu {

namespace detail {

// Length of the fixed blocks a long row is cut into; partial results of blocks are combined
// in order, so the split never depends on the number of threads.
inline constexpr index_t reduce_block = 16384;

// Reduces in[0..n) after transform(x, c) with combine; identity pads nothing (scalar tail).
template <class T, class Combine, class Transform>
T reduce_row(const T* in, index_t n, T center, T identity, Combine combine, Transform transform) {
  using V = simd::Vec<T>;
  constexpr int W = V::size;
  const V vc = V::broadcast(center);
  V a0 = V::broadcast(identity), a1 = a0, a2 = a0, a3 = a0;
  index_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    a0 = combine(a0, transform(V::load(in + j), vc));
    a1 = combine(a1, transform(V::load(in + j + W), vc));
    a2 = combine(a2, transform(V::load(in + j + 2 * W), vc));
    a3 = combine(a3, transform(V::load(in + j + 3 * W), vc));
  }
  for (; j + W <= n; j += W) a0 = combine(a0, transform(V::load(in + j), vc));
  a0 = combine(combine(a0, a1), combine(a2, a3));
  alignas(64) T lanes[W];
  a0.store(lanes);
  T acc = lanes[0];
  for (int k = 1; k < W; ++k) acc = combine(acc, lanes[k]);
  for (; j < n; ++j) acc = combine(acc, transform(in[j], center));
  return acc;
}

}  // namespace detail

// out[o, i] = combine over r of transform(in[o, r, i], center[o, i]) (center may be null = 0).
template <class T, class Combine, class Transform>
void reduce_generic(const T* in, const T* center, T* out, index_t outer, index_t R, index_t inner, T identity,
                    Combine combine, Transform transform) {
  using V = simd::Vec<T>;
  constexpr int W = V::size;
  if (outer * inner == 0) return;
  if (inner == 1) {
    const index_t blocks = R <= detail::reduce_block ? 1 : (R + detail::reduce_block - 1) / detail::reduce_block;
    if (blocks == 1) {
      parallel_for(0, outer, std::max<index_t>(1, 32768 / std::max<index_t>(R, 1)), [&](index_t b, index_t e) {
        for (index_t o = b; o < e; ++o)
          out[o] = detail::reduce_row(in + o * R, R, center ? center[o] : T(0), identity, combine, transform);
      });
      return;
    }
    std::vector<T> partial(static_cast<std::size_t>(outer * blocks));
    parallel_for(0, outer * blocks, 1, [&](index_t b, index_t e) {
      for (index_t t = b; t < e; ++t) {
        const index_t o = t / blocks, k = t % blocks;
        const index_t start = k * detail::reduce_block;
        const index_t len = std::min(detail::reduce_block, R - start);
        partial[t] = detail::reduce_row(in + o * R + start, len, center ? center[o] : T(0), identity, combine,
                                        transform);
      }
    });
    for (index_t o = 0; o < outer; ++o) {
      T acc = partial[o * blocks];
      for (index_t k = 1; k < blocks; ++k) acc = combine(acc, partial[o * blocks + k]);
      out[o] = acc;
    }
    return;
  }
  // inner > 1: vectorize across the inner axis, walk r in order.
  const index_t chunk = 256;      // inner elements per task
  const index_t row_block = 128;  // rows summed before joining the running result
  const index_t chunks_per_row = (inner + chunk - 1) / chunk;
  const index_t tasks = outer * chunks_per_row;
  const index_t work = std::max<index_t>(1, R * std::min(chunk, inner));
  parallel_for(0, tasks, std::max<index_t>(1, 32768 / work), [&](index_t b, index_t e) {
    for (index_t t = b; t < e; ++t) {
      const index_t o = t / chunks_per_row, i0 = (t % chunks_per_row) * chunk;
      const index_t i1 = std::min(inner, i0 + chunk);
      const T* base = in + o * R * inner;
      T* dst = out + o * inner;
      const T* cen = center ? center + o * inner : nullptr;
      index_t i = i0;
      for (; i + W <= i1; i += W) {
        // Two levels (blocks of rows, then the block results) keep float sums accurate.
        const V c = cen ? V::load(cen + i) : V::broadcast(T(0));
        V acc = V::broadcast(identity);
        for (index_t r0 = 0; r0 < R; r0 += row_block) {
          const index_t r1 = std::min(R, r0 + row_block);
          V part = V::broadcast(identity);
          for (index_t r = r0; r < r1; ++r) part = combine(part, transform(V::load(base + r * inner + i), c));
          acc = combine(acc, part);
        }
        acc.store(dst + i);
      }
      for (; i < i1; ++i) {
        const T c = cen ? cen[i] : T(0);
        T acc = identity;
        for (index_t r0 = 0; r0 < R; r0 += row_block) {
          const index_t r1 = std::min(R, r0 + row_block);
          T part = identity;
          for (index_t r = r0; r < r1; ++r) part = combine(part, transform(base[r * inner + i], c));
          acc = combine(acc, part);
        }
        dst[i] = acc;
      }
    }
  });
}

struct Plain {
  template <class V>
  KILN_FORCEINLINE V operator()(const V& x, const V&) const {
    return x;
  }
};
struct SquaredDeviation {
  template <class V>
  KILN_FORCEINLINE V operator()(const V& x, const V& c) const {
    const V d = x - c;
    return d * d;
  }
};
struct ShiftedExp {
  template <class V>
  KILN_FORCEINLINE V operator()(const V& x, const V& c) const {
    using kiln::math::exp;
    return exp(x - c);
  }
};

// The reductions of kiln::Reduction; `correction` is var's divisor offset (R - correction).
template <class T>
void reduce(Reduction kind, const T* in, T* out, index_t outer, index_t R, index_t inner, double correction = 1) {
  const index_t n_out = outer * inner;
  const T inf = std::numeric_limits<T>::infinity();
  switch (kind) {
    case Reduction::sum:
      reduce_generic(in, static_cast<const T*>(nullptr), out, outer, R, inner, T(0), math::fn::Add{}, Plain{});
      return;
    case Reduction::mean:
      reduce_generic(in, static_cast<const T*>(nullptr), out, outer, R, inner, T(0), math::fn::Add{}, Plain{});
      for (index_t i = 0; i < n_out; ++i) out[i] = R ? out[i] / static_cast<T>(R) : std::numeric_limits<T>::quiet_NaN();
      return;
    case Reduction::max:
      reduce_generic(in, static_cast<const T*>(nullptr), out, outer, R, inner, -inf, math::fn::Maximum{}, Plain{});
      return;
    case Reduction::min:
      reduce_generic(in, static_cast<const T*>(nullptr), out, outer, R, inner, inf, math::fn::Minimum{}, Plain{});
      return;
    case Reduction::var: {
      std::vector<T> mean(static_cast<std::size_t>(n_out));
      reduce(Reduction::mean, in, mean.data(), outer, R, inner);
      reduce_generic(in, mean.data(), out, outer, R, inner, T(0), math::fn::Add{}, SquaredDeviation{});
      const double denom = static_cast<double>(R) - correction;
      for (index_t i = 0; i < n_out; ++i)
        out[i] = denom > 0 ? static_cast<T>(out[i] / denom) : std::numeric_limits<T>::quiet_NaN();
      return;
    }
    case Reduction::logsumexp: {
      std::vector<T> m(static_cast<std::size_t>(n_out));
      reduce_generic(in, static_cast<const T*>(nullptr), m.data(), outer, R, inner, -inf, math::fn::Maximum{},
                     Plain{});
      for (auto& v : m)
        if (!std::isfinite(v) && !std::isnan(v)) v = T(0);
      reduce_generic(in, m.data(), out, outer, R, inner, T(0), math::fn::Add{}, ShiftedExp{});
      for (index_t i = 0; i < n_out; ++i) out[i] = m[i] + std::log(out[i]);
      return;
    }
  }
}

// Index (along R) of the first maximum (is_max) or minimum; a NaN counts as the extreme.
template <class T>
void argreduce(const T* in, index_t* out, index_t outer, index_t R, index_t inner, bool is_max) {
  parallel_for(0, outer * inner, std::max<index_t>(1, 32768 / std::max<index_t>(R, 1)), [&](index_t b, index_t e) {
    for (index_t t = b; t < e; ++t) {
      const index_t o = t / inner, i = t % inner;
      const T* p = in + o * R * inner + i;
      index_t best = 0;
      T bv = p[0];
      if (!std::isnan(bv)) {
        for (index_t r = 1; r < R; ++r) {
          const T v = p[r * inner];
          if (std::isnan(v)) {
            best = r;
            break;
          }
          if (is_max ? v > bv : v < bv) {
            bv = v;
            best = r;
          }
        }
      }
      out[t] = best;
    }
  });
}

}  // namespace kiln::backend::cpu
