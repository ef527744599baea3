// Tests of include/kiln/nn/norm.hpp, nn/embedding.hpp and nn/attention.hpp: PyTorch's parameter and
// buffer names and initial values, forward equal to the functional ops, BatchNorm's train/eval
// behaviour with running statistics against hand-computed values (momentum, cumulative average,
// no tracking), Embedding's N(0, 1) initialisation and lookups, and MultiheadSelfAttention against
// a double loop, its causality, and PyTorch (nanoGPT's layout, tests/torch/norm_reference.py).
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/nn/attention.hpp>
#include <kiln/nn/embedding.hpp>
#include <kiln/nn/norm.hpp>

#include "../support/torch_reference.hpp"

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;

namespace {

template <class T = float>
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

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor<float>>>& named) {
  std::vector<std::string> out;
  for (const auto& [name, t] : named) out.push_back(name);
  return out;
}

// Per-channel batch mean and unbiased variance of x [N, C, *], in double.
void channel_statistics(const Tensor<float>& x, std::vector<double>& mean, std::vector<double>& unbiased_var) {
  const index_t N = x.size(0), C = x.size(1), HW = x.numel() / (N * C);
  const auto v = x.to_vector();
  mean.assign(static_cast<std::size_t>(C), 0.0);
  unbiased_var.assign(static_cast<std::size_t>(C), 0.0);
  for (index_t c = 0; c < C; ++c) {
    double m = 0, sq = 0;
    for (index_t n = 0; n < N; ++n)
      for (index_t i = 0; i < HW; ++i) m += v[static_cast<std::size_t>((n * C + c) * HW + i)];
    m /= static_cast<double>(N * HW);
    for (index_t n = 0; n < N; ++n)
      for (index_t i = 0; i < HW; ++i) {
        const double d = v[static_cast<std::size_t>((n * C + c) * HW + i)] - m;
        sq += d * d;
      }
    mean[static_cast<std::size_t>(c)] = m;
    unbiased_var[static_cast<std::size_t>(c)] = sq / static_cast<double>(N * HW - 1);
  }
}

void check_close(const Tensor<float>& got, const std::vector<double>& want, double tol) {
  const auto g = got.to_vector();
  REQUIRE(g.size() == want.size());
  for (std::size_t i = 0; i < g.size(); ++i) CHECK(std::fabs(static_cast<double>(g[i]) - want[i]) <= tol * (1 + std::fabs(want[i])));
}

}  // namespace

TEST_CASE("LayerNorm, RMSNorm and GroupNorm: names, initial values, forward") {
  kiln::nn::LayerNorm ln(Shape{3, 4});
  CHECK(names_of(ln.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  CHECK(ln.weight().shape() == Shape{3, 4});
  CHECK(ln.weight().to_vector() == std::vector<float>(12, 1.0f));
  CHECK(ln.bias().to_vector() == std::vector<float>(12, 0.0f));
  const auto x = rnd({2, 3, 4}, 1);
  {
    kiln::NoGrad guard;
    ln.weight().assign(rnd({3, 4}, 2));
    ln.bias().assign(rnd({3, 4}, 3));
  }
  CHECK(max_rel_error(ln(x), kiln::layer_norm(x, Shape{3, 4}, ln.weight(), ln.bias())) == 0.0);
  CHECK(kiln::nn::LayerNorm(4, 1e-5, false).num_parameters() == 0);
  CHECK(names_of(kiln::nn::LayerNorm(4, 1e-5, true, false).named_parameters()) == std::vector<std::string>{"weight"});
  CHECK_THROWS_AS(kiln::nn::LayerNorm(Shape{}), kiln::ShapeError);

  kiln::nn::RMSNorm rms(4);
  CHECK(names_of(rms.named_parameters()) == std::vector<std::string>{"weight"});
  CHECK(max_rel_error(rms(x), kiln::rms_norm(x, Shape{4}, rms.weight())) == 0.0);
  CHECK(kiln::nn::RMSNorm(4, 1e-3, false).num_parameters() == 0);

  kiln::nn::GroupNorm gn(2, 4);
  CHECK(names_of(gn.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  CHECK(gn.weight().shape() == Shape{4});
  const auto x4 = rnd({2, 4, 3, 3}, 4);
  CHECK(max_rel_error(gn(x4), kiln::group_norm(x4, 2, gn.weight(), gn.bias())) == 0.0);
  CHECK_THROWS_WITH_AS(kiln::nn::GroupNorm(3, 4), doctest::Contains("divisible"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(gn(rnd({2, 3, 3}, 5)), doctest::Contains("[2, 3, 3]"), kiln::ShapeError);
  // Gradients reach the parameters.
  kiln::sum(ln(x)).backward();
  CHECK(ln.weight().grad().defined());
  CHECK(ln.bias().grad().defined());
}

TEST_CASE("BatchNorm1d: names, momentum updates over several steps, eval mode") {
  kiln::nn::BatchNorm1d bn(3);
  CHECK(names_of(bn.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  CHECK(bn.state_dict().keys() ==
        std::vector<std::string>{"weight", "bias", "running_mean", "running_var", "num_batches_tracked"});
  CHECK(bn.num_batches_tracked().shape() == Shape{});
  std::vector<double> rm(3, 0.0), rv(3, 1.0);
  for (int step = 0; step < 3; ++step) {
    const auto x = rnd({5, 3, 2}, 10 + static_cast<std::uint64_t>(step), 1.0 + step);
    std::vector<double> m, v;
    channel_statistics(x, m, v);
    for (std::size_t c = 0; c < 3; ++c) {
      rm[c] = 0.9 * rm[c] + 0.1 * m[c];
      rv[c] = 0.9 * rv[c] + 0.1 * v[c];
    }
    const auto y = bn(x);
    // Training output: the batch statistics (weight 1, bias 0).
    CHECK(max_rel_error(y, kiln::batch_norm(x, Tensor<float>(), Tensor<float>(), Tensor<float>(), Tensor<float>(), true)) <=
          1e-6);
  }
  check_close(bn.running_mean(), rm, 1e-5);
  check_close(bn.running_var(), rv, 1e-5);
  CHECK(bn.num_batches_tracked().item() == 3.0f);

  // Eval: the running statistics, nothing updated.
  bn.eval();
  const auto x = rnd({4, 3}, 20);
  const auto y = bn(x).to_vector();
  const auto xv = x.to_vector();
  for (index_t n = 0; n < 4; ++n)
    for (std::size_t c = 0; c < 3; ++c) {
      const std::size_t i = static_cast<std::size_t>(n) * 3 + c;
      CHECK(y[i] == doctest::Approx((xv[i] - rm[c]) / std::sqrt(rv[c] + 1e-5)).epsilon(1e-5));
    }
  check_close(bn.running_mean(), rm, 1e-5);
  CHECK(bn.num_batches_tracked().item() == 3.0f);

  bn.reset_running_stats();
  CHECK(bn.running_mean().to_vector() == std::vector<float>(3, 0.0f));
  CHECK(bn.running_var().to_vector() == std::vector<float>(3, 1.0f));
  CHECK(bn.num_batches_tracked().item() == 0.0f);

  CHECK_THROWS_WITH_AS(bn(rnd({2, 3, 2, 2}, 1)), doctest::Contains("2-d or 3-d"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(bn(rnd({2, 4}, 1)), doctest::Contains("expected 3 channels"), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::nn::BatchNorm1d(3, 1e-5, 1.5), kiln::ValueError);
}

TEST_CASE("BatchNorm2d: cumulative average (momentum nullopt), no tracking, gradients") {
  kiln::nn::BatchNorm2d bn(2, 1e-5, std::nullopt);
  std::vector<double> sum_m(2, 0.0), sum_v(2, 0.0);
  for (int step = 0; step < 4; ++step) {
    const auto x = rnd({3, 2, 2, 2}, 30 + static_cast<std::uint64_t>(step), 0.5 + step);
    std::vector<double> m, v;
    channel_statistics(x, m, v);
    for (std::size_t c = 0; c < 2; ++c) {
      sum_m[c] += m[c];
      sum_v[c] += v[c];
    }
    bn(x);
  }
  // Factor 1/k at step k: the running statistics are the plain averages of the batches' (the
  // initial values weigh nothing since the first factor is 1).
  check_close(bn.running_mean(), {sum_m[0] / 4, sum_m[1] / 4}, 1e-5);
  check_close(bn.running_var(), {sum_v[0] / 4, sum_v[1] / 4}, 1e-5);
  CHECK(bn.num_batches_tracked().item() == 4.0f);
  CHECK_THROWS_WITH_AS(bn(rnd({3, 2, 2}, 1)), doctest::Contains("4-d"), kiln::ShapeError);

  // Without running statistics: no buffers, batch statistics in eval mode too.
  kiln::nn::BatchNorm2d plain(2, 1e-5, 0.1, false, false);
  CHECK(plain.num_parameters() == 0);
  CHECK(plain.state_dict().size() == 0);
  plain.eval();
  const auto x = rnd({3, 2, 2, 2}, 40);
  CHECK(max_rel_error(plain(x), kiln::batch_norm(x, Tensor<float>(), Tensor<float>(), Tensor<float>(), Tensor<float>(),
                                                 true)) <= 1e-6);

  // Training gradients reach the affine parameters.
  kiln::nn::BatchNorm2d affine(2);
  auto xt = rnd({3, 2, 2, 2}, 41).requires_grad();
  kiln::sum(Tensor<float>(affine(xt) * rnd({3, 2, 2, 2}, 42))).backward();
  CHECK(affine.weight().grad().shape() == Shape{2});
  CHECK(affine.bias().grad().shape() == Shape{2});
  CHECK(xt.grad().shape() == Shape{3, 2, 2, 2});
}

TEST_CASE("Embedding: N(0, 1) initialisation, lookups and gradients") {
  kiln::Rng rng(7);
  kiln::nn::Embedding emb(200, 32, rng);
  CHECK(names_of(emb.named_parameters()) == std::vector<std::string>{"weight"});
  CHECK(emb.weight().shape() == Shape{200, 32});
  const auto w = emb.weight().to_vector();
  double mean = 0, sq = 0;
  for (float v : w) mean += v;
  mean /= static_cast<double>(w.size());
  for (float v : w) sq += (v - mean) * (v - mean);
  const double std_dev = std::sqrt(sq / static_cast<double>(w.size()));
  CHECK(std::fabs(mean) < 0.04);  // 6400 draws: the standard error of the mean is 0.0125
  CHECK(std::fabs(std_dev - 1.0) < 0.04);
  kiln::Rng same(7);
  CHECK(kiln::nn::Embedding(200, 32, same).weight().to_vector() == w);

  const auto ids = kiln::from_vector<index_t>({3, 0, 3}, Shape{1, 3});
  const auto y = emb(ids);
  CHECK(y.shape() == Shape{1, 3, 32});
  for (index_t d = 0; d < 32; ++d) {
    CHECK(y.at({0, 0, d}) == emb.weight().at({3, d}));
    CHECK(y.at({0, 1, d}) == emb.weight().at({0, d}));
  }
  kiln::sum(y).backward();
  const auto g = emb.weight().grad();
  CHECK(g.at({3, 0}) == 2.0f);  // looked up twice
  CHECK(g.at({0, 0}) == 1.0f);
  CHECK(g.at({1, 0}) == 0.0f);
  CHECK_THROWS_AS(emb(kiln::from_vector<index_t>({200})), kiln::IndexError);
}

namespace {

// Multi-head self-attention by the definition, in double, from the module's weights.
std::vector<double> naive_self_attention(const Tensor<float>& x, const kiln::nn::MultiheadSelfAttention& m) {
  const index_t B = x.size(0), T = x.size(1), E = x.size(2), H = m.num_heads(), hd = E / H;
  const auto wa = m.c_attn().weight().to_vector(), ba = m.c_attn().bias().to_vector();
  const auto wp = m.c_proj().weight().to_vector(), bp = m.c_proj().bias().to_vector();
  const auto xv = x.to_vector();
  std::vector<double> out(static_cast<std::size_t>(B * T * E));
  for (index_t b = 0; b < B; ++b) {
    std::vector<double> qkv(static_cast<std::size_t>(T * 3 * E)), y(static_cast<std::size_t>(T * E));
    for (index_t t = 0; t < T; ++t)
      for (index_t o = 0; o < 3 * E; ++o) {
        double s = ba[static_cast<std::size_t>(o)];
        for (index_t i = 0; i < E; ++i)
          s += wa[static_cast<std::size_t>(o * E + i)] * xv[static_cast<std::size_t>((b * T + t) * E + i)];
        qkv[static_cast<std::size_t>(t * 3 * E + o)] = s;
      }
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < T; ++i) {
        const index_t seen = m.causal() ? i + 1 : T;
        std::vector<double> p(static_cast<std::size_t>(seen));
        double mx = -1e300, total = 0;
        for (index_t j = 0; j < seen; ++j) {
          double s = 0;
          for (index_t d = 0; d < hd; ++d)
            s += qkv[static_cast<std::size_t>(i * 3 * E + h * hd + d)] * qkv[static_cast<std::size_t>(j * 3 * E + E + h * hd + d)];
          p[static_cast<std::size_t>(j)] = s / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, p[static_cast<std::size_t>(j)]);
        }
        for (auto& v : p) total += (v = std::exp(v - mx));
        for (index_t d = 0; d < hd; ++d) {
          double s = 0;
          for (index_t j = 0; j < seen; ++j)
            s += p[static_cast<std::size_t>(j)] / total * qkv[static_cast<std::size_t>(j * 3 * E + 2 * E + h * hd + d)];
          y[static_cast<std::size_t>(i * E + h * hd + d)] = s;
        }
      }
    for (index_t t = 0; t < T; ++t)
      for (index_t o = 0; o < E; ++o) {
        double s = bp[static_cast<std::size_t>(o)];
        for (index_t i = 0; i < E; ++i) s += wp[static_cast<std::size_t>(o * E + i)] * y[static_cast<std::size_t>(t * E + i)];
        out[static_cast<std::size_t>((b * T + t) * E + o)] = s;
      }
  }
  return out;
}

}  // namespace

TEST_CASE("MultiheadSelfAttention: names, against a double loop, causality") {
  kiln::Rng rng(3);
  kiln::nn::MultiheadSelfAttention attn(8, 2, true, rng);
  CHECK(names_of(attn.named_parameters()) ==
        std::vector<std::string>{"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"});
  CHECK(attn.c_attn().weight().shape() == Shape{24, 8});
  const auto x = rnd({2, 5, 8}, 4);
  const auto y = attn(x);
  CHECK(y.shape() == Shape{2, 5, 8});
  check_close(y, naive_self_attention(x, attn), 1e-5);
  // Changing the last position changes no earlier output.
  auto x2 = x.clone();
  x2.select(1, 4).fill_(3.0f);
  const auto y2 = attn(x2);
  CHECK(max_rel_error(y2.slice(1, 0, 4), y.slice(1, 0, 4)) == 0.0);
  CHECK(max_rel_error(y2.slice(1, 4, 5), y.slice(1, 4, 5)) > 1e-3);

  kiln::nn::MultiheadSelfAttention full(8, 4, false, false, rng);
  CHECK(names_of(full.named_parameters()) == std::vector<std::string>{"c_attn.weight", "c_proj.weight"});
  CHECK_THROWS_AS(kiln::nn::MultiheadSelfAttention(6, 4, false, rng), kiln::ValueError);
  CHECK_THROWS_WITH_AS(attn(rnd({2, 5, 6}, 1)), doctest::Contains("[2, 5, 6]"), kiln::ShapeError);
}

TEST_CASE("MultiheadSelfAttention output and gradients match PyTorch (nanoGPT layout)") {
  namespace fs = std::filesystem;
  kiln::Rng rng(11);
  kiln::nn::MultiheadSelfAttention attn(12, 3, true, rng);
  auto x = rnd({2, 6, 12}, 12).requires_grad();
  const auto y = attn(x);
  const auto seed = rnd(y.shape(), 13);
  std::vector<Tensor<float>> wrt{x};
  std::vector<std::pair<std::string, Tensor<float>>> entries{{"mhsa/x", x.detach()}, {"mhsa/seed", seed}};
  std::string grads = "x";
  for (const auto& [name, p] : attn.named_parameters()) {
    wrt.push_back(p);
    entries.emplace_back("mhsa/" + name, p.detach());
    grads += "," + name;
  }
  const auto g = kiln::grad<float, kiln::cpu>({y}, wrt, {seed});
  const std::string stem = (fs::temp_directory_path() / ("kiln_nn_norm_" + std::to_string(::getpid()))).string();
  const std::string in = stem + "_in.safetensors", out = stem + "_out.safetensors";
  kiln::io::save_safetensors(in, entries, {{"mhsa", "op=self_attention heads=3 causal=1 grads=" + grads}},
                             kiln::io::DType::F32);
  const int status =
      kiln::test::run_torch_script("norm_reference.py", kiln::test::shell_quote(in) + " " + kiln::test::shell_quote(out));
  fs::remove(in);
  REQUIRE_MESSAGE(status == 0, "the PyTorch reference script failed (see its output above)");
  const kiln::io::SafeTensorsFile ref(out);
  fs::remove(out);
  CHECK(max_rel_error(y, ref.get<double>("mhsa/out")) <= 1e-4);
  CHECK(max_rel_error(g[0], ref.get<double>("mhsa/grad/x")) <= 2e-4);
  std::size_t i = 1;
  for (const auto& [name, p] : attn.named_parameters()) {
    const std::string parameter_name = name;
    INFO(parameter_name);
    CHECK(max_rel_error(g[i++], ref.get<double>("mhsa/grad/" + name)) <= 2e-4);
  }
}
