// Tests of include/kiln/nn/conv.hpp (and the modules of include/kiln/nn/pool.hpp): parameter names and
// shapes, forward against the functional ops, gradients reaching the parameters, argument errors,
// and the default initialisation of Conv2d/ConvTranspose2d against its bounds and against freshly
// made torch.nn modules (tests/torch/conv_reference.py).
#include <doctest/doctest.h>

#include <kiln/kiln.hpp>
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/nn/conv.hpp>
#include <kiln/nn/pool.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

using kiln::index_t;
using kiln::Shape;
using kiln::Size2d;
using kiln::Tensor;
namespace nn = kiln::nn;

namespace {

template <class T>
Tensor<T> rnd(Shape s, std::uint64_t seed) {
  kiln::Rng rng(seed);
  return kiln::rand<T>(s, rng, T(-1), T(1));
}

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor<float>>>& named) {
  std::vector<std::string> out;
  for (const auto& [n, t] : named) out.push_back(n);
  return out;
}

struct Stats {
  double mean = 0, std = 0, max_abs = 0;
  std::size_t n = 0;
};

template <class T>
Stats stats(const Tensor<T>& t) {
  const auto v = t.to_vector();
  Stats s;
  s.n = v.size();
  for (T x : v) s.mean += static_cast<double>(x);
  s.mean /= static_cast<double>(s.n);
  for (T x : v) {
    const double d = static_cast<double>(x) - s.mean;
    s.std += d * d;
    s.max_abs = std::max(s.max_abs, std::abs(static_cast<double>(x)));
  }
  s.std = std::sqrt(s.std / static_cast<double>(s.n - 1));
  return s;
}

// Of n draws from U(−b, b), the largest magnitude falls below (1 − c)·b with probability (1 − c)ⁿ:
// c = 8/n (at most 0.9) keeps that under 4·10⁻⁴.
double largest_fraction(std::size_t n) { return 1.0 - std::min(0.9, 8.0 / static_cast<double>(n)); }
// Relative tolerance for a sample standard deviation of n uniform draws (about 4.5 standard errors,
// √(0.2/n) each).
double std_tolerance(std::size_t n) { return 4.5 * std::sqrt(0.2 / static_cast<double>(n)); }

}  // namespace

TEST_CASE("Conv2d: parameters, forward, gradients") {
  kiln::Rng rng(1);
  nn::Conv2d conv(4, 6, {3, 2}, 2, 1, 1, 2, true, rng);
  CHECK(names_of(conv.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  CHECK(conv.weight().shape() == Shape{6, 2, 3, 2});
  CHECK(conv.bias().shape() == Shape{6});
  CHECK(conv.weight().tracks_grad());
  CHECK(conv.kernel_size() == Size2d{3, 2});
  CHECK(conv.groups() == 2);
  auto x = rnd<float>({2, 4, 7, 6}, 2);
  auto y = conv(x);
  CHECK(y.to_vector() == kiln::conv2d(x, conv.weight().detach(), conv.bias().detach(), 2, 1, 1, 2).to_vector());
  kiln::sum(y).backward();
  REQUIRE(conv.weight().grad().defined());
  REQUIRE(conv.bias().grad().defined());
  // ∂Σy/∂b[c] = the number of output pixels per channel times the batch
  for (float g : conv.bias().grad().to_vector()) CHECK(g == static_cast<float>(2 * y.size(2) * y.size(3)));

  // options by name, no bias
  nn::Conv2d plain(1, 64, 4, {.stride = 2, .padding = 1, .bias = false}, rng);
  CHECK(names_of(plain.named_parameters()) == std::vector<std::string>{"weight"});
  CHECK_FALSE(plain.bias().defined());
  CHECK(plain(rnd<float>({2, 1, 28, 28}, 3)).shape() == Shape{2, 64, 14, 14});
  nn::Conv2d simple(3, 5, 3, rng);
  CHECK(simple(rnd<float>({3, 8, 8}, 4)).shape() == Shape{5, 6, 6});

  // double-precision module: gradcheck through forward with respect to the input
  nn::BasicConv2d<double> conv64(2, 3, 3, {.stride = 2, .padding = 1, .dilation = 1}, rng);
  auto r = kiln::gradcheck([&](const std::vector<Tensor<double>>& v) { return conv64(v[0]); },
                           {rnd<double>({2, 2, 5, 5}, 5)});
  INFO(r.message);
  CHECK(r.ok);
}

TEST_CASE("ConvTranspose2d: parameters, forward, gradients") {
  kiln::Rng rng(2);
  nn::ConvTranspose2d up(128, 64, 4, 2, 1, 0, 1, true, 1, rng);
  CHECK(names_of(up.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  CHECK(up.weight().shape() == Shape{128, 64, 4, 4});
  auto x = rnd<float>({2, 128, 7, 7}, 3);
  auto y = up(x);
  CHECK(y.shape() == Shape{2, 64, 14, 14});
  CHECK(y.to_vector() == kiln::conv_transpose2d(x, up.weight().detach(), up.bias().detach(), 2, 1).to_vector());
  nn::ConvTranspose2d grouped(4, 6, {3, 2}, {.stride = {2, 1}, .output_padding = {1, 0}, .groups = 2}, rng);
  CHECK(grouped.weight().shape() == Shape{4, 3, 3, 2});
  auto xg = rnd<float>({1, 4, 3, 3}, 4);
  auto yg = grouped(xg);
  CHECK(yg.shape() == Shape{1, 6, 8, 4});
  kiln::sum(yg).backward();
  CHECK(grouped.weight().grad().shape() == grouped.weight().shape());
  nn::BasicConvTranspose2d<double> up64(2, 3, 3, {.stride = 2, .padding = 1, .output_padding = 1}, rng);
  auto r = kiln::gradcheck([&](const std::vector<Tensor<double>>& v) { return up64(v[0]); },
                           {rnd<double>({2, 2, 3, 4}, 5)});
  INFO(r.message);
  CHECK(r.ok);
}

TEST_CASE("convolution modules reject bad arguments") {
  kiln::Rng rng(3);
  CHECK_THROWS_WITH_AS(nn::Conv2d(3, 4, 3, {.groups = 2}, rng), doctest::Contains("nn::Conv2d"), kiln::ValueError);
  CHECK_THROWS_AS(nn::Conv2d(4, 3, 3, {.groups = 2}, rng), kiln::ValueError);
  CHECK_THROWS_AS(nn::Conv2d(0, 3, 3, rng), kiln::ValueError);
  CHECK_THROWS_AS(nn::Conv2d(3, 3, 0, rng), kiln::ValueError);
  CHECK_THROWS_AS(nn::Conv2d(3, 3, 3, {.stride = 0}, rng), kiln::ValueError);
  CHECK_THROWS_AS(nn::Conv2d(3, 3, 3, {.padding = -1}, rng), kiln::ValueError);
  CHECK_THROWS_AS(nn::Conv2d(3, 3, 3, {.dilation = 0}, rng), kiln::ValueError);
  CHECK_THROWS_WITH_AS(nn::ConvTranspose2d(3, 3, 3, {.stride = 2, .output_padding = 2}, rng),
                       doctest::Contains("output_padding"), kiln::ValueError);
  CHECK_NOTHROW(nn::ConvTranspose2d(3, 3, 3, {.output_padding = 1, .dilation = 2}, rng));
  // a mismatched input is reported by the op with both shapes
  nn::Conv2d conv(3, 4, 3, rng);
  CHECK_THROWS_WITH_AS(conv(rnd<float>({1, 2, 8, 8}, 1)), doctest::Contains("shapes [1, 2, 8, 8] and [4, 3, 3, 3]"),
                       kiln::ShapeError);
}

TEST_CASE("pooling and upsampling modules") {
  auto x = rnd<float>({2, 3, 7, 6}, 1);
  CHECK(nn::MaxPool2d(2)(x).to_vector() == kiln::max_pool2d(x, 2).to_vector());
  CHECK(nn::MaxPool2d(3, 2, 1, 1, true)(x).to_vector() == kiln::max_pool2d(x, 3, 2, 1, 1, true).to_vector());
  CHECK(nn::AvgPool2d(2)(x).to_vector() == kiln::avg_pool2d(x, 2).to_vector());
  CHECK(nn::AvgPool2d(3, 2, 1, false, false)(x).to_vector() == kiln::avg_pool2d(x, 3, 2, 1, false, false).to_vector());
  CHECK(nn::AdaptiveAvgPool2d({2, 3})(x).to_vector() == kiln::adaptive_avg_pool2d(x, {2, 3}).to_vector());
  CHECK(nn::Upsample(2)(x).to_vector() == kiln::upsample_nearest2d(x, 2).to_vector());
  CHECK(nn::Upsample({2, 3}, "bilinear", true)(x).to_vector() ==
        kiln::upsample_bilinear2d(x, {2, 3}, true).to_vector());
  CHECK(nn::Upsample(2, "bilinear").mode() == "bilinear");
  CHECK(nn::MaxPool2d(2).stride() == Size2d{2});
  CHECK(nn::MaxPool2d(2).named_parameters().empty());
  CHECK_THROWS_WITH_AS(nn::Upsample(2, "bicubic"), doctest::Contains("nn::Upsample"), kiln::ValueError);
  CHECK_THROWS_AS(nn::Upsample(2, "nearest", true), kiln::ValueError);
  CHECK_THROWS_AS(nn::Upsample(0), kiln::ValueError);
  CHECK_THROWS_AS(nn::MaxPool2d(2, 2, 2), kiln::ValueError);
  CHECK_THROWS_AS(nn::MaxPool2d(0), kiln::ValueError);
  CHECK_THROWS_AS(nn::AvgPool2d(2, 2, 0, false, true, -3), kiln::ValueError);
  CHECK_THROWS_AS(nn::AdaptiveAvgPool2d(0), kiln::ValueError);
  // gradients flow through a small module stack in double
  nn::BasicAvgPool2d<double> pool(2);
  nn::BasicUpsample<double> up(2, "bilinear");
  auto r = kiln::gradgradcheck([&](const std::vector<Tensor<double>>& v) { return up(pool(v[0])); },
                               {rnd<double>({1, 2, 4, 6}, 2)});
  INFO(r.message);
  CHECK(r.ok);
}

TEST_CASE("default initialisation: U(±1/√fan_in) with fan_in from weight dim 1, as PyTorch") {
  kiln::Rng rng(7);
  // fan_in = in/groups·KH·KW for Conv2d, out/groups·KH·KW for ConvTranspose2d
  nn::Conv2d d2(64, 128, 4, rng);
  nn::Conv2d grouped(6, 8, {3, 5}, {.groups = 2}, rng);
  nn::ConvTranspose2d g1(128, 64, 4, rng);
  nn::ConvTranspose2d gt(8, 32, 3, {.groups = 2}, rng);
  const std::vector<std::pair<const nn::Module*, double>> layers = {
      {&d2, 1.0 / std::sqrt(64.0 * 16)},
      {&grouped, 1.0 / std::sqrt(3.0 * 15)},
      {&g1, 1.0 / std::sqrt(64.0 * 16)},
      {&gt, 1.0 / std::sqrt(16.0 * 9)},
  };
  for (const auto& entry : layers) {
    const double bound = entry.second;  // (clang 14 cannot capture structured bindings in CAPTURE)
    CAPTURE(bound);
    const auto params = entry.first->named_parameters();
    const Stats w = stats(params[0].second), b = stats(params[1].second);
    CHECK(w.max_abs <= bound);
    CHECK(w.max_abs > largest_fraction(w.n) * bound);
    CHECK(std::abs(w.mean) < 5 * bound / std::sqrt(3.0 * static_cast<double>(w.n)));
    CHECK(w.std == doctest::Approx(bound / std::sqrt(3.0)).epsilon(std_tolerance(w.n)));
    CHECK(b.max_abs <= bound);
    CHECK(b.max_abs > largest_fraction(b.n) * bound);
  }
}

TEST_CASE("default initialisation matches torch.nn's") {
  // PyTorch makes the same layers (its own generator, so only the distributions can agree): the
  // largest magnitudes and standard deviations must match kiln's.
  struct Layer {
    std::string name;
    bool transposed;
    index_t in, out;
    Size2d kernel;
    index_t groups;
  };
  const std::vector<Layer> layers = {{"conv", false, 64, 128, 4, 1},
                                     {"conv_grouped", false, 6, 8, {3, 5}, 2},
                                     {"convt", true, 128, 64, 4, 1},
                                     {"convt_grouped", true, 8, 32, 3, 2}};
  namespace fs = std::filesystem;
  const std::string stem = (fs::temp_directory_path() / ("kiln_nn_conv_" + std::to_string(::getpid()))).string();
  const std::string in_path = stem + "_in.safetensors", out_path = stem + "_out.safetensors";
  std::map<std::string, std::string> metadata;
  for (const auto& l : layers)
    metadata[l.name] = std::string("op=") + (l.transposed ? "init_conv_transpose2d" : "init_conv2d") +
                       " in=" + std::to_string(l.in) + " out=" + std::to_string(l.out) + " kernel=" +
                       std::to_string(l.kernel.h) + "," + std::to_string(l.kernel.w) +
                       " groups=" + std::to_string(l.groups) + " seed=0";
  kiln::io::save_safetensors(in_path, std::vector<std::pair<std::string, Tensor<float>>>{}, metadata);
  const int status = kiln::test::run_torch_script(
      "conv_reference.py", kiln::test::shell_quote(in_path) + " " + kiln::test::shell_quote(out_path));
  std::remove(in_path.c_str());
  REQUIRE(status == 0);
  const kiln::io::SafeTensorsFile reference(out_path);
  std::remove(out_path.c_str());
  kiln::Rng rng(11);
  for (const auto& l : layers) {
    CAPTURE(l.name);
    Tensor<float> weight, bias;
    if (l.transposed) {
      nn::ConvTranspose2d m(l.in, l.out, l.kernel, {.groups = l.groups}, rng);
      weight = m.weight().detach(), bias = m.bias().detach();
    } else {
      nn::Conv2d m(l.in, l.out, l.kernel, {.groups = l.groups}, rng);
      weight = m.weight().detach(), bias = m.bias().detach();
    }
    const Tensor<double> torch_weight = reference.get<double>(l.name + ".weight");
    const Tensor<double> torch_bias = reference.get<double>(l.name + ".bias");
    REQUIRE(torch_weight.shape() == weight.shape());
    REQUIRE(torch_bias.shape() == bias.shape());
    const Stats kw = stats(weight), tw = stats(torch_weight), kb = stats(bias), tb = stats(torch_bias);
    // Both uniform on the same interval: the largest weight magnitudes agree to within the
    // sampling gaps, and so do the standard deviations.
    CHECK(kw.max_abs == doctest::Approx(tw.max_abs).epsilon(2 * (1 - largest_fraction(kw.n))));
    CHECK(kw.std == doctest::Approx(tw.std).epsilon(1.5 * std_tolerance(kw.n)));
    // The bias shares the weight's bound: each bias lies within the other side's weight bound.
    const double bound = std::max(kw.max_abs, tw.max_abs) / largest_fraction(kw.n);
    CHECK(kb.max_abs <= bound);
    CHECK(tb.max_abs <= bound);
    CHECK(kb.max_abs > largest_fraction(kb.n) * tw.max_abs);
    CHECK(tb.max_abs > largest_fraction(tb.n) * kw.max_abs);
  }
}
