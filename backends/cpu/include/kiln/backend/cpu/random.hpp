// kiln/backend/cpu/random.hpp — threaded uniform, normal, bernoulli fills and random permutations.
// Builds on core/philox.hpp, core/bfloat16.hpp and backend/cpu/thread_pool.hpp.
#pragma once

#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/bfloat16.hpp>
#include <kiln/core/config.hpp>
#include <kiln/core/philox.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::backend::cpu {

namespace detail {

// Smallest number of Philox blocks worth handing to a thread.
inline constexpr index_t random_grain_blocks = 2048;

template <class T>
inline constexpr bool is_random_real =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, kiln::bfloat16>;

// Values one Philox block yields for T: 2 for double (two words each), 4 otherwise.
template <class T>
inline constexpr int random_values_per_block =
    std::is_same_v<T, double> ? double_values_per_block : float_values_per_block;

// The type a value of T is computed in: double for double, float for float and bfloat16.
template <class T>
using random_compute_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

[[noreturn]] inline void random_argument_error(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("kiln::backend::cpu::") + op + ": " + what);
}

inline void check_fill_arguments(const char* op, const void* out, index_t n) {
  if (n < 0) random_argument_error(op, "n must be >= 0, got " + std::to_string(n));
  if (n > 0 && out == nullptr)
    random_argument_error(op, "out is null but n = " + std::to_string(n));
}

// Largest bfloat16 strictly below x (x finite).
inline kiln::bfloat16 bfloat16_below(kiln::bfloat16 x) {
  const std::uint16_t b = x.bits();
  if ((b & 0x7FFFu) == 0) return kiln::bfloat16::from_bits(0x8001u);  // below +-0
  return kiln::bfloat16::from_bits(static_cast<std::uint16_t>((b & 0x8000u) ? b + 1 : b - 1));
}

// Maps u in [0, 1) to [low, high) (low < high): low + (high - low) * u, with a value that
// rounded up to `high` replaced by the largest representable value below it. For bfloat16 the
// float result is rounded down onto the bfloat16 grid, so each bfloat16 value gets the mass of
// the interval that starts at it.
template <class T>
inline T scale_uniform(random_compute_t<T> u, T low, T high) {
  using C = random_compute_t<T>;
  const C lo = static_cast<C>(low), hi = static_cast<C>(high);
  C v = lo + (hi - lo) * u;
  if constexpr (std::is_same_v<T, kiln::bfloat16>) {
    kiln::bfloat16 r(v);
    if (static_cast<float>(r) > v) r = bfloat16_below(r);
    if (!(r < high)) r = bfloat16_below(high);
    return r < low ? low : r;
  } else {
    if (!(v < hi)) v = std::nextafter(hi, lo);
    return v < lo ? lo : v;
  }
}

// Reserves the blocks for `n` values of T and writes, in parallel, out[i] = value(i) where
// `per_block(block)` gives the values of one block. Work is split on block boundaries and each
// value depends only on its index, so the result does not depend on the thread count.
template <class T, class PerBlock>
void fill_by_blocks(T* out, index_t n, Rng& rng, PerBlock per_block) {
  constexpr int per = random_values_per_block<T>;
  const std::uint64_t n_blocks = Rng::blocks_for(static_cast<std::uint64_t>(n), per);
  const std::uint64_t first = rng.reserve(n_blocks);
  if (n == 0) return;
  const Rng gen = rng;
  parallel_for(0, static_cast<index_t>(n_blocks), random_grain_blocks,
               [&](index_t begin, index_t end) {
                 for (index_t b = begin; b < end; ++b) {
                   const auto values = per_block(gen.block(first + static_cast<std::uint64_t>(b)));
                   const index_t base = b * per;
                   const index_t count = std::min<index_t>(per, n - base);
                   for (index_t j = 0; j < count; ++j) out[base + j] = values[static_cast<int>(j)];
                 }
               });
}

}  // namespace detail

// Fills out[0, n) with values uniform in [low, high) and advances `rng` by the blocks it used:
// ceil(n / 4) for float and bfloat16 (value i from word i % 4 of block i / 4, 24 random bits),
// ceil(n / 2) for double (value i from words 2(i % 2), 2(i % 2) + 1 of block i / 2, 53 bits).
// low == high fills with low. T is float, double or kiln::bfloat16.
template <class T>
void fill_uniform(T* out, index_t n, std::type_identity_t<T> low, std::type_identity_t<T> high,
                  Rng& rng) {
  static_assert(detail::is_random_real<T>,
                "fill_uniform fills float, double or kiln::bfloat16 arrays");
  detail::check_fill_arguments("fill_uniform", out, n);
  if (!(low <= high))
    detail::random_argument_error("fill_uniform",
                                  "needs low <= high, got low = " + std::to_string(double(low)) +
                                      ", high = " + std::to_string(double(high)));
  if constexpr (std::is_same_v<T, double>) {
    detail::fill_by_blocks(out, n, rng, [low, high](const PhiloxBlock& b) {
      const auto u = uniform_double_block(b);
      return BlockValues<double, 2>{{low == high ? low : detail::scale_uniform(u[0], low, high),
                                     low == high ? low : detail::scale_uniform(u[1], low, high)}};
    });
  } else {
    detail::fill_by_blocks(out, n, rng, [low, high](const PhiloxBlock& b) {
      const auto u = uniform_float_block(b);
      BlockValues<T, 4> r{};
      for (int j = 0; j < 4; ++j)
        r.values[j] = low == high ? low : detail::scale_uniform<T>(u[j], low, high);
      return r;
    });
  }
}

// Fills out[0, n) with normal values of the given mean and standard deviation (Box–Muller) and
// advances `rng`: ceil(n / 4) blocks for float and bfloat16 (values 4k, 4k+1 from the word pair
// (0, 1) of block k, values 4k+2, 4k+3 from the pair (2, 3)); ceil(n / 2) blocks for double (one
// Box–Muller pair per block: u1 from words (0, 1), u2 from words (2, 3)).
// bfloat16 values are computed in float and rounded to nearest even.
template <class T>
void fill_normal(T* out, index_t n, std::type_identity_t<T> mean, std::type_identity_t<T> stddev,
                 Rng& rng) {
  static_assert(detail::is_random_real<T>,
                "fill_normal fills float, double or kiln::bfloat16 arrays");
  detail::check_fill_arguments("fill_normal", out, n);
  if (!(static_cast<double>(stddev) >= 0.0))
    detail::random_argument_error(
        "fill_normal", "needs stddev >= 0, got " + std::to_string(static_cast<double>(stddev)));
  if constexpr (std::is_same_v<T, double>) {
    detail::fill_by_blocks(out, n, rng, [mean, stddev](const PhiloxBlock& b) {
      const auto z = normal_double_block(b);
      return BlockValues<double, 2>{{mean + stddev * z[0], mean + stddev * z[1]}};
    });
  } else {
    const float m = static_cast<float>(mean), s = static_cast<float>(stddev);
    detail::fill_by_blocks(out, n, rng, [m, s](const PhiloxBlock& b) {
      const auto z = normal_float_block(b);
      BlockValues<T, 4> r{};
      for (int j = 0; j < 4; ++j) r.values[j] = T(m + s * z[j]);
      return r;
    });
  }
}

// Fills out[0, n) with 1 (probability p) or 0 and advances `rng` by ceil(n / 4) blocks for
// every T: value i is 1 when word i % 4 of block i / 4 is below ceil(p * 2^32). T is any
// arithmetic type or kiln::bfloat16; p must lie in [0, 1].
template <class T>
void fill_bernoulli(T* out, index_t n, double p, Rng& rng) {
  static_assert(std::is_arithmetic_v<T> || std::is_same_v<T, kiln::bfloat16>,
                "fill_bernoulli fills arrays of an arithmetic type or kiln::bfloat16");
  detail::check_fill_arguments("fill_bernoulli", out, n);
  if (!(p >= 0.0 && p <= 1.0))
    detail::random_argument_error("fill_bernoulli",
                                  "needs 0 <= p <= 1, got p = " + std::to_string(p));
  const std::uint64_t threshold = bernoulli_threshold(p);
  const T one = T(1), zero = T(0);
  constexpr int per = float_values_per_block;
  const std::uint64_t n_blocks = Rng::blocks_for(static_cast<std::uint64_t>(n), per);
  const std::uint64_t first = rng.reserve(n_blocks);
  if (n == 0) return;
  const Rng gen = rng;
  parallel_for(0, static_cast<index_t>(n_blocks), detail::random_grain_blocks,
               [&](index_t begin, index_t end) {
                 for (index_t b = begin; b < end; ++b) {
                   const auto bits =
                       bernoulli_block(gen.block(first + static_cast<std::uint64_t>(b)), threshold);
                   const index_t base = b * per;
                   const index_t count = std::min<index_t>(per, n - base);
                   for (index_t j = 0; j < count; ++j)
                     out[base + j] = bits[static_cast<int>(j)] ? one : zero;
                 }
               });
}

// Writes a uniformly random permutation of 0, ..., n-1 to out[0, n) and advances `rng` by n
// blocks (Fisher–Yates): step s, for 0 <= s < n - 1, swaps positions i = n - 1 - s and
// j = bounded_from_block(block(first + s), key, i + 1), an unbiased index in [0, i].
// The indices j are drawn in parallel, the swaps run in order.
inline void random_permutation(index_t* out, index_t n, Rng& rng) {
  detail::check_fill_arguments("random_permutation", out, n);
  const std::uint64_t first = rng.reserve(static_cast<std::uint64_t>(n));
  if (n == 0) return;
  parallel_for(0, n, index_t{1} << 16, [out](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) out[i] = i;
  });
  const Rng gen = rng;
  const PhiloxKey key = gen.key();
  const index_t steps = n - 1;
  constexpr index_t chunk = index_t{1} << 16;
  std::vector<index_t> targets(static_cast<std::size_t>(std::min(steps, chunk)));
  for (index_t chunk_begin = 0; chunk_begin < steps; chunk_begin += chunk) {
    const index_t chunk_end = std::min(steps, chunk_begin + chunk);
    parallel_for(
        chunk_begin, chunk_end, detail::random_grain_blocks, [&](index_t begin, index_t end) {
          for (index_t s = begin; s < end; ++s) {
            const auto range = static_cast<std::uint64_t>(n - s);
            targets[static_cast<std::size_t>(s - chunk_begin)] = static_cast<index_t>(
                bounded_from_block(gen.block(first + static_cast<std::uint64_t>(s)), key, range));
          }
        });
    for (index_t s = chunk_begin; s < chunk_end; ++s)
      std::swap(out[n - 1 - s], out[targets[static_cast<std::size_t>(s - chunk_begin)]]);
  }
}

}  // namespace kiln::backend::cpu
