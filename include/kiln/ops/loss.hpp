// kiln/ops/loss.hpp — loss functions with PyTorch's definitions and reductions (mean, sum, none):
// mse, l1, binary cross-entropy (on probabilities and on logits), cross-entropy and nll over class
// indices, the Gaussian KL of a VAE and the Gaussian negative log-likelihood.
// Builds on ops/softmax.hpp, ops/index.hpp, ops/reduce.hpp, fused expressions (autograd/fused.hpp)
// and, on the CPU, the fused cross-entropy row kernels of backend/cpu/softmax.hpp.
#pragma once

#include <kiln/autograd/fused.hpp>
#include <kiln/autograd/graph.hpp>
#include <kiln/backend/cpu/softmax.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/expr/ops.hpp>
#include <kiln/expr/reduce.hpp>
#include <kiln/ops/index.hpp>
#include <kiln/ops/reduce.hpp>
#include <kiln/ops/softmax.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln {

// How a loss combines its per-element values (PyTorch's `reduction`): their mean, their sum, or
// none (the per-element losses themselves).
enum class LossReduction { mean, sum, none };

namespace detail {

template <class T, class D>
Tensor<T, D> reduce_loss(const Tensor<T, D>& per_element, LossReduction reduction) {
  switch (reduction) {
    case LossReduction::sum:
      return sum(per_element);
    case LossReduction::mean:
      return mean(per_element);
    case LossReduction::none:
      break;
  }
  return per_element;
}

template <class T, class D>
void require_defined(const char* op, const Tensor<T, D>& t, const char* what) {
  if (!t.defined()) throw_value_error(op, std::string(what) + " is an undefined tensor");
}

template <class T, class D>
void require_same_shape(const char* op, const Tensor<T, D>& input, const Tensor<T, D>& target) {
  if (input.shape() != target.shape())
    throw_shape_error(op, "the target must have the input's shape", input.shape(), target.shape());
}

inline void require_broadcast(const char* op, const Shape& from, const Shape& to, const char* what) {
  if (!broadcastable_to(from, to))
    throw_shape_error(op, std::string(what) + " does not broadcast to the input's shape", from, to);
}

// Elementwise −(y·max(log p, −100) + (1 − y)·max(log(1 − p), −100)), recorded.
//   ∂/∂p = (p − y) / (p(1 − p)), with the denominator kept at or above 1e-12 as PyTorch does, so
//          p = 0 or 1 gives a large finite gradient (or 0 where p = y) rather than NaN;
//   ∂/∂y = max(log(1 − p), −100) − max(log p, −100).
// With grad mode on (create_graph) both are tracked expressions, differentiable again.
template <class T, class D>
Tensor<T, D> binary_cross_entropy_terms(const Tensor<T, D>& p, const Tensor<T, D>& y) {
  Tensor<T, D> loss;
  {
    NoGrad guard;
    loss = Tensor<T, D>(-(y * maximum(log(p), -100) + (1 - y) * maximum(log(1 - p), -100)));
  }
  record("binary_cross_entropy", loss, {p, y}, [p, y](const Tensor<T, D>& g, const auto& node) {
    std::vector<Tensor<T, D>> grads(2);
    if (node.needs(0)) grads[0] = Tensor<T, D>(g * (p - y) / maximum(p * (1 - p), 1e-12));
    if (node.needs(1)) grads[1] = Tensor<T, D>(g * (maximum(log(1 - p), -100) - maximum(log(p), -100)));
    return grads;
  });
  return loss;
}

// Elementwise (1 − y)·x + lw·softplus(−x) with lw = 1 + (pw − 1)·y (pw absent: lw = 1), recorded.
// The forward sums (1 − y)·x + max(−x, 0) before adding log(1 + exp(−|x|)), so the cancellation
// for large |x| is exact. With σ the logistic function and softplus'(z) = σ(z):
//   ∂/∂x  = (1 − y) − lw·σ(−x)            (= σ(x) − y for pw = 1, smooth at x = 0),
//   ∂/∂y  = −x + (pw − 1)·softplus(−x),
//   ∂/∂pw = y·softplus(−x)                (summed over the dims pw was broadcast along).
// With grad mode on (create_graph) these are tracked expressions, differentiable again.
template <class T, class D>
Tensor<T, D> binary_cross_entropy_with_logits_terms(const Tensor<T, D>& x, const Tensor<T, D>& y,
                                                    const Tensor<T, D>& pw) {
  Tensor<T, D> loss;
  {
    NoGrad guard;
    if (pw.defined())
      loss = Tensor<T, D>((1 - y) * x + ((pw - 1) * y + 1) * (relu(-x) + log1p(exp(-abs(x)))));
    else
      loss = Tensor<T, D>((1 - y) * x + relu(-x) + log1p(exp(-abs(x))));
  }
  // softplus(−x) with an infinite threshold: never the linear branch.
  const double never = std::numeric_limits<double>::infinity();
  record("binary_cross_entropy_with_logits", loss, {x, y, pw}, [x, y, pw, never](const Tensor<T, D>& g, const auto& node) {
    std::vector<Tensor<T, D>> grads(3);
    if (pw.defined()) {
      if (node.needs(0)) grads[0] = Tensor<T, D>(g * ((1 - y) - ((pw - 1) * y + 1) * sigmoid(-x)));
      if (node.needs(1)) grads[1] = Tensor<T, D>(g * ((pw - 1) * softplus(-x, 1.0, never) - x));
      if (node.needs(2)) grads[2] = sum_to(Tensor<T, D>(g * y * softplus(-x, 1.0, never)), pw.shape());
    } else {
      if (node.needs(0)) grads[0] = Tensor<T, D>(g * (sigmoid(x) - y));
      if (node.needs(1)) grads[1] = Tensor<T, D>(-g * x);
    }
    return grads;
  });
  return loss;
}

// Logits [N, C, d...] (or [C]) seen as [N, C, S], and the target shape that goes with them.
struct ClassLayout {
  index_t N = 1, C = 1, S = 1;
  Shape target_shape;
};

inline ClassLayout class_layout(const char* op, const Shape& input, const Shape& targets) {
  ClassLayout l;
  if (input.ndim == 0) throw_shape_error(op, "the input needs a class dimension", input, targets);
  if (input.ndim == 1) {
    l.C = input.dims[0];
  } else {
    l.N = input.dims[0];
    l.C = input.dims[1];
    l.target_shape.push_back(l.N);
    for (int d = 2; d < input.ndim; ++d) {
      l.target_shape.push_back(input.dims[d]);
      l.S *= input.dims[d];
    }
  }
  if (targets != l.target_shape)
    throw_shape_error(op,
                      "the targets must have the input's shape without the class dimension (input [N, C, d...], "
                      "targets [N, d...]; input [C], targets 0-d)",
                      input, targets);
  return l;
}

// A contiguous copy of the targets, checked: each is in [0, C) or equals ignore_index.
template <class D>
Tensor<index_t, D> checked_targets(const char* op, const Tensor<index_t, D>& targets, index_t C,
                                   index_t ignore_index) {
  require_host_indices<D>();
  Tensor<index_t, D> t = targets.clone();
  const index_t* p = t.data();
  for (index_t i = 0; i < t.numel(); ++i) {
    if (p[i] == ignore_index || (p[i] >= 0 && p[i] < C)) continue;
    index_t coords[max_dims] = {};
    index_t rest = i;
    for (int d = t.dim() - 1; d >= 0; --d) {
      coords[d] = rest % t.shape().dims[d];
      rest /= t.shape().dims[d];
    }
    throw IndexError(std::string("kiln::") + op + ": target " + std::to_string(p[i]) + " at position " +
                     coords_text(coords, t.dim()) + " is outside the classes [0, " + std::to_string(C) +
                     ") and is not ignore_index (" + std::to_string(ignore_index) + ")");
  }
  return t;
}

// 1 where the target is kept, 0 where it is ignore_index, shaped [N, 1, S].
template <class T, class D>
Tensor<T, D> kept_mask(const Tensor<index_t, D>& t, index_t ignore_index, const ClassLayout& l, index_t& count) {
  auto mask = Tensor<T, D>::uninitialized(Shape{l.N, 1, l.S});
  count = 0;
  for (index_t i = 0; i < t.numel(); ++i) {
    const bool keep = t.data()[i] != ignore_index;
    mask.data()[i] = keep ? T(1) : T(0);
    count += keep ? 1 : 0;
  }
  return mask;
}

// The per-position loss values combined as `reduction` asks (a 0-d tensor for mean and sum, the
// target shape for none); sums are accumulated in double.
template <class T, class D>
Tensor<T, D> combine_positions(const std::vector<double>& values, index_t count, const ClassLayout& l,
                               LossReduction reduction) {
  if (reduction == LossReduction::none) {
    auto out = Tensor<T, D>::uninitialized(l.target_shape);
    for (std::size_t i = 0; i < values.size(); ++i) out.data()[i] = static_cast<T>(values[i]);
    return out;
  }
  double total = 0;
  for (double v : values) total += v;
  if (reduction == LossReduction::mean) total /= static_cast<double>(count);  // 0/0 = NaN when all are ignored
  auto out = Tensor<T, D>::uninitialized(Shape{});
  out.data()[0] = static_cast<T>(total);
  return out;
}

}  // namespace detail

// Mean squared error, (input − target)² per element (input and target broadcast together).
// Gradients flow to both, from the fused expression's rules (∂/∂input = 2(input − target)).
template <class T, class D>
Tensor<T, D> mse_loss(const Tensor<T, D>& input, const Tensor<T, D>& target,
                      LossReduction reduction = LossReduction::mean) {
  detail::require_defined("mse_loss", input, "the input");
  detail::require_defined("mse_loss", target, "the target");
  Shape joined;
  if (!broadcast_shapes(input.shape(), target.shape(), joined))
    throw_shape_error("mse_loss", "input and target cannot be broadcast together", input.shape(), target.shape());
  return detail::reduce_loss(Tensor<T, D>(square(input - target)), reduction);
}

// Mean absolute error, |input − target| per element (broadcast together); the gradient at
// input = target is 0, as PyTorch's.
template <class T, class D>
Tensor<T, D> l1_loss(const Tensor<T, D>& input, const Tensor<T, D>& target,
                     LossReduction reduction = LossReduction::mean) {
  detail::require_defined("l1_loss", input, "the input");
  detail::require_defined("l1_loss", target, "the target");
  Shape joined;
  if (!broadcast_shapes(input.shape(), target.shape(), joined))
    throw_shape_error("l1_loss", "input and target cannot be broadcast together", input.shape(), target.shape());
  return detail::reduce_loss(Tensor<T, D>(abs(input - target)), reduction);
}

// Binary cross-entropy of probabilities `input` (each in [0, 1]) against `target` of the same
// shape, −w·(y·log p + (1 − y)·log(1 − p)) with each log clamped at −100 (as PyTorch, so p = 0 or
// 1 gives a finite loss); `weight`, when given, broadcasts to the input's shape.
template <class T, class D>
Tensor<T, D> binary_cross_entropy(const Tensor<T, D>& input, const Tensor<T, D>& target,
                                  LossReduction reduction = LossReduction::mean,
                                  const Tensor<T, D>& weight = Tensor<T, D>()) {
  const char* op = "binary_cross_entropy";
  detail::require_defined(op, input, "the input");
  detail::require_defined(op, target, "the target");
  detail::require_same_shape(op, input, target);
  if (weight.defined()) detail::require_broadcast(op, weight.shape(), input.shape(), "the weight");
  if constexpr (std::is_same_v<D, cpu>) {
    const Tensor<T, D> pc = input.detach().contiguous();
    for (index_t i = 0; i < pc.numel(); ++i)
      if (!(pc.data()[i] >= T(0) && pc.data()[i] <= T(1)))
        throw_value_error(op, "the input holds probabilities, each in [0, 1]; element " + std::to_string(i) +
                                  " is " + std::to_string(static_cast<double>(pc.data()[i])) +
                                  " (use binary_cross_entropy_with_logits on unbounded scores)");
  }
  Tensor<T, D> loss = detail::binary_cross_entropy_terms(input, target);
  if (weight.defined()) loss = Tensor<T, D>(loss * weight);
  return detail::reduce_loss(loss, reduction);
}

// Binary cross-entropy of logits x against targets y (same shape), stable for any x:
//   ℓ = (1 − y)·x + (1 + (pw − 1)·y)·softplus(−x),   softplus(z) = max(z, 0) + log(1 + exp(−|z|)),
// which for pos_weight pw = 1 is max(x, 0) − x·y + log(1 + exp(−|x|)) (PyTorch's formula; the
// first two terms are added first, so a large x < 0 with y = 0 keeps the tiny exact value).
// pos_weight and weight, when given, broadcast to the input's shape, and get gradients too
// (PyTorch gives them none).
template <class T, class D>
Tensor<T, D> binary_cross_entropy_with_logits(const Tensor<T, D>& input, const Tensor<T, D>& target,
                                              LossReduction reduction = LossReduction::mean,
                                              const Tensor<T, D>& pos_weight = Tensor<T, D>(),
                                              const Tensor<T, D>& weight = Tensor<T, D>()) {
  const char* op = "binary_cross_entropy_with_logits";
  detail::require_defined(op, input, "the input");
  detail::require_defined(op, target, "the target");
  detail::require_same_shape(op, input, target);
  if (pos_weight.defined()) detail::require_broadcast(op, pos_weight.shape(), input.shape(), "pos_weight");
  if (weight.defined()) detail::require_broadcast(op, weight.shape(), input.shape(), "the weight");
  Tensor<T, D> loss = detail::binary_cross_entropy_with_logits_terms(input, target, pos_weight);
  if (weight.defined()) loss = Tensor<T, D>(loss * weight);
  return detail::reduce_loss(loss, reduction);
}

// Negative log-likelihood of class indices under log-probabilities `log_probs` [N, C, d...] (or
// [C] with a 0-d target): −log_probs[n, t_n, d...]; positions whose target is ignore_index count
// for nothing, and the mean divides by the number of the others (NaN when there are none), as
// torch.nn.functional.nll_loss. Built from gather, so it is differentiable to any order.
template <class T, class D>
Tensor<T, D> nll_loss(const Tensor<T, D>& log_probs, const Tensor<index_t, D>& targets,
                      LossReduction reduction = LossReduction::mean, index_t ignore_index = -100) {
  const char* op = "nll_loss";
  detail::require_defined(op, log_probs, "the input");
  if (!targets.defined()) throw_value_error(op, "the targets are an undefined tensor");
  const detail::ClassLayout l = detail::class_layout(op, log_probs.shape(), targets.shape());
  const Tensor<index_t, D> t = detail::checked_targets(op, targets, l.C, ignore_index);
  index_t count = 0;
  const Tensor<T, D> mask = detail::kept_mask<T, D>(t, ignore_index, l, count);
  // Ignored positions gather class 0 (any valid class) and are then multiplied by 0.
  auto safe = Tensor<index_t, D>::uninitialized(Shape{l.N, 1, l.S});
  for (index_t i = 0; i < t.numel(); ++i) safe.data()[i] = t.data()[i] == ignore_index ? 0 : t.data()[i];
  if (l.N * l.C * l.S == 0 && l.N * l.S > 0)
    throw_shape_error(op, "there are targets but no classes", log_probs.shape(), targets.shape());
  const Tensor<T, D> picked = gather(log_probs.reshape({l.N, l.C, l.S}), 1, safe);
  const Tensor<T, D> loss = -(picked * mask);
  switch (reduction) {
    case LossReduction::none:
      return loss.reshape(l.target_shape);
    case LossReduction::sum:
      return sum(loss);
    case LossReduction::mean:
      break;
  }
  // Every position ignored: NaN, as PyTorch, with a zero gradient (not 0 · ∞).
  if (count == 0) return Tensor<T, D>(sum(loss) * T(0) + std::numeric_limits<T>::quiet_NaN());
  return Tensor<T, D>(sum(loss) / static_cast<T>(count));
}

// Cross-entropy of logits [N, C, d...] (or [C] with a 0-d target) against class indices, as
// torch.nn.functional.cross_entropy with reduction, ignore_index and label_smoothing ε:
//   ℓ = (1 − ε)·(−log p_t) + ε·mean_c(−log p_c),   log p = log_softmax over the class dimension,
// 0 at positions whose target is ignore_index; the mean divides by the number of other positions.
// The forward is one pass over the logits (the log-sum-exp of each row) and the backward
// another (softmax − target distribution); with create_graph the gradient is built from tracked
// ops instead, so it can be differentiated again.
template <class T, class D>
Tensor<T, D> cross_entropy(const Tensor<T, D>& logits, const Tensor<index_t, D>& targets,
                           LossReduction reduction = LossReduction::mean, index_t ignore_index = -100,
                           double label_smoothing = 0.0) {
  static_assert(is_floating_element<T>, "kiln::cross_entropy works on float and double logits");
  const char* op = "cross_entropy";
  detail::require_defined(op, logits, "the logits");
  if (!targets.defined()) throw_value_error(op, "the targets are an undefined tensor");
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
    throw_value_error(op, "label_smoothing must lie in [0, 1], got " + std::to_string(label_smoothing));
  const detail::ClassLayout l = detail::class_layout(op, logits.shape(), targets.shape());
  const index_t N = l.N, C = l.C, S = l.S;
  if (N * S > 0 && C == 0) throw_shape_error(op, "there are targets but no classes", logits.shape(), targets.shape());
  const Tensor<index_t, D> t = detail::checked_targets(op, targets, C, ignore_index);
  index_t count = 0;
  const Tensor<T, D> mask = detail::kept_mask<T, D>(t, ignore_index, l, count);
  const T eps = static_cast<T>(label_smoothing);
  const Tensor<T, D> x = logits.detach().contiguous().reshape({N, C, S});
  const index_t* tp = t.data();

  // Per-position loss and the log-sum-exp of each row [N, 1, S], kept for the backward.
  std::vector<double> values(static_cast<std::size_t>(N * S), 0.0);
  Tensor<T, D> lse;
  bool row_kernel = false;
  if constexpr (std::is_same_v<D, cpu>) row_kernel = S == 1 && N * C > 0;
  if (row_kernel) {
    lse = Tensor<T, D>::uninitialized(Shape{N, 1, 1});
    auto rows = Tensor<T, D>::uninitialized(Shape{N});
    backend::cpu::cross_entropy_forward(x.data(), tp, N, C, ignore_index, eps, rows.data(), lse.data());
    for (index_t n = 0; n < N; ++n) values[static_cast<std::size_t>(n)] = static_cast<double>(rows.data()[n]);
  } else if (N * S > 0) {
    // ℓ = lse − (1 − ε)·x_t − (ε/C)·Σ_c x_c, since −log p_c = lse − x_c.
    lse = detail::reduce_axis(op, Reduction::logsumexp, x, 1, true);
    Tensor<T, D> row_sum;
    if (eps > T(0)) row_sum = detail::reduce_axis(op, Reduction::sum, x, 1, true);
    for (index_t n = 0; n < N; ++n)
      for (index_t s = 0; s < S; ++s) {
        const index_t i = n * S + s;
        if (tp[i] == ignore_index) continue;
        double v = static_cast<double>(lse.data()[i]) -
                   (1.0 - label_smoothing) * static_cast<double>(x.data()[(n * C + tp[i]) * S + s]);
        if (eps > T(0)) v -= label_smoothing / static_cast<double>(C) * static_cast<double>(row_sum.data()[i]);
        values[static_cast<std::size_t>(i)] = v;
      }
  } else {
    lse = Tensor<T, D>(Shape{N, 1, S});
  }
  Tensor<T, D> out = detail::combine_positions<T, D>(values, count, l, reduction);

  // With q the target distribution of a position, q_c = ε/C + (1 − ε)[c = t], ℓ = lse − Σ_c q_c x_c
  // and ∂lse/∂x_c = softmax_c, so ∂ℓ/∂x_c = softmax_c − q_c (Σ_c q_c = 1). Each position's gradient
  // is scaled by w: the incoming gradient of that position (none), or of the total (sum), divided
  // by the number of kept positions (mean); 0 at ignored positions.
  detail::record(op, out, {logits},
                 [logits, x, t, lse, mask, l, count, eps, ignore_index, reduction](const Tensor<T, D>& g, const auto&) {
                   const index_t N = l.N, C = l.C, S = l.S;
                   // (With every position ignored the mean is NaN but no position gets a gradient.)
                   const T scale =
                       reduction == LossReduction::mean ? (count > 0 ? T(1) / static_cast<T>(count) : T(0)) : T(1);
                   if (N * C * S == 0) return std::vector<Tensor<T, D>>{Tensor<T, D>(logits.shape())};
                   if (detail::grad_mode_enabled()) {
                     // create_graph: softmax is tracked (differentiable again), q is a constant.
                     auto q = Tensor<T, D>(Shape{N, C, S});
                     for (index_t i = 0; i < N * S; ++i) {
                       const index_t n = i / S, s = i % S;
                       for (index_t c = 0; c < C; ++c)
                         q.data()[(n * C + c) * S + s] = mask.data()[i] * (eps / static_cast<T>(C));
                       if (t.data()[i] != ignore_index) q.data()[(n * C + t.data()[i]) * S + s] += T(1) - eps;
                     }
                     const Tensor<T, D> w = reduction == LossReduction::none ? Tensor<T, D>(g.reshape({N, 1, S}) * mask)
                                                                             : Tensor<T, D>(g.reshape({1, 1, 1}) * mask * scale);
                     const Tensor<T, D> p = softmax(logits.reshape({N, C, S}), 1);
                     return std::vector<Tensor<T, D>>{Tensor<T, D>((p * mask - q) * w).reshape(logits.shape())};
                   }
                   const Tensor<T, D> gc = g.detach().contiguous();
                   if constexpr (std::is_same_v<D, cpu>) {
                     if (S == 1) {
                       auto gx = Tensor<T, D>::uninitialized(logits.shape());
                       const bool per_row = reduction == LossReduction::none;
                       backend::cpu::cross_entropy_backward(x.data(), t.data(), lse.data(), per_row ? gc.data() : nullptr,
                                                            per_row ? T(1) : gc.data()[0] * scale, N, C, ignore_index,
                                                            eps, gx.data());
                       return std::vector<Tensor<T, D>>{gx};
                     }
                   }
                   const Tensor<T, D> w = reduction == LossReduction::none ? Tensor<T, D>(gc.reshape({N, 1, S}) * mask)
                                                                           : Tensor<T, D>(gc.reshape({1, 1, 1}) * mask * scale);
                   Tensor<T, D> gx = Tensor<T, D>((exp(x - lse) - eps / static_cast<T>(C)) * w);
                   for (index_t i = 0; i < N * S; ++i) {
                     const index_t tc = t.data()[i];
                     if (tc == ignore_index) continue;
                     gx.data()[((i / S) * C + tc) * S + i % S] -= (T(1) - eps) * w.data()[i];
                   }
                   return std::vector<Tensor<T, D>>{gx.reshape(logits.shape())};
                 });
  return out;
}

// The KL divergence of N(mu, exp(logvar)) from N(0, I) (the VAE regulariser),
//   KL = −½ Σ (1 + logvar − mu² − exp(logvar)),
// summed over every dimension but the first (the batch), then reduced over the batch: `sum` (the
// default) gives the total, `mean` the average per sample, `none` the per-sample values [N].
// Gradients: ∂/∂mu = mu, ∂/∂logvar = ½(exp(logvar) − 1), from the fused expression.
template <class T, class D>
Tensor<T, D> gaussian_kl(const Tensor<T, D>& mu, const Tensor<T, D>& logvar,
                         LossReduction reduction = LossReduction::sum) {
  const char* op = "gaussian_kl";
  detail::require_defined(op, mu, "mu");
  detail::require_defined(op, logvar, "logvar");
  if (mu.shape() != logvar.shape())
    throw_shape_error(op, "mu and logvar must have the same shape", mu.shape(), logvar.shape());
  if (mu.dim() == 0) throw_shape_error(op, "the first dimension is the batch; got a 0-d tensor", mu.shape());
  const index_t batch = mu.size(0);
  index_t rest = 1;
  for (int d = 1; d < mu.dim(); ++d) rest *= mu.size(d);
  const Tensor<T, D> terms = (1 + logvar - square(mu) - exp(logvar)) * -0.5;
  const Tensor<T, D> per_sample = sum(terms.reshape({batch, rest}), 1);
  return detail::reduce_loss(per_sample, reduction);
}

// Gaussian negative log-likelihood of `target` under N(input, var), as
// torch.nn.functional.gaussian_nll_loss:
//   ℓ = ½(log max(var, eps) + (input − target)² / max(var, eps)) [+ ½ log 2π when full].
// var has the input's shape, or that shape without its last dim, or with a last dim of 1 (one
// variance shared along it); it must not be negative. As in PyTorch the clamp does not cut the
// gradient: var receives ½(1/v − (input − target)²/v²) at v = max(var, eps).
template <class T, class D>
Tensor<T, D> gaussian_nll_loss(const Tensor<T, D>& input, const Tensor<T, D>& target, const Tensor<T, D>& var,
                               bool full = false, double eps = 1e-6,
                               LossReduction reduction = LossReduction::mean) {
  const char* op = "gaussian_nll_loss";
  detail::require_defined(op, input, "the input");
  detail::require_defined(op, target, "the target");
  detail::require_defined(op, var, "var");
  Shape joined;
  if (!broadcast_shapes(input.shape(), target.shape(), joined))
    throw_shape_error(op, "input and target cannot be broadcast together", input.shape(), target.shape());
  Tensor<T, D> v = var;
  if (var.shape() != input.shape()) {
    const Shape lead = Shape::from(input.shape().dims, input.dim() > 0 ? input.dim() - 1 : 0);
    const bool without_last = input.dim() > 0 && var.shape() == lead;
    const bool last_one = input.dim() > 0 && var.dim() == input.dim() && var.size(-1) == 1 &&
                          Shape::from(var.shape().dims, var.dim() - 1) == lead;
    if (without_last)
      v = var.unsqueeze(-1);
    else if (!last_one)
      throw_shape_error(op, "var must have the input's shape, or it without the last dimension, or with a last "
                            "dimension of 1",
                        input.shape(), var.shape());
  }
  if (!(eps >= 0)) throw_value_error(op, "eps must be non-negative, got " + std::to_string(eps));
  Tensor<T, D> shift;
  {
    NoGrad guard;
    const Tensor<T, D> vc = v.detach().contiguous();
    if constexpr (std::is_same_v<D, cpu>) {
      for (index_t i = 0; i < vc.numel(); ++i)
        if (vc.data()[i] < T(0))
          throw_value_error(op, "var has a negative entry: element " + std::to_string(i) + " is " +
                                    std::to_string(static_cast<double>(vc.data()[i])));
    }
    // max(var, eps) − var, added as a constant: the value is clamped, the gradient is not.
    shift = Tensor<T, D>(maximum(vc, eps) - vc);
  }
  const double constant = full ? 0.5 * std::log(2.0 * 3.14159265358979323846) : 0.0;
  const Tensor<T, D> loss = (log(v + shift) + square(input - target) / (v + shift)) * 0.5 + constant;
  return detail::reduce_loss(loss, reduction);
}

}  // namespace kiln
