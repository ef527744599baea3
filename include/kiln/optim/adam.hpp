// kiln/optim/adam.hpp — Adam (L2 weight decay added to the gradient) and AdamW (decoupled weight
// decay), with AMSGrad and maximize, step for step as torch.optim.Adam / AdamW (PyTorch 1.13).
// Builds on optim/optimizer.hpp (groups, state, fused chunked updates).
#pragma once

#include <kiln/optim/optimizer.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln::optim {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;
  bool maximize = false;

  void validate(const std::string& who) const {
    const double inf = std::numeric_limits<double>::infinity();
    detail::check_range(who, "lr", lr, 0.0, inf);
    detail::check_range(who, "beta1", beta1, 0.0, 1.0, true);
    detail::check_range(who, "beta2", beta2, 0.0, 1.0, true);
    detail::check_range(who, "eps", eps, 0.0, inf);
    detail::check_range(who, "weight_decay", weight_decay, 0.0, inf);
  }
  template <class F>
  void for_each_field(F f) {
    f("lr", lr), f("beta1", beta1), f("beta2", beta2), f("eps", eps), f("weight_decay", weight_decay);
    f("amsgrad", amsgrad), f("maximize", maximize);
  }
  template <class F>
  void for_each_field(F f) const {
    f("lr", lr), f("beta1", beta1), f("beta2", beta2), f("eps", eps), f("weight_decay", weight_decay);
    f("amsgrad", amsgrad), f("maximize", maximize);
  }
};

// The same fields; only the default weight decay differs (PyTorch's AdamW uses 0.01).
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
  bool maximize = false;

  AdamOptions as_adam() const { return {lr, beta1, beta2, eps, weight_decay, amsgrad, maximize}; }
  void validate(const std::string& who) const { as_adam().validate(who); }
  template <class F>
  void for_each_field(F f) {
    f("lr", lr), f("beta1", beta1), f("beta2", beta2), f("eps", eps), f("weight_decay", weight_decay);
    f("amsgrad", amsgrad), f("maximize", maximize);
  }
  template <class F>
  void for_each_field(F f) const {
    f("lr", lr), f("beta1", beta1), f("beta2", beta2), f("eps", eps), f("weight_decay", weight_decay);
    f("amsgrad", amsgrad), f("maximize", maximize);
  }
};

namespace detail {

// One Adam/AdamW update of p from gradient g at step t (Kingma & Ba 2015, Algorithm 1, with the
// bias corrections folded into the step size and eps outside the square root, as PyTorch):
//   d = g (negated when maximizing) [+ weight_decay·p for Adam]
//   m = β1·m + (1-β1)·d,   v = β2·v + (1-β2)·d²,   v̂max = max(v̂max, v) with AMSGrad
//   p = p·(1 - lr·weight_decay) for AdamW (Loshchilov & Hutter 2019, decoupled decay)
//   p = p - (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps)
// Scalars are formed in double and rounded to float once, like PyTorch's Python-side scalars.
template <class T>
void adam_update(const AdamOptions& o, bool decoupled, Tensor<T> p, Tensor<T> g, ParamState& state) {
  const double t = static_cast<double>(state.step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, t);
  const float neg_step_size = static_cast<float>(-(o.lr / bias_correction1));
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float beta1 = static_cast<float>(o.beta1), one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
  const float beta2 = static_cast<float>(o.beta2), one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
  const float eps = static_cast<float>(o.eps);
  const float l2 = decoupled ? 0.0f : static_cast<float>(o.weight_decay);
  const bool decay = decoupled && o.weight_decay != 0.0;
  const float decay_factor = static_cast<float>(1.0 - o.lr * o.weight_decay);

  Tensor<float>& exp_avg = state.zeros_if_missing("exp_avg", p.shape());
  Tensor<float>& exp_avg_sq = state.zeros_if_missing("exp_avg_sq", p.shape());
  Tensor<float> max_exp_avg_sq;
  if (o.amsgrad) max_exp_avg_sq = state.zeros_if_missing("max_exp_avg_sq", p.shape());

  update_in_chunks(
      p.numel(),
      [&](Tensor<float> p, Tensor<float> g, Tensor<float> m, Tensor<float> v, Tensor<float> vmax) {
        with_effective_grad(p, g, o.maximize, l2, [&](const auto& d) {
          m.assign(m * beta1 + one_minus_beta1 * d);
          v.assign(v * beta2 + one_minus_beta2 * d * d);
        });
        Tensor<float> second = v;
        if (o.amsgrad) {
          vmax.assign(kiln::maximum(vmax, v));
          second = vmax;
        }
        // The decay is its own rounding step, as in PyTorch (in one expression the compiler may
        // fuse p·decay + step into one FMA); the chunk is still in cache for the second pass.
        if (decay) p.assign(p * decay_factor);
        p.assign(p + neg_step_size * m / (kiln::sqrt(second) / bias_correction2_sqrt + eps));
      },
      p, g, exp_avg, exp_avg_sq, max_exp_avg_sq);
}

}  // namespace detail

// Adam with L2 weight decay (the decay term is added to the gradient). State per parameter:
// "exp_avg", "exp_avg_sq", and "max_exp_avg_sq" with AMSGrad.
template <class T = float>
class BasicAdam : public OptimizerWithOptions<AdamOptions> {
 public:
  static_assert(std::is_same_v<T, float>, "kiln::optim::Adam updates float parameters");

  explicit BasicAdam(Parameters params, const AdamOptions& options = {}) { add_param_group(std::move(params), options); }
  explicit BasicAdam(std::vector<ParamGroup> groups) { add_groups(std::move(groups)); }

  const char* kind() const override { return "Adam"; }

 protected:
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}; }
  void update(std::size_t group, Tensor<float> p, Tensor<float> g, ParamState& state) override {
    detail::adam_update(options_[group], false, std::move(p), std::move(g), state);
  }
};
// A class template so that its update kernels are compiled only where the optimizer is used.
using Adam = BasicAdam<>;

// AdamW: Adam with decoupled weight decay, p ← p·(1 - lr·weight_decay) before the Adam step.
// State per parameter as Adam's.
template <class T = float>
class BasicAdamW : public OptimizerWithOptions<AdamWOptions> {
 public:
  static_assert(std::is_same_v<T, float>, "kiln::optim::AdamW updates float parameters");

  explicit BasicAdamW(Parameters params, const AdamWOptions& options = {}) { add_param_group(std::move(params), options); }
  explicit BasicAdamW(std::vector<ParamGroup> groups) { add_groups(std::move(groups)); }

  const char* kind() const override { return "AdamW"; }

 protected:
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}; }
  void update(std::size_t group, Tensor<float> p, Tensor<float> g, ParamState& state) override {
    detail::adam_update(options_[group].as_adam(), true, std::move(p), std::move(g), state);
  }
};
// A class template so that its update kernels are compiled only where the optimizer is used.
using AdamW = BasicAdamW<>;

}  // namespace kiln::optim
