// Tests for kiln/core/philox.hpp: known-answer vectors, the counter rule, Rng state handling and
// the scalar value rules.
#include <kiln/core/philox.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

struct KnownAnswer {
  kiln::PhiloxBlock counter;
  kiln::PhiloxKey key;
  kiln::PhiloxBlock expected;
};

// Random123's tests/kat_vectors (as reproduced in DEShawResearch/Random123-Boost,
// libs/random/test/test_philox.cpp): counter words, key words, output words.
constexpr KnownAnswer philox4x32_10_vectors[] = {
    {{{0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u}},
     {{0x00000000u, 0x00000000u}},
     {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
    {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
     {{0xffffffffu, 0xffffffffu}},
     {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
    // The hexadecimal digits of pi.
    {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
     {{0xa4093822u, 0x299f31d0u}},
     {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
};

constexpr KnownAnswer philox4x32_7_vectors[] = {
    {{{0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u}},
     {{0x00000000u, 0x00000000u}},
     {{0x5f6fb709u, 0x0d893f64u, 0x4f121f81u, 0x4f730a48u}}},
    {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
     {{0xffffffffu, 0xffffffffu}},
     {{0x5207ddc2u, 0x45165e59u, 0x4d8ee751u, 0x8c52f662u}}},
    {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
     {{0xa4093822u, 0x299f31d0u}},
     {{0x4dfccabau, 0x190a87f0u, 0xc47362bau, 0xb6b5242au}}},
};

// The known answers hold at compile time too.
static_assert(kiln::philox4x32_10(philox4x32_10_vectors[2].counter, philox4x32_10_vectors[2].key) ==
              philox4x32_10_vectors[2].expected);

}  // namespace

TEST_CASE("philox4x32_10 matches Random123's known-answer vectors") {
  for (const auto& v : philox4x32_10_vectors) {
    const kiln::PhiloxBlock out = kiln::philox4x32_10(v.counter, v.key);
    for (int i = 0; i < 4; ++i) CHECK(out[i] == v.expected[i]);
  }
}

TEST_CASE("philox4x32 with 7 rounds matches Random123's known-answer vectors") {
  for (const auto& v : philox4x32_7_vectors) {
    const kiln::PhiloxBlock out = kiln::philox4x32<7>(v.counter, v.key);
    for (int i = 0; i < 4; ++i) CHECK(out[i] == v.expected[i]);
  }
}

TEST_CASE("Rng maps seed to key and (block, subsequence) to the counter") {
  const kiln::Rng rng(0x299f31d0a4093822ull, 0, 0x0370734413198a2eull);
  CHECK(rng.key() == kiln::PhiloxKey{{0xa4093822u, 0x299f31d0u}});
  const kiln::PhiloxBlock c = rng.counter(0x85a308d3243f6a88ull);
  CHECK(c == kiln::PhiloxBlock{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}});
  // So block() of that index is the pi known-answer vector.
  CHECK(rng.block(0x85a308d3243f6a88ull) == philox4x32_10_vectors[2].expected);
  // Seed 0, subsequence 0, block 0 is the all-zero vector; all ones likewise.
  CHECK(kiln::Rng(0).block(0) == philox4x32_10_vectors[0].expected);
  CHECK(kiln::Rng(~0ull, 0, ~0ull).block(~0ull) == philox4x32_10_vectors[1].expected);
}

TEST_CASE("reserve and advance arithmetic") {
  kiln::Rng rng(7, 100);
  CHECK(rng.seed() == 7);
  CHECK(rng.offset() == 100);
  CHECK(rng.subsequence() == 0);
  CHECK(rng.reserve(3) == 100);
  CHECK(rng.offset() == 103);
  CHECK(rng.reserve(0) == 103);
  CHECK(rng.offset() == 103);
  rng.advance(10);
  CHECK(rng.offset() == 113);
  rng.set_offset(5);
  CHECK(rng.offset() == 5);
  CHECK(rng.next_block() == kiln::Rng(7).block(5));
  CHECK(rng.offset() == 6);

  CHECK(kiln::Rng::blocks_for(0, 4) == 0);
  CHECK(kiln::Rng::blocks_for(1, 4) == 1);
  CHECK(kiln::Rng::blocks_for(4, 4) == 1);
  CHECK(kiln::Rng::blocks_for(5, 4) == 2);
  CHECK(kiln::Rng::blocks_for(1000001, 4) == 250001);
  CHECK(kiln::Rng::blocks_for(3, 2) == 2);

  // Offsets wrap modulo 2^64.
  kiln::Rng end(1, ~0ull);
  CHECK(end.reserve(2) == ~0ull);
  CHECK(end.offset() == 1);
}

TEST_CASE("Rng copies, compares, and round-trips its state") {
  kiln::Rng a(0x0123456789abcdefull, 42, 9);
  kiln::Rng b = a;
  CHECK(a == b);
  CHECK(a.next_block() == b.next_block());
  CHECK(a == b);
  b.reserve(1);
  CHECK_FALSE(a == b);

  const kiln::RngState s = a.state();
  CHECK(s.seed == 0x0123456789abcdefull);
  CHECK(s.offset == 43);
  CHECK(s.subsequence == 9);
  CHECK(kiln::Rng(s) == a);
  kiln::Rng c;
  CHECK(c == kiln::Rng(0, 0, 0));
  c.set_state(s);
  CHECK(c == a);

  std::uint8_t bytes[kiln::Rng::serialized_size];
  a.serialize(bytes);
  CHECK(bytes[0] == 0xef);  // seed, little-endian
  CHECK(bytes[7] == 0x01);
  CHECK(bytes[8] == 43);  // offset
  CHECK(bytes[16] == 9);  // subsequence
  const kiln::Rng d = kiln::Rng::deserialize(bytes);
  CHECK(d == a);
  CHECK(d.block(1000) == a.block(1000));

  // Different subsequences give different streams.
  CHECK_FALSE(kiln::Rng(5, 0, 0).block(0) == kiln::Rng(5, 0, 1).block(0));
}

TEST_CASE("uniform value rules") {
  CHECK(kiln::uniform_float(0u) == 0.0f);
  CHECK(kiln::uniform_float(0xFFFFFFFFu) == 1.0f - 0x1p-24f);
  CHECK(kiln::uniform_float(0x80000000u) == 0.5f);
  CHECK(kiln::uniform_float(0x000000FFu) == 0.0f);  // the low 8 bits are dropped
  CHECK(kiln::uniform_float_open_closed(0u) == 0x1p-24f);
  CHECK(kiln::uniform_float_open_closed(0xFFFFFFFFu) == 1.0f);

  CHECK(kiln::uniform_double(0u, 0u) == 0.0);
  CHECK(kiln::uniform_double(0xFFFFFFFFu, 0xFFFFFFFFu) == 1.0 - 0x1p-53);
  CHECK(kiln::uniform_double(0u, 0x80000000u) == 0.5);
  CHECK(kiln::uniform_double(0x800u, 0u) == 0x1p-53);  // bit 11 is the lowest one used
  CHECK(kiln::uniform_double(0x7FFu, 0u) == 0.0);
  CHECK(kiln::uniform_double_open_closed(0u, 0u) == 0x1p-53);
  CHECK(kiln::uniform_double_open_closed(0xFFFFFFFFu, 0xFFFFFFFFu) == 1.0);

  const kiln::PhiloxBlock b{{0u, 0x80000000u, 0xFFFFFFFFu, 0x40000000u}};
  const auto f = kiln::uniform_float_block(b);
  CHECK(f[0] == 0.0f);
  CHECK(f[1] == 0.5f);
  CHECK(f[2] == 1.0f - 0x1p-24f);
  CHECK(f[3] == 0.25f);
  const auto d = kiln::uniform_double_block(b);
  CHECK(d[0] == 0.5);
  CHECK(d[1] == kiln::uniform_double(0xFFFFFFFFu, 0x40000000u));
}

TEST_CASE("Box-Muller value rules") {
  // u1 = 1 (word 0xFFFFFFFF) gives radius 0.
  const auto zero = kiln::normal_pair_float(0xFFFFFFFFu, 0x12345678u);
  CHECK(zero.first == 0.0f);
  CHECK(zero.second == 0.0f);
  // u2 = 0 gives angle 0: (r, 0) with r = sqrt(-2 ln u1).
  const std::uint32_t w = 0x40000000u;  // u1 = (2^22 + 1) * 2^-24
  const auto p = kiln::normal_pair_float(w, 0u);
  const double u1 = (double((w >> 8) + 1)) * 0x1p-24;
  CHECK(p.first == doctest::Approx(std::sqrt(-2.0 * std::log(u1))).epsilon(1e-6));
  CHECK(p.second == 0.0f);
  // u2 = 1/4 gives angle pi/2: (~0, r).
  const auto q = kiln::normal_pair_float(w, 0x40000000u);
  CHECK(std::fabs(q.first) < 1e-6f);
  CHECK(q.second == doctest::Approx(std::sqrt(-2.0 * std::log(u1))).epsilon(1e-6));

  // The block rules use the documented word pairs.
  const kiln::PhiloxBlock b{{0x11111111u, 0x22222222u, 0x33333333u, 0x44444444u}};
  const auto nf = kiln::normal_float_block(b);
  const auto p01 = kiln::normal_pair_float(b[0], b[1]);
  const auto p23 = kiln::normal_pair_float(b[2], b[3]);
  CHECK(nf[0] == p01.first);
  CHECK(nf[1] == p01.second);
  CHECK(nf[2] == p23.first);
  CHECK(nf[3] == p23.second);
  const auto nd = kiln::normal_double_block(b);
  const auto pd = kiln::normal_pair_double(b[0], b[1], b[2], b[3]);
  CHECK(nd[0] == pd.first);
  CHECK(nd[1] == pd.second);
  const double r = std::sqrt(-2.0 * std::log(kiln::uniform_double_open_closed(b[0], b[1])));
  const double theta = 2.0 * 3.14159265358979323846 * kiln::uniform_double(b[2], b[3]);
  CHECK(nd[0] == doctest::Approx(r * std::cos(theta)).epsilon(1e-14));
  CHECK(nd[1] == doctest::Approx(r * std::sin(theta)).epsilon(1e-14));
}

TEST_CASE("bernoulli thresholds") {
  CHECK(kiln::bernoulli_threshold(0.0) == 0);
  CHECK(kiln::bernoulli_threshold(-1.0) == 0);
  CHECK(kiln::bernoulli_threshold(std::nan("")) == 0);
  CHECK(kiln::bernoulli_threshold(1.0) == (1ull << 32));
  CHECK(kiln::bernoulli_threshold(0.5) == (1ull << 31));
  CHECK(kiln::bernoulli_threshold(0x1p-32) == 1);
  CHECK(kiln::bernoulli_threshold(0x1p-33) == 1);  // ceil: any p > 0 can fire
  CHECK(kiln::bernoulli_threshold(1.0 - 0x1p-40) == (1ull << 32));
  CHECK(kiln::bernoulli_from_word(0xFFFFFFFFu, kiln::bernoulli_threshold(1.0)));
  CHECK_FALSE(kiln::bernoulli_from_word(0u, kiln::bernoulli_threshold(0.0)));
  CHECK(kiln::bernoulli_from_word(0x7FFFFFFFu, kiln::bernoulli_threshold(0.5)));
  CHECK_FALSE(kiln::bernoulli_from_word(0x80000000u, kiln::bernoulli_threshold(0.5)));
}

TEST_CASE("bounded integers: the 128-bit product and Lemire's rejection") {
  // The portable multiply agrees with the compiler's 128-bit one.
  kiln::Rng rng(3);
  for (int t = 0; t < 2000; ++t) {
    const kiln::PhiloxBlock b = rng.next_block();
    const std::uint64_t w = (std::uint64_t(b[1]) << 32) | b[0];
    std::uint64_t range = (std::uint64_t(b[3]) << 32) | b[2];
    if (t % 3 == 0) range >>= 40;
    if (range == 0) range = 1;
    std::uint64_t got = 0;
    const bool accepted = kiln::bounded_from_word(w, range, &got);
    const unsigned __int128 m = static_cast<unsigned __int128>(w) * range;
    const std::uint64_t low = static_cast<std::uint64_t>(m);
    const std::uint64_t threshold = (0 - range) % range;
    CHECK(accepted == (low >= threshold));
    if (accepted) {
      CHECK(got == static_cast<std::uint64_t>(m >> 64));
      CHECK(got < range);
    }
  }
  // A range near 2^64 rejects about half of the words: exercise the re-encryption path.
  const std::uint64_t big = (1ull << 63) + 1;
  int rejected = 0;
  std::uint64_t dummy = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    const kiln::PhiloxBlock b = kiln::Rng(11).block(i);
    const bool first = kiln::bounded_from_word((std::uint64_t(b[1]) << 32) | b[0], big, &dummy);
    const bool second = kiln::bounded_from_word((std::uint64_t(b[3]) << 32) | b[2], big, &dummy);
    if (!first && !second) ++rejected;
    CHECK(kiln::bounded_from_block(b, kiln::Rng(11).key(), big) < big);
  }
  CHECK(rejected > 100);  // about a quarter of the blocks needed re-encryption
  CHECK(rejected < 400);

  // Small ranges are uniform (chi-square, 6 degrees of freedom, p = 1e-4 bound 27.9).
  std::vector<int> counts(7, 0);
  const int draws = 70000;
  kiln::Rng r(123);
  for (int i = 0; i < draws; ++i) {
    const std::uint64_t v = kiln::bounded_from_block(r.next_block(), r.key(), 7);
    REQUIRE(v < 7);
    ++counts[v];
  }
  double chi2 = 0;
  for (int c : counts) chi2 += (c - draws / 7.0) * (c - draws / 7.0) / (draws / 7.0);
  CHECK(chi2 < 27.9);
}
