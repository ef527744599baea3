// kiln/autograd/gradcheck.hpp — gradcheck and gradgradcheck: compare the gradients autograd
// computes with central finite differences in float64, for kiln's ops and for users' own.
// Builds on autograd/graph.hpp, ops/reduce.hpp and the CPU backend (checks run in float64 on the CPU).
#pragma once

#include <kiln/backend/cpu/backend.hpp>
#include <kiln/autograd/graph.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/ops/reduce.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace kiln {

struct GradcheckResult {
  bool ok = true;
  double max_error = 0;  // largest |analytic − numeric| seen
  std::string message;   // what failed first: input, element, both values
  explicit operator bool() const { return ok; }
};

struct GradcheckOptions {
  double eps = 1e-6;    // finite-difference step
  double atol = 1e-5;   // pass when |a − n| <= atol + rtol·|n|
  double rtol = 1e-3;
  std::uint64_t seed = 1234;  // of the random output projection
};

namespace detail {

// L(x) = Σ f(x) ⊙ r for a fixed random r, so one backward checks the whole vector-Jacobian
// product along r; numerically, ∂L/∂x_i ≈ (L(x + εe_i) − L(x − εe_i)) / 2ε.
inline GradcheckResult compare_gradients(const std::function<double()>& loss_value,
                                         const std::vector<Tensor<double>>& inputs,
                                         const std::vector<Tensor<double>>& analytic, const GradcheckOptions& o,
                                         const char* what) {
  GradcheckResult res;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    Tensor<double> x = inputs[k].detach();
    if (!x.is_contiguous())
      throw_value_error("gradcheck", "inputs must be contiguous (they are perturbed element by element)");
    const index_t n = x.numel();
    for (index_t i = 0; i < n; ++i) {
      double& xi = x.data()[i];
      const double saved = xi;
      xi = saved + o.eps;
      const double up = loss_value();
      xi = saved - o.eps;
      const double down = loss_value();
      xi = saved;
      const double numeric = (up - down) / (2 * o.eps);
      const double a = analytic[k].defined() ? analytic[k].contiguous().data()[i] : 0.0;
      const double err = std::fabs(a - numeric);
      if (err > res.max_error) res.max_error = err;
      if (!(err <= o.atol + o.rtol * std::fabs(numeric)) && res.ok) {
        res.ok = false;
        res.message = std::string(what) + ": input " + std::to_string(k) + ", element " + std::to_string(i) +
                      ": analytic " + std::to_string(a) + " vs numeric " + std::to_string(numeric);
      }
    }
  }
  return res;
}

inline Tensor<double> projection_like(const Tensor<double>& y, Rng& rng) {
  return randn<double>(y.shape(), rng);
}

}  // namespace detail

// Checks the gradients of f at `inputs` (float64 leaves; they are made to require grad).
inline GradcheckResult gradcheck(const std::function<Tensor<double>(const std::vector<Tensor<double>>&)>& f,
                                 std::vector<Tensor<double>> inputs, GradcheckOptions o = {}) {
  for (auto& x : inputs) x = x.detach().contiguous().clone().requires_grad();
  Rng rng(o.seed);
  Tensor<double> y = f(inputs);
  Tensor<double> r = detail::projection_like(y, rng);
  std::vector<Tensor<double>> analytic = grad<double, cpu>({y}, inputs, {r}, false, false, true);
  auto loss_value = [&]() {
    NoGrad guard;
    Tensor<double> v = f(inputs);
    return sum(v * r).item();
  };
  return detail::compare_gradients(loss_value, inputs, analytic, o, "gradcheck");
}

// Checks second derivatives: the gradient of Σ (∂L/∂x) ⊙ s (with create_graph) against finite
// differences of the analytic first gradient.
inline GradcheckResult gradgradcheck(const std::function<Tensor<double>(const std::vector<Tensor<double>>&)>& f,
                                     std::vector<Tensor<double>> inputs, GradcheckOptions o = {}) {
  for (auto& x : inputs) x = x.detach().contiguous().clone().requires_grad();
  Rng rng(o.seed);
  Tensor<double> y0 = [&] {
    NoGrad guard;
    return f(inputs);
  }();
  Tensor<double> r = detail::projection_like(y0, rng);
  std::vector<Tensor<double>> s;
  for (const auto& x : inputs) s.push_back(randn<double>(x.shape(), rng));
  // G(x) = Σ_k Σ (∂L/∂x_k) ⊙ s_k, a scalar function of x.
  auto first_grad_projection = [&](bool keep_graph) {
    Tensor<double> y = f(inputs);
    auto g = grad<double, cpu>({y}, inputs, {r}, true, true, true);
    Tensor<double> total(Shape{});
    for (std::size_t k = 0; k < g.size(); ++k)
      if (g[k].defined()) total = Tensor<double>(total + sum(g[k] * s[k]));
    if (!keep_graph) total = total.detach();
    return total;
  };
  Tensor<double> G = first_grad_projection(true);
  std::vector<Tensor<double>> analytic;
  if (G.tracks_grad())
    analytic = grad<double, cpu>({G}, inputs, {}, false, false, true);
  else
    analytic.resize(inputs.size());
  auto value = [&]() { return first_grad_projection(false).item(); };
  return detail::compare_gradients(value, inputs, analytic, o, "gradgradcheck");
}

}  // namespace kiln
