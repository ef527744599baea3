// Tests of include/kiln/models/diffusion.hpp: the schedules against their formulas, forward
// noising, the losses and both samplers with "oracle" networks whose optimal predictions are known
// in closed form — data at a single point x* (every sampler must return x* exactly) and Gaussian
// data N(μ, s²) (samples must have that mean and variance) — classifier-free guidance, the time
// embedding by hand, and the W6 UNet against PyTorch (tests/torch/unet_reference.py): parameter
// count (306,593), prediction, ε loss and every parameter gradient, in float64 and float32.
#include <doctest/doctest.h>

#include <kiln/autograd/fused.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/models/diffusion.hpp>
#include <kiln/optim/adam.hpp>

#include "../support/torch_reference.hpp"

#include <cmath>
#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <numbers>
#include <vector>

namespace {

using kiln::index_t;
using D = kiln::Tensor<double>;
using I = kiln::Tensor<index_t>;
using kiln::models::NoiseSchedule;

double abar(const NoiseSchedule& s, const I& t, index_t i) { return s.alpha_bars[static_cast<std::size_t>(t.contiguous().data()[i])]; }

// Data concentrated at x*: E[ε | x_t] = (x_t − √ᾱ x*)/√(1 − ᾱ); for v-prediction
// v = √ᾱ ε − √(1 − ᾱ) x*.
struct DiracOracle : kiln::nn::BasicModule<double> {
  DiracOracle(NoiseSchedule s, D point, bool v) : schedule(std::move(s)), x_star(std::move(point)), predict_v(v) {}
  D forward(const D& x, const I& t) const {
    const index_t b = x.size(0), n = x.numel() / b;
    D out = D::uninitialized(x.shape());
    const D xc = x.contiguous();
    for (index_t i = 0; i < b; ++i) {
      const double ab = abar(schedule, t, i);
      for (index_t j = 0; j < n; ++j) {
        const double eps = (xc.data()[i * n + j] - std::sqrt(ab) * x_star.data()[j]) / std::sqrt(1 - ab);
        out.data()[i * n + j] = predict_v ? std::sqrt(ab) * eps - std::sqrt(1 - ab) * x_star.data()[j] : eps;
      }
    }
    return out;
  }
  NoiseSchedule schedule;
  D x_star;
  bool predict_v;
};

// Data N(mu, s²) in every coordinate: x_t ~ N(√ᾱ mu, ᾱ s² + 1 − ᾱ) and
// E[ε | x_t] = √(1 − ᾱ)(x_t − √ᾱ mu)/(ᾱ s² + 1 − ᾱ).
struct GaussianOracle : kiln::nn::BasicModule<double> {
  GaussianOracle(NoiseSchedule s, double m, double sd) : schedule(std::move(s)), mu(m), sigma(sd) {}
  D forward(const D& x, const I& t) const {
    const index_t b = x.size(0), n = x.numel() / b;
    D out = D::uninitialized(x.shape());
    const D xc = x.contiguous();
    for (index_t i = 0; i < b; ++i) {
      const double ab = abar(schedule, t, i);
      for (index_t j = 0; j < n; ++j)
        out.data()[i * n + j] = std::sqrt(1 - ab) * (xc.data()[i * n + j] - std::sqrt(ab) * mu) / (ab * sigma * sigma + 1 - ab);
    }
    return out;
  }
  NoiseSchedule schedule;
  double mu, sigma;
};

// A conditional network whose prediction is the label's value everywhere.
struct LabelNet : kiln::nn::BasicModule<double> {
  D forward(const D& x, const I&, const I& labels) const {
    D out = D::uninitialized(x.shape());
    const index_t b = x.size(0), n = x.numel() / b;
    for (index_t i = 0; i < b; ++i)
      for (index_t j = 0; j < n; ++j) out.data()[i * n + j] = static_cast<double>(labels.contiguous().data()[i]);
    return out;
  }
};

void mean_var(const D& x, double& mean, double& var) {
  const auto v = x.to_vector();
  mean = 0;
  for (double e : v) mean += e / static_cast<double>(v.size());
  var = 0;
  for (double e : v) var += (e - mean) * (e - mean) / static_cast<double>(v.size() - 1);
}

}  // namespace

TEST_CASE("linear and cosine schedules follow their formulas") {
  const auto lin = NoiseSchedule::linear(1000);
  CHECK(lin.betas[0] == doctest::Approx(1e-4).epsilon(1e-14));
  CHECK(lin.betas[999] == doctest::Approx(0.02).epsilon(1e-14));
  CHECK(lin.betas[1] == doctest::Approx(1e-4 + 0.0199 / 999).epsilon(1e-12));
  CHECK(lin.alpha_bars[2] == doctest::Approx((1 - lin.betas[0]) * (1 - lin.betas[1]) * (1 - lin.betas[2])).epsilon(1e-14));
  const auto cos = NoiseSchedule::cosine(100);
  auto f = [](double t) {
    const double c = std::cos((t / 100 + 0.008) / 1.008 * std::numbers::pi / 2);
    return c * c;
  };
  for (int t : {0, 10, 50, 90}) CHECK(cos.alpha_bars[t] == doctest::Approx(f(t + 1) / f(0)).epsilon(1e-10));
  CHECK(cos.betas[99] == doctest::Approx(0.999));  // f(T) = cos²(π/2) = 0: clipped
  CHECK_THROWS_AS(NoiseSchedule::from_betas({0.1, 1.0}), kiln::ValueError);
}

TEST_CASE("q_sample, and a zero loss for the exact predictor (epsilon and v)") {
  const auto s = NoiseSchedule::linear(50, 1e-3, 0.2);
  const D x_star = kiln::from_vector<double>({0.5, -1.0, 0.25}, {3});
  kiln::Rng rng(3);
  const D x0 = x_star.reshape({1, 3}).expand({4, 3}).contiguous();
  const I t = kiln::from_vector<index_t>({0, 7, 30, 49}, {4});
  const D noise = kiln::randn<double>({4, 3}, rng);
  for (auto pred : {kiln::models::Prediction::epsilon, kiln::models::Prediction::v}) {
    kiln::models::DiffusionOptions o;
    o.prediction = pred;
    kiln::models::Diffusion<DiracOracle, double> model(std::make_shared<DiracOracle>(s, x_star, pred == kiln::models::Prediction::v), s, o);
    const D xt = model.q_sample(x0, t, noise);
    for (index_t i = 0; i < 4; ++i)
      for (index_t j = 0; j < 3; ++j) {
        const double ab = s.alpha_bars[static_cast<std::size_t>(t.data()[i])];
        CHECK(xt.contiguous().data()[i * 3 + j] ==
              doctest::Approx(std::sqrt(ab) * x_star.data()[j] + std::sqrt(1 - ab) * noise.data()[i * 3 + j]).epsilon(1e-14));
      }
    CHECK(model.loss_at(x0, t, noise).item() < 1e-20);
    CHECK(model.loss(x0, rng).item() < 1e-20);
  }
}

TEST_CASE("DDPM and DDIM return x* exactly when the data is the point x*") {
  const auto s = NoiseSchedule::linear(60, 1e-3, 0.2);
  const D x_star = kiln::from_vector<double>({0.5, -1.0, 0.25, 2.0}, {1, 2, 2});
  for (bool v : {false, true}) {
    kiln::models::DiffusionOptions o;
    o.prediction = v ? kiln::models::Prediction::v : kiln::models::Prediction::epsilon;
    kiln::models::Diffusion<DiracOracle, double> model(std::make_shared<DiracOracle>(s, x_star.reshape({4}), v), s, o);
    kiln::Rng rng(5);
    auto expect_point = [&](const D& x) {
      REQUIRE(x.shape() == kiln::Shape{3, 1, 2, 2});
      const auto got = x.to_vector();
      for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(x_star.data()[i % 4]).epsilon(1e-9));
    };
    expect_point(model.ddpm_sample(3, {1, 2, 2}, rng));
    for (index_t steps : {1, 7, 60}) expect_point(model.ddim_sample(3, {1, 2, 2}, steps, rng));
    expect_point(model.ddim_sample(3, {1, 2, 2}, 10, rng, 1.0));
  }
}

// The exact mean and variance of a sampler's output for Gaussian data N(mu, s²) and the exact
// predictor: every step is affine in x_t. With d = x_t − √ᾱ_t mu and V_t = ᾱ_t s² + 1 − ᾱ_t,
// x̂_0 − mu = d √ᾱ_t s²/V_t and ε̂ = d √(1 − ᾱ_t)/V_t, so a step
// x_prev = a x̂_0 + b ε̂ + c x_t + σ z (a + c √ᾱ_t = √ᾱ_prev for all three updates) gives
// d_prev = g d with g = a √ᾱ_t s²/V_t + b √(1 − ᾱ_t)/V_t + c, and Var_prev = g² Var + σ².
struct Moments {
  double mean, var;
};
Moments chain(const NoiseSchedule& s, const std::vector<index_t>& ts, bool ddpm, double eta, double mu, double sd) {
  const double ab_last = s.alpha_bars[static_cast<std::size_t>(ts.back())];
  double d = -std::sqrt(ab_last) * mu, var = 1;  // x_T ~ N(0, 1)
  for (std::size_t k = ts.size(); k-- > 0;) {
    const double ab = s.alpha_bars[static_cast<std::size_t>(ts[k])];
    const double ab_prev = k > 0 ? s.alpha_bars[static_cast<std::size_t>(ts[k - 1])] : 1.0;
    const double V = ab * sd * sd + 1 - ab;
    double a, b, c, sigma;
    if (ddpm) {
      const double beta = s.betas[static_cast<std::size_t>(ts[k])];
      a = std::sqrt(ab_prev) * beta / (1 - ab);
      b = 0;
      c = std::sqrt(1 - beta) * (1 - ab_prev) / (1 - ab);
      sigma = k > 0 ? std::sqrt((1 - ab_prev) / (1 - ab) * beta) : 0.0;
    } else {
      sigma = eta * std::sqrt((1 - ab_prev) / (1 - ab)) * std::sqrt(1 - ab / ab_prev);
      a = std::sqrt(ab_prev);
      b = std::sqrt(1 - ab_prev - sigma * sigma);
      c = 0;
    }
    const double g = a * std::sqrt(ab) * sd * sd / V + b * std::sqrt(1 - ab) / V + c;
    d *= g;
    var = g * g * var + sigma * sigma;
  }
  return {mu + d, var};
}

TEST_CASE("with the exact predictor of Gaussian data, samples have the moments the chain predicts") {
  const auto s = NoiseSchedule::linear(200, 1e-4, 0.1);  // ᾱ at the end ≈ 4e-5
  const double mu = 1.5, sd = 0.5;
  kiln::models::Diffusion<GaussianOracle, double> model(std::make_shared<GaussianOracle>(s, mu, sd), s);
  kiln::Rng rng(11);
  const index_t n = 20000;
  std::vector<index_t> all(200);
  for (index_t t = 0; t < 200; ++t) all[static_cast<std::size_t>(t)] = t;
  auto check = [&](const D& x, Moments want) {
    double m = 0, v = 0;
    mean_var(x, m, v);
    CHECK(std::abs(m - want.mean) < 4 * std::sqrt(want.var / double(n)));
    CHECK(std::abs(v - want.var) < 4 * want.var * std::sqrt(2.0 / double(n - 1)));
    // and the chain lands near the data distribution itself
    CHECK(std::abs(want.mean - mu) < 0.01);
    CHECK(std::abs(want.var - sd * sd) < 0.25 * sd * sd);
  };
  check(model.ddpm_sample(n, {1}, rng), chain(s, all, true, 0, mu, sd));
  check(model.ddim_sample(n, {1}, 100, rng), chain(s, model.ddim_timesteps(100), false, 0, mu, sd));
  check(model.ddim_sample(n, {1}, 50, rng, 1.0), chain(s, model.ddim_timesteps(50), false, 1.0, mu, sd));
  // Deterministic DDIM maps N(0, 1) onto N(mu, s²) ever more closely as the steps grow.
  const double gap200 = std::abs(chain(s, model.ddim_timesteps(200), false, 0, mu, sd).var - sd * sd);
  const double gap20 = std::abs(chain(s, model.ddim_timesteps(20), false, 0, mu, sd).var - sd * sd);
  CHECK(gap200 < gap20);
}

TEST_CASE("classifier-free guidance mixes the conditional and unconditional predictions") {
  const auto s = NoiseSchedule::linear(10);
  kiln::models::DiffusionOptions o;
  o.num_classes = 3;  // label 3 is "no class"
  kiln::models::Diffusion<LabelNet, double> model(std::make_shared<LabelNet>(), s, o);
  const D x = kiln::zeros<double>({2, 1});
  const I t = kiln::from_vector<index_t>({4, 4}, {2});
  const I labels = kiln::from_vector<index_t>({1, 0}, {2});
  CHECK(model.epsilon(x, t, labels, 1.0).to_vector() == std::vector<double>{1.0, 0.0});
  // ε∅ = 3: 3 + 2(1 − 3) = −1 and 3 + 2(0 − 3) = −3
  CHECK(model.epsilon(x, t, labels, 2.0).to_vector() == std::vector<double>{-1.0, -3.0});
  CHECK(model.epsilon(x, t, labels, 0.0).to_vector() == std::vector<double>{3.0, 3.0});
  CHECK(model.epsilon(x, t, {}, 1.0).to_vector() == std::vector<double>{3.0, 3.0});
  // Training drops labels to the "no class" token at the given rate.
  kiln::models::DiffusionOptions always = o;
  always.label_dropout = 1.0;
  kiln::models::Diffusion<LabelNet, double> dropped(std::make_shared<LabelNet>(), s, always);
  kiln::Rng rng(1);
  CHECK_THROWS_AS(dropped.loss(x, rng), kiln::ValueError);  // labels required
}

TEST_CASE("timestep embedding by hand") {
  const auto e = kiln::models::timestep_embedding<double>(kiln::from_vector<index_t>({0, 5}, {2}), 4).to_vector();
  // dim 4: ω = (1, 10000^(-1/2) = 0.01); layout [sin ω0 t, sin ω1 t, cos ω0 t, cos ω1 t]
  const std::vector<double> want = {0, 0, 1, 1, std::sin(5.0), std::sin(0.05), std::cos(5.0), std::cos(0.05)};
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(e[i] == doctest::Approx(want[i]).epsilon(1e-12));
  CHECK_THROWS_AS(kiln::models::timestep_embedding<double>(kiln::from_vector<index_t>({0}, {1}), 3), kiln::ValueError);
}

TEST_CASE("the W6 UNet: PyTorch's parameter count, shapes, gradients, labels") {
  kiln::Rng rng(0);
  kiln::models::UNet<float> unet(rng);
  index_t count = 0;
  for (const auto& p : unet.parameters()) count += p.numel();
  CHECK(count == 306593);
  std::vector<std::string> names;
  for (const auto& [name, p] : unet.named_parameters()) names.push_back(name);
  CHECK(std::find(names.begin(), names.end(), "temb.2.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "rb4.skip.weight") != names.end());
  const auto x = kiln::randn<float>({2, 1, 28, 28}, rng);
  const I t = kiln::from_vector<index_t>({3, 999}, {2});
  kiln::Tensor<float> y = unet.forward(x, t);
  CHECK(y.shape() == kiln::Shape{2, 1, 28, 28});
  kiln::mean(kiln::square(y)).backward();
  for (const auto& p : unet.parameters()) CHECK(p.grad().defined());
  kiln::models::UNet<float> cond(rng, 1, 10);
  index_t cond_count = 0;
  for (const auto& p : cond.parameters()) cond_count += p.numel();
  CHECK(cond_count == 306593 + 11 * 128);
  CHECK(cond.forward(x, t, kiln::from_vector<index_t>({2, 10}, {2})).shape() == kiln::Shape{2, 1, 28, 28});
  CHECK_THROWS_AS(cond.forward(x, t), kiln::ValueError);
  CHECK_THROWS_AS(unet.forward(x, t, kiln::from_vector<index_t>({2, 10}, {2})), kiln::ValueError);
}

TEST_CASE_TEMPLATE("the W6 UNet's prediction, ε loss and every gradient equal PyTorch's", T, double, float) {
  constexpr bool is_double = std::is_same_v<T, double>;
  const std::filesystem::path dir = kiln::test::torch_script_output("unet_reference.py") / (is_double ? "float64" : "float32");
  kiln::Rng rng(1);
  auto unet = std::make_shared<kiln::models::UNet<T>>(rng);
  {
    const kiln::io::SafeTensorsFile weights((dir / "weights.safetensors").string());
    kiln::nn::StateDict<T> dict;
    for (const auto& n : weights.names()) dict.insert(n, weights.get<T>(n));
    unet->load_state_dict(dict);  // strict: every name on both sides
  }
  kiln::models::Diffusion<kiln::models::UNet<T>, T> model(unet, NoiseSchedule::linear(1000));
  const kiln::io::SafeTensorsFile ref((dir / "reference.safetensors").string());
  const kiln::Tensor<T> x0 = ref.get<T>("x0"), eps = ref.get<T>("eps");
  std::vector<index_t> steps;
  for (const double v : ref.get<double>("t").to_vector()) steps.push_back(static_cast<index_t>(v));
  const I t = kiln::from_vector<index_t>(steps, {static_cast<index_t>(steps.size())});

  // Bounds: float64 agrees to rounding; float32 to its accumulated rounding (PyTorch and kiln
  // sum in different orders).
  const double close = is_double ? 1e-10 : 2e-5, grad_close = is_double ? 1e-9 : 5e-5;
  CHECK(kiln::test::relative_difference(model.q_sample(x0, t, eps), ref.get<double>("xt")) < close);
  {
    kiln::NoGrad guard;
    CHECK(kiln::test::relative_difference(unet->forward(ref.get<T>("xt"), t), ref.get<double>("pred")) < close);
  }
  const kiln::Tensor<T> loss = model.loss_at(x0, t, eps);
  const double loss_ref = ref.get<double>("loss").to_vector()[0];
  CHECK(std::fabs(static_cast<double>(loss.item()) - loss_ref) < close * loss_ref);
  loss.backward();
  std::size_t checked = 0;
  double worst = 0;
  std::string worst_name;
  for (const auto& entry : unet->named_parameters()) {
    const std::string& name = entry.first;
    const kiln::Tensor<T>& p = entry.second;
    CAPTURE(name);
    REQUIRE(p.grad().defined());
    const double d = kiln::test::relative_difference(p.grad(), ref.get<double>("grad." + name));
    if (d > worst) worst = d, worst_name = name;
    CHECK(d < grad_close);
    ++checked;
  }
  MESSAGE((is_double ? "float64" : "float32") << ": loss " << loss.item() << " vs " << loss_ref << "; worst gradient "
                                               << worst_name << " relative difference " << worst);
  CHECK(checked == 56);
}

TEST_CASE("timesteps outside the schedule are named") {
  const auto s = NoiseSchedule::linear(10);
  kiln::models::Diffusion<DiracOracle, double> model(std::make_shared<DiracOracle>(s, kiln::zeros<double>({1}), false), s);
  CHECK_THROWS_WITH_AS(model.q_sample(kiln::zeros<double>({1, 1}), kiln::from_vector<index_t>({10}, {1}), kiln::zeros<double>({1, 1})),
                       doctest::Contains("timestep 10"), kiln::ValueError);
  CHECK_THROWS_AS(model.ddim_sample(1, {1}, 11, *std::make_unique<kiln::Rng>(1)), kiln::ValueError);
}

TEST_CASE("the forward-process posterior equals the product of the two Gaussians (Bayes)") {
  const auto s = NoiseSchedule::cosine(50);
  kiln::models::Diffusion<DiracOracle, double> model(std::make_shared<DiracOracle>(s, kiln::zeros<double>({1}), false), s);
  for (index_t t : {1, 5, 25, 49}) {
    // q(x_{t−1} | x_0) = N(√ᾱ' x_0, 1 − ᾱ'), q(x_t | x_{t−1}) = N(√α x_{t−1}, β): the posterior's
    // precision is 1/(1 − ᾱ') + α/β, its mean (√ᾱ' x_0/(1 − ᾱ') + √α x_t/β)/precision.
    const double ab_prev = s.alpha_bars[static_cast<std::size_t>(t - 1)], alpha = s.alphas[static_cast<std::size_t>(t)],
                 beta = s.betas[static_cast<std::size_t>(t)];
    const double precision = 1 / (1 - ab_prev) + alpha / beta;
    const auto q = model.posterior(t);
    CHECK(q.variance == doctest::Approx(1 / precision).epsilon(1e-12));
    CHECK(q.c0 == doctest::Approx(std::sqrt(ab_prev) / (1 - ab_prev) / precision).epsilon(1e-12));
    CHECK(q.ct == doctest::Approx(std::sqrt(alpha) / beta / precision).epsilon(1e-12));
  }
  const auto q0 = model.posterior(0);
  CHECK(q0.c0 == doctest::Approx(1.0));
  CHECK(q0.ct == doctest::Approx(0.0));
  CHECK(q0.variance == doctest::Approx(0.0));
}

TEST_CASE("DDIM with eta = 0 draws only x_T: the result is a function of the starting noise") {
  const auto s = NoiseSchedule::linear(40, 1e-3, 0.2);
  kiln::models::Diffusion<GaussianOracle, double> model(std::make_shared<GaussianOracle>(s, 0.3, 0.7), s);
  kiln::Rng a(9), b(9), c(9);
  const D first = model.ddim_sample(5, {2}, 10, a);
  const D second = model.ddim_sample(5, {2}, 10, b);
  CHECK(first.to_vector() == second.to_vector());
  (void)kiln::randn<double>({5, 2}, c);  // exactly the draw of x_T
  CHECK(a.state().offset == c.state().offset);
  kiln::Rng d(9);
  (void)model.ddim_sample(5, {2}, 10, d, 1.0);
  CHECK(d.state().offset > c.state().offset);  // η > 0 draws noise at every step
}

// A one-layer denoiser x ↦ w x + b (per timestep-agnostic), enough to learn part of the noise.
struct TinyNet : kiln::nn::BasicModule<float> {
  explicit TinyNet(kiln::Rng& rng) { lin = register_module("lin", std::make_shared<kiln::nn::BasicLinear<float>>(4, 4, rng)); }
  kiln::Tensor<float> forward(const kiln::Tensor<float>& x, const I&) const { return lin->forward(x); }
  std::shared_ptr<kiln::nn::BasicLinear<float>> lin;
};

TEST_CASE("training on tiny data makes the loss fall") {
  kiln::Rng rng(4);
  const auto s = NoiseSchedule::linear(100);
  kiln::models::Diffusion<TinyNet> model(std::make_shared<TinyNet>(rng), s);
  const auto data = kiln::from_vector<float>({0.5f, -0.5f, 1.0f, 0.0f, 0.5f, -0.5f, 1.0f, 0.0f}, {2, 4});
  kiln::optim::Adam opt(model.parameters(), {.lr = 1e-2});
  auto average_loss = [&](kiln::Rng& r) {
    kiln::NoGrad guard;
    double sum = 0;
    for (int i = 0; i < 200; ++i) sum += model.loss(data, r).item();
    return sum / 200;
  };
  kiln::Rng eval1(77), eval2(77);
  const double before = average_loss(eval1);
  for (int step = 0; step < 300; ++step) {
    opt.zero_grad();
    auto loss = model.loss(data, rng);
    loss.backward();
    opt.step();
  }
  const double after = average_loss(eval2);
  CHECK(after < 0.6 * before);
}
