// Tests of include/kiln/ops/attention.hpp: hand values, the forward against a double loop (causal
// or not, Tq != Tk, several key/query blocks, strided inputs, [B, T, D] inputs), gradcheck and
// gradgradcheck in float64, the fused backward against the composed create_graph gradients across
// block boundaries, empty inputs, errors, and outputs and gradients against PyTorch
// (tests/torch/norm_reference.py writes softmax(QKᵀ·scale + mask)V; torch 1.13 has no SDPA).
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>
// After kiln.hpp: gradcheck.hpp's inline functions need the CPU backend defined.
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/ops/attention.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;

namespace {

using Inputs = std::vector<Tensor<double>>;

template <class T>
Tensor<T> rnd(const Shape& s, std::uint64_t seed, double scale = 1.0) {
  kiln::Rng rng(seed);
  return kiln::randn<T>(s, rng, T(0), static_cast<T>(scale));
}

template <class A, class B>
double max_rel_error(const Tensor<A>& a, const Tensor<B>& b) {
  REQUIRE(a.shape() == b.shape());
  const auto va = a.to_vector();
  const auto vb = b.to_vector();
  double e = 0;
  for (std::size_t i = 0; i < va.size(); ++i)
    e = std::max(e, std::fabs(static_cast<double>(va[i]) - static_cast<double>(vb[i])) /
                        (1.0 + std::fabs(static_cast<double>(vb[i]))));
  return e;
}

// Attention of q [BH, Tq, D], k, v [BH, Tk, D] (any leading dims, flattened) by the definition,
// in double.
template <class T>
Tensor<double> naive_attention(const Tensor<T>& q_in, const Tensor<T>& k_in, const Tensor<T>& v_in, bool causal,
                               double scale) {
  const auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const index_t Tq = q.size(-2), Tk = k.size(-2), D = q.size(-1), BH = q.numel() / std::max<index_t>(Tq * D, 1);
  Tensor<double> out(q.shape());
  std::vector<double> s(static_cast<std::size_t>(Tk));
  for (index_t bh = 0; bh < BH; ++bh)
    for (index_t i = 0; i < Tq; ++i) {
      const index_t seen = causal ? std::min(i + 1, Tk) : Tk;
      double m = -std::numeric_limits<double>::infinity(), total = 0;
      for (index_t j = 0; j < seen; ++j) {
        double dot = 0;
        for (index_t d = 0; d < D; ++d)
          dot += static_cast<double>(q.data()[(bh * Tq + i) * D + d]) * static_cast<double>(k.data()[(bh * Tk + j) * D + d]);
        s[static_cast<std::size_t>(j)] = dot * scale;
        m = std::max(m, s[static_cast<std::size_t>(j)]);
      }
      for (index_t j = 0; j < seen; ++j) total += std::exp(s[static_cast<std::size_t>(j)] - m);
      for (index_t j = 0; j < seen; ++j) {
        const double p = std::exp(s[static_cast<std::size_t>(j)] - m) / total;
        for (index_t d = 0; d < D; ++d)
          out.data()[(bh * Tq + i) * D + d] += p * static_cast<double>(v.data()[(bh * Tk + j) * D + d]);
      }
    }
  return out;
}

void check_grad(const std::function<Tensor<double>(const Inputs&)>& f, const Inputs& inputs, bool second = true) {
  const auto r = kiln::gradcheck(f, inputs);
  INFO(r.message);
  CHECK(r.ok);
  if (second) {
    const auto r2 = kiln::gradgradcheck(f, inputs);
    INFO(r2.message);
    CHECK(r2.ok);
  }
}

}  // namespace

TEST_CASE("attention by hand") {
  // One head, D = 1 (scale 1): q = [1, 0], k = [1, 0], v = [2, 4].
  const auto q = kiln::from_vector<float>({1, 0}, Shape{1, 1, 2, 1});
  const auto k = kiln::from_vector<float>({1, 0}, Shape{1, 1, 2, 1});
  const auto v = kiln::from_vector<float>({2, 4}, Shape{1, 1, 2, 1});
  const double e = std::exp(1.0);
  // Query 0 scores [1, 0] -> weights [e, 1] / (e + 1); query 1 scores [0, 0] -> [1/2, 1/2].
  auto out = kiln::scaled_dot_product_attention(q, k, v).to_vector();
  CHECK(out[0] == doctest::Approx((2 * e + 4) / (e + 1)));
  CHECK(out[1] == doctest::Approx(3.0));
  // Causal: query 0 sees key 0 only.
  out = kiln::scaled_dot_product_attention(q, k, v, true).to_vector();
  CHECK(out[0] == doctest::Approx(2.0));
  CHECK(out[1] == doctest::Approx(3.0));
  // scale 0: uniform weights over the visible keys.
  out = kiln::scaled_dot_product_attention(q, k, v, false, 0.0).to_vector();
  CHECK(out[0] == doctest::Approx(3.0));
}

TEST_CASE("attention forward against a double loop") {
  struct Case {
    Shape q, kv;
    bool causal;
  };
  // Several query and key blocks of 64 (T = 70, 130), Tq != Tk both ways, [B, T, D] inputs.
  const std::vector<Case> cases = {{{2, 3, 5, 8}, {2, 3, 5, 8}, false},   {{2, 3, 5, 8}, {2, 3, 5, 8}, true},
                                   {{1, 2, 70, 16}, {1, 2, 70, 16}, true}, {{1, 1, 130, 4}, {1, 1, 67, 4}, false},
                                   {{1, 2, 3, 4}, {1, 2, 9, 4}, true},     {{2, 9, 4}, {2, 3, 4}, true},
                                   {{2, 70, 6}, {2, 70, 6}, false}};
  std::uint64_t seed = 1;
  for (const auto& c : cases) {
    INFO("q " << kiln::to_string(c.q) << ", k/v " << kiln::to_string(c.kv) << ", causal " << c.causal);
    Shape v_shape = c.kv;
    const auto q = rnd<float>(c.q, seed++), k = rnd<float>(c.kv, seed++), v = rnd<float>(v_shape, seed++);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.q.dims[c.q.ndim - 1]));
    const auto want = naive_attention(q, k, v, c.causal, scale);
    CHECK(max_rel_error(kiln::scaled_dot_product_attention(q, k, v, c.causal), want) <= 2e-5);
    // A custom scale.
    CHECK(max_rel_error(kiln::scaled_dot_product_attention(q, k, v, c.causal, 0.3),
                        naive_attention(q, k, v, c.causal, 0.3)) <= 2e-5);
  }
  // Strided inputs: heads taken out of a [B, T, H, D] layout, as multi-head attention does.
  const auto qt = rnd<float>({2, 6, 3, 4}, 50), kt = rnd<float>({2, 6, 3, 4}, 51), vt = rnd<float>({2, 6, 3, 4}, 52);
  const auto q = qt.transpose(1, 2), k = kt.transpose(1, 2), v = vt.transpose(1, 2);
  CHECK(!q.is_contiguous());
  CHECK(max_rel_error(kiln::scaled_dot_product_attention(q, k, v, true), naive_attention(q, k, v, true, 0.5)) <= 2e-5);
  // The composed path (create_graph reference) agrees with the kernel.
  CHECK(max_rel_error(kiln::detail::attention_composed(q, k, v, true, 0.5f),
                      kiln::scaled_dot_product_attention(q, k, v, true)) <= 2e-5);
}

TEST_CASE("attention gradcheck and gradgradcheck") {
  SUBCASE("[B, H, T, D], causal or not") {
    for (bool causal : {false, true})
      check_grad([causal](const Inputs& v) { return kiln::scaled_dot_product_attention(v[0], v[1], v[2], causal); },
                 {rnd<double>({1, 2, 3, 2}, 1), rnd<double>({1, 2, 3, 2}, 2), rnd<double>({1, 2, 3, 2}, 3)});
  }
  SUBCASE("Tq != Tk, custom scale, [B, T, D]") {
    check_grad([](const Inputs& v) { return kiln::scaled_dot_product_attention(v[0], v[1], v[2], true, 0.7); },
               {rnd<double>({2, 4, 2}, 4), rnd<double>({2, 3, 2}, 5), rnd<double>({2, 3, 2}, 6)});
    check_grad([](const Inputs& v) { return kiln::scaled_dot_product_attention(v[0], v[1], v[2], false); },
               {rnd<double>({1, 2, 3}, 7), rnd<double>({1, 4, 3}, 8), rnd<double>({1, 4, 3}, 9)});
  }
  SUBCASE("strided inputs") {
    check_grad([](const Inputs& v) {
      return kiln::scaled_dot_product_attention(v[0].transpose(1, 2), v[1].transpose(1, 2), v[2].transpose(1, 2), true);
    }, {rnd<double>({1, 3, 2, 2}, 10), rnd<double>({1, 3, 2, 2}, 11), rnd<double>({1, 3, 2, 2}, 12)});
  }
  SUBCASE("size-1 dims: one query, one key, D = 1") {
    check_grad([](const Inputs& v) { return kiln::scaled_dot_product_attention(v[0], v[1], v[2], true); },
               {rnd<double>({1, 1, 1, 1}, 13), rnd<double>({1, 1, 1, 1}, 14), rnd<double>({1, 1, 1, 1}, 15)});
    check_grad([](const Inputs& v) { return kiln::scaled_dot_product_attention(v[0], v[1], v[2]); },
               {rnd<double>({1, 1, 3}, 16), rnd<double>({1, 2, 3}, 17), rnd<double>({1, 2, 3}, 18)});
  }
}

TEST_CASE("fused backward across blocks equals the composed gradients; only needed ones are returned") {
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    auto q = rnd<float>({1, 2, 70, 8}, 1).requires_grad();
    auto k = rnd<float>({1, 2, 70, 8}, 2).requires_grad();
    auto v = rnd<float>({1, 2, 70, 8}, 3).requires_grad();
    const auto seed = rnd<float>({1, 2, 70, 8}, 4);
    auto out = kiln::scaled_dot_product_attention(q, k, v, causal);
    const auto plain = kiln::grad<float, kiln::cpu>({out}, {q, k, v}, {seed});
    out = kiln::scaled_dot_product_attention(q, k, v, causal);
    const auto composed = kiln::grad<float, kiln::cpu>({out}, {q, k, v}, {seed}, false, true);
    for (int i = 0; i < 3; ++i) {
      CHECK(!plain[static_cast<std::size_t>(i)].tracks_grad());
      CHECK(composed[static_cast<std::size_t>(i)].tracks_grad());
      CHECK(max_rel_error(plain[static_cast<std::size_t>(i)], composed[static_cast<std::size_t>(i)].detach()) <= 1e-4);
    }
    // Only v tracked: its gradient alone, the same values.
    auto v2 = v.detach().clone().requires_grad();
    const auto out2 = kiln::scaled_dot_product_attention(q.detach(), k.detach(), v2, causal);
    CHECK(max_rel_error(kiln::grad<float, kiln::cpu>({out2}, {v2}, {seed})[0], plain[2]) <= 1e-6);
  }
}

TEST_CASE("attention on empty inputs") {
  auto q = Tensor<float>(Shape{1, 2, 0, 4}).requires_grad();
  auto k = rnd<float>({1, 2, 3, 4}, 1).requires_grad();
  auto v = rnd<float>({1, 2, 3, 4}, 2).requires_grad();
  const auto out = kiln::scaled_dot_product_attention(q, k, v, true);
  CHECK(out.shape() == Shape{1, 2, 0, 4});
  const auto g = kiln::grad<float, kiln::cpu>({out}, {q, k, v}, {Tensor<float>(Shape{1, 2, 0, 4})});
  CHECK(g[0].shape() == Shape{1, 2, 0, 4});
  CHECK(g[1].to_vector() == std::vector<float>(24, 0.0f));  // no query reads the keys
  CHECK(g[2].to_vector() == std::vector<float>(24, 0.0f));
}

TEST_CASE("attention errors name the shapes") {
  const auto q = rnd<float>({1, 2, 3, 4}, 1);
  CHECK_THROWS_WITH_AS(kiln::scaled_dot_product_attention(q, rnd<float>({1, 2, 3, 5}, 2), rnd<float>({1, 2, 3, 5}, 3)),
                       doctest::Contains("k [1, 2, 3, 5]"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::scaled_dot_product_attention(q, rnd<float>({1, 2, 3, 4}, 2), rnd<float>({1, 2, 2, 4}, 3)),
                       doctest::Contains("same number of keys"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::scaled_dot_product_attention(q, rnd<float>({1, 3, 3, 4}, 2), rnd<float>({1, 3, 3, 4}, 3)),
                       doctest::Contains("leading"), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::scaled_dot_product_attention(q, rnd<float>({2, 3, 4}, 2), rnd<float>({2, 3, 4}, 3)),
                  kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::scaled_dot_product_attention(q, Tensor<float>(Shape{1, 2, 0, 4}), Tensor<float>(Shape{1, 2, 0, 4})),
                       doctest::Contains("at least one key"), kiln::ValueError);
}

TEST_CASE("attention outputs and gradients match PyTorch") {
  namespace fs = std::filesystem;
  struct Case {
    std::string name, description;
    Shape q, kv;
    bool causal;
    std::optional<double> scale;
  };
  const std::vector<Case> cases = {
      {"full", "op=attention causal=0", {2, 2, 5, 4}, {2, 2, 5, 4}, false, std::nullopt},
      {"causal", "op=attention causal=1", {1, 3, 6, 8}, {1, 3, 6, 8}, true, std::nullopt},
      {"causal_long", "op=attention causal=1", {1, 1, 70, 4}, {1, 1, 70, 4}, true, std::nullopt},
      {"cross_scale", "op=attention causal=1 scale=0.4", {2, 7, 3}, {2, 4, 3}, true, 0.4},
  };
  std::vector<std::pair<std::string, Tensor<float>>> entries;
  std::map<std::string, std::string> metadata;
  struct Result {
    Tensor<float> out;
    std::vector<Tensor<float>> grads;
  };
  std::vector<Result> results;
  std::uint64_t seed = 100;
  for (const auto& c : cases) {
    metadata[c.name] = c.description + " grads=q,k,v";
    auto q = rnd<float>(c.q, seed++).requires_grad();
    auto k = rnd<float>(c.kv, seed++).requires_grad();
    auto v = rnd<float>(c.kv, seed++).requires_grad();
    const auto out = kiln::scaled_dot_product_attention(q, k, v, c.causal, c.scale);
    const auto s = rnd<float>(out.shape(), seed++);
    results.push_back({out.detach(), kiln::grad<float, kiln::cpu>({out}, {q, k, v}, {s})});
    entries.emplace_back(c.name + "/q", q.detach());
    entries.emplace_back(c.name + "/k", k.detach());
    entries.emplace_back(c.name + "/v", v.detach());
    entries.emplace_back(c.name + "/seed", s);
  }
  const std::string stem = (fs::temp_directory_path() / ("kiln_attention_" + std::to_string(::getpid()))).string();
  const std::string in = stem + "_in.safetensors", out = stem + "_out.safetensors";
  kiln::io::save_safetensors(in, entries, metadata, kiln::io::DType::F32);
  const int status =
      kiln::test::run_torch_script("norm_reference.py", kiln::test::shell_quote(in) + " " + kiln::test::shell_quote(out));
  fs::remove(in);
  REQUIRE_MESSAGE(status == 0, "the PyTorch reference script failed (see its output above)");
  const kiln::io::SafeTensorsFile ref(out);
  fs::remove(out);
  const char* names[] = {"q", "k", "v"};
  for (std::size_t i = 0; i < cases.size(); ++i) {
    INFO("case " << cases[i].name);
    CHECK(max_rel_error(results[i].out, ref.get<double>(cases[i].name + "/out")) <= 1e-4);
    for (int j = 0; j < 3; ++j) {
      INFO("gradient of " << names[j]);
      CHECK(max_rel_error(results[i].grads[static_cast<std::size_t>(j)],
                          ref.get<double>(cases[i].name + "/grad/" + names[j])) <= 2e-4);
    }
  }
}
