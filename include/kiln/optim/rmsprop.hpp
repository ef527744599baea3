// kiln/optim/rmsprop.hpp — RMSprop with smoothing constant alpha, eps, the centered variant,
// momentum, weight decay and maximize, step for step as torch.optim.RMSprop (PyTorch 1.13).
// Builds on optim/optimizer.hpp (groups, state, fused chunked updates).
#pragma once

#include <kiln/optim/optimizer.hpp>

#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln::optim {

struct RMSpropOptions {
  double lr = 0.01;
  double alpha = 0.99;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double momentum = 0.0;
  bool centered = false;
  bool maximize = false;

  void validate(const std::string& who) const {
    const double inf = std::numeric_limits<double>::infinity();
    detail::check_range(who, "lr", lr, 0.0, inf);
    detail::check_range(who, "alpha", alpha, 0.0, inf);
    detail::check_range(who, "eps", eps, 0.0, inf);
    detail::check_range(who, "weight_decay", weight_decay, 0.0, inf);
    detail::check_range(who, "momentum", momentum, 0.0, inf);
  }
  template <class F>
  void for_each_field(F f) {
    f("lr", lr), f("alpha", alpha), f("eps", eps), f("weight_decay", weight_decay), f("momentum", momentum);
    f("centered", centered), f("maximize", maximize);
  }
  template <class F>
  void for_each_field(F f) const {
    f("lr", lr), f("alpha", alpha), f("eps", eps), f("weight_decay", weight_decay), f("momentum", momentum);
    f("centered", centered), f("maximize", maximize);
  }
};

// RMSprop (Hinton, Coursera lecture 6e; centered form: Graves 2013, eq. 38-40). With d the
// gradient (negated when maximizing) plus weight_decay·p:
//   s = α·s + (1-α)·d²;   centered: a = α·a + (1-α)·d and the denominator uses s - a²
//   r = sqrt(s [- a²]) + eps
//   momentum μ > 0:  b = μ·b + d / r,  p = p - lr·b;   else  p = p - lr·d / r
// State per parameter: "square_avg", "grad_avg" (centered), "momentum_buffer" (μ > 0).
template <class T = float>
class BasicRMSprop : public OptimizerWithOptions<RMSpropOptions> {
 public:
  static_assert(std::is_same_v<T, float>, "kiln::optim::RMSprop updates float parameters");

  explicit BasicRMSprop(Parameters params, const RMSpropOptions& options = {}) {
    add_param_group(std::move(params), options);
  }
  explicit BasicRMSprop(std::vector<ParamGroup> groups) { add_groups(std::move(groups)); }

  const char* kind() const override { return "RMSprop"; }

 protected:
  std::vector<std::string> state_names() const override { return {"square_avg", "grad_avg", "momentum_buffer"}; }

  void update(std::size_t group, Tensor<float> p, Tensor<float> g, ParamState& state) override {
    const RMSpropOptions& o = options_[group];
    const float alpha = static_cast<float>(o.alpha), one_minus_alpha = static_cast<float>(1.0 - o.alpha);
    const float eps = static_cast<float>(o.eps);
    const float neg_lr = static_cast<float>(-o.lr);
    const float momentum = static_cast<float>(o.momentum);
    const float weight_decay = static_cast<float>(o.weight_decay);
    Tensor<float> square_avg = state.zeros_if_missing("square_avg", p.shape());
    Tensor<float> grad_avg, buffer;
    if (o.centered) grad_avg = state.zeros_if_missing("grad_avg", p.shape());
    if (o.momentum > 0.0) buffer = state.zeros_if_missing("momentum_buffer", p.shape());

    detail::update_in_chunks(
        p.numel(),
        [&](Tensor<float> p, Tensor<float> g, Tensor<float> s, Tensor<float> a, Tensor<float> b) {
          detail::with_effective_grad(p, g, o.maximize, weight_decay, [&](const auto& d) {
            s.assign(s * alpha + one_minus_alpha * d * d);
            auto step = [&](const auto& r) {
              if (o.momentum > 0.0) {
                // μ·b rounded on its own, as PyTorch's buf.mul_(μ).addcdiv_(d, r) (one
                // expression could be fused into an FMA); the chunk is in cache for both passes.
                b.assign(b * momentum);
                b.assign(b + d / r);
                p.assign(p + neg_lr * b);
              } else {
                p.assign(p + neg_lr * d / r);
              }
            };
            if (o.centered) {
              a.assign(a * alpha + one_minus_alpha * d);
              step(kiln::sqrt(s + -1.0f * a * a) + eps);
            } else {
              step(kiln::sqrt(s) + eps);
            }
          });
        },
        p, g, square_avg, grad_avg, buffer);
  }
};
// A class template so that its update kernels are compiled only where the optimizer is used.
using RMSprop = BasicRMSprop<>;

}  // namespace kiln::optim
