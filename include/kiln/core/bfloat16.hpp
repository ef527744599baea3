// kiln/core/bfloat16.hpp — kiln::bfloat16, 16-bit storage rounded to nearest even from float.
// Builds on core/config.hpp and <cstdint>; every function here is usable inside CUDA kernels.
#pragma once

#include <kiln/core/config.hpp>

#include <cstdint>

namespace kiln {

namespace detail {

KILN_HD constexpr std::uint32_t bfloat16_float_to_bits(float f) {
  return __builtin_bit_cast(std::uint32_t, f);
}

KILN_HD constexpr float bfloat16_bits_to_float(std::uint32_t u) {
  return __builtin_bit_cast(float, u);
}

// The upper 16 bits of the float, rounded to nearest with ties to even. A NaN keeps its sign and
// top payload bits and is made quiet (bit 6 of the result set), so it stays a NaN; values above
// the largest finite bfloat16 round to infinity.
KILN_HD constexpr std::uint16_t float_to_bfloat16_bits(float f) {
  const std::uint32_t u = bfloat16_float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  const std::uint32_t rounding_bias = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>((u + rounding_bias) >> 16);
}

}  // namespace detail

// Sign, 8 exponent bits and 7 stored mantissa bits: the top half of an IEEE-754 float.
// Trivially copyable, two bytes. Converting from float rounds to nearest even; converting to
// float is exact. Arithmetic promotes to float (`a + b` is a float); comparisons compare the
// float values, so NaN is unordered and -0 == +0.
struct bfloat16 {
  std::uint16_t storage;  // the raw bits

  bfloat16() = default;
  KILN_HD constexpr explicit bfloat16(float f) : storage(detail::float_to_bfloat16_bits(f)) {}
  KILN_HD constexpr explicit bfloat16(double d) : bfloat16(static_cast<float>(d)) {}
  KILN_HD constexpr explicit bfloat16(int i) : bfloat16(static_cast<float>(i)) {}

  // The value with the given bit pattern.
  static KILN_HD constexpr bfloat16 from_bits(std::uint16_t bits) {
    bfloat16 b{};
    b.storage = bits;
    return b;
  }
  KILN_HD constexpr std::uint16_t bits() const { return storage; }

  KILN_HD constexpr operator float() const {
    return detail::bfloat16_bits_to_float(static_cast<std::uint32_t>(storage) << 16);
  }

  KILN_HD constexpr bfloat16& operator+=(float x) { return *this = bfloat16(float(*this) + x); }
  KILN_HD constexpr bfloat16& operator-=(float x) { return *this = bfloat16(float(*this) - x); }
  KILN_HD constexpr bfloat16& operator*=(float x) { return *this = bfloat16(float(*this) * x); }
  KILN_HD constexpr bfloat16& operator/=(float x) { return *this = bfloat16(float(*this) / x); }

  friend KILN_HD constexpr bool operator==(bfloat16 a, bfloat16 b) { return float(a) == float(b); }
  friend KILN_HD constexpr bool operator!=(bfloat16 a, bfloat16 b) { return float(a) != float(b); }
  friend KILN_HD constexpr bool operator<(bfloat16 a, bfloat16 b) { return float(a) < float(b); }
  friend KILN_HD constexpr bool operator<=(bfloat16 a, bfloat16 b) { return float(a) <= float(b); }
  friend KILN_HD constexpr bool operator>(bfloat16 a, bfloat16 b) { return float(a) > float(b); }
  friend KILN_HD constexpr bool operator>=(bfloat16 a, bfloat16 b) { return float(a) >= float(b); }
};

static_assert(sizeof(bfloat16) == 2, "bfloat16 must be two bytes");

KILN_HD constexpr bool isnan(bfloat16 x) { return (x.storage & 0x7FFFu) > 0x7F80u; }
KILN_HD constexpr bool isinf(bfloat16 x) { return (x.storage & 0x7FFFu) == 0x7F80u; }
KILN_HD constexpr bool isfinite(bfloat16 x) { return (x.storage & 0x7F80u) != 0x7F80u; }

}  // namespace kiln
