// Tests of include/kiln/ops/pool.hpp: max/avg/adaptive-avg pooling and nearest/bilinear upsampling
// by hand and against naive loops, unbatched and strided inputs, errors, gradcheck and
// gradgradcheck over several geometries, and a comparison of outputs and gradients with PyTorch
// (tests/torch/conv_reference.py).
#include <doctest/doctest.h>

#include <kiln/kiln.hpp>
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/ops/pool.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

using kiln::index_t;
using kiln::Shape;
using kiln::Size2d;
using kiln::Tensor;
using Vec = std::vector<Tensor<double>>;
using Fn = std::function<Tensor<double>(const Vec&)>;

namespace {

template <class T>
Tensor<T> rnd(Shape s, std::uint64_t seed) {
  kiln::Rng rng(seed);
  return kiln::rand<T>(s, rng, T(-1), T(1));
}

void expect_gradcheck(const Fn& f, const Vec& inputs, bool second_order) {
  auto r = kiln::gradcheck(f, inputs);
  INFO(r.message);
  CHECK(r.ok);
  if (second_order) {
    auto r2 = kiln::gradgradcheck(f, inputs);
    INFO(r2.message);
    CHECK(r2.ok);
  }
}

std::string pair_text(Size2d s) { return std::to_string(s.h) + "," + std::to_string(s.w); }

struct Window {
  Size2d kernel, stride, padding, dilation;
  bool ceil_mode = false;
  bool count_include_pad = true;
  index_t divisor_override = 0;
};

// PyTorch's pooled size: ⌊(in + 2p − d(k − 1) − 1 + (ceil ? s − 1 : 0)) / s⌋ + 1, less one when
// the last window would start past the input and its left padding.
index_t pooled(index_t in, index_t k, index_t s, index_t p, index_t d, bool ceil_mode) {
  index_t out = (in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0)) / s + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// Max or average pooling of x [N, C, H, W] by direct loops over each window.
std::vector<double> naive_pool(const Shape& shape, const std::vector<double>& x, const Window& w, bool max,
                               index_t& Ho, index_t& Wo) {
  const index_t NC = shape.dims[0] * shape.dims[1], H = shape.dims[2], W = shape.dims[3];
  Ho = pooled(H, w.kernel.h, w.stride.h, w.padding.h, w.dilation.h, w.ceil_mode);
  Wo = pooled(W, w.kernel.w, w.stride.w, w.padding.w, w.dilation.w, w.ceil_mode);
  std::vector<double> y(static_cast<std::size_t>(NC * Ho * Wo));
  for (index_t plane = 0; plane < NC; ++plane)
    for (index_t oh = 0; oh < Ho; ++oh)
      for (index_t ow = 0; ow < Wo; ++ow) {
        double best = -std::numeric_limits<double>::infinity(), sum = 0;
        index_t real = 0, padded = 0;
        for (index_t kh = 0; kh < w.kernel.h; ++kh)
          for (index_t kw = 0; kw < w.kernel.w; ++kw) {
            const index_t ih = oh * w.stride.h - w.padding.h + kh * w.dilation.h;
            const index_t iw = ow * w.stride.w - w.padding.w + kw * w.dilation.w;
            // average pooling counts the taps inside the padded input
            if (ih < H + w.padding.h && iw < W + w.padding.w) ++padded;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            const double v = x[static_cast<std::size_t>((plane * H + ih) * W + iw)];
            best = std::max(best, v);
            sum += v;
            ++real;
          }
        const index_t divisor = w.divisor_override > 0 ? w.divisor_override : w.count_include_pad ? padded : real;
        y[static_cast<std::size_t>((plane * Ho + oh) * Wo + ow)] = max ? best : sum / static_cast<double>(divisor);
      }
  return y;
}

void check_values(const Tensor<double>& got, const std::vector<double>& want) {
  const auto v = got.to_vector();
  REQUIRE(v.size() == want.size());
  for (std::size_t i = 0; i < v.size(); ++i) CHECK(v[i] == doctest::Approx(want[i]).epsilon(1e-12));
}

const std::vector<Window> max_windows = {
    {2, 2, 0, 1},
    {3, 2, 1, 1},
    {{3, 2}, {1, 2}, {1, 0}, {2, 1}},
    {3, 2, 0, 1, true},
    {2, 1, 1, 2},
    {{2, 3}, {2, 2}, {1, 1}, 1, true},
};

const std::vector<Window> avg_windows = {
    {2, 2, 0, 1},
    {3, 2, 1, 1, false, true},
    {3, 2, 1, 1, false, false},
    {{3, 2}, {2, 1}, 1, 1, true, false},
    {3, 2, 1, 1, true, true},
    {3, 1, 1, 1, false, true, 5},
};

std::string describe(const Window& w) {
  return "k" + w.kernel.to_string() + " s" + w.stride.to_string() + " p" + w.padding.to_string() +
         " d" + w.dilation.to_string() + (w.ceil_mode ? " ceil" : "") +
         (w.count_include_pad ? " include_pad" : "") + " div" + std::to_string(w.divisor_override);
}

Tensor<double> max_of(const Window& w, const Tensor<double>& x) {
  return kiln::max_pool2d(x, w.kernel, w.stride, w.padding, w.dilation, w.ceil_mode);
}
Tensor<double> avg_of(const Window& w, const Tensor<double>& x) {
  return kiln::avg_pool2d(x, w.kernel, w.stride, w.padding, w.ceil_mode, w.count_include_pad, w.divisor_override);
}

}  // namespace

TEST_CASE("pooling and upsampling by hand") {
  auto x = kiln::arange<double>(0, 16).reshape({1, 1, 4, 4});
  CHECK(kiln::max_pool2d(x, 2).to_vector() == std::vector<double>{5, 7, 13, 15});
  CHECK(kiln::avg_pool2d(x, 2).to_vector() == std::vector<double>{2.5, 4.5, 10.5, 12.5});
  CHECK(kiln::adaptive_avg_pool2d(x, 1).to_vector() == std::vector<double>{7.5});
  // adaptive 4 -> 3: windows [0, 2), [1, 3), [2, 4) along each axis
  CHECK(kiln::adaptive_avg_pool2d(x, {3, 1}).to_vector() == std::vector<double>{3.5, 7.5, 11.5});
  auto small = kiln::from_vector<double>({1, 2, 3, 4}, {1, 1, 2, 2});
  CHECK(kiln::upsample_nearest2d(small, 2).to_vector() ==
        std::vector<double>{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4});
  CHECK(kiln::upsample_nearest2d(small, {1, 3}).to_vector() == std::vector<double>{1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4});
  // align_corners: source coordinates o·(2 − 1)/(4 − 1) = 0, 1/3, 2/3, 1
  auto corners = kiln::upsample_bilinear2d(kiln::from_vector<double>({0, 1, 2, 3}, {1, 1, 2, 2}), 2, true);
  const auto cv = corners.to_vector();
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 4; ++j)
      CHECK(cv[static_cast<std::size_t>(i * 4 + j)] == doctest::Approx(2.0 * i / 3.0 + j / 3.0).epsilon(1e-12));
  // half-pixel centres: (o + 0.5)/2 − 0.5 = −0.25 (clamped to 0), 0.25, 0.75, 1.25 (border) -> 0, 0.75, 2.25, 3
  auto row = kiln::upsample_bilinear2d(kiln::from_vector<double>({0, 3}, {1, 1, 1, 2}), 2);
  CHECK(row.shape() == Shape{1, 1, 2, 4});
  const auto rv = row.to_vector();
  const std::vector<double> want{0, 0.75, 2.25, 3, 0, 0.75, 2.25, 3};
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(rv[i] == doctest::Approx(want[i]).epsilon(1e-12));
  // the gradient of sum(max_pool2d(x)) marks the maxima
  auto xg = x.clone().requires_grad();
  kiln::sum(kiln::max_pool2d(xg, 2)).backward();
  std::vector<double> marks(16, 0.0);
  for (int i : {5, 7, 13, 15}) marks[static_cast<std::size_t>(i)] = 1;
  CHECK(xg.grad().to_vector() == marks);
  // and of sum(upsample_nearest2d(x, 2)) counts the copies: 4 each
  auto sg = small.clone().requires_grad();
  kiln::sum(kiln::upsample_nearest2d(sg, 2)).backward();
  CHECK(sg.grad().to_vector() == std::vector<double>{4, 4, 4, 4});
}

TEST_CASE("max_pool2d and avg_pool2d against naive loops") {
  const Shape shape{2, 3, 7, 6};
  const auto x = rnd<double>(shape, 1);
  const auto xv = x.to_vector();
  for (const auto& w : max_windows) {
    CAPTURE(describe(w));
    index_t Ho = 0, Wo = 0;
    const auto want = naive_pool(shape, xv, w, true, Ho, Wo);
    auto y = max_of(w, x);
    REQUIRE(y.shape() == Shape{2, 3, Ho, Wo});
    check_values(y, want);
  }
  for (const auto& w : avg_windows) {
    CAPTURE(describe(w));
    index_t Ho = 0, Wo = 0;
    const auto want = naive_pool(shape, xv, w, false, Ho, Wo);
    auto y = avg_of(w, x);
    REQUIRE(y.shape() == Shape{2, 3, Ho, Wo});
    check_values(y, want);
  }
}

TEST_CASE("unbatched and strided inputs") {
  auto x = rnd<float>({3, 6, 5}, 1);
  auto xb = x.unsqueeze(0);
  CHECK(kiln::max_pool2d(x, 2).shape() == Shape{3, 3, 2});
  CHECK(kiln::max_pool2d(x, 2).to_vector() == kiln::max_pool2d(xb, 2).to_vector());
  CHECK(kiln::avg_pool2d(x, 3, 2, 1).to_vector() == kiln::avg_pool2d(xb, 3, 2, 1).to_vector());
  CHECK(kiln::adaptive_avg_pool2d(x, {2, 3}).shape() == Shape{3, 2, 3});
  CHECK(kiln::upsample_nearest2d(x, 2).shape() == Shape{3, 12, 10});
  CHECK(kiln::upsample_bilinear2d_to_size(x, {4, 9}).shape() == Shape{3, 4, 9});
  // a transposed (non-contiguous) input gives the same as its contiguous copy
  auto xt = rnd<float>({2, 3, 5, 6}, 2).transpose(2, 3);
  auto xc = xt.contiguous();
  REQUIRE_FALSE(xt.is_contiguous());
  CHECK(kiln::max_pool2d(xt, 3, 2, 1).to_vector() == kiln::max_pool2d(xc, 3, 2, 1).to_vector());
  CHECK(kiln::avg_pool2d(xt, 2).to_vector() == kiln::avg_pool2d(xc, 2).to_vector());
  CHECK(kiln::adaptive_avg_pool2d(xt, 4).to_vector() == kiln::adaptive_avg_pool2d(xc, 4).to_vector());
  CHECK(kiln::upsample_nearest2d(xt, 3).to_vector() == kiln::upsample_nearest2d(xc, 3).to_vector());
  CHECK(kiln::upsample_bilinear2d(xt, 2, true).to_vector() == kiln::upsample_bilinear2d(xc, 2, true).to_vector());
}

TEST_CASE("pooling errors name the op") {
  auto x = rnd<float>({2, 3, 6, 6}, 1);
  CHECK_THROWS_WITH_AS(kiln::max_pool2d(rnd<float>({6, 6}, 1), 2), doctest::Contains("kiln::max_pool2d"),
                       kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::max_pool2d(x, 2, 2, 2), doctest::Contains("at most half the kernel"), kiln::ValueError);
  CHECK_THROWS_AS(kiln::max_pool2d(x, 7), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::max_pool2d(x, 2, 0), kiln::ValueError);
  CHECK_THROWS_AS(kiln::max_pool2d(x, 0), kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::avg_pool2d(rnd<float>({2, 3, 4, 5, 6}, 1), 2), doctest::Contains("kiln::avg_pool2d"),
                       kiln::ShapeError);
  CHECK_THROWS_AS(kiln::avg_pool2d(x, 2, 2, 0, false, true, -1), kiln::ValueError);
  CHECK_THROWS_AS(kiln::adaptive_avg_pool2d(x, {0, 2}), kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::upsample_nearest2d(x, 0), doctest::Contains("kiln::upsample_nearest2d"),
                       kiln::ValueError);
  CHECK_THROWS_AS(kiln::upsample_bilinear2d(x, {2, -1}), kiln::ValueError);
  CHECK_THROWS_AS(kiln::upsample_bilinear2d(rnd<float>({4}, 1), 2), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::upsample_bilinear2d_to_size(x, {0, 3}), kiln::ValueError);
}

TEST_CASE("max_pool2d gradcheck and gradgradcheck") {
  for (const auto& w : max_windows) {
    CAPTURE(describe(w));
    expect_gradcheck([w](const Vec& v) { return max_of(w, v[0]); }, {rnd<double>({2, 2, 7, 6}, 3)}, true);
  }
  // a non-contiguous input and a non-contiguous incoming gradient
  expect_gradcheck([](const Vec& v) { return kiln::max_pool2d(v[0].permute({0, 3, 1, 2}), 3, 2, 1).transpose(2, 3); },
                   {rnd<double>({2, 7, 6, 3}, 4)}, true);
}

TEST_CASE("avg_pool2d gradcheck and gradgradcheck") {
  for (const auto& w : avg_windows) {
    CAPTURE(describe(w));
    expect_gradcheck([w](const Vec& v) { return avg_of(w, v[0]); }, {rnd<double>({2, 2, 7, 6}, 5)}, true);
  }
  expect_gradcheck([](const Vec& v) { return kiln::avg_pool2d(v[0].permute({0, 3, 1, 2}), 3, 2, 1).transpose(2, 3); },
                   {rnd<double>({2, 7, 6, 3}, 6)}, true);
}

TEST_CASE("adaptive_avg_pool2d gradcheck and gradgradcheck") {
  for (Size2d out : {Size2d{4, 3}, Size2d{2, 2}, Size2d{1, 1}, Size2d{9, 7}}) {
    CAPTURE(out.to_string());
    expect_gradcheck([out](const Vec& v) { return kiln::adaptive_avg_pool2d(v[0], out); }, {rnd<double>({2, 2, 6, 5}, 7)},
                     true);
  }
  expect_gradcheck([](const Vec& v) { return kiln::adaptive_avg_pool2d(v[0].transpose(2, 3), 3).transpose(2, 3); },
                   {rnd<double>({2, 2, 6, 5}, 8)}, true);
}

TEST_CASE("upsampling gradcheck and gradgradcheck") {
  const auto x = rnd<double>({2, 2, 3, 4}, 9);
  for (Size2d s : {Size2d{2}, Size2d{3, 2}}) {
    CAPTURE(s.to_string());
    expect_gradcheck([s](const Vec& v) { return kiln::upsample_nearest2d(v[0], s); }, {x}, true);
    for (bool align : {false, true})
      expect_gradcheck([s, align](const Vec& v) { return kiln::upsample_bilinear2d(v[0], s, align); }, {x}, true);
  }
  for (Size2d size : {Size2d{5, 7}, Size2d{2, 3}, Size2d{1, 1}}) {
    CAPTURE(size.to_string());
    expect_gradcheck([size](const Vec& v) { return kiln::upsample_nearest2d_to_size(v[0], size); }, {x}, true);
    for (bool align : {false, true})
      expect_gradcheck([size, align](const Vec& v) { return kiln::upsample_bilinear2d_to_size(v[0], size, align); },
                       {x}, true);
  }
  expect_gradcheck([](const Vec& v) { return kiln::upsample_bilinear2d(v[0].permute({0, 3, 1, 2}), 2).transpose(2, 3); },
                   {rnd<double>({2, 3, 4, 2}, 10)}, true);
}

TEST_CASE("a gradient penalty through pooling: the input gradient is differentiable") {
  // G(x) = Σ (∂/∂x Σ tanh(pool(x)²))², through each op; its own gradient needs the pooling
  // backward to be recorded under create_graph.
  const std::vector<std::function<Tensor<double>(const Tensor<double>&)>> ops = {
      [](const Tensor<double>& x) { return kiln::max_pool2d(x, 3, 2, 1); },
      [](const Tensor<double>& x) { return kiln::avg_pool2d(x, 3, 2, 1); },
      [](const Tensor<double>& x) { return kiln::adaptive_avg_pool2d(x, 3); },
      [](const Tensor<double>& x) { return kiln::upsample_nearest2d(x, 2); },
      [](const Tensor<double>& x) { return kiln::upsample_bilinear2d(x, 2); },
  };
  for (std::size_t i = 0; i < ops.size(); ++i) {
    CAPTURE(i);
    auto op = ops[i];
    expect_gradcheck(
        [op](const Vec& v) {
          kiln::EnableGrad on;
          auto p = op(v[0]);
          auto y = kiln::sum(Tensor<double>(kiln::tanh(p * p)));
          auto gx = kiln::grad<double, kiln::cpu>({y}, {v[0]}, {}, true, true)[0];
          return Tensor<double>(gx * gx);
        },
        {rnd<double>({1, 2, 5, 5}, 11)}, false);
  }
}

// --- PyTorch cross-check (tests/torch/conv_reference.py) ---------------------------------------

namespace {

struct TorchCase {
  std::string name, description;
  Tensor<float> x, seed, y, grad;
};

TorchCase make_case(const std::string& name, const std::string& description, const Shape& shape,
                    const std::function<Tensor<float>(const Tensor<float>&)>& f, std::uint64_t seed) {
  TorchCase c{name, description, rnd<float>(shape, seed), {}, {}, {}};
  auto leaf = c.x.clone().requires_grad();
  c.y = f(leaf);
  c.seed = rnd<float>(c.y.shape(), seed + 1);
  c.grad = kiln::grad<float, kiln::cpu>({c.y}, {leaf}, {c.seed})[0];
  c.y = c.y.detach();
  return c;
}

void check_close(const Tensor<float>& got, const Tensor<double>& want, const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  const auto g = got.to_vector();
  const auto w = want.to_vector();
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(static_cast<double>(g[i]) - w[i]) / (1e-5 + 1e-5 * std::abs(w[i]));
    if (err > worst) worst = err, at = i;
  }
  INFO("element " << at << ": kiln " << (g.empty() ? 0.0 : g[at]) << ", PyTorch " << (w.empty() ? 0.0 : w[at]));
  CHECK(worst <= 1.0);
}

void compare_with_torch(const std::vector<TorchCase>& cases, const std::string& tag) {
  namespace fs = std::filesystem;
  const std::string stem = (fs::temp_directory_path() / ("kiln_" + tag + "_" + std::to_string(::getpid()))).string();
  const std::string in_path = stem + "_in.safetensors", out_path = stem + "_out.safetensors";
  std::vector<std::pair<std::string, Tensor<float>>> entries;
  std::map<std::string, std::string> metadata;
  for (const auto& c : cases) {
    entries.emplace_back(c.name + ".x", c.x);
    entries.emplace_back(c.name + ".seed", c.seed);
    metadata[c.name] = c.description + " inputs=x";
  }
  kiln::io::save_safetensors(in_path, entries, metadata);
  const int status = kiln::test::run_torch_script(
      "conv_reference.py", kiln::test::shell_quote(in_path) + " " + kiln::test::shell_quote(out_path));
  std::remove(in_path.c_str());
  REQUIRE(status == 0);
  const kiln::io::SafeTensorsFile reference(out_path);
  std::remove(out_path.c_str());
  for (const auto& c : cases) {
    check_close(c.y, reference.get<double>(c.name + ".y"), c.name + " output");
    check_close(c.grad, reference.get<double>(c.name + ".grad.x"), c.name + " gradient");
  }
}

}  // namespace

TEST_CASE("pooling and upsampling agree with PyTorch") {
  std::vector<TorchCase> cases;
  const Shape shape{2, 3, 7, 6};
  std::uint64_t seed = 100;
  for (std::size_t i = 0; i < max_windows.size(); ++i) {
    const Window w = max_windows[i];
    cases.push_back(make_case("max" + std::to_string(i),
                              "op=max_pool2d kernel=" + pair_text(w.kernel) + " stride=" + pair_text(w.stride) +
                                  " padding=" + pair_text(w.padding) + " dilation=" + pair_text(w.dilation) +
                                  " ceil_mode=" + std::to_string(w.ceil_mode),
                              shape, [w](const Tensor<float>& x) {
                                return kiln::max_pool2d(x, w.kernel, w.stride, w.padding, w.dilation, w.ceil_mode);
                              },
                              seed += 2));
  }
  for (std::size_t i = 0; i < avg_windows.size(); ++i) {
    const Window w = avg_windows[i];
    cases.push_back(make_case(
        "avg" + std::to_string(i),
        "op=avg_pool2d kernel=" + pair_text(w.kernel) + " stride=" + pair_text(w.stride) + " padding=" +
            pair_text(w.padding) + " ceil_mode=" + std::to_string(w.ceil_mode) +
            " count_include_pad=" + std::to_string(w.count_include_pad) +
            " divisor_override=" + std::to_string(w.divisor_override),
        shape,
        [w](const Tensor<float>& x) {
          return kiln::avg_pool2d(x, w.kernel, w.stride, w.padding, w.ceil_mode, w.count_include_pad,
                                  w.divisor_override);
        },
        seed += 2));
  }
  for (Size2d out : {Size2d{4, 3}, Size2d{3, 5}, Size2d{1, 1}, Size2d{10, 9}})
    cases.push_back(make_case("adaptive" + pair_text(out), "op=adaptive_avg_pool2d size=" + pair_text(out), shape,
                              [out](const Tensor<float>& x) { return kiln::adaptive_avg_pool2d(x, out); }, seed += 2));
  const Shape small{2, 3, 4, 5};
  for (Size2d s : {Size2d{2}, Size2d{3, 2}}) {
    cases.push_back(make_case("nearest_scale" + pair_text(s), "op=upsample_nearest2d scale=" + pair_text(s), small,
                              [s](const Tensor<float>& x) { return kiln::upsample_nearest2d(x, s); }, seed += 2));
    for (bool align : {false, true})
      cases.push_back(make_case("bilinear_scale" + pair_text(s) + "_" + std::to_string(align),
                                "op=upsample_bilinear2d scale=" + pair_text(s) +
                                    " align_corners=" + std::to_string(align),
                                small, [s, align](const Tensor<float>& x) { return kiln::upsample_bilinear2d(x, s, align); },
                                seed += 2));
  }
  for (Size2d size : {Size2d{7, 9}, Size2d{3, 3}, Size2d{11, 6}}) {
    cases.push_back(make_case("nearest_size" + pair_text(size), "op=upsample_nearest2d size=" + pair_text(size),
                              small, [size](const Tensor<float>& x) { return kiln::upsample_nearest2d_to_size(x, size); },
                              seed += 2));
    for (bool align : {false, true})
      cases.push_back(make_case(
          "bilinear_size" + pair_text(size) + "_" + std::to_string(align),
          "op=upsample_bilinear2d size=" + pair_text(size) + " align_corners=" + std::to_string(align), small,
          [size, align](const Tensor<float>& x) { return kiln::upsample_bilinear2d_to_size(x, size, align); },
          seed += 2));
  }
  compare_with_torch(cases, "pool");
}
