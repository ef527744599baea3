// kiln/models/semisupervised.hpp — semi-supervised learning with a GAN whose discriminator is a
// K-class classifier with an implicit (K+1)-th "fake" class (Salimans et al. 2016, "Improved
// Techniques for Training GANs", §5): the supervised and unsupervised discriminator losses, feature
// matching for the generator (§3.1), and a template over the user's generator and classifier with
// one training step. Builds on nn/module.hpp (the networks are children), ops/loss.hpp
// (cross_entropy), ops/reduce.hpp (logsumexp, mean) and optim/optimizer.hpp.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/loss.hpp>
#include <kiln/ops/reduce.hpp>
#include <kiln/optim/optimizer.hpp>

#include <concepts>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kiln::models {

// The K+1 discriminator. The classifier gives logits l_1..l_K for the K real classes; the logit of
// the fake class K+1 is fixed at 0 (Salimans et al. §5: subtracting a function f(x) from every
// logit leaves the softmax unchanged, so l_{K+1} = 0 loses nothing). With Z(x) = Σ_k exp(l_k):
//   p(y = k | x)      = exp(l_k) / (Z + 1),       p(fake | x) = 1 / (Z + 1),
//   D(x) = p(real | x) = Z / (Z + 1) = σ(log Z) = σ(LSE(l)),    LSE(l) = log Σ_k exp(l_k),
//   p(y = k | x, real) = exp(l_k) / Z = softmax_k(l).
// Every loss below is a mean over the batch; logits are [B, K].

namespace detail {

inline void require_logits(const char* who, const Shape& logits) {
  if (logits.ndim != 2 || logits[0] < 1 || logits[1] < 1)
    throw_shape_error(who, "the logits must be a non-empty batch [B, K] of K >= 1 class logits",
                      logits);
}

}  // namespace detail

// LSE(l) per example, [B]: log Z(x), the logit of D(x) = σ(LSE(l)).
template <class T, class D>
Tensor<T, D> real_logit(const Tensor<T, D>& logits) {
  detail::require_logits("models::real_logit", logits.shape());
  return logsumexp(logits, 1);
}

// D(x) = Z / (Z + 1) per example, [B], without recording (for monitoring).
template <class T, class D>
Tensor<T, D> real_probability(const Tensor<T, D>& logits) {
  NoGrad guard;
  return Tensor<T, D>(sigmoid(real_logit(logits.detach())));
}

// The supervised loss −E log p(y | x, y ≤ K) on labelled examples: as p(y | x, real) is the softmax
// of the K logits, this is the cross-entropy over the K real classes (the fake class takes no
// part). labels [B] in 0..K−1.
template <class T, class D>
Tensor<T, D> supervised_loss(const Tensor<T, D>& logits, const Tensor<index_t, D>& labels) {
  const char* who = "models::supervised_loss";
  detail::require_logits(who, logits.shape());
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != logits.size(0))
    throw_shape_error(who, "the labels must be [B], one per row of the logits [B, K]",
                      logits.shape(), labels.defined() ? labels.shape() : Shape{});
  return cross_entropy(logits, labels);
}

// The real half of the unsupervised loss, −E log D(x) on unlabelled real examples:
//   −log D = −log(Z / (Z + 1)) = log(1 + 1/Z) = log(1 + exp(−LSE)) = softplus(−LSE(l)).
// Its gradient: ∂/∂l_k = −σ(−LSE)·∂LSE/∂l_k = −(1 − D)·softmax_k(l).
template <class T, class D>
Tensor<T, D> unsupervised_real_loss(const Tensor<T, D>& logits) {
  detail::require_logits("models::unsupervised_real_loss", logits.shape());
  return Tensor<T, D>(mean(softplus(-logsumexp(logits, 1))));
}

// The fake half, −E log(1 − D(G(z))) on generated examples:
//   −log(1 − D) = −log(1 / (Z + 1)) = log(1 + Z) = softplus(LSE(l)),
// with ∂/∂l_k = σ(LSE)·softmax_k(l) = D·softmax_k(l).
template <class T, class D>
Tensor<T, D> unsupervised_fake_loss(const Tensor<T, D>& logits) {
  detail::require_logits("models::unsupervised_fake_loss", logits.shape());
  return Tensor<T, D>(mean(softplus(logsumexp(logits, 1))));
}

// The unsupervised loss of §5, −E_real log D(x) − E_fake log(1 − D(G(z))) =
// mean softplus(−LSE(l_real)) + mean softplus(LSE(l_fake)). The two batches may differ in size but
// must have the same K.
template <class T, class D>
Tensor<T, D> unsupervised_loss(const Tensor<T, D>& real_logits, const Tensor<T, D>& fake_logits) {
  const char* who = "models::unsupervised_loss";
  detail::require_logits(who, real_logits.shape());
  detail::require_logits(who, fake_logits.shape());
  if (real_logits.size(1) != fake_logits.size(1))
    throw_shape_error(who, "real and fake logits must have the same number of classes K",
                      real_logits.shape(), fake_logits.shape());
  return Tensor<T, D>(unsupervised_real_loss(real_logits) + unsupervised_fake_loss(fake_logits));
}

// The non-saturating generator loss of the K+1 discriminator, −E log D(G(z)) =
// mean softplus(−LSE(l_fake)) (the alternative to feature matching).
template <class T, class D>
Tensor<T, D> generator_adversarial_loss(const Tensor<T, D>& fake_logits) {
  detail::require_logits("models::generator_adversarial_loss", fake_logits.shape());
  return unsupervised_real_loss(fake_logits);
}

// Feature matching (Salimans et al. §3.1): ‖E f(x) − E_z f(G(z))‖²₂ for the activations f of an
// intermediate layer of the discriminator, the expectations estimated by the batch means
// (batches [B_r, ...] and [B_f, ...] with the same features per example, flattened to F). The
// real features are detached (the generator's loss; D is not trained on it). With
// m = mean_b f_real, n = mean_b f_fake and d = m − n:
//   `sum` (default, the paper's squared norm): Σ_j d_j²,   ∂/∂f_fake[b, j] = −2 d_j / B_f;
//   `mean` (the reference code's scaling):     Σ_j d_j² / F, ∂/∂f_fake[b, j] = −2 d_j / (F·B_f).
template <class T, class D>
Tensor<T, D> feature_matching_loss(const Tensor<T, D>& real_features,
                                   const Tensor<T, D>& fake_features,
                                   LossReduction reduction = LossReduction::sum) {
  const char* who = "models::feature_matching_loss";
  if (!real_features.defined() || !fake_features.defined())
    throw_value_error(who, "the features are an undefined tensor");
  if (real_features.dim() < 2 || fake_features.dim() < 2 || real_features.size(0) < 1 ||
      fake_features.size(0) < 1)
    throw_shape_error(who, "the features must be non-empty batches [B, ...]",
                      real_features.shape(), fake_features.shape());
  const index_t f = real_features.numel() / real_features.size(0);
  if (fake_features.numel() / fake_features.size(0) != f)
    throw_shape_error(who, "real and fake features must have the same size per example",
                      real_features.shape(), fake_features.shape());
  if (reduction == LossReduction::none)
    throw_value_error(who, "the reduction must be sum or mean");
  const Tensor<T, D> m = mean(real_features.detach().reshape(Shape{real_features.size(0), f}), 0);
  const Tensor<T, D> n = mean(fake_features.reshape(Shape{fake_features.size(0), f}), 0);
  Tensor<T, D> loss = sum(square(m - n));
  if (reduction == LossReduction::mean) loss = Tensor<T, D>(loss / static_cast<T>(f));
  return loss;
}

// The classifier of SemiSupervisedGAN: features(x) gives the intermediate activations [B, ...]
// that feature matching compares, classify(features) the K logits [B, K] (the forward pass is
// classify(features(x))).
template <class M, class T, class Device>
concept SemiSupervisedClassifier = requires(M& m, const Tensor<T, Device>& x) {
  { m.features(x) } -> std::convertible_to<Tensor<T, Device>>;
  { m.classify(x) } -> std::convertible_to<Tensor<T, Device>>;
};

// How the generator is trained against the K+1 discriminator.
enum class SemiSupervisedGeneratorLoss {
  feature_matching,  // ‖E f(x) − E f(G(z))‖² on Classifier::features (the paper's choice for §5)
  non_saturating,    // −E log D(G(z))
};

struct SemiSupervisedGANOptions {
  SemiSupervisedGeneratorLoss generator_loss = SemiSupervisedGeneratorLoss::feature_matching;
  LossReduction feature_matching_reduction = LossReduction::sum;
  double supervised_weight = 1.0;    // weight of the cross-entropy on labelled examples
  double unsupervised_weight = 1.0;  // weight of the real/fake loss
};

// What train_step() reports (the figures of the discriminator step and the generator's loss).
struct SemiSupervisedStepResult {
  double d_loss = 0;              // weighted total the discriminator was trained on
  double supervised = 0;          // cross-entropy on the labelled batch
  double unsupervised = 0;        // −log D(real) − log(1 − D(fake)), batch means
  double g_loss = 0;              // the generator's loss
  double d_real = 0, d_fake = 0;  // mean D(x) = Z/(Z+1) on the unlabelled and the fake batch
  double labelled_accuracy = 0;   // fraction of the labelled batch classified right
};

// A GAN over a Generator mapping latents z [B, latent_dim] to samples and a Classifier (K logits,
// see SemiSupervisedClassifier) used as the K+1 discriminator; children "generator" and
// "discriminator". The classifier is the model the semi-supervised training produces: predict()
// and logits() use it.
template <class Generator, class Classifier, class T = float, class Device = cpu>
class SemiSupervisedGAN : public nn::BasicModule<T, Device> {
  static_assert(std::derived_from<Generator, nn::BasicModule<T, Device>>,
                "kiln::models::SemiSupervisedGAN: the generator must derive from "
                "nn::BasicModule<T, Device> with the model's T and Device");
  static_assert(std::derived_from<Classifier, nn::BasicModule<T, Device>>,
                "kiln::models::SemiSupervisedGAN: the classifier must derive from "
                "nn::BasicModule<T, Device> with the model's T and Device");
  static_assert(requires(Generator& g, const Tensor<T, Device>& z) {
    { g.forward(z) } -> std::convertible_to<Tensor<T, Device>>;
  }, "kiln::models::SemiSupervisedGAN: the generator needs forward(const Tensor<T, Device>& z)");
  static_assert(SemiSupervisedClassifier<Classifier, T, Device>,
                "kiln::models::SemiSupervisedGAN: the classifier needs features(x) (the "
                "activations feature matching compares) and classify(features) giving [B, K] "
                "logits");

 public:
  using tensor_type = Tensor<T, Device>;
  using labels_type = Tensor<index_t, Device>;

  SemiSupervisedGAN(std::shared_ptr<Generator> generator, std::shared_ptr<Classifier> classifier,
                    index_t latent_dim, SemiSupervisedGANOptions options = {})
      : latent_(latent_dim), options_(options) {
    const char* who = "models::SemiSupervisedGAN";
    if (latent_dim < 1)
      throw_value_error(who, "the latent dimension must be positive, got " +
                                 std::to_string(latent_dim));
    if (!(options.supervised_weight >= 0) || !(options.unsupervised_weight >= 0))
      throw_value_error(who, "the loss weights must be non-negative, got supervised " +
                                 std::to_string(options.supervised_weight) + " and unsupervised " +
                                 std::to_string(options.unsupervised_weight));
    if (options.feature_matching_reduction == LossReduction::none)
      throw_value_error(who, "feature_matching_reduction must be sum or mean");
    generator_ = this->register_module("generator", std::move(generator));
    classifier_ = this->register_module("discriminator", std::move(classifier));
  }

  Generator& generator() { return *generator_; }
  Classifier& discriminator() { return *classifier_; }
  index_t latent_dim() const { return latent_; }
  const SemiSupervisedGANOptions& options() const { return options_; }

  // z ~ N(0, I), [n, latent_dim].
  tensor_type latent(index_t n, Rng& rng) const { return randn<T, Device>(Shape{n, latent_}, rng); }
  tensor_type generate(const tensor_type& z) { return tensor_type(generator_->forward(z)); }

  // The K class logits [B, K] of x.
  tensor_type logits(const tensor_type& x) {
    const char* who = "models::SemiSupervisedGAN::logits";
    if (!x.defined() || x.dim() < 1 || x.size(0) < 1)
      throw_shape_error(who, "x must be a non-empty batch [B, ...]", x.defined() ? x.shape() : Shape{});
    return checked_logits(who, x, tensor_type(classifier_->classify(features(x))));
  }
  tensor_type features(const tensor_type& x) { return tensor_type(classifier_->features(x)); }

  // The most likely real class of each example, [B] (argmax of the K logits; the fake class is
  // not a candidate), without recording. Does not change train/eval mode.
  labels_type predict(const tensor_type& x) {
    NoGrad guard;
    return argmax(logits(x), 1);
  }

  // One round of training: a discriminator step on
  //   supervised_weight·CE(l(labelled), labels)
  //     + unsupervised_weight·[softplus(−LSE(l(unlabelled))) + softplus(LSE(l(G(z))))]
  // (batch means; z ~ N(0, I) from `rng`, one latent per unlabelled example, the fake batch
  // detached), then a generator step on the same fake batch: feature matching against the
  // unlabelled batch's features, recomputed without recording after the discriminator's update
  // (as the reference implementation, which evaluates them with the current weights), or the
  // non-saturating loss. The discriminator's parameters are frozen during the generator's step.
  SemiSupervisedStepResult train_step(const tensor_type& labelled, const labels_type& labels,
                                      const tensor_type& unlabelled, Rng& rng,
                                      optim::Optimizer& g_opt, optim::Optimizer& d_opt) {
    const char* who = "models::SemiSupervisedGAN::train_step";
    if (!labelled.defined() || labelled.dim() < 1 || labelled.size(0) < 1)
      throw_shape_error(who, "the labelled batch must be non-empty [B, ...]",
                        labelled.defined() ? labelled.shape() : Shape{});
    if (!unlabelled.defined() || unlabelled.dim() < 1 || unlabelled.size(0) < 1)
      throw_shape_error(who, "the unlabelled batch must be non-empty [B, ...]",
                        unlabelled.defined() ? unlabelled.shape() : Shape{});
    SemiSupervisedStepResult out;
    const tensor_type fake = generate(latent(unlabelled.size(0), rng));

    d_opt.zero_grad();
    const tensor_type l_lab = logits(labelled.detach());
    const tensor_type l_unl = logits(unlabelled.detach());
    const tensor_type l_fake = logits(fake.detach());
    const tensor_type sup = supervised_loss(l_lab, labels);
    const tensor_type unsup = unsupervised_loss(l_unl, l_fake);
    const tensor_type d_loss(sup * static_cast<T>(options_.supervised_weight) +
                             unsup * static_cast<T>(options_.unsupervised_weight));
    d_loss.backward();
    d_opt.step();
    {
      NoGrad guard;
      out.d_loss = static_cast<double>(d_loss.item());
      out.supervised = static_cast<double>(sup.item());
      out.unsupervised = static_cast<double>(unsup.item());
      out.d_real = static_cast<double>(mean(real_probability(l_unl)).item());
      out.d_fake = static_cast<double>(mean(real_probability(l_fake)).item());
      const labels_type guess = argmax(l_lab.detach(), 1);
      index_t right = 0;
      const labels_type truth = labels.contiguous();
      for (index_t i = 0; i < guess.numel(); ++i) right += guess.data()[i] == truth.data()[i];
      out.labelled_accuracy = static_cast<double>(right) / static_cast<double>(guess.numel());
    }

    g_opt.zero_grad();
    {
      FrozenParameters frozen(*classifier_);
      tensor_type g_loss;
      if (options_.generator_loss == SemiSupervisedGeneratorLoss::feature_matching) {
        tensor_type real_features;
        {
          NoGrad guard;
          real_features = features(unlabelled.detach());
        }
        g_loss = feature_matching_loss(real_features, features(fake),
                                       options_.feature_matching_reduction);
      } else {
        g_loss = generator_adversarial_loss(logits(fake));
      }
      g_loss.backward();
      out.g_loss = static_cast<double>(g_loss.item());
    }
    g_opt.step();
    return out;
  }

 private:
  static tensor_type checked_logits(const char* who, const tensor_type& x, const tensor_type& l) {
    if (l.dim() != 2 || l.size(0) != x.size(0) || l.size(1) < 1)
      throw_shape_error(who, "the classifier must give [B, K] logits, K >= 1; input and output are",
                        x.shape(), l.shape());
    return l;
  }

  using FrozenParameters = nn::FrozenParameters<T, Device>;

  std::shared_ptr<Generator> generator_;
  std::shared_ptr<Classifier> classifier_;
  index_t latent_;
  SemiSupervisedGANOptions options_;
};

}  // namespace kiln::models
