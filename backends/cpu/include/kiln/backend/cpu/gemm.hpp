// kiln/backend/cpu/gemm.hpp — GEMM and strided-batched GEMM, float and double, row-major.
// Builds on packed panels, cache blocks, gemm_x86/gemm_neon micro-kernels and thread_pool.hpp.
#pragma once

#include <kiln/backend/cpu/simd.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/config.hpp>

#include <kiln/backend/cpu/gemm_neon.hpp>
#include <kiln/backend/cpu/gemm_x86.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>

namespace kiln::backend::cpu {

namespace gemm_detail {

// ------------------------------------------------------------------------------ arguments
[[noreturn]] inline void throw_bad_argument(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string(fn) + ": " + what);
}

inline void check_gemm_args(const char* fn, bool trans_a, bool trans_b, index_t M, index_t N,
                            index_t K, index_t lda, index_t ldb, index_t ldc) {
  if (M < 0) throw_bad_argument(fn, "M must be >= 0, got M = " + std::to_string(M));
  if (N < 0) throw_bad_argument(fn, "N must be >= 0, got N = " + std::to_string(N));
  if (K < 0) throw_bad_argument(fn, "K must be >= 0, got K = " + std::to_string(K));
  const index_t min_lda = trans_a ? M : K;
  const index_t min_ldb = trans_b ? K : N;
  if (lda < min_lda)
    throw_bad_argument(fn, std::string("lda must be >= ") + (trans_a ? "M" : "K") + " = " +
                               std::to_string(min_lda) + " (trans_a = " +
                               (trans_a ? "true" : "false") + "), got lda = " +
                               std::to_string(lda));
  if (ldb < min_ldb)
    throw_bad_argument(fn, std::string("ldb must be >= ") + (trans_b ? "K" : "N") + " = " +
                               std::to_string(min_ldb) + " (trans_b = " +
                               (trans_b ? "true" : "false") + "), got ldb = " +
                               std::to_string(ldb));
  if (ldc < N)
    throw_bad_argument(fn, "ldc must be >= N = " + std::to_string(N) + ", got ldc = " +
                               std::to_string(ldc));
}

// ------------------------------------------------------------------------------ buffers
// A 64-byte aligned scratch buffer that only grows; one per thread and operand.
template <class T>
struct PackBuffer {
  T* data = nullptr;
  std::size_t size = 0;
  PackBuffer() = default;
  PackBuffer(const PackBuffer&) = delete;
  PackBuffer& operator=(const PackBuffer&) = delete;
  ~PackBuffer() { release(); }
  void release() {
    if (data) ::operator delete(data, std::align_val_t(64));
    data = nullptr;
    size = 0;
  }
  T* get(std::size_t n) {
    if (n > size) {
      release();
      data = static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
      size = n;
    }
    return data;
  }
};

template <class T, int Which>
inline T* scratch(std::size_t n) {
  thread_local PackBuffer<T> buffer;
  return buffer.get(n);
}

// ------------------------------------------------------------------------------ packing
// op(A) element (i, k) lives at a[i*rs + k*cs]; op(B) element (k, j) at b[k*rs + j*cs].

// Packs the mc×kc block of op(A) into MR-row slivers: sliver s holds, for each k, the MR values
// of rows s*MR .. s*MR+MR-1 (zero past mc).
// `pack_rows`, when given, packs a full sliver whose rows are contiguous (cs == 1).
template <int MR, class T>
inline void pack_a(index_t mc, index_t kc, const T* a, index_t rs, index_t cs, T* out,
                   void (*pack_rows)(index_t, const T*, index_t, T*) = nullptr) {
  for (index_t i0 = 0; i0 < mc; i0 += MR) {
    const int m = static_cast<int>(std::min<index_t>(MR, mc - i0));
    const T* src = a + i0 * rs;
    if (m == MR && cs == 1 && pack_rows != nullptr) {
      pack_rows(kc, src, rs, out);
      out += MR * kc;
    } else if (m == MR && rs == 1) {
      // Columns of the sliver are contiguous: one MR-wide copy per k.
      for (index_t k = 0; k < kc; ++k) {
        const T* s = src + k * cs;
        for (int i = 0; i < MR; ++i) out[i] = s[i];
        out += MR;
      }
    } else if (m == MR && cs == 1) {
      // Rows are contiguous in k: gather MR rows in lock-step, a few k at a time.
      const T* rows[MR];
      for (int i = 0; i < MR; ++i) rows[i] = src + i * rs;
      index_t k = 0;
      for (; k + 4 <= kc; k += 4) {
        for (int kk = 0; kk < 4; ++kk)
          for (int i = 0; i < MR; ++i) out[kk * MR + i] = rows[i][k + kk];
        out += 4 * MR;
      }
      for (; k < kc; ++k) {
        for (int i = 0; i < MR; ++i) out[i] = rows[i][k];
        out += MR;
      }
    } else {
      for (index_t k = 0; k < kc; ++k) {
        int i = 0;
        for (; i < m; ++i) out[i] = src[i * rs + k * cs];
        for (; i < MR; ++i) out[i] = T(0);
        out += MR;
      }
    }
  }
}

// Packs the kc×nc block of op(B) into NR-column slivers: sliver s holds, for each k, the NR
// values of columns s*NR .. s*NR+NR-1 (zero past nc).
template <int NR, class T>
inline void pack_b(index_t kc, index_t nc, const T* b, index_t rs, index_t cs, T* out) {
  for (index_t j0 = 0; j0 < nc; j0 += NR) {
    const int n = static_cast<int>(std::min<index_t>(NR, nc - j0));
    const T* src = b + j0 * cs;
    if (n == NR && cs == 1) {
      for (index_t k = 0; k < kc; ++k) {
        const T* s = src + k * rs;
        for (int j = 0; j < NR; ++j) out[j] = s[j];
        out += NR;
      }
    } else if (n == NR && rs == 1) {
      const T* cols[NR];
      for (int j = 0; j < NR; ++j) cols[j] = src + j * cs;
      index_t k = 0;
      for (; k + 4 <= kc; k += 4) {
        for (int kk = 0; kk < 4; ++kk)
          for (int j = 0; j < NR; ++j) out[kk * NR + j] = cols[j][k + kk];
        out += 4 * NR;
      }
      for (; k < kc; ++k) {
        for (int j = 0; j < NR; ++j) out[j] = cols[j][k];
        out += NR;
      }
    } else {
      for (index_t k = 0; k < kc; ++k) {
        int j = 0;
        for (; j < n; ++j) out[j] = src[k * rs + j * cs];
        for (; j < NR; ++j) out[j] = T(0);
        out += NR;
      }
    }
  }
}

// ------------------------------------------------------------------------------ portable kernel
template <class T, int MR, int NR>
inline void ukernel_portable(index_t kc, const T* a, const T* b, T* c, index_t ldc, T alpha,
                             T beta, int m, int n) {
  T acc[MR][NR] = {};
  for (index_t k = 0; k < kc; ++k) {
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
    }
    a += MR;
    b += NR;
  }
  for (int i = 0; i < m; ++i) {
    T* ci = c + i * ldc;
    if (beta == T(0)) {
      for (int j = 0; j < n; ++j) ci[j] = alpha * acc[i][j];
    } else {
      for (int j = 0; j < n; ++j) ci[j] = alpha * acc[i][j] + beta * ci[j];
    }
  }
}

// ------------------------------------------------------------------------------ kernel table
// A micro-kernel with its register tile (MR×NR) and cache blocks: KC (depth, so an NR-column
// sliver of B stays in L1), MC (rows, so the packed MC×KC block of A stays in L2), NC (columns,
// so the packed KC×NC panel of B stays in L3).
template <class T>
using ukernel_fn = void (*)(index_t, const T*, const T*, T*, index_t, T, T, int, int);

// Packs a full MR-row sliver of an A block whose rows are contiguous (a[i*rs + k]).
template <class T>
using pack_rows_fn = void (*)(index_t kc, const T* a, index_t rs, T* out);

template <class T, int MR_, int NR_, index_t KC_, index_t MC_, index_t NC_, ukernel_fn<T> F,
          pack_rows_fn<T> PackRows = nullptr>
struct Kernel {
  using value_type = T;
  static constexpr int MR = MR_;
  static constexpr int NR = NR_;
  static constexpr index_t KC = KC_;
  static constexpr index_t MC = MC_;
  static constexpr index_t NC = NC_;
  static constexpr ukernel_fn<T> run = F;
  static constexpr pack_rows_fn<T> pack_rows = PackRows;  // nullptr: the generic packing
  static_assert(MC % MR == 0 && NC % NR == 0, "blocks must be whole register tiles");
};

using PortableF32 = Kernel<float, 4, 8, 256, 128, 2048, &ukernel_portable<float, 4, 8>>;
using PortableF64 = Kernel<double, 4, 4, 256, 128, 2048, &ukernel_portable<double, 4, 4>>;
#if defined(__aarch64__) && defined(__ARM_NEON)
using NeonF32 = Kernel<float, 8, 8, 256, 128, 2048, &ukernel_neon_f32_8x8>;
using NeonF64 = Kernel<double, 8, 4, 256, 128, 2048, &ukernel_neon_f64_8x4>;
#endif
#if defined(__x86_64__)
// Zen 3 (32 KiB L1d, 512 KiB L2/core): B sliver 16×256×4 B = 16 KiB in L1,
// A block 144×256×4 B = 144 KiB in L2, B panel 256×3072×4 B = 3 MiB in L3.
using Avx2F32 =
    Kernel<float, 6, 16, 256, 144, 3072, &ukernel_avx2_f32_6x16, &pack_a_rows_avx2_f32_6>;
using Avx2F64 = Kernel<double, 6, 8, 256, 96, 2048, &ukernel_avx2_f64_6x8>;
// AVX-512 (32 KiB L1d assumed, as on Zen 4): a 32-wide B sliver of depth 192 fills 24 KiB.
using Avx512F32 = Kernel<float, 14, 32, 192, 168, 3072, &ukernel_avx512_f32_14x32>;
using Avx512F64 = Kernel<double, 14, 16, 192, 84, 2048, &ukernel_avx512_f64_14x16>;
#endif

// ------------------------------------------------------------------------------ drivers
// op(A) (M×K) at a with strides (ars, acs); op(B) (K×N) at b with strides (brs, bcs).
struct Operands {
  index_t ars, acs, brs, bcs;
};

// The two innermost loops: micro-kernels over the packed A block `ap` (mc rows) and the packed
// B slivers jr_begin..jr_end of `bp`, writing the C block at c (row stride ldc).
template <class Kern, class T>
KILN_FORCEINLINE void macro_kernel(index_t mc, index_t kc, index_t jr_begin, index_t jr_end, index_t nc,
                                   const T* ap, const T* bp, T* c, index_t ldc, T alpha, T beta) {
  constexpr int MR = Kern::MR, NR = Kern::NR;
  for (index_t jr = jr_begin; jr < jr_end; jr += NR) {
    const int n = static_cast<int>(std::min<index_t>(NR, nc - jr));
    const T* bs = bp + jr * kc;
    T* cj = c + jr;
    for (index_t ir = 0; ir < mc; ir += MR) {
      const int m = static_cast<int>(std::min<index_t>(MR, mc - ir));
      Kern::run(kc, ap + ir * kc, bs, cj + ir * ldc, ldc, alpha, beta, m, n);
    }
  }
}

// The five BLIS loops around the micro-kernel for one thread's sub-problem.
template <class Kern, class T>
void gemm_blocked(index_t M, index_t N, index_t K, T alpha, const T* a, const T* b,
                  const Operands& op, T beta, T* c, index_t ldc) {
  constexpr int MR = Kern::MR, NR = Kern::NR;
  const index_t kc_max = std::min<index_t>(Kern::KC, K);
  const index_t nc_max = std::min<index_t>(Kern::NC, (N + NR - 1) / NR * NR);
  const index_t mc_max = std::min<index_t>(Kern::MC, (M + MR - 1) / MR * MR);
  T* bp = scratch<T, 1>(static_cast<std::size_t>(kc_max * nc_max));
  T* ap = scratch<T, 0>(static_cast<std::size_t>(kc_max * mc_max));
  for (index_t jc = 0; jc < N; jc += Kern::NC) {
    const index_t nc = std::min<index_t>(Kern::NC, N - jc);
    for (index_t pc = 0; pc < K; pc += Kern::KC) {
      const index_t kc = std::min<index_t>(Kern::KC, K - pc);
      const T beta_k = pc == 0 ? beta : T(1);
      pack_b<NR>(kc, nc, b + pc * op.brs + jc * op.bcs, op.brs, op.bcs, bp);
      for (index_t ic = 0; ic < M; ic += Kern::MC) {
        const index_t mc = std::min<index_t>(Kern::MC, M - ic);
        pack_a<MR>(mc, kc, a + ic * op.ars + pc * op.acs, op.ars, op.acs, ap, Kern::pack_rows);
        macro_kernel<Kern>(mc, kc, 0, nc, nc, ap, bp, c + ic * ldc + jc, ldc, alpha, beta_k);
      }
    }
  }
}

// C = beta·C (C overwritten with zeros when beta == 0).
template <class T>
void scale_c(index_t M, index_t N, T beta, T* c, index_t ldc) {
  for (index_t i = 0; i < M; ++i) {
    T* ci = c + i * ldc;
    if (beta == T(0)) {
      for (index_t j = 0; j < N; ++j) ci[j] = T(0);
    } else if (beta != T(1)) {
      for (index_t j = 0; j < N; ++j) ci[j] *= beta;
    }
  }
}

// Straight loops for problems too small to repay packing: row i of C accumulates
// alpha·a(i,k)·b(k,:) over k.
template <class T>
void gemm_small(index_t M, index_t N, index_t K, T alpha, const T* a, const T* b,
                const Operands& op, T beta, T* c, index_t ldc) {
  scale_c(M, N, beta, c, ldc);
  for (index_t i = 0; i < M; ++i) {
    T* ci = c + i * ldc;
    for (index_t k = 0; k < K; ++k) {
      const T aik = alpha * a[i * op.ars + k * op.acs];
      const T* bk = b + k * op.brs;
      if (op.bcs == 1) {
        for (index_t j = 0; j < N; ++j) ci[j] += aik * bk[j];
      } else {
        for (index_t j = 0; j < N; ++j) ci[j] += aik * bk[j * op.bcs];
      }
    }
  }
}

// ------------------------------------------------------------------------------ few rows
// op(A) with a few rows times a transposed B (B stored N×K, so each column of op(B) is a
// contiguous row of K values): every C element is a dot product of two contiguous rows. Packing
// B would copy the whole matrix to use it once; here it streams through once instead. This is
// the step of autoregressive generation: one token's activations against every weight matrix.
inline constexpr index_t few_rows_max = 4;

// C block (MB rows × NB columns) = alpha·dot(a_i, b_j) + beta·C, a_i = a + i·K (contiguous),
// b_j = b + j·ldb. Each accumulator is a SIMD packet; MB·NB of them hide the FMA latency.
template <class T, int MB, int NB>
KILN_FORCEINLINE void dot_block(index_t K, const T* a, const T* b, index_t ldb, T alpha, T beta,
                                T* c, index_t ldc) {
  using V = simd::Vec<T>;
  constexpr index_t W = V::size;
  V acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = V::zero();
  index_t k = 0;
  for (; k + W <= K; k += W) {
    V bv[NB];
    for (int j = 0; j < NB; ++j) bv[j] = V::load(b + j * ldb + k);
    for (int i = 0; i < MB; ++i) {
      const V av = V::load(a + i * K + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = fma(av, bv[j], acc[i][j]);
    }
  }
  if (k < K) {
    const int n = static_cast<int>(K - k);
    V bv[NB];
    for (int j = 0; j < NB; ++j) bv[j] = V::load_partial(b + j * ldb + k, n);
    for (int i = 0; i < MB; ++i) {
      const V av = V::load_partial(a + i * K + k, n);
      for (int j = 0; j < NB; ++j) acc[i][j] = fma(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) {
      T& out = c[i * ldc + j];
      const T dot = alpha * hsum(acc[i][j]);
      out = beta == T(0) ? dot : dot + beta * out;
    }
}

// Columns j0..j1 of C for MB rows: NB columns at a time (as many as the registers allow),
// then one by one.
template <class T, int MB>
void dot_rows(index_t K, index_t j0, index_t j1, const T* a, const T* b, index_t ldb, T alpha,
              T beta, T* c, index_t ldc) {
  constexpr int NB = MB == 1 ? 8 : MB == 2 ? 4 : 2;
  index_t j = j0;
  for (; j + NB <= j1; j += NB) dot_block<T, MB, NB>(K, a, b + j * ldb, ldb, alpha, beta, c + j, ldc);
  for (; j < j1; ++j) dot_block<T, MB, 1>(K, a, b + j * ldb, ldb, alpha, beta, c + j, ldc);
}

// C (M ≤ few_rows_max rows) = alpha·op(A)·op(B) + beta·C for a transposed B (op.brs == 1).
// Columns are shared out among threads when the product is large enough to repay a hand-off.
template <class T>
void gemm_few_rows(index_t M, index_t N, index_t K, T alpha, const T* a, const T* b,
                   const Operands& op, T beta, T* c, index_t ldc, int threads) {
  // The rows of op(A), contiguous (a copy when A is transposed or strided).
  const T* rows = a;
  if (op.acs != 1 || (M > 1 && op.ars != K)) {
    T* copy = scratch<T, 0>(static_cast<std::size_t>(M * K));
    for (index_t i = 0; i < M; ++i)
      for (index_t k = 0; k < K; ++k) copy[i * K + k] = a[i * op.ars + k * op.acs];
    rows = copy;
  }
  const index_t ldb = op.bcs;
  const auto run = [&](index_t j0, index_t j1) {
    switch (M) {
      case 1: dot_rows<T, 1>(K, j0, j1, rows, b, ldb, alpha, beta, c, ldc); break;
      case 2: dot_rows<T, 2>(K, j0, j1, rows, b, ldb, alpha, beta, c, ldc); break;
      case 3: dot_rows<T, 3>(K, j0, j1, rows, b, ldb, alpha, beta, c, ldc); break;
      default: dot_rows<T, 4>(K, j0, j1, rows, b, ldb, alpha, beta, c, ldc); break;
    }
  };
  // About 256 K multiply-adds per piece: below that a thread hand-off costs more than it saves.
  const index_t grain = std::max<index_t>(8, 262144 / std::max<index_t>(1, M * K));
  if (threads <= 1 || N < 2 * grain) {
    run(0, N);
    return;
  }
  parallel_for(0, N, grain, [&](index_t j0, index_t j1) { run(j0, j1); });
}

// Several threads on one product. For each KC×NC panel of op(B): the threads pack the panel
// together into one shared buffer (slivers handed out through a counter), then take work
// items, an MC-row block of C times a group of NR-column slivers, from a second counter. Each
// thread packs the A block of its item into its own buffer, reusing it while consecutive items
// share the block. Handing out items dynamically keeps both cores busy to the end even when
// one of them is slowed down by other work on the machine.
template <class Kern, class T>
void gemm_parallel(index_t M, index_t N, index_t K, T alpha, const T* a, const T* b,
                   const Operands& op, T beta, T* c, index_t ldc, int threads) {
  constexpr int MR = Kern::MR, NR = Kern::NR;
  // Row blocks: a multiple of `threads` of them, each at most MC rows, so that they share
  // out evenly.
  const index_t row_tiles = (M + MR - 1) / MR;
  const index_t max_tiles_per_block = Kern::MC / MR;
  index_t row_blocks = threads * ((row_tiles + threads * max_tiles_per_block - 1) /
                                  (threads * max_tiles_per_block));
  row_blocks = std::min(row_blocks, row_tiles);
  const index_t tiles_per_block = (row_tiles + row_blocks - 1) / row_blocks;
  row_blocks = (row_tiles + tiles_per_block - 1) / tiles_per_block;
  const index_t mc_block = tiles_per_block * MR;

  const index_t kc_max = std::min<index_t>(Kern::KC, K);
  const index_t nc_max = std::min<index_t>(Kern::NC, (N + NR - 1) / NR * NR);
  T* bp = scratch<T, 1>(static_cast<std::size_t>(kc_max * nc_max));

  for (index_t jc = 0; jc < N; jc += Kern::NC) {
    const index_t nc = std::min<index_t>(Kern::NC, N - jc);
    const index_t slivers = (nc + NR - 1) / NR;
    // Column groups only when there are too few row blocks for two items per thread (each
    // item packs its A block unless the same thread just packed it).
    const index_t col_groups =
        std::min(slivers, std::max<index_t>(1, (2 * threads + row_blocks - 1) / row_blocks));
    const index_t slivers_per_group = (slivers + col_groups - 1) / col_groups;
    const index_t groups = (slivers + slivers_per_group - 1) / slivers_per_group;
    const index_t items = row_blocks * groups;
    for (index_t pc = 0; pc < K; pc += Kern::KC) {
      const index_t kc = std::min<index_t>(Kern::KC, K - pc);
      const T beta_k = pc == 0 ? beta : T(1);
      const T* b_panel = b + pc * op.brs + jc * op.bcs;
      const T* a_panel = a + pc * op.acs;

      // One parallel region per panel. Packing first: slivers are handed out through a
      // counter and counted when done; a thread that runs out of slivers waits until all are
      // packed. Every sliver taken is finished by the thread that took it, so this cannot
      // deadlock even when one thread ends up running every task.
      constexpr index_t pack_grain = 4;  // slivers per pick
      std::atomic<index_t> next_sliver{0}, packed_slivers{0}, next_item{0};
      parallel_tasks(threads, [&](index_t) {
        for (;;) {
          const index_t s0 = next_sliver.fetch_add(pack_grain, std::memory_order_relaxed);
          if (s0 >= slivers) break;
          const index_t j0 = s0 * NR;
          const index_t cols = std::min<index_t>(pack_grain * NR, nc - j0);
          pack_b<NR>(kc, cols, b_panel + j0 * op.bcs, op.brs, op.bcs, bp + j0 * kc);
          packed_slivers.fetch_add(std::min<index_t>(pack_grain, slivers - s0),
                                   std::memory_order_release);
        }
        while (packed_slivers.load(std::memory_order_acquire) < slivers)
          std::this_thread::yield();

        T* ap = scratch<T, 0>(static_cast<std::size_t>(kc_max * mc_block));
        index_t packed_block = -1;
        for (;;) {
          const index_t item = next_item.fetch_add(1, std::memory_order_relaxed);
          if (item >= items) break;
          const index_t rb = item / groups, g = item % groups;
          const index_t ic = rb * mc_block;
          const index_t mc = std::min<index_t>(mc_block, M - ic);
          if (packed_block != rb) {
            pack_a<MR>(mc, kc, a_panel + ic * op.ars, op.ars, op.acs, ap, Kern::pack_rows);
            packed_block = rb;
          }
          const index_t jr_begin = g * slivers_per_group * NR;
          const index_t jr_end = std::min<index_t>(nc, jr_begin + slivers_per_group * NR);
          macro_kernel<Kern>(mc, kc, jr_begin, jr_end, nc, ap, bp, c + ic * ldc + jc, ldc, alpha, beta_k);
        }
      });
    }
  }
}

// Picks serial or parallel execution: below ~2 MFLOP a thread hand-off costs more than it
// saves.
template <class Kern, class T>
void gemm_threaded(index_t M, index_t N, index_t K, T alpha, const T* a, const T* b,
                   const Operands& op, T beta, T* c, index_t ldc, int threads) {
  const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) *
                       static_cast<double>(K);
  if (threads <= 1 || flops < 2.0e6) {
    gemm_blocked<Kern>(M, N, K, alpha, a, b, op, beta, c, ldc);
    return;
  }
  gemm_parallel<Kern>(M, N, K, alpha, a, b, op, beta, c, ldc, threads);
}

template <class T>
using driver_fn = void (*)(index_t, index_t, index_t, T, const T*, const T*, const Operands&, T,
                           T*, index_t, int);

template <class T>
struct Driver {
  driver_fn<T> run;
  const char* name;
};

// The best kernel this CPU runs, chosen once.
template <class T>
Driver<T> pick_driver() {
  constexpr bool is_float = std::is_same_v<T, float>;
  using Portable = std::conditional_t<is_float, PortableF32, PortableF64>;
#if defined(__x86_64__)
  using Avx2 = std::conditional_t<is_float, Avx2F32, Avx2F64>;
  using Avx512 = std::conditional_t<is_float, Avx512F32, Avx512F64>;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f"))
    return {&gemm_threaded<Avx512, T>, is_float ? "avx512f 14x32" : "avx512f 14x16"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {&gemm_threaded<Avx2, T>, is_float ? "avx2+fma 6x16" : "avx2+fma 6x8"};
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
  using Neon = std::conditional_t<is_float, NeonF32, NeonF64>;
  return {&gemm_threaded<Neon, T>, is_float ? "neon 8x8" : "neon 8x4"};
#endif
  return {&gemm_threaded<Portable, T>, is_float ? "portable 4x8" : "portable 4x4"};
}

template <class T>
const Driver<T>& driver() {
  static const Driver<T> chosen = pick_driver<T>();
  return chosen;
}

// Runs one validated product with `threads` threads at most.
template <class T>
void gemm_run(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, T alpha, const T* A,
              index_t lda, const T* B, index_t ldb, T beta, T* C, index_t ldc, int threads) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const Operands op{trans_a ? 1 : lda, trans_a ? lda : 1, trans_b ? 1 : ldb, trans_b ? ldb : 1};
  if (static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) <= 4096.0 ||
      (M == 1 && !trans_b)) {
    gemm_small(M, N, K, alpha, A, B, op, beta, C, ldc);
    return;
  }
  if (M <= few_rows_max && op.brs == 1) {
    gemm_few_rows(M, N, K, alpha, A, B, op, beta, C, ldc, threads);
    return;
  }
  driver<T>().run(M, N, K, alpha, A, B, op, beta, C, ldc, threads);
}

}  // namespace gemm_detail

// C[M×N] = alpha·op(A)·op(B) + beta·C, all row-major. op(A) is A (M×K, lda >= K) or, when
// trans_a, the transpose of A stored K×M (lda >= M); likewise op(B) is B (K×N, ldb >= N) or
// the transpose of B stored N×K (ldb >= K). With beta == 0, C's old contents are ignored.
// Throws std::invalid_argument for negative sizes or leading dimensions that are too small.
template <class T>
void gemm(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, T alpha, const T* A,
          index_t lda, const T* B, index_t ldb, T beta, T* C, index_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "kiln::backend::cpu::gemm supports float and double");
  gemm_detail::check_gemm_args("gemm", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  const int threads = detail::in_worker ? 1 : num_threads();
  gemm_detail::gemm_run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads);
}

// The micro-kernel gemm<T> runs on this CPU, e.g. "avx2+fma 6x16" (for logs and benchmarks).
template <class T>
const char* gemm_kernel_name() {
  return gemm_detail::driver<T>().name;
}

// `batch` independent products: item i uses A + i·stride_a, B + i·stride_b, C + i·stride_c.
// A stride of 0 for A or B uses the same matrix for every item; C items must not overlap.
template <class T>
void gemm_batched_strided(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, T alpha,
                          const T* A, index_t lda, index_t stride_a, const T* B, index_t ldb,
                          index_t stride_b, T beta, T* C, index_t ldc, index_t stride_c,
                          index_t batch) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "kiln::backend::cpu::gemm_batched_strided supports float and double");
  constexpr const char* fn = "gemm_batched_strided";
  gemm_detail::check_gemm_args(fn, trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (batch < 0)
    gemm_detail::throw_bad_argument(fn, "batch must be >= 0, got batch = " + std::to_string(batch));
  if (stride_a < 0)
    gemm_detail::throw_bad_argument(fn, "stride_a must be >= 0, got stride_a = " +
                                            std::to_string(stride_a));
  if (stride_b < 0)
    gemm_detail::throw_bad_argument(fn, "stride_b must be >= 0, got stride_b = " +
                                            std::to_string(stride_b));
  if (batch > 1 && M > 0 && N > 0) {
    const index_t min_stride_c = (M - 1) * ldc + N;
    if (stride_c < min_stride_c)
      gemm_detail::throw_bad_argument(
          fn, "stride_c must be >= (M-1)*ldc + N = " + std::to_string(min_stride_c) +
                  " so that the C items do not overlap, got stride_c = " +
                  std::to_string(stride_c));
  }
  if (batch == 0 || M == 0 || N == 0) return;
  const int threads = detail::in_worker ? 1 : num_threads();
  const double flops_per_item =
      2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  // Many small items: one item per thread at a time. Few large items: thread each product.
  const bool across_items = threads > 1 && batch >= 2 &&
                            (batch >= 2 * threads || flops_per_item < 2.0e7);
  if (!across_items) {
    for (index_t i = 0; i < batch; ++i)
      gemm_detail::gemm_run(trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda,
                            B + i * stride_b, ldb, beta, C + i * stride_c, ldc, threads);
    return;
  }
  parallel_for(0, batch, 1, [&](index_t b0, index_t b1) {
    for (index_t i = b0; i < b1; ++i)
      gemm_detail::gemm_run(trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda,
                            B + i * stride_b, ldb, beta, C + i * stride_c, ldc, 1);
  });
}

}  // namespace kiln::backend::cpu
