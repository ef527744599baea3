// Tests of include/kiln/ops/dropout.hpp and the nn::Dropout module: the dropped fraction and the
// 1/(1-p) scaling over a large tensor, reproducibility from the seed, the gradient g·mask/(1-p),
// gradcheck with a fixed mask, eval mode and p = 0 as the identity, p = 1, bad p.
#include <doctest/doctest.h>

#include <kiln/kiln.hpp>
#include <kiln/autograd/gradcheck.hpp>
#include <kiln/nn/dropout.hpp>
#include <kiln/ops/dropout.hpp>

#include <cmath>
#include <vector>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;

TEST_CASE("dropout drops a fraction p and scales the rest by 1/(1-p)") {
  for (double p : {0.1, 0.5, 0.8}) {
    CAPTURE(p);
    kiln::Rng data_rng(1);
    auto x = kiln::rand<float>({1000, 1000}, data_rng, 0.5f, 1.5f);  // never zero
    kiln::Rng rng(7);
    auto y = kiln::dropout(x, p, true, rng);
    REQUIRE(y.shape() == x.shape());
    const auto xv = x.to_vector(), yv = y.to_vector();
    const double n = static_cast<double>(xv.size());
    double dropped = 0;
    bool scaled = true;
    const float scale = static_cast<float>(1.0 / (1.0 - p));
    for (std::size_t i = 0; i < xv.size(); ++i) {
      if (yv[i] == 0.0f)
        dropped += 1;
      else if (std::abs(yv[i] - xv[i] * scale) > 1e-6f * std::abs(xv[i] * scale))
        scaled = false;
    }
    CHECK(scaled);
    // binomial: the fraction dropped is within 5 standard deviations of p
    const double sd = std::sqrt(p * (1 - p) / n);
    CHECK(std::abs(dropped / n - p) < 5 * sd);
    // the mean is preserved in expectation
    CHECK(kiln::mean(y).item() == doctest::Approx(kiln::mean(x).item()).epsilon(0.01));
    // the mask takes ceil(n / 4) Philox blocks
    CHECK(rng.offset() == 250000u);
  }
}

TEST_CASE("dropout is reproducible from the seed and independent of strides") {
  kiln::Rng data_rng(2);
  auto x = kiln::randn<float>({64, 33}, data_rng);
  kiln::Rng a(99), b(99), c(100);
  auto ya = kiln::dropout(x, 0.3, true, a);
  auto yb = kiln::dropout(x, 0.3, true, b);
  auto yc = kiln::dropout(x, 0.3, true, c);
  CHECK(ya.to_vector() == yb.to_vector());
  CHECK(ya.to_vector() != yc.to_vector());
  // the same generator continues with a different mask
  auto ya2 = kiln::dropout(x, 0.3, true, a);
  CHECK(ya.to_vector() != ya2.to_vector());
  // a transposed input gets the mask in its own (logical) element order
  kiln::Rng d(99);
  auto xt = x.t().contiguous().t();  // same values, column-major strides
  auto yd = kiln::dropout(xt, 0.3, true, d);
  CHECK(yd.to_vector() == ya.to_vector());
}

TEST_CASE("dropout outside training, with p = 0 and p = 1") {
  kiln::Rng data_rng(3);
  auto x = kiln::randn<float>({10, 10}, data_rng);
  kiln::Rng rng(5);
  auto e = kiln::dropout(x, 0.5, false, rng);
  CHECK(e.data() == x.data());  // the input itself
  CHECK(rng.offset() == 0u);    // no random numbers used
  auto z = kiln::dropout(x, 0.0, true, rng);
  CHECK(z.data() == x.data());
  auto all = kiln::dropout(x, 1.0, true, rng);
  CHECK(all.to_vector() == std::vector<float>(100, 0.0f));
  CHECK_THROWS_AS(kiln::dropout(x, -0.1, true, rng), kiln::ValueError);
  CHECK_THROWS_AS(kiln::dropout(x, 1.5, true, rng), kiln::ValueError);
  CHECK_THROWS_WITH(kiln::dropout(x, 1.5, true, rng), doctest::Contains("[0, 1]"));
}

TEST_CASE("dropout's gradient is g * mask / (1 - p)") {
  kiln::Rng data_rng(4);
  auto x = kiln::rand<double>({50, 40}, data_rng, 0.5, 1.5).requires_grad();
  auto g = kiln::randn<double>({50, 40}, data_rng);
  kiln::Rng rng(11);
  const double p = 0.4;
  auto y = kiln::dropout(x, p, true, rng);
  y.backward(g);
  const auto yv = y.detach().to_vector(), gv = g.to_vector(), gx = x.grad().to_vector();
  for (std::size_t i = 0; i < yv.size(); ++i) {
    const double mask = yv[i] != 0.0 ? 1.0 : 0.0;
    CHECK(gx[i] == doctest::Approx(gv[i] * mask / (1 - p)).epsilon(1e-12));
  }
  // gradcheck and gradgradcheck with the mask fixed by re-seeding inside f
  auto f = [p](const std::vector<Tensor<double>>& v) {
    kiln::Rng r(21);
    return Tensor<double>(kiln::square(kiln::dropout(v[0], p, true, r)));
  };
  auto r1 = kiln::gradcheck(f, {kiln::randn<double>({6, 7}, data_rng)});
  INFO(r1.message);
  CHECK(r1.ok);
  auto r2 = kiln::gradgradcheck(f, {kiln::randn<double>({6, 7}, data_rng)});
  INFO(r2.message);
  CHECK(r2.ok);
}

TEST_CASE("nn::Dropout is active only in training mode, with a generator of its own") {
  kiln::Rng rng(1), same(1);
  kiln::nn::Dropout drop(0.5, rng), twin(0.5, same);
  auto x = kiln::ones<float>({100, 100});
  CHECK(drop.is_training());
  auto y = drop(x);
  const auto yv = y.to_vector();
  index_t zeros = 0;
  for (float v : yv) {
    CHECK((v == 0.0f || v == 2.0f));
    zeros += v == 0.0f;
  }
  CHECK(zeros > 4500);
  CHECK(zeros < 5500);
  // built from the same seed: the same masks, call after call
  CHECK(twin(x).to_vector() == yv);
  CHECK(twin(x).to_vector() == drop(x).to_vector());
  // successive calls draw new masks
  CHECK(drop(x).to_vector() != yv);
  drop.eval();
  CHECK(drop(x).data() == x.data());
  drop.train();
  CHECK(drop(x).to_vector() != x.to_vector());
  CHECK(drop.p() == 0.5);
  CHECK_THROWS_AS(kiln::nn::Dropout(1.2, rng), kiln::ValueError);
}
