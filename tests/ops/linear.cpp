// Tests of include/kiln/ops/linear.hpp: the forward against a double loop (1-d, 2-d, 3-d inputs,
// strided and transposed operands, empty extents), shape errors, gradcheck and gradgradcheck with
// and without bias, and the plain (GEMM) backward against the formulas and the create_graph path.
#include <doctest/doctest.h>

#include <kiln/kiln.hpp>
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/ops/linear.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;
using Vec = std::vector<Tensor<double>>;
using Fn = std::function<Tensor<double>(const Vec&)>;

namespace {

template <class T>
Tensor<T> rnd(Shape s, std::uint64_t seed) {
  kiln::Rng rng(seed);
  return kiln::rand<T>(s, rng, T(-1), T(1));
}

// y[r, o] = Σ_i x[r, i]·w[o, i] + b[o] in double, rows of x flattened; compares with y.
template <class T>
void check_forward(const Tensor<T>& x, const Tensor<T>& w, const Tensor<T>& b, const Tensor<T>& y, double tol) {
  const index_t in = w.size(1), out = w.size(0);
  Shape expect = x.shape();
  expect.dims[expect.ndim - 1] = out;
  REQUIRE(y.shape() == expect);
  const std::vector<T> xv = x.to_vector(), yv = y.to_vector();
  const index_t M = in > 0 ? static_cast<index_t>(xv.size()) / in : (out > 0 ? static_cast<index_t>(yv.size()) / out : 0);
  for (index_t r = 0; r < M; ++r)
    for (index_t o = 0; o < out; ++o) {
      double s = b.defined() ? static_cast<double>(b.at({o})) : 0.0;
      for (index_t i = 0; i < in; ++i)
        s += static_cast<double>(xv[static_cast<std::size_t>(r * in + i)]) * static_cast<double>(w.at({o, i}));
      CHECK(std::abs(static_cast<double>(yv[static_cast<std::size_t>(r * out + o)]) - s) <= tol * (1 + std::abs(s)));
    }
}

void check_grad(const Fn& f, const Vec& inputs) {
  auto r = kiln::gradcheck(f, inputs);
  INFO(r.message);
  CHECK(r.ok);
  auto r2 = kiln::gradgradcheck(f, inputs);
  INFO(r2.message);
  CHECK(r2.ok);
}

}  // namespace

TEST_CASE("linear by hand") {
  // x = [[1, 2]], W = [[1, 0], [0, 1], [1, 1]], b = [10, 20, 30] -> [11, 22, 33]
  auto x = kiln::from_vector<float>({1, 2}, {1, 2});
  auto w = kiln::from_vector<float>({1, 0, 0, 1, 1, 1}, {3, 2});
  auto b = kiln::from_vector<float>({10, 20, 30});
  CHECK(kiln::linear(x, w, b).to_vector() == std::vector<float>{11, 22, 33});
  CHECK(kiln::linear(x, w).to_vector() == std::vector<float>{1, 2, 3});
  // a 1-d input gives a 1-d output
  auto y1 = kiln::linear(x.reshape({2}), w, b);
  CHECK(y1.shape() == Shape{3});
  CHECK(y1.to_vector() == std::vector<float>{11, 22, 33});
}

TEST_CASE("linear forward against a double loop: shapes, strides, sizes") {
  for (index_t in : {1, 7, 64, 130}) {
    for (index_t out : {1, 5, 48}) {
      CAPTURE(in);
      CAPTURE(out);
      auto w = rnd<float>({out, in}, 1 + static_cast<std::uint64_t>(in * 7 + out));
      auto b = rnd<float>({out}, 2);
      auto x2 = rnd<float>({37, in}, 3);
      check_forward(x2, w, b, kiln::linear(x2, w, b), 1e-5);
      check_forward(x2, w, Tensor<float>(), kiln::linear(x2, w), 1e-5);
      auto x3 = rnd<float>({2, 9, in}, 4);
      check_forward(x3, w, b, kiln::linear(x3, w, b), 1e-5);
      // x transposed (read by GEMM as a transposed operand), x with an inner stride (copied)
      auto xt = rnd<float>({in, 11}, 5).t();
      check_forward(xt, w, b, kiln::linear(xt, w, b), 1e-5);
      auto xs = rnd<float>({6, 2 * in}, 6).slice(1, 0, 2 * in, 2);
      check_forward(xs, w, b, kiln::linear(xs, w, b), 1e-5);
      // a 3-d input whose batch dims cannot be merged into one stride
      auto xp = rnd<float>({9, 2, in}, 7).permute({1, 0, 2});
      check_forward(xp, w, b, kiln::linear(xp, w, b), 1e-5);
      // weight given transposed, bias with a stride
      auto wt = rnd<float>({in, out}, 8).t();
      auto bs = rnd<float>({2 * out}, 9).slice(0, 0, 2 * out, 2);
      check_forward(x2, wt, bs, kiln::linear(x2, wt, bs), 1e-5);
    }
  }
  // double precision
  auto wd = rnd<double>({4, 6}, 10);
  auto xd = rnd<double>({3, 6}, 11);
  auto bd = rnd<double>({4}, 12);
  check_forward(xd, wd, bd, kiln::linear(xd, wd, bd), 1e-13);
}

TEST_CASE("linear with empty extents") {
  auto w = rnd<float>({3, 4}, 1);
  auto b = kiln::from_vector<float>({1, 2, 3});
  CHECK(kiln::linear(kiln::zeros<float>({0, 4}), w, b).shape() == Shape{0, 3});
  // no input features: the output is the bias (or zeros)
  auto w0 = kiln::zeros<float>({3, 0});
  CHECK(kiln::linear(kiln::zeros<float>({2, 0}), w0, b).to_vector() == std::vector<float>{1, 2, 3, 1, 2, 3});
  CHECK(kiln::linear(kiln::zeros<float>({2, 0}), w0).to_vector() == std::vector<float>(6, 0.0f));
  CHECK(kiln::linear(kiln::ones<float>({2, 4}), kiln::zeros<float>({0, 4})).shape() == Shape{2, 0});
  // gradients of empty extents are zeros of the right shapes
  auto x = kiln::ones<double>({2, 0}).requires_grad();
  auto wz = kiln::ones<double>({3, 0}).requires_grad();
  auto bz = kiln::ones<double>({3}).requires_grad();
  kiln::sum(kiln::linear(x, wz, bz)).backward();
  CHECK(x.grad().shape() == Shape{2, 0});
  CHECK(wz.grad().shape() == Shape{3, 0});
  CHECK(bz.grad().to_vector() == std::vector<double>{2, 2, 2});
}

TEST_CASE("linear shape errors name the shapes") {
  auto w = rnd<float>({3, 4}, 1);
  CHECK_THROWS_AS(kiln::linear(rnd<float>({2, 5}, 2), w), kiln::ShapeError);
  CHECK_THROWS_WITH(kiln::linear(rnd<float>({2, 5}, 2), w),
                    doctest::Contains("shapes [2, 5] and [3, 4]"));
  CHECK_THROWS_AS(kiln::linear(rnd<float>({2, 4}, 2), rnd<float>({4}, 3)), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::linear(rnd<float>({2, 4}, 2), w, rnd<float>({4}, 3)), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::linear(rnd<float>({2, 4}, 2), w, rnd<float>({1, 3}, 3)), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::linear(Tensor<float>(Shape{}), w), kiln::ShapeError);
}

TEST_CASE("linear gradcheck and gradgradcheck, with and without bias") {
  check_grad([](const Vec& v) { return kiln::linear(v[0], v[1], v[2]); },
             {rnd<double>({4, 3}, 1), rnd<double>({5, 3}, 2), rnd<double>({5}, 3)});
  check_grad([](const Vec& v) { return kiln::linear(v[0], v[1]); }, {rnd<double>({4, 3}, 4), rnd<double>({5, 3}, 5)});
  // 3-d and 1-d inputs
  check_grad([](const Vec& v) { return kiln::linear(v[0], v[1], v[2]); },
             {rnd<double>({2, 3, 4}, 6), rnd<double>({2, 4}, 7), rnd<double>({2}, 8)});
  check_grad([](const Vec& v) { return kiln::linear(v[0], v[1], v[2]); },
             {rnd<double>({4}, 9), rnd<double>({3, 4}, 10), rnd<double>({3}, 11)});
}

TEST_CASE("linear gradcheck with strided inputs") {
  // x transposed, x with an inner stride, x with unmergeable batch dims, weight transposed,
  // x broadcast along a new leading dim.
  check_grad([](const Vec& v) { return kiln::linear(v[0].t(), v[1], v[2]); },
             {rnd<double>({3, 4}, 1), rnd<double>({2, 3}, 2), rnd<double>({2}, 3)});
  check_grad([](const Vec& v) { return kiln::linear(v[0].slice(1, 0, 6, 2), v[1], v[2]); },
             {rnd<double>({4, 6}, 4), rnd<double>({2, 3}, 5), rnd<double>({2}, 6)});
  check_grad([](const Vec& v) { return kiln::linear(v[0].permute({1, 0, 2}), v[1]); },
             {rnd<double>({3, 2, 4}, 7), rnd<double>({2, 4}, 8)});
  check_grad([](const Vec& v) { return kiln::linear(v[0], v[1].t(), v[2]); },
             {rnd<double>({4, 3}, 9), rnd<double>({3, 2}, 10), rnd<double>({2}, 11)});
  check_grad([](const Vec& v) { return kiln::linear(v[0].expand({2, 4, 3}), v[1], v[2]); },
             {rnd<double>({4, 3}, 12), rnd<double>({2, 3}, 13), rnd<double>({2}, 14)});
}

TEST_CASE("linear gradients when only some inputs are tracked") {
  const auto x = rnd<double>({4, 3}, 1);
  const auto w = rnd<double>({2, 3}, 2);
  check_grad([x](const Vec& v) { return kiln::linear(x, v[0], v[1]); }, {rnd<double>({2, 3}, 3), rnd<double>({2}, 4)});
  check_grad([w](const Vec& v) { return kiln::linear(v[0], w); }, {rnd<double>({4, 3}, 5)});
  check_grad([x, w](const Vec& v) { return kiln::linear(x, w, v[0]); }, {rnd<double>({2}, 6)});
  // an untracked input gets no gradient
  auto wt = w.clone().requires_grad();
  kiln::sum(kiln::linear(x, wt)).backward();
  CHECK(wt.grad().defined());
  CHECK_FALSE(x.tracks_grad());
}

TEST_CASE("plain backward (GEMM) agrees with the formulas and with the create_graph path") {
  const index_t M = 6, in = 5, out = 4;
  auto x = rnd<double>({2, 3, in}, 1).requires_grad();
  auto w = rnd<double>({out, in}, 2).requires_grad();
  auto b = rnd<double>({out}, 3).requires_grad();
  auto g = rnd<double>({2, 3, out}, 4);
  auto y = kiln::linear(x, w, b);
  auto plain = kiln::grad<double, kiln::cpu>({y}, {x, w, b}, {g}, true, false);
  auto graph = kiln::grad<double, kiln::cpu>({y}, {x, w, b}, {g}, true, true);
  CHECK_FALSE(plain[0].tracks_grad());
  CHECK(graph[0].tracks_grad());
  const auto gv = g.to_vector(), xv = x.to_vector(), wv = w.detach().to_vector();
  for (int k = 0; k < 3; ++k) {
    const auto pv = plain[static_cast<std::size_t>(k)].to_vector();
    const auto cv = graph[static_cast<std::size_t>(k)].detach().to_vector();
    REQUIRE(pv.size() == cv.size());
    for (std::size_t i = 0; i < pv.size(); ++i) CHECK(pv[i] == doctest::Approx(cv[i]).epsilon(1e-12));
  }
  // gx = g W, gW = gᵀ x, gb = column sums of g
  for (index_t r = 0; r < M; ++r)
    for (index_t i = 0; i < in; ++i) {
      double s = 0;
      for (index_t o = 0; o < out; ++o) s += gv[static_cast<std::size_t>(r * out + o)] * wv[static_cast<std::size_t>(o * in + i)];
      CHECK(plain[0].to_vector()[static_cast<std::size_t>(r * in + i)] == doctest::Approx(s).epsilon(1e-12));
    }
  for (index_t o = 0; o < out; ++o) {
    double sb = 0;
    for (index_t r = 0; r < M; ++r) sb += gv[static_cast<std::size_t>(r * out + o)];
    CHECK(plain[2].at({o}) == doctest::Approx(sb).epsilon(1e-12));
    for (index_t i = 0; i < in; ++i) {
      double s = 0;
      for (index_t r = 0; r < M; ++r) s += gv[static_cast<std::size_t>(r * out + o)] * xv[static_cast<std::size_t>(r * in + i)];
      CHECK(plain[1].at({o, i}) == doctest::Approx(s).epsilon(1e-12));
    }
  }
  // A broadcast output gradient (from sum) and a transposed one (from a transposed use of y).
  auto xs = rnd<float>({40, 33}, 5).requires_grad();
  auto ws = rnd<float>({20, 33}, 6).requires_grad();
  auto bs = rnd<float>({20}, 7).requires_grad();
  kiln::sum(kiln::linear(xs, ws, bs)).backward();
  for (float v : bs.grad().to_vector()) CHECK(v == 40.0f);
  const auto xsv = xs.detach().to_vector();
  for (index_t o = 0; o < 20; ++o) {
    double s = 0;
    for (index_t r = 0; r < 40; ++r) s += xsv[static_cast<std::size_t>(r * 33 + 3)];
    CHECK(ws.grad().at({o, 3}) == doctest::Approx(s).epsilon(1e-5));
  }
  // An output gradient that arrives as a transposed view (GEMM reads it with the flag flipped;
  // the bias sum becomes a GEMM with a ones vector), against the same gradient made contiguous.
  auto g_t = rnd<float>({20, 40}, 8).t();  // [40, 20], strides (1, 40)
  auto y2 = kiln::linear(xs, ws, bs);
  auto from_view = kiln::grad<float, kiln::cpu>({y2}, {xs, ws, bs}, {g_t}, true);
  auto from_copy = kiln::grad<float, kiln::cpu>({y2}, {xs, ws, bs}, {g_t.contiguous()});
  for (int k = 0; k < 3; ++k) {
    const auto a = from_view[static_cast<std::size_t>(k)].to_vector();
    const auto c = from_copy[static_cast<std::size_t>(k)].to_vector();
    REQUIRE(a.size() == c.size());
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i] == doctest::Approx(c[i]).epsilon(1e-5));
  }
  const auto gtv = g_t.contiguous().to_vector();
  for (index_t o = 0; o < 20; ++o) {
    double sb = 0;
    for (index_t r = 0; r < 40; ++r) sb += gtv[static_cast<std::size_t>(r * 20 + o)];
    CHECK(from_view[2].at({o}) == doctest::Approx(sb).epsilon(1e-5));
  }
}
