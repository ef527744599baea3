// Tests of kiln/autograd: the tape, fused elementwise gradients (every derivative rule checked by
// finite differences), views, reductions, matmul, double backward, accumulation and misuse errors.
#include <doctest/doctest.h>

#include <kiln/autograd/gradcheck.hpp>
#include <kiln/kiln.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

using kiln::Tensor;
using Vec = std::vector<Tensor<double>>;
using Fn = std::function<Tensor<double>(const Vec&)>;

namespace {

Tensor<double> rnd(kiln::Shape s, std::uint64_t seed, double lo = -1.5, double hi = 1.5) {
  kiln::Rng rng(seed);
  return kiln::rand<double>(s, rng, lo, hi);
}

void check(const Fn& f, const Vec& inputs, bool second_order = true) {
  auto r = kiln::gradcheck(f, inputs);
  INFO(r.message);
  CHECK(r.ok);
  if (second_order) {
    auto r2 = kiln::gradgradcheck(f, inputs);
    INFO(r2.message);
    CHECK(r2.ok);
  }
}

}  // namespace

TEST_CASE("a hand-derived gradient: d/dw mean(tanh(a·w + b))") {
  // One element: y = tanh(a w + b), dy/dw = a (1 − y²), dy/db = 1 − y².
  auto a = kiln::from_vector<double>({0.5}, {1, 1});
  auto w = kiln::from_vector<double>({2.0}, {1, 1}).requires_grad();
  auto b = kiln::from_vector<double>({-0.25}, {1}).requires_grad();
  Tensor<double> y = kiln::tanh(kiln::matmul(a, w) + b);
  kiln::mean(y).backward();
  const double t = std::tanh(0.5 * 2.0 - 0.25);
  CHECK(w.grad().item() == doctest::Approx(0.5 * (1 - t * t)).epsilon(1e-12));
  CHECK(b.grad().item() == doctest::Approx(1 - t * t).epsilon(1e-12));
}

TEST_CASE("every unary derivative rule agrees with finite differences, to second order") {
  auto x = rnd({3, 4}, 1);
  auto xp = rnd({3, 4}, 2, 0.2, 2.0);  // positive inputs for log, sqrt, rsqrt, pow
  check([](const Vec& v) { return Tensor<double>(-v[0]); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::abs(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::exp(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::expm1(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::log(v[0])); }, {xp});
  check([](const Vec& v) { return Tensor<double>(kiln::log1p(v[0])); }, {xp});
  check([](const Vec& v) { return Tensor<double>(kiln::sqrt(v[0])); }, {xp});
  check([](const Vec& v) { return Tensor<double>(kiln::rsqrt(v[0])); }, {xp});
  check([](const Vec& v) { return Tensor<double>(kiln::square(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::reciprocal(v[0])); }, {xp});
  check([](const Vec& v) { return Tensor<double>(kiln::tanh(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::erf(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::sigmoid(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::relu(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::silu(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::gelu(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::gelu_tanh(v[0])); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::leaky_relu(v[0], 0.2)); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::softplus(v[0], 2.0, 1.0)); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::clamp(v[0], -0.5, 0.7)); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::pow(v[0], 3.0)); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::pow(v[0], 1.7)); }, {xp});
}

TEST_CASE("binary and ternary derivative rules, with broadcasting and scalars") {
  auto a = rnd({3, 4}, 3);
  auto b = rnd({4}, 4, 0.5, 2.0);
  auto c = rnd({3, 1}, 5);
  check([](const Vec& v) { return Tensor<double>(v[0] + v[1]); }, {a, b});
  check([](const Vec& v) { return Tensor<double>(v[0] - v[1] * 2.0); }, {a, c});
  check([](const Vec& v) { return Tensor<double>(v[0] * v[1]); }, {a, b});
  check([](const Vec& v) { return Tensor<double>(v[0] / v[1]); }, {a, b});
  check([](const Vec& v) { return Tensor<double>(3.0 / v[0]); }, {b});
  check([](const Vec& v) { return Tensor<double>(kiln::maximum(v[0], v[1])); }, {a, c});
  check([](const Vec& v) { return Tensor<double>(kiln::minimum(v[0], v[1])); }, {a, c});
  check([](const Vec& v) { return Tensor<double>(kiln::pow(v[0], v[1])); }, {rnd({3, 4}, 6, 0.3, 2.0), b});
  check([](const Vec& v) { return Tensor<double>(kiln::where(v[0] > 0, v[0] * v[1], v[1])); }, {a, b});
  // The same tensor used several times in one expression.
  check([](const Vec& v) { return Tensor<double>(v[0] * v[0] * kiln::tanh(v[0])); }, {a});
}

TEST_CASE("a chain over several tracked tensors is one recorded node") {
  auto w = rnd({2, 3}, 7).requires_grad();
  auto x = rnd({2, 3}, 8);
  auto b = rnd({3}, 9).requires_grad();
  Tensor<double> y = kiln::sigmoid(w * x + b);
  REQUIRE(y.autograd_meta());
  auto node = y.autograd_meta()->grad_fn;
  REQUIRE(node);
  CHECK(std::string(node->name()) == "elementwise");
  CHECK(node->inputs.size() == 3);
  CHECK(node->inputs[0] != nullptr);
  CHECK(node->inputs[1] == nullptr);  // x needs no gradient
  CHECK(node->inputs[2] != nullptr);
}

TEST_CASE("views: reshape, permute, transpose, slice, select, expand, squeeze, unsqueeze") {
  auto x = rnd({2, 3, 4}, 10);
  check([](const Vec& v) { return Tensor<double>(v[0].reshape({6, 4}) * 2.0); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::tanh(v[0].permute({2, 0, 1}))); }, {x});
  check([](const Vec& v) { return v[0].transpose(0, 2).contiguous(); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::exp(v[0].slice(2, 1, 4, 2))); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::square(v[0].select(1, 2))); }, {x});
  check([](const Vec& v) { return Tensor<double>(kiln::square(v[0].unsqueeze(1).expand({2, 5, 3, 4}))); }, {x});
  check([](const Vec& v) { return v[0].unsqueeze(0).squeeze(0).flatten(); }, {x});
  // Non-contiguous input to an elementwise chain, and size-1 dims.
  auto y = rnd({4, 1, 3}, 11);
  check([](const Vec& v) { return Tensor<double>(kiln::sigmoid(v[0].transpose(0, 2)) * v[1]); },
        {y, rnd({1, 4}, 12)});
}

TEST_CASE("reductions: sum, mean, max, min, var, logsumexp along an axis and overall") {
  auto x = rnd({3, 5}, 13);
  for (int axis : {0, 1, -1}) {
    CAPTURE(axis);
    check([axis](const Vec& v) { return kiln::sum(kiln::square(v[0]), axis); }, {x});
    check([axis](const Vec& v) { return kiln::mean(kiln::square(v[0]), axis, true); }, {x});
    check([axis](const Vec& v) { return kiln::max(v[0], axis); }, {x}, false);
    check([axis](const Vec& v) { return kiln::min(v[0], axis); }, {x}, false);
    check([axis](const Vec& v) { return kiln::var(v[0], axis); }, {x});
    check([axis](const Vec& v) { return kiln::logsumexp(v[0], axis); }, {x});
  }
  check([](const Vec& v) { return kiln::sum(v[0] * v[0]); }, {x});
  check([](const Vec& v) { return kiln::mean(kiln::tanh(v[0])); }, {x});
  check([](const Vec& v) { return kiln::var(v[0]); }, {x});
  check([](const Vec& v) { return kiln::logsumexp(v[0]); }, {x});
}

TEST_CASE("max shares the gradient among ties, as torch.amax") {
  auto x = kiln::from_vector<double>({1.0, 3.0, 3.0, 2.0}, {4}).requires_grad();
  kiln::max(x).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{0.0, 0.5, 0.5, 0.0});
}

TEST_CASE("matmul: 2-d, batched with broadcasting, vectors; second order") {
  check([](const Vec& v) { return kiln::matmul(v[0], v[1]); }, {rnd({3, 4}, 14), rnd({4, 2}, 15)});
  check([](const Vec& v) { return kiln::matmul(v[0], v[1]); }, {rnd({2, 3, 4}, 16), rnd({4, 5}, 17)});
  check([](const Vec& v) { return kiln::matmul(v[0], v[1]); }, {rnd({1, 3, 4}, 18), rnd({2, 4, 2}, 19)});
  check([](const Vec& v) { return kiln::matmul(v[0], v[1]); }, {rnd({4}, 20), rnd({4, 3}, 21)});
  check([](const Vec& v) { return kiln::matmul(v[0], v[1]); }, {rnd({3, 4}, 22), rnd({4}, 23)});
  check([](const Vec& v) { return kiln::matmul(v[0].t(), v[1]); }, {rnd({4, 3}, 24), rnd({4, 2}, 25)});
  // A network with a nonlinearity between products, second order (as a gradient penalty needs).
  check([](const Vec& v) { return kiln::matmul(kiln::Tensor<double>(kiln::tanh(kiln::matmul(v[0], v[1]))), v[2]); },
        {rnd({2, 3}, 26), rnd({3, 4}, 27), rnd({4, 1}, 28)});
}

TEST_CASE("a gradient penalty: the norm of d D(x) / dx trains D's weights") {
  // D(x) = sum(tanh(x W)), ∂D/∂x = (1 − tanh²(xW)) Wᵀ; penalty = Σ (∂D/∂x)². Check dpenalty/dW
  // numerically (x is data, W the weights).
  const auto x_data = rnd({2, 3}, 29);
  check(
      [x_data](const Vec& v) {
        kiln::EnableGrad on;  // gradcheck evaluates f inside NoGrad; the penalty needs a graph
        Tensor<double> x = x_data.clone().requires_grad();
        Tensor<double> d = kiln::sum(kiln::tanh(kiln::matmul(x, v[0])));
        auto g = kiln::grad<double, kiln::cpu>({d}, {x}, {}, true, true);
        return kiln::sum(kiln::square(g[0]));
      },
      {rnd({3, 4}, 30)}, false);
}

TEST_CASE("gradients accumulate over backward calls and zero_grad clears them") {
  auto w = kiln::from_vector<double>({1.0, 2.0}, {2}).requires_grad();
  kiln::sum(w * 3.0).backward();
  kiln::sum(w * w).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{3.0 + 2.0, 3.0 + 4.0});
  w.zero_grad();
  CHECK_FALSE(w.grad().defined());
}

TEST_CASE("a tensor used by two branches gets the sum of both gradients") {
  auto x = kiln::from_vector<double>({0.5, -1.0}, {2}).requires_grad();
  Tensor<double> a = x * 2.0;
  Tensor<double> b = kiln::exp(x);
  kiln::sum(a * b).backward();  // d/dx (2x eˣ) = 2eˣ + 2x eˣ
  auto g = x.grad().to_vector();
  CHECK(g[0] == doctest::Approx(2 * std::exp(0.5) * 1.5));
  CHECK(g[1] == doctest::Approx(2 * std::exp(-1.0) * 0.0).epsilon(1e-12));
}

TEST_CASE("the graph is freed after backward unless retained") {
  auto x = kiln::from_vector<double>({1.0}, {1}).requires_grad();
  Tensor<double> y = kiln::exp(x);
  auto s = kiln::sum(y);
  s.backward(true);
  s.backward();
  CHECK(x.grad().item() == doctest::Approx(2 * std::exp(1.0)));
  CHECK_THROWS_WITH_AS(s.backward(), doctest::Contains("already freed"), kiln::Error);
}

TEST_CASE("NoGrad, detach and misuse errors") {
  auto w = kiln::from_vector<double>({1.0, 2.0}, {2}).requires_grad();
  {
    kiln::NoGrad guard;
    Tensor<double> y = w * 2.0;
    CHECK_FALSE(y.tracks_grad());
    CHECK_FALSE(kiln::is_grad_enabled());
    {
      kiln::EnableGrad on;
      Tensor<double> z = w * 2.0;
      CHECK(z.tracks_grad());
    }
  }
  CHECK(kiln::is_grad_enabled());
  Tensor<double> d = (w * 2.0).eval().detach();
  CHECK_FALSE(d.tracks_grad());
  auto plain = kiln::from_vector<double>({1.0}, {1});
  CHECK_THROWS_WITH_AS(kiln::sum(plain).backward(), doctest::Contains("does not require grad"), kiln::Error);
  Tensor<double> y = w * 2.0;
  CHECK_THROWS_WITH_AS(y.requires_grad(false), doctest::Contains("only leaf tensors"), kiln::Error);
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("one-element"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(w.assign(w * 0.5), doctest::Contains("in-place"), kiln::Error);
  {
    kiln::NoGrad guard;
    w.assign(w * 0.5);  // parameter updates happen like this
  }
  CHECK(w.to_vector() == std::vector<double>{0.5, 1.0});
  auto unrelated = [&] { return kiln::grad<double, kiln::cpu>({kiln::sum(w * 2.0)}, {plain}); };
  CHECK_THROWS_AS(unrelated(), kiln::Error);
}

TEST_CASE("float32 training of a tiny regression converges") {
  kiln::Rng rng(3);
  auto x = kiln::randn<float>({64, 3}, rng);
  auto true_w = kiln::from_vector<float>({1.5f, -2.0f, 0.5f}, {3, 1});
  Tensor<float> y = kiln::matmul(x, true_w);
  auto w = kiln::zeros<float>({3, 1}).requires_grad();
  float first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    auto loss = kiln::mean(kiln::square(kiln::matmul(x, w) - y));
    if (step == 0) first = loss.item();
    last = loss.item();
    loss.backward();
    kiln::NoGrad guard;
    w.assign(w - w.grad() * 0.1f);
    w.zero_grad();
  }
  CHECK(first > 1.0f);
  CHECK(last < 1e-6f);
}

TEST_CASE("grad() of an input reached only through ops without a gradient is zero, as PyTorch") {
  // d/dx of leaky_relu's derivative: the slope where(x > 0, 1, a) has no gradient in x.
  auto x = kiln::from_vector<double>({0.5, -2.0}, {2}).requires_grad();
  Tensor<double> y = kiln::leaky_relu(x, 0.2);
  auto g = kiln::grad<double, kiln::cpu>({kiln::sum(y)}, {x}, {}, true, true);
  CHECK(g[0].to_vector() == std::vector<double>{1.0, 0.2});
  auto gg = kiln::grad<double, kiln::cpu>({kiln::sum(g[0])}, {x});
  REQUIRE(gg[0].defined());
  CHECK(gg[0].to_vector() == std::vector<double>{0.0, 0.0});
}
