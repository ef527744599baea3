// Tests of include/kiln/models/vae.hpp: the reparameterization gradients by hand, the ELBO terms
// against hand-computed values, the KL warm-up schedule, and — on a linear-Gaussian model whose
// encoder is the exact posterior — the importance-weighted estimate and the negative ELBO against
// the closed-form log p(x) = log N(x; b, WWᵀ + σ²I).
#include <doctest/doctest.h>

#include <kiln/autograd/fused.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/models/vae.hpp>
#include <kiln/nn/activation.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/sequential.hpp>
#include <kiln/optim/adam.hpp>

#include <cmath>
#include <memory>
#include <numbers>
#include <vector>

namespace {

using kiln::index_t;
using D = kiln::Tensor<double>;
using LinearD = kiln::nn::BasicLinear<double>;
using VAE = kiln::models::VAE<LinearD, LinearD, double>;

void set_linear(LinearD& l, const std::vector<double>& w, const std::vector<double>& b) {
  kiln::NoGrad guard;
  REQUIRE(static_cast<std::size_t>(l.weight().numel()) == w.size());
  REQUIRE(static_cast<std::size_t>(l.bias().numel()) == b.size());
  for (std::size_t i = 0; i < w.size(); ++i) l.weight().data()[i] = w[i];
  for (std::size_t i = 0; i < b.size(); ++i) l.bias().data()[i] = b[i];
}

// The linear-Gaussian model x = W z + b + σ n, z ~ N(0, 1) (latent 1, data 2), whose posterior is
// N(m(x), s²) with s² = 1 / (1 + |W|²/σ²) and m(x) = s² Wᵀ(x − b) / σ²; the encoder gives exactly
// that (a linear map of x), so every importance weight equals p(x).
struct LinearGaussian {
  double w0 = 0.8, w1 = -1.3, b0 = 0.2, b1 = -0.5, sigma = 0.7;
  double s2() const { return 1.0 / (1.0 + (w0 * w0 + w1 * w1) / (sigma * sigma)); }
  // log N(x; b, WWᵀ + σ²I) by hand: the 2×2 covariance, its determinant and inverse.
  double log_px(double x0, double x1) const {
    const double c00 = w0 * w0 + sigma * sigma, c11 = w1 * w1 + sigma * sigma, c01 = w0 * w1;
    const double det = c00 * c11 - c01 * c01;
    const double d0 = x0 - b0, d1 = x1 - b1;
    const double quad = (c11 * d0 * d0 - 2 * c01 * d0 * d1 + c00 * d1 * d1) / det;
    return -0.5 * (quad + std::log(det) + 2 * std::log(2 * std::numbers::pi));
  }
  VAE make() const {
    kiln::Rng rng(1);
    auto enc = std::make_shared<LinearD>(2, 2, rng);
    auto dec = std::make_shared<LinearD>(1, 2, rng);
    const double a0 = s2() * w0 / (sigma * sigma), a1 = s2() * w1 / (sigma * sigma);
    // μ = a·(x − b) = a·x − a·b;  log σ² = log s² for every x.
    set_linear(*enc, {a0, a1, 0.0, 0.0}, {-(a0 * b0 + a1 * b1), std::log(s2())});
    set_linear(*dec, {w0, w1}, {b0, b1});
    kiln::models::VAEOptions o;
    o.likelihood = kiln::models::Likelihood::gaussian;
    o.gaussian_sigma = sigma;
    return VAE(enc, dec, 1, o);
  }
};

}  // namespace

TEST_CASE("reparameterization: z = mu + exp(logvar / 2) * eps, with the gradients of that formula") {
  kiln::Rng rng(3);
  auto enc = std::make_shared<LinearD>(2, 2, rng);
  auto dec = std::make_shared<LinearD>(1, 2, rng);
  VAE vae(enc, dec, 1);
  auto mu = kiln::from_vector<double>({0.5, -1.0, 2.0}, {3, 1}).requires_grad();
  auto logvar = kiln::from_vector<double>({0.0, 1.0, -2.0}, {3, 1}).requires_grad();
  kiln::Rng noise(42), same(42);
  D z = vae.reparameterize(mu, logvar, noise);
  const auto eps = kiln::randn<double>({3, 1}, same).to_vector();
  const auto zv = z.to_vector();
  const std::vector<double> mv = {0.5, -1.0, 2.0}, lv = {0.0, 1.0, -2.0};
  for (int i = 0; i < 3; ++i) CHECK(zv[i] == doctest::Approx(mv[i] + std::exp(lv[i] / 2) * eps[i]).epsilon(1e-14));
  kiln::sum(z).backward();
  const auto gm = mu.grad().to_vector(), gl = logvar.grad().to_vector();
  for (int i = 0; i < 3; ++i) {
    CHECK(gm[i] == doctest::Approx(1.0));
    CHECK(gl[i] == doctest::Approx(0.5 * std::exp(lv[i] / 2) * eps[i]).epsilon(1e-12));
  }
}

TEST_CASE("ELBO terms of a Bernoulli VAE against a hand computation") {
  kiln::Rng rng(5);
  auto enc = std::make_shared<LinearD>(2, 2, rng);
  auto dec = std::make_shared<LinearD>(1, 2, rng);
  set_linear(*enc, {0.3, -0.2, 0.1, 0.4}, {0.05, -0.3});
  set_linear(*dec, {1.5, -0.7}, {0.1, 0.2});
  kiln::models::VAEOptions o;
  o.beta = 2.0;
  VAE vae(enc, dec, 1, o);
  const std::vector<double> xs = {0.0, 1.0, 0.25, 0.5};
  const D x = kiln::from_vector<double>(xs, {2, 2});
  kiln::Rng noise(9), same(9);
  auto r = vae.elbo(x, noise);
  const auto eps = kiln::randn<double>({2, 1}, same).to_vector();
  double rec = 0, kl = 0;
  for (int n = 0; n < 2; ++n) {
    const double x0 = xs[2 * n], x1 = xs[2 * n + 1];
    const double mu = 0.3 * x0 - 0.2 * x1 + 0.05, lv = 0.1 * x0 + 0.4 * x1 - 0.3;
    const double z = mu + std::exp(lv / 2) * eps[n];
    const double l0 = 1.5 * z + 0.1, l1 = -0.7 * z + 0.2;
    // −log Bernoulli(x; sigmoid(l)) = log(1 + e^l) − x·l
    rec += std::log1p(std::exp(l0)) - x0 * l0 + std::log1p(std::exp(l1)) - x1 * l1;
    kl += -0.5 * (1 + lv - mu * mu - std::exp(lv));
  }
  rec /= 2;
  kl /= 2;
  CHECK(r.reconstruction.item() == doctest::Approx(rec).epsilon(1e-12));
  CHECK(r.kl.item() == doctest::Approx(kl).epsilon(1e-12));
  CHECK(r.kl_weight == 2.0);
  CHECK(r.loss.item() == doctest::Approx(rec + 2 * kl).epsilon(1e-12));
  // The loss is differentiable down to the encoder's parameters.
  r.loss.backward();
  CHECK(enc->weight().grad().defined());
  CHECK(dec->bias().grad().defined());
}

TEST_CASE("KL warm-up: the weight grows linearly to beta") {
  kiln::Rng rng(1);
  kiln::models::VAEOptions o;
  o.beta = 0.5;
  o.kl_warmup_steps = 4;
  VAE vae(std::make_shared<LinearD>(2, 2, rng), std::make_shared<LinearD>(1, 2, rng), 1, o);
  CHECK(vae.kl_weight(0) == doctest::Approx(0.125));
  CHECK(vae.kl_weight(1) == doctest::Approx(0.25));
  CHECK(vae.kl_weight(3) == doctest::Approx(0.5));
  CHECK(vae.kl_weight(100) == doctest::Approx(0.5));
  CHECK(vae.kl_weight(-1) == doctest::Approx(0.5));
}

TEST_CASE("exact posterior: the importance-weighted estimate equals the closed-form log p(x)") {
  const LinearGaussian lg;
  VAE vae = lg.make();
  const std::vector<double> xs = {0.3, -0.4, 1.5, 0.7, -2.0, 1.1};
  const D x = kiln::from_vector<double>(xs, {3, 2});
  kiln::Rng rng(17);
  for (int k : {1, 7}) {
    const auto got = vae.importance_weighted_log_likelihood(x, k, rng).to_vector();
    for (int n = 0; n < 3; ++n) CHECK(got[n] == doctest::Approx(lg.log_px(xs[2 * n], xs[2 * n + 1])).epsilon(1e-10));
  }
  // The negative ELBO with the analytic KL is −log p(x) in expectation over z.
  const auto nelbo = vae.negative_elbo(x, rng, 20000).to_vector();
  for (int n = 0; n < 3; ++n) CHECK(nelbo[n] == doctest::Approx(-lg.log_px(xs[2 * n], xs[2 * n + 1])).epsilon(5e-3));
}

TEST_CASE("a shifted encoder: E[log w] = log p(x) - KL(q || posterior), and IWAE tightens with k") {
  LinearGaussian lg;
  VAE vae = lg.make();
  const double shift = 0.4;
  {
    kiln::NoGrad guard;
    vae.encoder().bias().data()[0] += shift;  // q = N(m + shift, s²) against the posterior N(m, s²)
  }
  const D x = kiln::from_vector<double>({0.3, -0.4}, {1, 2});
  const double truth = lg.log_px(0.3, -0.4);
  const double kl = shift * shift / (2 * lg.s2());  // KL of two Gaussians with one variance
  kiln::Rng rng(23);
  double mean1 = 0, mean64 = 0;
  const int reps1 = 4000, reps64 = 100;
  for (int rep = 0; rep < reps1; ++rep) mean1 += vae.importance_weighted_log_likelihood(x, 1, rng).item() / reps1;
  for (int rep = 0; rep < reps64; ++rep) mean64 += vae.importance_weighted_log_likelihood(x, 64, rng).item() / reps64;
  // log w = truth − shift·(2ε s + shift)/(2 s²): mean truth − kl, standard deviation shift/s.
  CHECK(std::abs(mean1 - (truth - kl)) < 4 * shift / std::sqrt(lg.s2() * reps1));
  CHECK(mean1 < mean64);
  CHECK(mean64 < truth + 1e-3);
  CHECK(truth - mean64 < 0.03);
}

TEST_CASE("sample, reconstruct and interpolate give the likelihood's mean, with the decoder's shape") {
  kiln::Rng rng(2);
  auto enc = std::make_shared<LinearD>(2, 2, rng);
  auto dec = std::make_shared<LinearD>(1, 2, rng);
  set_linear(*enc, {1.0, 0.0, 0.0, 0.0}, {0.0, 0.0});  // μ = x0
  set_linear(*dec, {1.0, -1.0}, {0.0, 0.0});           // logits (z, −z)
  VAE vae(enc, dec, 1);
  const D x = kiln::from_vector<double>({2.0, 9.0}, {1, 2});
  const auto rec = vae.reconstruct(x).to_vector();
  CHECK(rec[0] == doctest::Approx(1 / (1 + std::exp(-2.0))));
  CHECK(rec[1] == doctest::Approx(1 / (1 + std::exp(2.0))));
  const D a = kiln::from_vector<double>({-1.0, 0.0}, {1, 2});
  const auto line = vae.interpolate(a, x, 4).to_vector();  // z = -1, 0, 1, 2
  REQUIRE(line.size() == 8);
  for (int s = 0; s < 4; ++s) CHECK(line[2 * s] == doctest::Approx(1 / (1 + std::exp(-(s - 1.0)))));
  kiln::Rng s1(4), s2(4);
  const auto samples = vae.sample(5, s1).to_vector();
  const auto z = kiln::randn<double>({5, 1}, s2).to_vector();
  for (int i = 0; i < 5; ++i) CHECK(samples[2 * i] == doctest::Approx(1 / (1 + std::exp(-z[i]))));
}

TEST_CASE("bad shapes and options are named") {
  kiln::Rng rng(1);
  CHECK_THROWS_WITH_AS(VAE(std::make_shared<LinearD>(2, 2, rng), std::make_shared<LinearD>(1, 2, rng), 0),
                       doctest::Contains("latent dimension"), kiln::ValueError);
  VAE wrong(std::make_shared<LinearD>(2, 3, rng), std::make_shared<LinearD>(1, 2, rng), 1);
  CHECK_THROWS_WITH_AS(wrong.encode(kiln::zeros<double>({4, 2})), doctest::Contains("[B, 2]"), kiln::ShapeError);
  VAE vae(std::make_shared<LinearD>(2, 2, rng), std::make_shared<LinearD>(1, 3, rng), 1);
  CHECK_THROWS_WITH_AS(vae.elbo(kiln::zeros<double>({4, 2}), rng), doctest::Contains("number of elements"),
                       kiln::ShapeError);
}

TEST_CASE("training on tiny data makes the negative ELBO fall") {
  using Net = kiln::nn::Sequential;
  kiln::Rng rng(8);
  auto enc = std::make_shared<Net>(std::make_shared<kiln::nn::Linear>(6, 16, rng), std::make_shared<kiln::nn::ReLU>(),
                                   std::make_shared<kiln::nn::Linear>(16, 4, rng));
  auto dec = std::make_shared<Net>(std::make_shared<kiln::nn::Linear>(2, 16, rng), std::make_shared<kiln::nn::ReLU>(),
                                   std::make_shared<kiln::nn::Linear>(16, 6, rng));
  kiln::models::VAE<Net, Net> vae(enc, dec, 2);
  // Four binary patterns, twice each.
  const auto x = kiln::from_vector<float>({1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1,
                                           1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1},
                                          {8, 6});
  kiln::optim::Adam opt(vae.parameters(), {.lr = 1e-2});
  auto score = [&] {
    kiln::Rng r(99);
    double sum = 0;
    for (float v : vae.negative_elbo(x, r, 50).to_vector()) sum += v;
    return sum / 8;
  };
  const double before = score();
  for (int step = 0; step < 400; ++step) {
    opt.zero_grad();
    auto r = vae.elbo(x, rng, step);
    r.loss.backward();
    opt.step();
  }
  const double after = score();
  CHECK(after < 0.6 * before);
  CHECK(after < 3.0);  // coin flips for every pixel: 6 ln 2 = 4.16 nats; the four patterns alone: ln 4 = 1.39
}
