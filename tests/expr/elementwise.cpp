// Tests of include/kiln/expr (expr.hpp, ops.hpp, eval.hpp): fused elementwise expressions with
// broadcasting, every function against a double-precision formula, aliasing, lifetimes.
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;

namespace {
Tensor<float> iota(Shape s, float start = 0.0f, float step = 1.0f) {
  std::vector<float> v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = start + step * static_cast<float>(i);
  return kiln::from_vector(v, s);
}

// Checks every element of `got` against f applied to the same elements of `x` (in double).
template <class T>
void check_unary(const Tensor<T>& got, const Tensor<T>& x, const std::function<double(double)>& f, double rtol,
                 double atol) {
  auto g = got.to_vector();
  auto in = x.to_vector();
  REQUIRE(g.size() == in.size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double want = f(static_cast<double>(in[i]));
    if (std::isnan(want)) {
      CHECK(std::isnan(g[i]));
      continue;
    }
    if (std::isinf(want)) {
      CHECK(static_cast<double>(g[i]) == want);
      continue;
    }
    INFO("x = " << in[i] << " got " << g[i] << " want " << want);
    CHECK(std::abs(static_cast<double>(g[i]) - want) <= atol + rtol * std::abs(want));
  }
}
}  // namespace

TEST_CASE("arithmetic with scalars and hand-computed values") {
  auto a = iota({2, 3});                       // 0..5
  Tensor<float> y = a * 2.0f + 1.0f;           // 1 3 5 7 9 11
  CHECK(y.to_vector() == std::vector<float>{1, 3, 5, 7, 9, 11});
  Tensor<float> z = 10.0f - a / 2.0f;          // 10 9.5 9 ...
  CHECK(z.at({1, 2}) == 7.5f);
  Tensor<float> n = -a;
  CHECK(n.at({0, 1}) == -1.0f);
  Tensor<float> p = kiln::pow(a, 2);
  CHECK(p.at({1, 2}) == 25.0f);
  Tensor<float> q = kiln::pow(a, a);
  CHECK(q.at({0, 0}) == 1.0f);                 // 0^0
  CHECK(q.at({0, 2}) == 4.0f);
  Tensor<double> d = kiln::from_vector(std::vector<double>{1, 2, 3}) * 0.5;
  CHECK(d.at({2}) == 1.5);
}

TEST_CASE("broadcasting: size-1 dims, leading dims, scalars, size-0") {
  auto col = iota({3, 1});           // 0,1,2
  auto row = iota({4}, 10.0f);       // 10..13
  Tensor<float> s = col * 100.0f + row;
  CHECK(s.shape() == Shape{3, 4});
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) CHECK(s.at({i, j}) == static_cast<float>(100 * i + 10 + j));
  // 0-d tensor operand
  auto zero_d = kiln::full<float>({}, 3.0f);
  Tensor<float> t = row * zero_d;
  CHECK(t.shape() == Shape{4});
  CHECK(t.at({3}) == 39.0f);
  // size-0 dims
  auto e = kiln::zeros<float>({0, 4});
  Tensor<float> r = e + row;
  CHECK(r.shape() == Shape{0, 4});
  CHECK(r.numel() == 0);
  auto e1 = kiln::zeros<float>({0, 1});
  Tensor<float> r1 = e1 * col.reshape({1, 3});
  CHECK(r1.shape() == Shape{0, 3});
  // 3-d broadcast with middle dim
  auto a = iota({2, 1, 3});
  auto b = iota({1, 4, 1});
  Tensor<float> c = a - b;
  CHECK(c.shape() == Shape{2, 4, 3});
  CHECK(c.at({1, 3, 2}) == 5.0f - 3.0f);
  CHECK_THROWS_AS((void)(iota({2, 3}) + iota({3, 2})), kiln::ShapeError);
}

TEST_CASE("non-contiguous operands: transposed, sliced, expanded") {
  auto m = iota({5, 7});
  auto mt = m.t();                             // 7x5, strides (1, 7)
  Tensor<float> r = mt * 1.0f + mt;
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 5; ++j) CHECK(r.at({i, j}) == 2.0f * m.at({j, i}));
  auto sl = m.slice(1, 1, 7, 3);               // columns 1, 4
  Tensor<float> q = sl + sl;
  CHECK(q.shape() == Shape{5, 2});
  CHECK(q.at({4, 1}) == 2.0f * m.at({4, 4}));
  // a long row with a gathered stride, exercising full packets and tails
  auto big = iota({3, 1001});
  auto every_other = big.slice(1, 0, 1001, 2);
  Tensor<float> w = kiln::exp(every_other * 0.001f);
  for (index_t j = 0; j < every_other.size(1); j += 50)
    CHECK(w.at({2, j}) == doctest::Approx(std::exp(0.001 * big.at({2, 2 * j}))).epsilon(1e-6));
  // destination view (assign writes through)
  auto dst = kiln::zeros<float>({4, 6});
  dst.slice(1, 0, 6, 2).assign(iota({4, 3}));
  CHECK(dst.at({1, 2}) == 4.0f);
  CHECK(dst.at({1, 3}) == 0.0f);
}

TEST_CASE("every unary function matches its formula (float and double)") {
  const auto x = iota({1, 203}, -10.0f, 0.1f);
  const auto xd = x.to<double>();
  const double pi = 3.14159265358979323846;
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  check_unary<float>(kiln::exp(x), x, [](double v) { return std::exp(v); }, 4e-7, 1e-30);
  check_unary<float>(kiln::abs(x), x, [](double v) { return std::abs(v); }, 0, 0);
  check_unary<float>(kiln::tanh(x), x, [](double v) { return std::tanh(v); }, 4e-7, 1e-7);
  check_unary<float>(kiln::sigmoid(x), x, sig, 1e-6, 1e-9);
  check_unary<float>(kiln::relu(x), x, [](double v) { return v < 0 ? 0.0 : v; }, 0, 0);
  check_unary<float>(kiln::leaky_relu(x, 0.2), x, [](double v) { return v < 0 ? 0.2 * v : v; }, 1e-7, 0);
  check_unary<float>(kiln::silu(x), x, [&](double v) { return v * sig(v); }, 1e-6, 1e-7);
  check_unary<float>(kiln::gelu(x), x, [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }, 1e-6,
                     1e-7);
  check_unary<float>(kiln::gelu_tanh(x), x,
                     [&](double v) { return 0.5 * v * (1 + std::tanh(std::sqrt(2 / pi) * (v + 0.044715 * v * v * v))); },
                     1e-6, 1e-7);
  check_unary<float>(kiln::softplus(x), x, [](double v) { return v > 20 ? v : std::log1p(std::exp(v)); }, 1e-6, 1e-9);
  check_unary<float>(kiln::softplus(x, 2.0, 5.0), x,
                     [](double v) { return 2 * v > 5 ? v : std::log1p(std::exp(2 * v)) / 2; }, 1e-6, 1e-9);
  check_unary<float>(kiln::clamp(x, -1.5, 2.5), x, [](double v) { return v < -1.5 ? -1.5 : (v > 2.5 ? 2.5 : v); }, 0,
                     1e-7);
  check_unary<float>(kiln::square(x), x, [](double v) { return v * v; }, 1e-7, 0);
  const auto pos = iota({1, 150}, 0.01f, 0.37f);
  check_unary<float>(kiln::log(pos), pos, [](double v) { return std::log(v); }, 4e-7, 1e-7);
  check_unary<float>(kiln::log1p(pos), pos, [](double v) { return std::log1p(v); }, 4e-7, 1e-7);
  check_unary<float>(kiln::sqrt(pos), pos, [](double v) { return std::sqrt(v); }, 2e-7, 0);
  check_unary<float>(kiln::rsqrt(pos), pos, [](double v) { return 1 / std::sqrt(v); }, 4e-7, 0);
  check_unary<float>(kiln::expm1(x), x, [](double v) { return std::expm1(v); }, 4e-7, 1e-9);
  check_unary<float>(kiln::reciprocal(pos), pos, [](double v) { return 1 / v; }, 2e-7, 0);
  // double precision
  check_unary<double>(kiln::exp(xd), xd, [](double v) { return std::exp(v); }, 1e-15, 0);
  check_unary<double>(kiln::tanh(xd), xd, [](double v) { return std::tanh(v); }, 1e-15, 1e-16);
  check_unary<double>(kiln::gelu(xd), xd, [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); },
                      1e-14, 1e-16);
  check_unary<double>(kiln::softplus(xd), xd, [](double v) { return v > 20 ? v : std::log1p(std::exp(v)); }, 1e-14,
                      1e-16);
}

TEST_CASE("special values: NaN propagates, infinities, large arguments") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  auto x = kiln::from_vector(std::vector<float>{-inf, -100.0f, 0.0f, 100.0f, inf, nan});
  Tensor<float> s = kiln::sigmoid(x);
  CHECK(s.at({0}) == 0.0f);
  CHECK(s.at({1}) == doctest::Approx(0.0f));
  CHECK(s.at({2}) == 0.5f);
  CHECK(s.at({4}) == 1.0f);
  CHECK(std::isnan(s.at({5})));
  Tensor<float> sp = kiln::softplus(x);
  CHECK(sp.at({1}) >= 0.0f);
  CHECK(sp.at({3}) == 100.0f);
  CHECK(sp.at({4}) == inf);
  Tensor<float> r = kiln::relu(x);
  CHECK(std::isnan(r.at({5})));
  Tensor<float> e = kiln::exp(x);
  CHECK(e.at({0}) == 0.0f);
  CHECK(e.at({3}) == inf);
  Tensor<float> mx = kiln::maximum(x, 0.0f);
  CHECK(std::isnan(mx.at({5})));
  CHECK(mx.at({1}) == 0.0f);
  Tensor<float> mn = kiln::minimum(0.0f, x);
  CHECK(std::isnan(mn.at({5})));
  CHECK(mn.at({0}) == -inf);
  Tensor<float> th = kiln::tanh(x);
  CHECK(th.at({0}) == -1.0f);
  CHECK(th.at({4}) == 1.0f);
  Tensor<float> lg = kiln::log(kiln::from_vector(std::vector<float>{0.0f, -1.0f}));
  CHECK(lg.at({0}) == -inf);
  CHECK(std::isnan(lg.at({1})));
}

TEST_CASE("comparisons and where") {
  auto a = iota({5});                 // 0..4
  auto b = kiln::full<float>({5}, 2.0f);
  CHECK(Tensor<float>(a < b).to_vector() == std::vector<float>{1, 1, 0, 0, 0});
  CHECK(Tensor<float>(a <= b).to_vector() == std::vector<float>{1, 1, 1, 0, 0});
  CHECK(Tensor<float>(a > 2.0f).to_vector() == std::vector<float>{0, 0, 0, 1, 1});
  CHECK(Tensor<float>(a >= b).to_vector() == std::vector<float>{0, 0, 1, 1, 1});
  CHECK(Tensor<float>(a == 3.0f).to_vector() == std::vector<float>{0, 0, 0, 1, 0});
  CHECK(Tensor<float>(a != b).to_vector() == std::vector<float>{1, 1, 0, 1, 1});
  Tensor<float> w = kiln::where(a > 1.5f, a * 10.0f, -1.0f);
  CHECK(w.to_vector() == std::vector<float>{-1, -1, 20, 30, 40});
  Tensor<float> w2 = kiln::where(iota({3, 1}) > 0.5f, 1.0f, iota({4}));
  CHECK(w2.shape() == Shape{3, 4});
  CHECK(w2.at({0, 3}) == 3.0f);
  CHECK(w2.at({2, 3}) == 1.0f);
}

TEST_CASE("one fused pass, lazy until assigned, and safe to keep") {
  auto a = iota({1000}, 0.0f, 0.001f);
  auto expr = [&] {
    auto x = iota({1000}, 1.0f, 0.0f);        // a temporary: the expression keeps it alive
    return kiln::sigmoid(a * 3.0f + x) * 2.0f - kiln::tanh(a);
  }();
  Tensor<float> out = expr;
  for (index_t i = 0; i < 1000; i += 111) {
    const double v = a.at({i});
    CHECK(out.at({i}) == doctest::Approx(2.0 / (1.0 + std::exp(-(3 * v + 1))) - std::tanh(v)).epsilon(1e-6));
  }
  CHECK(expr.shape == Shape{1000});
  CHECK(expr.eval().at({999}) == out.at({999}));
}

TEST_CASE("in-place assignment and aliasing") {
  auto y = iota({4, 4});
  auto orig = y.clone();
  y += 1.0f;
  CHECK(y.at({3, 3}) == 16.0f);
  y *= y;
  CHECK(y.at({0, 1}) == 4.0f);
  // Reading the transposed destination while writing it needs a temporary.
  auto m = iota({3, 3});
  m.assign(m.t() + 0.0f);
  CHECK(m.at({0, 1}) == 3.0f);
  CHECK(m.at({1, 0}) == 1.0f);
  // Shifted view of the same storage.
  auto v = iota({6});
  v.slice(0, 1, 6).assign(v.slice(0, 0, 5) * 1.0f);
  CHECK(v.to_vector() == std::vector<float>{0, 0, 1, 2, 3, 4});
  // operator= rebinds and leaves other holders alone
  auto a = iota({3});
  Tensor<float> alias = a;
  a = a * 2.0f;
  CHECK(alias.at({2}) == 2.0f);
  CHECK(a.at({2}) == 4.0f);
  // assign broadcasts the value, but not the other way round
  auto d = kiln::zeros<float>({2, 3});
  d.assign(iota({3}));
  CHECK(d.at({1, 2}) == 2.0f);
  CHECK_THROWS_AS(iota({3}).assign(d), kiln::ShapeError);
  d.assign(5.0);
  CHECK(d.at({1, 1}) == 5.0f);
  auto expanded = iota({1, 3}).expand({4, 3});
  CHECK_THROWS_AS(expanded.assign(d.slice(0, 0, 1)), kiln::ShapeError);
  (void)orig;
}

TEST_CASE("large expressions are split across threads with identical results") {
  kiln::Rng rng(3);
  auto a = kiln::randn<float>({300, 1000}, rng);
  auto b = kiln::randn<float>({1000}, rng);
  kiln::set_num_threads(1);
  Tensor<float> one = kiln::gelu(a * b + 0.5f) + kiln::exp(-kiln::abs(a));
  kiln::set_num_threads(2);
  Tensor<float> two = kiln::gelu(a * b + 0.5f) + kiln::exp(-kiln::abs(a));
  CHECK(one.to_vector() == two.to_vector());
  // and match the element-by-element formula
  for (index_t i = 0; i < 300; i += 37)
    for (index_t j = 0; j < 1000; j += 91) {
      const double x = static_cast<double>(a.at({i, j})) * b.at({j}) + 0.5;
      const double want = 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))) + std::exp(-std::abs(a.at({i, j})));
      CHECK(one.at({i, j}) == doctest::Approx(want).epsilon(2e-6));
    }
}
