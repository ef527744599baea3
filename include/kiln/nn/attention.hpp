// kiln/nn/attention.hpp — nn::MultiheadSelfAttention (nn::BasicMultiheadSelfAttention<T, Device>):
// multi-head self-attention with one fused q/k/v projection and an output projection, optionally causal.
// Builds on nn/linear.hpp and kiln::scaled_dot_product_attention (ops/attention.hpp).
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/attention.hpp>

#include <memory>
#include <string>

namespace kiln::nn {

// Self-attention over x [B, T, embed_dim] with num_heads heads of embed_dim / num_heads each, laid
// out as nanoGPT's CausalSelfAttention (so its state dicts load by name):
//   qkv = c_attn(x)            Linear(embed_dim, 3·embed_dim): q, k, v in that order along the last dim
//   q, k, v -> [B, heads, T, head_dim]   (feature f of q belongs to head f / head_dim)
//   y = scaled_dot_product_attention(q, k, v, causal)   (scale 1/sqrt(head_dim))
//   out = c_proj(y as [B, T, embed_dim])   Linear(embed_dim, embed_dim)
// Children "c_attn" and "c_proj" (both with or both without bias), initialised as torch.nn.Linear
// from `rng` in that order. No dropout.
template <class T, class Device = cpu>
class BasicMultiheadSelfAttention : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  BasicMultiheadSelfAttention(index_t embed_dim, index_t num_heads, bool causal, bool bias, Rng& rng)
      : embed_dim_(embed_dim), num_heads_(num_heads), causal_(causal) {
    if (embed_dim < 1 || num_heads < 1 || embed_dim % num_heads != 0)
      throw_value_error("nn::MultiheadSelfAttention", "embed_dim = " + std::to_string(embed_dim) +
                                                          " must be a positive multiple of num_heads = " +
                                                          std::to_string(num_heads));
    c_attn_ = this->register_module("c_attn", std::make_shared<BasicLinear<T, Device>>(embed_dim, 3 * embed_dim, bias, rng));
    c_proj_ = this->register_module("c_proj", std::make_shared<BasicLinear<T, Device>>(embed_dim, embed_dim, bias, rng));
  }
  BasicMultiheadSelfAttention(index_t embed_dim, index_t num_heads, bool causal, Rng& rng)
      : BasicMultiheadSelfAttention(embed_dim, num_heads, causal, true, rng) {}

  // x [B, T, embed_dim] -> [B, T, embed_dim].
  tensor_type forward(const tensor_type& x) const {
    if (!x.defined()) throw_value_error("nn::MultiheadSelfAttention", "the input is an undefined tensor");
    if (x.dim() != 3 || x.size(2) != embed_dim_)
      throw_shape_error("nn::MultiheadSelfAttention",
                        "expected an input [B, T, " + std::to_string(embed_dim_) + "] (embed_dim = " +
                            std::to_string(embed_dim_) + ")",
                        x.shape());
    const index_t B = x.size(0), T_len = x.size(1), E = embed_dim_, H = num_heads_, hd = E / H;
    const tensor_type qkv = c_attn_->forward(x);  // [B, T, 3E]
    auto heads = [&](index_t part) {              // [B, H, T, hd] view of q, k or v
      return qkv.slice(2, part * E, (part + 1) * E).view(Shape{B, T_len, H, hd}).transpose(1, 2);
    };
    const tensor_type y = scaled_dot_product_attention(heads(0), heads(1), heads(2), causal_);
    return c_proj_->forward(y.transpose(1, 2).reshape(Shape{B, T_len, E}));
  }
  tensor_type operator()(const tensor_type& x) const { return forward(x); }

  BasicLinear<T, Device>& c_attn() const { return *c_attn_; }
  BasicLinear<T, Device>& c_proj() const { return *c_proj_; }
  index_t embed_dim() const { return embed_dim_; }
  index_t num_heads() const { return num_heads_; }
  bool causal() const { return causal_; }

 private:
  index_t embed_dim_, num_heads_;
  bool causal_;
  std::shared_ptr<BasicLinear<T, Device>> c_attn_;
  std::shared_ptr<BasicLinear<T, Device>> c_proj_;
};

using MultiheadSelfAttention = BasicMultiheadSelfAttention<float, cpu>;

}  // namespace kiln::nn
