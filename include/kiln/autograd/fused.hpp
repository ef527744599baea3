// kiln/autograd/fused.hpp — gradients of fused elementwise expressions: an expression over
// tracked tensors is ONE tape node whose backward, for each tracked operand, is itself a fused
// expression derived at compile time from the derivative rules below (chain rule down the tree).
// Differentiating a backward again (create_graph) replays the gradient expression op by op, each
// op a node with the same rules, so gradients of any order work.
// Builds on autograd/graph.hpp and the expression vocabulary of expr/ops.hpp.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/expr/ops.hpp>

#include <array>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::autograd_rules {

// The result of a rule for an operand that gets no gradient (comparisons, where's condition).
struct NoGradPath {};

template <class X>
inline constexpr bool is_no_grad_v = std::is_same_v<std::remove_cvref_t<X>, NoGradPath>;

namespace fn = math::fn;

// Derivative rules. For f(x): d(f, x, g) is the gradient with respect to x given the output
// gradient g, i.e. g · f'(x); for f(a, b): da and db. Operands are expressions or tensors; each
// rule is written with the public expression vocabulary, so it serves the fused backward (lazy,
// one pass) and the op-by-op replay used for higher derivatives alike. Formulas: standard
// calculus; conventions at kinks follow PyTorch (relu'(0) = 0, |x|'(0) = 0, clamp passes the
// gradient on the closed interval, ties of maximum/minimum split it evenly).
template <class F>
struct Rule;

template <>
struct Rule<fn::Identity> {
  template <class X, class G>
  static auto d(const fn::Identity&, const X&, const G& g) {
    return identity(g);
  }
};
template <>
struct Rule<fn::Neg> {
  template <class X, class G>
  static auto d(const fn::Neg&, const X&, const G& g) {
    return -g;
  }
};
template <>
struct Rule<fn::Abs> {
  template <class X, class G>
  static auto d(const fn::Abs&, const X& x, const G& g) {
    return g * ((x > 0) - (x < 0));
  }
};
template <>
struct Rule<fn::Exp> {
  template <class X, class G>
  static auto d(const fn::Exp&, const X& x, const G& g) {
    return g * exp(x);
  }
};
template <>
struct Rule<fn::Expm1> {
  template <class X, class G>
  static auto d(const fn::Expm1&, const X& x, const G& g) {
    return g * exp(x);
  }
};
template <>
struct Rule<fn::Log> {
  template <class X, class G>
  static auto d(const fn::Log&, const X& x, const G& g) {
    return g / x;
  }
};
template <>
struct Rule<fn::Log1p> {
  template <class X, class G>
  static auto d(const fn::Log1p&, const X& x, const G& g) {
    return g / (x + 1);
  }
};
template <>
struct Rule<fn::Sqrt> {
  // d√x = 1 / (2√x)
  template <class X, class G>
  static auto d(const fn::Sqrt&, const X& x, const G& g) {
    return g * rsqrt(x) * 0.5;
  }
};
template <>
struct Rule<fn::Rsqrt> {
  // d x^(-1/2) = -x^(-1/2) / (2x)
  template <class X, class G>
  static auto d(const fn::Rsqrt&, const X& x, const G& g) {
    return g * rsqrt(x) / x * -0.5;
  }
};
template <>
struct Rule<fn::Square> {
  template <class X, class G>
  static auto d(const fn::Square&, const X& x, const G& g) {
    return g * x * 2;
  }
};
template <>
struct Rule<fn::Reciprocal> {
  // d(1/x) = -1/x²
  template <class X, class G>
  static auto d(const fn::Reciprocal&, const X& x, const G& g) {
    return -g * square(reciprocal(x));
  }
};
template <>
struct Rule<fn::Tanh> {
  // tanh' = 1 − tanh²
  template <class X, class G>
  static auto d(const fn::Tanh&, const X& x, const G& g) {
    return g * (1 - square(tanh(x)));
  }
};
template <>
struct Rule<fn::Erf> {
  // erf'(x) = 2/√π · exp(−x²)
  template <class X, class G>
  static auto d(const fn::Erf&, const X& x, const G& g) {
    return g * exp(-square(x)) * 1.1283791670955126;
  }
};
template <>
struct Rule<fn::Sigmoid> {
  // σ' = σ(1 − σ)
  template <class X, class G>
  static auto d(const fn::Sigmoid&, const X& x, const G& g) {
    return g * sigmoid(x) * (1 - sigmoid(x));
  }
};
template <>
struct Rule<fn::Relu> {
  template <class X, class G>
  static auto d(const fn::Relu&, const X& x, const G& g) {
    return g * (x > 0);
  }
};
template <>
struct Rule<fn::Silu> {
  // (xσ(x))' = σ(x)(1 + x(1 − σ(x)))
  template <class X, class G>
  static auto d(const fn::Silu&, const X& x, const G& g) {
    return g * sigmoid(x) * (1 + x * (1 - sigmoid(x)));
  }
};
template <>
struct Rule<fn::GeluErf> {
  // (xΦ(x))' = Φ(x) + x·φ(x), Φ(x) = (1 + erf(x/√2))/2, φ(x) = exp(−x²/2)/√(2π)
  template <class X, class G>
  static auto d(const fn::GeluErf&, const X& x, const G& g) {
    return g * ((erf(x * 0.7071067811865476) + 1) * 0.5 + x * exp(square(x) * -0.5) * 0.3989422804014327);
  }
};
template <>
struct Rule<fn::GeluTanh> {
  // y = x(1 + tanh u)/2, u = c(x + k x³): y' = (1 + tanh u)/2 + x(1 − tanh² u)·c(1 + 3k x²)/2
  template <class X, class G>
  static auto d(const fn::GeluTanh&, const X& x, const G& g) {
    constexpr double c = 0.7978845608028654, k = 0.044715;
    auto t = tanh((x + x * x * x * k) * c);
    return g * ((t + 1) * 0.5 + x * (1 - square(t)) * (x * x * (3 * k * c) + c) * 0.5);
  }
};
template <class T>
struct Rule<fn::LeakyRelu<T>> {
  template <class X, class G>
  static auto d(const fn::LeakyRelu<T>& f, const X& x, const G& g) {
    return g * where(x > 0, 1.0, static_cast<double>(f.slope));
  }
};
template <class T>
struct Rule<fn::Softplus<T>> {
  // d/dx (1/β) log(1 + e^{βx}) = σ(βx); 1 where βx > threshold (the linear branch)
  template <class X, class G>
  static auto d(const fn::Softplus<T>& f, const X& x, const G& g) {
    return g * where(x * f.beta > f.threshold, 1.0, sigmoid(x * f.beta));
  }
};
template <class T>
struct Rule<fn::Clamp<T>> {
  template <class X, class G>
  static auto d(const fn::Clamp<T>& f, const X& x, const G& g) {
    return g * (x >= f.lo) * (x <= f.hi);
  }
};
template <class T>
struct Rule<fn::PowScalar<T>> {
  // d xᵖ = p·xᵖ⁻¹
  template <class X, class G>
  static auto d(const fn::PowScalar<T>& f, const X& x, const G& g) {
    return g * pow(x, static_cast<double>(f.exponent) - 1.0) * f.exponent;
  }
};

template <>
struct Rule<fn::Add> {
  template <class A, class B, class G>
  static auto da(const fn::Add&, const A&, const B&, const G& g) {
    return identity(g);
  }
  template <class A, class B, class G>
  static auto db(const fn::Add&, const A&, const B&, const G& g) {
    return identity(g);
  }
};
template <>
struct Rule<fn::Sub> {
  template <class A, class B, class G>
  static auto da(const fn::Sub&, const A&, const B&, const G& g) {
    return identity(g);
  }
  template <class A, class B, class G>
  static auto db(const fn::Sub&, const A&, const B&, const G& g) {
    return -g;
  }
};
template <>
struct Rule<fn::Mul> {
  template <class A, class B, class G>
  static auto da(const fn::Mul&, const A&, const B& b, const G& g) {
    return g * b;
  }
  template <class A, class B, class G>
  static auto db(const fn::Mul&, const A& a, const B&, const G& g) {
    return g * a;
  }
};
template <>
struct Rule<fn::Div> {
  // d(a/b)/da = 1/b; d(a/b)/db = −a/b²
  template <class A, class B, class G>
  static auto da(const fn::Div&, const A&, const B& b, const G& g) {
    return g / b;
  }
  template <class A, class B, class G>
  static auto db(const fn::Div&, const A& a, const B& b, const G& g) {
    return -g * a / square(b);
  }
};
template <>
struct Rule<fn::Maximum> {
  template <class A, class B, class G>
  static auto da(const fn::Maximum&, const A& a, const B& b, const G& g) {
    return g * ((a > b) + (a == b) * 0.5);
  }
  template <class A, class B, class G>
  static auto db(const fn::Maximum&, const A& a, const B& b, const G& g) {
    return g * ((b > a) + (a == b) * 0.5);
  }
};
template <>
struct Rule<fn::Minimum> {
  template <class A, class B, class G>
  static auto da(const fn::Minimum&, const A& a, const B& b, const G& g) {
    return g * ((a < b) + (a == b) * 0.5);
  }
  template <class A, class B, class G>
  static auto db(const fn::Minimum&, const A& a, const B& b, const G& g) {
    return g * ((b < a) + (a == b) * 0.5);
  }
};
template <>
struct Rule<fn::Pow> {
  // d aᵇ/da = b·aᵇ⁻¹; d aᵇ/db = aᵇ·ln a (0 where a = 0 and b ≥ 0, as PyTorch)
  template <class A, class B, class G>
  static auto da(const fn::Pow&, const A& a, const B& b, const G& g) {
    return g * b * pow(a, b - 1);
  }
  template <class A, class B, class G>
  static auto db(const fn::Pow&, const A& a, const B& b, const G& g) {
    return g * where((a == 0) * (b >= 0), 0.0, pow(a, b) * log(a));
  }
};
#define KILN_NO_GRADIENT(F)                                        \
  template <>                                                      \
  struct Rule<fn::F> {                                             \
    template <class A, class B, class G>                           \
    static NoGradPath da(const fn::F&, const A&, const B&, const G&) { \
      return {};                                                   \
    }                                                              \
    template <class A, class B, class G>                           \
    static NoGradPath db(const fn::F&, const A&, const B&, const G&) { \
      return {};                                                   \
    }                                                              \
  };
KILN_NO_GRADIENT(Eq)
KILN_NO_GRADIENT(Ne)
KILN_NO_GRADIENT(Lt)
KILN_NO_GRADIENT(Le)
KILN_NO_GRADIENT(Gt)
KILN_NO_GRADIENT(Ge)
#undef KILN_NO_GRADIENT

template <>
struct Rule<fn::Where> {
  // where(c, a, b): the gradient goes to a where c holds, to b elsewhere; none to c.
  template <class C, class A, class B, class G>
  static auto db(const fn::Where&, const C& c, const A&, const B&, const G& g) {
    return where(c, g, 0.0);
  }
  template <class C, class A, class B, class G>
  static auto dc(const fn::Where&, const C& c, const A&, const B&, const G& g) {
    return where(c, 0.0, g);
  }
};

}  // namespace kiln::autograd_rules

namespace kiln::detail {

using autograd_rules::NoGradPath;
using autograd_rules::Rule;
using autograd_rules::is_no_grad_v;

template <class N>
struct node_kind {
  static constexpr int value = -1;
};
template <class T>
struct node_kind<expr::Leaf<T>> {
  static constexpr int value = 0;
};
template <class T>
struct node_kind<expr::Scalar<T>> {
  static constexpr int value = 1;
};
template <class F, class A>
struct node_kind<expr::Unary<F, A>> {
  static constexpr int value = 2;
};
template <class F, class A, class B>
struct node_kind<expr::Binary<F, A, B>> {
  static constexpr int value = 3;
};
template <class F, class A, class B, class C>
struct node_kind<expr::Ternary<F, A, B, C>> {
  static constexpr int value = 4;
};

// The sub-expression `node` whose leaves start at operand `Off` of `ops`, as an Expr of the
// full output shape (gradient expressions always combine it with the output gradient).
template <int Off, class Node, class T, class D, std::size_t N>
Expr<Node, D> sub_expr(const Node& node, const std::array<Tensor<T, D>, N>& ops, const Shape& shape) {
  Expr<Node, D> e;
  e.node = node;
  e.shape = shape;
  for (int i = 0; i < Node::leaves; ++i) e.operands[i] = ops[Off + i];
  return e;
}

template <class X>
auto to_expr(const X& x) {
  if constexpr (is_no_grad_v<X>)
    return x;
  else
    return as_expr(x);
}

// The gradient expression of leaf K, given the gradient g of `node` (whose leaves start at Off):
// the chain rule along the one path from the root to that leaf.
template <int K, int Off, class Node, class T, class D, std::size_t N, class G>
auto leaf_grad(const Node& node, const std::array<Tensor<T, D>, N>& ops, const Shape& shape, const G& g) {
  constexpr int kind = node_kind<Node>::value;
  static_assert(kind >= 0, "kiln: unknown expression node in autograd");
  if constexpr (kind == 0) {
    if constexpr (K == Off)
      return g;
    else
      return NoGradPath{};
  } else if constexpr (kind == 1) {
    return NoGradPath{};
  } else if constexpr (kind == 2) {
    auto ga = to_expr(Rule<decltype(node.f)>::d(node.f, sub_expr<Off>(node.a, ops, shape), g));
    if constexpr (is_no_grad_v<decltype(ga)>)
      return NoGradPath{};
    else
      return leaf_grad<K, Off>(node.a, ops, shape, ga);
  } else if constexpr (kind == 3) {
    using A = decltype(node.a);
    constexpr int mid = Off + A::leaves;
    auto a = sub_expr<Off>(node.a, ops, shape);
    auto b = sub_expr<mid>(node.b, ops, shape);
    if constexpr (K < mid) {
      auto ga = to_expr(Rule<decltype(node.f)>::da(node.f, a, b, g));
      if constexpr (is_no_grad_v<decltype(ga)>)
        return NoGradPath{};
      else
        return leaf_grad<K, Off>(node.a, ops, shape, ga);
    } else {
      auto gb = to_expr(Rule<decltype(node.f)>::db(node.f, a, b, g));
      if constexpr (is_no_grad_v<decltype(gb)>)
        return NoGradPath{};
      else
        return leaf_grad<K, mid>(node.b, ops, shape, gb);
    }
  } else {
    using A = decltype(node.a);
    using B = decltype(node.b);
    constexpr int mid = Off + A::leaves, last = mid + B::leaves;
    if constexpr (K < mid) {
      return NoGradPath{};
    } else {
      auto c = sub_expr<Off>(node.a, ops, shape);
      auto a = sub_expr<mid>(node.b, ops, shape);
      auto b = sub_expr<last>(node.c, ops, shape);
      if constexpr (K < last)
        return leaf_grad<K, mid>(node.b, ops, shape, to_expr(Rule<decltype(node.f)>::db(node.f, c, a, b, g)));
      else
        return leaf_grad<K, last>(node.c, ops, shape, to_expr(Rule<decltype(node.f)>::dc(node.f, c, a, b, g)));
    }
  }
}

// Evaluates an expression without recording anything.
template <class E>
auto eval_raw(const E& e) {
  using T = typename E::value_type;
  using D = typename E::device_type;
  auto out = Tensor<T, D>::uninitialized(e.shape);
  Backend<D>::eval(out.data(), out.strides(), e.shape, e.node);
  return out;
}

template <class E>
auto interpret(const E& e);

// One elementwise op on whole tensors, recorded with its rule (the op-by-op replay).
template <class F, class T, class D>
Tensor<T, D> prim_unary(const F& f, const Tensor<T, D>& x) {
  Tensor<T, D> y = eval_raw(make_unary(f, x));
  record(F::name, y, {x}, [f, x](const Tensor<T, D>& g, const auto&) {
    auto ge = to_expr(Rule<F>::d(f, x, g));
    if constexpr (is_no_grad_v<decltype(ge)>)
      return std::vector<Tensor<T, D>>{Tensor<T, D>()};
    else
      return std::vector<Tensor<T, D>>{sum_to(interpret(ge), x.shape())};
  });
  return y;
}
template <class F, class T, class D>
Tensor<T, D> prim_binary(const F& f, const Tensor<T, D>& a, const Tensor<T, D>& b) {
  Tensor<T, D> y = eval_raw(make_binary(f, a, b));
  record(F::name, y, {a, b}, [f, a, b](const Tensor<T, D>& g, const auto& node) {
    std::vector<Tensor<T, D>> out(2);
    if (node.needs(0)) {
      auto ga = to_expr(Rule<F>::da(f, a, b, g));
      if constexpr (!is_no_grad_v<decltype(ga)>) out[0] = sum_to(interpret(ga), a.shape());
    }
    if (node.needs(1)) {
      auto gb = to_expr(Rule<F>::db(f, a, b, g));
      if constexpr (!is_no_grad_v<decltype(gb)>) out[1] = sum_to(interpret(gb), b.shape());
    }
    return out;
  });
  return y;
}
template <class F, class T, class D>
Tensor<T, D> prim_ternary(const F& f, const Tensor<T, D>& c, const Tensor<T, D>& a, const Tensor<T, D>& b) {
  Tensor<T, D> y = eval_raw(make_ternary(f, c, a, b));
  record(F::name, y, {c, a, b}, [f, c, a, b](const Tensor<T, D>& g, const auto& node) {
    std::vector<Tensor<T, D>> out(3);
    if (node.needs(1)) out[1] = sum_to(interpret(to_expr(Rule<F>::db(f, c, a, b, g))), a.shape());
    if (node.needs(2)) out[2] = sum_to(interpret(to_expr(Rule<F>::dc(f, c, a, b, g))), b.shape());
    return out;
  });
  return y;
}

template <int Off, class Node, class T, class D, std::size_t N>
Tensor<T, D> interpret_node(const Node& node, const std::array<Tensor<T, D>, N>& ops) {
  constexpr int kind = node_kind<Node>::value;
  if constexpr (kind == 0) {
    return ops[Off];
  } else if constexpr (kind == 1) {
    Tensor<T, D> s(Shape{});
    s.fill_(node.value);
    return s;
  } else if constexpr (kind == 2) {
    return prim_unary(node.f, interpret_node<Off>(node.a, ops));
  } else if constexpr (kind == 3) {
    constexpr int mid = Off + decltype(node.a)::leaves;
    return prim_binary(node.f, interpret_node<Off>(node.a, ops), interpret_node<mid>(node.b, ops));
  } else {
    constexpr int mid = Off + decltype(node.a)::leaves, last = mid + decltype(node.b)::leaves;
    return prim_ternary(node.f, interpret_node<Off>(node.a, ops), interpret_node<mid>(node.b, ops),
                        interpret_node<last>(node.c, ops));
  }
}

// Evaluates `e` op by op, recording each op (used for gradients that must be differentiable
// again); without recording on, one fused pass.
template <class E>
auto interpret(const E& e) {
  using T = typename E::value_type;
  using D = typename E::device_type;
  if (!grad_mode_enabled() || !e.tracks_grad()) return eval_raw(e);
  Tensor<T, D> out = interpret_node<0>(e.node, e.operands);
  if (out.shape() != e.shape) out = Tensor<T, D>(out.expand(e.shape).contiguous());
  return out;
}

template <class E, class T, class D, std::size_t... K>
void fused_backward(const E& e, const Tensor<T, D>& g, const Node<T, D>& node, std::vector<Tensor<T, D>>& out,
                    std::index_sequence<K...>) {
  auto one = [&](auto k) {
    constexpr int KK = decltype(k)::value;
    if (!node.needs(KK)) return;
    auto ge = leaf_grad<KK, 0>(e.node, e.operands, e.shape, as_expr(g));
    if constexpr (!is_no_grad_v<decltype(ge)>) {
      out[KK] = sum_to(interpret(ge), e.operands[KK].shape());
    }
  };
  (one(std::integral_constant<int, static_cast<int>(K)>{}), ...);
}

template <class T, class Device, class E>
void record_fused(Tensor<T, Device>& out, const E& e) {
  constexpr std::size_t N = E::node_type::leaves;
  std::vector<Tensor<T, Device>> inputs(e.operands.begin(), e.operands.end());
  record_many("elementwise", out, inputs, [e](const Tensor<T, Device>& g, const Node<T, Device>& node) {
    std::vector<Tensor<T, Device>> grads(N);
    fused_backward(e, g, node, grads, std::make_index_sequence<N>{});
    return grads;
  });
}

}  // namespace kiln::detail
