// kiln/backend/cpu/gemm_neon.hpp — AArch64 NEON GEMM micro-kernels: 8×8 float, 8×4 double.
// Builds on <arm_neon.h> and gemm_tile.hpp.
#pragma once

#include <kiln/backend/cpu/gemm_tile.hpp>
#include <kiln/core/config.hpp>

#if defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>

namespace kiln::backend::cpu::gemm_detail {

// Same contract as the x86 kernels: packed 8×kc A sliver and kc×NR B sliver in, an m×n corner
// of C = alpha·(a·b) + beta·C out (C not read when beta == 0).

// 16 accumulators (8 rows × two 4-wide vectors); A arrives as two vectors, used lane by lane.
inline void ukernel_neon_f32_8x8(index_t kc, const float* a, const float* b, float* c,
                                 index_t ldc, float alpha, float beta, int m, int n) {
  float32x4_t acc[8][2];
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = vdupq_n_f32(0.0f);
  for (index_t k = 0; k < kc; ++k) {
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4);
    const float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
#define KILN_NEON_ROW(i, av, lane)                         \
  acc[i][0] = vfmaq_laneq_f32(acc[i][0], b0, av, lane);    \
  acc[i][1] = vfmaq_laneq_f32(acc[i][1], b1, av, lane);
    KILN_NEON_ROW(0, a0, 0) KILN_NEON_ROW(1, a0, 1) KILN_NEON_ROW(2, a0, 2)
    KILN_NEON_ROW(3, a0, 3) KILN_NEON_ROW(4, a1, 0) KILN_NEON_ROW(5, a1, 1)
    KILN_NEON_ROW(6, a1, 2) KILN_NEON_ROW(7, a1, 3)
#undef KILN_NEON_ROW
    a += 8;
    b += 8;
  }
  if (m == 8 && n == 8) {
    const float32x4_t va = vdupq_n_f32(alpha);
    for (int i = 0; i < 8; ++i) {
      float* ci = c + i * ldc;
      if (beta == 0.0f) {
        vst1q_f32(ci, vmulq_f32(va, acc[i][0]));
        vst1q_f32(ci + 4, vmulq_f32(va, acc[i][1]));
      } else {
        const float32x4_t vb = vdupq_n_f32(beta);
        vst1q_f32(ci, vfmaq_f32(vmulq_f32(vb, vld1q_f32(ci)), va, acc[i][0]));
        vst1q_f32(ci + 4, vfmaq_f32(vmulq_f32(vb, vld1q_f32(ci + 4)), va, acc[i][1]));
      }
    }
    return;
  }
  float tile[8 * 8];
  for (int i = 0; i < 8; ++i) {
    vst1q_f32(tile + i * 8, acc[i][0]);
    vst1q_f32(tile + i * 8 + 4, acc[i][1]);
  }
  store_tile_edge(tile, 8, c, ldc, alpha, beta, m, n);
}

// 16 accumulators (8 rows × two 2-wide vectors); A arrives as four 2-wide vectors.
inline void ukernel_neon_f64_8x4(index_t kc, const double* a, const double* b, double* c,
                                 index_t ldc, double alpha, double beta, int m, int n) {
  float64x2_t acc[8][2];
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = vdupq_n_f64(0.0);
  for (index_t k = 0; k < kc; ++k) {
    const float64x2_t b0 = vld1q_f64(b), b1 = vld1q_f64(b + 2);
    const float64x2_t a0 = vld1q_f64(a), a1 = vld1q_f64(a + 2);
    const float64x2_t a2 = vld1q_f64(a + 4), a3 = vld1q_f64(a + 6);
#define KILN_NEON_ROW(i, av, lane)                         \
  acc[i][0] = vfmaq_laneq_f64(acc[i][0], b0, av, lane);    \
  acc[i][1] = vfmaq_laneq_f64(acc[i][1], b1, av, lane);
    KILN_NEON_ROW(0, a0, 0) KILN_NEON_ROW(1, a0, 1) KILN_NEON_ROW(2, a1, 0)
    KILN_NEON_ROW(3, a1, 1) KILN_NEON_ROW(4, a2, 0) KILN_NEON_ROW(5, a2, 1)
    KILN_NEON_ROW(6, a3, 0) KILN_NEON_ROW(7, a3, 1)
#undef KILN_NEON_ROW
    a += 8;
    b += 4;
  }
  double tile[8 * 4];
  for (int i = 0; i < 8; ++i) {
    vst1q_f64(tile + i * 4, acc[i][0]);
    vst1q_f64(tile + i * 4 + 2, acc[i][1]);
  }
  store_tile_edge(tile, 4, c, ldc, alpha, beta, m, n);
}

}  // namespace kiln::backend::cpu::gemm_detail

#endif  // __aarch64__ && __ARM_NEON
