// kiln/ops/softmax.hpp — softmax and log_softmax along one axis, numerically stable (shifted by
// the maximum), with gradients of any order.
// Builds on ops/reduce.hpp (logsumexp, sum), autograd/graph.hpp and, on the CPU, the fused row
// kernels of backend/cpu/softmax.hpp for the last axis.
#pragma once

#include <kiln/autograd/fused.hpp>
#include <kiln/autograd/graph.hpp>
#include <kiln/backend/cpu/softmax.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/expr/ops.hpp>
#include <kiln/expr/reduce.hpp>
#include <kiln/ops/reduce.hpp>

#include <type_traits>
#include <vector>

namespace kiln {

template <class T, class D>
Tensor<T, D> softmax(const Tensor<T, D>& x, int axis = -1);
template <class T, class D>
Tensor<T, D> log_softmax(const Tensor<T, D>& x, int axis = -1);

namespace detail {

// The fused CPU row kernels apply to contiguous float/double data reduced along its last axis.
template <class T, class D>
constexpr bool has_softmax_row_kernel = std::is_same_v<D, cpu> && is_floating_element<T>;

// softmax (log = false) or log_softmax (log = true) of contiguous `x` along axis `ax`, not recorded:
// y = x − lse or exp(x − lse) with lse = m + log Σ exp(x − m), m the maximum along the axis.
template <class T, class D>
Tensor<T, D> softmax_forward_raw(const Tensor<T, D>& x, int ax, bool log) {
  NoGrad guard;
  if constexpr (has_softmax_row_kernel<T, D>) {
    if (ax == x.dim() - 1) {
      const index_t cols = x.size(ax), rows = cols == 0 ? 0 : x.numel() / cols;
      auto y = Tensor<T, D>::uninitialized(x.shape());
      if (log)
        backend::cpu::log_softmax_forward(x.data(), rows, cols, y.data());
      else
        backend::cpu::softmax_forward(x.data(), rows, cols, y.data());
      return y;
    }
  }
  Tensor<T, D> lse = reduce_axis(log ? "log_softmax" : "softmax", Reduction::logsumexp, x, ax, true);
  if (log) return Tensor<T, D>(x - lse);
  return Tensor<T, D>(exp(x - lse));
}

// Shared by softmax and log_softmax: shape checks, 0-d and empty inputs, recording.
template <class T, class D>
Tensor<T, D> softmax_family(const Tensor<T, D>& x, int axis, bool log) {
  static_assert(is_floating_element<T>, "kiln::softmax and kiln::log_softmax work on float and double tensors");
  const char* op = log ? "log_softmax" : "softmax";
  if (!x.defined()) throw_value_error(op, "the input is an undefined tensor");
  // A 0-d tensor is a row of one element (axis 0 or -1), as in PyTorch.
  if (x.dim() == 0) {
    normalize_axis(op, axis, 1);
    return softmax_family(x.reshape({1}), 0, log).reshape(Shape{});
  }
  const int ax = normalize_axis(op, axis, x.dim());
  Tensor<T, D> y = x.numel() == 0 ? Tensor<T, D>(x.shape()) : softmax_forward_raw(x.detach().contiguous(), ax, log);
  if (log) {
    // y = x − logsumexp(x), so ∂y_i/∂x_k = δ_ik − softmax_k and
    //   gx_k = Σ_i g_i (δ_ik − softmax_k) = g_k − exp(y_k) Σ_i g_i
    // (the Jacobian of log_softmax; e.g. Goodfellow et al., Deep Learning, §6.2.2.3).
    // For a gradient that is differentiated again (grad mode on: create_graph) exp(y) is
    // recomputed as the tracked softmax of x, so second and higher derivatives are exact.
    record("log_softmax", y, {x}, [x, ax, y_value = y.detach()](const Tensor<T, D>& g, const auto&) {
      if (g.numel() == 0) return std::vector<Tensor<T, D>>{Tensor<T, D>(x.shape())};
      if (grad_mode_enabled()) {
        Tensor<T, D> p = softmax(x, ax);
        return std::vector<Tensor<T, D>>{Tensor<T, D>(g - p * sum(g, ax, true))};
      }
      if constexpr (has_softmax_row_kernel<T, D>) {
        if (ax == x.dim() - 1) {
          Tensor<T, D> gc = g.detach().contiguous();
          auto gx = Tensor<T, D>::uninitialized(y_value.shape());
          const index_t cols = y_value.size(ax), rows = y_value.numel() / cols;
          backend::cpu::log_softmax_backward(gc.data(), y_value.data(), rows, cols, gx.data());
          return std::vector<Tensor<T, D>>{gx};
        }
      }
      return std::vector<Tensor<T, D>>{Tensor<T, D>(g - exp(y_value) * sum(g, ax, true))};
    });
  } else {
    // y_i = exp(x_i) / Σ_j exp(x_j), so ∂y_i/∂x_k = y_i (δ_ik − y_k) and
    //   gx_k = Σ_i g_i y_i (δ_ik − y_k) = y_k (g_k − Σ_i g_i y_i).
    // With grad mode on (create_graph) y is recomputed as the tracked softmax of x.
    record("softmax", y, {x}, [x, ax, y_value = y.detach()](const Tensor<T, D>& g, const auto&) {
      if (g.numel() == 0) return std::vector<Tensor<T, D>>{Tensor<T, D>(x.shape())};
      if (grad_mode_enabled()) {
        Tensor<T, D> p = softmax(x, ax);
        return std::vector<Tensor<T, D>>{Tensor<T, D>(p * (g - sum(g * p, ax, true)))};
      }
      if constexpr (has_softmax_row_kernel<T, D>) {
        if (ax == x.dim() - 1) {
          Tensor<T, D> gc = g.detach().contiguous();
          auto gx = Tensor<T, D>::uninitialized(y_value.shape());
          const index_t cols = y_value.size(ax), rows = y_value.numel() / cols;
          backend::cpu::softmax_backward(gc.data(), y_value.data(), rows, cols, gx.data());
          return std::vector<Tensor<T, D>>{gx};
        }
      }
      return std::vector<Tensor<T, D>>{Tensor<T, D>(y_value * (g - sum(g * y_value, ax, true)))};
    });
  }
  return y;
}

}  // namespace detail

// exp(x_i − m) / Σ_j exp(x_j − m) along `axis` (m the maximum along it): each slice along the
// axis sums to 1. A row of −inf gives NaN, as in PyTorch.
template <class T, class D>
Tensor<T, D> softmax(const Tensor<T, D>& x, int axis) {
  return detail::softmax_family(x, axis, false);
}

// x − logsumexp(x) along `axis`, computed as x − m − log Σ exp(x − m) so it neither overflows nor
// loses the small probabilities that log(softmax(x)) would round to log 0.
template <class T, class D>
Tensor<T, D> log_softmax(const Tensor<T, D>& x, int axis) {
  return detail::softmax_family(x, axis, true);
}

// The same for a lazy expression (evaluated first).
template <ExpressionLike E>
auto softmax(const E& x, int axis = -1) {
  return softmax(x.eval(), axis);
}
template <ExpressionLike E>
auto log_softmax(const E& x, int axis = -1) {
  return log_softmax(x.eval(), axis);
}

}  // namespace kiln
