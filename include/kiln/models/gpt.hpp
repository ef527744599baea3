// kiln/models/gpt.hpp — the decoder-only transformer family from one GPTConfig (GPT-2, LLaMA-style with
// RoPE/RMSNorm/SwiGLU/GQA, ALiBi, parallel blocks, BERT-style bidirectional encoders): logits and the
// next-token loss, KV-cache generation (greedy, temperature, top-k, top-p, repetition penalty, stop
// tokens, batches), Hugging Face GPT-2 and LLaMA safetensors files, and LoRA adapters.
// Builds on nn/module.hpp and nn/norm.hpp (parameters with PyTorch/HF GPT-2 names), ops/linear.hpp,
// ops/attention.hpp, ops/softmax.hpp, ops/index.hpp, ops/loss.hpp, and io/safetensors.hpp + io/json.hpp.
#pragma once

#include <kiln/autograd/fused.hpp>
#include <kiln/autograd/graph.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/expr/ops.hpp>
#include <kiln/io/json.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/nn/dropout.hpp>
#include <kiln/nn/init.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/nn/norm.hpp>
#include <kiln/ops/attention.hpp>
#include <kiln/ops/dropout.hpp>
#include <kiln/ops/index.hpp>
#include <kiln/ops/linear.hpp>
#include <kiln/ops/loss.hpp>
#include <kiln/ops/matmul.hpp>
#include <kiln/ops/softmax.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace kiln::models {

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

enum class NormKind { layernorm, rmsnorm };
// gelu: c_proj(gelu_tanh(c_fc(x))) (GPT-2's "gelu_new"); swiglu: c_proj(silu(gate) ⊙ up) with
// c_fc producing [gate | up] (LLaMA's gate_proj and up_proj stacked).
enum class MLPKind { gelu, swiglu };
// learned: a position embedding table wpe (GPT-2); rotary: RoPE on q and k, rotate-half convention
// as Hugging Face LLaMA; alibi: per-head linear biases −m_h·|i − j| on the scores (Press et al.
// 2022); none: no position information (causal masking alone).
enum class PositionKind { learned, rotary, alibi, none };

struct GPTConfig {
  index_t n_layer = 12;
  index_t n_head = 12;
  index_t n_kv_head = 0;  // key/value heads: 0 means n_head; fewer gives grouped-query (1: multi-query)
  index_t n_embd = 768;
  index_t block_size = 1024;  // the longest sequence (positions 0 .. block_size − 1)
  index_t vocab_size = 50257;
  double dropout = 0.0;  // embeddings, attention probabilities, residual branches (training only)
  bool bias = true;      // biases in every projection and in LayerNorm
  bool tie_embeddings = true;  // the output head reuses wte.weight (no lm_head)
  NormKind norm = NormKind::layernorm;
  double norm_eps = 1e-5;
  MLPKind mlp = MLPKind::gelu;
  index_t intermediate_size = 0;  // MLP width: 0 means 4·n_embd (gelu) or LLaMA's rule (swiglu)
  PositionKind position = PositionKind::learned;
  double rope_theta = 10000.0;
  bool parallel_block = false;  // x + attn(ln_1(x)) + mlp(ln_1(x)) (GPT-J, PaLM); no ln_2
  bool causal = true;           // false: every position sees every other (BERT-style encoder)
  double init_std = 0.02;       // GPT-2's initializer_range

  index_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  index_t head_dim() const { return n_head > 0 ? n_embd / n_head : 0; }
  // The MLP's hidden width: intermediate_size when set; else 4·n_embd for gelu, and for swiglu
  // LLaMA's rule (Meta's llama/model.py): 2/3 of 4·n_embd rounded up to a multiple of 256.
  index_t mlp_hidden() const {
    if (intermediate_size > 0) return intermediate_size;
    if (mlp == MLPKind::gelu) return 4 * n_embd;
    const index_t h = 2 * (4 * n_embd) / 3;
    return (h + 255) / 256 * 256;
  }
  // GPT-2's architecture (learned positions, LayerNorm, gelu MLP, one k/v head per head, sequential
  // blocks): what the Hugging Face GPT-2 layout can hold.
  bool gpt2_layout() const {
    return position == PositionKind::learned && norm == NormKind::layernorm && mlp == MLPKind::gelu &&
           kv_heads() == n_head && !parallel_block;
  }

  // Throws ValueError naming the first field that does not fit.
  void validate() const {
    const char* op = "models::GPTConfig";
    auto fail = [&](const std::string& what) { throw_value_error(op, what); };
    if (n_layer < 1) fail("n_layer must be at least 1, got " + std::to_string(n_layer));
    if (n_head < 1) fail("n_head must be at least 1, got " + std::to_string(n_head));
    if (n_embd < 1 || n_embd % n_head != 0)
      fail("n_embd = " + std::to_string(n_embd) + " must be a positive multiple of n_head = " + std::to_string(n_head));
    if (n_kv_head < 0 || n_head % kv_heads() != 0)
      fail("n_head = " + std::to_string(n_head) + " must be a multiple of n_kv_head = " + std::to_string(n_kv_head));
    if (block_size < 1) fail("block_size must be at least 1, got " + std::to_string(block_size));
    if (vocab_size < 1) fail("vocab_size must be at least 1, got " + std::to_string(vocab_size));
    if (!(dropout >= 0.0 && dropout < 1.0)) fail("dropout must lie in [0, 1), got " + std::to_string(dropout));
    if (!(norm_eps > 0.0)) fail("norm_eps must be positive, got " + std::to_string(norm_eps));
    if (intermediate_size < 0) fail("intermediate_size must be >= 0, got " + std::to_string(intermediate_size));
    if (position == PositionKind::rotary && head_dim() % 2 != 0)
      fail("rotary positions need an even head dim, got n_embd / n_head = " + std::to_string(head_dim()));
    if (position == PositionKind::rotary && !(rope_theta > 0.0))
      fail("rope_theta must be positive, got " + std::to_string(rope_theta));
    if (!(init_std >= 0.0)) fail("init_std must be >= 0, got " + std::to_string(init_std));
  }

  // The number of parameters the model holds (tied embeddings counted once), without building it.
  index_t num_parameters() const {
    const index_t C = n_embd, hd = head_dim(), I = mlp_hidden(), b = bias ? 1 : 0;
    const index_t qkv = (n_head + 2 * kv_heads()) * hd;
    const index_t norm_size = norm == NormKind::layernorm ? C * (1 + b) : C;
    const index_t fc_out = mlp == MLPKind::swiglu ? 2 * I : I;
    index_t per_layer = norm_size * (parallel_block ? 1 : 2);
    per_layer += C * qkv + b * qkv + C * C + b * C;
    per_layer += C * fc_out + b * fc_out + I * C + b * C;
    index_t n = vocab_size * C + n_layer * per_layer + norm_size;
    if (position == PositionKind::learned) n += block_size * C;
    if (!tie_embeddings) n += vocab_size * C;
    return n;
  }

  // GPT-2's shapes (Radford et al. 2019; Hugging Face gpt2, gpt2-medium, gpt2-large, gpt2-xl):
  // "124M" (12 layers, 12 heads, 768), "355M" (24, 16, 1024), "774M" (36, 20, 1280) and "1.5B"
  // (48, 25, 1600); vocabulary 50257, 1024 positions, biases, tied embeddings. The Hugging Face
  // names are accepted too. Throws ValueError for another size.
  static GPTConfig gpt2(std::string_view size = "124M") {
    GPTConfig c;
    if (size == "124M" || size == "gpt2") {
      c.n_layer = 12, c.n_head = 12, c.n_embd = 768;
    } else if (size == "355M" || size == "gpt2-medium") {
      c.n_layer = 24, c.n_head = 16, c.n_embd = 1024;
    } else if (size == "774M" || size == "gpt2-large") {
      c.n_layer = 36, c.n_head = 20, c.n_embd = 1280;
    } else if (size == "1.5B" || size == "gpt2-xl") {
      c.n_layer = 48, c.n_head = 25, c.n_embd = 1600;
    } else {
      throw_value_error("models::GPTConfig::gpt2", "unknown size '" + std::string(size) +
                                                       "' (sizes: 124M, 355M, 774M, 1.5B, or gpt2, gpt2-medium, "
                                                       "gpt2-large, gpt2-xl)");
    }
    return c;
  }

  // A small LLaMA-style model (about 45M parameters with its 32000-token vocabulary): 8 layers,
  // 8 query heads sharing 2 key/value heads, width 512, SwiGLU of width 1536, RMSNorm (eps 1e-5),
  // RoPE (theta 10000), no biases, untied output head, 1024 positions.
  static GPTConfig llama_small() {
    GPTConfig c;
    c.n_layer = 8, c.n_head = 8, c.n_kv_head = 2, c.n_embd = 512, c.block_size = 1024, c.vocab_size = 32000;
    c.bias = false, c.tie_embeddings = false, c.norm = NormKind::rmsnorm, c.norm_eps = 1e-5;
    c.mlp = MLPKind::swiglu, c.position = PositionKind::rotary, c.rope_theta = 10000.0;
    return c;
  }
};

// Options of GPT::generate.
struct GenerateOptions {
  index_t max_new_tokens = 32;
  double temperature = 1.0;        // 0: greedy (argmax); else logits / temperature before sampling
  index_t top_k = 0;               // keep the k most likely tokens (0: all)
  double top_p = 1.0;              // keep the smallest set of most likely tokens holding p of the mass (1: all)
  double repetition_penalty = 1.0; // > 1 discourages tokens already in the sequence (CTRL's rule, as HF)
  std::vector<index_t> stop_tokens;  // a sequence ends after producing one of these
  std::uint64_t seed = 0;          // the sampling generator's seed: the same seed gives the same tokens
  bool use_cache = true;           // false recomputes the whole context at every step (for checking)
};

// Options of GPT::add_lora (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").
struct LoRAOptions {
  index_t rank = 8;
  double alpha = 16.0;  // the adapter's output is scaled by alpha / rank
  // Projections of every block to adapt: "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj".
  std::vector<std::string> targets = {"attn.c_attn", "attn.c_proj"};
};

// What a Hugging Face loader may be told beyond the file (each overrides config.json).
struct PretrainedOptions {
  std::optional<index_t> n_head;
  std::optional<double> norm_eps;
  std::optional<double> rope_theta;      // LLaMA
  std::optional<index_t> block_size;     // LLaMA (GPT-2 takes it from wpe)
  std::optional<bool> causal;            // GPT-2 layout only: false loads a bidirectional encoder
  // The config.json to read; empty: "config.json" next to the safetensors file, when present.
  std::string config_path;
};

// ---------------------------------------------------------------------------------------------
// Sampling rules (on one row of logits, in double)
// ---------------------------------------------------------------------------------------------

// CTRL's repetition penalty (Keskar et al. 2019, eq. 1, as Hugging Face's
// RepetitionPenaltyLogitsProcessor): each distinct token of `previous` has its logit divided by
// `penalty` when positive and multiplied by it otherwise.
inline void apply_repetition_penalty(std::span<double> logits, std::span<const index_t> previous, double penalty) {
  if (penalty == 1.0) return;
  if (!(penalty > 0.0))
    throw_value_error("models::apply_repetition_penalty", "the penalty must be positive, got " + std::to_string(penalty));
  std::vector<char> seen(logits.size(), 0);
  for (const index_t t : previous) {
    if (t < 0 || static_cast<std::size_t>(t) >= logits.size() || seen[static_cast<std::size_t>(t)]) continue;
    seen[static_cast<std::size_t>(t)] = 1;
    double& l = logits[static_cast<std::size_t>(t)];
    l = l > 0 ? l / penalty : l * penalty;
  }
}

// Top-k filtering (Fan et al. 2018; Hugging Face's TopKLogitsWarper): logits below the k-th
// largest become −inf (ties with it are kept). k <= 0 or k >= the vocabulary changes nothing.
inline void apply_top_k(std::span<double> logits, index_t k) {
  if (k <= 0 || static_cast<std::size_t>(k) >= logits.size()) return;
  std::vector<double> sorted(logits.begin(), logits.end());
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<double>());
  const double threshold = sorted[static_cast<std::size_t>(k - 1)];
  for (double& l : logits)
    if (l < threshold) l = -std::numeric_limits<double>::infinity();
}

// softmax of a row in double (−inf gives 0).
inline std::vector<double> softmax_row(std::span<const double> logits) {
  double m = -std::numeric_limits<double>::infinity();
  for (const double l : logits) m = std::max(m, l);
  std::vector<double> p(logits.size(), 0.0);
  if (m == -std::numeric_limits<double>::infinity()) return p;
  double z = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) z += (p[i] = std::exp(logits[i] - m));
  for (double& v : p) v /= z;
  return p;
}

// Nucleus (top-p) filtering (Holtzman et al. 2020; Hugging Face's TopPLogitsWarper): with the
// tokens ordered by decreasing probability, a token is kept when the probability of the tokens
// before it is below p, so the kept set is the smallest whose mass reaches p (the most likely
// token always stays); the others become −inf. p >= 1 changes nothing.
inline void apply_top_p(std::span<double> logits, double p) {
  if (!(p > 0.0)) throw_value_error("models::apply_top_p", "top_p must lie in (0, 1], got " + std::to_string(p));
  if (p >= 1.0) return;
  const std::vector<double> probs = softmax_row(logits);
  std::vector<std::size_t> order(logits.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return probs[a] > probs[b]; });
  double before = 0;
  for (std::size_t r = 0; r < order.size(); ++r) {
    if (r > 0 && before >= p) logits[order[r]] = -std::numeric_limits<double>::infinity();
    before += probs[order[r]];
  }
}

// The token drawn from softmax(logits) with the uniform number u in [0, 1): the first index whose
// cumulative probability exceeds u (inverse transform sampling).
inline index_t sample_from_logits(std::span<const double> logits, double u) {
  const std::vector<double> probs = softmax_row(logits);
  double cumulative = 0;
  index_t last_possible = -1;
  for (std::size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] <= 0) continue;
    last_possible = static_cast<index_t>(i);
    cumulative += probs[i];
    if (u < cumulative) return last_possible;
  }
  if (last_possible < 0) throw_value_error("models::sample_from_logits", "every logit is -inf or NaN");
  return last_possible;  // u beyond the rounded total
}

// The first index of the largest logit.
inline index_t argmax_row(std::span<const double> logits) {
  index_t best = 0;
  for (std::size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[static_cast<std::size_t>(best)]) best = static_cast<index_t>(i);
  return best;
}

// One next token from a row of logits under `options` (Hugging Face's order: repetition penalty,
// then temperature, top-k, top-p, then a draw with `u`); temperature 0 takes the argmax after
// the repetition penalty.
inline index_t choose_next_token(std::vector<double> logits, std::span<const index_t> previous,
                                 const GenerateOptions& options, double u) {
  apply_repetition_penalty(logits, previous, options.repetition_penalty);
  if (options.temperature == 0.0) return argmax_row(logits);
  for (double& l : logits) l /= options.temperature;
  apply_top_k(logits, options.top_k);
  apply_top_p(logits, options.top_p);
  return sample_from_logits(logits, u);
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

// A linear layer y = x·Wᵀ + b (PyTorch's orientation: "weight" [out, in], "bias" [out]) with an
// optional LoRA adapter: y += (alpha / r)·(x·Aᵀ)·Bᵀ with "lora_A" [r, in] and "lora_B" [out, r].
// Weights start at zero: GPT draws them.
template <class T, class Device = cpu>
class LoRALinear : public nn::BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  LoRALinear(index_t in_features, index_t out_features, bool bias) : in_(in_features), out_(out_features) {
    weight_ = &this->register_parameter("weight", zeros<T, Device>(Shape{out_features, in_features}));
    if (bias) bias_ = &this->register_parameter("bias", zeros<T, Device>(Shape{out_features}));
  }

  tensor_type forward(const tensor_type& x) const {
    tensor_type y = kiln::linear(x, *weight_, bias());
    if (lora_active()) y = tensor_type(y + kiln::linear(kiln::linear(x, *lora_A_), *lora_B_) * scaling_);
    return y;
  }
  tensor_type operator()(const tensor_type& x) const { return forward(x); }

  // Adds the adapter: A drawn as torch.nn.Linear's weight (U(−1/√in, 1/√in), PEFT's
  // kaiming_uniform(a = √5)), B zero, so the layer's output is unchanged until B is trained.
  void add_lora(index_t rank, double alpha, Rng& rng) {
    if (lora_A_) throw_value_error("models::LoRALinear::add_lora", "this layer already has a LoRA adapter");
    if (rank < 1) throw_value_error("models::LoRALinear::add_lora", "the rank must be at least 1, got " + std::to_string(rank));
    lora_A_ = &this->register_parameter("lora_A", empty<T, Device>(Shape{rank, in_}));
    const double bound = in_ > 0 ? 1.0 / std::sqrt(static_cast<double>(in_)) : 0.0;
    nn::init::uniform_(*lora_A_, rng, -bound, bound);
    lora_B_ = &this->register_parameter("lora_B", zeros<T, Device>(Shape{out_, rank}));
    scaling_ = static_cast<T>(alpha / static_cast<double>(rank));
  }

  // Folds the adapter into the weight, W ← W + (alpha / r)·B·A, zeroes B and turns the adapter off
  // (its parameters stay registered). Returns false when there was no active adapter.
  bool merge_lora() {
    if (!lora_active()) return false;
    NoGrad guard;
    tensor_type w = weight_->detach();
    w.assign(w + kiln::matmul(lora_B_->detach(), lora_A_->detach()) * scaling_);
    lora_B_->detach().fill_(T(0));
    merged_ = true;
    return true;
  }

  tensor_type weight() const { return *weight_; }
  tensor_type bias() const { return bias_ ? *bias_ : tensor_type(); }
  tensor_type lora_A() const { return lora_A_ ? *lora_A_ : tensor_type(); }
  tensor_type lora_B() const { return lora_B_ ? *lora_B_ : tensor_type(); }
  bool lora_active() const { return lora_A_ && !merged_; }
  bool has_lora() const { return lora_A_ != nullptr; }
  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }

 private:
  index_t in_, out_;
  tensor_type* weight_ = nullptr;
  tensor_type* bias_ = nullptr;
  tensor_type* lora_A_ = nullptr;
  tensor_type* lora_B_ = nullptr;
  T scaling_ = T(1);
  bool merged_ = false;
};

// An embedding table with the parameter "weight" [num, dim] (filled by GPT).
template <class T, class Device = cpu>
class GPTEmbedding : public nn::BasicModule<T, Device> {
 public:
  GPTEmbedding(index_t num, index_t dim) { weight_ = &this->register_parameter("weight", zeros<T, Device>(Shape{num, dim})); }
  Tensor<T, Device> forward(const Tensor<index_t, Device>& ids) const { return kiln::embedding(*weight_, ids); }
  Tensor<T, Device> weight() const { return *weight_; }

 private:
  Tensor<T, Device>* weight_ = nullptr;
};

namespace detail {

// A LayerNorm or RMSNorm child registered under `name`.
template <class T, class Device>
struct NormSlot {
  std::shared_ptr<nn::BasicLayerNorm<T, Device>> layer;
  std::shared_ptr<nn::BasicRMSNorm<T, Device>> rms;

  void create(nn::BasicModule<T, Device>& owner, const std::string& name, const GPTConfig& c) {
    if (c.norm == NormKind::layernorm)
      layer = owner.register_module(name, std::make_shared<nn::BasicLayerNorm<T, Device>>(c.n_embd, c.norm_eps, true, c.bias));
    else
      rms = owner.register_module(name, std::make_shared<nn::BasicRMSNorm<T, Device>>(c.n_embd, c.norm_eps, true));
  }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return layer ? layer->forward(x) : rms->forward(x); }
};

}  // namespace detail

// The attention projections of a block: "c_attn" (x -> [q | k | v], n_head + 2·n_kv_head heads of
// head_dim) and "c_proj".
template <class T, class Device = cpu>
class GPTAttention : public nn::BasicModule<T, Device> {
 public:
  explicit GPTAttention(const GPTConfig& c) {
    const index_t qkv = (c.n_head + 2 * c.kv_heads()) * c.head_dim();
    c_attn = this->register_module("c_attn", std::make_shared<LoRALinear<T, Device>>(c.n_embd, qkv, c.bias));
    c_proj = this->register_module("c_proj", std::make_shared<LoRALinear<T, Device>>(c.n_embd, c.n_embd, c.bias));
  }
  std::shared_ptr<LoRALinear<T, Device>> c_attn, c_proj;
};

// The MLP projections of a block: "c_fc" (x -> hidden, or [gate | up] for SwiGLU) and "c_proj".
template <class T, class Device = cpu>
class GPTMLP : public nn::BasicModule<T, Device> {
 public:
  explicit GPTMLP(const GPTConfig& c) {
    const index_t I = c.mlp_hidden();
    c_fc = this->register_module("c_fc", std::make_shared<LoRALinear<T, Device>>(
                                             c.n_embd, c.mlp == MLPKind::swiglu ? 2 * I : I, c.bias));
    c_proj = this->register_module("c_proj", std::make_shared<LoRALinear<T, Device>>(I, c.n_embd, c.bias));
  }
  std::shared_ptr<LoRALinear<T, Device>> c_fc, c_proj;
};

// One transformer block: "ln_1", "attn", "ln_2" (not in parallel blocks), "mlp".
template <class T, class Device = cpu>
class GPTBlock : public nn::BasicModule<T, Device> {
 public:
  explicit GPTBlock(const GPTConfig& c) {
    ln_1.create(*this, "ln_1", c);
    attn = this->register_module("attn", std::make_shared<GPTAttention<T, Device>>(c));
    if (!c.parallel_block) ln_2.create(*this, "ln_2", c);
    mlp = this->register_module("mlp", std::make_shared<GPTMLP<T, Device>>(c));
  }
  detail::NormSlot<T, Device> ln_1, ln_2;
  std::shared_ptr<GPTAttention<T, Device>> attn;
  std::shared_ptr<GPTMLP<T, Device>> mlp;
};

// The blocks, children "0", "1", ... (the "h" of GPT-2).
template <class T, class Device = cpu>
class GPTBlockList : public nn::BasicModule<T, Device> {
 public:
  explicit GPTBlockList(const GPTConfig& c) {
    for (index_t i = 0; i < c.n_layer; ++i)
      blocks.push_back(this->register_module(std::to_string(i), std::make_shared<GPTBlock<T, Device>>(c)));
  }
  std::vector<std::shared_ptr<GPTBlock<T, Device>>> blocks;
};

// Keys and values of the positions seen so far, per layer [B, n_kv_head, capacity, head_dim]
// (after RoPE, before the heads are repeated for grouped-query attention).
template <class T, class Device = cpu>
struct KVCache {
  std::vector<Tensor<T, Device>> keys, values;
  index_t batch = 0;
  index_t length = 0;  // positions filled
  index_t capacity() const { return keys.empty() ? 0 : keys[0].size(2); }
  void clear() { length = 0; }
};

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

// A decoder-only transformer (GPT-2 by default) with pre-norm blocks:
//   x = wte(tokens) [+ wpe(positions)]; dropout
//   each block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))     (parallel: x + attn(h) + mlp(h), h = ln_1(x))
//   logits = ln_f(x)·Wᵀ with W = wte.weight (tied) or lm_head.weight
// Parameter names follow Hugging Face GPT-2 (GPT2Model + lm_head): wte, wpe, h.{i}.ln_1,
// h.{i}.attn.c_attn, h.{i}.attn.c_proj, h.{i}.ln_2, h.{i}.mlp.c_fc, h.{i}.mlp.c_proj, ln_f,
// lm_head (untied only); weights in PyTorch's Linear orientation [out, in] (HF's Conv1D files
// store them transposed: load_gpt2_safetensors / save_gpt2_safetensors transpose).
// Attention: q, k, v split from c_attn; RoPE on q and k (rotary); the k/v heads repeated for
// grouped-query attention; kiln::scaled_dot_product_attention (fused) where it applies, else
// softmax(q·kᵀ/√d + bias)·v composed from matmul and softmax, the bias holding ALiBi's terms and a
// −inf causal mask aligned at the bottom right (query i of a chunk after `past` cached positions
// sees keys 0 .. past + i) — the fused op aligns its causal mask at the top left, which agrees only
// when there is no cache or a single query.
// Initialised as GPT-2: weights N(0, init_std), the c_proj weights N(0, init_std / √(2·n_layer)),
// biases 0, norms 1 (and 0).
template <class T = float, class Device = cpu>
class GPT : public nn::BasicModule<T, Device> {
  static_assert(std::is_same_v<Device, cpu>,
                "kiln::models::GPT runs on kiln::cpu (its attention, cache and sampling read host memory)");

 public:
  using tensor_type = Tensor<T, Device>;
  using tokens_type = Tensor<index_t, Device>;
  using cache_type = KVCache<T, Device>;

  GPT(const GPTConfig& config, Rng& rng) : config_(config) {
    config_.validate();
    const GPTConfig& c = config_;
    wte_ = this->register_module("wte", std::make_shared<GPTEmbedding<T, Device>>(c.vocab_size, c.n_embd));
    if (c.position == PositionKind::learned)
      wpe_ = this->register_module("wpe", std::make_shared<GPTEmbedding<T, Device>>(c.block_size, c.n_embd));
    h_ = this->register_module("h", std::make_shared<GPTBlockList<T, Device>>(c));
    ln_f_.create(*this, "ln_f", c);
    if (!c.tie_embeddings)
      lm_head_ = this->register_module("lm_head", std::make_shared<LoRALinear<T, Device>>(c.n_embd, c.vocab_size, false));
    dropout_rng_ = nn::derive_generator(rng);
    if (c.position == PositionKind::alibi) alibi_slopes_ = alibi_slopes(c.n_head);
    if (c.position == PositionKind::rotary) make_rope_tables();

    const double std = c.init_std, proj_std = c.init_std / std::sqrt(2.0 * static_cast<double>(c.n_layer));
    nn::init::normal_(wte_->weight(), rng, 0.0, std);
    if (wpe_) nn::init::normal_(wpe_->weight(), rng, 0.0, std);
    for (const auto& b : h_->blocks) {
      nn::init::normal_(b->attn->c_attn->weight(), rng, 0.0, std);
      nn::init::normal_(b->attn->c_proj->weight(), rng, 0.0, proj_std);
      nn::init::normal_(b->mlp->c_fc->weight(), rng, 0.0, std);
      nn::init::normal_(b->mlp->c_proj->weight(), rng, 0.0, proj_std);
    }
    if (lm_head_) nn::init::normal_(lm_head_->weight(), rng, 0.0, std);
  }

  const GPTConfig& config() const { return config_; }

  // tokens [B, T] (ids in [0, vocab_size), T <= block_size) -> logits [B, T, vocab_size].
  tensor_type forward(const tokens_type& tokens) { return head(hidden_states(tokens, nullptr)); }
  tensor_type operator()(const tokens_type& tokens) { return forward(tokens); }

  // The logits of `tokens` [B, T] that follow the cache's positions, using and extending the
  // cache (keys and values of earlier positions are not recomputed). For inference: no gradient
  // flows into the cached keys and values.
  tensor_type forward(const tokens_type& tokens, cache_type& cache) { return head(hidden_states(tokens, &cache)); }

  // The final hidden states ln_f(x) [B, T, n_embd] (with a cache when `cache` is not null).
  tensor_type hidden_states(const tokens_type& tokens, cache_type* cache) {
    const char* op = "models::GPT::forward";
    if (!tokens.defined() || tokens.dim() != 2 || tokens.size(1) < 1)
      throw ShapeError(std::string("kiln::") + op + ": expected token ids [B, T] with T >= 1, got " +
                       (tokens.defined() ? to_string(tokens.shape()) : std::string("an undefined tensor")));
    const index_t B = tokens.size(0), T_len = tokens.size(1);
    const index_t past = cache ? cache->length : 0;
    if (cache) {
      if (cache->keys.size() != static_cast<std::size_t>(config_.n_layer) || cache->batch != B)
        throw_value_error(op, "the cache was made for batch " + std::to_string(cache->batch) + " and " +
                                  std::to_string(cache->keys.size()) + " layers; the tokens are " +
                                  to_string(tokens.shape()) + " and the model has " +
                                  std::to_string(config_.n_layer) + " layers (use make_cache(B))");
      if (past + T_len > cache->capacity())
        throw_value_error(op, "the cache holds " + std::to_string(cache->capacity()) + " positions; " +
                                  std::to_string(past) + " are filled and " + std::to_string(T_len) + " more came");
    }
    if (past + T_len > config_.block_size)
      throw_value_error(op, "positions " + std::to_string(past) + " .. " + std::to_string(past + T_len - 1) +
                                " exceed block_size = " + std::to_string(config_.block_size));
    tensor_type x = wte_->forward(tokens.contiguous());
    if (wpe_) {
      std::vector<index_t> positions(static_cast<std::size_t>(T_len));
      std::iota(positions.begin(), positions.end(), past);
      x = tensor_type(x + wpe_->forward(from_vector<index_t, Device>(positions, Shape{T_len})));
    }
    x = drop(x);
    for (std::size_t i = 0; i < h_->blocks.size(); ++i) x = block_forward(*h_->blocks[i], i, x, cache, past);
    if (cache) cache->length += T_len;
    return ln_f_(x);
  }

  // The output head: hidden states [..., n_embd] -> logits [..., vocab_size].
  tensor_type head(const tensor_type& hidden) const { return kiln::linear(hidden, head_weight()); }
  tensor_type head_weight() const { return lm_head_ ? lm_head_->weight() : wte_->weight(); }

  // The mean next-token cross-entropy of `tokens` [B, T] (T >= 2): the logits at positions
  // 0 .. T−2 against the tokens at 1 .. T−1.
  tensor_type loss(const tokens_type& tokens) {
    if (!tokens.defined() || tokens.dim() != 2 || tokens.size(1) < 2)
      throw ShapeError("kiln::models::GPT::loss: expected token ids [B, T] with T >= 2, got " +
                       (tokens.defined() ? to_string(tokens.shape()) : std::string("an undefined tensor")));
    const index_t B = tokens.size(0), T_len = tokens.size(1), V = config_.vocab_size;
    const tensor_type logits = forward(tokens);
    const tensor_type shifted = logits.slice(1, 0, T_len - 1).reshape(Shape{B * (T_len - 1), V});
    const tokens_type targets = tokens.slice(1, 1, T_len).contiguous().reshape(Shape{B * (T_len - 1)});
    return kiln::cross_entropy(shifted, targets);
  }
  // The mean cross-entropy of forward(inputs) [B, T, V] against `targets` [B, T] (positions whose
  // target is ignore_index count for nothing), as nanoGPT's (x, y) batches.
  tensor_type loss(const tokens_type& inputs, const tokens_type& targets, index_t ignore_index = -100) {
    if (!targets.defined() || targets.shape() != inputs.shape())
      throw ShapeError("kiln::models::GPT::loss: the targets must have the inputs' shape " + to_string(inputs.shape()) +
                       ", got " + (targets.defined() ? to_string(targets.shape()) : std::string("an undefined tensor")));
    const tensor_type logits = forward(inputs);
    const index_t N = inputs.numel();
    return kiln::cross_entropy(logits.reshape(Shape{N, config_.vocab_size}), targets.contiguous().reshape(Shape{N}),
                               LossReduction::mean, ignore_index);
  }

  // An empty cache for `batch` sequences of up to `capacity` positions (0: block_size).
  cache_type make_cache(index_t batch, index_t capacity = 0) const {
    if (capacity <= 0 || capacity > config_.block_size) capacity = config_.block_size;
    cache_type cache;
    cache.batch = batch;
    for (index_t i = 0; i < config_.n_layer; ++i) {
      cache.keys.push_back(zeros<T, Device>(Shape{batch, config_.kv_heads(), capacity, config_.head_dim()}));
      cache.values.push_back(zeros<T, Device>(Shape{batch, config_.kv_heads(), capacity, config_.head_dim()}));
    }
    return cache;
  }

  // Continues each prompt (rows of `prompts` [B, T0], equal lengths) by up to max_new_tokens
  // tokens under NoGrad in eval mode (the training mode is restored afterwards). Each step runs
  // only the newest token through the model, with the keys and values of earlier positions kept
  // in a KV cache; once the sequence outgrows block_size the context is the last block_size
  // tokens (recomputed at each step, as nanoGPT crops). A row ends after producing a stop token;
  // rows that ended wait for the others. Sampling draws one Philox block per running row and step
  // from Rng(seed). Returns each row: its prompt followed by its new tokens.
  std::vector<std::vector<index_t>> generate(const tokens_type& prompts, const GenerateOptions& options) {
    const char* op = "models::GPT::generate";
    if (!prompts.defined() || prompts.dim() != 2 || prompts.size(0) < 1 || prompts.size(1) < 1)
      throw ShapeError(std::string("kiln::") + op + ": expected prompts [B, T0] with B, T0 >= 1, got " +
                       (prompts.defined() ? to_string(prompts.shape()) : std::string("an undefined tensor")));
    if (!config_.causal) throw_value_error(op, "generation needs a causal model (config.causal is false)");
    if (options.max_new_tokens < 0)
      throw_value_error(op, "max_new_tokens must be >= 0, got " + std::to_string(options.max_new_tokens));
    if (!(options.temperature >= 0.0) || !std::isfinite(options.temperature))
      throw_value_error(op, "temperature must be finite and >= 0, got " + std::to_string(options.temperature));
    if (!(options.top_p > 0.0 && options.top_p <= 1.0))
      throw_value_error(op, "top_p must lie in (0, 1], got " + std::to_string(options.top_p));
    if (!(options.repetition_penalty > 0.0))
      throw_value_error(op, "repetition_penalty must be positive, got " + std::to_string(options.repetition_penalty));
    if (options.top_k < 0) throw_value_error(op, "top_k must be >= 0, got " + std::to_string(options.top_k));

    NoGrad no_grad;
    const bool was_training = this->is_training();
    this->eval();
    struct RestoreMode {
      GPT& model;
      bool training;
      ~RestoreMode() { model.train(training); }
    } restore{*this, was_training};

    const index_t B = prompts.size(0), T0 = prompts.size(1), V = config_.vocab_size, block = config_.block_size;
    const tokens_type p = prompts.contiguous();
    std::vector<std::vector<index_t>> rows(static_cast<std::size_t>(B));
    for (index_t b = 0; b < B; ++b) rows[static_cast<std::size_t>(b)].assign(p.data() + b * T0, p.data() + (b + 1) * T0);
    std::vector<char> finished(static_cast<std::size_t>(B), 0);
    std::vector<index_t> ended_at(static_cast<std::size_t>(B), -1);  // sequence length once finished
    if (options.max_new_tokens == 0) return rows;

    Rng rng(options.seed);
    cache_type cache;
    if (options.use_cache) cache = make_cache(B, std::min(block, T0 + options.max_new_tokens));
    // The context's last tokens as [B, n].
    auto window = [&](index_t n) {
      const index_t L = static_cast<index_t>(rows[0].size());
      std::vector<index_t> ids;
      ids.reserve(static_cast<std::size_t>(B * n));
      for (const auto& r : rows) ids.insert(ids.end(), r.begin() + (L - n), r.end());
      return from_vector<index_t, Device>(ids, Shape{B, n});
    };
    auto recompute = [&]() {  // logits of the last position from the last min(L, block) tokens
      const index_t n = std::min<index_t>(static_cast<index_t>(rows[0].size()), block);
      if (!options.use_cache) return last_logits(window(n), nullptr);
      cache.clear();
      return last_logits(window(n), &cache);
    };
    tensor_type logits = recompute();
    for (index_t step = 0; step < options.max_new_tokens; ++step) {
      for (index_t b = 0; b < B; ++b) {
        auto& row = rows[static_cast<std::size_t>(b)];
        if (finished[static_cast<std::size_t>(b)]) {
          row.push_back(row.back());  // a filler the batch needs; cut off below
          continue;
        }
        const T* l = logits.data() + b * V;
        double u = 0.0;
        if (options.temperature != 0.0) {
          const PhiloxBlock w = rng.next_block();
          u = uniform_double(w[0], w[1]);
        }
        const index_t next = choose_next_token(std::vector<double>(l, l + V), row, options, u);
        row.push_back(next);
        if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), next) != options.stop_tokens.end()) {
          finished[static_cast<std::size_t>(b)] = 1;
          ended_at[static_cast<std::size_t>(b)] = static_cast<index_t>(row.size());
        }
      }
      if (step + 1 == options.max_new_tokens ||
          std::all_of(finished.begin(), finished.end(), [](char f) { return f != 0; }))
        break;
      if (options.use_cache && cache.length < cache.capacity())
        logits = last_logits(window(1), &cache);
      else
        logits = recompute();
    }
    for (index_t b = 0; b < B; ++b)
      if (ended_at[static_cast<std::size_t>(b)] >= 0)
        rows[static_cast<std::size_t>(b)].resize(static_cast<std::size_t>(ended_at[static_cast<std::size_t>(b)]));
    return rows;
  }
  // One prompt: its tokens followed by the new ones.
  std::vector<index_t> generate(const std::vector<index_t>& prompt, const GenerateOptions& options) {
    return generate(from_vector<index_t, Device>(prompt, Shape{1, static_cast<index_t>(prompt.size())}), options)[0];
  }

  // Adds LoRA adapters to the named projections of every block (LoRAOptions::targets) and makes
  // them the only trainable parameters (every other parameter is frozen). Returns the number of
  // adapters added.
  std::size_t add_lora(const LoRAOptions& options, Rng& rng) {
    static const std::vector<std::string> known = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
    if (options.targets.empty()) throw_value_error("models::GPT::add_lora", "no target projections were given");
    for (const auto& t : options.targets)
      if (std::find(known.begin(), known.end(), t) == known.end())
        throw_value_error("models::GPT::add_lora", "unknown target '" + t +
                                                       "' (targets: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)");
    std::size_t added = 0;
    for (const auto& b : h_->blocks)
      for (const auto& t : options.targets) {
        projection(*b, t).add_lora(options.rank, options.alpha, rng);
        ++added;
      }
    this->freeze("");
    for_each_projection([&](const std::string& name, LoRALinear<T, Device>& l) {
      if (!l.lora_active()) return;
      this->unfreeze(name + ".lora_A");
      this->unfreeze(name + ".lora_B");
    });
    return added;
  }

  // Folds every active adapter into its base weight (LoRALinear::merge_lora) and freezes the
  // adapters; the other parameters keep their (frozen) state. Returns how many were merged.
  std::size_t merge_lora() {
    std::size_t merged = 0;
    for_each_projection([&](const std::string& name, LoRALinear<T, Device>& l) {
      if (!l.merge_lora()) return;
      this->freeze(name + ".lora_A");
      this->freeze(name + ".lora_B");
      ++merged;
    });
    return merged;
  }

  // Calls f(dotted name, layer) for every projection of every block.
  template <class F>
  void for_each_projection(F&& f) const {
    for (std::size_t i = 0; i < h_->blocks.size(); ++i) {
      const std::string p = "h." + std::to_string(i) + ".";
      GPTBlock<T, Device>& b = *h_->blocks[i];
      f(p + "attn.c_attn", *b.attn->c_attn);
      f(p + "attn.c_proj", *b.attn->c_proj);
      f(p + "mlp.c_fc", *b.mlp->c_fc);
      f(p + "mlp.c_proj", *b.mlp->c_proj);
    }
  }

  GPTEmbedding<T, Device>& wte() const { return *wte_; }
  GPTBlock<T, Device>& block(index_t i) const { return *h_->blocks.at(static_cast<std::size_t>(i)); }
  Rng& dropout_generator() { return dropout_rng_; }

  // ALiBi's head slopes (Press et al. 2022, and their reference code for head counts that are not
  // powers of two): for n = 2^k heads m_h = 2^(−8h/n), h = 1..n; otherwise the slopes of the
  // nearest smaller power of two n' followed by every other slope of 2n' for the rest.
  static std::vector<double> alibi_slopes(index_t n) {
    auto power_of_two = [](index_t k) {
      std::vector<double> s;
      const double start = std::pow(2.0, -8.0 / static_cast<double>(k));
      for (index_t i = 0; i < k; ++i) s.push_back(std::pow(start, static_cast<double>(i + 1)));
      return s;
    };
    index_t p = 1;
    while (p * 2 <= n) p *= 2;
    std::vector<double> s = power_of_two(p);
    if (p == n) return s;
    const std::vector<double> extra = power_of_two(2 * p);
    for (index_t i = 0; i < n - p; ++i) s.push_back(extra[static_cast<std::size_t>(2 * i)]);
    return s;
  }

 private:
  tensor_type drop(const tensor_type& x) {
    if (config_.dropout == 0.0 || !this->is_training()) return x;
    return kiln::dropout(x, config_.dropout, true, dropout_rng_);
  }

  static LoRALinear<T, Device>& projection(GPTBlock<T, Device>& b, const std::string& target) {
    if (target == "attn.c_attn") return *b.attn->c_attn;
    if (target == "attn.c_proj") return *b.attn->c_proj;
    if (target == "mlp.c_fc") return *b.mlp->c_fc;
    return *b.mlp->c_proj;
  }

  // [B, V] logits of the last position.
  tensor_type last_logits(const tokens_type& tokens, cache_type* cache) {
    const tensor_type h = hidden_states(tokens, cache);
    const index_t T_len = h.size(1);
    return head(h.slice(1, T_len - 1, T_len)).contiguous();
  }

  tensor_type block_forward(GPTBlock<T, Device>& b, std::size_t layer, const tensor_type& x, cache_type* cache,
                            index_t past) {
    if (config_.parallel_block) {
      const tensor_type h = b.ln_1(x);
      return tensor_type(x + attention(b, layer, h, cache, past) + mlp(b, h));
    }
    const tensor_type x1 = tensor_type(x + attention(b, layer, b.ln_1(x), cache, past));
    return tensor_type(x1 + mlp(b, b.ln_2(x1)));
  }

  tensor_type mlp(GPTBlock<T, Device>& b, const tensor_type& x) {
    const tensor_type hidden = b.mlp->c_fc->forward(x);
    tensor_type a;
    if (config_.mlp == MLPKind::gelu) {
      a = tensor_type(kiln::gelu_tanh(hidden));
    } else {
      const index_t I = config_.mlp_hidden();
      a = tensor_type(kiln::silu(hidden.slice(-1, 0, I)) * hidden.slice(-1, I, 2 * I));
    }
    return drop(b.mlp->c_proj->forward(a));
  }

  // RoPE, rotate-half convention (Su et al. 2021; Hugging Face LLaMA's apply_rotary_pos_emb): with
  // x = [x1 | x2] split in halves along the head dim and θ_{t,i} = t·theta^(−2i/d),
  //   out = [x1·cos θ − x2·sin θ | x2·cos θ + x1·sin θ]
  // at absolute positions t = past .. past + T − 1. x [B, heads, T, d].
  tensor_type rope(const tensor_type& x, index_t past) const {
    const index_t T_len = x.size(2), d = x.size(3), half = d / 2;
    const tensor_type cos_t = rope_cos_.slice(0, past, past + T_len), sin_t = rope_sin_.slice(0, past, past + T_len);
    const tensor_type x1 = x.slice(3, 0, half), x2 = x.slice(3, half, d);
    const tensor_type o1 = tensor_type(x1 * cos_t - x2 * sin_t);
    const tensor_type o2 = tensor_type(x2 * cos_t + x1 * sin_t);
    return kiln::concat(std::vector<tensor_type>{o1, o2}, 3);
  }

  // cos θ and sin θ [block_size, head_dim / 2] for every position, computed in double.
  void make_rope_tables() {
    const index_t d = config_.head_dim(), half = d / 2, N = config_.block_size;
    rope_cos_ = tensor_type::uninitialized(Shape{N, half});
    rope_sin_ = tensor_type::uninitialized(Shape{N, half});
    for (index_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(config_.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      for (index_t t = 0; t < N; ++t) {
        const double angle = static_cast<double>(t) * inv_freq;
        rope_cos_.data()[t * half + i] = static_cast<T>(std::cos(angle));
        rope_sin_.data()[t * half + i] = static_cast<T>(std::sin(angle));
      }
    }
  }

  // The additive score bias [heads or 1, Tq, Tk] for queries at positions past .. past + Tq − 1:
  // −m_h·|i − j| for ALiBi, and −inf where a causal query may not look (key j > query i). The
  // last one is kept: every layer of a forward pass asks for the same.
  tensor_type attention_bias(index_t Tq, index_t Tk, index_t past) {
    if (bias_memo_.defined() && bias_memo_key_[0] == Tq && bias_memo_key_[1] == Tk && bias_memo_key_[2] == past)
      return bias_memo_;
    const bool alibi = config_.position == PositionKind::alibi;
    const index_t H = alibi ? config_.n_head : 1;
    auto bias = tensor_type::uninitialized(Shape{H, Tq, Tk});
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < Tq; ++i)
        for (index_t j = 0; j < Tk; ++j) {
          const index_t qi = past + i;
          double v = alibi ? -alibi_slopes_[static_cast<std::size_t>(h)] * static_cast<double>(qi > j ? qi - j : j - qi) : 0.0;
          if (config_.causal && j > qi) v = -std::numeric_limits<double>::infinity();
          bias.data()[(h * Tq + i) * Tk + j] = static_cast<T>(v);
        }
    bias_memo_ = bias;
    bias_memo_key_[0] = Tq, bias_memo_key_[1] = Tk, bias_memo_key_[2] = past;
    return bias;
  }

  // softmax(q·kᵀ/√d + bias)·v with q [B, H, Tq, d] and k, v [B, H, Tk, d].
  tensor_type attend(const tensor_type& q, const tensor_type& k, const tensor_type& v, index_t past) {
    const index_t Tq = q.size(2), Tk = k.size(2);
    const bool attention_dropout = config_.dropout > 0.0 && this->is_training();
    const bool fused_mask_fits = !config_.causal || past == 0 || Tq == 1;
    if (config_.position != PositionKind::alibi && !attention_dropout && fused_mask_fits)
      return kiln::scaled_dot_product_attention(q, k, v, config_.causal && Tq > 1);
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(q.size(3))));
    const tensor_type scores = tensor_type(kiln::matmul(q, k.transpose(2, 3)) * scale + attention_bias(Tq, Tk, past));
    return kiln::matmul(drop(kiln::softmax(scores, -1)), v);
  }

  // Grouped-query attention: k/v head g serves query heads g·r .. g·r + r − 1 (r = H / H_kv), as
  // Hugging Face's repeat_kv. [B, H_kv, T, d] -> [B, H, T, d].
  tensor_type repeat_kv(const tensor_type& x) const {
    const index_t r = config_.n_head / config_.kv_heads();
    if (r == 1) return x;
    const index_t B = x.size(0), Hkv = x.size(1), T_len = x.size(2), d = x.size(3);
    return x.unsqueeze(2).expand(Shape{B, Hkv, r, T_len, d}).reshape(Shape{B, Hkv * r, T_len, d});
  }

  tensor_type attention(GPTBlock<T, Device>& b, std::size_t layer, const tensor_type& x, cache_type* cache,
                        index_t past) {
    const index_t B = x.size(0), T_len = x.size(1), C = config_.n_embd;
    const index_t H = config_.n_head, Hkv = config_.kv_heads(), hd = config_.head_dim();
    const tensor_type qkv = b.attn->c_attn->forward(x);  // [B, T, (H + 2 Hkv) hd]
    auto heads = [&](index_t first, index_t n) {        // [B, n, T, hd]
      return qkv.slice(2, first * hd, (first + n) * hd).view(Shape{B, T_len, n, hd}).transpose(1, 2);
    };
    tensor_type q = heads(0, H), k = heads(H, Hkv), v = heads(H + Hkv, Hkv);
    if (config_.position == PositionKind::rotary) {
      q = rope(q, past);
      k = rope(k, past);
    }
    if (cache) {
      {
        NoGrad guard;
        cache->keys[layer].slice(2, past, past + T_len).assign(k.detach());
        cache->values[layer].slice(2, past, past + T_len).assign(v.detach());
      }
      k = cache->keys[layer].slice(2, 0, past + T_len);
      v = cache->values[layer].slice(2, 0, past + T_len);
    }
    const tensor_type y = attend(q, repeat_kv(k), repeat_kv(v), past);  // [B, H, T, hd]
    return drop(b.attn->c_proj->forward(y.transpose(1, 2).reshape(Shape{B, T_len, C})));
  }

  GPTConfig config_;
  std::shared_ptr<GPTEmbedding<T, Device>> wte_, wpe_;
  std::shared_ptr<GPTBlockList<T, Device>> h_;
  detail::NormSlot<T, Device> ln_f_;
  std::shared_ptr<LoRALinear<T, Device>> lm_head_;
  Rng dropout_rng_;
  std::vector<double> alibi_slopes_;
  tensor_type rope_cos_, rope_sin_;
  tensor_type bias_memo_;
  index_t bias_memo_key_[3] = {0, 0, 0};
};

// ---------------------------------------------------------------------------------------------
// Hugging Face safetensors files
// ---------------------------------------------------------------------------------------------

namespace detail {

// The config.json to read for `file` (options.config_path, else config.json beside it when it
// exists), parsed; null when there is none.
inline io::Json read_pretrained_config(const std::string& file, const PretrainedOptions& options) {
  namespace fs = std::filesystem;
  std::string path = options.config_path;
  if (path.empty()) {
    const fs::path beside = fs::path(file).parent_path() / "config.json";
    std::error_code ec;
    if (!fs::exists(beside, ec)) return io::Json();
    path = beside.string();
  }
  return io::parse_json(io::read_file_bytes(path), path);
}

inline const io::Json* config_member(const io::Json& config, std::string_view key) {
  const io::Json* v = config.is_object() ? config.find(key) : nullptr;
  return v && !v->is_null() ? v : nullptr;
}

// "h.12.attn..." -> 12 after `prefix` ("h."); -1 when the name does not have that form.
inline index_t layer_index(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  std::size_t i = prefix.size();
  index_t n = 0;
  bool digits = false;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') {
    n = n * 10 + (name[i] - '0');
    ++i;
    digits = true;
  }
  return digits && i < name.size() && name[i] == '.' ? n : -1;
}

// One model parameter's source in a file: the file's tensor names (several stacked along dim 0,
// as q/k/v into c_attn) and whether each is stored transposed ([in, out], HF's Conv1D).
struct SourceEntry {
  std::string parameter;
  std::vector<std::string> names;
  bool transposed = false;
};

// Copies the sources into the model's parameters, after checking every name and shape; on any
// problem throws nn::StateDictError naming the file and listing missing, unexpected and
// mis-shaped tensors. `ignorable(name)` marks file entries that are not parameters (HF buffers).
// Missing names are reported with `missing_prefix` ("transformer." when the file uses it).
template <class T, class F>
void load_sources(GPT<T, cpu>& model, const io::SafeTensorsFile& file, const std::vector<SourceEntry>& sources,
                  const std::unordered_map<std::string, std::string>& file_name_of, F ignorable,
                  const std::string& missing_prefix = "") {
  std::vector<std::string> missing, misshaped, unexpected;
  std::unordered_set<std::string> used;
  const auto params = model.state_dict();
  for (const auto& s : sources) {
    const Tensor<T>& target = params.at(s.parameter);
    index_t rows = 0;
    bool complete = true;
    std::vector<Shape> shapes;
    for (const auto& n : s.names) {
      used.insert(n);
      auto it = file_name_of.find(n);
      if (it == file_name_of.end()) {
        missing.push_back(missing_prefix + n);
        complete = false;
        continue;
      }
      Shape sh = file.shape(it->second);
      if (s.transposed && sh.ndim == 2) std::swap(sh.dims[0], sh.dims[1]);
      shapes.push_back(sh);
      rows += sh.ndim >= 1 ? sh.dims[0] : 0;
    }
    if (!complete) continue;
    bool fits = true;
    for (const auto& sh : shapes)
      fits = fits && sh.ndim == target.dim() && (sh.ndim < 2 || sh.dims[1] == target.size(1));
    fits = fits && rows == target.size(0);
    if (!fits) {
      std::string got;
      for (std::size_t i = 0; i < s.names.size(); ++i)
        got += (i ? ", " : "") + file_name_of.at(s.names[i]) + " " + to_string(file.shape(file_name_of.at(s.names[i])));
      misshaped.push_back(s.parameter + " (model " + to_string(target.shape()) + (s.transposed ? ", stored transposed" : "") +
                          "; file: " + got + ")");
    }
  }
  for (const auto& [name, original] : file_name_of)
    if (!used.count(name) && !ignorable(name)) unexpected.push_back(original);
  std::sort(unexpected.begin(), unexpected.end());
  if (!missing.empty() || !misshaped.empty() || !unexpected.empty()) {
    std::string msg = "kiln::models: " + file.source() + " does not fit the model";
    auto list = [&](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      msg += std::string("\n  ") + what + " (" + std::to_string(names.size()) + "): ";
      for (std::size_t i = 0; i < names.size(); ++i) msg += (i ? ", " : "") + names[i];
    };
    list("missing", missing);
    list("unexpected", unexpected);
    list("mis-shaped", misshaped);
    throw nn::StateDictError(msg);
  }
  NoGrad guard;
  for (const auto& s : sources) {
    std::vector<Tensor<T>> parts;
    for (const auto& n : s.names) {
      Tensor<T> t = file.get<T>(file_name_of.at(n));
      parts.push_back(s.transposed ? t.t() : t);
    }
    Tensor<T> dst = params.at(s.parameter);
    dst.assign(parts.size() == 1 ? parts[0] : kiln::concat(parts, 0));
  }
}

}  // namespace detail

// Loads a Hugging Face GPT-2 checkpoint (GPT2Model or GPT2LMHeadModel safetensors, with or without
// the "transformer." prefix; Conv1D weights stored [in, out] are transposed into the model). The
// shapes give the config: n_layer from the h.N names, vocab_size and n_embd from wte, block_size
// from wpe, the MLP width from c_fc, bias from the presence of c_attn.bias, tying from the absence
// of lm_head.weight. n_head (and layer_norm_epsilon, default 1e-5) come from `options` or a
// config.json beside the file; without either the load fails naming what to pass. The causal-mask
// buffers HF writes (h.N.attn.bias, h.N.attn.masked_bias) are skipped. Any missing, unexpected or
// mis-shaped tensor throws nn::StateDictError listing them all.
template <class T = float>
std::shared_ptr<GPT<T, cpu>> load_gpt2_safetensors(const std::string& path, const PretrainedOptions& options = {}) {
  const char* op = "models::load_gpt2_safetensors";
  io::SafeTensorsFile file(path);
  std::unordered_map<std::string, std::string> name_of;  // name without "transformer." -> file name
  bool prefixed = false;
  for (const auto& n : file.names()) {
    const bool p = n.rfind("transformer.", 0) == 0;
    prefixed = prefixed || p;
    name_of[p ? n.substr(12) : n] = n;
  }
  auto need = [&](const std::string& n) -> Shape {
    auto it = name_of.find(n);
    if (it == name_of.end())
      throw nn::StateDictError("kiln::models::load_gpt2_safetensors: " + path + " has no tensor '" + n +
                               "' (or 'transformer." + n + "'): not a Hugging Face GPT-2 checkpoint");
    return file.shape(it->second);
  };
  const Shape wte = need("wte.weight"), wpe = need("wpe.weight");
  if (wte.ndim != 2 || wpe.ndim != 2 || wte.dims[1] != wpe.dims[1])
    throw ShapeError("kiln::models::load_gpt2_safetensors: " + path + ": wte.weight " + to_string(wte) +
                     " and wpe.weight " + to_string(wpe) + " must be [vocab, n_embd] and [positions, n_embd]");
  index_t n_layer = 0;
  for (const auto& [n, original] : name_of) n_layer = std::max(n_layer, detail::layer_index(n, "h.") + 1);
  const io::Json json = detail::read_pretrained_config(path, options);

  GPTConfig c;
  c.vocab_size = wte.dims[0], c.n_embd = wte.dims[1], c.block_size = wpe.dims[0], c.n_layer = n_layer;
  c.bias = name_of.count("h.0.attn.c_attn.bias") != 0;
  c.tie_embeddings = name_of.count("lm_head.weight") == 0;
  if (name_of.count("h.0.mlp.c_fc.weight")) {
    const Shape fc = file.shape(name_of.at("h.0.mlp.c_fc.weight"));
    if (fc.ndim == 2) c.intermediate_size = fc.dims[1];
  }
  if (options.n_head) c.n_head = *options.n_head;
  else if (const io::Json* v = detail::config_member(json, "n_head")) c.n_head = v->as_int64();
  else
    throw_value_error(op, path + ": the number of heads is not in the file; pass PretrainedOptions::n_head or put a "
                                 "config.json with \"n_head\" beside it");
  c.norm_eps = 1e-5;
  if (options.norm_eps) c.norm_eps = *options.norm_eps;
  else if (const io::Json* v = detail::config_member(json, "layer_norm_epsilon")) c.norm_eps = v->as_double();
  if (const io::Json* v = detail::config_member(json, "activation_function")) {
    const std::string& a = v->as_string();
    if (a != "gelu_new" && a != "gelu_pytorch_tanh" && a != "gelu_fast")
      throw_value_error(op, path + ": activation_function \"" + a +
                                   "\" is not supported (kiln's GPT-2 MLP uses the tanh GELU, \"gelu_new\")");
  }
  if (options.causal) c.causal = *options.causal;
  c.validate();

  Rng rng(0);
  auto model = std::make_shared<GPT<T, cpu>>(c, rng);
  std::vector<detail::SourceEntry> sources;
  for (const auto& [name, tensor] : model->named_parameters()) {
    const bool conv1d = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 &&
                        (name.find(".attn.c_") != std::string::npos || name.find(".mlp.c_") != std::string::npos);
    sources.push_back({name, {name}, conv1d});
  }
  detail::load_sources(
      *model, file, sources, name_of,
      [](const std::string& n) {
        return detail::layer_index(n, "h.") >= 0 && (n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias"));
      },
      prefixed ? "transformer." : "");
  return model;
}

// Writes the model in Hugging Face's GPT-2 layout (Conv1D weights transposed to [in, out]), names
// as GPT2LMHeadModel's state dict (with the "transformer." prefix when asked; lm_head.weight only
// when untied) and metadata {"format": "pt"}. The config must have GPT-2's architecture
// (GPTConfig::gpt2_layout) and no adapter may be unmerged. See save_gpt2_config_json for the
// config.json that goes beside it.
template <class T>
void save_gpt2_safetensors(const GPT<T, cpu>& model, const std::string& path, bool transformer_prefix = false) {
  const char* op = "models::save_gpt2_safetensors";
  if (!model.config().gpt2_layout())
    throw_value_error(op, "the Hugging Face GPT-2 layout holds only GPT-2's architecture (learned positions, "
                          "LayerNorm, gelu MLP, n_kv_head = n_head, sequential blocks)");
  model.for_each_projection([&](const std::string& name, LoRALinear<T, cpu>& l) {
    if (l.lora_active())
      throw_value_error(op, name + " has an unmerged LoRA adapter: call merge_lora() before saving");
  });
  std::vector<std::pair<std::string, Tensor<T>>> entries;
  for (const auto& [name, tensor] : model.state_dict()) {
    if (name.ends_with(".lora_A") || name.ends_with(".lora_B")) continue;
    const bool conv1d = name.ends_with(".weight") &&
                        (name.find(".attn.c_") != std::string::npos || name.find(".mlp.c_") != std::string::npos);
    const std::string out = (transformer_prefix && name != "lm_head.weight" ? "transformer." : "") + name;
    entries.emplace_back(out, conv1d ? tensor.t().contiguous() : tensor);
  }
  io::save_safetensors(path, entries, {{"format", "pt"}});
}

// Writes a Hugging Face GPT-2 config.json for `config` (model_type, n_layer, n_head, n_embd,
// n_positions, n_ctx, vocab_size, n_inner, layer_norm_epsilon, activation_function "gelu_new").
inline void save_gpt2_config_json(const GPTConfig& config, const std::string& path) {
  io::Json j = io::Json::object();
  j.set("model_type", "gpt2");
  j.set("architectures", io::Json(io::Json::Array{io::Json("GPT2LMHeadModel")}));
  j.set("n_layer", config.n_layer);
  j.set("n_head", config.n_head);
  j.set("n_embd", config.n_embd);
  j.set("n_positions", config.block_size);
  j.set("n_ctx", config.block_size);
  j.set("vocab_size", config.vocab_size);
  j.set("n_inner", config.mlp_hidden());
  j.set("layer_norm_epsilon", config.norm_eps);
  j.set("activation_function", "gelu_new");
  j.set("tie_word_embeddings", config.tie_embeddings);
  io::write_file_atomic(path, io::to_json(j, 2) + "\n");
}

// Loads a Hugging Face LLaMA checkpoint (LlamaForCausalLM safetensors: model.embed_tokens,
// model.layers.N.self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm,
// post_attention_layernorm, model.norm, lm_head) into the LLaMA-style config: q/k/v are stacked
// into c_attn and gate/up into c_fc. The shapes give n_layer, vocab_size, n_embd, the MLP width
// and, with n_head, n_kv_head; n_head, rms_norm_eps (default 1e-6), rope_theta (10000) and
// max_position_embeddings (block_size, default 2048) come from `options` or a config.json beside
// the file. Tied when lm_head.weight is absent. rope_scaling and biases are not supported.
template <class T = float>
std::shared_ptr<GPT<T, cpu>> load_llama_safetensors(const std::string& path, const PretrainedOptions& options = {}) {
  const char* op = "models::load_llama_safetensors";
  io::SafeTensorsFile file(path);
  std::unordered_map<std::string, std::string> name_of;
  for (const auto& n : file.names()) name_of[n] = n;
  auto need = [&](const std::string& n) -> Shape {
    if (!name_of.count(n))
      throw nn::StateDictError("kiln::models::load_llama_safetensors: " + path + " has no tensor '" + n +
                               "': not a Hugging Face LLaMA checkpoint");
    return file.shape(n);
  };
  const Shape embed = need("model.embed_tokens.weight");
  const Shape k_proj = need("model.layers.0.self_attn.k_proj.weight");
  const Shape gate = need("model.layers.0.mlp.gate_proj.weight");
  if (embed.ndim != 2 || k_proj.ndim != 2 || gate.ndim != 2)
    throw ShapeError("kiln::models::load_llama_safetensors: " + path + ": model.embed_tokens.weight " +
                     to_string(embed) + ", k_proj " + to_string(k_proj) + " and gate_proj " + to_string(gate) +
                     " must be matrices");
  index_t n_layer = 0;
  for (const auto& [n, original] : name_of) n_layer = std::max(n_layer, detail::layer_index(n, "model.layers.") + 1);
  const io::Json json = detail::read_pretrained_config(path, options);
  if (const io::Json* v = detail::config_member(json, "rope_scaling"))
    throw_value_error(op, path + ": rope_scaling " + io::to_json(*v) + " is not supported");
  if (const io::Json* v = detail::config_member(json, "hidden_act"); v && v->as_string() != "silu")
    throw_value_error(op, path + ": hidden_act \"" + v->as_string() + "\" is not supported (SwiGLU uses silu)");

  GPTConfig c = GPTConfig::llama_small();
  c.vocab_size = embed.dims[0], c.n_embd = embed.dims[1], c.n_layer = n_layer;
  c.intermediate_size = gate.dims[0];
  c.tie_embeddings = name_of.count("lm_head.weight") == 0;
  if (options.n_head) c.n_head = *options.n_head;
  else if (const io::Json* v = detail::config_member(json, "num_attention_heads")) c.n_head = v->as_int64();
  else
    throw_value_error(op, path + ": the number of heads is not in the file; pass PretrainedOptions::n_head or put a "
                                 "config.json with \"num_attention_heads\" beside it");
  if (c.n_head < 1 || c.n_embd % c.n_head != 0 || k_proj.dims[0] % (c.n_embd / c.n_head) != 0)
    throw_value_error(op, path + ": n_head = " + std::to_string(c.n_head) + " does not divide n_embd = " +
                              std::to_string(c.n_embd) + " into heads that fit k_proj " + to_string(k_proj));
  c.n_kv_head = k_proj.dims[0] / (c.n_embd / c.n_head);
  c.norm_eps = 1e-6;
  if (options.norm_eps) c.norm_eps = *options.norm_eps;
  else if (const io::Json* v = detail::config_member(json, "rms_norm_eps")) c.norm_eps = v->as_double();
  if (options.rope_theta) c.rope_theta = *options.rope_theta;
  else if (const io::Json* v = detail::config_member(json, "rope_theta")) c.rope_theta = v->as_double();
  c.block_size = 2048;
  if (options.block_size) c.block_size = *options.block_size;
  else if (const io::Json* v = detail::config_member(json, "max_position_embeddings")) c.block_size = v->as_int64();
  c.validate();

  Rng rng(0);
  auto model = std::make_shared<GPT<T, cpu>>(c, rng);
  std::vector<detail::SourceEntry> sources;
  sources.push_back({"wte.weight", {"model.embed_tokens.weight"}, false});
  for (index_t i = 0; i < n_layer; ++i) {
    const std::string h = "h." + std::to_string(i) + ".", m = "model.layers." + std::to_string(i) + ".";
    sources.push_back({h + "ln_1.weight", {m + "input_layernorm.weight"}, false});
    sources.push_back({h + "attn.c_attn.weight",
                       {m + "self_attn.q_proj.weight", m + "self_attn.k_proj.weight", m + "self_attn.v_proj.weight"},
                       false});
    sources.push_back({h + "attn.c_proj.weight", {m + "self_attn.o_proj.weight"}, false});
    sources.push_back({h + "ln_2.weight", {m + "post_attention_layernorm.weight"}, false});
    sources.push_back({h + "mlp.c_fc.weight", {m + "mlp.gate_proj.weight", m + "mlp.up_proj.weight"}, false});
    sources.push_back({h + "mlp.c_proj.weight", {m + "mlp.down_proj.weight"}, false});
  }
  sources.push_back({"ln_f.weight", {"model.norm.weight"}, false});
  if (!c.tie_embeddings) sources.push_back({"lm_head.weight", {"lm_head.weight"}, false});
  detail::load_sources(*model, file, sources, name_of,
                       [](const std::string& n) { return n.ends_with(".self_attn.rotary_emb.inv_freq"); });
  return model;
}

}  // namespace kiln::models
