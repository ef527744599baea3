// Tests of include/kiln/ops/conv.hpp: conv2d and conv_transpose2d forward against naive loops (strides,
// paddings, dilations, groups, output_padding, unbatched and strided inputs), shape errors,
// gradcheck and gradgradcheck over many geometries, the plain backward against the create_graph
// path, and a comparison of outputs and gradients (including an R1 penalty, a second derivative)
// with PyTorch (tests/torch/conv_reference.py), at the W4 DCGAN layer shapes among others.
#include <doctest/doctest.h>

#include <kiln/kiln.hpp>
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/ops/conv.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
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
Tensor<T> rnd(Shape s, std::uint64_t seed, double scale = 1.0) {
  kiln::Rng rng(seed);
  return kiln::rand<T>(s, rng, T(-scale), T(scale));
}

struct Geometry {
  index_t N, C_in, H, W, C_out, KH, KW;
  Size2d stride, padding, dilation;
  index_t groups;
  Size2d output_padding = 0;  // transposed only
};

std::string describe(const Geometry& g) {
  return "N" + std::to_string(g.N) + " Cin" + std::to_string(g.C_in) + " " + std::to_string(g.H) + "x" +
         std::to_string(g.W) + " Cout" + std::to_string(g.C_out) + " k" + Size2d{g.KH, g.KW}.to_string() +
         " s" + g.stride.to_string() + " p" + g.padding.to_string() + " d" + g.dilation.to_string() +
         " g" + std::to_string(g.groups) + " op" + g.output_padding.to_string();
}

// y[n, co, oh, ow] = b[co] + Σ w[co, ci, kh, kw]·x[n, group·Cg + ci, oh·s − p + kh·d, ow·s − p + kw·d].
std::vector<double> naive_conv2d(const Geometry& g, const std::vector<double>& x, const std::vector<double>& w,
                                 const std::vector<double>& b, index_t& Ho, index_t& Wo) {
  Ho = (g.H + 2 * g.padding.h - g.dilation.h * (g.KH - 1) - 1) / g.stride.h + 1;
  Wo = (g.W + 2 * g.padding.w - g.dilation.w * (g.KW - 1) - 1) / g.stride.w + 1;
  const index_t Cg = g.C_in / g.groups, Og = g.C_out / g.groups;
  std::vector<double> y(static_cast<std::size_t>(g.N * g.C_out * Ho * Wo));
  for (index_t n = 0; n < g.N; ++n)
    for (index_t co = 0; co < g.C_out; ++co)
      for (index_t oh = 0; oh < Ho; ++oh)
        for (index_t ow = 0; ow < Wo; ++ow) {
          double s = b.empty() ? 0.0 : b[static_cast<std::size_t>(co)];
          const index_t grp = co / Og;
          for (index_t ci = 0; ci < Cg; ++ci)
            for (index_t kh = 0; kh < g.KH; ++kh)
              for (index_t kw = 0; kw < g.KW; ++kw) {
                const index_t ih = oh * g.stride.h - g.padding.h + kh * g.dilation.h;
                const index_t iw = ow * g.stride.w - g.padding.w + kw * g.dilation.w;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                s += w[static_cast<std::size_t>(((co * Cg + ci) * g.KH + kh) * g.KW + kw)] *
                     x[static_cast<std::size_t>(((n * g.C_in + grp * Cg + ci) * g.H + ih) * g.W + iw)];
              }
          y[static_cast<std::size_t>(((n * g.C_out + co) * Ho + oh) * Wo + ow)] = s;
        }
  return y;
}

// Every input pixel scatters w[ci, co, kh, kw]·x[n, ci, h, w] to y[n, group·Og + co, h·s − p + kh·d, w·s − p + kw·d].
std::vector<double> naive_conv_transpose2d(const Geometry& g, const std::vector<double>& x,
                                           const std::vector<double>& w, const std::vector<double>& b, index_t& Ho,
                                           index_t& Wo) {
  Ho = (g.H - 1) * g.stride.h - 2 * g.padding.h + g.dilation.h * (g.KH - 1) + g.output_padding.h + 1;
  Wo = (g.W - 1) * g.stride.w - 2 * g.padding.w + g.dilation.w * (g.KW - 1) + g.output_padding.w + 1;
  const index_t Cg = g.C_in / g.groups, Og = g.C_out / g.groups;
  std::vector<double> y(static_cast<std::size_t>(g.N * g.C_out * Ho * Wo));
  for (index_t n = 0; n < g.N; ++n)
    for (index_t co = 0; co < g.C_out; ++co)
      for (index_t p = 0; p < Ho * Wo; ++p)
        y[static_cast<std::size_t>((n * g.C_out + co) * Ho * Wo + p)] = b.empty() ? 0.0 : b[static_cast<std::size_t>(co)];
  for (index_t n = 0; n < g.N; ++n)
    for (index_t ci = 0; ci < g.C_in; ++ci)
      for (index_t h = 0; h < g.H; ++h)
        for (index_t wi = 0; wi < g.W; ++wi) {
          const double v = x[static_cast<std::size_t>(((n * g.C_in + ci) * g.H + h) * g.W + wi)];
          const index_t grp = ci / Cg;
          for (index_t co = 0; co < Og; ++co)
            for (index_t kh = 0; kh < g.KH; ++kh)
              for (index_t kw = 0; kw < g.KW; ++kw) {
                const index_t oh = h * g.stride.h - g.padding.h + kh * g.dilation.h;
                const index_t ow = wi * g.stride.w - g.padding.w + kw * g.dilation.w;
                if (oh < 0 || oh >= Ho || ow < 0 || ow >= Wo) continue;
                y[static_cast<std::size_t>(((n * g.C_out + grp * Og + co) * Ho + oh) * Wo + ow)] +=
                    w[static_cast<std::size_t>(((ci * Og + co) * g.KH + kh) * g.KW + kw)] * v;
              }
        }
  return y;
}

template <class T>
std::vector<double> as_double(const Tensor<T>& t) {
  if (!t.defined()) return {};
  const auto v = t.to_vector();
  return std::vector<double>(v.begin(), v.end());
}

template <class T>
void check_values(const Tensor<T>& got, const std::vector<double>& want, double tol) {
  const auto v = got.to_vector();
  REQUIRE(v.size() == want.size());
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double err = std::abs(static_cast<double>(v[i]) - want[i]) / (1 + std::abs(want[i]));
    if (err > worst) worst = err, at = i;
  }
  INFO("worst element " << at << " off by " << worst);
  CHECK(worst <= tol);
}

Shape conv_weight_shape(const Geometry& g) { return Shape{g.C_out, g.C_in / g.groups, g.KH, g.KW}; }
Shape transposed_weight_shape(const Geometry& g) { return Shape{g.C_in, g.C_out / g.groups, g.KH, g.KW}; }

Tensor<double> conv_of(const Geometry& g, const Vec& v) {
  return kiln::conv2d(v[0], v[1], v.size() > 2 ? v[2] : Tensor<double>(), g.stride, g.padding, g.dilation, g.groups);
}
Tensor<double> transposed_of(const Geometry& g, const Vec& v) {
  return kiln::conv_transpose2d(v[0], v[1], v.size() > 2 ? v[2] : Tensor<double>(), g.stride, g.padding,
                                g.output_padding, g.groups, g.dilation);
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

// Geometries for conv2d: strides, paddings, dilations, groups, rectangular kernels and inputs.
const std::vector<Geometry> conv_geometries = {
    {2, 3, 5, 5, 4, 3, 3, 1, 0, 1, 1},
    {2, 3, 6, 5, 2, 3, 3, 2, 1, 1, 1},
    {1, 4, 7, 6, 6, 3, 2, {2, 1}, {1, 0}, 1, 2},
    {2, 2, 7, 7, 3, 3, 3, 1, 2, 2, 1},
    {1, 6, 5, 6, 4, 2, 3, {1, 2}, {0, 1}, {2, 1}, 2},
    {2, 4, 4, 4, 4, 1, 1, 1, 0, 1, 4},  // depthwise 1x1
    {1, 2, 9, 8, 2, 4, 4, 2, 1, 1, 1},  // the DCGAN kernel
    {1, 3, 6, 6, 3, 3, 3, 3, 1, 1, 3},  // stride larger than the step between taps
};

// Geometries for conv_transpose2d, including output_padding < stride and, with a dilation above
// the stride, output_padding >= stride.
const std::vector<Geometry> transposed_geometries = {
    {2, 3, 4, 4, 2, 3, 3, 1, 0, 1, 1, 0},
    {2, 4, 3, 4, 2, 4, 4, 2, 1, 1, 1, 0},  // the DCGAN generator layer
    {1, 4, 3, 3, 6, 3, 2, {2, 3}, {1, 0}, 1, 2, {1, 2}},
    {2, 2, 3, 4, 3, 3, 3, 1, 1, 2, 1, 1},  // output_padding 1 with stride 1, dilation 2
    {1, 6, 3, 3, 4, 2, 3, {1, 2}, 0, {3, 2}, 2, {2, 1}},
    {1, 4, 4, 3, 4, 1, 1, 2, 0, 1, 4, 1},
};

}  // namespace

TEST_CASE("conv2d by hand") {
  // x = 1..9 as 3x3, a 2x2 kernel [[1, 0], [0, -1]]: y[i][j] = x[i][j] - x[i+1][j+1] = -4 everywhere, + bias 1.
  auto x = kiln::arange<float>(1, 10).reshape({1, 1, 3, 3});
  auto w = kiln::from_vector<float>({1, 0, 0, -1}, {1, 1, 2, 2});
  auto b = kiln::from_vector<float>({1});
  CHECK(kiln::conv2d(x, w, b).to_vector() == std::vector<float>{-3, -3, -3, -3});
  // padding 1, stride 2: windows at (-1,-1), (-1,1), (1,-1), (1,1): y = x[i][j]·1 − x[i+1][j+1]·1 with zeros outside.
  CHECK(kiln::conv2d(x, w, {}, 2, 1).to_vector() == std::vector<float>{-1, -3, -7, -4});
  // A transposed 1x1 convolution with stride 2 spreads the pixels apart.
  auto one = kiln::from_vector<float>({2}, {1, 1, 1, 1});
  auto xt = kiln::from_vector<float>({1, 2, 3, 4}, {1, 1, 2, 2});
  CHECK(kiln::conv_transpose2d(xt, one, {}, 2).to_vector() == std::vector<float>{2, 0, 4, 0, 0, 0, 6, 0, 8});
}

TEST_CASE("conv2d forward against a naive loop") {
  for (const auto& g : conv_geometries) {
    CAPTURE(describe(g));
    for (bool with_bias : {true, false}) {
      auto x = rnd<float>({g.N, g.C_in, g.H, g.W}, 1);
      auto w = rnd<float>(conv_weight_shape(g), 2);
      auto b = with_bias ? rnd<float>({g.C_out}, 3) : Tensor<float>();
      index_t Ho = 0, Wo = 0;
      const auto want = naive_conv2d(g, as_double(x), as_double(w), as_double(b), Ho, Wo);
      auto y = kiln::conv2d(x, w, b, g.stride, g.padding, g.dilation, g.groups);
      REQUIRE(y.shape() == Shape{g.N, g.C_out, Ho, Wo});
      check_values(y, want, 1e-5);
      // double precision
      auto yd = kiln::conv2d(x.to<double>(), w.to<double>(), with_bias ? b.to<double>() : Tensor<double>(), g.stride,
                             g.padding, g.dilation, g.groups);
      check_values(yd, want, 1e-12);
    }
  }
}

TEST_CASE("conv_transpose2d forward against a naive loop") {
  for (const auto& g : transposed_geometries) {
    CAPTURE(describe(g));
    for (bool with_bias : {true, false}) {
      auto x = rnd<float>({g.N, g.C_in, g.H, g.W}, 4);
      auto w = rnd<float>(transposed_weight_shape(g), 5);
      auto b = with_bias ? rnd<float>({g.C_out}, 6) : Tensor<float>();
      index_t Ho = 0, Wo = 0;
      const auto want = naive_conv_transpose2d(g, as_double(x), as_double(w), as_double(b), Ho, Wo);
      auto y = kiln::conv_transpose2d(x, w, b, g.stride, g.padding, g.output_padding, g.groups, g.dilation);
      REQUIRE(y.shape() == Shape{g.N, g.C_out, Ho, Wo});
      check_values(y, want, 1e-5);
    }
  }
}

TEST_CASE("unbatched inputs, strided views and an empty batch") {
  const Geometry g{1, 4, 6, 5, 6, 3, 3, 2, 1, 1, 2};
  auto x = rnd<float>({4, 6, 5}, 1);
  auto w = rnd<float>(conv_weight_shape(g), 2);
  auto b = rnd<float>({6}, 3);
  auto y3 = kiln::conv2d(x, w, b, g.stride, g.padding, g.dilation, g.groups);
  auto y4 = kiln::conv2d(x.unsqueeze(0), w, b, g.stride, g.padding, g.dilation, g.groups);
  REQUIRE(y3.shape() == Shape{6, 3, 3});
  CHECK(y3.to_vector() == y4.to_vector());
  // x as a permuted NHWC buffer, w with its dims swapped back, b with a stride of 2: same values.
  auto x_view = x.unsqueeze(0).permute({0, 2, 3, 1}).contiguous().permute({0, 3, 1, 2});
  auto w_view = w.permute({1, 0, 2, 3}).contiguous().permute({1, 0, 2, 3});
  auto b_view = kiln::zeros<float>({12});
  b_view.slice(0, 0, 12, 2).assign(b);
  REQUIRE_FALSE(x_view.is_contiguous());
  REQUIRE_FALSE(w_view.is_contiguous());
  auto ys = kiln::conv2d(x_view, w_view, b_view.slice(0, 0, 12, 2), g.stride, g.padding, g.dilation, g.groups);
  CHECK(ys.to_vector() == y4.to_vector());
  // conv_transpose2d: unbatched and a transposed view of the input's spatial dims
  auto xt = rnd<float>({2, 3, 4, 4}, 4);
  auto wt = rnd<float>({3, 2, 3, 3}, 5);
  auto full = kiln::conv_transpose2d(xt.transpose(2, 3).contiguous(), wt, {}, 2, 1);
  CHECK(kiln::conv_transpose2d(xt.transpose(2, 3), wt, {}, 2, 1).to_vector() == full.to_vector());
  CHECK(kiln::conv_transpose2d(xt.select(0, 1), wt, {}, 2, 1).shape() == Shape{2, 7, 7});
  // N = 0 gives an empty batch, and zero weight gradients
  auto empty_x = kiln::zeros<double>({0, 4, 6, 5}).requires_grad();
  auto wd = w.to<double>().requires_grad();
  auto ye = kiln::conv2d(empty_x, wd, {}, g.stride, g.padding, g.dilation, g.groups);
  CHECK(ye.shape() == Shape{0, 6, 3, 3});
  kiln::sum(ye).backward();
  CHECK(wd.grad().shape() == wd.shape());
  for (double v : wd.grad().to_vector()) CHECK(v == 0.0);
}

TEST_CASE("conv shape errors name the op and the shapes") {
  auto x = rnd<float>({2, 4, 6, 6}, 1);
  auto w = rnd<float>({3, 4, 3, 3}, 2);
  CHECK_THROWS_WITH_AS(kiln::conv2d(x, rnd<float>({3, 4, 3}, 2)),
                       doctest::Contains("kiln::conv2d: the weight must be 4-d"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::conv2d(rnd<float>({2, 5, 6, 6}, 1), w),
                       doctest::Contains("shapes [2, 5, 6, 6] and [3, 4, 3, 3]"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::conv2d(x, w, {}, 1, 0, 1, 2), doctest::Contains("kiln::conv2d"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::conv2d(x, rnd<float>({3, 2, 3, 3}, 2), {}, 1, 0, 1, 2),
                       doctest::Contains("not divisible by groups"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::conv2d(x, w, rnd<float>({4}, 3)), doctest::Contains("bias"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::conv2d(x, rnd<float>({3, 4, 7, 7}, 2)), doctest::Contains("larger than the padded input"),
                       kiln::ShapeError);
  CHECK_THROWS_AS(kiln::conv2d(rnd<float>({6, 6}, 1), w), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::conv2d(x, w, {}, 0), kiln::ValueError);
  CHECK_THROWS_AS(kiln::conv2d(x, w, {}, 1, -1), kiln::ValueError);
  CHECK_THROWS_AS(kiln::conv2d(x, w, {}, 1, 0, 0), kiln::ValueError);
  CHECK_THROWS_AS(kiln::conv2d(x, w, {}, 1, 0, 1, 0), kiln::ValueError);
  auto wt = rnd<float>({4, 3, 3, 3}, 2);
  CHECK_THROWS_WITH_AS(kiln::conv_transpose2d(rnd<float>({2, 3, 6, 6}, 1), wt),
                       doctest::Contains("kiln::conv_transpose2d"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::conv_transpose2d(x, wt, {}, 2, 0, 2), doctest::Contains("output_padding"),
                       kiln::ValueError);
  CHECK_THROWS_AS(kiln::conv_transpose2d(x, wt, {}, 1, 0, 0, 3), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::conv_transpose2d(x, wt, rnd<float>({4}, 3)), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::conv_transpose2d(rnd<float>({2, 4, 1, 1}, 1), wt, {}, 1, 2), kiln::ShapeError);
}

TEST_CASE("conv2d gradcheck over strides, paddings, dilations and groups") {
  for (const auto& g : conv_geometries) {
    CAPTURE(describe(g));
    const Vec in{rnd<double>({g.N, g.C_in, g.H, g.W}, 1), rnd<double>(conv_weight_shape(g), 2),
                 rnd<double>({g.C_out}, 3)};
    expect_gradcheck([g](const Vec& v) { return conv_of(g, v); }, in, false);
    expect_gradcheck([g](const Vec& v) { return conv_of(g, v); }, {in[0], in[1]}, false);
  }
}

TEST_CASE("conv_transpose2d gradcheck over strides, paddings, output paddings, dilations and groups") {
  for (const auto& g : transposed_geometries) {
    CAPTURE(describe(g));
    const Vec in{rnd<double>({g.N, g.C_in, g.H, g.W}, 4), rnd<double>(transposed_weight_shape(g), 5),
                 rnd<double>({g.C_out}, 6)};
    expect_gradcheck([g](const Vec& v) { return transposed_of(g, v); }, in, false);
  }
}

TEST_CASE("gradcheck with non-contiguous inputs and gradients") {
  const Geometry g{2, 4, 5, 6, 4, 3, 3, 2, 1, 1, 2};
  // x arrives as NHWC and is permuted to NCHW, w as [KH, KW, C_out, C_in/g], b with a stride of 2;
  // the output is used transposed, so the incoming gradient is not contiguous either.
  expect_gradcheck(
      [g](const Vec& v) {
        auto y = conv_of(g, {v[0].permute({0, 3, 1, 2}), v[1].permute({2, 3, 0, 1}), v[2].slice(0, 0, 8, 2)});
        return y.transpose(2, 3);
      },
      {rnd<double>({2, 5, 6, 4}, 1), rnd<double>({3, 3, 4, 2}, 2), rnd<double>({8}, 3)}, true);
  const Geometry t{2, 4, 3, 4, 2, 3, 3, 2, 1, 1, 2, 1};
  expect_gradcheck(
      [t](const Vec& v) {
        auto y = transposed_of(t, {v[0].permute({0, 3, 1, 2}), v[1].permute({2, 3, 0, 1}), v[2]});
        return y.permute({0, 2, 3, 1});
      },
      {rnd<double>({2, 3, 4, 4}, 4), rnd<double>({3, 3, 4, 1}, 5), rnd<double>({2}, 6)}, true);
}

TEST_CASE("conv2d and conv_transpose2d gradgradcheck") {
  for (std::size_t i : {0u, 1u, 2u, 4u, 7u}) {
    const Geometry g = conv_geometries[i];
    CAPTURE(describe(g));
    expect_gradcheck([g](const Vec& v) { return conv_of(g, v); },
                     {rnd<double>({g.N, g.C_in, g.H, g.W}, 7), rnd<double>(conv_weight_shape(g), 8),
                      rnd<double>({g.C_out}, 9)},
                     true);
  }
  for (std::size_t i : {1u, 2u, 3u, 4u}) {
    const Geometry g = transposed_geometries[i];
    CAPTURE(describe(g));
    expect_gradcheck([g](const Vec& v) { return transposed_of(g, v); },
                     {rnd<double>({g.N, g.C_in, g.H, g.W}, 10), rnd<double>(transposed_weight_shape(g), 11),
                      rnd<double>({g.C_out}, 12)},
                     true);
  }
  // Third order through a nonlinearity: the gradient of a gradient penalty's gradient.
  const Geometry g = conv_geometries[1];
  expect_gradcheck(
      [g](const Vec& v) {
        kiln::EnableGrad on;  // gradcheck evaluates f under NoGrad; the inner gradient needs a graph
        auto x = v[0];
        auto y = kiln::sum(Tensor<double>(kiln::tanh(conv_of(g, {x, v[1]}))));
        auto gx = kiln::grad<double, kiln::cpu>({y}, {x}, {}, true, true)[0];
        return Tensor<double>(gx * gx);
      },
      {rnd<double>({g.N, g.C_in, g.H, g.W}, 13), rnd<double>(conv_weight_shape(g), 14)}, true);
}

TEST_CASE("gradients only for the inputs that need them") {
  const Geometry g = conv_geometries[2];
  const auto x = rnd<double>({g.N, g.C_in, g.H, g.W}, 1);
  const auto w = rnd<double>(conv_weight_shape(g), 2);
  const auto b = rnd<double>({g.C_out}, 3);
  expect_gradcheck([g, x](const Vec& v) { return conv_of(g, {x, v[0], v[1]}); }, {w, b}, true);
  expect_gradcheck([g, w](const Vec& v) { return conv_of(g, {v[0], w}); }, {x}, true);
  expect_gradcheck([g, x, w](const Vec& v) { return conv_of(g, {x, w, v[0]}); }, {b}, true);
  auto wt = w.clone().requires_grad();
  kiln::sum(conv_of(g, {x, wt})).backward();
  CHECK(wt.grad().defined());
  CHECK_FALSE(x.tracks_grad());
}

TEST_CASE("plain backward agrees with the create_graph path") {
  for (const auto& g : {conv_geometries[1], conv_geometries[4]}) {
    CAPTURE(describe(g));
    auto x = rnd<double>({g.N, g.C_in, g.H, g.W}, 1).requires_grad();
    auto w = rnd<double>(conv_weight_shape(g), 2).requires_grad();
    auto b = rnd<double>({g.C_out}, 3).requires_grad();
    auto y = conv_of(g, {x, w, b});
    auto seed = rnd<double>(y.shape(), 4);
    auto plain = kiln::grad<double, kiln::cpu>({y}, {x, w, b}, {seed}, true, false);
    auto graph = kiln::grad<double, kiln::cpu>({y}, {x, w, b}, {seed}, true, true);
    for (std::size_t k = 0; k < 3; ++k) {
      CHECK_FALSE(plain[k].tracks_grad());
      // ∂L/∂b = Σ seed depends on no tracked tensor, so it is not tracked either (as in PyTorch).
      CHECK(graph[k].tracks_grad() == (k < 2));
      check_values(plain[k], as_double(graph[k].detach()), 1e-12);
    }
    // ∂L/∂b is the sum of the seed over batch and pixels
    const auto sv = seed.to_vector();
    const index_t plane = y.size(2) * y.size(3);
    for (index_t c = 0; c < g.C_out; ++c) {
      double s = 0;
      for (index_t n = 0; n < g.N; ++n)
        for (index_t p = 0; p < plane; ++p) s += sv[static_cast<std::size_t>((n * g.C_out + c) * plane + p)];
      CHECK(plain[2].at({c}) == doctest::Approx(s).epsilon(1e-12));
    }
  }
}

// --- PyTorch cross-check (tests/torch/conv_reference.py) ---------------------------------------

namespace {

struct TorchCase {
  std::string name, description;
  std::vector<std::pair<std::string, Tensor<float>>> inputs;
  Tensor<float> seed, y;
  std::vector<Tensor<float>> grads;
};

std::string pair_text(Size2d s) { return std::to_string(s.h) + "," + std::to_string(s.w); }

// Tracked leaves for the case's inputs, the output from `f`, and the gradients of sum(y·seed).
TorchCase make_case(const std::string& name, const std::string& description,
                    std::vector<std::pair<std::string, Tensor<float>>> inputs,
                    const std::function<Tensor<float>(const std::vector<Tensor<float>>&)>& f, std::uint64_t seed) {
  TorchCase c{name, description, std::move(inputs), {}, {}, {}};
  std::vector<Tensor<float>> leaves;
  for (auto& [n, t] : c.inputs) leaves.push_back(t.clone().requires_grad());
  c.y = f(leaves);
  c.seed = rnd<float>(c.y.shape(), seed);
  // allow_unused: an input the output does not depend on gets zeros, as PyTorch's graph gives.
  c.grads = kiln::grad<float, kiln::cpu>({c.y}, leaves, {c.seed}, false, false, true);
  for (std::size_t k = 0; k < c.grads.size(); ++k)
    if (!c.grads[k].defined()) c.grads[k] = kiln::zeros<float>(leaves[k].shape());
  c.y = c.y.detach();
  return c;
}

void check_close(const Tensor<float>& got, const Tensor<double>& want, const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  const auto g = got.to_vector();
  const auto w = want.to_vector();
  double scale = 0;
  for (double v : w) scale = std::max(scale, std::abs(v));
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(static_cast<double>(g[i]) - w[i]) / (2e-5 * std::max(scale, 1e-3) + 1e-4 * std::abs(w[i]));
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
    std::string names;
    for (const auto& [n, t] : c.inputs) {
      entries.emplace_back(c.name + "." + n, t);
      names += (names.empty() ? "" : ",") + n;
    }
    entries.emplace_back(c.name + ".seed", c.seed);
    metadata[c.name] = c.description + " inputs=" + names;
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
    for (std::size_t k = 0; k < c.inputs.size(); ++k)
      check_close(c.grads[k], reference.get<double>(c.name + ".grad." + c.inputs[k].first),
                  c.name + " gradient of " + c.inputs[k].first);
  }
}

std::string conv_description(const Geometry& g) {
  return "op=conv2d stride=" + pair_text(g.stride) + " padding=" + pair_text(g.padding) +
         " dilation=" + pair_text(g.dilation) + " groups=" + std::to_string(g.groups);
}
std::string transposed_description(const Geometry& g) {
  return "op=conv_transpose2d stride=" + pair_text(g.stride) + " padding=" + pair_text(g.padding) +
         " output_padding=" + pair_text(g.output_padding) + " groups=" + std::to_string(g.groups) +
         " dilation=" + pair_text(g.dilation);
}

TorchCase conv_case(const std::string& name, const Geometry& g, bool bias, std::uint64_t seed, double w_scale = 1.0) {
  std::vector<std::pair<std::string, Tensor<float>>> in{{"x", rnd<float>({g.N, g.C_in, g.H, g.W}, seed)},
                                                        {"w", rnd<float>(conv_weight_shape(g), seed + 1, w_scale)}};
  if (bias) in.emplace_back("b", rnd<float>({g.C_out}, seed + 2));
  return make_case(name, conv_description(g), in,
                   [g](const std::vector<Tensor<float>>& v) {
                     return kiln::conv2d(v[0], v[1], v.size() > 2 ? v[2] : Tensor<float>(), g.stride, g.padding,
                                         g.dilation, g.groups);
                   },
                   seed + 3);
}

TorchCase transposed_case(const std::string& name, const Geometry& g, bool bias, std::uint64_t seed,
                          double w_scale = 1.0) {
  std::vector<std::pair<std::string, Tensor<float>>> in{
      {"x", rnd<float>({g.N, g.C_in, g.H, g.W}, seed)}, {"w", rnd<float>(transposed_weight_shape(g), seed + 1, w_scale)}};
  if (bias) in.emplace_back("b", rnd<float>({g.C_out}, seed + 2));
  return make_case(name, transposed_description(g), in,
                   [g](const std::vector<Tensor<float>>& v) {
                     return kiln::conv_transpose2d(v[0], v[1], v.size() > 2 ? v[2] : Tensor<float>(), g.stride,
                                                   g.padding, g.output_padding, g.groups, g.dilation);
                   },
                   seed + 3);
}

}  // namespace

TEST_CASE("conv2d and conv_transpose2d agree with PyTorch, DCGAN layer shapes included") {
  std::vector<TorchCase> cases;
  for (std::size_t i = 0; i < conv_geometries.size(); ++i)
    cases.push_back(conv_case("conv" + std::to_string(i), conv_geometries[i], i % 2 == 0, 100 + 10 * i));
  for (std::size_t i = 0; i < transposed_geometries.size(); ++i)
    cases.push_back(
        transposed_case("convt" + std::to_string(i), transposed_geometries[i], i % 2 == 1, 300 + 10 * i));
  // W4: D = Conv(1, 64, 4, 2, 1) on 28x28, Conv(64, 128, 4, 2, 1) on 14x14;
  //     G = ConvT(128, 64, 4, 2, 1) on 7x7, ConvT(64, 1, 4, 2, 1) on 14x14; batch 2, weights at
  //     PyTorch's init scale 1/√fan_in.
  cases.push_back(conv_case("dcgan_d1", {2, 1, 28, 28, 64, 4, 4, 2, 1, 1, 1}, true, 500, 1.0 / 4));
  cases.push_back(conv_case("dcgan_d2", {2, 64, 14, 14, 128, 4, 4, 2, 1, 1, 1}, true, 510, 1.0 / 32));
  cases.push_back(transposed_case("dcgan_g1", {2, 128, 7, 7, 64, 4, 4, 2, 1, 1, 1, 0}, true, 520, 1.0 / 32));
  cases.push_back(transposed_case("dcgan_g2", {2, 64, 14, 14, 1, 4, 4, 2, 1, 1, 1, 0}, true, 530, 1.0 / 4));
  // R1 penalty through a two-layer convolutional discriminator: its gradients are second
  // derivatives of the convolutions (create_graph). With leaky_relu the penalty does not depend
  // on x (the network is piecewise linear in x); with tanh every second derivative is nonzero.
  for (const std::string act : {"leaky_relu", "tanh"})
    cases.push_back(make_case(
        "r1_" + act, "op=r1_penalty act=" + act,
        {{"x", rnd<float>({2, 1, 12, 12}, 600)},
         {"w1", rnd<float>({4, 1, 4, 4}, 601, 0.5)},
         {"b1", rnd<float>({4}, 602)},
         {"w2", rnd<float>({3, 4, 4, 4}, 603, 0.25)},
         {"b2", rnd<float>({3}, 604)},
         {"r", rnd<float>({2, 3, 3, 3}, 605)}},
        [act](const std::vector<Tensor<float>>& v) {
          auto pre = kiln::conv2d(v[0], v[1], v[2], 2, 1);
          auto h = act == "tanh" ? Tensor<float>(kiln::tanh(pre)) : Tensor<float>(kiln::leaky_relu(pre, 0.2));
          auto score = kiln::sum(Tensor<float>(kiln::conv2d(h, v[3], v[4], 2, 1) * v[5]));
          auto gx = kiln::grad<float, kiln::cpu>({score}, {v[0]}, {}, true, true)[0];
          return kiln::sum(Tensor<float>(gx * gx)).reshape({1});
        },
        606));
  compare_with_torch(cases, "conv");
}
