// kiln/ops/attention.hpp — scaled_dot_product_attention(q, k, v, causal, scale) with gradients of
// any order: softmax(q·kᵀ·scale [+ causal mask])·v without ever holding the Tq×Tk scores.
// Builds on the fused FlashAttention-2 kernels of backend/cpu/attention.hpp (forward and
// first-order backward) and on ops/matmul.hpp + ops/softmax.hpp (gradients under create_graph).
#pragma once

#include <kiln/autograd/fused.hpp>
#include <kiln/autograd/graph.hpp>
#include <kiln/backend/cpu/attention.hpp>
#include <kiln/core/device.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/expr/ops.hpp>
#include <kiln/ops/matmul.hpp>
#include <kiln/ops/reduce.hpp>
#include <kiln/ops/softmax.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln {

namespace detail {

// The causal mask [Tq, Tk]: 1 where query i may see key j (j <= i, aligned at the top left as
// PyTorch's is_causal=True), 0 elsewhere.
template <class T, class D>
Tensor<T, D> causal_mask(index_t Tq, index_t Tk) {
  static_assert(std::is_same_v<D, cpu>, "kiln::scaled_dot_product_attention builds its causal mask on the host");
  auto mask = Tensor<T, D>::uninitialized(Shape{Tq, Tk});
  for (index_t i = 0; i < Tq; ++i)
    for (index_t j = 0; j < Tk; ++j) mask.data()[i * Tk + j] = j <= i ? T(1) : T(0);
  return mask;
}

// The attention probabilities P = softmax(q·kᵀ·scale, masked) [..., Tq, Tk] from tracked ops: the
// masked scores are −inf, whose probability is exactly 0 (and whose gradient is 0).
template <class T, class D>
Tensor<T, D> attention_probabilities_composed(const Tensor<T, D>& q, const Tensor<T, D>& k, bool causal, T scale) {
  Tensor<T, D> scores = matmul(q, k.transpose(-1, -2)) * scale;
  if (causal)
    scores = Tensor<T, D>(where(causal_mask<T, D>(q.size(-2), k.size(-2)), scores,
                                -std::numeric_limits<double>::infinity()));
  return softmax(scores, -1);
}

// Attention from tracked ops (materializes the scores: the reference for the fused kernel, and
// small sizes).
template <class T, class D>
Tensor<T, D> attention_composed(const Tensor<T, D>& q, const Tensor<T, D>& k, const Tensor<T, D>& v, bool causal,
                                T scale) {
  Shape out_shape = q.shape();
  out_shape.dims[out_shape.ndim - 1] = v.size(-1);
  if (q.numel() == 0 || v.numel() == 0 || out_shape.numel() == 0) return Tensor<T, D>(out_shape);
  return matmul(attention_probabilities_composed(q, k, causal, scale), v);
}

// The attention gradients from tracked ops (create_graph). With S = scale·Q Kᵀ (masked), P =
// softmax(S) row by row, O = P V and dO = ∂L/∂O (Dao 2023, FlashAttention-2, §2.2 and Alg. 2):
//   dV = Pᵀ dO,   dP = dO Vᵀ,
//   dS = P ⊙ (dP − rowsum(dP ⊙ P))   (the softmax Jacobian, ∂P_ij/∂S_il = P_ij (δ_jl − P_il)),
//   dQ = scale · dS K,   dK = scale · dSᵀ Q.
// Masked entries have P = 0, so they contribute nothing.
template <class T, class D, class Node>
std::vector<Tensor<T, D>> attention_backward_composed(const Tensor<T, D>& g, const Tensor<T, D>& q,
                                                      const Tensor<T, D>& k, const Tensor<T, D>& v, bool causal,
                                                      T scale, const Node& node) {
  std::vector<Tensor<T, D>> grads(3);
  const Tensor<T, D> P = attention_probabilities_composed(q, k, causal, scale);
  const int last = q.dim() - 1;
  if (node.needs(0) || node.needs(1)) {
    const Tensor<T, D> dP = matmul(g, v.transpose(-1, -2));
    const Tensor<T, D> dS = P * (dP - sum(Tensor<T, D>(dP * P), last, true));
    if (node.needs(0)) grads[0] = Tensor<T, D>(matmul(dS, k) * scale);
    if (node.needs(1)) grads[1] = Tensor<T, D>(matmul(dS.transpose(-1, -2), q) * scale);
  }
  if (node.needs(2)) grads[2] = matmul(P.transpose(-1, -2), g);
  return grads;
}

}  // namespace detail

// Scaled dot-product attention (Vaswani et al. 2017, eq. 1):
//   out = softmax(q·kᵀ·scale + mask)·v,
// q [..., Tq, D], k and v [..., Tk, D] with the same leading dims (usually [B, H, T, D]; [B, T, D]
// is one head). scale defaults (nullopt) to 1/sqrt(D). With causal, query i sees the keys j <= i
// (the mask aligned at the top left, as PyTorch's is_causal=True; for Tq != Tk this is not the
// bottom-right alignment of decoding with a KV cache). The output is [..., Tq, D].
//
// The forward and the plain backward run the fused kernels, holding one block of scores at a time
// (memory O(T·D), not O(T²)); the backward recomputes the probabilities from the saved log-sum-exp
// of each row (derivation above attention_backward_composed and in backend/cpu/attention.hpp).
// Under create_graph the gradients are recomputed from matmul and softmax, materializing the
// Tq×Tk scores: second derivatives are meant for small sizes (gradient penalties, tests).
template <class T, class D>
Tensor<T, D> scaled_dot_product_attention(const Tensor<T, D>& q, const Tensor<T, D>& k, const Tensor<T, D>& v,
                                          bool causal = false, std::optional<double> scale = std::nullopt) {
  static_assert(is_floating_element<T>, "kiln::scaled_dot_product_attention works on float and double tensors");
  static_assert(std::is_same_v<D, cpu>,
                "kiln::scaled_dot_product_attention runs on kiln::cpu: another device needs fused attention "
                "kernels in its Backend (attention_forward, attention_backward)");
  const char* op = "scaled_dot_product_attention";
  if (!q.defined() || !k.defined() || !v.defined()) throw_value_error(op, "q, k and v must be defined tensors");
  auto shapes = [&] { return "q " + to_string(q.shape()) + ", k " + to_string(k.shape()) + ", v " + to_string(v.shape()); };
  if (q.dim() < 2 || k.dim() != q.dim() || v.dim() != q.dim())
    throw ShapeError(std::string("kiln::") + op +
                     ": q, k and v must have the same number of dims, at least 2 ([..., T, D]): " + shapes());
  index_t BH = 1;
  for (int i = 0; i + 2 < q.dim(); ++i) {
    if (k.shape().dims[i] != q.shape().dims[i] || v.shape().dims[i] != q.shape().dims[i])
      throw ShapeError(std::string("kiln::") + op + ": q, k and v must have the same leading (batch, head) dims: " +
                       shapes());
    BH *= q.shape().dims[i];
  }
  const index_t Tq = q.size(-2), Tk = k.size(-2), Dh = q.size(-1);
  if (v.size(-2) != Tk)
    throw ShapeError(std::string("kiln::") + op + ": k and v must have the same number of keys: " + shapes());
  if (k.size(-1) != Dh || v.size(-1) != Dh)
    throw ShapeError(std::string("kiln::") + op + ": q, k and v must have the same head dim D: " + shapes());
  if (BH * Tq > 0 && Tk == 0)
    throw_value_error(op, "every query needs at least one key, got " + shapes());
  const double scale_value = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(Dh));
  if (!std::isfinite(scale_value) && Dh > 0)
    throw_value_error(op, "the scale must be finite, got " + std::to_string(scale_value));
  const T s = static_cast<T>(scale_value);

  const Tensor<T, D> qc = q.detach().contiguous(), kc = k.detach().contiguous(), vc = v.detach().contiguous();
  auto out = Tensor<T, D>::uninitialized(q.shape());
  auto lse = Tensor<T, D>::uninitialized(Shape{BH * Tq});
  backend::cpu::attention_forward(qc.data(), kc.data(), vc.data(), BH, 1, Tq, Tk, Dh, s, causal, out.data(),
                                  lse.data());
  detail::record("scaled_dot_product_attention", out, {q, k, v},
                 [q, k, v, qc, kc, vc, out_value = out.detach(), lse, BH, Tq, Tk, Dh, s, causal](
                     const Tensor<T, D>& g, const auto& node) {
                   if (q.numel() == 0 || k.numel() == 0) {
                     // Nothing to attend: empty gradients, or zeros for keys no query reads.
                     std::vector<Tensor<T, D>> zeros(3);
                     if (node.needs(0)) zeros[0] = Tensor<T, D>(q.shape());
                     if (node.needs(1)) zeros[1] = Tensor<T, D>(k.shape());
                     if (node.needs(2)) zeros[2] = Tensor<T, D>(v.shape());
                     return zeros;
                   }
                   if (detail::grad_mode_enabled())
                     return detail::attention_backward_composed(g, q, k, v, causal, s, node);
                   auto gq = Tensor<T, D>::uninitialized(q.shape());
                   auto gk = Tensor<T, D>::uninitialized(k.shape());
                   auto gv = Tensor<T, D>::uninitialized(v.shape());
                   const Tensor<T, D> gc = g.detach().contiguous();
                   backend::cpu::attention_backward(qc.data(), kc.data(), vc.data(), out_value.data(), gc.data(),
                                                    lse.data(), BH, 1, Tq, Tk, Dh, s, causal, gq.data(), gk.data(),
                                                    gv.data());
                   std::vector<Tensor<T, D>> grads(3);
                   if (node.needs(0)) grads[0] = gq;
                   if (node.needs(1)) grads[1] = gk;
                   if (node.needs(2)) grads[2] = gv;
                   return grads;
                 });
  return out;
}

}  // namespace kiln
