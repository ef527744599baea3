// kiln/backend/cpu/gemm_tile.hpp — the scalar edge store shared by the GEMM micro-kernels.
// Builds on kiln/core/config.hpp only.
#pragma once

#include <kiln/core/config.hpp>

namespace kiln::backend::cpu::gemm_detail {

// Writes an m×n corner of a computed tile (row stride `ld_tile`) into C:
// C = alpha·tile + beta·C, never reading C when beta == 0.
template <class T>
inline void store_tile_edge(const T* tile, int ld_tile, T* c, index_t ldc, T alpha, T beta,
                            int m, int n) {
  if (beta == T(0)) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) c[i * ldc + j] = alpha * tile[i * ld_tile + j];
  } else {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j)
        c[i * ldc + j] = alpha * tile[i * ld_tile + j] + beta * c[i * ldc + j];
  }
}

}  // namespace kiln::backend::cpu::gemm_detail
