// kiln/models/vae.hpp — the encoder/decoder family with reparameterization (VAE, β-VAE): a
// template over the user's own encoder and decoder networks giving the ELBO (Bernoulli-logit or
// Gaussian likelihood, β weighting, KL warm-up), sampling from the prior, reconstruction, per-image
// negative ELBO (anomaly scores) and the importance-weighted (IWAE) estimate of log p(x).
// Builds on nn/module.hpp (the two networks are children), ops/loss.hpp, ops/reduce.hpp and the
// kiln Rng (the noise of the reparameterization trick).
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/index.hpp>
#include <kiln/ops/loss.hpp>
#include <kiln/ops/reduce.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <memory>
#include <numbers>
#include <string>
#include <utility>

namespace kiln::models {

// The likelihood p(x | z) the decoder's output parameterizes.
enum class Likelihood {
  bernoulli_logits,  // the decoder gives logits; −log p = Σ BCE-with-logits(logit, x)
  gaussian,          // the decoder gives the mean; −log p = Σ ½((x − m)²/σ² + log 2πσ²), σ fixed
};

struct VAEOptions {
  Likelihood likelihood = Likelihood::bernoulli_logits;
  double gaussian_sigma = 0.1;  // σ of the Gaussian likelihood
  double beta = 1.0;            // weight of the KL term (β-VAE)
  long kl_warmup_steps = 0;     // the KL weight grows linearly from 1/N to 1 over the first N steps
};

// The terms of one ELBO evaluation, averaged over the batch (nats per example).
template <class T, class Device>
struct ELBO {
  Tensor<T, Device> loss;            // recon + β·w·KL, the tensor to call backward() on
  Tensor<T, Device> reconstruction;  // −E_q log p(x | z), one sample of z
  Tensor<T, Device> kl;              // KL(q(z | x) ‖ N(0, I)), analytic
  double kl_weight = 1.0;            // β·w at this step
  Tensor<T, Device> logits;          // the decoder's output for the sampled z, shaped like x
  Tensor<T, Device> mu, logvar, z;   // the posterior and its sample
};

// Module concept: a network mapping a tensor to a tensor (forward(const Tensor&)).
template <class M, class T, class Device>
concept TensorNetwork = std::derived_from<M, nn::BasicModule<T, Device>> && requires(M& m, const Tensor<T, Device>& x) {
  { m.forward(x) } -> std::convertible_to<Tensor<T, Device>>;
};

// A VAE over an Encoder whose output is [B, 2·latent] (the first half μ, the second log σ² of
// q(z | x) = N(μ, σ²)) and a Decoder mapping z [B, latent] to the likelihood's parameters, any
// shape with x's number of elements per example (it is reshaped to x's shape). The two are
// registered as the children "encoder" and "decoder".
template <class Encoder, class Decoder, class T = float, class Device = cpu>
  requires TensorNetwork<Encoder, T, Device> && TensorNetwork<Decoder, T, Device>
class VAE : public nn::BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  VAE(std::shared_ptr<Encoder> encoder, std::shared_ptr<Decoder> decoder, index_t latent_dim, VAEOptions options = {})
      : latent_(latent_dim), options_(options) {
    if (latent_dim < 1) throw_value_error("models::VAE", "the latent dimension must be positive, got " + std::to_string(latent_dim));
    if (!(options.gaussian_sigma > 0))
      throw_value_error("models::VAE", "gaussian_sigma must be positive, got " + std::to_string(options.gaussian_sigma));
    if (!(options.beta >= 0)) throw_value_error("models::VAE", "beta must be non-negative, got " + std::to_string(options.beta));
    encoder_ = this->register_module("encoder", std::move(encoder));
    decoder_ = this->register_module("decoder", std::move(decoder));
  }

  Encoder& encoder() { return *encoder_; }
  Decoder& decoder() { return *decoder_; }
  index_t latent_dim() const { return latent_; }
  const VAEOptions& options() const { return options_; }

  // q(z | x): μ and log σ², each [B, latent].
  std::pair<tensor_type, tensor_type> encode(const tensor_type& x) {
    tensor_type h = encoder_->forward(x);
    if (h.dim() != 2 || h.size(1) != 2 * latent_)
      throw_shape_error("models::VAE::encode",
                        "the encoder must give [B, 2 * latent] = [B, " + std::to_string(2 * latent_) + "] (mu then logvar)",
                        h.shape());
    return {h.slice(1, 0, latent_), h.slice(1, latent_, 2 * latent_)};
  }

  // z = μ + σ·ε, ε ~ N(0, I) from `rng` (differentiable in μ and log σ²).
  tensor_type reparameterize(const tensor_type& mu, const tensor_type& logvar, Rng& rng) const {
    const tensor_type eps = randn<T, Device>(mu.shape(), rng);
    return tensor_type(mu + exp(logvar * T(0.5)) * eps);
  }

  // The decoder's output for z, reshaped to `like` (x's shape) when given.
  tensor_type decode(const tensor_type& z, const Shape& like = Shape{}) {
    tensor_type out = decoder_->forward(z);
    if (like.ndim == 0) return out;
    if (out.numel() != like.numel())
      throw_shape_error("models::VAE::decode", "the decoder's output does not have the input's number of elements", out.shape(),
                        like);
    return out.shape() == like ? out : out.reshape(like);
  }

  // −log p(x | decoder output) per example, [B].
  tensor_type reconstruction_nll(const tensor_type& out, const tensor_type& x) const {
    const index_t b = x.size(0);
    if (options_.likelihood == Likelihood::bernoulli_logits) {
      const tensor_type terms = binary_cross_entropy_with_logits(out, x, LossReduction::none);
      return sum(terms.reshape({b, -1}), 1);
    }
    const double s = options_.gaussian_sigma;
    const T scale = static_cast<T>(0.5 / (s * s));
    const T constant = static_cast<T>(0.5 * std::log(2 * std::numbers::pi * s * s));
    const tensor_type terms = square(out - x) * scale + constant;
    return sum(terms.reshape({b, -1}), 1);
  }

  // β·w(step): w = min(1, (step + 1) / kl_warmup_steps) during the warm-up, else 1.
  double kl_weight(long step) const {
    double w = 1.0;
    if (options_.kl_warmup_steps > 0 && step >= 0)
      w = std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(options_.kl_warmup_steps));
    return options_.beta * w;
  }

  // The ELBO of a batch x [B, ...] with one reparameterized sample; `step` drives the KL warm-up
  // (−1: no warm-up, full weight β).
  ELBO<T, Device> elbo(const tensor_type& x, Rng& rng, long step = -1) {
    if (x.dim() < 1 || x.size(0) < 1) throw_shape_error("models::VAE::elbo", "x must be a non-empty batch [B, ...]", x.shape());
    ELBO<T, Device> r;
    std::tie(r.mu, r.logvar) = encode(x);
    r.z = reparameterize(r.mu, r.logvar, rng);
    r.logits = decode(r.z, x.shape());
    r.reconstruction = mean(reconstruction_nll(r.logits, x));
    r.kl = gaussian_kl(r.mu, r.logvar, LossReduction::mean);
    r.kl_weight = kl_weight(step);
    r.loss = tensor_type(r.reconstruction + r.kl * static_cast<T>(r.kl_weight));
    return r;
  }

  // Negative ELBO per example [B] (β = 1, no warm-up), without recording: the anomaly score.
  // With `samples` > 1 the reconstruction term is averaged over that many draws of z.
  tensor_type negative_elbo(const tensor_type& x, Rng& rng, int samples = 1) {
    NoGrad guard;
    auto [mu, logvar] = encode(x);
    tensor_type rec = zeros<T, Device>(Shape{x.size(0)});
    for (int s = 0; s < samples; ++s) rec = tensor_type(rec + reconstruction_nll(decode(reparameterize(mu, logvar, rng), x.shape()), x));
    return tensor_type(rec * static_cast<T>(1.0 / samples) + gaussian_kl(mu, logvar, LossReduction::none));
  }

  // The mean of p(x | z) for z drawn from the prior N(0, I): n examples, the decoder's shape.
  tensor_type sample(index_t n, Rng& rng) {
    NoGrad guard;
    return mean_of(decoder_->forward(randn<T, Device>(Shape{n, latent_}, rng)));
  }

  // The mean of p(x | z) at z = μ(x).
  tensor_type reconstruct(const tensor_type& x) {
    NoGrad guard;
    return mean_of(decode(encode(x).first, x.shape()));
  }

  // The mean of p(x | z) along the straight line from z(a) = μ(a) to z(b) = μ(b), `steps` points
  // per pair (a and b are [B, ...] batches of the same size; the result is [B·steps, ...] with the
  // points of each pair together).
  tensor_type interpolate(const tensor_type& a, const tensor_type& b, index_t steps) {
    NoGrad guard;
    if (steps < 2) throw_value_error("models::VAE::interpolate", "steps must be at least 2, got " + std::to_string(steps));
    const tensor_type za = encode(a).first.contiguous(), zb = encode(b).first.contiguous();
    if (za.shape() != zb.shape()) throw_shape_error("models::VAE::interpolate", "a and b must have the same batch size", a.shape(), b.shape());
    const index_t n = za.size(0);
    tensor_type z = tensor_type::uninitialized(Shape{n * steps, latent_});
    for (index_t i = 0; i < n; ++i)
      for (index_t s = 0; s < steps; ++s) {
        const T t = static_cast<T>(static_cast<double>(s) / static_cast<double>(steps - 1));
        for (index_t j = 0; j < latent_; ++j)
          z.data()[(i * steps + s) * latent_ + j] = (1 - t) * za.data()[i * latent_ + j] + t * zb.data()[i * latent_ + j];
      }
    return mean_of(decoder_->forward(z));
  }

  // The importance-weighted estimate of log p(x) per example [B] with k samples of q(z | x)
  // (Burda et al. 2016): log (1/k) Σ_k p(x | z_k) p(z_k) / q(z_k | x), computed as a log-sum-exp.
  // A lower bound of log p(x) that tightens as k grows; k = 1 is the ELBO.
  tensor_type importance_weighted_log_likelihood(const tensor_type& x, int k, Rng& rng) {
    NoGrad guard;
    if (k < 1) throw_value_error("models::VAE::importance_weighted_log_likelihood", "k must be positive, got " + std::to_string(k));
    auto [mu, logvar] = encode(x);
    const index_t b = x.size(0);
    tensor_type log_w = tensor_type::uninitialized(Shape{k, b});
    for (int s = 0; s < k; ++s) {
      const tensor_type eps = randn<T, Device>(mu.shape(), rng);
      const tensor_type z = mu + exp(logvar * T(0.5)) * eps;
      const tensor_type log_px = -reconstruction_nll(decode(z, x.shape()), x);
      // log N(z; 0, I) − log N(z; μ, σ²) = Σ −½z² + ½ε² + ½ log σ² (the 2π terms cancel).
      const tensor_type log_ratio = sum((square(eps) - square(z) + logvar) * T(0.5), 1);
      const tensor_type lw = log_px + log_ratio;
      const tensor_type lwc = lw.contiguous();
      for (index_t i = 0; i < b; ++i) log_w.data()[s * b + i] = lwc.data()[i];
    }
    return tensor_type(logsumexp(log_w, 0) - static_cast<T>(std::log(static_cast<double>(k))));
  }

 private:
  // The decoder's output turned into the mean of p(x | z).
  tensor_type mean_of(const tensor_type& out) const {
    if (options_.likelihood == Likelihood::bernoulli_logits) return tensor_type(sigmoid(out));
    return out;
  }

  std::shared_ptr<Encoder> encoder_;
  std::shared_ptr<Decoder> decoder_;
  index_t latent_;
  VAEOptions options_;
};

}  // namespace kiln::models
