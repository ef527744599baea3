// kiln/models/gan.hpp — the adversarial-pair family (GAN, hinge GAN, WGAN-GP, R1-regularized GANs,
// class-conditional variants): a template over the user's own generator and discriminator giving
// the losses, the gradient penalty and R1 (double backward), n_critic training steps, an EMA of the
// generator's weights and sampling. Builds on nn/module.hpp (the networks are children),
// autograd/graph.hpp (kiln::grad with create_graph), optim/optimizer.hpp and optim/ema.hpp.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/reduce.hpp>
#include <kiln/optim/ema.hpp>
#include <kiln/optim/optimizer.hpp>

#include <cmath>
#include <concepts>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::models {

// The adversarial objective. d = D(·) is the discriminator's raw output (a logit / critic value);
// every term is a mean over the batch.
enum class GANLoss {
  // Goodfellow et al. 2014, with the non-saturating generator loss (their §3):
  //   D: softplus(−d_real) + softplus(d_fake)    (= BCE-with-logits against targets 1 and 0)
  //   G: softplus(−d_fake)                        (= BCE-with-logits of the fakes against 1)
  non_saturating,
  // Lim & Ye 2017 / Miyato et al. 2018:
  //   D: relu(1 − d_real) + relu(1 + d_fake)
  //   G: −d_fake
  hinge,
  // Arjovsky et al. 2017 (the critic's sign convention: D is trained to rank reals higher):
  //   D: d_fake − d_real
  //   G: −d_fake
  // Usually with gradient_penalty = 10 (WGAN-GP).
  wasserstein,
};

struct GANOptions {
  GANLoss loss = GANLoss::non_saturating;
  // λ of WGAN-GP (Gulrajani et al. 2017, eq. 3): λ·E[(‖∇_x̂ D(x̂)‖₂ − 1)²] at x̂ = ε·real + (1 −
  // ε)·fake, ε ~ U[0, 1] per example; 0: off.
  double gradient_penalty = 0;
  // γ of the R1 penalty (Mescheder et al. 2018, eq. 9): γ/2·E[‖∇_x D(x_real)‖²]; 0: off.
  double r1 = 0;
  // n_critic: discriminator updates per generator update in train_step().
  int critic_steps = 1;
  // Decay of the exponential moving average of the generator's parameters (0: no EMA). With an
  // EMA, sample() draws from the averaged weights.
  double ema_decay = 0;
  // With an EMA: the decay of the n-th update is min(ema_decay, (1 + n) / (10 + n)), so that the
  // average leaves the initial weights quickly in short runs (ExponentialMovingAverage's
  // use_num_updates rule).
  bool ema_warmup = false;
};

// One evaluation of the discriminator's objective.
template <class T, class Device>
struct DiscriminatorLoss {
  Tensor<T, Device> loss;  // adversarial terms + penalties, the tensor to call backward() on
  double d_real = 0;       // mean D output on the real batch
  double d_fake = 0;       // mean D output on the fake batch
  double penalty = 0;      // the gradient penalty and R1 terms included in `loss` (weighted)
};

// What train_step() reports: the last discriminator step's figures and the generator's loss.
struct GANStepResult {
  double d_loss = 0, g_loss = 0, d_real = 0, d_fake = 0, penalty = 0;
};

// A network usable by GAN: a module of the GAN's T and Device whose forward takes the input
// (conditional: and a Tensor<index_t> of class labels) and returns a tensor.
template <class M, class T, class Device>
concept UnconditionalGANNetwork = requires(M& m, const Tensor<T, Device>& x) {
  { m.forward(x) } -> std::convertible_to<Tensor<T, Device>>;
};
template <class M, class T, class Device>
concept ConditionalGANNetwork = requires(M& m, const Tensor<T, Device>& x,
                                         const Tensor<index_t, Device>& labels) {
  { m.forward(x, labels) } -> std::convertible_to<Tensor<T, Device>>;
};

// A GAN over a Generator mapping latents z [B, latent_dim] (and, conditional, labels [B]) to
// samples, and a Discriminator mapping samples (and labels) to one value per example ([B] or
// [B, 1]). They are registered as the children "generator" and "discriminator". With ema_decay > 0
// the EMA of the generator's parameters is kept by an optim::ExponentialMovingAverage whose
// shadow tensors are also registered as buffers of the child "generator_ema" (under the
// generator's own parameter names), with its update count in the buffer
// "generator_ema.num_updates" (exact up to 2^24 updates), so state dicts and checkpoints carry it:
// after load_state_dict the next use of the EMA picks up the loaded count.
//
// Sampling with the EMA swaps the averaged weights into the generator and back (store, copy_to,
// restore), instead of keeping a second generator: modules are not copyable, and a swap costs two
// copies of the weights per sample() call. Buffers (e.g. BatchNorm running statistics) are the
// live generator's. sample() does not change the train/eval mode: call eval() first for the
// running statistics of BatchNorm.
template <class Generator, class Discriminator, class T = float, class Device = cpu>
class GAN : public nn::BasicModule<T, Device> {
  static_assert(std::derived_from<Generator, nn::BasicModule<T, Device>>,
                "kiln::models::GAN: the generator must derive from nn::BasicModule<T, Device> with "
                "the GAN's T and Device");
  static_assert(std::derived_from<Discriminator, nn::BasicModule<T, Device>>,
                "kiln::models::GAN: the discriminator must derive from nn::BasicModule<T, Device> "
                "with the GAN's T and "
                "Device");
  static_assert(UnconditionalGANNetwork<Generator, T, Device> ||
                    ConditionalGANNetwork<Generator, T, Device>,
                "kiln::models::GAN: the generator needs forward(const Tensor<T, Device>& z) or "
                "forward(z, const "
                "Tensor<index_t, Device>& labels) returning a Tensor<T, Device>");
  static_assert(UnconditionalGANNetwork<Discriminator, T, Device> ||
                    ConditionalGANNetwork<Discriminator, T, Device>,
                "kiln::models::GAN: the discriminator needs forward(const Tensor<T, Device>& x) or "
                "forward(x, const "
                "Tensor<index_t, Device>& labels) returning a Tensor<T, Device>");

 public:
  using tensor_type = Tensor<T, Device>;
  using labels_type = Tensor<index_t, Device>;
  using loss_type = DiscriminatorLoss<T, Device>;
  // optim::ExponentialMovingAverage holds float tensors on the CPU.
  static constexpr bool ema_supported = std::is_same_v<T, float> && std::is_same_v<Device, cpu>;

  GAN(std::shared_ptr<Generator> generator, std::shared_ptr<Discriminator> discriminator,
      index_t latent_dim, GANOptions options = {})
      : latent_(latent_dim), options_(options) {
    if (latent_dim < 1)
      throw_value_error("models::GAN",
                        "the latent dimension must be positive, got " + std::to_string(latent_dim));
    if (!(options.gradient_penalty >= 0))
      throw_value_error("models::GAN", "gradient_penalty must be non-negative, got " +
                                           std::to_string(options.gradient_penalty));
    if (!(options.r1 >= 0))
      throw_value_error("models::GAN",
                        "r1 must be non-negative, got " + std::to_string(options.r1));
    if (options.critic_steps < 1)
      throw_value_error("models::GAN", "critic_steps must be at least 1, got " +
                                           std::to_string(options.critic_steps));
    if (!(options.ema_decay >= 0 && options.ema_decay < 1))
      throw_value_error("models::GAN",
                        "ema_decay must be in [0, 1), got " + std::to_string(options.ema_decay));
    generator_ = this->register_module("generator", std::move(generator));
    discriminator_ = this->register_module("discriminator", std::move(discriminator));
    if (options.ema_decay > 0) {
      if constexpr (ema_supported) {
        ema_ = std::make_unique<optim::ExponentialMovingAverage>(
            generator_->parameters(), options.ema_decay, options.ema_warmup);
        register_ema_buffers();
      } else {
        throw_value_error("models::GAN",
                          "an EMA of the generator (ema_decay > 0) needs T = float on the CPU "
                          "(optim::ExponentialMovingAverage)");
      }
    }
  }

  Generator& generator() { return *generator_; }
  Discriminator& discriminator() { return *discriminator_; }
  index_t latent_dim() const { return latent_; }
  const GANOptions& options() const { return options_; }
  // The EMA of the generator's parameters, or nullptr without one.
  optim::ExponentialMovingAverage* ema() {
    sync_ema();
    return ema_.get();
  }

  // z ~ N(0, I), [n, latent_dim].
  tensor_type latent(index_t n, Rng& rng) const { return randn<T, Device>(Shape{n, latent_}, rng); }

  // G(z) or G(z, labels).
  tensor_type generate(const tensor_type& z, const labels_type& labels = {}) {
    return call(*generator_, "generator", "models::GAN::generate", z, labels);
  }
  // D(x) or D(x, labels), one value per example: [B].
  tensor_type discriminate(const tensor_type& x, const labels_type& labels = {}) {
    if (x.dim() < 1 || x.size(0) < 1)
      throw_shape_error("models::GAN::discriminate", "x must be a non-empty batch [B, ...]",
                        x.shape());
    tensor_type d = call(*discriminator_, "discriminator", "models::GAN::discriminate", x, labels);
    if (d.numel() != x.size(0))
      throw_shape_error(
          "models::GAN::discriminate",
          "the discriminator must give one value per example ([B] or [B, 1]); input and output are",
          x.shape(), d.shape());
    return d.dim() == 1 ? d : d.reshape(Shape{x.size(0)});
  }

  // The discriminator's loss on a real and a fake batch (the fake is detached here, so the
  // generator gets no gradient), plus the penalties the options turn on. The gradient penalty
  // draws ε from `rng`; without an rng it throws when the penalty is on.
  loss_type discriminator_loss(const tensor_type& real, const tensor_type& fake,
                               const labels_type& labels = {}) {
    return discriminator_loss_impl(real, fake, labels, nullptr);
  }
  loss_type discriminator_loss(const tensor_type& real, const tensor_type& fake,
                               const labels_type& labels, Rng& rng) {
    return discriminator_loss_impl(real, fake, labels, &rng);
  }

  // The generator's loss on a fake batch (not detached: its gradient reaches the generator, and
  // the discriminator's parameters, which the discriminator's step clears first).
  tensor_type generator_loss(const tensor_type& fake, const labels_type& labels = {}) {
    const tensor_type d_fake = discriminate(fake, labels);
    switch (options_.loss) {
      case GANLoss::non_saturating:
        return mean(softplus(-d_fake));  // −log sigmoid(d) = softplus(−d)
      case GANLoss::hinge:
      case GANLoss::wasserstein:
        return tensor_type(-mean(d_fake));
    }
    throw_value_error("models::GAN::generator_loss", "unknown loss");
  }

  // WGAN-GP's penalty λ·mean_b (‖∇_x̂ D(x̂_b)‖₂ − 1)² at x̂_b = ε_b·real_b + (1 − ε_b)·fake_b,
  // ε_b ~ U[0, 1] from `rng`, with λ = options().gradient_penalty. The gradient is taken with
  // create_graph, so the penalty is differentiable in D's parameters (it trains D). The norm is
  // sqrt(Σ g² + 1e-12), so that a zero gradient gives a finite derivative.
  tensor_type gradient_penalty(const tensor_type& real, const tensor_type& fake, Rng& rng,
                               const labels_type& labels = {}) {
    const char* who = "models::GAN::gradient_penalty";
    if (real.shape() != fake.shape())
      throw_shape_error(who, "real and fake batches must have the same shape", real.shape(),
                        fake.shape());
    if (real.dim() < 1 || real.size(0) < 1)
      throw_shape_error(who, "real must be a non-empty batch [B, ...]", real.shape());
    const index_t b = real.size(0);
    Shape eps_shape = real.shape();
    for (int i = 1; i < eps_shape.ndim; ++i) eps_shape[i] = 1;
    tensor_type mixed;
    {
      NoGrad guard;
      const tensor_type eps = rand<T, Device>(eps_shape, rng);
      const tensor_type r = real.detach(), f = fake.detach();
      mixed = tensor_type(eps * r + (T(1) - eps) * f);
    }
    mixed.requires_grad();
    EnableGrad enable;
    const tensor_type g = input_gradient(discriminate(mixed, labels), mixed);
    const tensor_type norm = sqrt(sum(square(g.reshape(Shape{b, -1})), 1) + T(1e-12));
    return tensor_type(mean(square(norm - T(1))) * static_cast<T>(options_.gradient_penalty));
  }

  // R1: γ/2·mean_b ‖∇_x D(x_b)‖² on the real batch, γ = options().r1 (differentiable in D's
  // parameters, as gradient_penalty()).
  tensor_type r1_penalty(const tensor_type& real, const labels_type& labels = {}) {
    tensor_type x = real.detach();
    x.requires_grad();
    EnableGrad enable;
    return r1_of(discriminate(x, labels), x);
  }

  // n samples of the generator for z ~ N(0, I) from `rng` (labels: one class per sample for a
  // conditional generator), without recording; with an EMA, from the averaged weights.
  tensor_type sample(index_t n, Rng& rng, const labels_type& labels = {}) {
    if (n < 1)
      throw_value_error("models::GAN::sample", "n must be positive, got " + std::to_string(n));
    return sample_from(latent(n, rng), labels);
  }
  // The generator's output for given latents (the EMA weights when on), without recording.
  tensor_type sample_from(const tensor_type& z, const labels_type& labels = {}) {
    NoGrad guard;
    if (!ema_) return generate(z, labels);
    sync_ema();
    EmaSwap swap(*ema_);
    return generate(z, labels).clone();
  }

  // Moves the EMA towards the generator's current parameters (no-op without an EMA); train_step
  // calls it after every generator update.
  void update_ema() {
    if (!ema_) return;
    sync_ema();
    ema_->update();
    NoGrad guard;
    ema_count_->fill_(static_cast<T>(ema_->num_updates()));
  }

  // One round of training on a real batch: critic_steps discriminator updates (each with a fresh
  // fake batch from `rng` against the same real batch; fakes get the real batch's labels), then
  // one generator update on the last of those fake batches (as PyTorch's DCGAN example: the
  // generator runs once per round when critic_steps = 1) and the EMA update. During the
  // generator's step the discriminator's parameters do not record gradients (they are frozen and
  // unfrozen again). The same loop written out:
  //   for each critic step s:  fake = generate(latent(B, rng), labels)   (under NoGrad unless s is
  //   the last)
  //                            d_opt.zero_grad(); discriminator_loss(real, fake, labels,
  //                            rng).loss.backward(); d_opt.step()
  //   g_opt.zero_grad(); generator_loss(fake, labels).backward(); g_opt.step(); update_ema()
  GANStepResult train_step(const tensor_type& real, const labels_type& labels, Rng& rng,
                           optim::Optimizer& g_opt, optim::Optimizer& d_opt) {
    if (real.dim() < 1 || real.size(0) < 1)
      throw_shape_error("models::GAN::train_step", "real must be a non-empty batch [B, ...]",
                        real.shape());
    const index_t b = real.size(0);
    GANStepResult out;
    tensor_type fake;
    for (int s = 0; s < options_.critic_steps; ++s) {
      if (s + 1 < options_.critic_steps) {
        NoGrad guard;
        fake = generate(latent(b, rng), labels);
      } else {
        fake = generate(latent(b, rng), labels);  // recorded: the generator's step reuses it
      }
      d_opt.zero_grad();
      const loss_type d = discriminator_loss(real, fake, labels, rng);
      d.loss.backward();
      d_opt.step();
      out.d_loss = static_cast<double>(d.loss.item());
      out.d_real = d.d_real;
      out.d_fake = d.d_fake;
      out.penalty = d.penalty;
    }
    g_opt.zero_grad();
    {
      FrozenParameters frozen(*discriminator_);
      const tensor_type g_loss = generator_loss(fake, labels);
      g_loss.backward();
      out.g_loss = static_cast<double>(g_loss.item());
    }
    g_opt.step();
    update_ema();
    return out;
  }

 private:
  // Calls net.forward(x) or net.forward(x, labels), whichever the labels ask for.
  template <class Net>
  static tensor_type call(Net& net, const char* role, const char* who, const tensor_type& x,
                          const labels_type& labels) {
    if (labels.defined()) {
      if constexpr (ConditionalGANNetwork<Net, T, Device>) {
        if (labels.dim() != 1 || x.dim() < 1 || labels.size(0) != x.size(0))
          throw_shape_error(who,
                            std::string("the labels must be [B], one per example of the ") + role +
                                "'s input; input and labels are",
                            x.shape(), labels.shape());
        return tensor_type(net.forward(x, labels));
      } else {
        throw_value_error(who, std::string("labels were given, but the ") + role +
                                   " is unconditional (it has no forward(x, labels))");
      }
    } else {
      if constexpr (UnconditionalGANNetwork<Net, T, Device>) {
        return tensor_type(net.forward(x));
      } else {
        throw_value_error(who, std::string("the ") + role +
                                   " is conditional (forward(x, labels)): pass the labels");
      }
    }
  }

  // ∇_x Σ_b out_b with create_graph (each example's gradient is its own when D treats examples
  // independently).
  static tensor_type input_gradient(const tensor_type& out, const tensor_type& x) {
    return grad<T, Device>({sum(out)}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  }
  tensor_type r1_of(const tensor_type& d_real, const tensor_type& x) const {
    const index_t b = x.size(0);
    const tensor_type g = input_gradient(d_real, x);
    return tensor_type(mean(sum(square(g.reshape(Shape{b, -1})), 1)) *
                       static_cast<T>(options_.r1 / 2));
  }

  loss_type discriminator_loss_impl(const tensor_type& real, const tensor_type& fake,
                                    const labels_type& labels, Rng* rng) {
    const char* who = "models::GAN::discriminator_loss";
    if (real.dim() < 1 || real.size(0) < 1)
      throw_shape_error(who, "real must be a non-empty batch [B, ...]", real.shape());
    if (fake.dim() < 1 || fake.size(0) < 1)
      throw_shape_error(who, "fake must be a non-empty batch [B, ...]", fake.shape());
    if (options_.gradient_penalty > 0 && !rng)
      throw_value_error(who,
                        "the gradient penalty draws its mixing weights: pass an Rng "
                        "(discriminator_loss(real, fake, labels, rng))");
    loss_type out;
    // With R1 the real batch's forward pass is shared by the loss and the penalty.
    tensor_type real_in = real.detach();
    if (options_.r1 > 0) real_in.requires_grad();
    const tensor_type d_real = discriminate(real_in, labels);
    const tensor_type d_fake = discriminate(fake.detach(), labels);
    tensor_type loss;
    switch (options_.loss) {
      case GANLoss::non_saturating:
        // −log sigmoid(d_real) − log(1 − sigmoid(d_fake)) = softplus(−d_real) + softplus(d_fake)
        loss = tensor_type(mean(softplus(-d_real)) + mean(softplus(d_fake)));
        break;
      case GANLoss::hinge:
        loss = tensor_type(mean(relu(T(1) - d_real)) + mean(relu(T(1) + d_fake)));
        break;
      case GANLoss::wasserstein:
        loss = tensor_type(mean(d_fake) - mean(d_real));
        break;
    }
    {
      NoGrad guard;
      out.d_real = static_cast<double>(mean(d_real).item());
      out.d_fake = static_cast<double>(mean(d_fake).item());
    }
    tensor_type penalty;
    if (options_.r1 > 0) penalty = r1_of(d_real, real_in);
    if (options_.gradient_penalty > 0) {
      const tensor_type gp = gradient_penalty(real, fake, *rng, labels);
      penalty = penalty.defined() ? tensor_type(penalty + gp) : gp;
    }
    if (penalty.defined()) {
      out.penalty = static_cast<double>(penalty.item());
      loss = tensor_type(loss + penalty);
    }
    out.loss = loss;
    return out;
  }

  // Swaps the EMA weights into the generator for its lifetime.
  struct EmaSwap {
    explicit EmaSwap(optim::ExponentialMovingAverage& e) : ema(e) {
      ema.store();
      ema.copy_to();
    }
    ~EmaSwap() { ema.restore(); }
    EmaSwap(const EmaSwap&) = delete;
    EmaSwap& operator=(const EmaSwap&) = delete;
    optim::ExponentialMovingAverage& ema;
  };

  using FrozenParameters = nn::FrozenParameters<T, Device>;

  // Registers each EMA shadow tensor as a buffer of "generator_ema", nested like the generator
  // ("generator.0.weight" is averaged in "generator_ema.0.weight").
  void register_ema_buffers() {
    auto root =
        this->register_module("generator_ema", std::make_shared<nn::BasicModule<T, Device>>());
    std::map<std::string, std::shared_ptr<nn::BasicModule<T, Device>>> made{{"", root}};
    const auto named = generator_->named_parameters();
    const auto& shadow = ema_->shadow_params();
    for (std::size_t i = 0; i < named.size(); ++i) {
      const std::string& name = named[i].first;
      std::string prefix;
      std::size_t start = 0;
      for (std::size_t dot = name.find('.'); dot != std::string::npos;
           dot = name.find('.', start)) {
        const std::string part = name.substr(start, dot - start);
        const std::string path = prefix.empty() ? part : prefix + "." + part;
        if (!made.count(path))
          made[path] =
              made[prefix]->register_module(part, std::make_shared<nn::BasicModule<T, Device>>());
        prefix = path;
        start = dot + 1;
      }
      ema_slots_.push_back(&made[prefix]->register_buffer(name.substr(start), shadow[i]));
    }
    ema_count_ = &root->register_buffer("num_updates", zeros<T, Device>(Shape{1}));
  }

  // Keeps the EMA object and its buffers consistent. The buffers share storage with the EMA's
  // shadow tensors, so a load_state_dict of this module (which copies in place) updates both; the
  // loaded count is then handed to the EMA. When the EMA itself was reloaded (ema()->
  // load_state_dict, which makes new shadow tensors) the buffers are pointed at its tensors.
  void sync_ema() {
    if constexpr (ema_supported) {
      if (!ema_) return;
      const auto& shadow = ema_->shadow_params();
      bool rebound = false;
      for (std::size_t i = 0; i < ema_slots_.size(); ++i)
        if (ema_slots_[i]->data() != shadow[i].data()) {
          *ema_slots_[i] = shadow[i];
          rebound = true;
        }
      NoGrad guard;
      if (rebound) {
        ema_count_->fill_(static_cast<T>(ema_->num_updates()));
        return;
      }
      const auto stored =
          static_cast<std::int64_t>(std::llround(static_cast<double>(ema_count_->item())));
      if (stored == ema_->num_updates()) return;
      optim::StateDict dict = ema_->state_dict();
      dict.counters["num_updates"] = stored;
      ema_->load_state_dict(dict);
      for (std::size_t i = 0; i < ema_slots_.size(); ++i) *ema_slots_[i] = ema_->shadow_params()[i];
    }
  }

  std::shared_ptr<Generator> generator_;
  std::shared_ptr<Discriminator> discriminator_;
  std::unique_ptr<optim::ExponentialMovingAverage> ema_;
  std::vector<tensor_type*> ema_slots_;  // the buffers holding the shadow tensors
  tensor_type* ema_count_ = nullptr;     // the buffer holding the number of EMA updates
  index_t latent_;
  GANOptions options_;
};

}  // namespace kiln::models
