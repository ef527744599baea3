// kiln/optim/sgd.hpp — stochastic gradient descent with momentum, dampening, Nesterov momentum,
// weight decay and maximize, step for step as torch.optim.SGD (PyTorch 1.13).
// Builds on optim/optimizer.hpp (groups, state, fused chunked updates).
#pragma once

#include <kiln/optim/optimizer.hpp>

#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln::optim {

struct SGDOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
  bool maximize = false;

  void validate(const std::string& who) const {
    const double inf = std::numeric_limits<double>::infinity();
    detail::check_range(who, "lr", lr, 0.0, inf);
    detail::check_range(who, "momentum", momentum, 0.0, inf);
    detail::check_range(who, "dampening", dampening, -inf, inf);
    detail::check_range(who, "weight_decay", weight_decay, 0.0, inf);
    if (nesterov && (momentum <= 0.0 || dampening != 0.0))
      detail::throw_optim_error(who, "Nesterov momentum needs momentum > 0 and dampening = 0 (got momentum " +
                                         std::to_string(momentum) + ", dampening " + std::to_string(dampening) + ")");
  }
  template <class F>
  void for_each_field(F f) {
    f("lr", lr), f("momentum", momentum), f("dampening", dampening), f("weight_decay", weight_decay);
    f("nesterov", nesterov), f("maximize", maximize);
  }
  template <class F>
  void for_each_field(F f) const {
    f("lr", lr), f("momentum", momentum), f("dampening", dampening), f("weight_decay", weight_decay);
    f("nesterov", nesterov), f("maximize", maximize);
  }
};

// SGD. With d the gradient (negated when maximizing) plus weight_decay·p, and μ the momentum:
//   first update:  b = d;   later: b = μ·b + (1 - dampening)·d
//   p = p - lr·(d + μ·b) with Nesterov, p - lr·b without, p - lr·d when μ = 0.
// State per parameter: "momentum_buffer" (only when μ != 0).
template <class T = float>
class BasicSGD : public OptimizerWithOptions<SGDOptions> {
 public:
  static_assert(std::is_same_v<T, float>, "kiln::optim::SGD updates float parameters");

  explicit BasicSGD(Parameters params, const SGDOptions& options = {}) { add_param_group(std::move(params), options); }
  explicit BasicSGD(std::vector<ParamGroup> groups) { add_groups(std::move(groups)); }

  const char* kind() const override { return "SGD"; }

 protected:
  std::vector<std::string> state_names() const override { return {"momentum_buffer"}; }

  void update(std::size_t group, Tensor<float> p, Tensor<float> g, ParamState& state) override {
    const SGDOptions& o = options_[group];
    const float neg_lr = static_cast<float>(-o.lr);
    const float momentum = static_cast<float>(o.momentum);
    const float keep = static_cast<float>(1.0 - o.dampening);
    const float weight_decay = static_cast<float>(o.weight_decay);
    Tensor<float> buffer;
    bool first = false;
    if (o.momentum != 0.0) {
      first = !state.has("momentum_buffer");
      buffer = state.zeros_if_missing("momentum_buffer", p.shape());
    }
    detail::update_in_chunks(
        p.numel(),
        [&](Tensor<float> p, Tensor<float> g, Tensor<float> b) {
          detail::with_effective_grad(p, g, o.maximize, weight_decay, [&](const auto& d) {
            if (o.momentum == 0.0) {
              p.assign(p + neg_lr * d);
              return;
            }
            if (first)
              b.assign(d);
            else
              b.assign(b * momentum + keep * d);
            if (o.nesterov)
              p.assign(p + neg_lr * (d + momentum * b));
            else
              p.assign(p + neg_lr * b);
          });
        },
        p, g, buffer);
  }
};
// A class template so that its update kernels are compiled only where the optimizer is used.
using SGD = BasicSGD<>;

}  // namespace kiln::optim
