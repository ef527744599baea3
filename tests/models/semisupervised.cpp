// Tests of include/kiln/models/semisupervised.hpp: the K+1 discriminator's quantities and losses
// (D(x) = Z/(Z+1), supervised cross-entropy over the K real classes, −log D(real), −log(1 − D(fake)))
// against direct computations in double from Z = Σ exp(l_k) and the explicit (K+1)-way softmax, for
// moderate and extreme logits; their gradients against the hand-derived closed forms; feature
// matching's value and gradient; SemiSupervisedGAN::train_step against the same round written out
// by hand; predict(); and the errors.
#include <doctest/doctest.h>

#include <kiln/autograd/fused.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/models/semisupervised.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/optim/sgd.hpp>

#include <cmath>
#include <memory>
#include <vector>

namespace {

using kiln::index_t;
using D = kiln::Tensor<double>;
using Labels = kiln::Tensor<index_t>;
namespace models = kiln::models;

// Three examples with K = 3: moderate logits, large ones (D → 1) and very negative ones (D → 0).
const std::vector<double> logit_values = {0.5, -1.0, 2.0, 40.0, 39.0, 41.0, -50.0, -60.0, -55.0};
const std::vector<index_t> label_values = {2, 0, 1};
constexpr int batch = 3, classes = 3;

double z_of(int b) {
  double z = 0;
  for (int k = 0; k < classes; ++k) z += std::exp(logit_values[b * classes + k]);
  return z;
}
// p(fake | x) from the explicit softmax over the K + 1 logits (l_1..l_K, 0).
double p_fake_explicit(int b) {
  double m = 0;  // the fake logit
  for (int k = 0; k < classes; ++k) m = std::max(m, logit_values[b * classes + k]);
  double s = std::exp(-m);
  for (int k = 0; k < classes; ++k) s += std::exp(logit_values[b * classes + k] - m);
  return std::exp(-m) / s;
}

D logits_tensor() { return kiln::from_vector<double>(logit_values, {batch, classes}); }

TEST_CASE("D(x) = Z/(Z+1) and its logit LSE(l), against the explicit K+1 softmax") {
  const D lse = models::real_logit(logits_tensor());
  const D d = models::real_probability(logits_tensor());
  REQUIRE(lse.shape() == kiln::Shape{batch});
  REQUIRE(d.shape() == kiln::Shape{batch});
  for (int b = 0; b < batch; ++b) {
    CHECK(lse.data()[b] == doctest::Approx(std::log(z_of(b))).epsilon(1e-12));
    const double direct = z_of(b) / (z_of(b) + 1);
    CHECK(d.data()[b] == doctest::Approx(direct).epsilon(1e-12));
    CHECK(1 - d.data()[b] == doctest::Approx(p_fake_explicit(b)).epsilon(1e-9));
  }
  CHECK(d.data()[0] == doctest::Approx(0.9038984).epsilon(1e-6));  // Z = 9.405657 by hand
}

TEST_CASE("supervised loss: cross-entropy over the K real classes = −log p(y | x, real)") {
  double want = 0;
  for (int b = 0; b < batch; ++b)
    want -= std::log(std::exp(logit_values[b * classes + label_values[b]]) / z_of(b));
  want /= batch;
  D l = logits_tensor();
  l.requires_grad();
  const D loss = models::supervised_loss(l, kiln::from_vector<index_t>(label_values, {batch}));
  CHECK(loss.item() == doctest::Approx(want).epsilon(1e-12));
  // ∂/∂l_k = (softmax_k − [k = y]) / B.
  loss.backward();
  for (int b = 0; b < batch; ++b)
    for (int k = 0; k < classes; ++k) {
      const double p = std::exp(logit_values[b * classes + k]) / z_of(b);
      CHECK(l.grad().data()[b * classes + k] ==
            doctest::Approx((p - (k == label_values[b])) / batch).epsilon(1e-10));
    }
}

TEST_CASE("unsupervised losses: −log D(real) = softplus(−LSE), −log(1 − D(fake)) = softplus(LSE)") {
  double real = 0, fake = 0;
  for (int b = 0; b < batch; ++b) {
    const double z = z_of(b);
    real -= std::log(z / (z + 1));       // −log D
    fake -= std::log(p_fake_explicit(b));  // −log(1 − D) = −log p(fake | x)
  }
  real /= batch;
  fake /= batch;
  // By hand for row 0 (Z = 9.405657): −log(0.903898) = 0.101038, log(10.405657) = 2.342350; the
  // large row adds ≈ 0 and 41.407606, the negative one 49.993240 and ≈ 0.
  CHECK(real == doctest::Approx((0.1010383 + 0 + 49.9932396) / 3).epsilon(1e-6));
  CHECK(fake == doctest::Approx((2.3423496 + 41.4076060 + 0) / 3).epsilon(1e-6));
  CHECK(models::unsupervised_real_loss(logits_tensor()).item() ==
        doctest::Approx(real).epsilon(1e-12));
  CHECK(models::unsupervised_fake_loss(logits_tensor()).item() ==
        doctest::Approx(fake).epsilon(1e-12));
  // The generator's non-saturating loss −log D(G(z)) is the real half on fake logits.
  CHECK(models::generator_adversarial_loss(logits_tensor()).item() ==
        doctest::Approx(real).epsilon(1e-12));

  // Both halves together, with batches of different sizes (real: rows 0-1, fake: row 2).
  const D l = logits_tensor();
  const D r = l.slice(0, 0, 2).contiguous(), f = l.slice(0, 2, 3).contiguous();
  const double both = (-std::log(z_of(0) / (z_of(0) + 1)) - std::log(z_of(1) / (z_of(1) + 1))) / 2 +
                      std::log(1 + z_of(2));
  CHECK(models::unsupervised_loss(r, f).item() == doctest::Approx(both).epsilon(1e-12));
}

TEST_CASE("unsupervised losses: gradients −(1 − D)·softmax / B and D·softmax / B") {
  for (int which = 0; which < 2; ++which) {
    D l = logits_tensor();
    l.requires_grad();
    const D loss =
        which == 0 ? models::unsupervised_real_loss(l) : models::unsupervised_fake_loss(l);
    loss.backward();
    for (int b = 0; b < batch; ++b) {
      const double z = z_of(b), d = z / (z + 1);
      for (int k = 0; k < classes; ++k) {
        const double p = std::exp(logit_values[b * classes + k]) / z;
        const double want = which == 0 ? -(1 - d) * p / batch : d * p / batch;
        CHECK(l.grad().data()[b * classes + k] == doctest::Approx(want).epsilon(1e-9));
      }
    }
  }
}

TEST_CASE("feature matching: ‖mean f(real) − mean f(fake)‖² and its gradient −2d/B_f") {
  // Real [3, 2, 2] and fake [2, 2, 2] features: F = 4 per example.
  const std::vector<double> rv = {1, 2, 3, 4, 0, -1, 2, 1, 2, 2, 1, 0};
  const std::vector<double> fv = {0.5, 0, 1, 3, -0.5, 1, 2, 2};
  D real = kiln::from_vector<double>(rv, {3, 2, 2});
  D fake = kiln::from_vector<double>(fv, {2, 2, 2});
  real.requires_grad();
  fake.requires_grad();
  // m = (1, 1, 2, 5/3), n = (0, 0.5, 1.5, 2.5), d = (1, 0.5, 0.5, −5/6).
  const std::vector<double> d = {1.0, 0.5, 0.5, -5.0 / 6.0};
  const double want = 1 + 0.25 + 0.25 + 25.0 / 36.0;
  const D loss = models::feature_matching_loss(real, fake);
  CHECK(loss.item() == doctest::Approx(want).epsilon(1e-12));
  loss.backward();
  for (int b = 0; b < 2; ++b)
    for (int j = 0; j < 4; ++j)
      CHECK(fake.grad().data()[b * 4 + j] == doctest::Approx(-2 * d[j] / 2).epsilon(1e-12));
  CHECK(!real.grad().defined());  // the real features are a constant target

  D fake2 = kiln::from_vector<double>(fv, {2, 2, 2});
  fake2.requires_grad();
  const D mean_loss = models::feature_matching_loss(real, fake2, kiln::LossReduction::mean);
  CHECK(mean_loss.item() == doctest::Approx(want / 4).epsilon(1e-12));
  mean_loss.backward();
  CHECK(fake2.grad().data()[3] == doctest::Approx(-2 * d[3] / (4 * 2)).epsilon(1e-12));
}

// features(x) = tanh(body(x)), classify(h) = head(h).
template <class T>
struct TinyClassifier : kiln::nn::BasicModule<T> {
  std::shared_ptr<kiln::nn::BasicLinear<T>> body, head;
  TinyClassifier(index_t in, index_t hidden, index_t k, kiln::Rng& rng) {
    body = this->register_module("body", std::make_shared<kiln::nn::BasicLinear<T>>(in, hidden, rng));
    head = this->register_module("head", std::make_shared<kiln::nn::BasicLinear<T>>(hidden, k, rng));
  }
  kiln::Tensor<T> features(const kiln::Tensor<T>& x) { return kiln::Tensor<T>(kiln::tanh(body->forward(x))); }
  kiln::Tensor<T> classify(const kiln::Tensor<T>& h) { return head->forward(h); }
};

using FloatGAN = models::SemiSupervisedGAN<kiln::nn::Linear, TinyClassifier<float>>;

std::shared_ptr<FloatGAN> make_gan(models::SemiSupervisedGANOptions o) {
  kiln::Rng rng(5);
  auto g = std::make_shared<kiln::nn::Linear>(2, 3, rng);
  auto c = std::make_shared<TinyClassifier<float>>(3, 4, 3, rng);
  return std::make_shared<FloatGAN>(g, c, 2, o);
}

TEST_CASE("train_step: one discriminator step on the K+1 losses, then feature matching for G") {
  for (int variant = 0; variant < 2; ++variant) {
    models::SemiSupervisedGANOptions o;
    o.supervised_weight = 0.7;
    o.unsupervised_weight = 1.3;
    if (variant == 1) o.generator_loss = models::SemiSupervisedGeneratorLoss::non_saturating;
    auto a = make_gan(o), b = make_gan(o);
    kiln::optim::SGDOptions so;
    so.lr = 0.1;
    kiln::optim::SGD ga(a->generator().parameters(), so), da(a->discriminator().parameters(), so);
    kiln::optim::SGD gb(b->generator().parameters(), so), db(b->discriminator().parameters(), so);
    const kiln::Tensor<float> labelled =
        kiln::from_vector<float>({1, 0, 0.5f, -1, 2, 0}, {2, 3});
    const Labels labels = kiln::from_vector<index_t>({2, 1}, {2});
    const kiln::Tensor<float> unlabelled =
        kiln::from_vector<float>({0.3f, 0.3f, 0.3f, 1, 1, -1, 0, 2, 0, -2, 0, 1}, {4, 3});
    kiln::Rng ra(9), rb(9);
    for (int step = 0; step < 2; ++step) {
      const auto r = a->train_step(labelled, labels, unlabelled, ra, ga, da);
      // The same round by hand.
      const kiln::Tensor<float> fake = b->generate(b->latent(4, rb));
      db.zero_grad();
      const kiln::Tensor<float> l_unl = b->logits(unlabelled), l_fake = b->logits(fake.detach());
      const kiln::Tensor<float> sup = models::supervised_loss(b->logits(labelled), labels);
      const kiln::Tensor<float> unsup = models::unsupervised_loss(l_unl, l_fake);
      kiln::Tensor<float>(sup * 0.7f + unsup * 1.3f).backward();
      db.step();
      CHECK(r.supervised == doctest::Approx(sup.item()).epsilon(1e-6));
      CHECK(r.unsupervised == doctest::Approx(unsup.item()).epsilon(1e-6));
      CHECK(r.d_loss == doctest::Approx(0.7 * sup.item() + 1.3 * unsup.item()).epsilon(1e-6));
      CHECK(r.d_real == doctest::Approx(kiln::mean(models::real_probability(l_unl)).item()).epsilon(1e-6));
      CHECK(r.d_fake == doctest::Approx(kiln::mean(models::real_probability(l_fake)).item()).epsilon(1e-6));
      gb.zero_grad();
      kiln::Tensor<float> g_loss;
      if (variant == 0) {
        kiln::Tensor<float> target;  // with the updated discriminator
        {
          kiln::NoGrad guard;
          target = b->features(unlabelled);
        }
        g_loss = models::feature_matching_loss(target, b->features(fake));
      } else {
        g_loss = models::generator_adversarial_loss(b->logits(fake));
      }
      g_loss.backward();
      gb.step();
      CHECK(r.g_loss == doctest::Approx(g_loss.item()).epsilon(1e-6));
      CHECK(r.labelled_accuracy >= 0.0);
      CHECK(r.labelled_accuracy <= 1.0);
    }
    CHECK(da.step_count() == 2);
    CHECK(ga.step_count() == 2);
    const auto pa = a->parameters(), pb = b->parameters();
    REQUIRE(pa.size() == pb.size());
    for (std::size_t i = 0; i < pa.size(); ++i) {
      CHECK(pa[i].tracks_grad());  // the discriminator is unfrozen after the generator's step
      const auto va = pa[i].to_vector(), vb = pb[i].to_vector();
      for (std::size_t j = 0; j < va.size(); ++j)
        CHECK(va[j] == doctest::Approx(vb[j]).epsilon(1e-6));
    }
    // Training moved the classifier (a step of the discriminator was taken).
    auto fresh = make_gan(o);
    const auto p0 = fresh->discriminator().parameters()[0].to_vector();
    const auto p1 = a->discriminator().parameters()[0].to_vector();
    double moved = 0;
    for (std::size_t j = 0; j < p0.size(); ++j) moved += std::abs(p0[j] - p1[j]);
    CHECK(moved > 1e-4);
  }
}

TEST_CASE("predict: the argmax of the K logits (the fake class is never predicted)") {
  auto gan = make_gan({});
  kiln::Rng rng(3);
  const kiln::Tensor<float> x = kiln::randn<float>({5, 3}, rng);
  const Labels guess = gan->predict(x);
  const kiln::Tensor<float> l = gan->logits(x);
  REQUIRE(guess.shape() == kiln::Shape{5});
  for (index_t b = 0; b < 5; ++b) {
    index_t best = 0;
    for (index_t k = 1; k < 3; ++k)
      if (l.data()[b * 3 + k] > l.data()[b * 3 + best]) best = k;
    CHECK(guess.data()[b] == best);
  }
}

TEST_CASE("errors name the problem") {
  const D flat = kiln::from_vector<double>({1, 2, 3}, {3});
  CHECK_THROWS_AS(models::unsupervised_real_loss(flat), kiln::ShapeError);
  CHECK_THROWS_AS(models::real_logit(flat), kiln::ShapeError);
  CHECK_THROWS_AS(models::supervised_loss(logits_tensor(), kiln::from_vector<index_t>({0, 1}, {2})),
                  kiln::ShapeError);
  CHECK_THROWS_AS(models::supervised_loss(logits_tensor(), Labels()), kiln::ShapeError);
  CHECK_THROWS_AS(models::unsupervised_loss(logits_tensor(), kiln::from_vector<double>({1, 2}, {1, 2})),
                  kiln::ShapeError);
  CHECK_THROWS_AS(models::feature_matching_loss(kiln::from_vector<double>({1, 2, 3, 4}, {2, 2}),
                                                kiln::from_vector<double>({1, 2, 3}, {1, 3})),
                  kiln::ShapeError);
  CHECK_THROWS_AS(models::feature_matching_loss(logits_tensor(), logits_tensor(), kiln::LossReduction::none),
                  kiln::ValueError);
  kiln::Rng rng(1);
  auto g = std::make_shared<kiln::nn::Linear>(2, 3, rng);
  auto c = std::make_shared<TinyClassifier<float>>(3, 4, 3, rng);
  CHECK_THROWS_AS(FloatGAN(g, c, 0), kiln::ValueError);
  models::SemiSupervisedGANOptions bad;
  bad.unsupervised_weight = -1;
  CHECK_THROWS_AS(FloatGAN(g, c, 2, bad), kiln::ValueError);
  try {
    models::unsupervised_real_loss(flat);
  } catch (const kiln::ShapeError& e) {
    CHECK(std::string(e.what()).find("[B, K]") != std::string::npos);
  }
  // A classifier whose head gives one value per example without a class axis.
  struct FlatHead : kiln::nn::Module {
    kiln::Tensor<float> features(const kiln::Tensor<float>& x) { return x; }
    kiln::Tensor<float> classify(const kiln::Tensor<float>& h) { return kiln::sum(h, 1); }
  };
  kiln::models::SemiSupervisedGAN<kiln::nn::Linear, FlatHead> flat_gan(g, std::make_shared<FlatHead>(), 2);
  CHECK_THROWS_AS(flat_gan.logits(kiln::randn<float>({2, 3}, rng)), kiln::ShapeError);
}

}  // namespace
