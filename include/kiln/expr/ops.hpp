// kiln/expr/ops.hpp — the elementwise vocabulary on tensors and expressions: arithmetic and
// comparison operators, where, minimum/maximum, exp, log, tanh, sigmoid, relu, gelu, ... all lazy.
// Builds on expr/expr.hpp; evaluation happens on assignment to a Tensor (expr/eval.hpp).
#pragma once

#include <kiln/expr/expr.hpp>

#include <type_traits>

namespace kiln {

template <class S>
concept ScalarOperand = std::is_arithmetic_v<std::remove_cvref_t<S>>;

template <class A, class B>
concept BinaryOperands =
    (TensorOrExpr<A> && (TensorOrExpr<B> || ScalarOperand<B>)) || (ScalarOperand<A> && TensorOrExpr<B>);

namespace detail {
// Combines two operands, turning a scalar into a constant of the other operand's type.
template <class F, class A, class B>
auto binary_op(F f, const A& a, const B& b) {
  if constexpr (TensorOrExpr<A> && TensorOrExpr<B>) {
    return make_binary(f, a, b);
  } else if constexpr (TensorOrExpr<A>) {
    using E = expr_of<A>;
    using T = typename E::value_type;
    return make_binary(f, a, scalar_expr<T, typename E::device_type>(static_cast<T>(b)));
  } else {
    using E = expr_of<B>;
    using T = typename E::value_type;
    return make_binary(f, scalar_expr<T, typename E::device_type>(static_cast<T>(a)), b);
  }
}
template <class Ref, class S>
auto constant_like(S s) {
  using E = expr_of<Ref>;
  using T = typename E::value_type;
  return scalar_expr<T, typename E::device_type>(static_cast<T>(s));
}
template <class E>
using value_of = typename expr_of<E>::value_type;
}  // namespace detail

#define KILN_BINARY_OPERATOR(op, F)                               \
  template <class A, class B>                                     \
    requires BinaryOperands<A, B>                                 \
  auto operator op(const A& a, const B& b) {                      \
    return detail::binary_op(math::fn::F{}, a, b);                \
  }
KILN_BINARY_OPERATOR(+, Add)
KILN_BINARY_OPERATOR(-, Sub)
KILN_BINARY_OPERATOR(*, Mul)
KILN_BINARY_OPERATOR(/, Div)
KILN_BINARY_OPERATOR(==, Eq)
KILN_BINARY_OPERATOR(!=, Ne)
KILN_BINARY_OPERATOR(<, Lt)
KILN_BINARY_OPERATOR(<=, Le)
KILN_BINARY_OPERATOR(>, Gt)
KILN_BINARY_OPERATOR(>=, Ge)
#undef KILN_BINARY_OPERATOR

#define KILN_BINARY_FUNCTION(name, F)                             \
  template <class A, class B>                                     \
    requires BinaryOperands<A, B>                                 \
  auto name(const A& a, const B& b) {                             \
    return detail::binary_op(math::fn::F{}, a, b);                \
  }
KILN_BINARY_FUNCTION(add, Add)
KILN_BINARY_FUNCTION(sub, Sub)
KILN_BINARY_FUNCTION(mul, Mul)
KILN_BINARY_FUNCTION(div, Div)
KILN_BINARY_FUNCTION(eq, Eq)
KILN_BINARY_FUNCTION(ne, Ne)
KILN_BINARY_FUNCTION(lt, Lt)
KILN_BINARY_FUNCTION(le, Le)
KILN_BINARY_FUNCTION(gt, Gt)
KILN_BINARY_FUNCTION(ge, Ge)
// Elementwise maximum/minimum of two operands (NaN propagates).
KILN_BINARY_FUNCTION(maximum, Maximum)
KILN_BINARY_FUNCTION(minimum, Minimum)
#undef KILN_BINARY_FUNCTION

// a raised to b elementwise, or to a scalar exponent.
template <class A, class B>
  requires BinaryOperands<A, B>
auto pow(const A& a, const B& b) {
  if constexpr (TensorOrExpr<A> && ScalarOperand<B>) {
    using T = detail::value_of<A>;
    return make_unary(math::fn::PowScalar<T>{static_cast<T>(b)}, a);
  } else {
    return detail::binary_op(math::fn::Pow{}, a, b);
  }
}

#define KILN_UNARY_FUNCTION(name, F)                              \
  template <TensorOrExpr A>                                       \
  auto name(const A& a) {                                         \
    return make_unary(math::fn::F{}, a);                          \
  }
KILN_UNARY_FUNCTION(operator-, Neg)
KILN_UNARY_FUNCTION(neg, Neg)
KILN_UNARY_FUNCTION(abs, Abs)
KILN_UNARY_FUNCTION(exp, Exp)
KILN_UNARY_FUNCTION(expm1, Expm1)
KILN_UNARY_FUNCTION(log, Log)
KILN_UNARY_FUNCTION(log1p, Log1p)
KILN_UNARY_FUNCTION(sqrt, Sqrt)
KILN_UNARY_FUNCTION(rsqrt, Rsqrt)
KILN_UNARY_FUNCTION(square, Square)
KILN_UNARY_FUNCTION(reciprocal, Reciprocal)
KILN_UNARY_FUNCTION(tanh, Tanh)
KILN_UNARY_FUNCTION(erf, Erf)
KILN_UNARY_FUNCTION(sigmoid, Sigmoid)
KILN_UNARY_FUNCTION(relu, Relu)
KILN_UNARY_FUNCTION(silu, Silu)
// Exact GELU, x·Φ(x).
KILN_UNARY_FUNCTION(gelu, GeluErf)
// GELU with the tanh approximation (GPT-2's).
KILN_UNARY_FUNCTION(gelu_tanh, GeluTanh)
// The operand itself, as an expression (forces a copy when assigned).
KILN_UNARY_FUNCTION(identity, Identity)
#undef KILN_UNARY_FUNCTION

// x for x >= 0, negative_slope·x below.
template <TensorOrExpr A>
auto leaky_relu(const A& a, double negative_slope = 0.01) {
  using T = detail::value_of<A>;
  return make_unary(math::fn::LeakyRelu<T>{static_cast<T>(negative_slope)}, a);
}

// (1/beta)·log(1 + exp(beta·x)), and x itself where beta·x > threshold (PyTorch's defaults).
template <TensorOrExpr A>
auto softplus(const A& a, double beta = 1.0, double threshold = 20.0) {
  using T = detail::value_of<A>;
  if (!(beta > 0)) throw_value_error("softplus", "beta must be positive");
  return make_unary(math::fn::Softplus<T>{static_cast<T>(beta), static_cast<T>(threshold)}, a);
}

// Clamps into [lo, hi]; NaN stays NaN.
template <TensorOrExpr A>
auto clamp(const A& a, double lo, double hi) {
  using T = detail::value_of<A>;
  if (lo > hi) throw_value_error("clamp", "lower bound is above the upper bound");
  return make_unary(math::fn::Clamp<T>{static_cast<T>(lo), static_cast<T>(hi)}, a);
}

// a where cond != 0, else b; cond, a and b broadcast together (a or b may be scalars).
template <TensorOrExpr C, class A, class B>
  requires(TensorOrExpr<A> || ScalarOperand<A>) && (TensorOrExpr<B> || ScalarOperand<B>)
auto where(const C& cond, const A& a, const B& b) {
  auto operand = [&](const auto& x) {
    if constexpr (ScalarOperand<std::remove_cvref_t<decltype(x)>>)
      return detail::constant_like<C>(x);
    else
      return detail::as_expr(x);
  };
  return make_ternary(math::fn::Where{}, cond, operand(a), operand(b));
}

// In-place arithmetic on tensors: writes into the existing elements.
template <class T, class Device>
template <class E>
Tensor<T, Device>& Tensor<T, Device>::operator+=(const E& e) {
  return assign(*this + e);
}
template <class T, class Device>
template <class E>
Tensor<T, Device>& Tensor<T, Device>::operator-=(const E& e) {
  return assign(*this - e);
}
template <class T, class Device>
template <class E>
Tensor<T, Device>& Tensor<T, Device>::operator*=(const E& e) {
  return assign(*this * e);
}
template <class T, class Device>
template <class E>
Tensor<T, Device>& Tensor<T, Device>::operator/=(const E& e) {
  return assign(*this / e);
}

}  // namespace kiln
