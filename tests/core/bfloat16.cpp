// Tests for kiln/core/bfloat16.hpp: hand-derived conversions, rounding at the bit level, special
// values and the exhaustive bfloat16 -> float -> bfloat16 round trip.
#include <kiln/core/bfloat16.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace {

float float_from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

std::uint16_t bf16_bits_of_float_bits(std::uint32_t u) {
  return kiln::bfloat16(float_from_bits(u)).bits();
}

static_assert(std::is_trivially_copyable_v<kiln::bfloat16>);
static_assert(std::is_trivial_v<kiln::bfloat16>);
static_assert(std::is_standard_layout_v<kiln::bfloat16>);
static_assert(sizeof(kiln::bfloat16) == 2 && alignof(kiln::bfloat16) == 2);
static_assert(!std::is_convertible_v<float, kiln::bfloat16>, "narrowing must be explicit");
static_assert(std::is_convertible_v<kiln::bfloat16, float>, "widening is implicit and exact");
// Conversions are constexpr.
static_assert(kiln::bfloat16(1.0f).bits() == 0x3F80);
static_assert(float(kiln::bfloat16::from_bits(0xC000)) == -2.0f);

}  // namespace

TEST_CASE("bfloat16 exact values") {
  CHECK(kiln::bfloat16(1.0f).bits() == 0x3F80);
  CHECK(float(kiln::bfloat16::from_bits(0x3F80)) == 1.0f);
  CHECK(kiln::bfloat16(-2.0f).bits() == 0xC000);
  CHECK(kiln::bfloat16(0.5f).bits() == 0x3F00);
  CHECK(kiln::bfloat16(3.0f).bits() == 0x4040);
  CHECK(kiln::bfloat16(0.0f).bits() == 0x0000);
  CHECK(kiln::bfloat16(-0.0f).bits() == 0x8000);
  CHECK(std::signbit(float(kiln::bfloat16(-0.0f))));
  CHECK(kiln::bfloat16(1.0).bits() == 0x3F80);  // from double
  CHECK(kiln::bfloat16(-3).bits() == 0xC040);   // from int
  // Largest finite, smallest normal and smallest subnormal bfloat16.
  CHECK(float(kiln::bfloat16::from_bits(0x7F7F)) == float_from_bits(0x7F7F0000u));
  CHECK(float(kiln::bfloat16::from_bits(0x0080)) == std::numeric_limits<float>::min());
  CHECK(float(kiln::bfloat16::from_bits(0x0001)) == float_from_bits(0x00010000u));
}

TEST_CASE("bfloat16 rounds to nearest, ties to even, at the bit level") {
  // Exactly halfway with an even result: stays.
  CHECK(bf16_bits_of_float_bits(0x3F808000u) == 0x3F80);
  // Exactly halfway with an odd lower neighbour: rounds up to even.
  CHECK(bf16_bits_of_float_bits(0x3F818000u) == 0x3F82);
  // Just below and just above halfway.
  CHECK(bf16_bits_of_float_bits(0x3F807FFFu) == 0x3F80);
  CHECK(bf16_bits_of_float_bits(0x3F808001u) == 0x3F81);
  CHECK(bf16_bits_of_float_bits(0x3F817FFFu) == 0x3F81);
  // Negative values round on magnitude the same way.
  CHECK(bf16_bits_of_float_bits(0xBF808000u) == 0xBF80);
  CHECK(bf16_bits_of_float_bits(0xBF818000u) == 0xBF82);
  CHECK(bf16_bits_of_float_bits(0xBF80C000u) == 0xBF81);
  // A carry out of the mantissa bumps the exponent: 1.99999... -> 2.
  CHECK(bf16_bits_of_float_bits(0x3FFFC000u) == 0x4000);
  // Subnormals round the same way.
  CHECK(bf16_bits_of_float_bits(0x00008000u) == 0x0000);
  CHECK(bf16_bits_of_float_bits(0x00018000u) == 0x0002);
  CHECK(bf16_bits_of_float_bits(0x00008001u) == 0x0001);
  // 1/3 = 0x3EAAAAAB -> 0x3EAB (remainder 0xAAAB > half).
  CHECK(kiln::bfloat16(1.0f / 3.0f).bits() == 0x3EAB);
}

TEST_CASE("bfloat16 overflow, infinity and NaN") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(kiln::bfloat16(inf).bits() == 0x7F80);
  CHECK(kiln::bfloat16(-inf).bits() == 0xFF80);
  CHECK(float(kiln::bfloat16::from_bits(0x7F80)) == inf);
  // The largest float rounds past the largest finite bfloat16 (0x7F7F) to infinity.
  CHECK(kiln::bfloat16(std::numeric_limits<float>::max()).bits() == 0x7F80);
  CHECK(kiln::bfloat16(-std::numeric_limits<float>::max()).bits() == 0xFF80);
  // Halfway between 0x7F7F and infinity rounds to even, i.e. to infinity; below it stays.
  CHECK(bf16_bits_of_float_bits(0x7F7F8000u) == 0x7F80);
  CHECK(bf16_bits_of_float_bits(0x7F7F7FFFu) == 0x7F7F);
  CHECK(kiln::isinf(kiln::bfloat16(inf)));
  CHECK(kiln::isfinite(kiln::bfloat16::from_bits(0x7F7F)));

  const float qnan = std::numeric_limits<float>::quiet_NaN();
  const kiln::bfloat16 n(qnan);
  CHECK(kiln::isnan(n));
  CHECK(std::isnan(float(n)));
  CHECK((n.bits() & 0x0040) != 0);  // quiet
  CHECK(kiln::isnan(kiln::bfloat16(-qnan)));
  CHECK((kiln::bfloat16(-qnan).bits() & 0x8000) != 0);  // sign kept
  // A NaN whose payload lives only in the low 16 bits must not become infinity.
  CHECK(kiln::isnan(kiln::bfloat16(float_from_bits(0x7F800001u))));
  CHECK(kiln::isnan(kiln::bfloat16(float_from_bits(0xFF80FFFFu))));
  // A NaN that would carry into the sign bit under plain rounding stays a NaN.
  CHECK(kiln::isnan(kiln::bfloat16(float_from_bits(0x7FFFFFFFu))));
  CHECK(kiln::bfloat16(float_from_bits(0x7FFFFFFFu)).bits() == 0x7FFF);
  // Signalling NaN payload 0x7F81 is quietened and stays a NaN.
  CHECK(kiln::bfloat16(float_from_bits(0x7F810000u)).bits() == 0x7FC1);
  CHECK_FALSE(kiln::isnan(kiln::bfloat16(inf)));
}

TEST_CASE("bfloat16 comparisons and arithmetic through float") {
  const kiln::bfloat16 one(1.0f), two(2.0f), nan(std::nanf(""));
  const kiln::bfloat16 pz(0.0f), nz(-0.0f);
  CHECK(one < two);
  CHECK(one <= two);
  CHECK(two > one);
  CHECK(two >= one);
  CHECK(one != two);
  CHECK(one == kiln::bfloat16(1.0f));
  CHECK(pz == nz);  // -0 == +0 although the bits differ
  CHECK(pz.bits() != nz.bits());
  CHECK_FALSE(nan == nan);
  CHECK(nan != nan);
  CHECK_FALSE(nan < one);
  CHECK_FALSE(nan >= one);
  // Mixed comparisons use float.
  CHECK(one == 1.0f);
  CHECK(two > 1.5f);
  // Arithmetic promotes to float.
  const auto sum = one + two;
  static_assert(std::is_same_v<decltype(sum), const float>);
  CHECK(sum == 3.0f);
  CHECK(one * 0.5f == 0.5f);
  kiln::bfloat16 x(1.0f);
  x += 1.0f;
  CHECK(x == two);
  x *= 3.0f;
  CHECK(float(x) == 6.0f);
  x -= 2.0f;
  x /= 4.0f;
  CHECK(float(x) == 1.0f);
  // Compound assignment rounds: the spacing above 1 is 2^-7, so 1 + 2^-9 rounds back to 1.
  kiln::bfloat16 y(1.0f);
  y += 0x1p-9f;
  CHECK(float(y) == 1.0f);
}

TEST_CASE("bfloat16 exhaustive round trip: every bit pattern -> float -> bfloat16") {
  int nan_patterns = 0;
  for (std::uint32_t b = 0; b <= 0xFFFFu; ++b) {
    const kiln::bfloat16 x = kiln::bfloat16::from_bits(static_cast<std::uint16_t>(b));
    const float f = x;
    // Widening is exact: the float's bits are the bfloat16's bits followed by 16 zeros.
    std::uint32_t fb;
    std::memcpy(&fb, &f, sizeof fb);
    REQUIRE(fb == (b << 16));
    const kiln::bfloat16 back(f);
    if ((b & 0x7FFFu) > 0x7F80u) {
      ++nan_patterns;
      REQUIRE(kiln::isnan(back));
      REQUIRE(std::isnan(float(back)));
      REQUIRE((back.bits() & 0x8000u) == (b & 0x8000u));  // sign kept
      REQUIRE((back.bits() | 0x0040u) == (b | 0x0040u));  // payload kept, made quiet
    } else {
      REQUIRE(back.bits() == b);
    }
  }
  CHECK(nan_patterns == 2 * 127);
}

TEST_CASE("bfloat16 rounding agrees with a reference on many floats") {
  // Reference: pick the nearer of the two bfloat16 neighbours by exact double arithmetic,
  // ties to the even one.
  std::uint32_t state = 12345u;
  for (int t = 0; t < 200000; ++t) {
    state = state * 1664525u + 1013904223u;
    const std::uint32_t u = state;
    const float f = float_from_bits(u);
    if (std::isnan(f) || std::isinf(f)) continue;
    const std::uint32_t down = u & 0xFFFF0000u;
    const std::uint32_t up = down + 0x10000u;  // next magnitude (may be infinity)
    const double dd = float_from_bits(down);
    const double du = ((up & 0x7FFFFFFFu) == 0x7F800000u)
                          ? std::ldexp(1.0, 128) * (u >> 31 ? -1 : 1)  // rounding target inf
                          : double(float_from_bits(up));
    const double df = f;
    std::uint16_t expected;
    const double ed = std::fabs(df - dd), eu = std::fabs(du - df);
    if (ed < eu)
      expected = static_cast<std::uint16_t>(down >> 16);
    else if (eu < ed)
      expected = static_cast<std::uint16_t>(up >> 16);
    else
      expected = static_cast<std::uint16_t>(((down >> 16) & 1u) ? up >> 16 : down >> 16);
    REQUIRE(kiln::bfloat16(f).bits() == expected);
  }
}
