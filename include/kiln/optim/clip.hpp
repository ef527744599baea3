// kiln/optim/clip.hpp — gradient clipping as torch.nn.utils: clip_grad_norm_ (the norm of all
// gradients seen as one vector, p = 2, any p > 0, or infinity) and clip_grad_value_.
// Builds on optim/optimizer.hpp (Parameters), expr/ops.hpp and backend/cpu/thread_pool.hpp.
#pragma once

#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/optim/optimizer.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace kiln::optim {

namespace detail {

// Gradients are summed in blocks of this many elements, each block in double, the block sums added
// in order: the result does not depend on the number of threads.
inline constexpr index_t norm_block_elements = 16384;

// Σ |x|^p over the n elements of x (p = 2: Σ x², p = inf: max |x|, NaN propagating), in double.
inline double power_sum(const float* x, index_t n, double p) {
  const bool is_inf = std::isinf(p), is_two = p == 2.0, is_one = p == 1.0;
  const index_t blocks = (n + norm_block_elements - 1) / norm_block_elements;
  std::vector<double> partial(static_cast<std::size_t>(blocks), 0.0);
  backend::cpu::parallel_for(0, blocks, 4, [&](index_t first, index_t last) {
    for (index_t b = first; b < last; ++b) {
      const index_t begin = b * norm_block_elements, end = std::min(n, begin + norm_block_elements);
      double acc[4] = {0.0, 0.0, 0.0, 0.0};
      index_t i = begin;
      if (is_inf) {
        bool nan = false;
        for (; i < end; ++i) {
          const double a = std::fabs(static_cast<double>(x[i]));
          nan = nan || std::isnan(a);
          acc[0] = std::max(acc[0], a);
        }
        partial[static_cast<std::size_t>(b)] = nan ? std::numeric_limits<double>::quiet_NaN() : acc[0];
        continue;
      }
      auto term = [&](float v) {
        const double a = static_cast<double>(v);
        if (is_two) return a * a;
        if (is_one) return std::fabs(a);
        return std::pow(std::fabs(a), p);
      };
      for (; i + 4 <= end; i += 4)
        for (int k = 0; k < 4; ++k) acc[k] += term(x[i + k]);
      for (; i < end; ++i) acc[0] += term(x[i]);
      partial[static_cast<std::size_t>(b)] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
  });
  double total = 0.0;
  for (double v : partial) {
    if (is_inf)
      total = (std::isnan(v) || std::isnan(total)) ? std::numeric_limits<double>::quiet_NaN() : std::max(total, v);
    else
      total += v;
  }
  return total;
}

}  // namespace detail

// Scales the gradients of `params` so that their total norm (all gradients seen as one vector) is
// at most max_norm, as torch.nn.utils.clip_grad_norm_: total = (Σ_i Σ |g_i|^p)^(1/p) (the largest
// |g| for p = inf), computed in double; coef = max_norm / (total + 1e-6) formed in float as
// PyTorch does; the gradients are multiplied by coef only when it is below 1 (or NaN, which
// PyTorch's clamp lets through). Parameters without a gradient are skipped. Returns the total norm
// (0 when no parameter has a gradient). error_if_nonfinite throws when the norm is NaN or infinite.
inline double clip_grad_norm_(const Parameters& params, double max_norm, double norm_type = 2.0,
                              bool error_if_nonfinite = false) {
  if (!(norm_type > 0.0))
    detail::throw_optim_error("clip_grad_norm_", "norm_type must be positive or infinity, got " + std::to_string(norm_type));
  if (std::isnan(max_norm)) detail::throw_optim_error("clip_grad_norm_", "max_norm is NaN");
  std::vector<Tensor<float>> grads;
  for (const Tensor<float>& p : params) {
    if (!p.defined()) continue;
    Tensor<float> g = p.grad();
    if (g.defined()) grads.push_back(g.detach());
  }
  if (grads.empty()) return 0.0;
  NoGrad guard;
  const bool is_inf = std::isinf(norm_type);
  double sum = 0.0;
  for (const Tensor<float>& g : grads) {
    const Tensor<float> c = g.contiguous();
    const double s = detail::power_sum(c.data(), c.numel(), norm_type);
    if (is_inf)
      sum = (std::isnan(s) || std::isnan(sum)) ? std::numeric_limits<double>::quiet_NaN() : std::max(sum, s);
    else
      sum += s;
  }
  const double total = is_inf ? sum : (norm_type == 2.0 ? std::sqrt(sum) : std::pow(sum, 1.0 / norm_type));
  if (error_if_nonfinite && !std::isfinite(total))
    detail::throw_optim_error("clip_grad_norm_", "the total norm of order " + std::to_string(norm_type) +
                                                     " of the gradients is " + std::to_string(total) +
                                                     ", so they cannot be clipped (pass error_if_nonfinite = false "
                                                     "to scale them by the non-finite norm anyway)");
  const float coef = static_cast<float>(max_norm) / (static_cast<float>(total) + 1e-6f);
  if (!(coef >= 1.0f))
    for (Tensor<float>& g : grads) g.assign(g * coef);
  return total;
}

// Clamps every gradient of `params` into [-clip_value, clip_value] in place (NaN stays NaN), as
// torch.nn.utils.clip_grad_value_. Parameters without a gradient are skipped.
inline void clip_grad_value_(const Parameters& params, double clip_value) {
  if (!(clip_value >= 0.0))
    detail::throw_optim_error("clip_grad_value_", "clip_value must be non-negative, got " + std::to_string(clip_value));
  NoGrad guard;
  for (const Tensor<float>& p : params) {
    if (!p.defined()) continue;
    Tensor<float> g = p.grad();
    if (!g.defined()) continue;
    g = g.detach();
    g.assign(kiln::clamp(g, -clip_value, clip_value));
  }
}

}  // namespace kiln::optim
