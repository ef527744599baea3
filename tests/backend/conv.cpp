// Tests for kiln/backend/cpu/conv.hpp: Conv2d and ConvTranspose2d forward kernels against naive
// direct loops in double (many random configurations, float and double), backward kernels
// against central finite differences of the forward, hand-computed cases, errors.
#include <doctest/doctest.h>

#include <kiln/backend/cpu/conv.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace {

using kiln::index_t;
namespace cpu = kiln::backend::cpu;

struct Lcg {
  std::uint64_t s;
  explicit Lcg(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL) {}
  std::uint64_t bits() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return s >> 17;
  }
  double uniform() {
    return static_cast<double>(bits() % (1ULL << 40)) / double(1ULL << 40) * 2 - 1;
  }
  index_t range(index_t lo, index_t hi) {  // inclusive
    return lo + static_cast<index_t>(bits() % static_cast<std::uint64_t>(hi - lo + 1));
  }
};

std::vector<double> random_values(index_t n, Lcg& rng) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = rng.uniform();
  return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// ------------------------------------------------------------------------------ references
// Conv2d straight from its definition, in double; `mag` receives sum |terms| per output.
std::vector<double> reference_conv2d(const cpu::Conv2dParams& p, const std::vector<double>& x,
                                     const std::vector<double>& w, const double* bias,
                                     std::vector<double>* mag = nullptr) {
  const index_t Ho = p.H_out(), Wo = p.W_out();
  const index_t cin_g = p.C_in / p.groups, cout_g = p.C_out / p.groups;
  std::vector<double> y(static_cast<std::size_t>(p.N * p.C_out * Ho * Wo));
  if (mag) mag->assign(y.size(), 0.0);
  for (index_t n = 0; n < p.N; ++n)
    for (index_t co = 0; co < p.C_out; ++co)
      for (index_t oh = 0; oh < Ho; ++oh)
        for (index_t ow = 0; ow < Wo; ++ow) {
          double s = bias ? bias[co] : 0.0, m = bias ? std::fabs(bias[co]) : 0.0;
          const index_t g = co / cout_g;
          for (index_t cg = 0; cg < cin_g; ++cg)
            for (index_t kh = 0; kh < p.KH; ++kh)
              for (index_t kw = 0; kw < p.KW; ++kw) {
                const index_t ih = oh * p.stride_h - p.pad_h + kh * p.dilation_h;
                const index_t iw = ow * p.stride_w - p.pad_w + kw * p.dilation_w;
                if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
                const index_t ci = g * cin_g + cg;
                const double term =
                    w[static_cast<std::size_t>(((co * cin_g + cg) * p.KH + kh) * p.KW + kw)] *
                    x[static_cast<std::size_t>(((n * p.C_in + ci) * p.H + ih) * p.W + iw)];
                s += term;
                m += std::fabs(term);
              }
          const auto at = static_cast<std::size_t>(((n * p.C_out + co) * Ho + oh) * Wo + ow);
          y[at] = s;
          if (mag) (*mag)[at] = m;
        }
  return y;
}

// ConvTranspose2d as a scatter, straight from its definition, in double.
std::vector<double> reference_conv_transpose2d(const cpu::ConvTranspose2dParams& p,
                                               const std::vector<double>& x,
                                               const std::vector<double>& w, const double* bias,
                                               std::vector<double>* mag = nullptr) {
  const index_t Ho = p.H_out(), Wo = p.W_out();
  const index_t cin_g = p.C_in / p.groups, cout_g = p.C_out / p.groups;
  std::vector<double> y(static_cast<std::size_t>(p.N * p.C_out * Ho * Wo), 0.0);
  std::vector<double> m(y.size(), 0.0);
  for (index_t n = 0; n < p.N; ++n)
    for (index_t co = 0; co < p.C_out; ++co)
      for (index_t i = 0; i < Ho * Wo; ++i) {
        y[static_cast<std::size_t>((n * p.C_out + co) * Ho * Wo + i)] = bias ? bias[co] : 0.0;
        m[static_cast<std::size_t>((n * p.C_out + co) * Ho * Wo + i)] =
            bias ? std::fabs(bias[co]) : 0.0;
      }
  for (index_t n = 0; n < p.N; ++n)
    for (index_t ci = 0; ci < p.C_in; ++ci)
      for (index_t ih = 0; ih < p.H; ++ih)
        for (index_t iw = 0; iw < p.W; ++iw) {
          const double v = x[static_cast<std::size_t>(((n * p.C_in + ci) * p.H + ih) * p.W + iw)];
          const index_t g = ci / cin_g;
          for (index_t cg = 0; cg < cout_g; ++cg)
            for (index_t kh = 0; kh < p.KH; ++kh)
              for (index_t kw = 0; kw < p.KW; ++kw) {
                const index_t oh = ih * p.stride_h - p.pad_h + kh * p.dilation_h;
                const index_t ow = iw * p.stride_w - p.pad_w + kw * p.dilation_w;
                if (oh < 0 || oh >= Ho || ow < 0 || ow >= Wo) continue;
                const index_t co = g * cout_g + cg;
                const double term =
                    v * w[static_cast<std::size_t>(((ci * cout_g + cg) * p.KH + kh) * p.KW + kw)];
                const auto at = static_cast<std::size_t>(((n * p.C_out + co) * Ho + oh) * Wo + ow);
                y[at] += term;
                m[at] += std::fabs(term);
              }
        }
  if (mag) *mag = m;
  return y;
}

// ------------------------------------------------------------------------------ configurations
cpu::Conv2dParams random_conv(Lcg& rng, index_t max_batch = 3) {
  cpu::Conv2dParams p;
  const index_t group_choices[] = {1, 2, 4};
  p.groups = group_choices[rng.range(0, 2)];
  p.N = rng.range(1, max_batch);
  p.C_in = p.groups * rng.range(1, 3);
  p.C_out = p.groups * rng.range(1, 3);
  p.KH = rng.range(1, 4);
  p.KW = rng.range(1, 4);
  p.stride_h = rng.range(1, 3);
  p.stride_w = rng.range(1, 3);
  p.pad_h = rng.range(0, 2);
  p.pad_w = rng.range(0, 2);
  p.dilation_h = rng.range(1, 2);
  p.dilation_w = rng.range(1, 2);
  const index_t eff_h = p.dilation_h * (p.KH - 1) + 1, eff_w = p.dilation_w * (p.KW - 1) + 1;
  p.H = std::max<index_t>(1, eff_h - 2 * p.pad_h) + rng.range(0, 7);
  p.W = std::max<index_t>(1, eff_w - 2 * p.pad_w) + rng.range(0, 7);
  return p;
}

cpu::ConvTranspose2dParams random_conv_transpose(Lcg& rng, index_t max_batch = 3) {
  for (;;) {
    cpu::ConvTranspose2dParams p;
    const index_t group_choices[] = {1, 2, 4};
    p.groups = group_choices[rng.range(0, 2)];
    p.N = rng.range(1, max_batch);
    p.C_in = p.groups * rng.range(1, 3);
    p.C_out = p.groups * rng.range(1, 3);
    p.KH = rng.range(1, 4);
    p.KW = rng.range(1, 4);
    p.stride_h = rng.range(1, 3);
    p.stride_w = rng.range(1, 3);
    p.pad_h = rng.range(0, 2);
    p.pad_w = rng.range(0, 2);
    p.dilation_h = rng.range(1, 2);
    p.dilation_w = rng.range(1, 2);
    p.output_padding_h = rng.range(0, std::max(p.stride_h, p.dilation_h) - 1);
    p.output_padding_w = rng.range(0, std::max(p.stride_w, p.dilation_w) - 1);
    p.H = rng.range(1, 7);
    p.W = rng.range(1, 7);
    if (p.H_out() >= 1 && p.W_out() >= 1) return p;
  }
}

template <class P>
std::string describe(const P& p) {
  return "N " + std::to_string(p.N) + ", " + p.describe();
}

double sum_products(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks got against want within rel·(mag + scale) per element (mag: sum |terms|).
template <class T>
void check_close(const std::vector<T>& got, const std::vector<double>& want,
                 const std::vector<double>& mag, double rel, const std::string& what) {
  REQUIRE(got.size() == want.size());
  int bad = 0;
  for (std::size_t i = 0; i < got.size() && bad < 5; ++i) {
    const double tol = rel * (mag[i] + 1e-3);
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= tol)) {
      ++bad;
      FAIL_CHECK(what << ": element " << i << " = " << static_cast<double>(got[i]) << ", want "
                      << want[i] << " (error " << err << ", tolerance " << tol << ")");
    }
  }
}

template <class T>
void check_conv_forward(const cpu::Conv2dParams& p, Lcg& rng, double rel) {
  const auto x = random_values(p.N * p.C_in * p.H * p.W, rng);
  const auto w = random_values(p.C_out * (p.C_in / p.groups) * p.KH * p.KW, rng);
  const auto b = random_values(p.C_out, rng);
  const bool with_bias = rng.range(0, 1) == 1;
  std::vector<double> mag;
  const auto want = reference_conv2d(p, x, w, with_bias ? b.data() : nullptr, &mag);
  const auto xt = cast<T>(x), wt = cast<T>(w), bt = cast<T>(b);
  std::vector<T> y(want.size(), T(7));
  cpu::conv2d_forward<T>(p, xt.data(), wt.data(), with_bias ? bt.data() : nullptr, y.data());
  check_close(y, want, mag, rel, "conv2d_forward " + describe(p));
}

template <class T>
void check_conv_transpose_forward(const cpu::ConvTranspose2dParams& p, Lcg& rng, double rel) {
  const auto x = random_values(p.N * p.C_in * p.H * p.W, rng);
  const auto w = random_values(p.C_in * (p.C_out / p.groups) * p.KH * p.KW, rng);
  const auto b = random_values(p.C_out, rng);
  const bool with_bias = rng.range(0, 1) == 1;
  std::vector<double> mag;
  const auto want = reference_conv_transpose2d(p, x, w, with_bias ? b.data() : nullptr, &mag);
  const auto xt = cast<T>(x), wt = cast<T>(w), bt = cast<T>(b);
  std::vector<T> y(want.size(), T(7));
  cpu::conv_transpose2d_forward<T>(p, xt.data(), wt.data(), with_bias ? bt.data() : nullptr,
                                   y.data());
  check_close(y, want, mag, rel, "conv_transpose2d_forward " + describe(p));
}

// ------------------------------------------------------------------------------ finite differences
// The gradient of L(v) = sum(f(v)·r) by central differences, element by element, in double.
template <class F>
std::vector<double> numeric_gradient(std::vector<double> v, F&& loss, double h = 1e-3) {
  std::vector<double> g(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + h;
    const double up = loss(v);
    v[i] = keep - h;
    const double down = loss(v);
    v[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

void check_gradient(const std::vector<double>& got, const std::vector<double>& want,
                    const std::string& what) {
  REQUIRE(got.size() == want.size());
  double scale = 1;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  int bad = 0;
  for (std::size_t i = 0; i < got.size() && bad < 5; ++i) {
    if (!(std::fabs(got[i] - want[i]) <= 1e-7 * scale)) {
      ++bad;
      FAIL_CHECK(what << ": element " << i << " = " << got[i] << ", finite differences give "
                      << want[i]);
    }
  }
}

// Every gradient of a Conv2d against finite differences of conv2d_forward, plus the
// accumulate flags (adding onto a prefilled buffer).
void check_conv_backward(const cpu::Conv2dParams& p, Lcg& rng) {
  const auto x = random_values(p.N * p.C_in * p.H * p.W, rng);
  const auto w = random_values(p.C_out * (p.C_in / p.groups) * p.KH * p.KW, rng);
  const auto b = random_values(p.C_out, rng);
  const index_t out_size = p.N * p.C_out * p.H_out() * p.W_out();
  const auto r = random_values(out_size, rng);
  std::vector<double> y(static_cast<std::size_t>(out_size));
  auto loss = [&](const std::vector<double>& xv, const std::vector<double>& wv,
                  const std::vector<double>& bv) {
    cpu::conv2d_forward<double>(p, xv.data(), wv.data(), bv.data(), y.data());
    return sum_products(y, r);
  };
  const std::string what = describe(p);
  std::vector<double> gx(x.size(), 5.0), gw(w.size(), 5.0), gb(b.size(), 5.0);
  cpu::conv2d_backward_input<double>(p, r.data(), w.data(), gx.data());
  cpu::conv2d_backward_weight<double>(p, x.data(), r.data(), gw.data(), false);
  cpu::conv2d_backward_bias<double>(p, r.data(), gb.data());
  const auto nx = numeric_gradient(x, [&](const std::vector<double>& v) { return loss(v, w, b); });
  const auto nw = numeric_gradient(w, [&](const std::vector<double>& v) { return loss(x, v, b); });
  const auto nb = numeric_gradient(b, [&](const std::vector<double>& v) { return loss(x, w, v); });
  check_gradient(gx, nx, "conv2d_backward_input " + what);
  check_gradient(gw, nw, "conv2d_backward_weight " + what);
  check_gradient(gb, nb, "conv2d_backward_bias " + what);

  std::vector<double> ax(x.size(), 1.0), aw(w.size(), 1.0), ab(b.size(), 1.0);
  cpu::conv2d_backward_input<double>(p, r.data(), w.data(), ax.data(), true);
  cpu::conv2d_backward_weight<double>(p, x.data(), r.data(), aw.data(), true);
  cpu::conv2d_backward_bias<double>(p, r.data(), ab.data(), true);
  auto plus_one = [](std::vector<double> v) {
    for (auto& e : v) e += 1.0;
    return v;
  };
  check_gradient(ax, plus_one(nx), "conv2d_backward_input accumulate " + what);
  check_gradient(aw, plus_one(nw), "conv2d_backward_weight accumulate " + what);
  check_gradient(ab, plus_one(nb), "conv2d_backward_bias accumulate " + what);
}

void check_conv_transpose_backward(const cpu::ConvTranspose2dParams& p, Lcg& rng) {
  const auto x = random_values(p.N * p.C_in * p.H * p.W, rng);
  const auto w = random_values(p.C_in * (p.C_out / p.groups) * p.KH * p.KW, rng);
  const auto b = random_values(p.C_out, rng);
  const index_t out_size = p.N * p.C_out * p.H_out() * p.W_out();
  const auto r = random_values(out_size, rng);
  std::vector<double> y(static_cast<std::size_t>(out_size));
  auto loss = [&](const std::vector<double>& xv, const std::vector<double>& wv,
                  const std::vector<double>& bv) {
    cpu::conv_transpose2d_forward<double>(p, xv.data(), wv.data(), bv.data(), y.data());
    return sum_products(y, r);
  };
  const std::string what = describe(p);
  std::vector<double> gx(x.size(), 5.0), gw(w.size(), 5.0), gb(b.size(), 5.0);
  cpu::conv_transpose2d_backward_input<double>(p, r.data(), w.data(), gx.data());
  cpu::conv_transpose2d_backward_weight<double>(p, x.data(), r.data(), gw.data());
  cpu::conv_transpose2d_backward_bias<double>(p, r.data(), gb.data());
  const auto nx = numeric_gradient(x, [&](const std::vector<double>& v) { return loss(v, w, b); });
  const auto nw = numeric_gradient(w, [&](const std::vector<double>& v) { return loss(x, v, b); });
  const auto nb = numeric_gradient(b, [&](const std::vector<double>& v) { return loss(x, w, v); });
  check_gradient(gx, nx, "conv_transpose2d_backward_input " + what);
  check_gradient(gw, nw, "conv_transpose2d_backward_weight " + what);
  check_gradient(gb, nb, "conv_transpose2d_backward_bias " + what);

  std::vector<double> ax(x.size(), -2.0), aw(w.size(), -2.0);
  cpu::conv_transpose2d_backward_input<double>(p, r.data(), w.data(), ax.data(), true);
  cpu::conv_transpose2d_backward_weight<double>(p, x.data(), r.data(), aw.data(), true);
  auto minus_two = [](std::vector<double> v) {
    for (auto& e : v) e -= 2.0;
    return v;
  };
  check_gradient(ax, minus_two(nx), "conv_transpose2d_backward_input accumulate " + what);
  check_gradient(aw, minus_two(nw), "conv_transpose2d_backward_weight accumulate " + what);
}

// Restores the thread count a test changed.
struct ThreadCount {
  int saved = cpu::num_threads();
  explicit ThreadCount(int n) { cpu::set_num_threads(n); }
  ~ThreadCount() { cpu::set_num_threads(saved); }
};

}  // namespace

TEST_CASE("conv2d: 3x3 input, 2x2 all-ones kernel, by hand") {
  cpu::Conv2dParams p;
  p.H = p.W = 3;
  p.KH = p.KW = 2;
  const std::vector<double> x = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w = {1, 1, 1, 1};
  std::vector<double> y(4);
  cpu::conv2d_forward<double>(p, x.data(), w.data(), nullptr, y.data());
  CHECK(y == std::vector<double>{12, 16, 24, 28});
  const double bias = 0.5;
  cpu::conv2d_forward<double>(p, x.data(), w.data(), &bias, y.data());
  CHECK(y == std::vector<double>{12.5, 16.5, 24.5, 28.5});

  // All-ones output gradient: each input pixel counts the windows it is in; each weight tap
  // sums the pixels it sees.
  const std::vector<double> gy = {1, 1, 1, 1};
  std::vector<double> gx(9), gw(4), gb(1);
  cpu::conv2d_backward_input<double>(p, gy.data(), w.data(), gx.data());
  CHECK(gx == std::vector<double>{1, 2, 1, 2, 4, 2, 1, 2, 1});
  cpu::conv2d_backward_weight<double>(p, x.data(), gy.data(), gw.data());
  CHECK(gw == std::vector<double>{12, 16, 24, 28});
  cpu::conv2d_backward_bias<double>(p, gy.data(), gb.data());
  CHECK(gb[0] == 4);

  // Stride 2 and padding 1: windows at (-1,-1), (-1,1), (1,-1), (1,1).
  p.stride_h = p.stride_w = 2;
  p.pad_h = p.pad_w = 1;
  CHECK(p.H_out() == 2);
  cpu::conv2d_forward<double>(p, x.data(), w.data(), nullptr, y.data());
  CHECK(y == std::vector<double>{1, 2 + 3, 4 + 7, 5 + 6 + 8 + 9});
}

TEST_CASE("conv_transpose2d: 2x2 input, 2x2 all-ones kernel, by hand") {
  cpu::ConvTranspose2dParams p;
  p.H = p.W = 2;
  p.KH = p.KW = 2;
  const std::vector<float> x = {1, 2, 3, 4}, w = {1, 1, 1, 1};
  CHECK(p.H_out() == 3);
  std::vector<float> y(9);
  cpu::conv_transpose2d_forward<float>(p, x.data(), w.data(), nullptr, y.data());
  CHECK(y == std::vector<float>{1, 3, 2, 4, 10, 6, 3, 7, 4});

  // Stride 2: every input pixel becomes a 2x2 block; output_padding 1 adds a row and a column
  // that only the bias reaches.
  p.stride_h = p.stride_w = 2;
  p.output_padding_h = p.output_padding_w = 1;
  CHECK(p.H_out() == 5);
  const float bias = -1;
  y.assign(25, 0);
  cpu::conv_transpose2d_forward<float>(p, x.data(), w.data(), &bias, y.data());
  CHECK(y == std::vector<float>{0,  0,  1,  1,  -1,  //
                                0,  0,  1,  1,  -1,  //
                                2,  2,  3,  3,  -1,  //
                                2,  2,  3,  3,  -1,  //
                                -1, -1, -1, -1, -1});
}

TEST_CASE("conv2d_forward matches the direct loop on random configurations") {
  Lcg rng(1);
  for (int t = 0; t < 150; ++t) {
    const auto p = random_conv(rng);
    check_conv_forward<double>(p, rng, 1e-13);
    check_conv_forward<float>(p, rng, 1e-5);
  }
}

TEST_CASE("conv_transpose2d_forward matches the scatter loop on random configurations") {
  Lcg rng(2);
  for (int t = 0; t < 150; ++t) {
    const auto p = random_conv_transpose(rng);
    check_conv_transpose_forward<double>(p, rng, 1e-13);
    check_conv_transpose_forward<float>(p, rng, 1e-5);
  }
}

TEST_CASE("conv2d backward kernels match finite differences") {
  Lcg rng(3);
  for (int t = 0; t < 30; ++t) check_conv_backward(random_conv(rng), rng);
}

TEST_CASE("conv_transpose2d backward kernels match finite differences") {
  Lcg rng(4);
  for (int t = 0; t < 30; ++t) check_conv_transpose_backward(random_conv_transpose(rng), rng);
}

TEST_CASE("conv2d on larger images: multi-image blocks, row chunks, 1x1, 1 to 3 threads") {
  // Shapes chosen to reach every path: several images per GEMM (small outputs), row chunks
  // (large outputs with a deep column matrix), the 1x1 shortcut, and a batch large enough to
  // hand blocks to threads.
  std::vector<cpu::Conv2dParams> shapes;
  {
    cpu::Conv2dParams p;  // DCGAN discriminator layer, reduced: 4x4 stride 2 pad 1
    p.N = 9, p.C_in = 8, p.H = p.W = 14, p.C_out = 6, p.KH = p.KW = 4;
    p.stride_h = p.stride_w = 2, p.pad_h = p.pad_w = 1;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;  // deep columns, output larger than one chunk
    p.N = 2, p.C_in = 64, p.H = p.W = 24, p.C_out = 5, p.KH = p.KW = 3, p.pad_h = p.pad_w = 1;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;  // 1x1 over a large plane, two groups
    p.N = 2, p.C_in = 4, p.H = 70, p.W = 66, p.C_out = 6, p.groups = 2;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;  // 1x1 over small planes, many images per block
    p.N = 13, p.C_in = 3, p.H = 5, p.W = 4, p.C_out = 7;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;  // many output channels: pixel-major GEMMs, several images per block
    p.N = 3, p.C_in = 8, p.H = p.W = 11, p.C_out = 40, p.KH = p.KW = 3, p.pad_h = p.pad_w = 1;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;  // pixel-major GEMMs over row chunks, two groups
    p.N = 1, p.C_in = 16, p.H = p.W = 40, p.C_out = 64, p.KH = p.KW = 3, p.pad_h = p.pad_w = 1;
    p.groups = 2;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;  // stride 2 over rows wider than two packets, odd sizes
    p.N = 3, p.C_in = 5, p.H = 37, p.W = 35, p.C_out = 4, p.KH = p.KW = 3;
    p.stride_h = p.stride_w = 2, p.pad_h = p.pad_w = 1;
    shapes.push_back(p);
  }
  for (const auto& p : shapes) {
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      ThreadCount guard(threads);
      Lcg rng(11);
      check_conv_forward<float>(p, rng, 1e-5);
      check_conv_forward<double>(p, rng, 1e-13);
      cpu::ConvTranspose2dParams q;
      q.N = p.N, q.C_in = p.C_out, q.H = p.H_out(), q.W = p.W_out(), q.C_out = p.C_in;
      q.KH = p.KH, q.KW = p.KW, q.stride_h = p.stride_h, q.stride_w = p.stride_w;
      q.pad_h = p.pad_h, q.pad_w = p.pad_w, q.groups = p.groups;
      check_conv_transpose_forward<float>(q, rng, 1e-5);
      // Its input gradient runs the Conv2d forward; with accumulate it adds onto gx.
      const auto gy = cast<float>(random_values(q.N * q.C_out * q.H_out() * q.W_out(), rng));
      const auto w = cast<float>(random_values(q.C_in * (q.C_out / q.groups) * q.KH * q.KW, rng));
      std::vector<float> gx(static_cast<std::size_t>(q.N * q.C_in * q.H * q.W), 9.0f),
          acc(gx.size(), 1.0f);
      cpu::conv_transpose2d_backward_input<float>(q, gy.data(), w.data(), gx.data());
      cpu::conv_transpose2d_backward_input<float>(q, gy.data(), w.data(), acc.data(), true);
      double worst = 0;
      for (std::size_t i = 0; i < gx.size(); ++i)
        worst = std::max(worst, std::fabs(double(acc[i]) - 1.0 - double(gx[i])) /
                                    (1 + std::fabs(double(gx[i]))));
      CHECK(worst <= 1e-5);
    }
  }
}

TEST_CASE("conv2d backward on larger images: adjoint identities and thread-count independence") {
  // For a linear map A (x -> conv(x, w)): <A x, r> = <x, Aᵀ r> gives backward_input, and
  // <A x, r> = <w, dL/dw> (L linear in w, no bias) gives backward_weight; both over every
  // element at once. The weight gradient must not depend on the thread count.
  std::vector<cpu::Conv2dParams> shapes;
  {
    cpu::Conv2dParams p;
    p.N = 9, p.C_in = 8, p.H = p.W = 14, p.C_out = 6, p.KH = p.KW = 4;
    p.stride_h = p.stride_w = 2, p.pad_h = p.pad_w = 1;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;
    p.N = 2, p.C_in = 64, p.H = p.W = 40, p.C_out = 4, p.KH = p.KW = 3, p.pad_h = p.pad_w = 1;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;
    p.N = 3, p.C_in = 4, p.H = 70, p.W = 66, p.C_out = 6, p.groups = 2;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;  // a weight too large to sum per slice: threaded GEMMs in order
    p.N = 5, p.C_in = 64, p.H = p.W = 6, p.C_out = 128, p.KH = p.KW = 3, p.pad_h = p.pad_w = 1;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;
    p.N = 7, p.C_in = 16, p.H = p.W = 14, p.C_out = 48, p.KH = p.KW = 4;
    p.stride_h = p.stride_w = 2, p.pad_h = p.pad_w = 1, p.groups = 2;
    shapes.push_back(p);
  }
  {
    cpu::Conv2dParams p;
    p.N = 5, p.C_in = 6, p.H = 37, p.W = 35, p.C_out = 4, p.KH = p.KW = 4;
    p.stride_h = p.stride_w = 2, p.pad_h = p.pad_w = 1;
    shapes.push_back(p);
  }
  for (const auto& p : shapes) {
    CAPTURE(describe(p));
    Lcg rng(12);
    const auto x = random_values(p.N * p.C_in * p.H * p.W, rng);
    const auto w = random_values(p.C_out * (p.C_in / p.groups) * p.KH * p.KW, rng);
    const auto r = random_values(p.N * p.C_out * p.H_out() * p.W_out(), rng);
    std::vector<double> y(r.size());
    cpu::conv2d_forward<double>(p, x.data(), w.data(), nullptr, y.data());
    const double forward = sum_products(y, r);
    std::vector<std::vector<float>> weight_grads;
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      ThreadCount guard(threads);
      std::vector<double> gx(x.size()), gw(w.size());
      cpu::conv2d_backward_input<double>(p, r.data(), w.data(), gx.data());
      cpu::conv2d_backward_weight<double>(p, x.data(), r.data(), gw.data());
      CHECK(sum_products(x, gx) == doctest::Approx(forward).epsilon(1e-12));
      CHECK(sum_products(w, gw) == doctest::Approx(forward).epsilon(1e-12));
      const auto xf = cast<float>(x), rf = cast<float>(r);
      std::vector<float> gwf(w.size());
      cpu::conv2d_backward_weight<float>(p, xf.data(), rf.data(), gwf.data());
      weight_grads.push_back(gwf);
      // Against the double result, float within 1e-4 relative to the largest entry.
      double scale = 0, err = 0;
      for (std::size_t i = 0; i < gw.size(); ++i) {
        scale = std::max(scale, std::fabs(gw[i]));
        err = std::max(err, std::fabs(gw[i] - gwf[i]));
      }
      CHECK(err <= 1e-4 * scale);
    }
    CHECK(weight_grads[0] == weight_grads[1]);
    CHECK(weight_grads[0] == weight_grads[2]);
  }
}

TEST_CASE("conv2d: empty batch") {
  cpu::Conv2dParams p;
  p.N = 0, p.H = p.W = 3, p.KH = p.KW = 2;
  std::vector<double> gw(4, 3.0);
  const double none = 0;
  cpu::conv2d_forward<double>(p, &none, &none, nullptr, nullptr);
  cpu::conv2d_backward_weight<double>(p, &none, &none, gw.data());
  CHECK(gw == std::vector<double>(4, 0.0));
}

TEST_CASE("conv2d and conv_transpose2d reject bad parameters with a sentence") {
  cpu::Conv2dParams p;
  p.C_in = 3, p.C_out = 4, p.H = p.W = 5, p.KH = p.KW = 3;
  CHECK_NOTHROW(p.validate("conv2d"));
  auto q = p;
  q.groups = 2;
  CHECK_THROWS_WITH_AS(q.validate("conv2d"),
                       doctest::Contains("C_in = 3 is not divisible by groups = 2"),
                       kiln::ShapeError);
  q = p;
  q.KH = 8;
  CHECK_THROWS_WITH_AS(q.validate("conv2d"), doctest::Contains("larger than the padded input 5x5"),
                       kiln::ShapeError);
  q = p;
  q.dilation_w = 3;  // effective width 7 > 5
  CHECK_THROWS_AS(q.validate("conv2d"), kiln::ShapeError);
  q.pad_w = 1;  // 7 fits in 5 + 2
  CHECK_NOTHROW(q.validate("conv2d"));
  q = p;
  q.stride_h = 0;
  CHECK_THROWS_WITH_AS(q.validate("conv2d"), "kiln::conv2d: stride_h must be >= 1, got 0",
                       kiln::ValueError);
  std::vector<float> buf(1000);
  q = p;
  q.pad_h = -1;
  CHECK_THROWS_AS(cpu::conv2d_forward<float>(q, buf.data(), buf.data(), nullptr, buf.data()),
                  kiln::ValueError);

  cpu::ConvTranspose2dParams t;
  t.C_in = 4, t.C_out = 2, t.H = t.W = 3, t.KH = t.KW = 3, t.stride_h = t.stride_w = 2;
  t.output_padding_h = 1;
  CHECK_NOTHROW(t.validate("conv_transpose2d"));
  t.output_padding_h = 2;
  CHECK_THROWS_WITH_AS(t.validate("conv_transpose2d"),
                       doctest::Contains("must be smaller than either the stride or the dilation"),
                       kiln::ValueError);
  t.output_padding_h = 0;
  t.groups = 4;
  CHECK_THROWS_WITH_AS(t.validate("conv_transpose2d"),
                       doctest::Contains("C_out = 2 is not divisible by groups = 4"),
                       kiln::ShapeError);
  t.groups = 1;
  t.H = 1, t.KH = 1, t.pad_h = 1;
  CHECK_THROWS_AS(t.validate("conv_transpose2d"), kiln::ShapeError);
}
