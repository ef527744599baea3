// kiln/models/diffusion.hpp — the noise-schedule denoiser family (DDPM, DDIM): linear and cosine β
// schedules, forward noising q(x_t | x_0), ε- and v-prediction training losses, ancestral DDPM
// sampling, deterministic (η = 0) or stochastic DDIM sampling on any number of steps, and
// classifier-free guidance with class labels; a template over the user's denoising network, plus
// the small UNet of W6 (sinusoidal time embedding, ResBlocks with GroupNorm and SiLU, skips) as a
// ready network.
// Builds on nn/ (Conv2d, ConvTranspose2d, GroupNorm, Linear, Embedding), ops/loss.hpp (MSE),
// ops/index.hpp (concat) and the kiln Rng.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/nn/activation.hpp>
#include <kiln/nn/conv.hpp>
#include <kiln/nn/embedding.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/nn/norm.hpp>
#include <kiln/nn/sequential.hpp>
#include <kiln/ops/index.hpp>
#include <kiln/ops/loss.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

namespace kiln::models {

// β_t, α_t = 1 − β_t and ᾱ_t = Π_{s ≤ t} α_s for t = 0 … T−1 (index 0 is the first noising step,
// as the W6 reference: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε).
struct NoiseSchedule {
  std::vector<double> betas, alphas, alpha_bars;

  index_t steps() const { return static_cast<index_t>(betas.size()); }

  static NoiseSchedule from_betas(std::vector<double> betas) {
    if (betas.empty()) throw_value_error("models::NoiseSchedule", "needs at least one step");
    NoiseSchedule s;
    double prod = 1.0;
    for (double b : betas) {
      if (!(b > 0 && b < 1)) throw_value_error("models::NoiseSchedule", "every beta must lie in (0, 1), got " + std::to_string(b));
      prod *= 1.0 - b;
      s.alphas.push_back(1.0 - b);
      s.alpha_bars.push_back(prod);
    }
    s.betas = std::move(betas);
    return s;
  }
  // β linear from beta_start to beta_end over T steps (Ho et al. 2020: 1e-4 … 0.02, T = 1000).
  static NoiseSchedule linear(index_t T = 1000, double beta_start = 1e-4, double beta_end = 0.02) {
    if (T < 1) throw_value_error("models::NoiseSchedule::linear", "T must be positive, got " + std::to_string(T));
    std::vector<double> b(static_cast<std::size_t>(T));
    for (index_t t = 0; t < T; ++t)
      b[static_cast<std::size_t>(t)] = T == 1 ? beta_start : beta_start + (beta_end - beta_start) * static_cast<double>(t) / static_cast<double>(T - 1);
    return from_betas(std::move(b));
  }
  // Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), with
  // β_t = 1 − ᾱ(t+1)/ᾱ(t) clipped to max_beta (here ᾱ_t of step index t is ᾱ(t + 1)).
  static NoiseSchedule cosine(index_t T = 1000, double s = 0.008, double max_beta = 0.999) {
    if (T < 1) throw_value_error("models::NoiseSchedule::cosine", "T must be positive, got " + std::to_string(T));
    auto f = [&](double t) {
      const double c = std::cos((t / static_cast<double>(T) + s) / (1 + s) * std::numbers::pi / 2);
      return c * c;
    };
    std::vector<double> b(static_cast<std::size_t>(T));
    for (index_t t = 0; t < T; ++t)
      b[static_cast<std::size_t>(t)] = std::min(1.0 - f(static_cast<double>(t + 1)) / f(static_cast<double>(t)), max_beta);
    return from_betas(std::move(b));
  }
};

enum class Prediction {
  epsilon,  // the network predicts the noise ε
  v,        // the network predicts v = √ᾱ ε − √(1 − ᾱ) x_0 (Salimans & Ho 2022)
};

struct DiffusionOptions {
  Prediction prediction = Prediction::epsilon;
  index_t num_classes = 0;       // > 0: class-conditional; label num_classes is the "no class" token
  double label_dropout = 0.1;    // probability of training a conditional example without its class
  double clip_denoised = 0.0;    // > 0: clamp the predicted x_0 to [−c, c] while sampling (1 for images in [−1, 1])
};

// Sinusoidal embedding of integer timesteps [B] → [B, dim]: [sin(t ω_j), cos(t ω_j)] with
// ω_j = exp(−ln(10000)·j/(dim/2)), j = 0 … dim/2 − 1 (the W6 reference).
template <class T, class Device = cpu>
Tensor<T, Device> timestep_embedding(const Tensor<index_t, Device>& t, index_t dim) {
  if (t.dim() != 1) throw_shape_error("models::timestep_embedding", "timesteps must be [B]", t.shape());
  if (dim < 2 || dim % 2) throw_value_error("models::timestep_embedding", "dim must be even and >= 2, got " + std::to_string(dim));
  const index_t b = t.size(0), half = dim / 2;
  auto out = Tensor<T, Device>::uninitialized(Shape{b, dim});
  const Tensor<index_t, Device> tc = t.contiguous();
  for (index_t i = 0; i < b; ++i)
    for (index_t j = 0; j < half; ++j) {
      const double w = std::exp(-std::log(10000.0) * static_cast<double>(j) / static_cast<double>(half));
      const double a = static_cast<double>(tc.data()[i]) * w;
      out.data()[i * dim + j] = static_cast<T>(std::sin(a));
      out.data()[i * dim + half + j] = static_cast<T>(std::cos(a));
    }
  return out;
}

// A denoiser over a Network with forward(x_t, t) → prediction (x's shape), or, for the
// class-conditional form, forward(x_t, t, labels). The network is the child "network".
template <class Network, class T = float, class Device = cpu>
class Diffusion : public nn::BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;
  using index_tensor = Tensor<index_t, Device>;
  static constexpr bool conditional_network = requires(Network& n, const tensor_type& x, const index_tensor& t) {
    { n.forward(x, t, t) } -> std::convertible_to<tensor_type>;
  };
  static constexpr bool unconditional_network = requires(Network& n, const tensor_type& x, const index_tensor& t) {
    { n.forward(x, t) } -> std::convertible_to<tensor_type>;
  };
  static_assert(conditional_network || unconditional_network,
                "kiln::models::Diffusion: the network needs forward(x, t) or forward(x, t, labels) returning a Tensor");

  Diffusion(std::shared_ptr<Network> network, NoiseSchedule schedule, DiffusionOptions options = {})
      : schedule_(std::move(schedule)), options_(options) {
    if (options.num_classes > 0 && !conditional_network)
      throw_value_error("models::Diffusion", "num_classes > 0 needs a network with forward(x, t, labels)");
    if (!(options.label_dropout >= 0 && options.label_dropout <= 1))
      throw_value_error("models::Diffusion", "label_dropout must lie in [0, 1], got " + std::to_string(options.label_dropout));
    network_ = this->register_module("network", std::move(network));
  }

  Network& network() { return *network_; }
  const NoiseSchedule& schedule() const { return schedule_; }
  const DiffusionOptions& options() const { return options_; }

  // x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, one t per example.
  tensor_type q_sample(const tensor_type& x0, const index_tensor& t, const tensor_type& noise) const {
    check_batch("q_sample", x0, t);
    return tensor_type(per_example(t, x0.dim(), Coef::sqrt_ab) * x0 + per_example(t, x0.dim(), Coef::sqrt_1m_ab) * noise);
  }

  // The network's prediction at (x_t, t), with labels for a conditional model (num_classes for
  // "no class").
  tensor_type predict(const tensor_type& xt, const index_tensor& t, const index_tensor& labels = {}) {
    if constexpr (conditional_network) {
      if (options_.num_classes > 0) {
        index_tensor l = labels.defined() ? labels : full_labels(xt.size(0), options_.num_classes);
        return network_->forward(xt, t, l);
      }
    }
    if constexpr (unconditional_network) {
      if (labels.defined()) throw_value_error("models::Diffusion::predict", "labels given to an unconditional model");
      return network_->forward(xt, t);
    } else {
      throw_value_error("models::Diffusion::predict", "the network needs labels (num_classes was 0)");
    }
  }

  // The training loss: t ~ U{0 … T−1}, ε ~ N(0, I), MSE between the prediction at x_t and its
  // target (ε, or v = √ᾱ ε − √(1 − ᾱ) x_0). Conditional models drop each label with
  // probability label_dropout (replaced by the "no class" token) to learn the unconditional
  // prediction for classifier-free guidance.
  tensor_type loss(const tensor_type& x0, Rng& rng, const index_tensor& labels = {}) {
    const index_t b = x0.size(0);
    index_tensor t = index_tensor::uninitialized(Shape{b});
    for (index_t i = 0; i < b; ++i)
      t.data()[i] = static_cast<index_t>(bounded_from_block(rng.next_block(), rng.key(), static_cast<std::uint64_t>(schedule_.steps())));
    const tensor_type noise = randn<T, Device>(x0.shape(), rng);
    index_tensor l;
    if (options_.num_classes > 0) {
      if (!labels.defined()) throw_value_error("models::Diffusion::loss", "a conditional model needs the labels");
      l = labels.contiguous().clone();
      for (index_t i = 0; i < b; ++i)
        if (uniform_float(rng.next_block()[0]) < options_.label_dropout) l.data()[i] = options_.num_classes;
    }
    return loss_at(x0, t, noise, l);
  }

  // The loss at given timesteps and noise (deterministic; for tests and custom loops).
  tensor_type loss_at(const tensor_type& x0, const index_tensor& t, const tensor_type& noise, const index_tensor& labels = {}) {
    const tensor_type xt = q_sample(x0, t, noise);
    const tensor_type pred = predict(xt, t, labels);
    if (options_.prediction == Prediction::epsilon) return mse_loss(pred, noise);
    const tensor_type v = per_example(t, x0.dim(), Coef::sqrt_ab) * noise - per_example(t, x0.dim(), Coef::sqrt_1m_ab) * x0;
    return mse_loss(pred, v);
  }

  // The noise estimate ε̂ at (x_t, t), with classifier-free guidance ε̂ = ε̂_∅ + w (ε̂_c − ε̂_∅)
  // when labels are given to a conditional model (w = guidance; w = 1 is the conditional
  // prediction alone, w = 0 the unconditional one).
  tensor_type epsilon(const tensor_type& xt, const index_tensor& t, const index_tensor& labels = {}, double guidance = 1.0) {
    auto eps_of = [&](const tensor_type& pred) -> tensor_type {
      if (options_.prediction == Prediction::epsilon) return pred;
      // v = √ᾱ ε − √(1−ᾱ) x_0 and x_t = √ᾱ x_0 + √(1−ᾱ) ε give ε = √ᾱ v + √(1−ᾱ) x_t.
      return tensor_type(per_example(t, xt.dim(), Coef::sqrt_ab) * pred + per_example(t, xt.dim(), Coef::sqrt_1m_ab) * xt);
    };
    if (options_.num_classes > 0 && labels.defined() && guidance != 1.0) {
      const tensor_type cond = eps_of(predict(xt, t, labels));
      const tensor_type uncond = eps_of(predict(xt, t, full_labels(xt.size(0), options_.num_classes)));
      return tensor_type(uncond + (cond - uncond) * static_cast<T>(guidance));
    }
    return eps_of(predict(xt, t, labels));
  }

  // x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t, clamped to [−c, c] when clip_denoised = c > 0.
  tensor_type predict_x0(const tensor_type& xt, const index_tensor& t, const tensor_type& eps) const {
    tensor_type x0 = (xt - per_example(t, xt.dim(), Coef::sqrt_1m_ab) * eps) * per_example(t, xt.dim(), Coef::inv_sqrt_ab);
    if (options_.clip_denoised > 0) {
      const T c = static_cast<T>(options_.clip_denoised);
      x0 = tensor_type(kiln::clamp(x0, -c, c));
    }
    return x0;
  }

  // The coefficients of the forward-process posterior q(x_{t−1} | x_t, x_0) = N(c_0 x_0 + c_t x_t, var)
  // (Ho et al. 2020, eq. 6–7): c_0 = √ᾱ_{t−1} β_t/(1 − ᾱ_t), c_t = √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t),
  // var = β̃_t = (1 − ᾱ_{t−1}) β_t/(1 − ᾱ_t), with ᾱ_{−1} = 1 (so at t = 0 the posterior is x_0).
  struct Posterior {
    double c0, ct, variance;
  };
  Posterior posterior(index_t step) const {
    if (step < 0 || step >= schedule_.steps())
      throw_value_error("models::Diffusion::posterior", "timestep " + std::to_string(step) + " is outside [0, " +
                                                            std::to_string(schedule_.steps()) + ")");
    const double ab = schedule_.alpha_bars[static_cast<std::size_t>(step)];
    const double ab_prev = step > 0 ? schedule_.alpha_bars[static_cast<std::size_t>(step - 1)] : 1.0;
    const double beta = schedule_.betas[static_cast<std::size_t>(step)];
    return {std::sqrt(ab_prev) * beta / (1 - ab), std::sqrt(1 - beta) * (1 - ab_prev) / (1 - ab), (1 - ab_prev) / (1 - ab) * beta};
  }

  // Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) of n examples of `shape` (without the
  // batch dim): from x_{T−1} ~ N(0, I), x_{t−1} = μ̃_t(x_t, x̂_0) + σ_t z with the posterior mean
  // μ̃_t = (√ᾱ_{t−1} β_t/(1 − ᾱ_t)) x̂_0 + (√α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)) x_t and σ_t² the
  // posterior variance β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t (no noise at the last step). Without
  // clipping this equals Algorithm 2's (x_t − β_t/√(1 − ᾱ_t) ε̂)/√α_t.
  tensor_type ddpm_sample(index_t n, const Shape& shape, Rng& rng, const index_tensor& labels = {}, double guidance = 1.0) {
    NoGrad guard;
    tensor_type x = randn<T, Device>(with_batch(n, shape), rng);
    for (index_t step = schedule_.steps() - 1; step >= 0; --step) {
      const index_tensor t = full_labels(n, step);
      const tensor_type eps = epsilon(x, t, labels, guidance);
      const tensor_type x0 = predict_x0(x, t, eps);
      const Posterior q = posterior(step);
      const T c0 = static_cast<T>(q.c0), ct = static_cast<T>(q.ct);
      if (step > 0) {
        const T sigma = static_cast<T>(std::sqrt(q.variance));
        const tensor_type z = randn<T, Device>(x.shape(), rng);
        x = tensor_type(x0 * c0 + x * ct + z * sigma);
      } else {
        x = tensor_type(x0 * c0 + x * ct);
      }
    }
    return x;
  }

  // The timesteps a DDIM run of `steps` steps visits, increasing: round(i (T − 1)/(steps − 1)).
  std::vector<index_t> ddim_timesteps(index_t steps) const {
    std::vector<index_t> ts;
    for (index_t i = 0; i < steps; ++i)
      ts.push_back(steps == 1 ? schedule_.steps() - 1
                              : static_cast<index_t>(std::llround(static_cast<double>(i) * static_cast<double>(schedule_.steps() - 1) /
                                                                  static_cast<double>(steps - 1))));
    return ts;
  }

  // DDIM sampling (Song et al. 2021, eq. 12) over `steps` timesteps evenly spaced in [0, T−1]
  // (the last always included): x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z with
  // σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev); η = 0 is deterministic given x_T.
  tensor_type ddim_sample(index_t n, const Shape& shape, index_t steps, Rng& rng, double eta = 0.0,
                          const index_tensor& labels = {}, double guidance = 1.0) {
    NoGrad guard;
    if (steps < 1 || steps > schedule_.steps())
      throw_value_error("models::Diffusion::ddim_sample", "steps must lie in [1, " + std::to_string(schedule_.steps()) + "], got " +
                                                              std::to_string(steps));
    const std::vector<index_t> ts = ddim_timesteps(steps);
    tensor_type x = randn<T, Device>(with_batch(n, shape), rng);
    for (index_t i = steps - 1; i >= 0; --i) {
      const index_t step = ts[static_cast<std::size_t>(i)];
      const index_tensor t = full_labels(n, step);
      const tensor_type eps = epsilon(x, t, labels, guidance);
      const tensor_type x0 = predict_x0(x, t, eps);
      const double ab = schedule_.alpha_bars[static_cast<std::size_t>(step)];
      const double ab_prev = i > 0 ? schedule_.alpha_bars[static_cast<std::size_t>(ts[static_cast<std::size_t>(i - 1)])] : 1.0;
      const double sigma = eta * std::sqrt((1 - ab_prev) / (1 - ab)) * std::sqrt(std::max(0.0, 1 - ab / ab_prev));
      // With clipping, ε̂ is recomputed from the clamped x̂_0 so that the two stay consistent.
      const tensor_type e = options_.clip_denoised > 0
                                ? tensor_type((x - x0 * static_cast<T>(std::sqrt(ab))) * static_cast<T>(1 / std::sqrt(1 - ab)))
                                : eps;
      tensor_type next(x0 * static_cast<T>(std::sqrt(ab_prev)) + e * static_cast<T>(std::sqrt(std::max(0.0, 1 - ab_prev - sigma * sigma))));
      if (sigma > 0) next = tensor_type(next + randn<T, Device>(x.shape(), rng) * static_cast<T>(sigma));
      x = next;
    }
    return x;
  }

 private:
  enum class Coef { sqrt_ab, sqrt_1m_ab, inv_sqrt_ab };

  // A [B, 1, …, 1] tensor (rank `rank`) of a per-timestep coefficient.
  tensor_type per_example(const index_tensor& t, int rank, Coef c) const {
    const index_t b = t.size(0);
    Shape s;
    s.ndim = rank;
    s.dims[0] = b;
    for (int i = 1; i < rank; ++i) s.dims[i] = 1;
    auto out = tensor_type::uninitialized(s);
    const index_tensor tc = t.contiguous();
    for (index_t i = 0; i < b; ++i) {
      const index_t step = tc.data()[i];
      if (step < 0 || step >= schedule_.steps())
        throw_value_error("models::Diffusion", "timestep " + std::to_string(step) + " is outside [0, " +
                                                   std::to_string(schedule_.steps()) + ")");
      const double ab = schedule_.alpha_bars[static_cast<std::size_t>(step)];
      out.data()[i] = static_cast<T>(c == Coef::sqrt_ab ? std::sqrt(ab) : c == Coef::sqrt_1m_ab ? std::sqrt(1 - ab) : 1 / std::sqrt(ab));
    }
    return out;
  }
  static index_tensor full_labels(index_t n, index_t value) {
    index_tensor l = index_tensor::uninitialized(Shape{n});
    for (index_t i = 0; i < n; ++i) l.data()[i] = value;
    return l;
  }
  static Shape with_batch(index_t n, const Shape& shape) {
    if (shape.ndim + 1 > max_dims) throw_shape_error("models::Diffusion", "too many dims", shape);
    Shape s;
    s.ndim = shape.ndim + 1;
    s.dims[0] = n;
    for (int i = 0; i < shape.ndim; ++i) s.dims[i + 1] = shape.dims[i];
    return s;
  }
  static void check_batch(const char* op, const tensor_type& x, const index_tensor& t) {
    if (x.dim() < 1 || t.dim() != 1 || t.size(0) != x.size(0))
      throw_shape_error((std::string("models::Diffusion::") + op).c_str(), "x must be [B, ...] with one timestep per example",
                        x.shape(), t.shape());
  }

  std::shared_ptr<Network> network_;
  NoiseSchedule schedule_;
  DiffusionOptions options_;
};

// The residual block of the W6 UNet: h = conv3×3(SiLU(GN(x))) + Linear(temb)[:, :, None, None];
// h = conv3×3(SiLU(GN(h))); out = h + skip(x), skip a 1×1 conv when the channels change.
template <class T = float, class Device = cpu>
class ResBlock : public nn::BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;
  ResBlock(index_t in_channels, index_t out_channels, index_t time_dim, Rng& rng, index_t groups = 8) {
    n1_ = this->register_module("n1", std::make_shared<nn::BasicGroupNorm<T, Device>>(groups, in_channels));
    c1_ = this->register_module("c1", std::make_shared<nn::BasicConv2d<T, Device>>(in_channels, out_channels, 3, nn::Conv2dOptions{.padding = 1}, rng));
    tp_ = this->register_module("tp", std::make_shared<nn::BasicLinear<T, Device>>(time_dim, out_channels, rng));
    n2_ = this->register_module("n2", std::make_shared<nn::BasicGroupNorm<T, Device>>(groups, out_channels));
    c2_ = this->register_module("c2", std::make_shared<nn::BasicConv2d<T, Device>>(out_channels, out_channels, 3, nn::Conv2dOptions{.padding = 1}, rng));
    if (in_channels != out_channels)
      skip_ = this->register_module("skip", std::make_shared<nn::BasicConv2d<T, Device>>(in_channels, out_channels, 1, rng));
  }
  tensor_type forward(const tensor_type& x, const tensor_type& temb) const {
    const tensor_type proj = tp_->forward(temb);
    tensor_type h = c1_->forward(tensor_type(silu(n1_->forward(x))));
    h = tensor_type(h + proj.reshape({proj.size(0), proj.size(1), 1, 1}));
    h = c2_->forward(tensor_type(silu(n2_->forward(h))));
    return tensor_type(h + (skip_ ? skip_->forward(x) : x));
  }

 private:
  std::shared_ptr<nn::BasicGroupNorm<T, Device>> n1_, n2_;
  std::shared_ptr<nn::BasicConv2d<T, Device>> c1_, c2_, skip_;
  std::shared_ptr<nn::BasicLinear<T, Device>> tp_;
};

// The small ε-prediction UNet of W6 for 28×28 images (306,593 parameters with one channel and no
// classes; PyTorch's parameter names): conv3×3(C→32) → ResBlock(32) = h1 → conv3×3 s2 (32→64) →
// ResBlock(64) → ResBlock(64) → ConvT(64→32, 4, 2, 1) → concat h1 → ResBlock(64→32) →
// GN(8) + SiLU + conv3×3(32→C); time embedding sinusoidal(128) → Linear → SiLU → Linear. With
// num_classes > 0 a class embedding (num_classes + 1 rows, the last for "no class") is added to
// the time embedding, and forward takes the labels.
template <class T = float, class Device = cpu>
class UNet : public nn::BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;
  UNet(Rng& rng, index_t channels = 1, index_t num_classes = 0) : num_classes_(num_classes) {
    temb_ = this->register_module("temb", std::make_shared<nn::BasicSequential<T, Device>>(
                                              std::make_shared<nn::BasicLinear<T, Device>>(128, 128, rng),
                                              std::make_shared<nn::BasicSiLU<T, Device>>(),
                                              std::make_shared<nn::BasicLinear<T, Device>>(128, 128, rng)));
    cin_ = this->register_module("cin", std::make_shared<nn::BasicConv2d<T, Device>>(channels, 32, 3, nn::Conv2dOptions{.padding = 1}, rng));
    rb1_ = this->register_module("rb1", std::make_shared<ResBlock<T, Device>>(32, 32, 128, rng));
    down_ = this->register_module("down", std::make_shared<nn::BasicConv2d<T, Device>>(32, 64, 3, nn::Conv2dOptions{.stride = 2, .padding = 1}, rng));
    rb2_ = this->register_module("rb2", std::make_shared<ResBlock<T, Device>>(64, 64, 128, rng));
    rb3_ = this->register_module("rb3", std::make_shared<ResBlock<T, Device>>(64, 64, 128, rng));
    up_ = this->register_module("up", std::make_shared<nn::BasicConvTranspose2d<T, Device>>(
                                          64, 32, 4, nn::ConvTranspose2dOptions{.stride = 2, .padding = 1}, rng));
    rb4_ = this->register_module("rb4", std::make_shared<ResBlock<T, Device>>(64, 32, 128, rng));
    nout_ = this->register_module("nout", std::make_shared<nn::BasicGroupNorm<T, Device>>(8, 32));
    cout_ = this->register_module("cout", std::make_shared<nn::BasicConv2d<T, Device>>(32, channels, 3, nn::Conv2dOptions{.padding = 1}, rng));
    if (num_classes > 0)
      label_ = this->register_module("label_emb", std::make_shared<nn::BasicEmbedding<T, Device>>(num_classes + 1, 128, rng));
  }

  tensor_type forward(const tensor_type& x, const Tensor<index_t, Device>& t) const {
    if (num_classes_ > 0) throw_value_error("models::UNet", "a class-conditional UNet needs the labels");
    return run(x, t, {});
  }
  tensor_type forward(const tensor_type& x, const Tensor<index_t, Device>& t, const Tensor<index_t, Device>& labels) const {
    return run(x, t, labels);
  }

 private:
  tensor_type run(const tensor_type& x, const Tensor<index_t, Device>& t, const Tensor<index_t, Device>& labels) const {
    if (x.dim() != 4 || x.size(2) % 2 || x.size(3) % 2)
      throw_shape_error("models::UNet", "x must be [B, C, H, W] with even H and W", x.shape());
    tensor_type te = temb_->forward(timestep_embedding<T, Device>(t, 128));
    if (labels.defined()) {
      if (!label_) throw_value_error("models::UNet", "labels given to an unconditional UNet");
      te = tensor_type(te + label_->forward(labels));
    }
    const tensor_type h1 = rb1_->forward(cin_->forward(x), te);
    tensor_type h = down_->forward(h1);
    h = rb3_->forward(rb2_->forward(h, te), te);
    h = concat(std::vector<tensor_type>{up_->forward(h), h1}, 1);
    h = rb4_->forward(h, te);
    return cout_->forward(tensor_type(silu(nout_->forward(h))));
  }

  index_t num_classes_;
  std::shared_ptr<nn::BasicSequential<T, Device>> temb_;
  std::shared_ptr<nn::BasicConv2d<T, Device>> cin_, down_, cout_;
  std::shared_ptr<ResBlock<T, Device>> rb1_, rb2_, rb3_, rb4_;
  std::shared_ptr<nn::BasicConvTranspose2d<T, Device>> up_;
  std::shared_ptr<nn::BasicGroupNorm<T, Device>> nout_;
  std::shared_ptr<nn::BasicEmbedding<T, Device>> label_;
};

}  // namespace kiln::models
