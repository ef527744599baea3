// kiln/expr/reduce.hpp — the raw reductions along one axis or over all elements (sum, mean,
// max, min, var, logsumexp, argmax, argmin) that kiln/ops/reduce.hpp wraps with gradients.
// Builds on expr/eval.hpp and Backend<Device>::reduce / argreduce.
#pragma once

#include <kiln/expr/eval.hpp>

#include <string>

namespace kiln {

namespace detail {

// The input as a contiguous tensor (an expression is evaluated first).
template <TensorOrExpr E>
auto materialize(const E& x) {
  if constexpr (is_tensor<std::remove_cvref_t<E>>::value) {
    static_assert(is_floating_element<typename E::value_type>, "kiln: reductions work on float and double tensors");
    return x.contiguous();
  } else {
    return Tensor<typename E::value_type, typename E::device_type>(x);
  }
}

struct ReduceGeometry {
  index_t outer = 1, R = 1, inner = 1;
  Shape out_shape;
};

inline ReduceGeometry reduce_geometry(const char* op, const Shape& s, int axis, bool keepdim) {
  ReduceGeometry g;
  const int a = normalize_axis(op, axis, s.ndim);
  for (int i = 0; i < s.ndim; ++i) {
    if (i < a) g.outer *= s.dims[i];
    if (i > a) g.inner *= s.dims[i];
    if (i != a)
      g.out_shape.push_back(s.dims[i]);
    else if (keepdim)
      g.out_shape.push_back(1);
  }
  g.R = s.dims[a];
  return g;
}

template <TensorOrExpr E>
auto reduce_axis(const char* op, Reduction kind, const E& x, int axis, bool keepdim, double correction = 1) {
  auto c = materialize(x);
  using T = typename decltype(c)::value_type;
  using D = typename decltype(c)::device_type;
  const bool scalar_input = c.dim() == 0;
  if (scalar_input) {
    normalize_axis(op, axis, 1);
    c = c.reshape({1});
  }
  ReduceGeometry g = reduce_geometry(op, c.shape(), axis, keepdim);
  if (scalar_input) g.out_shape = Shape{};  // like PyTorch: a 0-d input reduces to 0-d
  if (g.R == 0 && (kind == Reduction::max || kind == Reduction::min))
    throw_shape_error(op, "cannot reduce an empty dimension (axis " + std::to_string(axis) + ")", c.shape());
  auto out = Tensor<T, D>::uninitialized(g.out_shape);
  Backend<D>::reduce(kind, c.data(), out.data(), g.outer, g.R, g.inner, correction);
  return out;
}

template <TensorOrExpr E>
auto reduce_all(const char* op, Reduction kind, const E& x, double correction = 1) {
  auto c = materialize(x);
  using T = typename decltype(c)::value_type;
  using D = typename decltype(c)::device_type;
  if (c.numel() == 0 && (kind == Reduction::max || kind == Reduction::min))
    throw_shape_error(op, "cannot reduce an empty tensor", c.shape());
  auto out = Tensor<T, D>::uninitialized(Shape{});
  Backend<D>::reduce(kind, c.data(), out.data(), 1, c.numel(), 1, correction);
  return out;
}

template <TensorOrExpr E>
auto arg_reduce(const char* op, const E& x, int axis, bool keepdim, bool is_max) {
  auto c = materialize(x);
  using D = typename decltype(c)::device_type;
  if (c.dim() == 0) c = c.reshape({1});
  const ReduceGeometry g = reduce_geometry(op, c.shape(), axis, keepdim);
  if (g.R == 0) throw_shape_error(op, "cannot reduce an empty dimension", c.shape());
  auto out = Tensor<index_t, D>::uninitialized(g.out_shape);
  Backend<D>::argreduce(c.data(), out.data(), g.outer, g.R, g.inner, is_max);
  return out;
}

}  // namespace detail

}  // namespace kiln
