// kiln/ops/reduce.hpp — reductions with gradients: sum, mean, max, min, var, logsumexp along one
// axis or over all elements, plus argmax/argmin (no gradient). They compute at once.
// Builds on expr/reduce.hpp (the raw kernels) and autograd/graph.hpp (recording).
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/expr/reduce.hpp>

#include <vector>

namespace kiln {

namespace detail {

inline constexpr int reduce_over_all = -1000;

// The gradient of a reduction broadcast back to the input's shape: g with the reduced axis
// re-inserted (axis < 0: a reduction over all elements).
template <class T, class D>
Tensor<T, D> unreduce(const Tensor<T, D>& g, const Shape& in_shape, int axis, bool keepdim) {
  if (axis < 0 || in_shape.ndim == 0) return g.reshape(Shape{}).expand(in_shape);
  Tensor<T, D> gk = keepdim ? g : g.unsqueeze(axis);
  return gk.expand(in_shape);
}

// Records the backward of reduction `kind` of `x` (materialized) into `out`.
template <class T, class D>
void record_reduction(const char* op, Reduction kind, const Tensor<T, D>& x, Tensor<T, D>& out, int axis,
                      bool keepdim, double correction) {
  if (!x.tracks_grad() || !grad_mode_enabled()) return;
  // axis == reduce_over_all (or a 0-d input): the reduction ran over every element.
  const int ax = (axis == reduce_over_all || x.dim() == 0) ? -1 : normalize_axis(op, axis, x.dim());
  const Shape shape = x.shape();
  const index_t R = ax < 0 ? x.numel() : shape.dims[ax];
  switch (kind) {
    case Reduction::sum:
      record(op, out, {x}, [shape, ax, keepdim](const Tensor<T, D>& g, const auto&) {
        return std::vector<Tensor<T, D>>{unreduce(g, shape, ax, keepdim)};
      });
      break;
    case Reduction::mean:
      // d mean / d x_i = 1/R.
      record(op, out, {x}, [shape, ax, keepdim, R](const Tensor<T, D>& g, const auto&) {
        return std::vector<Tensor<T, D>>{Tensor<T, D>(unreduce(g, shape, ax, keepdim) * (T(1) / T(R)))};
      });
      break;
    case Reduction::max:
    case Reduction::min: {
      // The gradient goes to the elements equal to the extreme, shared evenly among ties
      // (as torch.amax / torch.amin).
      Tensor<T, D> m = out.detach();
      record(op, out, {x}, [x, m, shape, ax, keepdim](const Tensor<T, D>& g, const auto&) {
        Tensor<T, D> hit = (x.detach() == unreduce(m, shape, ax, keepdim));
        Tensor<T, D> count = ax < 0 ? reduce_all("sum", Reduction::sum, hit)
                                    : reduce_axis("sum", Reduction::sum, hit, ax, true);
        return std::vector<Tensor<T, D>>{
            Tensor<T, D>(unreduce(g, shape, ax, keepdim) * hit / count.expand(shape))};
      });
      break;
    }
    case Reduction::var:
      // var = Σ(x − x̄)² / (R − c): d/dx_i = 2(x_i − x̄)/(R − c) (the x̄ terms sum to zero).
      record(op, out, {x}, [x, shape, ax, keepdim, R, correction](const Tensor<T, D>& g, const auto&) {
        Tensor<T, D> centered;
        if (ax < 0) {
          Tensor<T, D> mu = reduce_all("mean", Reduction::mean, x);
          record_reduction("mean", Reduction::mean, x, mu, reduce_over_all, false, 0.0);
          centered = Tensor<T, D>(x - mu.expand(shape));
        } else {
          Tensor<T, D> mu = reduce_axis("mean", Reduction::mean, x, ax, true);
          record_reduction("mean", Reduction::mean, x, mu, ax, true, 0.0);
          centered = Tensor<T, D>(x - mu.expand(shape));
        }
        const T scale = T(2) / T(static_cast<double>(R) - correction);
        return std::vector<Tensor<T, D>>{Tensor<T, D>(unreduce(g, shape, ax, keepdim) * centered * scale)};
      });
      break;
    case Reduction::logsumexp:
      // d/dx_i log Σ exp(x) = exp(x_i − lse) (the softmax).
      record(op, out, {x}, [x, shape, ax, keepdim, out_detached = out.detach()](const Tensor<T, D>& g, const auto&) {
        // Differentiable again (create_graph): recompute lse as a tracked op of x.
        Tensor<T, D> lse = out_detached;
        if (grad_mode_enabled()) {
          lse = ax < 0 ? reduce_all("logsumexp", Reduction::logsumexp, x)
                       : reduce_axis("logsumexp", Reduction::logsumexp, x, ax, keepdim);
          record_reduction("logsumexp", Reduction::logsumexp, x, lse, ax < 0 ? reduce_over_all : ax, keepdim, 0.0);
        }
        return std::vector<Tensor<T, D>>{
            Tensor<T, D>(unreduce(g, shape, ax, keepdim) * exp(x - unreduce(lse, shape, ax, keepdim)))};
      });
      break;
  }
}

template <TensorOrExpr E>
auto tracked_reduce_all(const char* op, Reduction kind, const E& x, double correction = 1) {
  auto c = materialize(x);
  auto out = reduce_all(op, kind, c, correction);
  record_reduction(op, kind, c, out, reduce_over_all, false, correction);
  return out;
}
template <TensorOrExpr E>
auto tracked_reduce_axis(const char* op, Reduction kind, const E& x, int axis, bool keepdim, double correction = 1) {
  auto c = materialize(x);
  auto out = reduce_axis(op, kind, c, axis, keepdim, correction);
  record_reduction(op, kind, c, out, c.dim() == 0 ? reduce_over_all : axis, keepdim, correction);
  return out;
}

}  // namespace detail

// Sum of all elements (a 0-d tensor), or along `axis`.
template <TensorOrExpr E>
auto sum(const E& x) {
  return detail::tracked_reduce_all("sum", Reduction::sum, x);
}
template <TensorOrExpr E>
auto sum(const E& x, int axis, bool keepdim = false) {
  return detail::tracked_reduce_axis("sum", Reduction::sum, x, axis, keepdim);
}
// Arithmetic mean (NaN over zero elements).
template <TensorOrExpr E>
auto mean(const E& x) {
  return detail::tracked_reduce_all("mean", Reduction::mean, x);
}
template <TensorOrExpr E>
auto mean(const E& x, int axis, bool keepdim = false) {
  return detail::tracked_reduce_axis("mean", Reduction::mean, x, axis, keepdim);
}
// Largest element (NaN if any is NaN).
template <TensorOrExpr E>
auto max(const E& x) {
  return detail::tracked_reduce_all("max", Reduction::max, x);
}
template <TensorOrExpr E>
auto max(const E& x, int axis, bool keepdim = false) {
  return detail::tracked_reduce_axis("max", Reduction::max, x, axis, keepdim);
}
// Smallest element (NaN if any is NaN).
template <TensorOrExpr E>
auto min(const E& x) {
  return detail::tracked_reduce_all("min", Reduction::min, x);
}
template <TensorOrExpr E>
auto min(const E& x, int axis, bool keepdim = false) {
  return detail::tracked_reduce_axis("min", Reduction::min, x, axis, keepdim);
}
// Variance, Σ(x − mean)² / (N − correction); correction 1 (default) is the unbiased estimate.
template <TensorOrExpr E>
auto var(const E& x) {
  return detail::tracked_reduce_all("var", Reduction::var, x, 1.0);
}
template <TensorOrExpr E>
auto var(const E& x, int axis, double correction = 1.0, bool keepdim = false) {
  return detail::tracked_reduce_axis("var", Reduction::var, x, axis, keepdim, correction);
}
// log Σ exp(x), computed as m + log Σ exp(x − m) with m the maximum.
template <TensorOrExpr E>
auto logsumexp(const E& x) {
  return detail::tracked_reduce_all("logsumexp", Reduction::logsumexp, x);
}
template <TensorOrExpr E>
auto logsumexp(const E& x, int axis, bool keepdim = false) {
  return detail::tracked_reduce_axis("logsumexp", Reduction::logsumexp, x, axis, keepdim);
}
// Index of the first largest element along `axis` (flat index over all elements without one).
template <TensorOrExpr E>
auto argmax(const E& x, int axis, bool keepdim = false) {
  return detail::arg_reduce("argmax", x, axis, keepdim, true);
}
template <TensorOrExpr E>
auto argmax(const E& x) {
  auto c = detail::materialize(x);
  return detail::arg_reduce("argmax", c.reshape({-1}), 0, false, true);
}
template <TensorOrExpr E>
auto argmin(const E& x, int axis, bool keepdim = false) {
  return detail::arg_reduce("argmin", x, axis, keepdim, false);
}
template <TensorOrExpr E>
auto argmin(const E& x) {
  auto c = detail::materialize(x);
  return detail::arg_reduce("argmin", c.reshape({-1}), 0, false, false);
}

}  // namespace kiln
