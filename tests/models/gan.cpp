// Tests of include/kiln/models/gan.hpp: the three losses against hand computations for a linear
// discriminator D(x) = w·x + b; the gradient penalty and R1 of a linear D in closed form (values
// and gradients in w, hand-derived); the penalties' gradients for a tanh discriminator against
// central finite differences; n_critic; the EMA sample against hand-computed averages; labels
// reaching conditional networks; and the errors.
#include <doctest/doctest.h>

#include <kiln/autograd/fused.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/models/gan.hpp>
#include <kiln/nn/activation.hpp>
#include <kiln/nn/embedding.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/sequential.hpp>
#include <kiln/optim/sgd.hpp>

#include <cmath>
#include <memory>
#include <vector>

namespace {

using kiln::index_t;
using D = kiln::Tensor<double>;
using Labels = kiln::Tensor<index_t>;
using LinearD = kiln::nn::BasicLinear<double>;
using SequentialD = kiln::nn::BasicSequential<double>;
using LinearGAN = kiln::models::GAN<LinearD, LinearD, double>;
using TanhGAN = kiln::models::GAN<LinearD, SequentialD, double>;
using kiln::models::GANLoss;
using kiln::models::GANOptions;

template <class Layer>
void set_linear(Layer& l, const std::vector<double>& w, double b) {
  kiln::NoGrad guard;
  REQUIRE(static_cast<std::size_t>(l.weight().numel()) == w.size());
  for (std::size_t i = 0; i < w.size(); ++i)
    l.weight().data()[i] = static_cast<typename Layer::tensor_type::value_type>(w[i]);
  for (index_t i = 0; i < l.bias().numel(); ++i)
    l.bias().data()[i] = static_cast<typename Layer::tensor_type::value_type>(b);
}

const std::vector<double> w_disc = {0.5, -1.0, 2.0};
const double b_disc = 0.3;
const std::vector<double> real_values = {1.0, 0.0, 0.5, -1.0, 2.0, 0.0};
const std::vector<double> fake_values = {0.2, 0.1, -0.3, 1.0, 1.0, 1.0};

// A GAN with generator Linear(2, 3) and discriminator D(x) = w_disc·x + b_disc.
LinearGAN make_linear_gan(GANOptions options) {
  kiln::Rng rng(11);
  auto g = std::make_shared<LinearD>(2, 3, rng);
  auto d = std::make_shared<LinearD>(3, 1, rng);
  set_linear(*d, w_disc, b_disc);
  return LinearGAN(g, d, 2, options);
}

double linear_d(const std::vector<double>& x, int n) {
  double v = b_disc;
  for (int j = 0; j < 3; ++j) v += w_disc[j] * x[3 * n + j];
  return v;
}
double softplus(double v) { return std::log1p(std::exp(v)); }
double relu(double v) { return v > 0 ? v : 0; }
double norm_w() {
  return std::sqrt(w_disc[0] * w_disc[0] + w_disc[1] * w_disc[1] + w_disc[2] * w_disc[2]);
}

// D(x) = fc(x) + offset[label]; G(z) = fc(z) + offset[label]; both remember the labels they saw.
template <class T>
struct ConditionalLinear : kiln::nn::BasicModule<T> {
  std::shared_ptr<kiln::nn::BasicLinear<T>> fc;
  std::shared_ptr<kiln::nn::BasicEmbedding<T>> offset;
  std::vector<index_t> seen;
  ConditionalLinear(index_t in, index_t out, index_t classes, kiln::Rng& rng) {
    fc = this->register_module("fc", std::make_shared<kiln::nn::BasicLinear<T>>(in, out, rng));
    offset = this->register_module(
        "offset", std::make_shared<kiln::nn::BasicEmbedding<T>>(classes, out, rng));
  }
  kiln::Tensor<T> forward(const kiln::Tensor<T>& x, const Labels& labels) {
    seen = labels.to_vector();
    return kiln::Tensor<T>(fc->forward(x) + offset->forward(labels));
  }
};

}  // namespace

TEST_CASE("losses of a linear discriminator against a hand computation") {
  const D real = kiln::from_vector<double>(real_values, {2, 3});
  const D fake = kiln::from_vector<double>(fake_values, {2, 3});
  const double r0 = linear_d(real_values, 0), r1 = linear_d(real_values, 1);
  const double f0 = linear_d(fake_values, 0), f1 = linear_d(fake_values, 1);
  struct Expected {
    GANLoss loss;
    double d, g;
  };
  const std::vector<Expected> cases = {
      {GANLoss::non_saturating,
       (softplus(-r0) + softplus(-r1)) / 2 + (softplus(f0) + softplus(f1)) / 2,
       (softplus(-f0) + softplus(-f1)) / 2},
      {GANLoss::hinge, (relu(1 - r0) + relu(1 - r1)) / 2 + (relu(1 + f0) + relu(1 + f1)) / 2,
       -(f0 + f1) / 2},
      {GANLoss::wasserstein, (f0 + f1) / 2 - (r0 + r1) / 2, -(f0 + f1) / 2},
  };
  for (const Expected& e : cases) {
    CAPTURE(static_cast<int>(e.loss));
    GANOptions o;
    o.loss = e.loss;
    LinearGAN gan = make_linear_gan(o);
    const auto r = gan.discriminator_loss(real, fake);
    CHECK(r.loss.item() == doctest::Approx(e.d).epsilon(1e-13));
    CHECK(r.d_real == doctest::Approx((r0 + r1) / 2).epsilon(1e-13));
    CHECK(r.d_fake == doctest::Approx((f0 + f1) / 2).epsilon(1e-13));
    CHECK(r.penalty == 0.0);
    CHECK(gan.generator_loss(fake).item() == doctest::Approx(e.g).epsilon(1e-13));
  }
  // The non-saturating D loss is BCE-with-logits against 1 (reals) and 0 (fakes): by hand,
  // −log σ(r) − log(1 − σ(f)).
  const auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  const double bce = -(std::log(sig(r0)) + std::log(sig(r1))) / 2 -
                     (std::log(1 - sig(f0)) + std::log(1 - sig(f1))) / 2;
  CHECK(make_linear_gan({}).discriminator_loss(real, fake).loss.item() ==
        doctest::Approx(bce).epsilon(1e-12));
}

TEST_CASE("the discriminator's loss does not reach the generator; the generator's does") {
  LinearGAN gan = make_linear_gan({});
  kiln::Rng rng(3);
  const D real = kiln::from_vector<double>(real_values, {2, 3});
  const D fake = gan.generate(gan.latent(2, rng));
  CHECK(fake.tracks_grad());
  gan.discriminator_loss(real, fake).loss.backward();
  CHECK_FALSE(gan.generator().weight().grad().defined());
  CHECK(gan.discriminator().weight().grad().defined());
  // G loss = mean softplus(−D(G(z))): dL/dG's bias = mean_b −σ(−d_b)·w.
  gan.generator_loss(fake).backward();
  const auto d = gan.discriminate(fake).to_vector();
  const auto gb = gan.generator().bias().grad().to_vector();
  for (int j = 0; j < 3; ++j) {
    double expected = 0;
    for (double v : d) expected += -w_disc[j] / (1 + std::exp(v)) / 2;
    CHECK(gb[j] == doctest::Approx(expected).epsilon(1e-12));
  }
}

TEST_CASE(
    "gradient penalty of a linear discriminator: lambda (|w| - 1)^2 at any mix, gradient 2 lambda "
    "(|w| - 1) w / |w|") {
  GANOptions o;
  o.gradient_penalty = 10;
  o.loss = GANLoss::wasserstein;
  LinearGAN gan = make_linear_gan(o);
  const D real = kiln::from_vector<double>(real_values, {2, 3});
  const D fake = kiln::from_vector<double>(fake_values, {2, 3});
  const double n = norm_w();
  for (std::uint64_t seed : {1u, 2u, 99u}) {
    kiln::Rng rng(seed);
    gan.zero_grad();
    const D p = gan.gradient_penalty(real, fake, rng);
    CHECK(p.item() == doctest::Approx(10 * (n - 1) * (n - 1)).epsilon(1e-11));
    p.backward();  // create_graph: the penalty is a function of w through ∇_x D = w
    const auto gw = gan.discriminator().weight().grad().to_vector();
    for (int j = 0; j < 3; ++j)
      CHECK(gw[j] == doctest::Approx(2 * 10 * (n - 1) * w_disc[j] / n).epsilon(1e-10));
    const D gb = gan.discriminator().bias().grad();
    if (gb.defined()) CHECK(gb.to_vector()[0] == 0.0);
  }
  // discriminator_loss adds it to the Wasserstein terms.
  kiln::Rng rng(5);
  const auto r = gan.discriminator_loss(real, fake, {}, rng);
  CHECK(r.penalty == doctest::Approx(10 * (n - 1) * (n - 1)).epsilon(1e-11));
  CHECK(r.loss.item() == doctest::Approx(r.d_fake - r.d_real + r.penalty).epsilon(1e-12));
}

TEST_CASE("R1 of a linear discriminator: gamma / 2 |w|^2, gradient gamma w") {
  GANOptions o;
  o.r1 = 3;
  LinearGAN gan = make_linear_gan(o);
  const D real = kiln::from_vector<double>(real_values, {2, 3});
  const D fake = kiln::from_vector<double>(fake_values, {2, 3});
  const double n = norm_w();
  const D p = gan.r1_penalty(real);
  CHECK(p.item() == doctest::Approx(1.5 * n * n).epsilon(1e-12));
  p.backward();
  const auto gw = gan.discriminator().weight().grad().to_vector();
  for (int j = 0; j < 3; ++j) CHECK(gw[j] == doctest::Approx(3 * w_disc[j]).epsilon(1e-12));
  // Inside discriminator_loss (sharing the real forward pass): loss = non-saturating terms + R1.
  gan.zero_grad();
  const auto r = gan.discriminator_loss(real, fake);
  CHECK(r.penalty == doctest::Approx(1.5 * n * n).epsilon(1e-12));
  const double r0 = linear_d(real_values, 0), r1 = linear_d(real_values, 1);
  const double f0 = linear_d(fake_values, 0), f1 = linear_d(fake_values, 1);
  const double adversarial =
      (softplus(-r0) + softplus(-r1)) / 2 + (softplus(f0) + softplus(f1)) / 2;
  CHECK(r.loss.item() == doctest::Approx(adversarial + 1.5 * n * n).epsilon(1e-12));
  // d loss / d w_j = mean_b [−σ(−r_b) x_b,j + σ(f_b) x'_b,j] + γ w_j
  r.loss.backward();
  const auto g = gan.discriminator().weight().grad().to_vector();
  const auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  for (int j = 0; j < 3; ++j) {
    const double expected = (-sig(-r0) * real_values[j] - sig(-r1) * real_values[3 + j] +
                             sig(f0) * fake_values[j] + sig(f1) * fake_values[3 + j]) /
                                2 +
                            3 * w_disc[j];
    CHECK(g[j] == doctest::Approx(expected).epsilon(1e-12));
  }
}

TEST_CASE(
    "penalties of a tanh discriminator: gradients in its weights against central finite "
    "differences") {
  kiln::Rng init(21);
  auto g = std::make_shared<LinearD>(2, 3, init);
  auto d = std::make_shared<SequentialD>(std::make_shared<LinearD>(3, 4, init),
                                         std::make_shared<kiln::nn::BasicTanh<double>>(),
                                         std::make_shared<LinearD>(4, 1, init));
  GANOptions o;
  o.gradient_penalty = 2.5;
  o.r1 = 0.7;
  TanhGAN gan(g, d, 2, o);
  const D real = kiln::from_vector<double>(real_values, {2, 3});
  const D fake = kiln::from_vector<double>(fake_values, {2, 3});
  // penalty(θ) with the same ε every time (a fresh Rng of the same seed).
  const auto penalty = [&] {
    kiln::Rng rng(8);
    return D(gan.gradient_penalty(real, fake, rng) + gan.r1_penalty(real));
  };
  gan.zero_grad();
  const D p = penalty();
  CHECK(p.item() > 0);
  p.backward();
  const double h = 1e-6;
  for (const auto& named : gan.discriminator().named_parameters()) {
    const kiln::Tensor<double>& param = named.second;
    CAPTURE(named.first);
    // The last bias does not change ∇_x D: its gradient may be left undefined (zero).
    const std::vector<double> analytic =
        param.grad().defined() ? param.grad().to_vector()
                               : std::vector<double>(static_cast<std::size_t>(param.numel()), 0.0);
    for (index_t i = 0; i < param.numel(); ++i) {
      double* v = param.detach().data() + i;
      const double keep = *v;
      *v = keep + h;
      const double up = penalty().item();
      *v = keep - h;
      const double down = penalty().item();
      *v = keep;
      CHECK(analytic[i] == doctest::Approx((up - down) / (2 * h)).epsilon(1e-6));
    }
  }
}

TEST_CASE(
    "train_step: critic_steps discriminator updates per generator update, as the documented loop") {
  using GAN = kiln::models::GAN<kiln::nn::Linear, kiln::nn::Linear>;
  const auto make = [](GANOptions o) {
    kiln::Rng rng(4);
    return std::make_shared<GAN>(std::make_shared<kiln::nn::Linear>(2, 3, rng),
                                 std::make_shared<kiln::nn::Linear>(3, 1, rng), 2, o);
  };
  GANOptions o;
  o.critic_steps = 3;
  o.loss = GANLoss::wasserstein;
  o.gradient_penalty = 1;
  auto a = make(o), b = make(o);
  kiln::optim::SGDOptions so;
  so.lr = 0.05;
  kiln::optim::SGD ga(a->generator().parameters(), so), da(a->discriminator().parameters(), so);
  kiln::optim::SGD gb(b->generator().parameters(), so), db(b->discriminator().parameters(), so);
  const kiln::Tensor<float> real =
      kiln::from_vector<float>({1, 0, 0.5f, -1, 2, 0, 0.3f, 0.3f, 0.3f}, {3, 3});
  kiln::Rng ra(77), rb(77);
  for (int step = 0; step < 2; ++step) {
    const auto r = a->train_step(real, {}, ra, ga, da);
    CHECK(std::isfinite(r.d_loss));
    CHECK(std::isfinite(r.g_loss));
    CHECK(r.penalty > 0);
    // The same round written out by hand.
    kiln::Tensor<float> fake;
    for (int s = 0; s < 3; ++s) {
      if (s < 2) {
        kiln::NoGrad guard;
        fake = b->generate(b->latent(3, rb));
      } else {
        fake = b->generate(b->latent(3, rb));
      }
      db.zero_grad();
      b->discriminator_loss(real, fake, {}, rb).loss.backward();
      db.step();
    }
    gb.zero_grad();
    b->generator_loss(fake).backward();
    gb.step();
  }
  CHECK(da.step_count() == 6);
  CHECK(ga.step_count() == 2);
  const auto pa = a->parameters(), pb = b->parameters();
  REQUIRE(pa.size() == pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    CHECK(pa[i].tracks_grad());  // the discriminator is unfrozen after the generator's step
    const auto va = pa[i].to_vector(), vb = pb[i].to_vector();
    for (std::size_t j = 0; j < va.size(); ++j)
      CHECK(va[j] == doctest::Approx(vb[j]).epsilon(1e-6));
  }
}

TEST_CASE(
    "EMA: sample() uses the hand-computed average of the generator's weights, and restores them") {
  using GAN = kiln::models::GAN<kiln::nn::Linear, kiln::nn::Linear>;
  kiln::Rng init(6);
  auto g = std::make_shared<kiln::nn::Linear>(2, 3, init);
  auto d = std::make_shared<kiln::nn::Linear>(3, 1, init);
  GANOptions o;
  o.ema_decay = 0.75;
  GAN gan(g, d, 2, o);
  REQUIRE(gan.ema() != nullptr);
  CHECK(gan.state_dict().contains("generator_ema.weight"));
  CHECK(gan.state_dict().contains("generator_ema.bias"));
  std::vector<float> avg_w = g->weight().to_vector(), avg_b = g->bias().to_vector();
  kiln::optim::SGDOptions so;
  so.lr = 0.5;
  kiln::optim::SGD go(g->parameters(), so), dopt(d->parameters(), so);
  const kiln::Tensor<float> real = kiln::from_vector<float>({1, 0, 0.5f, -1, 2, 0}, {2, 3});
  kiln::Rng rng(1);
  for (int step = 0; step < 3; ++step) {
    gan.train_step(real, {}, rng, go, dopt);
    const auto w = g->weight().to_vector(), b = g->bias().to_vector();
    for (std::size_t i = 0; i < w.size(); ++i) avg_w[i] = 0.75f * avg_w[i] + 0.25f * w[i];
    for (std::size_t i = 0; i < b.size(); ++i) avg_b[i] = 0.75f * avg_b[i] + 0.25f * b[i];
  }
  const std::vector<float> live_w = g->weight().to_vector();
  CHECK(live_w != avg_w);  // the weights moved, so the average differs from them
  const std::vector<float> zs = {0.4f, -1.2f, 2.0f, 0.5f};
  const auto x = gan.sample_from(kiln::from_vector<float>(zs, {2, 2})).to_vector();
  for (int n = 0; n < 2; ++n)
    for (int j = 0; j < 3; ++j) {
      const double expected =
          avg_b[j] + avg_w[j * 2] * zs[n * 2] + avg_w[j * 2 + 1] * zs[n * 2 + 1];
      CHECK(x[n * 3 + j] == doctest::Approx(expected).epsilon(1e-5));
    }
  CHECK(g->weight().to_vector() == live_w);  // swapped back
  const auto shadow = gan.state_dict().at("generator_ema.weight").to_vector();
  for (std::size_t i = 0; i < shadow.size(); ++i)
    CHECK(shadow[i] == doctest::Approx(avg_w[i]).epsilon(1e-6));
  // sample(n, rng) draws z ~ N(0, I) from the rng: the same as sample_from of those draws.
  kiln::Rng r1(9), r2(9);
  CHECK(gan.sample(4, r1).to_vector() ==
        gan.sample_from(kiln::randn<float>({4, 2}, r2)).to_vector());
}

TEST_CASE("EMA warm-up: the n-th update uses min(decay, (1 + n) / (10 + n))") {
  using GAN = kiln::models::GAN<kiln::nn::Linear, kiln::nn::Linear>;
  kiln::Rng init(6);
  auto g = std::make_shared<kiln::nn::Linear>(2, 3, init);
  auto d = std::make_shared<kiln::nn::Linear>(3, 1, init);
  GANOptions o;
  o.ema_decay = 0.999;
  o.ema_warmup = true;
  GAN gan(g, d, 2, o);
  std::vector<float> avg = g->bias().to_vector();
  kiln::optim::SGDOptions so;
  so.lr = 0.5;
  kiln::optim::SGD go(g->parameters(), so), dopt(d->parameters(), so);
  const kiln::Tensor<float> real = kiln::from_vector<float>({1, 0, 0.5f, -1, 2, 0}, {2, 3});
  kiln::Rng rng(1);
  for (int n = 1; n <= 2; ++n) {
    gan.train_step(real, {}, rng, go, dopt);
    const double decay = (1.0 + n) / (10.0 + n);
    const auto b = g->bias().to_vector();
    for (std::size_t i = 0; i < b.size(); ++i)
      avg[i] = static_cast<float>(decay * avg[i] + (1 - decay) * b[i]);
  }
  const auto shadow = gan.state_dict().at("generator_ema.bias").to_vector();
  for (std::size_t i = 0; i < shadow.size(); ++i)
    CHECK(shadow[i] == doctest::Approx(avg[i]).epsilon(1e-5));
  CHECK(gan.state_dict().at("generator_ema.num_updates").item() == 2.0f);

  // A copy loaded from the state dict continues with the count of 2: the third update's decay is
  // 4 / 13 in both.
  kiln::Rng init2(60);
  auto g2 = std::make_shared<kiln::nn::Linear>(2, 3, init2);
  GAN copy(g2, std::make_shared<kiln::nn::Linear>(3, 1, init2), 2, o);
  copy.load_state_dict(gan.state_dict());
  gan.update_ema();
  copy.update_ema();
  CHECK(copy.ema()->num_updates() == 3);
  CHECK(copy.ema()->current_decay() == doctest::Approx(4.0 / 13.0));
  CHECK(copy.state_dict().at("generator_ema.bias").to_vector() ==
        gan.state_dict().at("generator_ema.bias").to_vector());
  // Reloading the EMA object itself re-points the buffers at its new tensors.
  kiln::optim::StateDict reset = gan.ema()->state_dict();
  for (auto& [name, t] : reset.tensors) t = kiln::Tensor<float>(t.shape());  // zeros
  reset.counters["num_updates"] = 7;
  copy.ema()->load_state_dict(reset);
  const kiln::Tensor<float> z = kiln::from_vector<float>({1, 2}, {1, 2});
  CHECK(copy.sample_from(z).to_vector() == std::vector<float>{0, 0, 0});
  CHECK(copy.state_dict().at("generator_ema.num_updates").item() == 7.0f);
}

TEST_CASE("conditional networks receive the labels") {
  using CondD = ConditionalLinear<double>;
  using GAN = kiln::models::GAN<CondD, CondD, double>;
  kiln::Rng init(2);
  auto g = std::make_shared<CondD>(2, 3, 4, init);
  auto d = std::make_shared<CondD>(3, 1, 4, init);
  set_linear(*d->fc, w_disc, b_disc);
  {
    kiln::NoGrad guard;
    for (int k = 0; k < 4; ++k) d->offset->weight().data()[k] = 0.25 * k - 0.5;
  }
  GANOptions o;
  o.loss = GANLoss::wasserstein;
  GAN gan(g, d, 2, o);
  const D real = kiln::from_vector<double>(real_values, {2, 3});
  const D fake = kiln::from_vector<double>(fake_values, {2, 3});
  const Labels labels = kiln::from_vector<index_t>({3, 1}, {2});
  const auto r = gan.discriminator_loss(real, fake, labels);
  CHECK(d->seen == std::vector<index_t>{3, 1});
  const double c0 = 0.25 * 3 - 0.5, c1 = 0.25 * 1 - 0.5;
  const double r0 = linear_d(real_values, 0) + c0, r1 = linear_d(real_values, 1) + c1;
  const double f0 = linear_d(fake_values, 0) + c0, f1 = linear_d(fake_values, 1) + c1;
  CHECK(r.loss.item() == doctest::Approx((f0 + f1) / 2 - (r0 + r1) / 2).epsilon(1e-13));
  CHECK(gan.generator_loss(fake, labels).item() == doctest::Approx(-(f0 + f1) / 2).epsilon(1e-13));
  kiln::Rng rng(1);
  const Labels three = kiln::from_vector<index_t>({0, 2, 2}, {3});
  const D x = gan.sample(3, rng, three);
  CHECK(g->seen == std::vector<index_t>{0, 2, 2});
  CHECK(x.shape() == kiln::Shape{3, 3});
  // The labels' gradients are not needed, but the penalties work with labels too.
  GANOptions penalised = o;
  penalised.r1 = 1;
  GAN with_r1(g, d, 2, penalised);
  d->seen.clear();
  CHECK(with_r1.r1_penalty(real, labels).item() ==
        doctest::Approx(0.5 * norm_w() * norm_w()).epsilon(1e-12));
  CHECK(d->seen == std::vector<index_t>{3, 1});
}

TEST_CASE("errors name the problem") {
  const D real = kiln::from_vector<double>(real_values, {2, 3});
  const D fake = kiln::from_vector<double>(fake_values, {2, 3});
  const Labels labels = kiln::from_vector<index_t>({0, 1}, {2});
  LinearGAN gan = make_linear_gan({});
  // Labels for unconditional networks.
  CHECK_THROWS_WITH_AS(gan.discriminator_loss(real, fake, labels),
                       doctest::Contains("discriminator is unconditional"), kiln::ValueError);
  kiln::Rng rng(1);
  CHECK_THROWS_WITH_AS(gan.sample(2, rng, labels), doctest::Contains("generator is unconditional"),
                       kiln::ValueError);
  // No labels for conditional ones; labels of the wrong size.
  {
    using CondD = ConditionalLinear<double>;
    kiln::Rng init(2);
    kiln::models::GAN<CondD, CondD, double> cond(std::make_shared<CondD>(2, 3, 4, init),
                                                 std::make_shared<CondD>(3, 1, 4, init), 2);
    CHECK_THROWS_WITH_AS(cond.generator_loss(fake), doctest::Contains("pass the labels"),
                         kiln::ValueError);
    CHECK_THROWS_WITH_AS(
        cond.discriminator_loss(real, fake, kiln::from_vector<index_t>({0, 1, 2}, {3})),
        doctest::Contains("one per example"), kiln::ShapeError);
  }
  // A discriminator giving more than one value per example.
  {
    kiln::Rng init(3);
    LinearGAN wide(std::make_shared<LinearD>(2, 3, init), std::make_shared<LinearD>(3, 2, init), 2);
    CHECK_THROWS_WITH_AS(wide.generator_loss(fake), doctest::Contains("one value per example"),
                         kiln::ShapeError);
  }
  // The gradient penalty without an Rng.
  {
    GANOptions o;
    o.gradient_penalty = 10;
    LinearGAN gp = make_linear_gan(o);
    CHECK_THROWS_WITH_AS(gp.discriminator_loss(real, fake), doctest::Contains("pass an Rng"),
                         kiln::ValueError);
    kiln::Rng r(1);
    CHECK_THROWS_WITH_AS(gp.gradient_penalty(real, kiln::from_vector<double>({1, 2, 3}, {1, 3}), r),
                         doctest::Contains("same shape"), kiln::ShapeError);
  }
  // Invalid options, and an EMA for double networks.
  const auto with = [](auto set) {
    GANOptions o;
    set(o);
    return o;
  };
  CHECK_THROWS_WITH_AS(make_linear_gan(with([](GANOptions& o) { o.critic_steps = 0; })),
                       doctest::Contains("critic_steps"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(make_linear_gan(with([](GANOptions& o) { o.gradient_penalty = -1; })),
                       doctest::Contains("gradient_penalty"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(make_linear_gan(with([](GANOptions& o) { o.r1 = -1; })),
                       doctest::Contains("r1"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(make_linear_gan(with([](GANOptions& o) { o.ema_decay = 1; })),
                       doctest::Contains("ema_decay"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(make_linear_gan(with([](GANOptions& o) { o.ema_decay = 0.9; })),
                       doctest::Contains("T = float"), kiln::ValueError);
  kiln::Rng init(1);
  CHECK_THROWS_WITH_AS(
      LinearGAN(std::make_shared<LinearD>(2, 3, init), std::make_shared<LinearD>(3, 1, init), 0),
      doctest::Contains("latent dimension"), kiln::ValueError);
}
