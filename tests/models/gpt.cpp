// Tests of include/kiln/models/gpt.hpp: logits, loss and every parameter gradient against PyTorch
// (tests/torch/gpt_reference.py: Hugging Face GPT-2 and LLaMA layouts, a bidirectional encoder, ALiBi
// with multi-query attention and parallel blocks); the GPT-2 presets' parameter counts against the
// published ones; KV-cache forward and generation against full recomputation; sampling filters on
// hand-computed cases; stop tokens, batches and seeds; LoRA (unchanged output at init, adapter-only
// gradients, merging); Hugging Face save/load round trips and the loaders' error messages.
#include <doctest/doctest.h>

#include <kiln/backend/cpu/backend.hpp>
#include <kiln/models/gpt.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;
using kiln::models::GenerateOptions;
using kiln::models::GPT;
using kiln::models::GPTConfig;
using kiln::models::LoRAOptions;
using kiln::models::MLPKind;
using kiln::models::NormKind;
using kiln::models::PositionKind;
using Model = GPT<float>;

// A directory of this process under the system's temporary directory, removed at exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag)
      : path(fs::temp_directory_path() / ("kiln_models_gpt_" + tag + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// The PyTorch reference files, written once per process by tests/torch/gpt_reference.py.
const TempDir& reference() {
  static const TempDir dir = [] {
    TempDir d("reference");
    REQUIRE(kiln::test::run_torch_script("gpt_reference.py", kiln::test::shell_quote(d.path.string())) == 0);
    return d;
  }();
  return dir;
}

Tensor<index_t> ids(const std::vector<index_t>& v, index_t B, index_t T) {
  return kiln::from_vector<index_t>(v, Shape{B, T});
}

// Pseudo-random token ids in [0, vocab) (a fixed linear congruential sequence).
Tensor<index_t> random_ids(index_t B, index_t T, index_t vocab, std::uint64_t seed) {
  std::vector<index_t> v;
  std::uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (index_t i = 0; i < B * T; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    v.push_back(static_cast<index_t>((s >> 33) % static_cast<std::uint64_t>(vocab)));
  }
  return ids(v, B, T);
}

// The largest |got − want| and the largest |want| over a tensor.
struct Difference {
  double max_abs = 0, max_ref = 0;
  double relative() const { return max_abs / std::max(max_ref, 1e-30); }
};

template <class A, class B>
Difference difference(const Tensor<A>& got, const Tensor<B>& want) {
  REQUIRE(got.defined());
  REQUIRE(want.defined());
  REQUIRE_MESSAGE(got.shape() == want.shape(), kiln::to_string(got.shape()) << " vs " << kiln::to_string(want.shape()));
  const auto g = got.contiguous().to_vector();
  const auto w = want.contiguous().to_vector();
  Difference d;
  for (std::size_t i = 0; i < g.size(); ++i) {
    d.max_abs = std::max(d.max_abs, std::fabs(static_cast<double>(g[i]) - static_cast<double>(w[i])));
    d.max_ref = std::max(d.max_ref, std::fabs(static_cast<double>(w[i])));
  }
  return d;
}

// Rows of the given [r_i, c] tensors stacked into one [Σ r_i, c] tensor.
Tensor<double> stack_rows(const std::vector<Tensor<double>>& parts) {
  std::vector<double> all;
  index_t rows = 0;
  for (const auto& p : parts) {
    const auto v = p.contiguous().to_vector();
    all.insert(all.end(), v.begin(), v.end());
    rows += p.size(0);
  }
  return kiln::from_vector<double>(all, Shape{rows, parts[0].size(1)});
}

// Logits, loss and every parameter's gradient of `model` against the reference of `case_name`;
// expected_grad maps a kiln parameter name to PyTorch's gradient in kiln's layout.
template <class F>
void check_against_torch(Model& model, const std::string& case_name, F expected_grad) {
  const kiln::io::SafeTensorsFile ref(reference().file(case_name + "/reference.safetensors"));
  const Tensor<double> token_values = ref.get<double>("tokens");
  std::vector<index_t> token_ids;
  for (const double v : token_values.to_vector()) token_ids.push_back(static_cast<index_t>(v));
  const Tensor<index_t> tokens = ids(token_ids, token_values.size(0), token_values.size(1));

  Tensor<float> logits;
  {
    kiln::NoGrad guard;
    logits = model.forward(tokens);
  }
  const Difference logit_diff = difference(logits, ref.get<double>("logits"));
  const Tensor<float> loss = model.loss(tokens);
  const double loss_ref = ref.get<double>("loss").item();
  loss.backward();

  Difference worst_grad;
  double worst_relative = 0;
  std::string worst_name;
  std::size_t checked = 0;
  for (const auto& entry : model.named_parameters()) {
    const std::string& name = entry.first;
    const Tensor<float>& p = entry.second;
    const Difference d = difference(p.grad(), expected_grad(name, ref));
    worst_grad.max_abs = std::max(worst_grad.max_abs, d.max_abs);
    if (d.relative() > worst_relative) worst_relative = d.relative(), worst_name = name;
    ++checked;
    CHECK_MESSAGE(d.relative() < 2e-4, case_name << ": gradient of " << name << " max abs diff " << d.max_abs
                                                 << ", max |ref| " << d.max_ref);
  }
  MESSAGE(case_name << ": logits max abs diff " << logit_diff.max_abs << " (max |ref| " << logit_diff.max_ref
                    << ", rel " << logit_diff.relative() << "); loss " << loss.item() << " vs " << loss_ref
                    << "; " << checked << " gradients: max abs diff " << worst_grad.max_abs
                    << ", worst max-abs/max|ref| " << worst_relative << " (" << worst_name << ")");
  CHECK(logit_diff.relative() < 2e-5);
  CHECK(std::fabs(loss.item() - loss_ref) < 1e-5 * std::fabs(loss_ref));
  CHECK(checked == model.named_parameters().size());
}

// Loads a kiln-layout safetensors file into `model` (strict).
void load_native(Model& model, const std::string& path) {
  const kiln::io::SafeTensorsFile file(path);
  kiln::nn::StateDict<float> dict;
  for (const auto& n : file.names()) dict.insert(n, file.get<float>(n));
  model.load_state_dict(dict);
}

GPTConfig small_gpt2() {
  GPTConfig c;
  c.n_layer = 2, c.n_head = 4, c.n_embd = 32, c.block_size = 32, c.vocab_size = 61, c.init_std = 0.15;
  return c;
}
GPTConfig small_llama() {
  GPTConfig c = GPTConfig::llama_small();
  c.n_layer = 2, c.n_head = 4, c.n_kv_head = 2, c.n_embd = 32, c.block_size = 32, c.vocab_size = 61;
  c.intermediate_size = 48, c.init_std = 0.15;
  return c;
}
GPTConfig small_alibi() {
  GPTConfig c = small_gpt2();
  c.position = PositionKind::alibi, c.n_head = 6, c.n_kv_head = 1, c.n_embd = 48, c.parallel_block = true;
  c.norm = NormKind::rmsnorm, c.bias = false, c.tie_embeddings = false;
  return c;
}
GPTConfig small_nopos() {
  GPTConfig c = small_gpt2();
  c.position = PositionKind::none, c.mlp = MLPKind::swiglu, c.intermediate_size = 40;
  return c;
}

std::shared_ptr<Model> make_model(const GPTConfig& c, std::uint64_t seed = 3) {
  kiln::Rng rng(seed);
  return std::make_shared<Model>(c, rng);
}

Tensor<float> logits_of(Model& m, const Tensor<index_t>& tokens) {
  kiln::NoGrad guard;
  return m.forward(tokens);
}

}  // namespace

TEST_CASE("GPTConfig: GPT-2 presets have the published parameter counts; the LLaMA preset and validation") {
  // Hugging Face's GPT2LMHeadModel.num_parameters() (tied head): gpt2, -medium, -large, -xl.
  CHECK(GPTConfig::gpt2("124M").num_parameters() == 124439808);
  CHECK(GPTConfig::gpt2("355M").num_parameters() == 354823168);
  CHECK(GPTConfig::gpt2("774M").num_parameters() == 774030080);
  CHECK(GPTConfig::gpt2("1.5B").num_parameters() == 1557611200);
  CHECK(GPTConfig::gpt2("gpt2-medium").n_head == 16);
  CHECK_THROWS_WITH_AS(GPTConfig::gpt2("7B"), doctest::Contains("unknown size '7B'"), kiln::ValueError);

  const GPTConfig l = GPTConfig::llama_small();
  CHECK(l.mlp_hidden() == 1536);  // 2/3 · 4 · 512 = 1365 rounded up to a multiple of 256
  CHECK(l.kv_heads() == 2);
  CHECK(l.head_dim() == 64);

  // The count without building agrees with the built model's parameters.
  for (const GPTConfig& c : {small_gpt2(), small_llama(), small_alibi(), small_nopos()}) {
    const auto m = make_model(c);
    CHECK(m->num_parameters() == c.num_parameters());
  }

  GPTConfig bad = small_gpt2();
  bad.n_head = 5;
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("multiple of n_head = 5"), kiln::ValueError);
  bad = small_llama();
  bad.n_kv_head = 3;
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("n_kv_head = 3"), kiln::ValueError);
  bad = small_llama();
  bad.n_embd = 36, bad.n_head = 4, bad.n_kv_head = 1;  // head dim 9: odd, no RoPE pairs
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("even head dim"), kiln::ValueError);
}

TEST_CASE("GPT: Hugging Face GPT-2 parameter names and GPT-2's initialization") {
  GPTConfig c = small_gpt2();
  c.init_std = 0.02;
  c.n_embd = 64, c.n_layer = 3, c.vocab_size = 500;
  const auto m = make_model(c);
  std::vector<std::string> names;
  for (const auto& [n, p] : m->named_parameters()) names.push_back(n);
  const std::vector<std::string> first = {"wte.weight",
                                          "wpe.weight",
                                          "h.0.ln_1.weight",
                                          "h.0.ln_1.bias",
                                          "h.0.attn.c_attn.weight",
                                          "h.0.attn.c_attn.bias",
                                          "h.0.attn.c_proj.weight",
                                          "h.0.attn.c_proj.bias",
                                          "h.0.ln_2.weight",
                                          "h.0.ln_2.bias",
                                          "h.0.mlp.c_fc.weight",
                                          "h.0.mlp.c_fc.bias",
                                          "h.0.mlp.c_proj.weight",
                                          "h.0.mlp.c_proj.bias"};
  REQUIRE(names.size() == 2 + 12 * 3 + 2);
  CHECK(std::equal(first.begin(), first.end(), names.begin()));
  CHECK(names[names.size() - 2] == "ln_f.weight");
  CHECK(names.back() == "ln_f.bias");  // tied: no lm_head
  CHECK(m->parameter("h.2.attn.c_attn.weight").shape() == Shape{192, 64});

  auto stats = [](const Tensor<float>& t) {
    double s = 0, s2 = 0;
    for (const float v : t.to_vector()) s += v, s2 += static_cast<double>(v) * v;
    const double n = static_cast<double>(t.numel());
    return std::pair<double, double>{s / n, std::sqrt(s2 / n - (s / n) * (s / n))};
  };
  CHECK(stats(m->parameter("wte.weight")).second == doctest::Approx(0.02).epsilon(0.03));
  CHECK(stats(m->parameter("h.1.mlp.c_fc.weight")).second == doctest::Approx(0.02).epsilon(0.03));
  const double proj = 0.02 / std::sqrt(6.0);  // 1/√(2·n_layer)
  CHECK(stats(m->parameter("h.1.mlp.c_proj.weight")).second == doctest::Approx(proj).epsilon(0.03));
  CHECK(stats(m->parameter("h.0.attn.c_proj.weight")).second == doctest::Approx(proj).epsilon(0.06));
  for (const char* zero : {"h.0.attn.c_attn.bias", "h.2.mlp.c_proj.bias", "ln_f.bias", "h.1.ln_1.bias"}) {
    const auto v = m->parameter(zero).to_vector();
    CHECK(std::all_of(v.begin(), v.end(), [](float x) { return x == 0.0f; }));
  }
  const auto ln = m->parameter("h.1.ln_2.weight").to_vector();
  CHECK(std::all_of(ln.begin(), ln.end(), [](float x) { return x == 1.0f; }));

  GPTConfig untied = small_llama();
  const auto l = make_model(untied);
  std::vector<std::string> lnames;
  for (const auto& [n, p] : l->named_parameters()) lnames.push_back(n);
  CHECK(lnames.back() == "lm_head.weight");
  CHECK(std::find(lnames.begin(), lnames.end(), "wpe.weight") == lnames.end());
  CHECK(std::find(lnames.begin(), lnames.end(), "h.0.ln_1.bias") == lnames.end());
  CHECK(l->parameter("h.0.attn.c_attn.weight").shape() == Shape{(4 + 2 * 2) * 8, 32});  // q | k | v, 2 k/v heads
  CHECK(l->parameter("h.0.mlp.c_fc.weight").shape() == Shape{2 * 48, 32});              // gate | up
}

TEST_CASE("GPT: a Hugging Face GPT-2 checkpoint gives PyTorch's logits and gradients") {
  const auto model = kiln::models::load_gpt2_safetensors<float>(reference().file("gpt2/model.safetensors"));
  const GPTConfig& c = model->config();
  CHECK(c.n_layer == 2);
  CHECK(c.n_head == 4);  // from config.json
  CHECK(c.n_embd == 64);
  CHECK(c.vocab_size == 97);
  CHECK(c.block_size == 32);
  CHECK(c.mlp_hidden() == 256);
  CHECK(c.bias);
  CHECK(c.tie_embeddings);
  check_against_torch(*model, "gpt2", [](const std::string& name, const kiln::io::SafeTensorsFile& ref) {
    const Tensor<double> g = ref.get<double>("grad/transformer." + name);
    const bool conv1d = name.ends_with(".weight") && (name.find(".attn.") != std::string::npos ||
                                                      name.find(".mlp.") != std::string::npos);
    return conv1d ? g.t().contiguous() : g;  // Conv1D gradients are [in, out]
  });
}

TEST_CASE("GPT: a Hugging Face LLaMA checkpoint (RoPE, RMSNorm, SwiGLU, GQA) gives PyTorch's logits and gradients") {
  const auto model = kiln::models::load_llama_safetensors<float>(reference().file("llama/model.safetensors"));
  const GPTConfig& c = model->config();
  CHECK(c.n_layer == 2);
  CHECK(c.n_head == 4);
  CHECK(c.kv_heads() == 2);
  CHECK(c.mlp_hidden() == 96);
  CHECK(c.block_size == 32);
  CHECK(c.norm_eps == 1e-6);
  CHECK(c.position == PositionKind::rotary);
  CHECK_FALSE(c.tie_embeddings);
  check_against_torch(*model, "llama", [](const std::string& name, const kiln::io::SafeTensorsFile& ref) {
    auto g = [&](const std::string& n) { return ref.get<double>("grad/" + n); };
    if (name == "wte.weight") return g("model.embed_tokens.weight");
    if (name == "ln_f.weight") return g("model.norm.weight");
    if (name == "lm_head.weight") return g("lm_head.weight");
    const std::size_t dot = name.find('.', 2);
    const std::string m = "model.layers." + name.substr(2, dot - 2) + ".", rest = name.substr(dot + 1);
    if (rest == "ln_1.weight") return g(m + "input_layernorm.weight");
    if (rest == "ln_2.weight") return g(m + "post_attention_layernorm.weight");
    if (rest == "attn.c_attn.weight")
      return stack_rows({g(m + "self_attn.q_proj.weight"), g(m + "self_attn.k_proj.weight"),
                         g(m + "self_attn.v_proj.weight")});
    if (rest == "attn.c_proj.weight") return g(m + "self_attn.o_proj.weight");
    if (rest == "mlp.c_fc.weight") return stack_rows({g(m + "mlp.gate_proj.weight"), g(m + "mlp.up_proj.weight")});
    REQUIRE(rest == "mlp.c_proj.weight");
    return g(m + "mlp.down_proj.weight");
  });

  // Without config.json: n_head given, n_kv_head inferred from k_proj's shape.
  const TempDir dir("llama");
  fs::copy_file(reference().file("llama/model.safetensors"), dir.file("model.safetensors"));
  CHECK_THROWS_WITH_AS(kiln::models::load_llama_safetensors<float>(dir.file("model.safetensors")),
                       doctest::Contains("num_attention_heads"), kiln::ValueError);
  kiln::models::PretrainedOptions options;
  options.n_head = 4, options.norm_eps = 1e-6, options.block_size = 32;
  const auto again = kiln::models::load_llama_safetensors<float>(dir.file("model.safetensors"), options);
  CHECK(again->config().kv_heads() == 2);
  const Tensor<index_t> tokens = random_ids(1, 9, 97, 6);
  CHECK(difference(logits_of(*again, tokens), logits_of(*model, tokens)).max_abs == 0.0);
}

TEST_CASE("GPT: a BERT-style bidirectional encoder (causal = false) gives PyTorch's logits and gradients") {
  GPTConfig c;
  c.n_layer = 2, c.n_head = 4, c.n_embd = 64, c.vocab_size = 97, c.block_size = 32, c.causal = false;
  const auto model = make_model(c);
  load_native(*model, reference().file("bert/model.safetensors"));
  check_against_torch(*model, "bert", [](const std::string& name, const kiln::io::SafeTensorsFile& ref) {
    return ref.get<double>("grad/" + name);
  });

  // Every position sees the last token in the encoder; in the causal model only the last does.
  const Tensor<index_t> a = ids({5, 9, 14, 3}, 1, 4), b = ids({5, 9, 14, 77}, 1, 4);
  const Tensor<float> la = logits_of(*model, a), lb = logits_of(*model, b);
  CHECK(difference(la.select(1, 0), lb.select(1, 0)).max_abs > 1e-4);
  c.causal = true;
  const auto causal = make_model(c);
  load_native(*causal, reference().file("bert/model.safetensors"));
  const Tensor<float> ca = logits_of(*causal, a), cb = logits_of(*causal, b);
  CHECK(difference(ca.slice(1, 0, 3), cb.slice(1, 0, 3)).max_abs == 0.0);
  CHECK(difference(ca.select(1, 3), cb.select(1, 3)).max_abs > 1e-4);
}

TEST_CASE("GPT: ALiBi with 6 heads, multi-query attention and parallel blocks gives PyTorch's logits and gradients") {
  GPTConfig c;
  c.n_layer = 2, c.n_head = 6, c.n_kv_head = 1, c.n_embd = 48, c.vocab_size = 97, c.block_size = 32;
  c.position = PositionKind::alibi, c.parallel_block = true, c.norm = NormKind::rmsnorm, c.bias = false;
  c.tie_embeddings = false;
  const auto model = make_model(c);
  load_native(*model, reference().file("alibi/model.safetensors"));
  check_against_torch(*model, "alibi", [](const std::string& name, const kiln::io::SafeTensorsFile& ref) {
    return ref.get<double>("grad/" + name);
  });
  // The paper's slopes: 8 heads 2^-1 .. 2^-8; 6 heads: those of 4 (2^-2, 2^-4, 2^-6, 2^-8), then 2^-1, 2^-3.
  const auto s8 = Model::alibi_slopes(8), s6 = Model::alibi_slopes(6);
  for (int h = 0; h < 8; ++h) CHECK(s8[static_cast<std::size_t>(h)] == doctest::Approx(std::pow(2.0, -(h + 1))));
  const std::vector<double> want6 = {0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
  for (std::size_t h = 0; h < 6; ++h) CHECK(s6[h] == doctest::Approx(want6[h]));
}

TEST_CASE("GPT: Hugging Face GPT-2 files round-trip, transposed, with or without the prefix and config.json") {
  const auto model = make_model(small_gpt2());
  const Tensor<index_t> tokens = random_ids(2, 12, 61, 4);
  const Tensor<float> want = logits_of(*model, tokens);
  const TempDir dir("roundtrip");

  kiln::models::save_gpt2_safetensors(*model, dir.file("plain.safetensors"));
  const kiln::io::SafeTensorsFile plain(dir.file("plain.safetensors"));
  CHECK(plain.contains("h.1.attn.c_attn.weight"));
  CHECK_FALSE(plain.contains("lm_head.weight"));
  CHECK(plain.metadata().at("format") == "pt");
  const Tensor<float> stored = plain.get<float>("h.1.mlp.c_fc.weight");
  CHECK(stored.shape() == Shape{32, 128});  // Conv1D: [in, out]
  CHECK(difference(stored, model->parameter("h.1.mlp.c_fc.weight").t()).max_abs == 0.0);

  // Without config.json the number of heads must be given.
  CHECK_THROWS_WITH_AS(kiln::models::load_gpt2_safetensors<float>(dir.file("plain.safetensors")),
                       doctest::Contains("PretrainedOptions::n_head"), kiln::ValueError);
  kiln::models::PretrainedOptions options;
  options.n_head = 4;
  const auto loaded = kiln::models::load_gpt2_safetensors<float>(dir.file("plain.safetensors"), options);
  CHECK(difference(logits_of(*loaded, tokens), want).max_abs == 0.0);

  const TempDir hf("hf");
  kiln::models::save_gpt2_safetensors(*model, hf.file("model.safetensors"), true);
  kiln::models::save_gpt2_config_json(model->config(), hf.file("config.json"));
  CHECK(kiln::io::SafeTensorsFile(hf.file("model.safetensors")).contains("transformer.wte.weight"));
  const auto from_hf = kiln::models::load_gpt2_safetensors<float>(hf.file("model.safetensors"));
  CHECK(from_hf->config().n_head == 4);
  CHECK(difference(logits_of(*from_hf, tokens), want).max_abs == 0.0);

  CHECK_THROWS_WITH_AS(kiln::models::save_gpt2_safetensors(*make_model(small_llama()), dir.file("x.safetensors")),
                       doctest::Contains("GPT-2's architecture"), kiln::ValueError);
}

TEST_CASE("GPT: the loaders list every missing, unexpected and mis-shaped tensor") {
  const kiln::io::SafeTensorsFile good(reference().file("gpt2/model.safetensors"));
  std::vector<std::pair<std::string, Tensor<float>>> entries;
  for (const auto& n : good.names()) {
    if (n == "transformer.h.1.mlp.c_fc.bias") continue;
    Tensor<float> t = good.get<float>(n);
    if (n == "transformer.h.1.attn.c_proj.weight") t = t.slice(1, 0, 60).contiguous();
    entries.emplace_back(n, t);
  }
  entries.emplace_back("transformer.h.0.attn.rotary", kiln::zeros<float>(Shape{3}));
  const TempDir dir("broken");
  kiln::io::save_safetensors(dir.file("broken.safetensors"), entries);
  kiln::models::PretrainedOptions options;
  options.n_head = 4;
  try {
    (void)kiln::models::load_gpt2_safetensors<float>(dir.file("broken.safetensors"), options);
    FAIL("a broken file loaded");
  } catch (const kiln::nn::StateDictError& e) {
    const std::string msg = e.what();
    MESSAGE(msg);
    CHECK(msg.find("broken.safetensors") != std::string::npos);
    CHECK(msg.find("missing (1): transformer.h.1.mlp.c_fc.bias") != std::string::npos);
    CHECK(msg.find("unexpected (1): transformer.h.0.attn.rotary") != std::string::npos);
    CHECK(msg.find("mis-shaped (1): h.1.attn.c_proj.weight (model [64, 64], stored transposed; file: "
                   "transformer.h.1.attn.c_proj.weight [64, 60])") != std::string::npos);
  }
  CHECK_THROWS_WITH_AS(kiln::models::load_llama_safetensors<float>(reference().file("gpt2/model.safetensors"), options),
                       doctest::Contains("model.embed_tokens.weight"), kiln::nn::StateDictError);
}

TEST_CASE("GPT: forward with a KV cache, in chunks, equals the full forward (bottom-right causal alignment)") {
  for (const GPTConfig& c : {small_gpt2(), small_llama(), small_alibi(), small_nopos()}) {
    const auto m = make_model(c);
    const Tensor<index_t> tokens = random_ids(2, 12, c.vocab_size, 11);
    const Tensor<float> full = logits_of(*m, tokens);
    auto cache = m->make_cache(2);
    kiln::NoGrad guard;
    std::vector<Tensor<float>> parts;
    for (const auto& [begin, end] : std::vector<std::pair<index_t, index_t>>{{0, 5}, {5, 8}, {8, 9}, {9, 12}})
      parts.push_back(m->forward(tokens.slice(1, begin, end).contiguous(), cache));
    CHECK(cache.length == 12);
    const Tensor<float> chunked = kiln::concat(parts, 1);
    const Difference d = difference(chunked, full);
    CHECK_MESSAGE(d.max_abs < 1e-5 * std::max(1.0, d.max_ref), "position kind " << static_cast<int>(c.position));
  }
}

TEST_CASE("GPT::generate: the KV cache gives the tokens of full recomputation, greedy and sampled") {
  for (const GPTConfig& c : {small_gpt2(), small_llama(), small_alibi()}) {
    const auto m = make_model(c);
    const Tensor<index_t> prompts = random_ids(2, 5, c.vocab_size, 21);
    GenerateOptions greedy;
    greedy.max_new_tokens = 20, greedy.temperature = 0.0;
    GenerateOptions full = greedy;
    full.use_cache = false;
    const auto a = m->generate(prompts, greedy), b = m->generate(prompts, full);
    CHECK(a == b);
    REQUIRE(a.size() == 2);
    CHECK(a[0].size() == 25);

    GenerateOptions sampled;
    sampled.max_new_tokens = 20, sampled.temperature = 0.9, sampled.top_k = 30, sampled.top_p = 0.95;
    sampled.repetition_penalty = 1.3, sampled.seed = 77;
    GenerateOptions sampled_full = sampled;
    sampled_full.use_cache = false;
    const auto s = m->generate(prompts, sampled);
    CHECK(s == m->generate(prompts, sampled_full));
    CHECK(s == m->generate(prompts, sampled));  // the same seed, the same tokens
    GenerateOptions other = sampled;
    other.seed = 78;
    CHECK(s != m->generate(prompts, other));
    CHECK(m->is_training());  // the mode is restored
  }
}

TEST_CASE("GPT::generate: past block_size the context slides; batches equal single prompts") {
  GPTConfig c = small_llama();
  c.block_size = 16;
  const auto m = make_model(c);
  GenerateOptions o;
  o.max_new_tokens = 15, o.temperature = 0.0;
  const Tensor<index_t> prompts = random_ids(3, 10, c.vocab_size, 5);
  const auto cached = m->generate(prompts, o);
  o.use_cache = false;
  CHECK(cached == m->generate(prompts, o));
  CHECK(cached[2].size() == 25);
  // Each prompt alone gives its row of the batch.
  o.use_cache = true;
  for (index_t b = 0; b < 3; ++b) {
    const auto row = prompts.select(0, b).contiguous().to_vector();
    CHECK(m->generate(row, o) == cached[static_cast<std::size_t>(b)]);
  }
}

TEST_CASE("GPT::generate: temperature 0 takes the argmax; stop tokens end each row") {
  const auto m = make_model(small_gpt2());
  const std::vector<index_t> prompt = {3, 14, 15, 9, 26};
  const Tensor<float> logits = logits_of(*m, ids(prompt, 1, 5));
  const Tensor<float> last = logits.select(1, 4).contiguous();
  const auto v = last.to_vector();
  const index_t argmax = static_cast<index_t>(std::max_element(v.begin(), v.end()) - v.begin());
  GenerateOptions o;
  o.max_new_tokens = 1, o.temperature = 0.0;
  const auto one = m->generate(prompt, o);
  REQUIRE(one.size() == 6);
  CHECK(std::equal(prompt.begin(), prompt.end(), one.begin()));
  CHECK(one[5] == argmax);

  o.max_new_tokens = 10;
  const auto free_run = m->generate(prompt, o);
  REQUIRE(free_run.size() == 15);
  const index_t stop = free_run[8];  // the 4th new token
  const std::size_t first = static_cast<std::size_t>(std::find(free_run.begin() + 5, free_run.end(), stop) - free_run.begin());
  o.stop_tokens = {stop};
  const auto stopped = m->generate(prompt, o);
  CHECK(stopped.size() == first + 1);
  CHECK(std::equal(stopped.begin(), stopped.end(), free_run.begin()));

  // In a batch each row stops on its own; the other keeps going.
  const Tensor<index_t> two = ids({3, 14, 15, 9, 26, 40, 41, 42, 43, 44}, 2, 5);
  o.stop_tokens = {};
  const auto rows_free = m->generate(two, o);
  o.stop_tokens = {stop};
  const auto rows = m->generate(two, o);
  CHECK(rows[0] == stopped);
  const auto it = std::find(rows_free[1].begin() + 5, rows_free[1].end(), stop);
  const std::size_t want = it == rows_free[1].end() ? 15 : static_cast<std::size_t>(it - rows_free[1].begin()) + 1;
  CHECK(rows[1].size() == want);
  CHECK(std::equal(rows[1].begin(), rows[1].end(), rows_free[1].begin()));
}

TEST_CASE("sampling rules: repetition penalty, top-k, top-p and inverse-CDF draws on hand-computed cases") {
  using namespace kiln::models;
  const double inf = std::numeric_limits<double>::infinity();
  // CTRL / HF: positive logits divided, negative multiplied, each token once.
  std::vector<double> l = {2.0, -1.0, 0.5, 3.0};
  const std::vector<index_t> previous = {0, 1, 0};
  apply_repetition_penalty(l, previous, 2.0);
  CHECK(l == std::vector<double>{1.0, -2.0, 0.5, 3.0});

  l = {1.0, 4.0, 3.0, 4.0, 0.0};
  apply_top_k(l, 2);
  CHECK(l == std::vector<double>{-inf, 4.0, -inf, 4.0, -inf});
  l = {1.0, 4.0, 3.0, 2.0};
  apply_top_k(l, 3);
  CHECK(l == std::vector<double>{-inf, 4.0, 3.0, 2.0});
  apply_top_k(l, 0);  // off
  CHECK(l == std::vector<double>{-inf, 4.0, 3.0, 2.0});

  // probabilities 0.5, 0.25, 0.125, 0.125 (log-probabilities as logits)
  const std::vector<double> base = {std::log(0.125), std::log(0.5), std::log(0.125), std::log(0.25)};
  l = base;
  apply_top_p(l, 0.5);  // the most likely alone holds 0.5
  CHECK(l == std::vector<double>{-inf, base[1], -inf, -inf});
  l = base;
  apply_top_p(l, 0.6);  // 0.5 < 0.6: the second is needed too
  CHECK(l == std::vector<double>{-inf, base[1], -inf, base[3]});
  l = base;
  apply_top_p(l, 0.8);  // 0.75 < 0.8: one of the 0.125 (the first in index order) joins
  CHECK(l == std::vector<double>{base[0], base[1], -inf, base[3]});
  l = base;
  apply_top_p(l, 0.01);  // the most likely token always stays
  CHECK(l == std::vector<double>{-inf, base[1], -inf, -inf});

  // Inverse CDF over 0.125 | 0.5 | 0.125 | 0.25: cumulative 0.125, 0.625, 0.75, 1.
  CHECK(sample_from_logits(base, 0.0) == 0);
  CHECK(sample_from_logits(base, 0.124) == 0);
  CHECK(sample_from_logits(base, 0.126) == 1);
  CHECK(sample_from_logits(base, 0.7) == 2);
  CHECK(sample_from_logits(base, 0.99) == 3);

  // choose_next_token: penalty then argmax for temperature 0; filters then the draw otherwise.
  GenerateOptions o;
  o.temperature = 0.0, o.repetition_penalty = 4.0;
  CHECK(choose_next_token({1.0, 3.0, 2.0}, std::vector<index_t>{1}, o, 0.5) == 2);  // 3/4 < 2
  o.temperature = 0.5, o.repetition_penalty = 1.0, o.top_k = 1;
  CHECK(choose_next_token({1.0, 3.0, 2.0}, {}, o, 0.999) == 1);
  // Temperature 2 on log-probabilities log(0.2), log(0.8): p ∝ √0.2, √0.8 = 1/3, 2/3.
  o.temperature = 2.0, o.top_k = 0;
  CHECK(choose_next_token({std::log(0.2), std::log(0.8)}, {}, o, 0.33) == 0);
  CHECK(choose_next_token({std::log(0.2), std::log(0.8)}, {}, o, 0.34) == 1);
}

TEST_CASE("GPT LoRA: unchanged at init, gradients only for the adapters, merging keeps the logits") {
  const auto m = make_model(small_llama());
  const Tensor<index_t> tokens = random_ids(2, 10, 61, 8);
  const Tensor<float> before = logits_of(*m, tokens);
  kiln::Rng rng(9);
  LoRAOptions lo;
  lo.rank = 4, lo.alpha = 8.0, lo.targets = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
  CHECK(m->add_lora(lo, rng) == 8);
  CHECK(difference(logits_of(*m, tokens), before).max_abs == 0.0);  // B = 0

  // Trainable: r·(in + out) per adapter; c_attn 32 -> 64, c_proj 32 -> 32, c_fc 32 -> 96, c_proj 48 -> 32.
  CHECK(m->num_parameters(true) == 2 * 4 * ((32 + 64) + (32 + 32) + (32 + 96) + (48 + 32)));
  m->zero_grad();
  const Tensor<float> loss0 = m->loss(tokens);
  loss0.backward();
  for (const auto& entry : m->named_parameters()) {
    const std::string& name = entry.first;
    const Tensor<float>& p = entry.second;
    const bool adapter = name.ends_with(".lora_A") || name.ends_with(".lora_B");
    CHECK_MESSAGE(p.grad().defined() == adapter, name);
  }
  // With B = 0 only B gets a nonzero gradient: ∂L/∂A = s·Bᵀ·(∂L/∂y)ᵀ·x = 0.
  const auto gA = m->parameter("h.0.attn.c_attn.lora_A").grad().to_vector();
  CHECK(std::all_of(gA.begin(), gA.end(), [](float x) { return x == 0.0f; }));
  CHECK(difference(m->parameter("h.0.attn.c_attn.lora_B").grad(), kiln::zeros<float>(Shape{64, 4})).max_abs > 0);

  // A few plain gradient steps on the adapters lower the loss.
  double loss = loss0.item();
  for (int step = 0; step < 8; ++step) {
    {
      kiln::NoGrad guard;
      for (auto& p : m->parameters())
        if (p.tracks_grad() && p.grad().defined()) p.assign(p - p.grad() * 0.5f);
    }
    m->zero_grad();
    const Tensor<float> l = m->loss(tokens);
    l.backward();
    loss = l.item();
  }
  CHECK(loss < loss0.item() - 0.05);

  const Tensor<float> adapted = logits_of(*m, tokens);
  CHECK(difference(adapted, before).max_abs > 1e-3);
  CHECK(m->merge_lora() == 8);
  const Difference merged = difference(logits_of(*m, tokens), adapted);
  MESSAGE("LoRA merge: logits max abs diff " << merged.max_abs << " (max |logit| " << merged.max_ref << ")");
  CHECK(merged.max_abs < 1e-5 * std::max(1.0, merged.max_ref));
  CHECK(m->num_parameters(true) == 0);
  CHECK(m->merge_lora() == 0);

  // A GPT-2 model with an unmerged adapter cannot be saved in HF's layout (the adapter would be lost).
  const auto g = make_model(small_gpt2());
  g->add_lora(LoRAOptions{}, rng);
  const TempDir dir("lora");
  CHECK_THROWS_WITH_AS(kiln::models::save_gpt2_safetensors(*g, dir.file("m.safetensors")),
                       doctest::Contains("merge_lora"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(g->add_lora(LoRAOptions{4, 8.0, {"attn.q_proj"}}, rng), doctest::Contains("unknown target"),
                       kiln::ValueError);
}

TEST_CASE("GPT: bad inputs get clear errors; dropout acts in training only") {
  const auto m = make_model(small_gpt2());
  CHECK_THROWS_WITH_AS(m->forward(ids({1, 2, 61}, 1, 3)), doctest::Contains("61"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(m->forward(random_ids(1, 33, 61, 1)), doctest::Contains("block_size = 32"), kiln::ValueError);
  CHECK_THROWS_AS(m->forward(kiln::from_vector<index_t>({1, 2, 3})), kiln::ShapeError);
  CHECK_THROWS_AS(m->loss(ids({1, 2}, 2, 1)), kiln::ShapeError);
  GenerateOptions o;
  o.top_p = 0.0;
  CHECK_THROWS_WITH_AS(m->generate(std::vector<index_t>{1}, o), doctest::Contains("top_p"), kiln::ValueError);
  auto cache = m->make_cache(1, 4);
  {
    kiln::NoGrad guard;
    m->forward(ids({1, 2, 3}, 1, 3), cache);
    CHECK_THROWS_WITH_AS(m->forward(ids({1, 2}, 1, 2), cache), doctest::Contains("holds 4 positions"),
                         kiln::ValueError);
  }
  GPTConfig enc = small_gpt2();
  enc.causal = false;
  CHECK_THROWS_WITH_AS(make_model(enc)->generate(std::vector<index_t>{1}, GenerateOptions{}),
                       doctest::Contains("causal"), kiln::ValueError);

  GPTConfig c = small_gpt2();
  c.dropout = 0.2;
  const auto d = make_model(c);
  const auto plain = make_model(small_gpt2());  // the same weights: dropout draws nothing at init
  const Tensor<index_t> tokens = random_ids(1, 8, 61, 2);
  d->eval();
  CHECK(difference(logits_of(*d, tokens), logits_of(*plain, tokens)).max_abs == 0.0);
  d->train();
  CHECK(difference(logits_of(*d, tokens), logits_of(*plain, tokens)).max_abs > 1e-3);
}
