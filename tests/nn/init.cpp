// Tests of include/kiln/nn/init.hpp: the gain table and the fan rule (convolution weights
// included) by hand, then the bounds, mean and standard deviation of every random initialiser over
// large tensors against the formulas of Glorot & Bengio (2010) and He et al. (2015); strided and
// tracked targets; nn::Linear's default initialisation.
#include <doctest/doctest.h>

#include <kiln/kiln.hpp>
#include <kiln/nn/init.hpp>
#include <kiln/nn/linear.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;
namespace init = kiln::nn::init;

namespace {

struct Stats {
  double mean = 0, std = 0, min = 0, max = 0;
  std::size_t n = 0;
};

template <class T>
Stats stats(const Tensor<T>& t) {
  const auto v = t.to_vector();
  Stats s;
  s.n = v.size();
  double sum = 0;
  for (T x : v) sum += static_cast<double>(x);
  s.mean = sum / static_cast<double>(s.n);
  double sq = 0;
  for (T x : v) sq += (static_cast<double>(x) - s.mean) * (static_cast<double>(x) - s.mean);
  s.std = std::sqrt(sq / static_cast<double>(s.n - 1));
  s.min = static_cast<double>(*std::min_element(v.begin(), v.end()));
  s.max = static_cast<double>(*std::max_element(v.begin(), v.end()));
  return s;
}

// U(−b, b): every value inside, the extremes near ±b, mean 0 and std b/√3 within sampling error.
void check_uniform(const Tensor<float>& t, double b) {
  const Stats s = stats(t);
  const double sd = b / std::sqrt(3.0);
  CHECK(s.min >= -b);
  CHECK(s.max < b);
  CHECK(s.min < -0.99 * b);
  CHECK(s.max > 0.99 * b);
  CHECK(std::abs(s.mean) < 5 * sd / std::sqrt(static_cast<double>(s.n)));
  CHECK(s.std == doctest::Approx(sd).epsilon(0.01));
}

// N(0, sd²): mean within 5 standard errors, std within 1 %.
void check_normal(const Tensor<float>& t, double sd, double mean = 0.0) {
  const Stats s = stats(t);
  CHECK(std::abs(s.mean - mean) < 5 * sd / std::sqrt(static_cast<double>(s.n)));
  CHECK(s.std == doctest::Approx(sd).epsilon(0.01));
}

}  // namespace

TEST_CASE("calculate_gain follows PyTorch's table") {
  using NL = init::Nonlinearity;
  for (NL nl : {NL::linear, NL::conv1d, NL::conv2d, NL::conv3d, NL::conv_transpose1d, NL::conv_transpose2d,
                NL::conv_transpose3d, NL::sigmoid})
    CHECK(init::calculate_gain(nl) == 1.0);
  CHECK(init::calculate_gain(NL::tanh) == doctest::Approx(5.0 / 3.0));
  CHECK(init::calculate_gain(NL::relu) == doctest::Approx(1.4142135623730951));
  CHECK(init::calculate_gain(NL::leaky_relu) == doctest::Approx(std::sqrt(2.0 / (1.0 + 0.01 * 0.01))));
  CHECK(init::calculate_gain(NL::leaky_relu, 0.2) == doctest::Approx(std::sqrt(2.0 / 1.04)));
  CHECK(init::calculate_gain(NL::leaky_relu, 0.0) == doctest::Approx(std::sqrt(2.0)));
  CHECK(init::calculate_gain(NL::selu) == 0.75);
}

TEST_CASE("fans: dim 1 and dim 0 times the receptive field") {
  auto f = init::calculate_fans(Shape{3, 4});
  CHECK(f.fan_in == 4);
  CHECK(f.fan_out == 3);
  // conv2d weight [out = 8, in / groups = 2, kH = 3, kW = 5]
  f = init::calculate_fans(Shape{8, 2, 3, 5});
  CHECK(f.fan_in == 30);
  CHECK(f.fan_out == 120);
  CHECK_THROWS_AS(init::calculate_fans(Shape{5}), kiln::ShapeError);
  CHECK_THROWS_WITH(init::calculate_fans(Shape{5}), doctest::Contains("at least 2 dimensions"));
  kiln::Rng rng(1);
  CHECK_THROWS_AS(init::kaiming_uniform_(kiln::zeros<float>({5}), rng), kiln::ShapeError);
  CHECK_THROWS_AS(init::xavier_normal_(kiln::zeros<float>({}), rng), kiln::ShapeError);
}

TEST_CASE("uniform_, normal_, constant_, zeros_, ones_") {
  kiln::Rng rng(1);
  auto t = kiln::empty<float>({1000, 400});
  init::uniform_(t, rng, -0.5, 0.5);
  check_uniform(t, 0.5);
  init::uniform_(t, rng, 2.0, 3.0);
  const Stats s = stats(t);
  CHECK(s.min >= 2.0);
  CHECK(s.max < 3.0);
  CHECK(s.mean == doctest::Approx(2.5).epsilon(1e-3));
  init::normal_(t, rng, 1.5, 0.25);
  check_normal(t, 0.25, 1.5);
  init::constant_(t, 0.75);
  CHECK(stats(t).min == 0.75);
  CHECK(stats(t).max == 0.75);
  init::zeros_(t);
  CHECK(stats(t).max == 0.0);
  init::ones_(t);
  CHECK(stats(t).min == 1.0);
  CHECK_THROWS_AS(init::uniform_(t, rng, 1.0, 0.0), kiln::ValueError);
  CHECK_THROWS_AS(init::normal_(t, rng, 0.0, -1.0), kiln::ValueError);
  // the same seed gives the same numbers as kiln::rand
  kiln::Rng a(5), b(5);
  auto u = kiln::empty<float>({17, 3});
  init::uniform_(u, a, -2.0, 2.0);
  CHECK(u.to_vector() == kiln::rand<float>({17, 3}, b, -2.0f, 2.0f).to_vector());
}

TEST_CASE("xavier: std = gain·√(2 / (fan_in + fan_out))") {
  kiln::Rng rng(2);
  auto w = kiln::empty<float>({600, 400});
  init::xavier_uniform_(w, rng);
  check_uniform(w, std::sqrt(6.0 / 1000.0));
  init::xavier_uniform_(w, rng, 2.0);
  check_uniform(w, 2.0 * std::sqrt(6.0 / 1000.0));
  init::xavier_normal_(w, rng);
  check_normal(w, std::sqrt(2.0 / 1000.0));
  // a conv weight [64, 32, 3, 3]: fan_in = 288, fan_out = 576
  auto c = kiln::empty<float>({64, 32, 3, 3});
  init::xavier_normal_(c, rng, 0.5);
  check_normal(c, 0.5 * std::sqrt(2.0 / (288.0 + 576.0)));
}

TEST_CASE("kaiming: std = gain / √fan, uniform bound √3·std") {
  kiln::Rng rng(3);
  using NL = init::Nonlinearity;
  using init::FanMode;
  auto w = kiln::empty<float>({500, 800});
  // defaults: a = 0, fan_in, leaky_relu -> gain √2, bound = √(6 / fan_in)
  init::kaiming_uniform_(w, rng);
  check_uniform(w, std::sqrt(6.0 / 800.0));
  // Linear's a = √5: bound = 1/√fan_in
  init::kaiming_uniform_(w, rng, std::sqrt(5.0));
  check_uniform(w, 1.0 / std::sqrt(800.0));
  init::kaiming_uniform_(w, rng, 0.0, FanMode::fan_out, NL::relu);
  check_uniform(w, std::sqrt(6.0 / 500.0));
  init::kaiming_normal_(w, rng);
  check_normal(w, std::sqrt(2.0 / 800.0));
  init::kaiming_normal_(w, rng, 0.0, FanMode::fan_out, NL::tanh);
  check_normal(w, (5.0 / 3.0) / std::sqrt(500.0));
  // grouped conv weight [out = 256, in / groups = 64 / 4 = 16, 3, 3]: fan_in = 16·9 = 144
  auto c = kiln::empty<float>({256, 16, 3, 3});
  init::kaiming_normal_(c, rng, 0.2, FanMode::fan_in, NL::leaky_relu);
  check_normal(c, std::sqrt(2.0 / 1.04) / std::sqrt(144.0));
  init::kaiming_uniform_(c, rng, 0.0, FanMode::fan_out, NL::relu);  // fan_out = 256·9
  check_uniform(c, std::sqrt(6.0 / 2304.0));
}

TEST_CASE("initialisers write strided views and tracked parameters without recording") {
  kiln::Rng rng(4);
  auto base = kiln::zeros<float>({400, 500});
  auto view = base.t();  // [500, 400], not contiguous
  init::kaiming_uniform_(view, rng);
  // every element of the base was written, with the statistics of fan_in = 400
  check_uniform(base, std::sqrt(6.0 / 400.0));
  auto half = kiln::zeros<float>({100, 200});
  init::normal_(half.slice(1, 0, 200, 2), rng);  // every other column
  const auto hv = half.to_vector();
  for (std::size_t i = 0; i < hv.size(); ++i)
    if (i % 2 == 1) CHECK(hv[i] == 0.0f);
  CHECK(hv[0] != 0.0f);
  // a parameter that requires grad stays a leaf with no gradient
  auto p = kiln::empty<float>({30, 20}).requires_grad();
  init::xavier_uniform_(p, rng);
  init::zeros_(p);
  CHECK(p.is_leaf());
  CHECK_FALSE(p.grad().defined());
  CHECK(stats(p).max == 0.0);
  {
    auto q = kiln::zeros<float>({20, 30}).requires_grad().t();  // a tracked view
    init::uniform_(q, rng, -1.0, 1.0);
    CHECK(stats(q).max > 0.9);
  }
}

TEST_CASE("nn::Linear's default initialisation: U(±1/√in) for weight and bias") {
  kiln::Rng rng(5);
  kiln::nn::Linear fc(400, 1000, true, rng);
  check_uniform(fc.weight().detach(), 1.0 / 20.0);
  const Stats b = stats(fc.bias().detach());
  CHECK(b.min >= -0.05);
  CHECK(b.max < 0.05);
  CHECK(b.std == doctest::Approx(0.05 / std::sqrt(3.0)).epsilon(0.06));
  // weight first, then bias, from the generator in that order
  kiln::Rng again(5);
  auto w = kiln::rand<float>({1000, 400}, again, -0.05f, 0.05f);
  auto bias = kiln::rand<float>({1000}, again, -0.05f, 0.05f);
  CHECK(fc.weight().to_vector() == w.to_vector());
  CHECK(fc.bias().to_vector() == bias.to_vector());
  kiln::nn::Linear nobias(3, 2, false, rng);
  CHECK_FALSE(nobias.bias().defined());
  CHECK(nobias.named_parameters().size() == 1);
}
