// kiln/expr/eval.hpp — evaluation of lazy expressions into tensors: a new tensor on
// construction/assignment, or in place (Tensor::assign, +=) with a guard against aliasing.
// Builds on expr/expr.hpp and the Backend<Device>::eval entry point of each backend.
#pragma once

#include <kiln/expr/expr.hpp>

#include <type_traits>

namespace kiln::detail {

// Records the evaluation of `e` into `out` as one autograd node (kiln/autograd/fused.hpp).
template <class T, class Device, class E>
void record_fused(Tensor<T, Device>& out, const E& e);
// Whether operations on tracked tensors are recorded for backward, per thread (switched by
// kiln::NoGrad and kiln::EnableGrad in kiln/autograd/graph.hpp).
inline bool& grad_mode_flag() {
  thread_local bool enabled = true;
  return enabled;
}
inline bool grad_mode_enabled() { return grad_mode_flag(); }

template <class T, class Device, class E>
void evaluate_new(Tensor<T, Device>& out, const E& e) {
  static_assert(std::is_same_v<typename E::value_type, T>,
                "kiln: the expression's element type differs from the tensor's; convert with .to<T>()");
  static_assert(std::is_same_v<typename E::device_type, Device>,
                "kiln: the expression lives on another device than the tensor");
  auto result = Tensor<T, Device>::uninitialized(e.shape);
  Backend<Device>::eval(result.data(), result.strides(), e.shape, e.node);
  if (e.tracks_grad() && grad_mode_enabled()) record_fused(result, e);
  out = std::move(result);
}

template <class T, class Device, class E>
void evaluate_into(Tensor<T, Device>& dst, const E& value) {
  if constexpr (std::is_arithmetic_v<E>) {
    dst.fill_(static_cast<T>(value));
  } else {
    const auto& e = as_expr(value);
    using X = std::remove_cvref_t<decltype(e)>;
    static_assert(std::is_same_v<typename X::value_type, T>,
                  "kiln: assign: the value's element type differs from the tensor's");
    static_assert(std::is_same_v<typename X::device_type, Device>,
                  "kiln: assign: the value lives on another device than the tensor");
    const Shape& shape = dst.shape();
    if ((dst.tracks_grad() || e.tracks_grad()) && grad_mode_enabled())
      throw Error("kiln::assign: in-place writes are not recorded for backward; the destination or the value "
                  "is tracked by autograd (write inside a kiln::NoGrad scope, or build a new tensor instead)");
    if (!broadcastable_to(e.shape, shape))
      throw_shape_error("assign", "the value cannot be broadcast to the destination", e.shape, shape);
    for (int i = 0; i < shape.ndim; ++i)
      if (dst.strides().dims[i] == 0 && shape.dims[i] > 1)
        throw_shape_error("assign", "the destination is an expanded view whose elements share memory", shape);
    // Reading the destination's storage through any other view than the destination itself
    // would see elements already overwritten: evaluate into a temporary first then.
    auto node = e.node;
    node.bind(shape);
    bool hazard = false;
    std::size_t i = 0;
    node.for_each_leaf([&](const T* p, const Shape& strides) {
      if (e.operands[i].storage().get() == dst.storage().get() && (p != dst.data() || strides != dst.strides())) hazard = true;
      ++i;
    });
    if (hazard) {
      Tensor<T, Device> tmp(e);
      const auto& et = as_expr(tmp);
      Backend<Device>::eval(dst.data(), dst.strides(), shape, et.node);
    } else {
      Backend<Device>::eval(dst.data(), dst.strides(), shape, e.node);
    }
  }
}

}  // namespace kiln::detail
