// kiln/backend/cpu/simd.hpp — SIMD packets Vec<float|double>, Mask<T>: loads/stores, arithmetic, select, reductions, math.
// Builds on kiln/core/config.hpp and AVX-512F, AVX2+FMA or NEON intrinsics (else one lane of plain C++).
#pragma once

#include <kiln/core/config.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

// The instruction set is fixed at compile time by the target flags (-march=..., -mavx2 -mfma, ...).
#if defined(__AVX512F__)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics read _mm512_undefined_*() values that -Wuninitialized flags once
// inlined into user code (GCC bug 105593); the headers of later GCC releases silence it the same way.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#define KILN_SIMD_AVX512 1
#define KILN_SIMD_NAME "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KILN_SIMD_AVX2 1
#define KILN_SIMD_NAME "avx2"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define KILN_SIMD_NEON 1
#define KILN_SIMD_NAME "neon"
#else
#define KILN_SIMD_SCALAR 1
#define KILN_SIMD_NAME "scalar"
#endif

namespace kiln::backend::cpu::simd {

#if defined(KILN_SIMD_AVX512)
inline constexpr int register_bytes = 64;
#elif defined(KILN_SIMD_AVX2)
inline constexpr int register_bytes = 32;
#elif defined(KILN_SIMD_NEON)
inline constexpr int register_bytes = 16;
#else
inline constexpr int register_bytes = 0;  // no vector registers: one lane of plain C++
#endif

// Lanes per packet.
#if defined(KILN_SIMD_SCALAR)
inline constexpr int float_width = 1;
inline constexpr int double_width = 1;
#else
inline constexpr int float_width = register_bytes / 4;
inline constexpr int double_width = register_bytes / 8;
#endif

namespace detail {

// Raw per-instruction-set operations on registers; Vec and Mask below wrap them.
template <class T>
struct isa;

#if defined(KILN_SIMD_AVX512)

template <>
struct isa<float> {
    using reg = __m512;
    using mask = __mmask16;
    static constexpr int size = 16;
    static constexpr bool fused_fma = true;
    static KILN_FORCEINLINE reg load(const float* p) { return _mm512_loadu_ps(p); }
    static KILN_FORCEINLINE void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
    static KILN_FORCEINLINE mask tail(int n) { return static_cast<mask>((1u << n) - 1u); }
    static KILN_FORCEINLINE reg load_partial(const float* p, int n) { return _mm512_maskz_loadu_ps(tail(n), p); }
    static KILN_FORCEINLINE void store_partial(float* p, reg a, int n) { _mm512_mask_storeu_ps(p, tail(n), a); }
    static KILN_FORCEINLINE reg broadcast(float x) { return _mm512_set1_ps(x); }
    static KILN_FORCEINLINE reg zero() { return _mm512_setzero_ps(); }
    static KILN_FORCEINLINE reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
    static KILN_FORCEINLINE reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
    static KILN_FORCEINLINE reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
    static KILN_FORCEINLINE reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
    static KILN_FORCEINLINE reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
    static KILN_FORCEINLINE reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
    static KILN_FORCEINLINE reg abs(reg a) { return _mm512_abs_ps(a); }
    static KILN_FORCEINLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
    static KILN_FORCEINLINE reg sqrt(reg a) { return _mm512_sqrt_ps(a); }
    static KILN_FORCEINLINE reg floor(reg a) {
        return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    }
    static KILN_FORCEINLINE __m512i bits(reg a) { return _mm512_castps_si512(a); }
    static KILN_FORCEINLINE reg from_bits(__m512i a) { return _mm512_castsi512_ps(a); }
    static KILN_FORCEINLINE reg bit_and(reg a, reg b) { return from_bits(_mm512_and_si512(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_or(reg a, reg b) { return from_bits(_mm512_or_si512(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_xor(reg a, reg b) { return from_bits(_mm512_xor_si512(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_andnot(reg a, reg b) { return from_bits(_mm512_andnot_si512(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg neg(reg a) { return bit_xor(a, broadcast(-0.0f)); }
    template <int K>
    static KILN_FORCEINLINE reg shift_left(reg a) { return from_bits(_mm512_slli_epi32(bits(a), K)); }
    template <int K>
    static KILN_FORCEINLINE reg shift_right(reg a) { return from_bits(_mm512_srli_epi32(bits(a), K)); }
    static KILN_FORCEINLINE mask lt(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
    static KILN_FORCEINLINE mask le(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
    static KILN_FORCEINLINE mask gt(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
    static KILN_FORCEINLINE mask ge(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
    static KILN_FORCEINLINE mask eq(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
    static KILN_FORCEINLINE mask ne(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ); }
    static KILN_FORCEINLINE mask mask_and(mask a, mask b) { return static_cast<mask>(a & b); }
    static KILN_FORCEINLINE mask mask_or(mask a, mask b) { return static_cast<mask>(a | b); }
    static KILN_FORCEINLINE mask mask_not(mask a) { return static_cast<mask>(~a); }
    static KILN_FORCEINLINE bool any(mask a) { return a != 0; }
    static KILN_FORCEINLINE bool all(mask a) { return a == 0xFFFF; }
    static KILN_FORCEINLINE reg blend(mask m, reg a, reg b) { return _mm512_mask_blend_ps(m, b, a); }
    static KILN_FORCEINLINE float hsum(reg a) { return _mm512_reduce_add_ps(a); }
    static KILN_FORCEINLINE float hmax(reg a) { return _mm512_reduce_max_ps(a); }
    static KILN_FORCEINLINE float hmin(reg a) { return _mm512_reduce_min_ps(a); }
};

template <>
struct isa<double> {
    using reg = __m512d;
    using mask = __mmask8;
    static constexpr int size = 8;
    static constexpr bool fused_fma = true;
    static KILN_FORCEINLINE reg load(const double* p) { return _mm512_loadu_pd(p); }
    static KILN_FORCEINLINE void store(double* p, reg a) { _mm512_storeu_pd(p, a); }
    static KILN_FORCEINLINE mask tail(int n) { return static_cast<mask>((1u << n) - 1u); }
    static KILN_FORCEINLINE reg load_partial(const double* p, int n) { return _mm512_maskz_loadu_pd(tail(n), p); }
    static KILN_FORCEINLINE void store_partial(double* p, reg a, int n) { _mm512_mask_storeu_pd(p, tail(n), a); }
    static KILN_FORCEINLINE reg broadcast(double x) { return _mm512_set1_pd(x); }
    static KILN_FORCEINLINE reg zero() { return _mm512_setzero_pd(); }
    static KILN_FORCEINLINE reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
    static KILN_FORCEINLINE reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
    static KILN_FORCEINLINE reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
    static KILN_FORCEINLINE reg div(reg a, reg b) { return _mm512_div_pd(a, b); }
    static KILN_FORCEINLINE reg min(reg a, reg b) { return _mm512_min_pd(a, b); }
    static KILN_FORCEINLINE reg max(reg a, reg b) { return _mm512_max_pd(a, b); }
    static KILN_FORCEINLINE reg abs(reg a) { return _mm512_abs_pd(a); }
    static KILN_FORCEINLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
    static KILN_FORCEINLINE reg sqrt(reg a) { return _mm512_sqrt_pd(a); }
    static KILN_FORCEINLINE reg floor(reg a) {
        return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    }
    static KILN_FORCEINLINE __m512i bits(reg a) { return _mm512_castpd_si512(a); }
    static KILN_FORCEINLINE reg from_bits(__m512i a) { return _mm512_castsi512_pd(a); }
    static KILN_FORCEINLINE reg bit_and(reg a, reg b) { return from_bits(_mm512_and_si512(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_or(reg a, reg b) { return from_bits(_mm512_or_si512(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_xor(reg a, reg b) { return from_bits(_mm512_xor_si512(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_andnot(reg a, reg b) { return from_bits(_mm512_andnot_si512(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg neg(reg a) { return bit_xor(a, broadcast(-0.0)); }
    template <int K>
    static KILN_FORCEINLINE reg shift_left(reg a) { return from_bits(_mm512_slli_epi64(bits(a), K)); }
    template <int K>
    static KILN_FORCEINLINE reg shift_right(reg a) { return from_bits(_mm512_srli_epi64(bits(a), K)); }
    static KILN_FORCEINLINE mask lt(reg a, reg b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
    static KILN_FORCEINLINE mask le(reg a, reg b) { return _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ); }
    static KILN_FORCEINLINE mask gt(reg a, reg b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
    static KILN_FORCEINLINE mask ge(reg a, reg b) { return _mm512_cmp_pd_mask(a, b, _CMP_GE_OQ); }
    static KILN_FORCEINLINE mask eq(reg a, reg b) { return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
    static KILN_FORCEINLINE mask ne(reg a, reg b) { return _mm512_cmp_pd_mask(a, b, _CMP_NEQ_UQ); }
    static KILN_FORCEINLINE mask mask_and(mask a, mask b) { return static_cast<mask>(a & b); }
    static KILN_FORCEINLINE mask mask_or(mask a, mask b) { return static_cast<mask>(a | b); }
    static KILN_FORCEINLINE mask mask_not(mask a) { return static_cast<mask>(~a); }
    static KILN_FORCEINLINE bool any(mask a) { return a != 0; }
    static KILN_FORCEINLINE bool all(mask a) { return a == 0xFF; }
    static KILN_FORCEINLINE reg blend(mask m, reg a, reg b) { return _mm512_mask_blend_pd(m, b, a); }
    static KILN_FORCEINLINE double hsum(reg a) { return _mm512_reduce_add_pd(a); }
    static KILN_FORCEINLINE double hmax(reg a) { return _mm512_reduce_max_pd(a); }
    static KILN_FORCEINLINE double hmin(reg a) { return _mm512_reduce_min_pd(a); }
};

// float lanes <-> two halves of double lanes
KILN_FORCEINLINE __m512d widen_low(__m512 a) { return _mm512_cvtps_pd(_mm512_castps512_ps256(a)); }
KILN_FORCEINLINE __m512d widen_high(__m512 a) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}
KILN_FORCEINLINE __m512 narrow(__m512d lo, __m512d hi) {
    const __m256 l = _mm512_cvtpd_ps(lo);
    const __m256 h = _mm512_cvtpd_ps(hi);
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(l)), _mm256_castps_pd(h), 1));
}

#elif defined(KILN_SIMD_AVX2)

template <>
struct isa<float> {
    using reg = __m256;
    using mask = __m256;
    static constexpr int size = 8;
    static constexpr bool fused_fma = true;
    static KILN_FORCEINLINE reg load(const float* p) { return _mm256_loadu_ps(p); }
    static KILN_FORCEINLINE void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
    // Lanes i < n set; masked-off lanes are neither read nor written by maskload/maskstore.
    static KILN_FORCEINLINE __m256i tail(int n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static KILN_FORCEINLINE reg load_partial(const float* p, int n) { return _mm256_maskload_ps(p, tail(n)); }
    static KILN_FORCEINLINE void store_partial(float* p, reg a, int n) { _mm256_maskstore_ps(p, tail(n), a); }
    static KILN_FORCEINLINE reg broadcast(float x) { return _mm256_set1_ps(x); }
    static KILN_FORCEINLINE reg zero() { return _mm256_setzero_ps(); }
    static KILN_FORCEINLINE reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
    static KILN_FORCEINLINE reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
    static KILN_FORCEINLINE reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
    static KILN_FORCEINLINE reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
    static KILN_FORCEINLINE reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
    static KILN_FORCEINLINE reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
    static KILN_FORCEINLINE reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
    static KILN_FORCEINLINE reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
    static KILN_FORCEINLINE reg sqrt(reg a) { return _mm256_sqrt_ps(a); }
    static KILN_FORCEINLINE reg floor(reg a) { return _mm256_floor_ps(a); }
    static KILN_FORCEINLINE reg bit_and(reg a, reg b) { return _mm256_and_ps(a, b); }
    static KILN_FORCEINLINE reg bit_or(reg a, reg b) { return _mm256_or_ps(a, b); }
    static KILN_FORCEINLINE reg bit_xor(reg a, reg b) { return _mm256_xor_ps(a, b); }
    static KILN_FORCEINLINE reg bit_andnot(reg a, reg b) { return _mm256_andnot_ps(a, b); }
    static KILN_FORCEINLINE reg neg(reg a) { return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f)); }
    template <int K>
    static KILN_FORCEINLINE reg shift_left(reg a) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(a), K));
    }
    template <int K>
    static KILN_FORCEINLINE reg shift_right(reg a) {
        return _mm256_castsi256_ps(_mm256_srli_epi32(_mm256_castps_si256(a), K));
    }
    static KILN_FORCEINLINE mask lt(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
    static KILN_FORCEINLINE mask le(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
    static KILN_FORCEINLINE mask gt(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
    static KILN_FORCEINLINE mask ge(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
    static KILN_FORCEINLINE mask eq(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
    static KILN_FORCEINLINE mask ne(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_NEQ_UQ); }
    static KILN_FORCEINLINE mask mask_and(mask a, mask b) { return _mm256_and_ps(a, b); }
    static KILN_FORCEINLINE mask mask_or(mask a, mask b) { return _mm256_or_ps(a, b); }
    static KILN_FORCEINLINE mask mask_not(mask a) {
        return _mm256_xor_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
    }
    static KILN_FORCEINLINE bool any(mask a) { return _mm256_movemask_ps(a) != 0; }
    static KILN_FORCEINLINE bool all(mask a) { return _mm256_movemask_ps(a) == 0xFF; }
    static KILN_FORCEINLINE reg blend(mask m, reg a, reg b) { return _mm256_blendv_ps(b, a, m); }
    static KILN_FORCEINLINE __m128 fold(reg a) { return _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); }
    static KILN_FORCEINLINE float hsum(reg a) {
        __m128 s = fold(a);
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    static KILN_FORCEINLINE float hmax(reg a) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    static KILN_FORCEINLINE float hmin(reg a) {
        __m128 s = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_min_ps(s, _mm_movehl_ps(s, s));
        s = _mm_min_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
};

template <>
struct isa<double> {
    using reg = __m256d;
    using mask = __m256d;
    static constexpr int size = 4;
    static constexpr bool fused_fma = true;
    static KILN_FORCEINLINE reg load(const double* p) { return _mm256_loadu_pd(p); }
    static KILN_FORCEINLINE void store(double* p, reg a) { _mm256_storeu_pd(p, a); }
    static KILN_FORCEINLINE __m256i tail(int n) {
        return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
    }
    static KILN_FORCEINLINE reg load_partial(const double* p, int n) { return _mm256_maskload_pd(p, tail(n)); }
    static KILN_FORCEINLINE void store_partial(double* p, reg a, int n) { _mm256_maskstore_pd(p, tail(n), a); }
    static KILN_FORCEINLINE reg broadcast(double x) { return _mm256_set1_pd(x); }
    static KILN_FORCEINLINE reg zero() { return _mm256_setzero_pd(); }
    static KILN_FORCEINLINE reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
    static KILN_FORCEINLINE reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
    static KILN_FORCEINLINE reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
    static KILN_FORCEINLINE reg div(reg a, reg b) { return _mm256_div_pd(a, b); }
    static KILN_FORCEINLINE reg min(reg a, reg b) { return _mm256_min_pd(a, b); }
    static KILN_FORCEINLINE reg max(reg a, reg b) { return _mm256_max_pd(a, b); }
    static KILN_FORCEINLINE reg abs(reg a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
    static KILN_FORCEINLINE reg fma(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
    static KILN_FORCEINLINE reg sqrt(reg a) { return _mm256_sqrt_pd(a); }
    static KILN_FORCEINLINE reg floor(reg a) { return _mm256_floor_pd(a); }
    static KILN_FORCEINLINE reg bit_and(reg a, reg b) { return _mm256_and_pd(a, b); }
    static KILN_FORCEINLINE reg bit_or(reg a, reg b) { return _mm256_or_pd(a, b); }
    static KILN_FORCEINLINE reg bit_xor(reg a, reg b) { return _mm256_xor_pd(a, b); }
    static KILN_FORCEINLINE reg bit_andnot(reg a, reg b) { return _mm256_andnot_pd(a, b); }
    static KILN_FORCEINLINE reg neg(reg a) { return _mm256_xor_pd(a, _mm256_set1_pd(-0.0)); }
    template <int K>
    static KILN_FORCEINLINE reg shift_left(reg a) {
        return _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(a), K));
    }
    template <int K>
    static KILN_FORCEINLINE reg shift_right(reg a) {
        return _mm256_castsi256_pd(_mm256_srli_epi64(_mm256_castpd_si256(a), K));
    }
    static KILN_FORCEINLINE mask lt(reg a, reg b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
    static KILN_FORCEINLINE mask le(reg a, reg b) { return _mm256_cmp_pd(a, b, _CMP_LE_OQ); }
    static KILN_FORCEINLINE mask gt(reg a, reg b) { return _mm256_cmp_pd(a, b, _CMP_GT_OQ); }
    static KILN_FORCEINLINE mask ge(reg a, reg b) { return _mm256_cmp_pd(a, b, _CMP_GE_OQ); }
    static KILN_FORCEINLINE mask eq(reg a, reg b) { return _mm256_cmp_pd(a, b, _CMP_EQ_OQ); }
    static KILN_FORCEINLINE mask ne(reg a, reg b) { return _mm256_cmp_pd(a, b, _CMP_NEQ_UQ); }
    static KILN_FORCEINLINE mask mask_and(mask a, mask b) { return _mm256_and_pd(a, b); }
    static KILN_FORCEINLINE mask mask_or(mask a, mask b) { return _mm256_or_pd(a, b); }
    static KILN_FORCEINLINE mask mask_not(mask a) {
        return _mm256_xor_pd(a, _mm256_castsi256_pd(_mm256_set1_epi32(-1)));
    }
    static KILN_FORCEINLINE bool any(mask a) { return _mm256_movemask_pd(a) != 0; }
    static KILN_FORCEINLINE bool all(mask a) { return _mm256_movemask_pd(a) == 0xF; }
    static KILN_FORCEINLINE reg blend(mask m, reg a, reg b) { return _mm256_blendv_pd(b, a, m); }
    static KILN_FORCEINLINE double hsum(reg a) {
        __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
        s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
        return _mm_cvtsd_f64(s);
    }
    static KILN_FORCEINLINE double hmax(reg a) {
        __m128d s = _mm_max_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
        s = _mm_max_sd(s, _mm_unpackhi_pd(s, s));
        return _mm_cvtsd_f64(s);
    }
    static KILN_FORCEINLINE double hmin(reg a) {
        __m128d s = _mm_min_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
        s = _mm_min_sd(s, _mm_unpackhi_pd(s, s));
        return _mm_cvtsd_f64(s);
    }
};

KILN_FORCEINLINE __m256d widen_low(__m256 a) { return _mm256_cvtps_pd(_mm256_castps256_ps128(a)); }
KILN_FORCEINLINE __m256d widen_high(__m256 a) { return _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)); }
KILN_FORCEINLINE __m256 narrow(__m256d lo, __m256d hi) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}

#elif defined(KILN_SIMD_NEON)

template <>
struct isa<float> {
    using reg = float32x4_t;
    using mask = uint32x4_t;
    static constexpr int size = 4;
    static constexpr bool fused_fma = true;
    static KILN_FORCEINLINE reg load(const float* p) { return vld1q_f32(p); }
    static KILN_FORCEINLINE void store(float* p, reg a) { vst1q_f32(p, a); }
    static KILN_FORCEINLINE reg load_partial(const float* p, int n) {
        float buf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int i = 0; i < n; ++i) buf[i] = p[i];
        return vld1q_f32(buf);
    }
    static KILN_FORCEINLINE void store_partial(float* p, reg a, int n) {
        float buf[4];
        vst1q_f32(buf, a);
        for (int i = 0; i < n; ++i) p[i] = buf[i];
    }
    static KILN_FORCEINLINE reg broadcast(float x) { return vdupq_n_f32(x); }
    static KILN_FORCEINLINE reg zero() { return vdupq_n_f32(0.0f); }
    static KILN_FORCEINLINE reg add(reg a, reg b) { return vaddq_f32(a, b); }
    static KILN_FORCEINLINE reg sub(reg a, reg b) { return vsubq_f32(a, b); }
    static KILN_FORCEINLINE reg mul(reg a, reg b) { return vmulq_f32(a, b); }
    static KILN_FORCEINLINE reg div(reg a, reg b) { return vdivq_f32(a, b); }
    static KILN_FORCEINLINE reg min(reg a, reg b) { return vminq_f32(a, b); }
    static KILN_FORCEINLINE reg max(reg a, reg b) { return vmaxq_f32(a, b); }
    static KILN_FORCEINLINE reg abs(reg a) { return vabsq_f32(a); }
    static KILN_FORCEINLINE reg fma(reg a, reg b, reg c) { return vfmaq_f32(c, a, b); }
    static KILN_FORCEINLINE reg sqrt(reg a) { return vsqrtq_f32(a); }
    static KILN_FORCEINLINE reg floor(reg a) { return vrndmq_f32(a); }
    static KILN_FORCEINLINE uint32x4_t bits(reg a) { return vreinterpretq_u32_f32(a); }
    static KILN_FORCEINLINE reg from_bits(uint32x4_t a) { return vreinterpretq_f32_u32(a); }
    static KILN_FORCEINLINE reg bit_and(reg a, reg b) { return from_bits(vandq_u32(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_or(reg a, reg b) { return from_bits(vorrq_u32(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_xor(reg a, reg b) { return from_bits(veorq_u32(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_andnot(reg a, reg b) { return from_bits(vbicq_u32(bits(b), bits(a))); }
    static KILN_FORCEINLINE reg neg(reg a) { return vnegq_f32(a); }
    template <int K>
    static KILN_FORCEINLINE reg shift_left(reg a) { return from_bits(vshlq_n_u32(bits(a), K)); }
    template <int K>
    static KILN_FORCEINLINE reg shift_right(reg a) { return from_bits(vshrq_n_u32(bits(a), K)); }
    static KILN_FORCEINLINE mask lt(reg a, reg b) { return vcltq_f32(a, b); }
    static KILN_FORCEINLINE mask le(reg a, reg b) { return vcleq_f32(a, b); }
    static KILN_FORCEINLINE mask gt(reg a, reg b) { return vcgtq_f32(a, b); }
    static KILN_FORCEINLINE mask ge(reg a, reg b) { return vcgeq_f32(a, b); }
    static KILN_FORCEINLINE mask eq(reg a, reg b) { return vceqq_f32(a, b); }
    static KILN_FORCEINLINE mask ne(reg a, reg b) { return vmvnq_u32(vceqq_f32(a, b)); }
    static KILN_FORCEINLINE mask mask_and(mask a, mask b) { return vandq_u32(a, b); }
    static KILN_FORCEINLINE mask mask_or(mask a, mask b) { return vorrq_u32(a, b); }
    static KILN_FORCEINLINE mask mask_not(mask a) { return vmvnq_u32(a); }
    static KILN_FORCEINLINE bool any(mask a) { return vmaxvq_u32(a) != 0; }
    static KILN_FORCEINLINE bool all(mask a) { return vminvq_u32(a) != 0; }
    static KILN_FORCEINLINE reg blend(mask m, reg a, reg b) { return vbslq_f32(m, a, b); }
    static KILN_FORCEINLINE float hsum(reg a) { return vaddvq_f32(a); }
    static KILN_FORCEINLINE float hmax(reg a) { return vmaxvq_f32(a); }
    static KILN_FORCEINLINE float hmin(reg a) { return vminvq_f32(a); }
};

template <>
struct isa<double> {
    using reg = float64x2_t;
    using mask = uint64x2_t;
    static constexpr int size = 2;
    static constexpr bool fused_fma = true;
    static KILN_FORCEINLINE reg load(const double* p) { return vld1q_f64(p); }
    static KILN_FORCEINLINE void store(double* p, reg a) { vst1q_f64(p, a); }
    static KILN_FORCEINLINE reg load_partial(const double* p, int n) {
        double buf[2] = {0.0, 0.0};
        for (int i = 0; i < n; ++i) buf[i] = p[i];
        return vld1q_f64(buf);
    }
    static KILN_FORCEINLINE void store_partial(double* p, reg a, int n) {
        double buf[2];
        vst1q_f64(buf, a);
        for (int i = 0; i < n; ++i) p[i] = buf[i];
    }
    static KILN_FORCEINLINE reg broadcast(double x) { return vdupq_n_f64(x); }
    static KILN_FORCEINLINE reg zero() { return vdupq_n_f64(0.0); }
    static KILN_FORCEINLINE reg add(reg a, reg b) { return vaddq_f64(a, b); }
    static KILN_FORCEINLINE reg sub(reg a, reg b) { return vsubq_f64(a, b); }
    static KILN_FORCEINLINE reg mul(reg a, reg b) { return vmulq_f64(a, b); }
    static KILN_FORCEINLINE reg div(reg a, reg b) { return vdivq_f64(a, b); }
    static KILN_FORCEINLINE reg min(reg a, reg b) { return vminq_f64(a, b); }
    static KILN_FORCEINLINE reg max(reg a, reg b) { return vmaxq_f64(a, b); }
    static KILN_FORCEINLINE reg abs(reg a) { return vabsq_f64(a); }
    static KILN_FORCEINLINE reg fma(reg a, reg b, reg c) { return vfmaq_f64(c, a, b); }
    static KILN_FORCEINLINE reg sqrt(reg a) { return vsqrtq_f64(a); }
    static KILN_FORCEINLINE reg floor(reg a) { return vrndmq_f64(a); }
    static KILN_FORCEINLINE uint64x2_t bits(reg a) { return vreinterpretq_u64_f64(a); }
    static KILN_FORCEINLINE reg from_bits(uint64x2_t a) { return vreinterpretq_f64_u64(a); }
    static KILN_FORCEINLINE reg bit_and(reg a, reg b) { return from_bits(vandq_u64(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_or(reg a, reg b) { return from_bits(vorrq_u64(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_xor(reg a, reg b) { return from_bits(veorq_u64(bits(a), bits(b))); }
    static KILN_FORCEINLINE reg bit_andnot(reg a, reg b) { return from_bits(vbicq_u64(bits(b), bits(a))); }
    static KILN_FORCEINLINE reg neg(reg a) { return vnegq_f64(a); }
    template <int K>
    static KILN_FORCEINLINE reg shift_left(reg a) { return from_bits(vshlq_n_u64(bits(a), K)); }
    template <int K>
    static KILN_FORCEINLINE reg shift_right(reg a) { return from_bits(vshrq_n_u64(bits(a), K)); }
    static KILN_FORCEINLINE mask lt(reg a, reg b) { return vcltq_f64(a, b); }
    static KILN_FORCEINLINE mask le(reg a, reg b) { return vcleq_f64(a, b); }
    static KILN_FORCEINLINE mask gt(reg a, reg b) { return vcgtq_f64(a, b); }
    static KILN_FORCEINLINE mask ge(reg a, reg b) { return vcgeq_f64(a, b); }
    static KILN_FORCEINLINE mask eq(reg a, reg b) { return vceqq_f64(a, b); }
    static KILN_FORCEINLINE mask mask_not(mask a) { return veorq_u64(a, vdupq_n_u64(~std::uint64_t{0})); }
    static KILN_FORCEINLINE mask ne(reg a, reg b) { return mask_not(vceqq_f64(a, b)); }
    static KILN_FORCEINLINE mask mask_and(mask a, mask b) { return vandq_u64(a, b); }
    static KILN_FORCEINLINE mask mask_or(mask a, mask b) { return vorrq_u64(a, b); }
    static KILN_FORCEINLINE bool any(mask a) { return (vgetq_lane_u64(a, 0) | vgetq_lane_u64(a, 1)) != 0; }
    static KILN_FORCEINLINE bool all(mask a) { return (vgetq_lane_u64(a, 0) & vgetq_lane_u64(a, 1)) != 0; }
    static KILN_FORCEINLINE reg blend(mask m, reg a, reg b) { return vbslq_f64(m, a, b); }
    static KILN_FORCEINLINE double hsum(reg a) { return vaddvq_f64(a); }
    static KILN_FORCEINLINE double hmax(reg a) { return vmaxvq_f64(a); }
    static KILN_FORCEINLINE double hmin(reg a) { return vminvq_f64(a); }
};

KILN_FORCEINLINE float64x2_t widen_low(float32x4_t a) { return vcvt_f64_f32(vget_low_f32(a)); }
KILN_FORCEINLINE float64x2_t widen_high(float32x4_t a) { return vcvt_high_f64_f32(a); }
KILN_FORCEINLINE float32x4_t narrow(float64x2_t lo, float64x2_t hi) {
    return vcvt_high_f32_f64(vcvt_f32_f64(lo), hi);
}

#else  // scalar: one lane of plain C++

template <class T>
struct scalar_isa {
    using reg = T;
    using mask = bool;
    using uint = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    static constexpr int size = 1;
#if defined(FP_FAST_FMA) && defined(FP_FAST_FMAF)
    static constexpr bool fused_fma = true;
#else
    static constexpr bool fused_fma = false;
#endif
    static KILN_FORCEINLINE reg load(const T* p) { return *p; }
    static KILN_FORCEINLINE void store(T* p, reg a) { *p = a; }
    static KILN_FORCEINLINE reg load_partial(const T* p, int n) { return n > 0 ? *p : T(0); }
    static KILN_FORCEINLINE void store_partial(T* p, reg a, int n) {
        if (n > 0) *p = a;
    }
    static KILN_FORCEINLINE reg broadcast(T x) { return x; }
    static KILN_FORCEINLINE reg zero() { return T(0); }
    static KILN_FORCEINLINE reg add(reg a, reg b) { return a + b; }
    static KILN_FORCEINLINE reg sub(reg a, reg b) { return a - b; }
    static KILN_FORCEINLINE reg mul(reg a, reg b) { return a * b; }
    static KILN_FORCEINLINE reg div(reg a, reg b) { return a / b; }
    // Same lane rule as the x86 instructions: the second operand when either is NaN.
    static KILN_FORCEINLINE reg min(reg a, reg b) { return a < b ? a : b; }
    static KILN_FORCEINLINE reg max(reg a, reg b) { return a > b ? a : b; }
    static KILN_FORCEINLINE reg abs(reg a) { return std::fabs(a); }
    static KILN_FORCEINLINE reg fma(reg a, reg b, reg c) {
        if constexpr (fused_fma) return std::fma(a, b, c);
        else return a * b + c;  // no fused instruction on this target: a library fma would be far slower
    }
    static KILN_FORCEINLINE reg sqrt(reg a) { return std::sqrt(a); }
    static KILN_FORCEINLINE reg floor(reg a) { return std::floor(a); }
    static KILN_FORCEINLINE uint bits(reg a) { return std::bit_cast<uint>(a); }
    static KILN_FORCEINLINE reg from_bits(uint a) { return std::bit_cast<T>(a); }
    static KILN_FORCEINLINE reg bit_and(reg a, reg b) { return from_bits(bits(a) & bits(b)); }
    static KILN_FORCEINLINE reg bit_or(reg a, reg b) { return from_bits(bits(a) | bits(b)); }
    static KILN_FORCEINLINE reg bit_xor(reg a, reg b) { return from_bits(bits(a) ^ bits(b)); }
    static KILN_FORCEINLINE reg bit_andnot(reg a, reg b) { return from_bits(~bits(a) & bits(b)); }
    static KILN_FORCEINLINE reg neg(reg a) { return -a; }
    template <int K>
    static KILN_FORCEINLINE reg shift_left(reg a) { return from_bits(static_cast<uint>(bits(a) << K)); }
    template <int K>
    static KILN_FORCEINLINE reg shift_right(reg a) { return from_bits(static_cast<uint>(bits(a) >> K)); }
    static KILN_FORCEINLINE mask lt(reg a, reg b) { return a < b; }
    static KILN_FORCEINLINE mask le(reg a, reg b) { return a <= b; }
    static KILN_FORCEINLINE mask gt(reg a, reg b) { return a > b; }
    static KILN_FORCEINLINE mask ge(reg a, reg b) { return a >= b; }
    static KILN_FORCEINLINE mask eq(reg a, reg b) { return a == b; }
    static KILN_FORCEINLINE mask ne(reg a, reg b) { return a != b; }
    static KILN_FORCEINLINE mask mask_and(mask a, mask b) { return a && b; }
    static KILN_FORCEINLINE mask mask_or(mask a, mask b) { return a || b; }
    static KILN_FORCEINLINE mask mask_not(mask a) { return !a; }
    static KILN_FORCEINLINE bool any(mask a) { return a; }
    static KILN_FORCEINLINE bool all(mask a) { return a; }
    static KILN_FORCEINLINE reg blend(mask m, reg a, reg b) { return m ? a : b; }
    static KILN_FORCEINLINE T hsum(reg a) { return a; }
    static KILN_FORCEINLINE T hmax(reg a) { return a; }
    static KILN_FORCEINLINE T hmin(reg a) { return a; }
};

template <>
struct isa<float> : scalar_isa<float> {};
template <>
struct isa<double> : scalar_isa<double> {};

// One float lane widens to one double lane (the high half is the same lane).
KILN_FORCEINLINE double widen_low(float a) { return a; }
KILN_FORCEINLINE double widen_high(float a) { return a; }
KILN_FORCEINLINE float narrow(double lo, double) { return static_cast<float>(lo); }

#endif

}  // namespace detail

template <class T>
struct Mask;

// A packet of Vec<T>::size lanes of T. Loads and stores are unaligned; a scalar converts
// implicitly (broadcast to every lane), so generic code can write `x * V(2) + 1`.
template <class T>
struct Vec {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "kiln::backend::cpu::simd::Vec holds float or double lanes only");
    using ops = detail::isa<T>;
    using value_type = T;
    using register_type = typename ops::reg;
    static constexpr int size = ops::size;

    register_type v;  // the raw register, for kernels that need an intrinsic not wrapped here

    Vec() = default;
    KILN_FORCEINLINE Vec(T x) : v(ops::broadcast(x)) {}
    static KILN_FORCEINLINE Vec from_register(register_type r) {
        Vec out;
        out.v = r;
        return out;
    }

    static KILN_FORCEINLINE Vec load(const T* p) { return from_register(ops::load(p)); }
    static KILN_FORCEINLINE Vec broadcast(T x) { return Vec(x); }
    static KILN_FORCEINLINE Vec zero() { return from_register(ops::zero()); }
    KILN_FORCEINLINE void store(T* p) const { ops::store(p, v); }
    // First n lanes (0 <= n <= size) from p, the rest zero; nothing past p[n-1] is read.
    static KILN_FORCEINLINE Vec load_partial(const T* p, int n) { return from_register(ops::load_partial(p, n)); }
    // Writes the first n lanes (0 <= n <= size) to p; nothing past p[n-1] is written.
    KILN_FORCEINLINE void store_partial(T* p, int n) const { ops::store_partial(p, v, n); }

    friend KILN_FORCEINLINE Vec operator+(Vec a, Vec b) { return from_register(ops::add(a.v, b.v)); }
    friend KILN_FORCEINLINE Vec operator-(Vec a, Vec b) { return from_register(ops::sub(a.v, b.v)); }
    friend KILN_FORCEINLINE Vec operator*(Vec a, Vec b) { return from_register(ops::mul(a.v, b.v)); }
    friend KILN_FORCEINLINE Vec operator/(Vec a, Vec b) { return from_register(ops::div(a.v, b.v)); }
    friend KILN_FORCEINLINE Vec operator-(Vec a) { return from_register(ops::neg(a.v)); }
    friend KILN_FORCEINLINE Vec operator+(Vec a) { return a; }
    KILN_FORCEINLINE Vec& operator+=(Vec b) { return *this = *this + b; }
    KILN_FORCEINLINE Vec& operator-=(Vec b) { return *this = *this - b; }
    KILN_FORCEINLINE Vec& operator*=(Vec b) { return *this = *this * b; }
    KILN_FORCEINLINE Vec& operator/=(Vec b) { return *this = *this / b; }

    friend KILN_FORCEINLINE Mask<T> operator<(Vec a, Vec b) { return Mask<T>::from_register(ops::lt(a.v, b.v)); }
    friend KILN_FORCEINLINE Mask<T> operator<=(Vec a, Vec b) { return Mask<T>::from_register(ops::le(a.v, b.v)); }
    friend KILN_FORCEINLINE Mask<T> operator>(Vec a, Vec b) { return Mask<T>::from_register(ops::gt(a.v, b.v)); }
    friend KILN_FORCEINLINE Mask<T> operator>=(Vec a, Vec b) { return Mask<T>::from_register(ops::ge(a.v, b.v)); }
    friend KILN_FORCEINLINE Mask<T> operator==(Vec a, Vec b) { return Mask<T>::from_register(ops::eq(a.v, b.v)); }
    // True where the lanes differ or either is NaN (so x != x finds NaNs).
    friend KILN_FORCEINLINE Mask<T> operator!=(Vec a, Vec b) { return Mask<T>::from_register(ops::ne(a.v, b.v)); }

    friend KILN_FORCEINLINE Vec min(Vec a, Vec b) { return from_register(ops::min(a.v, b.v)); }
    friend KILN_FORCEINLINE Vec max(Vec a, Vec b) { return from_register(ops::max(a.v, b.v)); }
    friend KILN_FORCEINLINE Vec abs(Vec a) { return from_register(ops::abs(a.v)); }
    // a * b + c, fused (one rounding) wherever the target has the instruction.
    friend KILN_FORCEINLINE Vec fma(Vec a, Vec b, Vec c) { return from_register(ops::fma(a.v, b.v, c.v)); }
    friend KILN_FORCEINLINE Vec sqrt(Vec a) { return from_register(ops::sqrt(a.v)); }
    // 1 / sqrt(a), correctly rounded division of a correctly rounded root (not the 12-bit estimate).
    friend KILN_FORCEINLINE Vec rsqrt(Vec a) { return Vec(T(1)) / sqrt(a); }
    friend KILN_FORCEINLINE Vec floor(Vec a) { return from_register(ops::floor(a.v)); }
    friend KILN_FORCEINLINE T hsum(Vec a) { return ops::hsum(a.v); }
    friend KILN_FORCEINLINE T hmax(Vec a) { return ops::hmax(a.v); }
    friend KILN_FORCEINLINE T hmin(Vec a) { return ops::hmin(a.v); }
};

// Lane-wise truth values from comparisons: an AVX-512 mask register (__mmask16 / __mmask8),
// an all-ones/all-zeros lane register on AVX2 and NEON, a bool on the scalar path.
template <class T>
struct Mask {
    using ops = detail::isa<T>;
    using register_type = typename ops::mask;
    static constexpr int size = ops::size;

    register_type m;

    static KILN_FORCEINLINE Mask from_register(register_type r) {
        Mask out;
        out.m = r;
        return out;
    }
    friend KILN_FORCEINLINE Mask operator&(Mask a, Mask b) { return from_register(ops::mask_and(a.m, b.m)); }
    friend KILN_FORCEINLINE Mask operator|(Mask a, Mask b) { return from_register(ops::mask_or(a.m, b.m)); }
    friend KILN_FORCEINLINE Mask operator!(Mask a) { return from_register(ops::mask_not(a.m)); }
    // Whether any / every lane is set.
    friend KILN_FORCEINLINE bool any(Mask a) { return ops::any(a.m); }
    friend KILN_FORCEINLINE bool all(Mask a) { return ops::all(a.m); }
    // m ? a : b, lane by lane.
    friend KILN_FORCEINLINE Vec<T> select(Mask mask, Vec<T> a, Vec<T> b) {
        return Vec<T>::from_register(ops::blend(mask.m, a.v, b.v));
    }
};

template <class T>
inline constexpr int width = Vec<T>::size;

}  // namespace kiln::backend::cpu::simd

#include <kiln/backend/cpu/simd_math.hpp>
