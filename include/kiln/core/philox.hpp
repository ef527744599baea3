// kiln/core/philox.hpp — the Philox4x32-10 bijection, kiln::Rng and the per-block value rules.
// Builds on core/config.hpp and <cmath>; every function here is usable inside CUDA kernels.
#pragma once

#include <kiln/core/config.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace kiln {

// ---------------------------------------------------------------------------------------------
// The bijection.
//
// Philox4x32 from Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3"
// (SC 2011), section 3.3, with the constants of the Random123 library. One round maps the
// counter (c0, c1, c2, c3) under the round key (k0, k1) to
//     (hi(M1*c2) ^ c1 ^ k0,  lo(M1*c2),  hi(M0*c0) ^ c3 ^ k1,  lo(M0*c0))
// where hi/lo are the high and low 32 bits of the 64-bit product; between rounds the key is
// bumped by the Weyl constants (k0 += W0, k1 += W1), all arithmetic modulo 2^32.
// ---------------------------------------------------------------------------------------------

// Four 32-bit words: a Philox counter, or the output block the bijection maps it to.
struct PhiloxBlock {
  std::uint32_t words[4];

  KILN_HD constexpr std::uint32_t operator[](int i) const { return words[i]; }
  KILN_HD constexpr std::uint32_t& operator[](int i) { return words[i]; }
  friend KILN_HD constexpr bool operator==(const PhiloxBlock& a, const PhiloxBlock& b) {
    return a.words[0] == b.words[0] && a.words[1] == b.words[1] && a.words[2] == b.words[2] &&
           a.words[3] == b.words[3];
  }
};

// Two 32-bit words: a Philox key.
struct PhiloxKey {
  std::uint32_t words[2];

  KILN_HD constexpr std::uint32_t operator[](int i) const { return words[i]; }
  friend KILN_HD constexpr bool operator==(const PhiloxKey& a, const PhiloxKey& b) {
    return a.words[0] == b.words[0] && a.words[1] == b.words[1];
  }
};

inline constexpr std::uint32_t philox4x32_multiplier0 = 0xD2511F53u;
inline constexpr std::uint32_t philox4x32_multiplier1 = 0xCD9E8D57u;
inline constexpr std::uint32_t philox4x32_weyl0 = 0x9E3779B9u;  // golden ratio
inline constexpr std::uint32_t philox4x32_weyl1 = 0xBB67AE85u;  // sqrt(3) - 1

namespace detail {

// One Philox4x32 round on (c0, c1, c2, c3) under the round key (k0, k1).
KILN_HD KILN_FORCEINLINE constexpr void philox4x32_round(std::uint32_t& c0, std::uint32_t& c1,
                                                         std::uint32_t& c2, std::uint32_t& c3,
                                                         std::uint32_t k0, std::uint32_t k1) {
  const std::uint64_t p0 = static_cast<std::uint64_t>(philox4x32_multiplier0) * c0;
  const std::uint64_t p1 = static_cast<std::uint64_t>(philox4x32_multiplier1) * c2;
  c0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1 ^ k0;
  c1 = static_cast<std::uint32_t>(p1);
  c2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c3 = static_cast<std::uint32_t>(p0);
}

}  // namespace detail

// Philox4x32 with `Rounds` rounds (Random123 names it philox4x32_R). Rounds = 10 is the
// Crush-resistant variant kiln uses; other counts exist for known-answer tests.
template <int Rounds>
KILN_HD KILN_FORCEINLINE constexpr PhiloxBlock philox4x32(PhiloxBlock counter, PhiloxKey key) {
  static_assert(Rounds >= 1 && Rounds <= 16, "philox4x32 is defined for 1 to 16 rounds");
  std::uint32_t c0 = counter.words[0], c1 = counter.words[1];
  std::uint32_t c2 = counter.words[2], c3 = counter.words[3];
  std::uint32_t k0 = key.words[0], k1 = key.words[1];
  for (int round = 0; round < Rounds; ++round) {
    detail::philox4x32_round(c0, c1, c2, c3, k0, k1);
    k0 += philox4x32_weyl0;
    k1 += philox4x32_weyl1;
  }
  return PhiloxBlock{{c0, c1, c2, c3}};
}

// Philox4x32-10: the bijection behind kiln::Rng.
KILN_HD constexpr PhiloxBlock philox4x32_10(PhiloxBlock counter, PhiloxKey key) {
  return philox4x32<10>(counter, key);
}

// ---------------------------------------------------------------------------------------------
// Generator state.
//
// Counter rule. The counter is 128 bits: words 0 and 1 hold the 64-bit block index (low word
// first), words 2 and 3 hold the 64-bit subsequence id (low word first, 0 by default). The key
// is the 64-bit seed (word 0 = low 32 bits, word 1 = high 32 bits). `offset` is the next unused
// block index. A fill of n values that takes V values from each block reserves ceil(n / V)
// blocks starting at `first = rng.reserve(ceil(n / V))`; value i of that fill comes from block
// `first + i / V`, slot `i % V`. Every value therefore depends only on (seed, subsequence,
// offset, i): never on thread count, work split or device. Block indices wrap modulo 2^64.
//
// Values per block V (the same on every device):
//   uniform and normal of float or bfloat16, bernoulli of any type:   V = 4, one word per value
//   uniform and normal of double:                                      V = 2, two words per value
//   random_permutation of n: n blocks; Fisher–Yates step s (0 <= s < n - 1) swaps positions
//   n - 1 - s and bounded_from_block(block(first + s), key, n - s)
// ---------------------------------------------------------------------------------------------

// What a checkpoint stores to restore an Rng exactly.
struct RngState {
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;
  std::uint64_t subsequence = 0;

  friend KILN_HD constexpr bool operator==(const RngState& a, const RngState& b) {
    return a.seed == b.seed && a.offset == b.offset && a.subsequence == b.subsequence;
  }
};

// Counter-based generator: a seed, a subsequence id and a block offset. Cheap to copy; copies
// produce the same numbers. Drawing never mutates anything but the offset.
class Rng {
 public:
  // Size in bytes of the serialized state (three little-endian uint64: seed, offset,
  // subsequence).
  static constexpr int serialized_size = 24;

  constexpr Rng() = default;
  KILN_HD constexpr explicit Rng(std::uint64_t seed, std::uint64_t offset = 0,
                                 std::uint64_t subsequence = 0)
      : seed_(seed), offset_(offset), subsequence_(subsequence) {}
  KILN_HD constexpr explicit Rng(const RngState& state)
      : seed_(state.seed), offset_(state.offset), subsequence_(state.subsequence) {}

  KILN_HD constexpr std::uint64_t seed() const { return seed_; }
  KILN_HD constexpr std::uint64_t offset() const { return offset_; }
  KILN_HD constexpr std::uint64_t subsequence() const { return subsequence_; }
  KILN_HD constexpr void set_offset(std::uint64_t offset) { offset_ = offset; }
  KILN_HD constexpr void set_subsequence(std::uint64_t subsequence) { subsequence_ = subsequence; }

  // Skips `n_blocks` blocks without drawing them.
  KILN_HD constexpr void advance(std::uint64_t n_blocks) { offset_ += n_blocks; }

  // Reserves `n_blocks` consecutive blocks for one fill: returns the first block index and
  // moves the offset past the reservation.
  KILN_HD constexpr std::uint64_t reserve(std::uint64_t n_blocks) {
    const std::uint64_t first = offset_;
    offset_ += n_blocks;
    return first;
  }

  // Number of blocks a fill of `n_values` reserves when each block yields `values_per_block`.
  static KILN_HD constexpr std::uint64_t blocks_for(std::uint64_t n_values,
                                                    std::uint64_t values_per_block) {
    return n_values / values_per_block + (n_values % values_per_block != 0 ? 1 : 0);
  }

  KILN_HD constexpr PhiloxKey key() const {
    return PhiloxKey{{static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32)}};
  }

  // The counter of block `block_index` in this generator's subsequence.
  KILN_HD constexpr PhiloxBlock counter(std::uint64_t block_index) const {
    return PhiloxBlock{
        {static_cast<std::uint32_t>(block_index), static_cast<std::uint32_t>(block_index >> 32),
         static_cast<std::uint32_t>(subsequence_), static_cast<std::uint32_t>(subsequence_ >> 32)}};
  }

  // The four random words of block `block_index` (does not move the offset).
  KILN_HD constexpr PhiloxBlock block(std::uint64_t block_index) const {
    return philox4x32_10(counter(block_index), key());
  }

  // The next block: returns block(offset()) and advances the offset by one.
  KILN_HD constexpr PhiloxBlock next_block() { return block(reserve(1)); }

  KILN_HD constexpr RngState state() const { return RngState{seed_, offset_, subsequence_}; }
  KILN_HD constexpr void set_state(const RngState& state) {
    seed_ = state.seed;
    offset_ = state.offset;
    subsequence_ = state.subsequence;
  }

  // Writes the state as 24 bytes: seed, offset, subsequence, each little-endian.
  KILN_HD constexpr void serialize(std::uint8_t* out) const {
    const std::uint64_t values[3] = {seed_, offset_, subsequence_};
    for (int v = 0; v < 3; ++v)
      for (int b = 0; b < 8; ++b) out[8 * v + b] = static_cast<std::uint8_t>(values[v] >> (8 * b));
  }

  // Reads a state written by serialize().
  static KILN_HD constexpr Rng deserialize(const std::uint8_t* in) {
    std::uint64_t values[3] = {0, 0, 0};
    for (int v = 0; v < 3; ++v)
      for (int b = 0; b < 8; ++b) values[v] |= static_cast<std::uint64_t>(in[8 * v + b]) << (8 * b);
    return Rng(values[0], values[1], values[2]);
  }

  friend KILN_HD constexpr bool operator==(const Rng& a, const Rng& b) {
    return a.seed_ == b.seed_ && a.offset_ == b.offset_ && a.subsequence_ == b.subsequence_;
  }

 private:
  std::uint64_t seed_ = 0;
  std::uint64_t offset_ = 0;
  std::uint64_t subsequence_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Scalar value rules.
// ---------------------------------------------------------------------------------------------

// Uniform in [0, 1) with 24 random bits: (u >> 8) * 2^-24. Exact in float.
KILN_HD constexpr float uniform_float(std::uint32_t u) {
  return static_cast<float>(u >> 8) * (1.0f / 16777216.0f);
}

// Uniform in (0, 1] with 24 random bits: ((u >> 8) + 1) * 2^-24; safe to take the log of.
KILN_HD constexpr float uniform_float_open_closed(std::uint32_t u) {
  return static_cast<float>((u >> 8) + 1u) * (1.0f / 16777216.0f);
}

// Uniform in [0, 1) with 53 random bits from the 64-bit word (hi:lo): (w >> 11) * 2^-53.
KILN_HD constexpr double uniform_double(std::uint32_t lo, std::uint32_t hi) {
  const std::uint64_t w = (static_cast<std::uint64_t>(hi) << 32) | lo;
  return static_cast<double>(w >> 11) * (1.0 / 9007199254740992.0);
}

// Uniform in (0, 1] with 53 random bits: ((w >> 11) + 1) * 2^-53.
KILN_HD constexpr double uniform_double_open_closed(std::uint32_t lo, std::uint32_t hi) {
  const std::uint64_t w = (static_cast<std::uint64_t>(hi) << 32) | lo;
  return static_cast<double>((w >> 11) + 1u) * (1.0 / 9007199254740992.0);
}

// A pair of independent standard normals.
template <class T>
struct NormalPair {
  T first, second;
};

// Box–Muller (Box and Muller 1958): with u1 in (0, 1] and u2 in [0, 1),
// r = sqrt(-2 ln u1), theta = 2 pi u2, the pair (r cos theta, r sin theta) is two independent
// N(0, 1) values. u1 comes from the first word, u2 from the second.
KILN_HD inline NormalPair<float> normal_pair_float(std::uint32_t w_radius, std::uint32_t w_angle) {
  const float u1 = uniform_float_open_closed(w_radius);
  const float u2 = uniform_float(w_angle);
  const float r = std::sqrt(-2.0f * std::log(u1));
  const float theta = 6.28318530717958647692f * u2;
  return NormalPair<float>{r * std::cos(theta), r * std::sin(theta)};
}

// Box–Muller in double: u1 from the 64-bit word (hi0:lo0), u2 from (hi1:lo1).
KILN_HD inline NormalPair<double> normal_pair_double(std::uint32_t lo0, std::uint32_t hi0,
                                                     std::uint32_t lo1, std::uint32_t hi1) {
  const double u1 = uniform_double_open_closed(lo0, hi0);
  const double u2 = uniform_double(lo1, hi1);
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double theta = 6.28318530717958647692 * u2;
  return NormalPair<double>{r * std::cos(theta), r * std::sin(theta)};
}

// Bernoulli(p) from one word: 1 when u < ceil(p * 2^32), i.e. when u * 2^-32 < p (resolution
// 2^-32). p <= 0 (or NaN) never fires, p >= 1 always does.
KILN_HD constexpr std::uint64_t bernoulli_threshold(double p) {
  if (!(p > 0.0)) return 0;
  if (p >= 1.0) return std::uint64_t{1} << 32;
  const double scaled = p * 4294967296.0;  // exact: a power-of-two scale
  std::uint64_t t = static_cast<std::uint64_t>(scaled);
  if (static_cast<double>(t) < scaled) ++t;
  return t;
}

KILN_HD constexpr bool bernoulli_from_word(std::uint32_t u, std::uint64_t threshold) {
  return static_cast<std::uint64_t>(u) < threshold;
}

// ---------------------------------------------------------------------------------------------
// Per-block value rules: what one Philox block turns into. Backends call these so every device
// maps the same block to the same values (uniforms and bernoulli bit for bit; normals up to the
// ulp accuracy of the device's log, sqrt, sin and cos).
// ---------------------------------------------------------------------------------------------

template <class T, int N>
struct BlockValues {
  T values[static_cast<std::size_t>(N)];
  KILN_HD constexpr T operator[](int i) const { return values[i]; }
};

inline constexpr int float_values_per_block = 4;
inline constexpr int double_values_per_block = 2;

// Four uniforms in [0, 1): value j from word j.
KILN_HD constexpr BlockValues<float, 4> uniform_float_block(const PhiloxBlock& b) {
  return BlockValues<float, 4>{
      {uniform_float(b[0]), uniform_float(b[1]), uniform_float(b[2]), uniform_float(b[3])}};
}

// Two uniforms in [0, 1): value 0 from words (0 low, 1 high), value 1 from words (2 low, 3 high).
KILN_HD constexpr BlockValues<double, 2> uniform_double_block(const PhiloxBlock& b) {
  return BlockValues<double, 2>{{uniform_double(b[0], b[1]), uniform_double(b[2], b[3])}};
}

// Four standard normals: values 0, 1 from the pair of words (0, 1); values 2, 3 from (2, 3).
KILN_HD inline BlockValues<float, 4> normal_float_block(const PhiloxBlock& b) {
  const NormalPair<float> a = normal_pair_float(b[0], b[1]);
  const NormalPair<float> c = normal_pair_float(b[2], b[3]);
  return BlockValues<float, 4>{{a.first, a.second, c.first, c.second}};
}

// Two standard normals from one Box–Muller pair: u1 from words (0, 1), u2 from words (2, 3).
KILN_HD inline BlockValues<double, 2> normal_double_block(const PhiloxBlock& b) {
  const NormalPair<double> a = normal_pair_double(b[0], b[1], b[2], b[3]);
  return BlockValues<double, 2>{{a.first, a.second}};
}

// Four bernoulli bits: value j from word j.
KILN_HD constexpr BlockValues<bool, 4> bernoulli_block(const PhiloxBlock& b,
                                                       std::uint64_t threshold) {
  return BlockValues<bool, 4>{
      {bernoulli_from_word(b[0], threshold), bernoulli_from_word(b[1], threshold),
       bernoulli_from_word(b[2], threshold), bernoulli_from_word(b[3], threshold)}};
}

// An unbiased integer in [0, range) from a 64-bit word by Lemire's multiply-and-reject
// ("Fast random integer generation in an interval", ACM TOMS 2019): m = w * range (128-bit);
// accept hi(m) when lo(m) >= (2^64 - range) mod range. Returns false when the word is rejected.
// range must be >= 1.
KILN_HD constexpr bool bounded_from_word(std::uint64_t w, std::uint64_t range,
                                         std::uint64_t* result) {
  // 64x64 -> 128 multiply from 32-bit halves (portable to every compiler and device).
  const std::uint64_t w_lo = w & 0xFFFFFFFFu, w_hi = w >> 32;
  const std::uint64_t r_lo = range & 0xFFFFFFFFu, r_hi = range >> 32;
  const std::uint64_t ll = w_lo * r_lo, lh = w_lo * r_hi, hl = w_hi * r_lo, hh = w_hi * r_hi;
  const std::uint64_t mid = (ll >> 32) + (lh & 0xFFFFFFFFu) + (hl & 0xFFFFFFFFu);
  const std::uint64_t low = (mid << 32) | (ll & 0xFFFFFFFFu);
  const std::uint64_t high = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
  if (low < range) {
    const std::uint64_t threshold = (0 - range) % range;  // (2^64 - range) mod range
    if (low < threshold) return false;
  }
  *result = high;
  return true;
}

// An unbiased integer in [0, range) from one block: tries the 64-bit words (1:0), then (3:2);
// when both are rejected (probability below (range / 2^64)^2) it re-encrypts the block,
// block = philox4x32_10(block, key), and tries again. range must be >= 1.
KILN_HD constexpr std::uint64_t bounded_from_block(PhiloxBlock b, PhiloxKey key,
                                                   std::uint64_t range) {
  for (;;) {
    std::uint64_t result = 0;
    if (bounded_from_word((static_cast<std::uint64_t>(b[1]) << 32) | b[0], range, &result))
      return result;
    if (bounded_from_word((static_cast<std::uint64_t>(b[3]) << 32) | b[2], range, &result))
      return result;
    b = philox4x32_10(b, key);
  }
}

}  // namespace kiln
