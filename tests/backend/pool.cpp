// Tests for kiln/backend/cpu/pool.hpp: pooling and upsampling kernels against PyTorch's outputs on
// small inputs, against naive loops in double on random configurations, backward kernels
// against central finite differences, and errors.
#include <doctest/doctest.h>

#include <kiln/backend/cpu/pool.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
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
  index_t range(index_t lo, index_t hi) {
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

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

void check_near(const std::vector<double>& got, const std::vector<double>& want, double tol,
                const std::string& what) {
  REQUIRE(got.size() == want.size());
  int bad = 0;
  for (std::size_t i = 0; i < got.size() && bad < 5; ++i)
    if (!(got[i] == want[i] || std::fabs(got[i] - want[i]) <= tol * (1 + std::fabs(want[i])))) {
      ++bad;
      FAIL_CHECK(what << ": element " << i << " = " << got[i] << ", want " << want[i]);
    }
}

template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// The gradient of v -> sum(f(v)·r) by central differences.
template <class F>
std::vector<double> numeric_gradient(std::vector<double> v, F&& loss, double h) {
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

// ------------------------------------------------------------------------------ references
// Max pooling by its definition: the largest real input pixel of each window (first on ties).
std::vector<double> reference_max_pool(const cpu::Pool2dParams& p, const std::vector<double>& x,
                                       std::vector<index_t>& where) {
  const index_t Ho = p.H_out(), Wo = p.W_out();
  std::vector<double> y(static_cast<std::size_t>(p.N * p.C * Ho * Wo));
  where.assign(y.size(), -1);
  for (index_t plane = 0; plane < p.N * p.C; ++plane)
    for (index_t oh = 0; oh < Ho; ++oh)
      for (index_t ow = 0; ow < Wo; ++ow) {
        double best = -std::numeric_limits<double>::infinity();
        index_t at = -1;
        for (index_t kh = 0; kh < p.KH; ++kh)
          for (index_t kw = 0; kw < p.KW; ++kw) {
            const index_t ih = oh * p.stride_h - p.pad_h + kh * p.dilation_h;
            const index_t iw = ow * p.stride_w - p.pad_w + kw * p.dilation_w;
            if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
            const double v = x[static_cast<std::size_t>(plane * p.H * p.W + ih * p.W + iw)];
            if (at < 0 || v > best) {
              best = v;
              at = ih * p.W + iw;
            }
          }
        const auto o = static_cast<std::size_t>((plane * Ho + oh) * Wo + ow);
        y[o] = best;
        where[o] = at;
      }
  return y;
}

// Average pooling by its definition: the window is cut at the padded border (at H + pad), the
// divisor counts the window's cells inside the padded input (count_include_pad) or inside the
// input, unless divisor_override.
std::vector<double> reference_avg_pool(const cpu::Pool2dParams& p, const std::vector<double>& x) {
  const index_t Ho = p.H_out(), Wo = p.W_out();
  std::vector<double> y(static_cast<std::size_t>(p.N * p.C * Ho * Wo));
  for (index_t plane = 0; plane < p.N * p.C; ++plane)
    for (index_t oh = 0; oh < Ho; ++oh)
      for (index_t ow = 0; ow < Wo; ++ow) {
        double sum = 0;
        index_t inside = 0, padded = 0;
        for (index_t kh = 0; kh < p.KH; ++kh)
          for (index_t kw = 0; kw < p.KW; ++kw) {
            const index_t ih = oh * p.stride_h - p.pad_h + kh, iw = ow * p.stride_w - p.pad_w + kw;
            if (ih >= p.H + p.pad_h || iw >= p.W + p.pad_w) continue;
            ++padded;
            if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
            ++inside;
            sum += x[static_cast<std::size_t>(plane * p.H * p.W + ih * p.W + iw)];
          }
        const index_t divisor =
            p.divisor_override ? p.divisor_override : (p.count_include_pad ? padded : inside);
        y[static_cast<std::size_t>((plane * Ho + oh) * Wo + ow)] = sum / double(divisor);
      }
  return y;
}

std::vector<double> reference_adaptive(const cpu::AdaptivePool2dParams& p,
                                       const std::vector<double>& x) {
  std::vector<double> y(static_cast<std::size_t>(p.N * p.C * p.H_out * p.W_out));
  for (index_t plane = 0; plane < p.N * p.C; ++plane)
    for (index_t oh = 0; oh < p.H_out; ++oh)
      for (index_t ow = 0; ow < p.W_out; ++ow) {
        const index_t h0 = static_cast<index_t>(std::floor(double(oh * p.H) / double(p.H_out)));
        const index_t h1 =
            static_cast<index_t>(std::ceil(double((oh + 1) * p.H) / double(p.H_out)));
        const index_t w0 = static_cast<index_t>(std::floor(double(ow * p.W) / double(p.W_out)));
        const index_t w1 =
            static_cast<index_t>(std::ceil(double((ow + 1) * p.W) / double(p.W_out)));
        double sum = 0;
        for (index_t ih = h0; ih < h1; ++ih)
          for (index_t iw = w0; iw < w1; ++iw)
            sum += x[static_cast<std::size_t>(plane * p.H * p.W + ih * p.W + iw)];
        y[static_cast<std::size_t>((plane * p.H_out + oh) * p.W_out + ow)] =
            sum / double((h1 - h0) * (w1 - w0));
      }
  return y;
}

// Bilinear resize in double from PyTorch's source-coordinate formula.
std::vector<double> reference_bilinear(const cpu::Upsample2dParams& p,
                                       const std::vector<double>& x) {
  auto source = [&](index_t dst, index_t in, index_t out) {
    if (p.align_corners) return out > 1 ? double(dst) * double(in - 1) / double(out - 1) : 0.0;
    return std::max(0.0, (double(dst) + 0.5) * double(in) / double(out) - 0.5);
  };
  std::vector<double> y(static_cast<std::size_t>(p.N * p.C * p.H_out * p.W_out));
  for (index_t plane = 0; plane < p.N * p.C; ++plane)
    for (index_t oh = 0; oh < p.H_out; ++oh)
      for (index_t ow = 0; ow < p.W_out; ++ow) {
        const double sh = source(oh, p.H, p.H_out), sw = source(ow, p.W, p.W_out);
        const index_t h0 = std::min<index_t>(static_cast<index_t>(sh), p.H - 1);
        const index_t w0 = std::min<index_t>(static_cast<index_t>(sw), p.W - 1);
        const index_t h1 = std::min<index_t>(h0 + 1, p.H - 1),
                      w1 = std::min<index_t>(w0 + 1, p.W - 1);
        const double fh = sh - double(h0), fw = sw - double(w0);
        auto at = [&](index_t h, index_t w) {
          return x[static_cast<std::size_t>(plane * p.H * p.W + h * p.W + w)];
        };
        y[static_cast<std::size_t>((plane * p.H_out + oh) * p.W_out + ow)] =
            (1 - fh) * ((1 - fw) * at(h0, w0) + fw * at(h0, w1)) +
            fh * ((1 - fw) * at(h1, w0) + fw * at(h1, w1));
      }
  return y;
}

cpu::Pool2dParams random_pool(Lcg& rng, bool average) {
  for (;;) {
    cpu::Pool2dParams p;
    p.N = rng.range(1, 3);
    p.C = rng.range(1, 3);
    p.KH = rng.range(1, 4);
    p.KW = rng.range(1, 4);
    p.stride_h = rng.range(1, 3);
    p.stride_w = rng.range(1, 3);
    p.pad_h = rng.range(0, p.KH / 2);
    p.pad_w = rng.range(0, p.KW / 2);
    if (!average) {
      p.dilation_h = rng.range(1, 2);
      p.dilation_w = rng.range(1, 2);
    } else {
      p.count_include_pad = rng.range(0, 1) == 1;
      if (rng.range(0, 4) == 0) p.divisor_override = rng.range(1, 5);
    }
    p.ceil_mode = rng.range(0, 1) == 1;
    p.H = rng.range(1, 11);
    p.W = rng.range(1, 11);
    if (p.H_out() >= 1 && p.W_out() >= 1) return p;
  }
}

std::string describe(const cpu::Pool2dParams& p) {
  return p.describe() + (p.count_include_pad ? "" : ", exclude pad") +
         (p.divisor_override ? ", divisor " + std::to_string(p.divisor_override) : "");
}

}  // namespace

// ---------------------------------------------------------------------------------- PyTorch cases
// The expected values below are PyTorch 1.13's outputs, from
//   y =
//   torch.tensor([[3.,1,4,1,5],[9,2,6,5,3],[5,8,9,7,9],[3,2,3,8,4],[6,2,6,4,3]]).reshape(1,1,5,5)
//   F.max_pool2d(y, 2, 2, 1, 1, ceil_mode=True, return_indices=True), etc., and
//   x = torch.arange(9.).reshape(1,1,3,3); F.interpolate(x, size=..., mode=..., align_corners=...).
namespace {
const std::vector<double> pool_input = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9,
                                        7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3};
const std::vector<double> arange9 = {0, 1, 2, 3, 4, 5, 6, 7, 8};

cpu::Pool2dParams pool5(index_t k, index_t s, index_t pad, index_t d, bool ceil) {
  cpu::Pool2dParams p;
  p.H = p.W = 5;
  p.KH = p.KW = k;
  p.stride_h = p.stride_w = s;
  p.pad_h = p.pad_w = pad;
  p.dilation_h = p.dilation_w = d;
  p.ceil_mode = ceil;
  return p;
}
}  // namespace

TEST_CASE("max_pool2d matches PyTorch: ceil_mode, padding, dilation, NaN") {
  {
    const auto p = pool5(2, 2, 1, 1, true);
    REQUIRE(p.H_out() == 3);
    std::vector<double> y(9);
    std::vector<index_t> idx(9);
    cpu::max_pool2d_forward<double>(p, pool_input.data(), y.data(), idx.data());
    CHECK(y == std::vector<double>{3, 4, 5, 9, 9, 9, 6, 6, 8});
    CHECK(idx == std::vector<index_t>{0, 2, 4, 5, 12, 14, 20, 22, 18});
  }
  {
    const auto p = pool5(3, 2, 1, 2, false);
    REQUIRE(p.H_out() == 2);
    std::vector<double> y(4);
    std::vector<index_t> idx(4);
    cpu::max_pool2d_forward<double>(p, pool_input.data(), y.data(), idx.data());
    CHECK(y == std::vector<double>{8, 8, 8, 8});
    CHECK(idx == std::vector<index_t>{18, 18, 18, 18});
  }
  {
    // NaN wins and, as in PyTorch, the last NaN of a window gives the index.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> x = {1, nan, 2, nan, 0, 5, 1, 1, 1};
    cpu::Pool2dParams p;
    p.H = p.W = 3;
    p.KH = p.KW = 2;
    std::vector<float> y(4);
    std::vector<index_t> idx(4);
    cpu::max_pool2d_forward<float>(p, x.data(), y.data(), idx.data());
    CHECK(std::isnan(y[0]));
    CHECK(std::isnan(y[1]));
    CHECK(std::isnan(y[2]));
    CHECK(y[3] == 5);
    CHECK(idx == std::vector<index_t>{3, 1, 3, 5});
  }
  {
    // Windows that hold only padding (dilation 2 over a single row): -inf like PyTorch, whose
    // indices there point past the plane; kiln gives -1, and the backward skips them.
    cpu::Pool2dParams p;
    p.H = 1, p.W = 10, p.KH = p.KW = 2, p.stride_h = 2, p.stride_w = 3;
    p.pad_h = p.pad_w = 1, p.dilation_h = 2, p.ceil_mode = true;
    REQUIRE(p.H_out() == 1);
    REQUIRE(p.W_out() == 4);
    std::vector<double> x(10, 1.0), y(4), gx(10, 7.0);
    std::vector<index_t> idx(4);
    cpu::max_pool2d_forward<double>(p, x.data(), y.data(), idx.data());
    CHECK(y == std::vector<double>(4, -std::numeric_limits<double>::infinity()));
    CHECK(idx == std::vector<index_t>(4, -1));
    const std::vector<double> gy = {1, 2, 3, 4};
    cpu::max_pool2d_backward<double>(p, gy.data(), idx.data(), gx.data());
    CHECK(gx == std::vector<double>(10, 0.0));
  }
}

TEST_CASE("avg_pool2d matches PyTorch: ceil_mode with and without count_include_pad, divisor") {
  auto p = pool5(3, 2, 1, 1, true);
  REQUIRE(p.H_out() == 3);
  std::vector<double> y(9);
  cpu::avg_pool2d_forward<double>(p, pool_input.data(), y.data());
  check_near(y,
             {1.6666666666666667, 2.111111111111111, 1.5555555555555556, 3.2222222222222223,
              5.555555555555555, 4.0, 1.4444444444444444, 2.7777777777777777, 2.111111111111111},
             1e-15, "count_include_pad");
  p.count_include_pad = false;
  cpu::avg_pool2d_forward<double>(p, pool_input.data(), y.data());
  check_near(y,
             {3.75, 3.1666666666666665, 3.5, 4.833333333333333, 5.555555555555555, 6.0, 3.25,
              4.166666666666667, 4.75},
             1e-15, "exclude pad");
  auto q = pool5(2, 2, 1, 1, false);
  q.divisor_override = 3;
  cpu::avg_pool2d_forward<double>(q, pool_input.data(), y.data());
  check_near(y,
             {1.0, 1.6666666666666667, 2.0, 4.666666666666667, 8.333333333333334, 8.0, 3.0,
              4.333333333333333, 6.333333333333333},
             1e-15, "divisor_override");

  cpu::AdaptivePool2dParams a;
  a.H = a.W = 5;
  a.H_out = 3, a.W_out = 2;
  std::vector<double> z(6);
  cpu::adaptive_avg_pool2d_forward<double>(a, pool_input.data(), z.data());
  check_near(
      z, {4.166666666666667, 4.0, 5.222222222222222, 6.0, 3.6666666666666665, 4.666666666666667},
      1e-15, "adaptive_avg_pool2d 5x5 -> 3x2");
}

TEST_CASE("upsampling matches PyTorch: nearest and bilinear, both align_corners") {
  cpu::Upsample2dParams p;
  p.H = p.W = 3;
  std::vector<double> y;
  auto run = [&](index_t ho, index_t wo, bool align, bool bilinear) {
    p.H_out = ho, p.W_out = wo, p.align_corners = align;
    y.assign(static_cast<std::size_t>(ho * wo), -1.0);
    if (bilinear)
      cpu::upsample_bilinear2d_forward<double>(p, arange9.data(), y.data());
    else
      cpu::upsample_nearest2d_forward<double>(p, arange9.data(), y.data());
    return y;
  };
  CHECK(run(5, 7, false, false) == std::vector<double>{0, 0, 0, 1, 1, 2, 2, 0, 0, 0, 1, 1,
                                                       2, 2, 3, 3, 3, 4, 4, 5, 5, 3, 3, 3,
                                                       4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 8});
  CHECK(run(2, 2, false, false) == std::vector<double>{0, 1, 3, 4});
  CHECK(run(6, 6, false, false) == std::vector<double>{0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2,
                                                       3, 3, 4, 4, 5, 5, 3, 3, 4, 4, 5, 5,
                                                       6, 6, 7, 7, 8, 8, 6, 6, 7, 7, 8, 8});
  check_near(run(5, 4, false, true),
             {0.0,   0.625, 1.375, 2.0,   1.2,   1.825, 2.575, 3.2,   3.0,   3.625,
              4.375, 5.0,   4.8,   5.425, 6.175, 6.8,   6.0,   6.625, 7.375, 8.0},
             1e-14, "bilinear align_corners=False");
  check_near(run(5, 4, true, true), {0.0, 0.6666666666666666, 1.3333333333333333, 2.0,
                                     1.5, 2.1666666666666665, 2.833333333333333,  3.5,
                                     3.0, 3.6666666666666665, 4.333333333333333,  5.0,
                                     4.5, 5.166666666666667,  5.833333333333333,  6.5,
                                     6.0, 6.666666666666666,  7.333333333333333,  8.0},
             1e-14, "bilinear align_corners=True");
  check_near(run(2, 2, false, true), {1.0, 2.5, 5.5, 7.0}, 1e-14, "bilinear downscale");
  // A 1x2 row [0, 1] doubled: [0, 0.25, 0.75, 1] (align_corners=False), [0, 1/3, 2/3, 1] (True).
  cpu::Upsample2dParams r;
  r.H = 1, r.W = 2, r.H_out = 1, r.W_out = 4;
  const std::vector<float> row = {0, 1};
  std::vector<float> out(4);
  cpu::upsample_bilinear2d_forward<float>(r, row.data(), out.data());
  CHECK(out == std::vector<float>{0, 0.25f, 0.75f, 1});
  r.align_corners = true;
  cpu::upsample_bilinear2d_forward<float>(r, row.data(), out.data());
  CHECK(out[1] == doctest::Approx(1.0 / 3));
  CHECK(out[2] == doctest::Approx(2.0 / 3));
}

// ---------------------------------------------------------------------------------- random cases
TEST_CASE("max_pool2d against the direct loop and finite differences, random configurations") {
  Lcg rng(21);
  for (int t = 0; t < 200; ++t) {
    const auto p = random_pool(rng, false);
    CAPTURE(describe(p));
    const auto x = random_values(p.N * p.C * p.H * p.W, rng);
    std::vector<index_t> want_idx;
    const auto want = reference_max_pool(p, x, want_idx);
    std::vector<double> y(want.size());
    std::vector<index_t> idx(want.size());
    cpu::max_pool2d_forward<double>(p, x.data(), y.data(), idx.data());
    CHECK(y == want);
    CHECK(idx == want_idx);
    const auto xf = cast<float>(x);
    std::vector<float> yf(want.size());
    cpu::max_pool2d_forward<float>(p, xf.data(), yf.data(), nullptr);
    check_near(widen(yf), want, 1e-7, "max_pool2d float " + describe(p));

    if (t % 4 != 0) continue;
    const auto r = random_values(static_cast<index_t>(want.size()), rng);
    std::vector<double> gx(x.size(), 3.0);
    cpu::max_pool2d_backward<double>(p, r.data(), idx.data(), gx.data());
    const auto num = numeric_gradient(
        x,
        [&](const std::vector<double>& v) {
          std::vector<double> out(want.size());
          cpu::max_pool2d_forward<double>(p, v.data(), out.data(), nullptr);
          return dot(out, r);
        },
        1e-7);
    check_near(gx, num, 1e-6, "max_pool2d_backward " + describe(p));
  }
}

TEST_CASE("avg_pool2d against the direct loop and finite differences, random configurations") {
  Lcg rng(22);
  for (int t = 0; t < 200; ++t) {
    const auto p = random_pool(rng, true);
    CAPTURE(describe(p));
    const auto x = random_values(p.N * p.C * p.H * p.W, rng);
    const auto want = reference_avg_pool(p, x);
    std::vector<double> y(want.size());
    cpu::avg_pool2d_forward<double>(p, x.data(), y.data());
    check_near(y, want, 1e-14, "avg_pool2d " + describe(p));
    const auto xf = cast<float>(x);
    std::vector<float> yf(want.size());
    cpu::avg_pool2d_forward<float>(p, xf.data(), yf.data());
    check_near(widen(yf), want, 1e-6, "avg_pool2d float " + describe(p));

    if (t % 4 != 0) continue;
    const auto r = random_values(static_cast<index_t>(want.size()), rng);
    std::vector<double> gx(x.size(), 3.0);
    cpu::avg_pool2d_backward<double>(p, r.data(), gx.data());
    const auto num = numeric_gradient(
        x,
        [&](const std::vector<double>& v) {
          std::vector<double> out(want.size());
          cpu::avg_pool2d_forward<double>(p, v.data(), out.data());
          return dot(out, r);
        },
        1e-3);
    check_near(gx, num, 1e-9, "avg_pool2d_backward " + describe(p));
    std::vector<double> acc(x.size(), 1.0);
    cpu::avg_pool2d_backward<double>(p, r.data(), acc.data(), true);
    for (auto& v : acc) v -= 1.0;
    check_near(acc, gx, 1e-12, "avg_pool2d_backward accumulate " + describe(p));
  }
}

TEST_CASE("adaptive_avg_pool2d against the direct loop and finite differences") {
  Lcg rng(23);
  for (int t = 0; t < 60; ++t) {
    cpu::AdaptivePool2dParams p;
    p.N = rng.range(1, 2), p.C = rng.range(1, 3), p.H = rng.range(1, 12), p.W = rng.range(1, 12);
    p.H_out = rng.range(1, 8), p.W_out = rng.range(1, 8);
    CAPTURE(p.H);
    CAPTURE(p.W);
    CAPTURE(p.H_out);
    CAPTURE(p.W_out);
    const auto x = random_values(p.N * p.C * p.H * p.W, rng);
    const auto want = reference_adaptive(p, x);
    std::vector<double> y(want.size());
    cpu::adaptive_avg_pool2d_forward<double>(p, x.data(), y.data());
    check_near(y, want, 1e-14, "adaptive_avg_pool2d");
    const auto r = random_values(static_cast<index_t>(want.size()), rng);
    std::vector<double> gx(x.size());
    cpu::adaptive_avg_pool2d_backward<double>(p, r.data(), gx.data());
    const auto num = numeric_gradient(
        x,
        [&](const std::vector<double>& v) {
          std::vector<double> out(want.size());
          cpu::adaptive_avg_pool2d_forward<double>(p, v.data(), out.data());
          return dot(out, r);
        },
        1e-3);
    check_near(gx, num, 1e-9, "adaptive_avg_pool2d_backward");
  }
}

TEST_CASE("upsampling against the formulas and finite differences, random sizes") {
  Lcg rng(24);
  for (int t = 0; t < 80; ++t) {
    cpu::Upsample2dParams p;
    p.N = rng.range(1, 2), p.C = rng.range(1, 3), p.H = rng.range(1, 7), p.W = rng.range(1, 7);
    const bool integer_scale = t % 2 == 0;
    const index_t sh = rng.range(1, 4), sw = rng.range(1, 4);
    p.H_out = integer_scale ? p.H * sh : rng.range(1, 15);
    p.W_out = integer_scale ? p.W * sw : rng.range(1, 15);
    p.align_corners = rng.range(0, 1) == 1;
    CAPTURE(p.H);
    CAPTURE(p.W);
    CAPTURE(p.H_out);
    CAPTURE(p.W_out);
    CAPTURE(p.align_corners);
    const auto x = random_values(p.N * p.C * p.H * p.W, rng);
    const index_t out_size = p.N * p.C * p.H_out * p.W_out;
    const auto r = random_values(out_size, rng);

    // Nearest with an integer scale copies x[oh / s, ow / s].
    std::vector<double> y(static_cast<std::size_t>(out_size));
    cpu::upsample_nearest2d_forward<double>(p, x.data(), y.data());
    if (integer_scale) {
      std::vector<double> want(y.size());
      for (index_t plane = 0; plane < p.N * p.C; ++plane)
        for (index_t oh = 0; oh < p.H_out; ++oh)
          for (index_t ow = 0; ow < p.W_out; ++ow)
            want[static_cast<std::size_t>((plane * p.H_out + oh) * p.W_out + ow)] =
                x[static_cast<std::size_t>((plane * p.H + oh / sh) * p.W + ow / sw)];
      CHECK(y == want);
    }
    std::vector<double> gx(x.size());
    cpu::upsample_nearest2d_backward<double>(p, r.data(), gx.data());
    auto nearest_loss = [&](const std::vector<double>& v) {
      std::vector<double> out(static_cast<std::size_t>(out_size));
      cpu::upsample_nearest2d_forward<double>(p, v.data(), out.data());
      return dot(out, r);
    };
    check_near(gx, numeric_gradient(x, nearest_loss, 1e-3), 1e-9, "upsample_nearest2d_backward");

    const auto want = reference_bilinear(p, x);
    cpu::upsample_bilinear2d_forward<double>(p, x.data(), y.data());
    check_near(y, want, 1e-13, "upsample_bilinear2d");
    const auto xf = cast<float>(x);
    std::vector<float> yf(y.size());
    cpu::upsample_bilinear2d_forward<float>(p, xf.data(), yf.data());
    check_near(widen(yf), want, 1e-5, "upsample_bilinear2d float");
    cpu::upsample_bilinear2d_backward<double>(p, r.data(), gx.data());
    auto bilinear_loss = [&](const std::vector<double>& v) {
      std::vector<double> out(static_cast<std::size_t>(out_size));
      cpu::upsample_bilinear2d_forward<double>(p, v.data(), out.data());
      return dot(out, r);
    };
    check_near(gx, numeric_gradient(x, bilinear_loss, 1e-3), 1e-9, "upsample_bilinear2d_backward");
  }
}

TEST_CASE("pooling on many planes runs threaded and agrees with one thread") {
  cpu::Pool2dParams p;
  p.N = 8, p.C = 16, p.H = p.W = 32, p.KH = p.KW = 2, p.stride_h = p.stride_w = 2;
  Lcg rng(25);
  const auto x = cast<float>(random_values(p.N * p.C * p.H * p.W, rng));
  const index_t out = p.N * p.C * p.H_out() * p.W_out();
  std::vector<std::vector<float>> results;
  const int saved = cpu::num_threads();
  for (int threads : {1, 3}) {
    cpu::set_num_threads(threads);
    std::vector<float> y(static_cast<std::size_t>(out)), g(x.size());
    std::vector<index_t> idx(static_cast<std::size_t>(out));
    cpu::max_pool2d_forward<float>(p, x.data(), y.data(), idx.data());
    cpu::max_pool2d_backward<float>(p, y.data(), idx.data(), g.data());
    results.push_back(g);
    cpu::Upsample2dParams u;
    u.N = p.N, u.C = p.C, u.H = p.H, u.W = p.W, u.H_out = 64, u.W_out = 64;
    std::vector<float> up(static_cast<std::size_t>(p.N * p.C * 64 * 64));
    cpu::upsample_bilinear2d_forward<float>(u, x.data(), up.data());
    cpu::upsample_bilinear2d_backward<float>(u, up.data(), g.data());
    results.push_back(g);
  }
  cpu::set_num_threads(saved);
  CHECK(results[0] == results[2]);
  CHECK(results[1] == results[3]);
  // Max pooling 2x2/2 routes each output's value back to its argmax: the sum is preserved.
  double in = 0, back = 0;
  std::vector<float> y(static_cast<std::size_t>(out));
  cpu::max_pool2d_forward<float>(p, x.data(), y.data(), nullptr);
  for (float v : y) in += v;
  for (float v : results[0]) back += v;
  CHECK(back == doctest::Approx(in).epsilon(1e-6));
}

TEST_CASE("max_pool2d indices stay exact on a plane of more than 2^24 pixels") {
  // Float holds every integer only up to 2^24; past that the argmax must still be exact.
  cpu::Pool2dParams p;
  p.H = p.W = 4097, p.KH = p.KW = 2, p.stride_h = p.stride_w = 2;
  REQUIRE(p.H * p.W > (index_t{1} << 24));
  std::vector<float> x(static_cast<std::size_t>(p.H * p.W));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7919) % 1009);
  const index_t Ho = p.H_out(), Wo = p.W_out();
  std::vector<float> y(static_cast<std::size_t>(Ho * Wo));
  std::vector<index_t> idx(y.size());
  cpu::max_pool2d_forward<float>(p, x.data(), y.data(), idx.data());
  int bad = 0;
  for (index_t oh = Ho - 2; oh < Ho; ++oh)
    for (index_t ow = 0; ow < Wo && bad < 5; ++ow) {
      index_t want = -1;
      for (index_t ih = 2 * oh; ih < 2 * oh + 2; ++ih)
        for (index_t iw = 2 * ow; iw < 2 * ow + 2; ++iw)
          if (want < 0 ||
              x[static_cast<std::size_t>(ih * p.W + iw)] > x[static_cast<std::size_t>(want)])
            want = ih * p.W + iw;
      if (idx[static_cast<std::size_t>(oh * Wo + ow)] != want) {
        ++bad;
        FAIL_CHECK("window (" << oh << ", " << ow << "): index "
                              << idx[static_cast<std::size_t>(oh * Wo + ow)] << ", want " << want);
      }
    }
}

TEST_CASE("pooling and upsampling reject bad parameters with a sentence") {
  auto p = pool5(3, 2, 2, 1, false);
  CHECK_THROWS_WITH_AS(p.validate("max_pool2d"),
                       doctest::Contains("padding 2x2 must be at most half the kernel size"),
                       kiln::ValueError);
  p = pool5(3, 0, 0, 1, false);
  CHECK_THROWS_WITH_AS(p.validate("max_pool2d"), "kiln::max_pool2d: stride_h must be >= 1, got 0",
                       kiln::ValueError);
  p = pool5(3, 1, 0, 3, false);  // effective kernel 7 > 5
  CHECK_THROWS_WITH_AS(p.validate("max_pool2d"), doctest::Contains("which is empty"),
                       kiln::ShapeError);
  p = pool5(2, 2, 0, 2, false);
  std::vector<double> buf(100);
  CHECK_THROWS_WITH_AS(cpu::avg_pool2d_forward<double>(p, buf.data(), buf.data()),
                       doctest::Contains("average pooling has no dilation"), kiln::ValueError);
  p = pool5(2, 2, 0, 1, false);
  std::vector<index_t> bad_idx(4, 25);
  CHECK_THROWS_WITH_AS(
      cpu::max_pool2d_backward<double>(p, buf.data(), bad_idx.data(), buf.data()),
      doctest::Contains("index 25 at output 0 of plane 0 is outside the input plane"),
      kiln::ValueError);
  cpu::Upsample2dParams u;
  u.H_out = 0;
  CHECK_THROWS_WITH_AS(u.validate("upsample_nearest2d"),
                       "kiln::upsample_nearest2d: output height H_out must be >= 1, got 0",
                       kiln::ValueError);
}
