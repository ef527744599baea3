// kiln/backend/cpu/attention.hpp — fused scaled-dot-product attention, forward and backward, block
// by block with an online softmax (FlashAttention-2). Builds on gemm.hpp and softmax.hpp (row_ops).
#pragma once

// simd.hpp first: it includes <immintrin.h> with GCC 12's false -Wmaybe-uninitialized on the
// AVX-512 intrinsics silenced (GCC bug 105593), which gemm_x86.hpp's plain include does not.
#include <kiln/backend/cpu/simd.hpp>

#include <kiln/backend/cpu/gemm.hpp>
#include <kiln/backend/cpu/softmax.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

// Shapes: q [B, H, Tq, D], k and v [B, H, Tk, D], out [B, H, Tq, D], lse [B, H, Tq], all
// contiguous; T is float or double. The attention of query i is
//   out_i = sum_j softmax_j(s_i) v_j,   s_ij = scale * q_i . k_j,
// over the keys it sees: every key, or with `causal` the keys j <= i. The causal mask is
// aligned at the top left, as PyTorch's scaled_dot_product_attention(is_causal=True) (a mask of
// torch.ones(Tq, Tk).tril()). When Tq != Tk this differs from the bottom-right alignment
// (j <= i + Tk - Tq) that decoding with a KV cache wants. Every query sees key 0, so no row is
// ever fully masked.
//
// Never more than a block_q x block_k block of scores (two in the backward: P and dS) is held
// per thread. The forward threads over (B * H, query blocks); the backward over (B * H, slices
// of key blocks), each task owning the gk/gv rows of its key blocks. Results do not depend on
// the number of threads.

namespace kiln::backend::cpu {

namespace attention_detail {

inline constexpr index_t block_q = 64;  // query rows per block
inline constexpr index_t block_k = 64;  // key rows per block
// The backward splits the key blocks of a head into slices until there are about this many
// tasks (a shape rule, never a thread-count rule, so that results do not depend on threads).
inline constexpr index_t backward_min_tasks = 16;

// How many of the keys [k0, k0 + bk) query i sees.
inline index_t visible_keys(bool causal, index_t i, index_t k0, index_t bk) {
  return causal ? std::clamp<index_t>(i - k0 + 1, 0, bk) : bk;
}

inline void check_shapes(const char* op, index_t B, index_t H, index_t Tq, index_t Tk, index_t D) {
  const auto shape = [](index_t b, index_t h, index_t t, index_t d) {
    return "[" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(t) + ", " +
           std::to_string(d) + "]";
  };
  if (B < 0 || H < 0 || Tq < 0 || Tk < 0 || D < 0)
    throw_value_error(op, "expected non-negative sizes, got q " + shape(B, H, Tq, D) +
                              " and k, v " + shape(B, H, Tk, D));
  if (B * H * Tq > 0 && Tk == 0)
    throw_value_error(op, "every query needs at least one key, got q " + shape(B, H, Tq, D) +
                              " and k, v " + shape(B, H, Tk, D));
}

}  // namespace attention_detail

// The default scale of the scores, 1 / sqrt(head_dim) (Vaswani et al. 2017).
template <class T>
T attention_default_scale(index_t head_dim) {
  return static_cast<T>(1.0 / std::sqrt(static_cast<double>(head_dim)));
}

// Forward (FlashAttention-2, Dao 2023, Algorithm 1): for each block of queries, walk the key
// blocks keeping per row the running maximum m, the running sum l of exp(s - m) and the
// unnormalised output O; a new key block with scores S updates
//   m' = max(m, rowmax S),  P = exp(S - m'),  l' = e^(m - m') l + rowsum P,
//   O' = e^(m - m') O + P V,
// and at the end out = O / l, lse = m + log l (the row's log-sum-exp, kept for the backward;
// lse may be null).
template <class T>
void attention_forward(const T* q, const T* k, const T* v, index_t B, index_t H, index_t Tq,
                       index_t Tk, index_t D, std::type_identity_t<T> scale, bool causal, T* out,
                       std::type_identity_t<T>* lse) {
  using attention_detail::block_k;
  using attention_detail::block_q;
  row_ops::check_type<T>();
  attention_detail::check_shapes("attention_forward", B, H, Tq, Tk, D);
  const index_t BH = B * H;
  const index_t q_blocks = (Tq + block_q - 1) / block_q;
  if (BH * Tq == 0) return;
  if (D == 0) {  // empty vectors: the output is empty, the scores all 0
    if (lse)
      for (index_t bh = 0; bh < BH; ++bh)
        for (index_t i = 0; i < Tq; ++i)
          lse[bh * Tq + i] =
              static_cast<T>(std::log(static_cast<double>(causal ? std::min(i + 1, Tk) : Tk)));
    return;
  }
  // A task is one block of queries of one head: about 2·rows·Tk·D multiply-adds. Tasks are
  // grouped so that each piece handed to a thread holds at least 64 K of them (a single-token
  // step of generation stays on the calling thread).
  const index_t task_work = 2 * std::min(block_q, Tq) * std::max<index_t>(Tk, 1) * D;
  const index_t grain = std::max<index_t>(1, 65536 / task_work);
  parallel_for(0, BH * q_blocks, grain, [&](index_t t0, index_t t1) {
    std::vector<T> scores(static_cast<std::size_t>(block_q * block_k));
    T running_max[block_q], running_sum[block_q], rescale[block_q];
    for (index_t t = t0; t < t1; ++t) {
      const index_t bh = t / q_blocks;
      const index_t q0 = (t % q_blocks) * block_q;
      const index_t bq = std::min(block_q, Tq - q0);
      const T* Q = q + (bh * Tq + q0) * D;
      const T* K = k + bh * Tk * D;
      const T* V = v + bh * Tk * D;
      T* O = out + (bh * Tq + q0) * D;
      const index_t k_end = causal ? std::min(Tk, q0 + bq) : Tk;
      std::fill(running_max, running_max + bq, -std::numeric_limits<T>::infinity());
      std::fill(running_sum, running_sum + bq, T(0));
      for (index_t k0 = 0; k0 < k_end; k0 += block_k) {
        const index_t bk = std::min(block_k, k_end - k0);
        T* S = scores.data();
        gemm(false, true, bq, bk, D, scale, Q, D, K + k0 * D, D, T(0), S, block_k);
        bool any_rescale = false;
        for (index_t r = 0; r < bq; ++r) {
          T* Sr = S + r * block_k;
          const index_t valid = attention_detail::visible_keys(causal, q0 + r, k0, bk);
          std::fill(Sr + valid, Sr + bk, T(0));
          if (valid == 0) {
            rescale[r] = T(1);
            continue;
          }
          const T m_old = running_max[r];
          const T m_new = std::max(m_old, row_ops::max_of(Sr, valid));
          const T a = m_old == m_new ? T(1) : std::exp(m_old - m_new);
          const T sum = row_ops::exp_sum(Sr, valid, m_new, Sr);
          running_sum[r] = running_sum[r] * a + sum;
          running_max[r] = m_new;
          rescale[r] = a;
          any_rescale = any_rescale || a != T(1);
        }
        if (k0 == 0) {
          gemm(false, false, bq, D, bk, T(1), S, block_k, V, D, T(0), O, D);
        } else {
          if (any_rescale)
            for (index_t r = 0; r < bq; ++r)
              if (rescale[r] != T(1)) row_ops::scale(O + r * D, D, rescale[r], O + r * D);
          gemm(false, false, bq, D, bk, T(1), S, block_k, V + k0 * D, D, T(1), O, D);
        }
      }
      for (index_t r = 0; r < bq; ++r) {
        row_ops::scale(O + r * D, D, T(1) / running_sum[r], O + r * D);
        if (lse) lse[bh * Tq + q0 + r] = running_max[r] + std::log(running_sum[r]);
      }
    }
  });
}

// Backward (FlashAttention-2, Dao 2023, Algorithm 2), from q, k, v, the forward's out and lse,
// and gout = dL/d out. With P = softmax(S), S = scale * Q K^T, O = P V:
//   dV = P^T dO,   dP = dO V^T,
//   dS_ij = P_ij (dP_ij - sum_l P_il dP_il) = P_ij (dP_ij - Delta_i),  Delta_i = dO_i . O_i
// (the softmax backward, using sum_l P_il dP_il = dO_i . sum_l P_il v_l = dO_i . O_i),
//   dQ = scale * dS K,   dK = scale * dS^T Q.
// P is recomputed block by block as exp(S - lse). Each task owns a slice of the key blocks of
// one head and accumulates their dK and dV rows; its dQ contributions go straight to gq when the
// head has one slice, else to a per-slice buffer summed afterwards in slice order.
template <class T>
void attention_backward(const T* q, const T* k, const T* v, const T* out, const T* gout,
                        const std::type_identity_t<T>* lse, index_t B, index_t H, index_t Tq,
                        index_t Tk, index_t D, std::type_identity_t<T> scale, bool causal, T* gq,
                        T* gk, T* gv) {
  using attention_detail::block_k;
  using attention_detail::block_q;
  using Vec = simd::Vec<T>;
  row_ops::check_type<T>();
  attention_detail::check_shapes("attention_backward", B, H, Tq, Tk, D);
  const index_t BH = B * H;
  if (BH == 0 || D == 0) return;
  if (Tq == 0) {  // no queries: nothing reaches the keys
    std::fill(gk, gk + BH * Tk * D, T(0));
    std::fill(gv, gv + BH * Tk * D, T(0));
    return;
  }

  // Delta_i = dO_i . O_i, one row at a time.
  std::vector<T> delta(static_cast<std::size_t>(BH * Tq));
  parallel_for(0, BH * Tq, row_ops::rows_per_task(D), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r)
      delta[static_cast<std::size_t>(r)] = row_ops::dot(gout + r * D, out + r * D, D);
  });

  const index_t k_blocks = (Tk + block_k - 1) / block_k;
  const index_t slices = std::min(
      k_blocks, std::max<index_t>(1, (attention_detail::backward_min_tasks + BH - 1) / BH));
  std::vector<T> dq_slices(slices > 1 ? static_cast<std::size_t>(BH * slices * Tq * D) : 0);

  parallel_for(0, BH * slices, 1, [&](index_t t0, index_t t1) {
    std::vector<T> probs(static_cast<std::size_t>(block_q * block_k));
    std::vector<T> dprobs(static_cast<std::size_t>(block_q * block_k));
    for (index_t t = t0; t < t1; ++t) {
      const index_t bh = t / slices, slice = t % slices;
      const T* Qh = q + bh * Tq * D;
      const T* Kh = k + bh * Tk * D;
      const T* Vh = v + bh * Tk * D;
      const T* dOh = gout + bh * Tq * D;
      const T* lse_h = lse + bh * Tq;
      const T* delta_h = delta.data() + bh * Tq;
      T* dQ = slices > 1 ? dq_slices.data() + t * Tq * D : gq + bh * Tq * D;
      std::fill(dQ, dQ + Tq * D, T(0));
      const index_t kb_begin = slice * k_blocks / slices, kb_end = (slice + 1) * k_blocks / slices;
      for (index_t kb = kb_begin; kb < kb_end; ++kb) {
        const index_t k0 = kb * block_k;
        const index_t bk = std::min(block_k, Tk - k0);
        const T* Kb = Kh + k0 * D;
        const T* Vb = Vh + k0 * D;
        T* dK = gk + (bh * Tk + k0) * D;
        T* dV = gv + (bh * Tk + k0) * D;
        std::fill(dK, dK + bk * D, T(0));
        std::fill(dV, dV + bk * D, T(0));
        // With the causal mask, queries before k0 see none of these keys.
        for (index_t q0 = causal ? k0 / block_q * block_q : 0; q0 < Tq; q0 += block_q) {
          const index_t bq = std::min(block_q, Tq - q0);
          const T* Qb = Qh + q0 * D;
          const T* dOb = dOh + q0 * D;
          T* P = probs.data();
          T* dS = dprobs.data();
          gemm(false, true, bq, bk, D, scale, Qb, D, Kb, D, T(0), P, block_k);
          for (index_t r = 0; r < bq; ++r) {
            T* Pr = P + r * block_k;
            const index_t valid = attention_detail::visible_keys(causal, q0 + r, k0, bk);
            const Vec shift(lse_h[q0 + r]);
            row_ops::for_each_packet<T>(valid, [&](index_t i, int lanes) {
              row_ops::store(Pr + i, simd::exp(row_ops::load(Pr + i, lanes) - shift), lanes);
            });
            std::fill(Pr + valid, Pr + bk, T(0));
          }
          gemm(true, false, bk, D, bq, T(1), P, block_k, dOb, D, T(1), dV, D);
          gemm(false, true, bq, bk, D, T(1), dOb, D, Vb, D, T(0), dS, block_k);
          for (index_t r = 0; r < bq; ++r) {
            const T* Pr = P + r * block_k;
            T* dSr = dS + r * block_k;
            const Vec d(delta_h[q0 + r]);
            row_ops::for_each_packet<T>(bk, [&](index_t i, int lanes) {
              row_ops::store(dSr + i,
                             row_ops::load(Pr + i, lanes) * (row_ops::load(dSr + i, lanes) - d),
                             lanes);
            });
          }
          gemm(true, false, bk, D, bq, scale, dS, block_k, Qb, D, T(1), dK, D);
          gemm(false, false, bq, D, bk, scale, dS, block_k, Kb, D, T(1), dQ + q0 * D, D);
        }
      }
    }
  });

  if (slices > 1) {
    parallel_for(0, BH * Tq, row_ops::rows_per_task(D * slices), [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r) {
        const index_t bh = r / Tq, i = r % Tq;
        T* dst = gq + r * D;
        const T* first = dq_slices.data() + (bh * slices * Tq + i) * D;
        std::copy(first, first + D, dst);
        for (index_t s = 1; s < slices; ++s) {
          const T* src = first + s * Tq * D;
          row_ops::for_each_packet<T>(D, [&](index_t j, int lanes) {
            row_ops::store(dst + j, row_ops::load(dst + j, lanes) + row_ops::load(src + j, lanes),
                           lanes);
          });
        }
      }
    });
  }
}

}  // namespace kiln::backend::cpu
