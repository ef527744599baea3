// kiln/backend/cpu/gemm_x86.hpp — x86-64 GEMM micro-kernels: AVX2+FMA 6×16 f32 / 6×8 f64,
// AVX-512F 14×32 f32 / 14×16 f64. Builds on <immintrin.h> (per-function targets), gemm_tile.hpp.
#pragma once

#include <kiln/backend/cpu/gemm_tile.hpp>
#include <kiln/core/config.hpp>

#if defined(__x86_64__)

#include <immintrin.h>

namespace kiln::backend::cpu::gemm_detail {

// Every micro-kernel has the same contract. `a` is a packed MR×kc sliver (MR values per k),
// `b` a packed kc×NR sliver (NR values per k), both 64-byte aligned and zero padded.
// It computes the MR×NR tile a·b and writes its top-left m×n corner into C (row stride ldc)
// as C = alpha·(a·b) + beta·C; C is not read when beta == 0.

// ---------------------------------------------------------------- AVX2 + FMA, float 6×16
__attribute__((target("avx2,fma"))) inline void ukernel_avx2_f32_6x16(
    index_t kc, const float* a, const float* b, float* c, index_t ldc, float alpha, float beta,
    int m, int n) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  if (m == 6 && n == 16) {
    for (int i = 0; i < 6; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 15), _MM_HINT_T0);
    }
  }
#define KILN_AVX2_F32_STEP(off_a, off_b)                              \
  {                                                                   \
    const __m256 b0 = _mm256_load_ps(b + (off_b));                    \
    const __m256 b1 = _mm256_load_ps(b + (off_b) + 8);                \
    __m256 av = _mm256_broadcast_ss(a + (off_a) + 0);                 \
    c00 = _mm256_fmadd_ps(av, b0, c00);                               \
    c01 = _mm256_fmadd_ps(av, b1, c01);                               \
    av = _mm256_broadcast_ss(a + (off_a) + 1);                        \
    c10 = _mm256_fmadd_ps(av, b0, c10);                               \
    c11 = _mm256_fmadd_ps(av, b1, c11);                               \
    av = _mm256_broadcast_ss(a + (off_a) + 2);                        \
    c20 = _mm256_fmadd_ps(av, b0, c20);                               \
    c21 = _mm256_fmadd_ps(av, b1, c21);                               \
    av = _mm256_broadcast_ss(a + (off_a) + 3);                        \
    c30 = _mm256_fmadd_ps(av, b0, c30);                               \
    c31 = _mm256_fmadd_ps(av, b1, c31);                               \
    av = _mm256_broadcast_ss(a + (off_a) + 4);                        \
    c40 = _mm256_fmadd_ps(av, b0, c40);                               \
    c41 = _mm256_fmadd_ps(av, b1, c41);                               \
    av = _mm256_broadcast_ss(a + (off_a) + 5);                        \
    c50 = _mm256_fmadd_ps(av, b0, c50);                               \
    c51 = _mm256_fmadd_ps(av, b1, c51);                               \
  }
  index_t k4 = kc / 4;
  if (k4 > 0) {
    // Four k steps per trip, written out so that B stays in two registers per step.
    __asm__ volatile(
        "1:\n\t"
        "prefetcht0 384(%[a])\n\t"
        "vmovaps 0(%[b]), %%ymm12\n\t"
        "vmovaps 32(%[b]), %%ymm13\n\t"
        "vbroadcastss 0(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c00]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c01]\n\t"
        "vbroadcastss 4(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c10]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c11]\n\t"
        "vbroadcastss 8(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c20]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c21]\n\t"
        "vbroadcastss 12(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c30]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c31]\n\t"
        "vbroadcastss 16(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c40]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c41]\n\t"
        "vbroadcastss 20(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c50]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c51]\n\t"
        "vmovaps 64(%[b]), %%ymm12\n\t"
        "vmovaps 96(%[b]), %%ymm13\n\t"
        "vbroadcastss 24(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c00]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c01]\n\t"
        "vbroadcastss 28(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c10]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c11]\n\t"
        "vbroadcastss 32(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c20]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c21]\n\t"
        "vbroadcastss 36(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c30]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c31]\n\t"
        "vbroadcastss 40(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c40]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c41]\n\t"
        "vbroadcastss 44(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c50]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c51]\n\t"
        "vmovaps 128(%[b]), %%ymm12\n\t"
        "vmovaps 160(%[b]), %%ymm13\n\t"
        "vbroadcastss 48(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c00]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c01]\n\t"
        "vbroadcastss 52(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c10]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c11]\n\t"
        "vbroadcastss 56(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c20]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c21]\n\t"
        "vbroadcastss 60(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c30]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c31]\n\t"
        "vbroadcastss 64(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c40]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c41]\n\t"
        "vbroadcastss 68(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c50]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c51]\n\t"
        "vmovaps 192(%[b]), %%ymm12\n\t"
        "vmovaps 224(%[b]), %%ymm13\n\t"
        "vbroadcastss 72(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c00]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c01]\n\t"
        "vbroadcastss 76(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c10]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c11]\n\t"
        "vbroadcastss 80(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c20]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c21]\n\t"
        "vbroadcastss 84(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c30]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c31]\n\t"
        "vbroadcastss 88(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %[c40]\n\t"
        "vfmadd231ps %%ymm13, %%ymm14, %[c41]\n\t"
        "vbroadcastss 92(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %[c50]\n\t"
        "vfmadd231ps %%ymm13, %%ymm15, %[c51]\n\t"
        "add $96, %[a]\n\t"
        "add $256, %[b]\n\t"
        "dec %[k]\n\t"
        "jnz 1b\n\t"
        : [a] "+r"(a), [b] "+r"(b), [k] "+r"(k4), [c00] "+x"(c00), [c01] "+x"(c01),
          [c10] "+x"(c10), [c11] "+x"(c11), [c20] "+x"(c20), [c21] "+x"(c21), [c30] "+x"(c30),
          [c31] "+x"(c31), [c40] "+x"(c40), [c41] "+x"(c41), [c50] "+x"(c50), [c51] "+x"(c51)
        :
        : "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
  }
  for (index_t k = kc / 4 * 4; k < kc; ++k) {
    KILN_AVX2_F32_STEP(0, 0)
    a += 6;
    b += 16;
  }
#undef KILN_AVX2_F32_STEP
  const __m256 va = _mm256_set1_ps(alpha);
  if (m == 6 && n == 16) {
    if (beta == 0.0f) {
#define KILN_ROW(r, x0, x1)                                   \
  _mm256_storeu_ps(c + (r) * ldc, _mm256_mul_ps(va, x0));     \
  _mm256_storeu_ps(c + (r) * ldc + 8, _mm256_mul_ps(va, x1));
      KILN_ROW(0, c00, c01) KILN_ROW(1, c10, c11) KILN_ROW(2, c20, c21)
      KILN_ROW(3, c30, c31) KILN_ROW(4, c40, c41) KILN_ROW(5, c50, c51)
#undef KILN_ROW
    } else {
      const __m256 vb = _mm256_set1_ps(beta);
#define KILN_ROW(r, x0, x1)                                                                  \
  _mm256_storeu_ps(c + (r) * ldc,                                                           \
                   _mm256_fmadd_ps(va, x0, _mm256_mul_ps(vb, _mm256_loadu_ps(c + (r) * ldc)))); \
  _mm256_storeu_ps(c + (r) * ldc + 8,                                                       \
                   _mm256_fmadd_ps(va, x1,                                                  \
                                   _mm256_mul_ps(vb, _mm256_loadu_ps(c + (r) * ldc + 8))));
      KILN_ROW(0, c00, c01) KILN_ROW(1, c10, c11) KILN_ROW(2, c20, c21)
      KILN_ROW(3, c30, c31) KILN_ROW(4, c40, c41) KILN_ROW(5, c50, c51)
#undef KILN_ROW
    }
    return;
  }
  alignas(32) float tile[6 * 16];
  _mm256_store_ps(tile + 0, c00);
  _mm256_store_ps(tile + 8, c01);
  _mm256_store_ps(tile + 16, c10);
  _mm256_store_ps(tile + 24, c11);
  _mm256_store_ps(tile + 32, c20);
  _mm256_store_ps(tile + 40, c21);
  _mm256_store_ps(tile + 48, c30);
  _mm256_store_ps(tile + 56, c31);
  _mm256_store_ps(tile + 64, c40);
  _mm256_store_ps(tile + 72, c41);
  _mm256_store_ps(tile + 80, c50);
  _mm256_store_ps(tile + 88, c51);
  store_tile_edge(tile, 16, c, ldc, alpha, beta, m, n);
}

// Packs one full 6-row sliver of a row-major A block (rows `rs` apart, columns contiguous):
// out[k*6 + i] = a[i*rs + k]. Eight k at a time: load 8 columns of the 6 rows, transpose
// 8×8 (two rows zero), store 6 values per k.
__attribute__((target("avx2,fma"))) inline void pack_a_rows_avx2_f32_6(index_t kc, const float* a,
                                                                       index_t rs, float* out) {
  index_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    const __m256 r0 = _mm256_loadu_ps(a + 0 * rs + k);
    const __m256 r1 = _mm256_loadu_ps(a + 1 * rs + k);
    const __m256 r2 = _mm256_loadu_ps(a + 2 * rs + k);
    const __m256 r3 = _mm256_loadu_ps(a + 3 * rs + k);
    const __m256 r4 = _mm256_loadu_ps(a + 4 * rs + k);
    const __m256 r5 = _mm256_loadu_ps(a + 5 * rs + k);
    const __m256 z = _mm256_setzero_ps();
    // Interleave pairs of rows, then quads: t* hold (r0,r1,r2,r3) and u* hold (r4,r5,0,0)
    // columns per 128-bit lane.
    const __m256 p01l = _mm256_unpacklo_ps(r0, r1), p01h = _mm256_unpackhi_ps(r0, r1);
    const __m256 p23l = _mm256_unpacklo_ps(r2, r3), p23h = _mm256_unpackhi_ps(r2, r3);
    const __m256 p45l = _mm256_unpacklo_ps(r4, r5), p45h = _mm256_unpackhi_ps(r4, r5);
    const __m256 t0 = _mm256_shuffle_ps(p01l, p23l, 0x44);  // col 0 | col 4, rows 0-3
    const __m256 t1 = _mm256_shuffle_ps(p01l, p23l, 0xEE);  // col 1 | col 5
    const __m256 t2 = _mm256_shuffle_ps(p01h, p23h, 0x44);  // col 2 | col 6
    const __m256 t3 = _mm256_shuffle_ps(p01h, p23h, 0xEE);  // col 3 | col 7
    const __m256 u0 = _mm256_shuffle_ps(p45l, z, 0x44);     // rows 4-5 of cols 0 | 4
    const __m256 u1 = _mm256_shuffle_ps(p45l, z, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(p45h, z, 0x44);
    const __m256 u3 = _mm256_shuffle_ps(p45h, z, 0xEE);
    float* o = out + k * 6;
#define KILN_PACK_COL(col, t, u, hi)                                                 \
  _mm_storeu_ps(o + (col) * 6, _mm256_extractf128_ps(t, hi));                       \
  _mm_storel_pi(reinterpret_cast<__m64*>(o + (col) * 6 + 4), _mm256_extractf128_ps(u, hi));
    KILN_PACK_COL(0, t0, u0, 0)
    KILN_PACK_COL(1, t1, u1, 0)
    KILN_PACK_COL(2, t2, u2, 0)
    KILN_PACK_COL(3, t3, u3, 0)
    KILN_PACK_COL(4, t0, u0, 1)
    KILN_PACK_COL(5, t1, u1, 1)
    KILN_PACK_COL(6, t2, u2, 1)
    KILN_PACK_COL(7, t3, u3, 1)
#undef KILN_PACK_COL
  }
  for (; k < kc; ++k)
    for (int i = 0; i < 6; ++i) out[k * 6 + i] = a[i * rs + k];
}

// ---------------------------------------------------------------- AVX2 + FMA, double 6×8
__attribute__((target("avx2,fma"))) inline void ukernel_avx2_f64_6x8(
    index_t kc, const double* a, const double* b, double* c, index_t ldc, double alpha,
    double beta, int m, int n) {
  __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd();
  __m256d c10 = _mm256_setzero_pd(), c11 = _mm256_setzero_pd();
  __m256d c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd();
  __m256d c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd();
  __m256d c40 = _mm256_setzero_pd(), c41 = _mm256_setzero_pd();
  __m256d c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();
  if (m == 6 && n == 8) {
    for (int i = 0; i < 6; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 7), _MM_HINT_T0);
    }
  }
#define KILN_AVX2_F64_STEP(off_a, off_b)                              \
  {                                                                   \
    const __m256d b0 = _mm256_load_pd(b + (off_b));                   \
    const __m256d b1 = _mm256_load_pd(b + (off_b) + 4);               \
    __m256d av = _mm256_broadcast_sd(a + (off_a) + 0);                \
    c00 = _mm256_fmadd_pd(av, b0, c00);                               \
    c01 = _mm256_fmadd_pd(av, b1, c01);                               \
    av = _mm256_broadcast_sd(a + (off_a) + 1);                        \
    c10 = _mm256_fmadd_pd(av, b0, c10);                               \
    c11 = _mm256_fmadd_pd(av, b1, c11);                               \
    av = _mm256_broadcast_sd(a + (off_a) + 2);                        \
    c20 = _mm256_fmadd_pd(av, b0, c20);                               \
    c21 = _mm256_fmadd_pd(av, b1, c21);                               \
    av = _mm256_broadcast_sd(a + (off_a) + 3);                        \
    c30 = _mm256_fmadd_pd(av, b0, c30);                               \
    c31 = _mm256_fmadd_pd(av, b1, c31);                               \
    av = _mm256_broadcast_sd(a + (off_a) + 4);                        \
    c40 = _mm256_fmadd_pd(av, b0, c40);                               \
    c41 = _mm256_fmadd_pd(av, b1, c41);                               \
    av = _mm256_broadcast_sd(a + (off_a) + 5);                        \
    c50 = _mm256_fmadd_pd(av, b0, c50);                               \
    c51 = _mm256_fmadd_pd(av, b1, c51);                               \
  }
  index_t k4 = kc / 4;
  if (k4 > 0) {
    // Four k steps per trip, written out so that B stays in two registers per step.
    __asm__ volatile(
        "1:\n\t"
        "prefetcht0 768(%[a])\n\t"
        "vmovapd 0(%[b]), %%ymm12\n\t"
        "vmovapd 32(%[b]), %%ymm13\n\t"
        "vbroadcastsd 0(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c00]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c01]\n\t"
        "vbroadcastsd 8(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c10]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c11]\n\t"
        "vbroadcastsd 16(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c20]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c21]\n\t"
        "vbroadcastsd 24(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c30]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c31]\n\t"
        "vbroadcastsd 32(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c40]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c41]\n\t"
        "vbroadcastsd 40(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c50]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c51]\n\t"
        "vmovapd 64(%[b]), %%ymm12\n\t"
        "vmovapd 96(%[b]), %%ymm13\n\t"
        "vbroadcastsd 48(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c00]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c01]\n\t"
        "vbroadcastsd 56(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c10]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c11]\n\t"
        "vbroadcastsd 64(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c20]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c21]\n\t"
        "vbroadcastsd 72(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c30]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c31]\n\t"
        "vbroadcastsd 80(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c40]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c41]\n\t"
        "vbroadcastsd 88(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c50]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c51]\n\t"
        "vmovapd 128(%[b]), %%ymm12\n\t"
        "vmovapd 160(%[b]), %%ymm13\n\t"
        "vbroadcastsd 96(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c00]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c01]\n\t"
        "vbroadcastsd 104(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c10]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c11]\n\t"
        "vbroadcastsd 112(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c20]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c21]\n\t"
        "vbroadcastsd 120(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c30]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c31]\n\t"
        "vbroadcastsd 128(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c40]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c41]\n\t"
        "vbroadcastsd 136(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c50]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c51]\n\t"
        "vmovapd 192(%[b]), %%ymm12\n\t"
        "vmovapd 224(%[b]), %%ymm13\n\t"
        "vbroadcastsd 144(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c00]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c01]\n\t"
        "vbroadcastsd 152(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c10]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c11]\n\t"
        "vbroadcastsd 160(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c20]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c21]\n\t"
        "vbroadcastsd 168(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c30]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c31]\n\t"
        "vbroadcastsd 176(%[a]), %%ymm14\n\t"
        "vfmadd231pd %%ymm12, %%ymm14, %[c40]\n\t"
        "vfmadd231pd %%ymm13, %%ymm14, %[c41]\n\t"
        "vbroadcastsd 184(%[a]), %%ymm15\n\t"
        "vfmadd231pd %%ymm12, %%ymm15, %[c50]\n\t"
        "vfmadd231pd %%ymm13, %%ymm15, %[c51]\n\t"
        "add $192, %[a]\n\t"
        "add $256, %[b]\n\t"
        "dec %[k]\n\t"
        "jnz 1b\n\t"
        : [a] "+r"(a), [b] "+r"(b), [k] "+r"(k4), [c00] "+x"(c00), [c01] "+x"(c01),
          [c10] "+x"(c10), [c11] "+x"(c11), [c20] "+x"(c20), [c21] "+x"(c21), [c30] "+x"(c30),
          [c31] "+x"(c31), [c40] "+x"(c40), [c41] "+x"(c41), [c50] "+x"(c50), [c51] "+x"(c51)
        :
        : "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
  }
  for (index_t k = kc / 4 * 4; k < kc; ++k) {
    KILN_AVX2_F64_STEP(0, 0)
    a += 6;
    b += 8;
  }
#undef KILN_AVX2_F64_STEP
  const __m256d va = _mm256_set1_pd(alpha);
  if (m == 6 && n == 8) {
    if (beta == 0.0) {
#define KILN_ROW(r, x0, x1)                                   \
  _mm256_storeu_pd(c + (r) * ldc, _mm256_mul_pd(va, x0));     \
  _mm256_storeu_pd(c + (r) * ldc + 4, _mm256_mul_pd(va, x1));
      KILN_ROW(0, c00, c01) KILN_ROW(1, c10, c11) KILN_ROW(2, c20, c21)
      KILN_ROW(3, c30, c31) KILN_ROW(4, c40, c41) KILN_ROW(5, c50, c51)
#undef KILN_ROW
    } else {
      const __m256d vb = _mm256_set1_pd(beta);
#define KILN_ROW(r, x0, x1)                                                                  \
  _mm256_storeu_pd(c + (r) * ldc,                                                           \
                   _mm256_fmadd_pd(va, x0, _mm256_mul_pd(vb, _mm256_loadu_pd(c + (r) * ldc)))); \
  _mm256_storeu_pd(c + (r) * ldc + 4,                                                       \
                   _mm256_fmadd_pd(va, x1,                                                  \
                                   _mm256_mul_pd(vb, _mm256_loadu_pd(c + (r) * ldc + 4))));
      KILN_ROW(0, c00, c01) KILN_ROW(1, c10, c11) KILN_ROW(2, c20, c21)
      KILN_ROW(3, c30, c31) KILN_ROW(4, c40, c41) KILN_ROW(5, c50, c51)
#undef KILN_ROW
    }
    return;
  }
  alignas(32) double tile[6 * 8];
  _mm256_store_pd(tile + 0, c00);
  _mm256_store_pd(tile + 4, c01);
  _mm256_store_pd(tile + 8, c10);
  _mm256_store_pd(tile + 12, c11);
  _mm256_store_pd(tile + 16, c20);
  _mm256_store_pd(tile + 20, c21);
  _mm256_store_pd(tile + 24, c30);
  _mm256_store_pd(tile + 28, c31);
  _mm256_store_pd(tile + 32, c40);
  _mm256_store_pd(tile + 36, c41);
  _mm256_store_pd(tile + 40, c50);
  _mm256_store_pd(tile + 44, c51);
  store_tile_edge(tile, 8, c, ldc, alpha, beta, m, n);
}

// ---------------------------------------------------------------- AVX-512F, float 14×32
// 28 accumulators, two B vectors and one broadcast: 31 of the 32 zmm registers.
__attribute__((target("avx512f"))) inline void ukernel_avx512_f32_14x32(
    index_t kc, const float* a, const float* b, float* c, index_t ldc, float alpha, float beta,
    int m, int n) {
  constexpr int MR = 14;
  __m512 acc0[MR], acc1[MR];
  for (int i = 0; i < MR; ++i) {
    acc0[i] = _mm512_setzero_ps();
    acc1[i] = _mm512_setzero_ps();
  }
  for (index_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b);
    const __m512 b1 = _mm512_load_ps(b + 16);
    _mm_prefetch(reinterpret_cast<const char*>(a + 4 * MR), _MM_HINT_T0);
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i]);
      acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
    }
    a += MR;
    b += 32;
  }
  const __m512 va = _mm512_set1_ps(alpha);
  if (m == MR && n == 32) {
    if (beta == 0.0f) {
#pragma GCC unroll 14
      for (int i = 0; i < MR; ++i) {
        _mm512_storeu_ps(c + i * ldc, _mm512_mul_ps(va, acc0[i]));
        _mm512_storeu_ps(c + i * ldc + 16, _mm512_mul_ps(va, acc1[i]));
      }
    } else {
      const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 14
      for (int i = 0; i < MR; ++i) {
        _mm512_storeu_ps(c + i * ldc, _mm512_fmadd_ps(va, acc0[i],
                                                      _mm512_mul_ps(vb, _mm512_loadu_ps(c + i * ldc))));
        _mm512_storeu_ps(c + i * ldc + 16,
                         _mm512_fmadd_ps(va, acc1[i],
                                         _mm512_mul_ps(vb, _mm512_loadu_ps(c + i * ldc + 16))));
      }
    }
    return;
  }
  alignas(64) float tile[MR * 32];
  for (int i = 0; i < MR; ++i) {
    _mm512_store_ps(tile + i * 32, acc0[i]);
    _mm512_store_ps(tile + i * 32 + 16, acc1[i]);
  }
  store_tile_edge(tile, 32, c, ldc, alpha, beta, m, n);
}

// ---------------------------------------------------------------- AVX-512F, double 14×16
__attribute__((target("avx512f"))) inline void ukernel_avx512_f64_14x16(
    index_t kc, const double* a, const double* b, double* c, index_t ldc, double alpha,
    double beta, int m, int n) {
  constexpr int MR = 14;
  __m512d acc0[MR], acc1[MR];
  for (int i = 0; i < MR; ++i) {
    acc0[i] = _mm512_setzero_pd();
    acc1[i] = _mm512_setzero_pd();
  }
  for (index_t k = 0; k < kc; ++k) {
    const __m512d b0 = _mm512_load_pd(b);
    const __m512d b1 = _mm512_load_pd(b + 8);
    _mm_prefetch(reinterpret_cast<const char*>(a + 4 * MR), _MM_HINT_T0);
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) {
      const __m512d av = _mm512_set1_pd(a[i]);
      acc0[i] = _mm512_fmadd_pd(av, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_pd(av, b1, acc1[i]);
    }
    a += MR;
    b += 16;
  }
  const __m512d va = _mm512_set1_pd(alpha);
  if (m == MR && n == 16) {
    if (beta == 0.0) {
#pragma GCC unroll 14
      for (int i = 0; i < MR; ++i) {
        _mm512_storeu_pd(c + i * ldc, _mm512_mul_pd(va, acc0[i]));
        _mm512_storeu_pd(c + i * ldc + 8, _mm512_mul_pd(va, acc1[i]));
      }
    } else {
      const __m512d vb = _mm512_set1_pd(beta);
#pragma GCC unroll 14
      for (int i = 0; i < MR; ++i) {
        _mm512_storeu_pd(c + i * ldc, _mm512_fmadd_pd(va, acc0[i],
                                                      _mm512_mul_pd(vb, _mm512_loadu_pd(c + i * ldc))));
        _mm512_storeu_pd(c + i * ldc + 8,
                         _mm512_fmadd_pd(va, acc1[i],
                                         _mm512_mul_pd(vb, _mm512_loadu_pd(c + i * ldc + 8))));
      }
    }
    return;
  }
  alignas(64) double tile[MR * 16];
  for (int i = 0; i < MR; ++i) {
    _mm512_store_pd(tile + i * 16, acc0[i]);
    _mm512_store_pd(tile + i * 16 + 8, acc1[i]);
  }
  store_tile_edge(tile, 16, c, ldc, alpha, beta, m, n);
}

}  // namespace kiln::backend::cpu::gemm_detail

#endif  // __x86_64__
