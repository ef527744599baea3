// kiln/ops/norm.hpp — normalizations with gradients of any order, as torch.nn.functional:
// layer_norm, rms_norm, group_norm and batch_norm (batch statistics with running-statistics updates
// in training, running statistics in evaluation).
// Builds on the fused kernels of backend/cpu/norm.hpp (forward and first-order backward on the
// CPU) and on ops/reduce.hpp with fused expressions (gradients under create_graph, other devices).
#pragma once

#include <kiln/autograd/fused.hpp>
#include <kiln/autograd/graph.hpp>
#include <kiln/backend/cpu/norm.hpp>
#include <kiln/core/device.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/expr/ops.hpp>
#include <kiln/ops/reduce.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

// How each op computes:
// - Forward on kiln::cpu: one fused kernel pass over a contiguous copy of the input (no copy when
//   the input already is contiguous), keeping the per-group mean and 1/sqrt(var + eps) for the
//   backward.
// - Plain backward (grad mode off): the fused backward kernel, computing only the gradients the
//   graph needs.
// - Backward under create_graph (grad mode on): the same formulas composed from tracked ops
//   (mean, rsqrt, products), recomputing the statistics from the saved inputs, so the gradient can
//   be differentiated again (gradient penalties through normalized layers).
// - Other devices: the whole op composed from tracked expressions and reductions, until the
//   device's Backend offers fused norm kernels.

namespace kiln {

namespace detail {

// A contiguous untracked view or copy of t, or an undefined tensor when t is undefined.
template <class T, class D>
Tensor<T, D> raw_contiguous(const Tensor<T, D>& t) {
  return t.defined() ? t.detach().contiguous() : Tensor<T, D>();
}
// t's elements, or nullptr for an undefined tensor (an optional kernel argument).
template <class T, class D>
T* data_or_null(const Tensor<T, D>& t) {
  return t.defined() ? t.data() : nullptr;
}

// An affine parameter (weight, bias) or running statistic, when given, has `expected` shape.
template <class T, class D>
void check_norm_parameter(const char* op, const char* what, const Tensor<T, D>& p, const Shape& expected,
                          const Shape& input_shape) {
  if (p.defined() && p.shape() != expected)
    throw ShapeError(std::string("kiln::") + op + ": the " + what + " must have shape " + to_string(expected) +
                     " for an input of shape " + to_string(input_shape) + ", got " + to_string(p.shape()));
}

inline void check_norm_eps(const char* op, double eps) {
  if (!(eps >= 0.0) || !std::isfinite(eps))
    throw_value_error(op, "eps must be finite and >= 0, got " + std::to_string(eps));
}

// Zeros for every gradient the node needs (inputs with no elements, whose gradients are empty or
// sums over nothing).
template <class T, class D, class Node>
std::vector<Tensor<T, D>> zero_gradients(const Node& node, const std::vector<Shape>& shapes) {
  std::vector<Tensor<T, D>> grads(shapes.size());
  for (std::size_t i = 0; i < shapes.size(); ++i)
    if (node.needs(i)) grads[i] = Tensor<T, D>(shapes[i]);
  return grads;
}

// Which elements share a statistic in the composed formulas:
//   rows     t [R, M]: each row (layer norm, RMS norm, group norm seen as [N·G, C/G·HW]);
//   channels t [N, C, HW]: each channel over the batch and positions (batch norm).
enum class NormGroups { rows, channels };

// The mean of t over each statistic group, kept broadcastable to t ([R, 1] or [1, C, 1]); tracked.
// For channels the mean over HW then over N equals the mean over all N·HW values (equal counts).
template <class T, class D>
Tensor<T, D> group_mean(const Tensor<T, D>& t, NormGroups groups) {
  if (groups == NormGroups::rows) return mean(t, 1, true);
  return mean(mean(t, 2, true), 0, true);
}

// x normalized per group from tracked ops: xhat = (x − mean) · rstd, rstd = 1/sqrt(var + eps) with
// the biased variance.
template <class T, class D>
struct ComposedNormalization {
  Tensor<T, D> xhat;
  Tensor<T, D> rstd;
};
template <class T, class D>
ComposedNormalization<T, D> normalize_composed(const Tensor<T, D>& x, NormGroups groups, T eps) {
  const Tensor<T, D> centered = x - group_mean(x, groups);
  const Tensor<T, D> rstd = rsqrt(group_mean(Tensor<T, D>(square(centered)), groups) + eps);
  return {Tensor<T, D>(centered * rstd), rstd};
}

// The gradient with respect to x from gh = ∂L/∂xhat, from tracked ops. With M values per group,
//   ∂mean/∂x_k = 1/M,  ∂rstd/∂x_k = −rstd³ (x_k − mean)/M = −rstd² xhat_k / M,
//   ∂xhat_j/∂x_k = rstd (δ_jk − 1/M) − xhat_j xhat_k rstd / M,
// so gx_k = Σ_j gh_j ∂xhat_j/∂x_k = rstd · (gh_k − mean(gh) − xhat_k · mean(gh · xhat))
// (Ba, Kiros & Hinton 2016 for layer norm; Ioffe & Szegedy 2015, §3, for the batch form).
template <class T, class D>
Tensor<T, D> normalize_backward_composed(const Tensor<T, D>& gh, const ComposedNormalization<T, D>& n,
                                         NormGroups groups) {
  const Tensor<T, D> mean_gh = group_mean(gh, groups);
  const Tensor<T, D> mean_gh_xhat = group_mean(Tensor<T, D>(gh * n.xhat), groups);
  return Tensor<T, D>(n.rstd * (gh - mean_gh - n.xhat * mean_gh_xhat));
}

// Σ over N and HW of t [N, C, HW]: a [C] tensor; tracked.
template <class T, class D>
Tensor<T, D> sum_per_channel(const Tensor<T, D>& t) {
  return sum(sum(t, 2), 0);
}

// ------------------------------------------------------------------------------- layer norm parts

// Layer norm from tracked ops over x seen as [rows, cols] (any device; the reference the fused
// kernels are tested against).
template <class T, class D>
Tensor<T, D> layer_norm_composed(const Tensor<T, D>& x, index_t rows, index_t cols, const Tensor<T, D>& weight,
                                 const Tensor<T, D>& bias, T eps) {
  if (x.numel() == 0) return Tensor<T, D>(x.shape());
  const Shape row{1, cols};
  Tensor<T, D> y = normalize_composed(x.reshape(Shape{rows, cols}), NormGroups::rows, eps).xhat;
  if (weight.defined()) y = Tensor<T, D>(y * weight.reshape(row));
  if (bias.defined()) y = Tensor<T, D>(y + bias.reshape(row));
  return y.reshape(x.shape());
}

// The layer norm gradients from tracked ops (create_graph): with g2 = ∂L/∂y as [rows, cols],
//   ∂L/∂xhat = g2 · weight,   ∂L/∂x from normalize_backward_composed,
//   ∂L/∂weight = Σ_rows g2 · xhat,   ∂L/∂bias = Σ_rows g2.
template <class T, class D, class Node>
std::vector<Tensor<T, D>> layer_norm_backward_composed(const Tensor<T, D>& g, const Tensor<T, D>& x,
                                                       const Tensor<T, D>& weight, const Shape& param_shape,
                                                       index_t rows, index_t cols, T eps, const Node& node) {
  std::vector<Tensor<T, D>> grads(3);
  const Shape s2{rows, cols};
  const Tensor<T, D> g2 = g.reshape(s2);
  const ComposedNormalization<T, D> n = normalize_composed(x.reshape(s2), NormGroups::rows, eps);
  if (node.needs(0)) {
    const Tensor<T, D> gh = weight.defined() ? Tensor<T, D>(g2 * weight.reshape(Shape{1, cols})) : g2;
    grads[0] = normalize_backward_composed(gh, n, NormGroups::rows).reshape(x.shape());
  }
  if (node.needs(1)) grads[1] = sum(Tensor<T, D>(g2 * n.xhat), 0).reshape(param_shape);
  if (node.needs(2)) grads[2] = sum(g2, 0).reshape(param_shape);
  return grads;
}

// --------------------------------------------------------------------------------- RMS norm parts

// RMS norm from tracked ops over x seen as [rows, cols]: y = x · rstd · weight,
// rstd = 1/sqrt(mean(x²) + eps).
template <class T, class D>
Tensor<T, D> rms_norm_composed(const Tensor<T, D>& x, index_t rows, index_t cols, const Tensor<T, D>& weight,
                               T eps) {
  if (x.numel() == 0) return Tensor<T, D>(x.shape());
  const Tensor<T, D> x2 = x.reshape(Shape{rows, cols});
  const Tensor<T, D> rstd = rsqrt(mean(Tensor<T, D>(square(x2)), 1, true) + eps);
  Tensor<T, D> y = x2 * rstd;
  if (weight.defined()) y = Tensor<T, D>(y * weight.reshape(Shape{1, cols}));
  return y.reshape(x.shape());
}

// The RMS norm gradients from tracked ops (create_graph). With gh = g · weight, y_j = x_j rstd and
// ∂rstd/∂x_k = −rstd³ x_k / M (Zhang & Sennrich 2019, §3):
//   ∂L/∂x_k = rstd · gh_k − x_k · rstd³ · mean_j(gh_j x_j),   ∂L/∂weight = Σ_rows g · x · rstd.
template <class T, class D, class Node>
std::vector<Tensor<T, D>> rms_norm_backward_composed(const Tensor<T, D>& g, const Tensor<T, D>& x,
                                                     const Tensor<T, D>& weight, const Shape& param_shape,
                                                     index_t rows, index_t cols, T eps, const Node& node) {
  std::vector<Tensor<T, D>> grads(2);
  const Shape s2{rows, cols};
  const Tensor<T, D> g2 = g.reshape(s2);
  const Tensor<T, D> x2 = x.reshape(s2);
  const Tensor<T, D> rstd = rsqrt(mean(Tensor<T, D>(square(x2)), 1, true) + eps);
  if (node.needs(0)) {
    const Tensor<T, D> gh = weight.defined() ? Tensor<T, D>(g2 * weight.reshape(Shape{1, cols})) : g2;
    const Tensor<T, D> mean_gh_x = mean(Tensor<T, D>(gh * x2), 1, true);
    grads[0] = Tensor<T, D>(rstd * gh - x2 * (rstd * rstd * rstd) * mean_gh_x).reshape(x.shape());
  }
  if (node.needs(1)) grads[1] = sum(Tensor<T, D>(g2 * x2 * rstd), 0).reshape(param_shape);
  return grads;
}

// ------------------------------------------------------------------------------- group norm parts

// Group norm from tracked ops over x seen as [N, C, HW] with G groups.
template <class T, class D>
Tensor<T, D> group_norm_composed(const Tensor<T, D>& x, index_t N, index_t C, index_t HW, index_t G,
                                 const Tensor<T, D>& weight, const Tensor<T, D>& bias, T eps) {
  if (x.numel() == 0) return Tensor<T, D>(x.shape());
  const Shape channel{1, C, 1};
  Tensor<T, D> y = normalize_composed(x.reshape(Shape{N * G, C / G * HW}), NormGroups::rows, eps)
                       .xhat.reshape(Shape{N, C, HW});
  if (weight.defined()) y = Tensor<T, D>(y * weight.reshape(channel));
  if (bias.defined()) y = Tensor<T, D>(y + bias.reshape(channel));
  return y.reshape(x.shape());
}

// The group norm gradients from tracked ops (create_graph): each (sample, group) block is a layer
// norm of its C/G·HW values with ∂L/∂xhat = g · weight[c], so
//   ∂L/∂x from normalize_backward_composed over [N·G, C/G·HW],
//   ∂L/∂weight[c] = Σ_{n, hw} g · xhat,   ∂L/∂bias[c] = Σ_{n, hw} g.
template <class T, class D, class Node>
std::vector<Tensor<T, D>> group_norm_backward_composed(const Tensor<T, D>& g, const Tensor<T, D>& x,
                                                       const Tensor<T, D>& weight, index_t N, index_t C, index_t HW,
                                                       index_t G, T eps, const Node& node) {
  std::vector<Tensor<T, D>> grads(3);
  const Shape s3{N, C, HW}, sg{N * G, C / G * HW};
  const Tensor<T, D> g3 = g.reshape(s3);
  const ComposedNormalization<T, D> n = normalize_composed(x.reshape(sg), NormGroups::rows, eps);
  if (node.needs(0)) {
    const Tensor<T, D> gh = weight.defined() ? Tensor<T, D>(g3 * weight.reshape(Shape{1, C, 1})) : g3;
    grads[0] = normalize_backward_composed(gh.reshape(sg), n, NormGroups::rows).reshape(x.shape());
  }
  if (node.needs(1)) grads[1] = sum_per_channel(Tensor<T, D>(g3 * n.xhat.reshape(s3)));
  if (node.needs(2)) grads[2] = sum_per_channel(g3);
  return grads;
}

// ------------------------------------------------------------------------------- batch norm parts

// Running-statistics update of batch norm in training mode (as PyTorch), from the batch mean and
// the biased variance over M = N·HW values per channel:
//   running_mean ← (1 − momentum) · running_mean + momentum · mean,
//   running_var  ← (1 − momentum) · running_var  + momentum · var · M/(M − 1)   (unbiased).
// Written in place into the given tensors (untracked; they are statistics, not parameters).
template <class T, class D>
void update_running_statistics_composed(const Tensor<T, D>& x3, const Tensor<T, D>& running_mean,
                                        const Tensor<T, D>& running_var, double momentum) {
  NoGrad guard;
  const Tensor<T, D> xd = x3.detach();
  const index_t C = xd.size(1), M = xd.size(0) * xd.size(2);
  const Tensor<T, D> batch_mean = group_mean(xd, NormGroups::channels);
  const T keep = static_cast<T>(1.0 - momentum), take = static_cast<T>(momentum);
  if (running_mean.defined())
    running_mean.detach().assign(running_mean.detach() * keep + batch_mean.reshape(Shape{C}) * take);
  if (running_var.defined()) {
    const Tensor<T, D> var = group_mean(Tensor<T, D>(square(xd - batch_mean)), NormGroups::channels);
    const T unbias = static_cast<T>(static_cast<double>(M) / static_cast<double>(M - 1));
    running_var.detach().assign(running_var.detach() * keep + var.reshape(Shape{C}) * (take * unbias));
  }
}

// Batch norm from tracked ops over x seen as [N, C, HW] (training: batch statistics, updating the
// running ones when given; evaluation: the running statistics as constants).
template <class T, class D>
Tensor<T, D> batch_norm_composed(const Tensor<T, D>& x, index_t N, index_t C, index_t HW,
                                 const Tensor<T, D>& running_mean, const Tensor<T, D>& running_var,
                                 const Tensor<T, D>& weight, const Tensor<T, D>& bias, bool training, double momentum,
                                 T eps) {
  const Shape s3{N, C, HW}, channel{1, C, 1};
  if (x.numel() == 0) return Tensor<T, D>(x.shape());
  const Tensor<T, D> x3 = x.reshape(s3);
  Tensor<T, D> y;
  if (training) {
    update_running_statistics_composed(x3, running_mean, running_var, momentum);
    y = normalize_composed(x3, NormGroups::channels, eps).xhat;
  } else {
    y = Tensor<T, D>((x3 - running_mean.detach().reshape(channel)) *
                     rsqrt(running_var.detach().reshape(channel) + eps));
  }
  if (weight.defined()) y = Tensor<T, D>(y * weight.reshape(channel));
  if (bias.defined()) y = Tensor<T, D>(y + bias.reshape(channel));
  return y.reshape(x.shape());
}

// The batch norm gradients from tracked ops (create_graph). Training: each channel is a layer norm
// of its N·HW values with ∂L/∂xhat = g · weight[c] (Ioffe & Szegedy 2015, §3, the backward of
// Algorithm 1). Evaluation: the statistics are constants, so with rstd = 1/sqrt(running_var + eps)
//   ∂L/∂x = g · weight[c] · rstd[c],   xhat = (x − running_mean) · rstd.
// Both: ∂L/∂weight[c] = Σ_{n, hw} g · xhat,   ∂L/∂bias[c] = Σ_{n, hw} g.
template <class T, class D, class Node>
std::vector<Tensor<T, D>> batch_norm_backward_composed(const Tensor<T, D>& g, const Tensor<T, D>& x,
                                                       const Tensor<T, D>& weight, const Tensor<T, D>& eval_mean,
                                                       const Tensor<T, D>& eval_var, index_t N, index_t C,
                                                       index_t HW, bool training, T eps, const Node& node) {
  std::vector<Tensor<T, D>> grads(3);
  const Shape s3{N, C, HW}, channel{1, C, 1};
  const Tensor<T, D> g3 = g.reshape(s3);
  const Tensor<T, D> x3 = x.reshape(s3);
  const Tensor<T, D> gh = weight.defined() ? Tensor<T, D>(g3 * weight.reshape(channel)) : g3;
  Tensor<T, D> xhat;
  if (training) {
    const ComposedNormalization<T, D> n = normalize_composed(x3, NormGroups::channels, eps);
    xhat = n.xhat;
    if (node.needs(0)) grads[0] = normalize_backward_composed(gh, n, NormGroups::channels).reshape(x.shape());
  } else {
    const Tensor<T, D> rstd = rsqrt(eval_var.reshape(channel) + eps);
    xhat = Tensor<T, D>((x3 - eval_mean.reshape(channel)) * rstd);
    if (node.needs(0)) grads[0] = Tensor<T, D>(gh * rstd).reshape(x.shape());
  }
  if (node.needs(1)) grads[1] = sum_per_channel(Tensor<T, D>(g3 * xhat));
  if (node.needs(2)) grads[2] = sum_per_channel(g3);
  return grads;
}

// [N, C, HW] of an input [N, C, *] (HW = 1 for a 2-d input).
inline void split_batch_channels(const Shape& s, index_t& N, index_t& C, index_t& HW) {
  N = s.dims[0];
  C = s.dims[1];
  HW = 1;
  for (int i = 2; i < s.ndim; ++i) HW *= s.dims[i];
}

}  // namespace detail

// ======================================================================================= layer norm

// Layer normalization over the last dims of x given by normalized_shape (Ba, Kiros & Hinton
// 2016), as torch.nn.functional.layer_norm:
//   y = (x − mean) / sqrt(var + eps) · weight + bias,
// mean and biased var over the normalized_shape.numel() trailing elements of each row. weight and
// bias have normalized_shape, or are undefined tensors (no scale / no shift). Any input may be a
// strided view. The backward is derived above normalize_backward_composed (and in the kernel,
// backend/cpu/norm.hpp, layer_norm_backward).
template <class T, class D>
Tensor<T, D> layer_norm(const Tensor<T, D>& x, const Shape& normalized_shape, const Tensor<T, D>& weight = Tensor<T, D>(),
                        const Tensor<T, D>& bias = Tensor<T, D>(), double eps = 1e-5) {
  static_assert(is_floating_element<T>, "kiln::layer_norm works on float and double tensors");
  if (!x.defined()) throw_value_error("layer_norm", "the input is an undefined tensor");
  const int k = normalized_shape.ndim;
  bool fits = k >= 1 && k <= x.dim();
  for (int i = 0; fits && i < k; ++i) fits = x.shape().dims[x.dim() - k + i] == normalized_shape.dims[i];
  if (!fits)
    throw_shape_error("layer_norm",
                      "normalized_shape must be non-empty and equal the trailing dims of the input; input and "
                      "normalized_shape",
                      x.shape(), normalized_shape);
  detail::check_norm_parameter("layer_norm", "weight", weight, normalized_shape, x.shape());
  detail::check_norm_parameter("layer_norm", "bias", bias, normalized_shape, x.shape());
  detail::check_norm_eps("layer_norm", eps);
  const index_t cols = normalized_shape.numel();
  index_t rows = 1;
  for (int i = 0; i < x.dim() - k; ++i) rows *= x.shape().dims[i];
  const T e = static_cast<T>(eps);

  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::layer_norm_composed(x, rows, cols, weight, bias, e);
  } else {
    const Tensor<T, D> xc = x.detach().contiguous();
    const Tensor<T, D> wc = detail::raw_contiguous(weight), bc = detail::raw_contiguous(bias);
    auto y = Tensor<T, D>::uninitialized(x.shape());
    auto mean_saved = Tensor<T, D>::uninitialized(Shape{rows});
    auto rstd_saved = Tensor<T, D>::uninitialized(Shape{rows});
    if (x.numel() > 0)
      backend::cpu::layer_norm_forward(xc.data(), detail::data_or_null(wc), detail::data_or_null(bc), rows, cols, e,
                                       y.data(), mean_saved.data(), rstd_saved.data());
    const Shape x_shape = x.shape();
    detail::record("layer_norm", y, {x, weight, bias},
                   [x, weight, xc, wc, mean_saved, rstd_saved, x_shape, normalized_shape, rows, cols, e](
                       const Tensor<T, D>& g, const auto& node) {
                     if (x_shape.numel() == 0)
                       return detail::zero_gradients<T, D>(node, {x_shape, normalized_shape, normalized_shape});
                     if (detail::grad_mode_enabled())
                       return detail::layer_norm_backward_composed(g, x, weight, normalized_shape, rows, cols, e,
                                                                   node);
                     std::vector<Tensor<T, D>> grads(3);
                     for (std::size_t i = 0; i < 3; ++i)
                       if (node.needs(i)) grads[i] = Tensor<T, D>::uninitialized(i == 0 ? x_shape : normalized_shape);
                     const Tensor<T, D> gc = g.detach().contiguous();
                     backend::cpu::layer_norm_backward(gc.data(), xc.data(), detail::data_or_null(wc),
                                                       mean_saved.data(), rstd_saved.data(), rows, cols,
                                                       detail::data_or_null(grads[0]), detail::data_or_null(grads[1]),
                                                       detail::data_or_null(grads[2]));
                     return grads;
                   });
    return y;
  }
}

// ========================================================================================= RMS norm

// RMS normalization over the trailing dims given by normalized_shape (Zhang & Sennrich 2019), as
// torch.nn.functional.rms_norm (PyTorch 2.4):
//   y = x / sqrt(mean(x²) + eps) · weight,
// weight of normalized_shape or undefined. eps defaults (nullopt) to the machine epsilon of T, as
// PyTorch's eps=None. The backward is derived above rms_norm_backward_composed.
template <class T, class D>
Tensor<T, D> rms_norm(const Tensor<T, D>& x, const Shape& normalized_shape, const Tensor<T, D>& weight = Tensor<T, D>(),
                      std::optional<double> eps = std::nullopt) {
  static_assert(is_floating_element<T>, "kiln::rms_norm works on float and double tensors");
  if (!x.defined()) throw_value_error("rms_norm", "the input is an undefined tensor");
  const int k = normalized_shape.ndim;
  bool fits = k >= 1 && k <= x.dim();
  for (int i = 0; fits && i < k; ++i) fits = x.shape().dims[x.dim() - k + i] == normalized_shape.dims[i];
  if (!fits)
    throw_shape_error("rms_norm",
                      "normalized_shape must be non-empty and equal the trailing dims of the input; input and "
                      "normalized_shape",
                      x.shape(), normalized_shape);
  detail::check_norm_parameter("rms_norm", "weight", weight, normalized_shape, x.shape());
  const double eps_value = eps ? *eps : static_cast<double>(std::numeric_limits<T>::epsilon());
  detail::check_norm_eps("rms_norm", eps_value);
  const index_t cols = normalized_shape.numel();
  index_t rows = 1;
  for (int i = 0; i < x.dim() - k; ++i) rows *= x.shape().dims[i];
  const T e = static_cast<T>(eps_value);

  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::rms_norm_composed(x, rows, cols, weight, e);
  } else {
    const Tensor<T, D> xc = x.detach().contiguous();
    const Tensor<T, D> wc = detail::raw_contiguous(weight);
    auto y = Tensor<T, D>::uninitialized(x.shape());
    auto rstd_saved = Tensor<T, D>::uninitialized(Shape{rows});
    if (x.numel() > 0)
      backend::cpu::rms_norm_forward(xc.data(), detail::data_or_null(wc), rows, cols, e, y.data(), rstd_saved.data());
    const Shape x_shape = x.shape();
    detail::record("rms_norm", y, {x, weight},
                   [x, weight, xc, wc, rstd_saved, x_shape, normalized_shape, rows, cols, e](const Tensor<T, D>& g,
                                                                                            const auto& node) {
                     if (x_shape.numel() == 0) return detail::zero_gradients<T, D>(node, {x_shape, normalized_shape});
                     if (detail::grad_mode_enabled())
                       return detail::rms_norm_backward_composed(g, x, weight, normalized_shape, rows, cols, e, node);
                     std::vector<Tensor<T, D>> grads(2);
                     for (std::size_t i = 0; i < 2; ++i)
                       if (node.needs(i)) grads[i] = Tensor<T, D>::uninitialized(i == 0 ? x_shape : normalized_shape);
                     const Tensor<T, D> gc = g.detach().contiguous();
                     backend::cpu::rms_norm_backward(gc.data(), xc.data(), detail::data_or_null(wc),
                                                     rstd_saved.data(), rows, cols, detail::data_or_null(grads[0]),
                                                     detail::data_or_null(grads[1]));
                     return grads;
                   });
    return y;
  }
}

// RMS normalization over the last dim of x, or over weight's dims when a weight is given.
template <class T, class D>
Tensor<T, D> rms_norm(const Tensor<T, D>& x, const Tensor<T, D>& weight, std::optional<double> eps = std::nullopt) {
  if (!x.defined()) throw_value_error("rms_norm", "the input is an undefined tensor");
  if (x.dim() == 0) throw_shape_error("rms_norm", "the input needs at least one dimension", x.shape());
  return rms_norm(x, weight.defined() ? weight.shape() : Shape{x.size(-1)}, weight, eps);
}

// ======================================================================================= group norm

// Group normalization (Wu & He 2018) of x [N, C, *] with `groups` groups of C/groups consecutive
// channels, as torch.nn.functional.group_norm: each (sample, group) block is normalized with its
// mean and biased variance, then scaled by weight[c] and shifted by bias[c] (both [C], or
// undefined). The backward is derived above group_norm_backward_composed.
template <class T, class D>
Tensor<T, D> group_norm(const Tensor<T, D>& x, index_t groups, const Tensor<T, D>& weight = Tensor<T, D>(),
                        const Tensor<T, D>& bias = Tensor<T, D>(), double eps = 1e-5) {
  static_assert(is_floating_element<T>, "kiln::group_norm works on float and double tensors");
  if (!x.defined()) throw_value_error("group_norm", "the input is an undefined tensor");
  if (x.dim() < 2)
    throw_shape_error("group_norm", "the input must be [N, C, *] (at least 2 dims)", x.shape());
  index_t N = 0, C = 0, HW = 0;
  detail::split_batch_channels(x.shape(), N, C, HW);
  if (groups < 1 || C % groups != 0)
    throw_value_error("group_norm", "the number of channels C = " + std::to_string(C) +
                                        " (input shape " + to_string(x.shape()) +
                                        ") must be divisible by the number of groups " + std::to_string(groups) +
                                        " (groups >= 1)");
  detail::check_norm_parameter("group_norm", "weight", weight, Shape{C}, x.shape());
  detail::check_norm_parameter("group_norm", "bias", bias, Shape{C}, x.shape());
  detail::check_norm_eps("group_norm", eps);
  const index_t G = groups;
  const T e = static_cast<T>(eps);

  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::group_norm_composed(x, N, C, HW, G, weight, bias, e);
  } else {
    const Tensor<T, D> xc = x.detach().contiguous();
    const Tensor<T, D> wc = detail::raw_contiguous(weight), bc = detail::raw_contiguous(bias);
    auto y = Tensor<T, D>::uninitialized(x.shape());
    auto mean_saved = Tensor<T, D>::uninitialized(Shape{N * G});
    auto rstd_saved = Tensor<T, D>::uninitialized(Shape{N * G});
    if (x.numel() > 0)
      backend::cpu::group_norm_forward(xc.data(), detail::data_or_null(wc), detail::data_or_null(bc), N, C, HW, G, e,
                                       y.data(), mean_saved.data(), rstd_saved.data());
    const Shape x_shape = x.shape();
    detail::record("group_norm", y, {x, weight, bias},
                   [x, weight, xc, wc, mean_saved, rstd_saved, x_shape, N, C, HW, G, e](const Tensor<T, D>& g,
                                                                                        const auto& node) {
                     if (x_shape.numel() == 0)
                       return detail::zero_gradients<T, D>(node, {x_shape, Shape{C}, Shape{C}});
                     if (detail::grad_mode_enabled())
                       return detail::group_norm_backward_composed(g, x, weight, N, C, HW, G, e, node);
                     std::vector<Tensor<T, D>> grads(3);
                     for (std::size_t i = 0; i < 3; ++i)
                       if (node.needs(i)) grads[i] = Tensor<T, D>::uninitialized(i == 0 ? x_shape : Shape{C});
                     const Tensor<T, D> gc = g.detach().contiguous();
                     backend::cpu::group_norm_backward(gc.data(), xc.data(), detail::data_or_null(wc),
                                                       mean_saved.data(), rstd_saved.data(), N, C, HW, G,
                                                       detail::data_or_null(grads[0]), detail::data_or_null(grads[1]),
                                                       detail::data_or_null(grads[2]));
                     return grads;
                   });
    return y;
  }
}

// ======================================================================================= batch norm

// Batch normalization (Ioffe & Szegedy 2015) of x [N, C] or [N, C, *] per channel, as
// torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training, momentum,
// eps):
// - training: each channel is normalized with the mean and biased variance of its N·HW values (at
//   least 2, else ValueError); running_mean and running_var [C], when defined, are updated in place
//   with momentum, the variance unbiased (× M/(M − 1)) as PyTorch does.
// - evaluation (training = false): y = (x − running_mean) / sqrt(running_var + eps), both needed.
// Then y · weight[c] + bias[c] (each [C] or undefined). The running statistics get no gradient.
// The backward is derived above batch_norm_backward_composed.
template <class T, class D>
Tensor<T, D> batch_norm(const Tensor<T, D>& x, const Tensor<T, D>& running_mean, const Tensor<T, D>& running_var,
                        const Tensor<T, D>& weight = Tensor<T, D>(), const Tensor<T, D>& bias = Tensor<T, D>(),
                        bool training = false, double momentum = 0.1, double eps = 1e-5) {
  static_assert(is_floating_element<T>, "kiln::batch_norm works on float and double tensors");
  if (!x.defined()) throw_value_error("batch_norm", "the input is an undefined tensor");
  if (x.dim() < 2)
    throw_shape_error("batch_norm", "the input must be [N, C] or [N, C, *] (at least 2 dims)", x.shape());
  index_t N = 0, C = 0, HW = 0;
  detail::split_batch_channels(x.shape(), N, C, HW);
  detail::check_norm_parameter("batch_norm", "weight", weight, Shape{C}, x.shape());
  detail::check_norm_parameter("batch_norm", "bias", bias, Shape{C}, x.shape());
  detail::check_norm_parameter("batch_norm", "running_mean", running_mean, Shape{C}, x.shape());
  detail::check_norm_parameter("batch_norm", "running_var", running_var, Shape{C}, x.shape());
  detail::check_norm_eps("batch_norm", eps);
  if (!training && !(running_mean.defined() && running_var.defined()))
    throw_value_error("batch_norm", "evaluation mode (training = false) needs running_mean and running_var "
                                    "(pass training = true to normalize with the batch statistics)");
  if (training && C > 0 && N * HW <= 1)
    throw_value_error("batch_norm", "expected more than 1 value per channel when training, got input shape " +
                                        to_string(x.shape()));
  if (training && !(momentum >= 0.0 && momentum <= 1.0))
    throw_value_error("batch_norm", "momentum must lie in [0, 1], got " + std::to_string(momentum));
  const T e = static_cast<T>(eps);

  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::batch_norm_composed(x, N, C, HW, running_mean, running_var, weight, bias, training, momentum, e);
  } else {
    const Tensor<T, D> xc = x.detach().contiguous();
    const Tensor<T, D> wc = detail::raw_contiguous(weight), bc = detail::raw_contiguous(bias);
    auto y = Tensor<T, D>::uninitialized(x.shape());
    // training: the batch mean and rstd per channel; evaluation: copies of the running statistics
    // (the backward must see the values this forward used even if they are updated meanwhile).
    Tensor<T, D> stat_a, stat_b;
    if (training) {
      stat_a = Tensor<T, D>::uninitialized(Shape{C});
      stat_b = Tensor<T, D>::uninitialized(Shape{C});
      // The kernel updates the running statistics through raw pointers: the tensors' own memory
      // when contiguous, else copies written back afterwards.
      const Tensor<T, D> rm = detail::raw_contiguous(running_mean), rv = detail::raw_contiguous(running_var);
      if (C > 0)
        backend::cpu::batch_norm_forward_training(xc.data(), detail::data_or_null(wc), detail::data_or_null(bc), N, C,
                                                  HW, e, static_cast<T>(momentum), detail::data_or_null(rm),
                                                  detail::data_or_null(rv), y.data(), stat_a.data(), stat_b.data());
      NoGrad guard;
      if (rm.defined() && rm.data() != running_mean.data()) running_mean.detach().assign(rm);
      if (rv.defined() && rv.data() != running_var.data()) running_var.detach().assign(rv);
    } else {
      stat_a = running_mean.detach().clone();
      stat_b = running_var.detach().clone();
      backend::cpu::batch_norm_forward_eval(xc.data(), detail::data_or_null(wc), detail::data_or_null(bc),
                                            stat_a.data(), stat_b.data(), N, C, HW, e, y.data());
    }
    const Shape x_shape = x.shape();
    detail::record(
        "batch_norm", y, {x, weight, bias},
        [x, weight, xc, wc, stat_a, stat_b, x_shape, N, C, HW, training, e](const Tensor<T, D>& g, const auto& node) {
          if (x_shape.numel() == 0) return detail::zero_gradients<T, D>(node, {x_shape, Shape{C}, Shape{C}});
          if (detail::grad_mode_enabled())
            return detail::batch_norm_backward_composed(g, x, weight, stat_a, stat_b, N, C, HW, training, e, node);
          std::vector<Tensor<T, D>> grads(3);
          for (std::size_t i = 0; i < 3; ++i)
            if (node.needs(i)) grads[i] = Tensor<T, D>::uninitialized(i == 0 ? x_shape : Shape{C});
          const Tensor<T, D> gc = g.detach().contiguous();
          if (training)
            backend::cpu::batch_norm_backward_training(gc.data(), xc.data(), detail::data_or_null(wc), stat_a.data(),
                                                       stat_b.data(), N, C, HW, detail::data_or_null(grads[0]),
                                                       detail::data_or_null(grads[1]), detail::data_or_null(grads[2]));
          else
            backend::cpu::batch_norm_backward_eval(gc.data(), xc.data(), detail::data_or_null(wc), stat_a.data(),
                                                   stat_b.data(), N, C, HW, e, detail::data_or_null(grads[0]),
                                                   detail::data_or_null(grads[1]), detail::data_or_null(grads[2]));
          return grads;
        });
    return y;
  }
}

}  // namespace kiln
