// kiln/expr/expr.hpp — lazy elementwise expression nodes (Leaf, Scalar, Unary, Binary, Ternary)
// and the user-facing Expr wrapper that keeps its tensors alive. Nodes are trivially copyable,
// so the same expression can be evaluated by a CPU loop or passed by value to a CUDA kernel.
// Builds on core/tensor.hpp and expr/math.hpp.
#pragma once

#include <kiln/core/tensor.hpp>
#include <kiln/expr/math.hpp>

#include <array>
#include <memory>
#include <type_traits>

namespace kiln::expr {

// How the leaves of a bound expression are read along the innermost dimension.
enum class Access {
  contiguous,  // every leaf has inner stride 1 (or is a scalar)
  mixed,       // inner strides are 0 or 1
  general,     // any inner stride (gathered)
};

// A tensor operand: base pointer and strides (broadcast to the output once bound).
template <class T>
struct Leaf {
  using value_type = T;
  static constexpr int leaves = 1;

  const T* data;
  Shape shape;
  Shape strides;
  // Iteration state of the CPU row loop.
  const T* row = nullptr;
  index_t inner = 0;

  KILN_HD void bind(const Shape& out) {
    strides = broadcast_strides(shape, strides, out);
    shape = out;
  }
  template <class F>
  void for_each_strides(F&& f) {
    f(strides);
  }
  template <class F>
  void for_each_leaf(F&& f) const {
    f(data, strides);
  }
  template <class F>
  void for_each_leaf_node(F&& f) {
    f(*this);
  }
  // Points the row at `scratch` holding elements j .. j+n-1 of the current row (zero padded to
  // `width`), so the last, partial packet of a row runs through the same code as full ones.
  void redirect_tail(T* scratch, index_t j, int n, int width) {
    if (inner == 0) return;
    for (int k = 0; k < width; ++k) scratch[k] = k < n ? row[(j + k) * inner] : T(0);
    row = scratch;
    inner = 1;
  }
  KILN_HD T at(const index_t* coords, int ndim) const {
    index_t off = 0;
    for (int i = 0; i < ndim; ++i) off += coords[i] * strides.dims[i];
    return data[off];
  }
  void seek(const index_t* coords, int ndim, index_t col) {
    index_t off = 0;
    for (int i = 0; i + 1 < ndim; ++i) off += coords[i] * strides.dims[i];
    inner = strides.dims[ndim - 1];
    row = data + off + col * inner;
  }
  template <class V, Access A>
  V packet(index_t j) const {
    if constexpr (A == Access::contiguous) {
      return V::load(row + j);
    } else if constexpr (A == Access::mixed) {
      return inner == 0 ? V::broadcast(*row) : V::load(row + j);
    } else {
      alignas(64) T buf[V::size];
      for (int k = 0; k < V::size; ++k) buf[k] = row[(j + k) * inner];
      return V::load(buf);
    }
  }
};

// A constant.
template <class T>
struct Scalar {
  using value_type = T;
  static constexpr int leaves = 0;
  T value;

  KILN_HD void bind(const Shape&) {}
  template <class F>
  void for_each_strides(F&&) {}
  template <class F>
  void for_each_leaf(F&&) const {}
  template <class F>
  void for_each_leaf_node(F&&) {}
  KILN_HD T at(const index_t*, int) const { return value; }
  void seek(const index_t*, int, index_t) {}
  template <class V, Access A>
  V packet(index_t) const {
    return V::broadcast(value);
  }
};

template <class F, class A>
struct Unary {
  using value_type = typename A::value_type;
  static constexpr int leaves = A::leaves;
  F f;
  A a;

  KILN_HD void bind(const Shape& out) { a.bind(out); }
  template <class G>
  void for_each_strides(G&& g) {
    a.for_each_strides(g);
  }
  template <class G>
  void for_each_leaf(G&& g) const {
    a.for_each_leaf(g);
  }
  template <class G>
  void for_each_leaf_node(G&& g) {
    a.for_each_leaf_node(g);
  }
  KILN_HD value_type at(const index_t* c, int n) const { return f(a.at(c, n)); }
  void seek(const index_t* c, int n, index_t col) { a.seek(c, n, col); }
  template <class V, Access M>
  V packet(index_t j) const {
    return f(a.template packet<V, M>(j));
  }
};

template <class F, class A, class B>
struct Binary {
  using value_type = typename A::value_type;
  static constexpr int leaves = A::leaves + B::leaves;
  F f;
  A a;
  B b;

  KILN_HD void bind(const Shape& out) {
    a.bind(out);
    b.bind(out);
  }
  template <class G>
  void for_each_strides(G&& g) {
    a.for_each_strides(g);
    b.for_each_strides(g);
  }
  template <class G>
  void for_each_leaf(G&& g) const {
    a.for_each_leaf(g);
    b.for_each_leaf(g);
  }
  template <class G>
  void for_each_leaf_node(G&& g) {
    a.for_each_leaf_node(g);
    b.for_each_leaf_node(g);
  }
  KILN_HD value_type at(const index_t* c, int n) const { return f(a.at(c, n), b.at(c, n)); }
  void seek(const index_t* c, int n, index_t col) {
    a.seek(c, n, col);
    b.seek(c, n, col);
  }
  template <class V, Access M>
  V packet(index_t j) const {
    return f(a.template packet<V, M>(j), b.template packet<V, M>(j));
  }
};

template <class F, class A, class B, class C>
struct Ternary {
  using value_type = typename A::value_type;
  static constexpr int leaves = A::leaves + B::leaves + C::leaves;
  F f;
  A a;
  B b;
  C c;

  KILN_HD void bind(const Shape& out) {
    a.bind(out);
    b.bind(out);
    c.bind(out);
  }
  template <class G>
  void for_each_strides(G&& g) {
    a.for_each_strides(g);
    b.for_each_strides(g);
    c.for_each_strides(g);
  }
  template <class G>
  void for_each_leaf(G&& g) const {
    a.for_each_leaf(g);
    b.for_each_leaf(g);
    c.for_each_leaf(g);
  }
  template <class G>
  void for_each_leaf_node(G&& g) {
    a.for_each_leaf_node(g);
    b.for_each_leaf_node(g);
    c.for_each_leaf_node(g);
  }
  KILN_HD value_type at(const index_t* k, int n) const { return f(a.at(k, n), b.at(k, n), c.at(k, n)); }
  void seek(const index_t* k, int n, index_t col) {
    a.seek(k, n, col);
    b.seek(k, n, col);
    c.seek(k, n, col);
  }
  template <class V, Access M>
  V packet(index_t j) const {
    return f(a.template packet<V, M>(j), b.template packet<V, M>(j), c.template packet<V, M>(j));
  }
};

}  // namespace kiln::expr

namespace kiln {

// A lazy elementwise expression on Device: the node tree, its broadcast shape, and every
// tensor it reads, leaf by leaf in the order of the tree (so `auto e = a * b + c;` stays valid
// after a, b, c go, and autograd can find the tracked operands).
template <class Node, class Device>
struct Expr : ExprTag {
  using node_type = Node;
  using value_type = typename Node::value_type;
  using device_type = Device;
  static_assert(std::is_trivially_copyable_v<Node>, "expression nodes must be trivially copyable");

  Node node;
  Shape shape;
  std::array<Tensor<value_type, Device>, Node::leaves> operands;

  // True when some operand is tracked by autograd.
  bool tracks_grad() const {
    for (const auto& t : operands)
      if (t.tracks_grad()) return true;
    return false;
  }

  int dim() const { return shape.ndim; }
  index_t numel() const { return shape.numel(); }
  // Evaluates now, into a new tensor.
  Tensor<value_type, Device> eval() const { return Tensor<value_type, Device>(*this); }
};

template <class E>
struct is_expr : std::false_type {};
template <class N, class D>
struct is_expr<Expr<N, D>> : std::true_type {};

template <class E>
struct is_tensor : std::false_type {};
template <class T, class D>
struct is_tensor<Tensor<T, D>> : std::true_type {};

// Something that can be an operand of an elementwise expression: a tensor or an expression.
template <class E>
concept TensorOrExpr = is_expr<std::remove_cvref_t<E>>::value || is_tensor<std::remove_cvref_t<E>>::value;

namespace detail {

// Wraps a tensor as a leaf expression.
template <class T, class D>
Expr<expr::Leaf<T>, D> as_expr(const Tensor<T, D>& t) {
  static_assert(is_floating_element<T>,
                "elementwise expressions work on float and double tensors: convert with .to<float>()");
  if (!t.defined()) throw Error("kiln: an undefined tensor (default-constructed) was used in an expression");
  Expr<expr::Leaf<T>, D> e;
  e.node = expr::Leaf<T>{t.data(), t.shape(), t.strides(), nullptr, 0};
  e.shape = t.shape();
  e.operands[0] = t;
  return e;
}
template <class N, class D>
const Expr<N, D>& as_expr(const Expr<N, D>& e) {
  return e;
}

template <class T, class D>
Expr<expr::Scalar<T>, D> scalar_expr(T v) {
  Expr<expr::Scalar<T>, D> e;
  e.node = expr::Scalar<T>{v};
  e.shape = Shape{};
  return e;
}

template <class X, std::size_t N, std::size_t M>
std::array<X, N + M> join(const std::array<X, N>& a, const std::array<X, M>& b) {
  std::array<X, N + M> out;
  std::size_t k = 0;
  for (const auto& p : a) out[k++] = p;
  for (const auto& p : b) out[k++] = p;
  return out;
}

template <class E>
using expr_of = std::remove_cvref_t<decltype(as_expr(std::declval<const E&>()))>;

}  // namespace detail

// Builds f(a) lazily.
template <class F, TensorOrExpr A>
auto make_unary(F f, const A& a) {
  const auto& ea = detail::as_expr(a);
  using EA = std::remove_cvref_t<decltype(ea)>;
  using Node = expr::Unary<F, typename EA::node_type>;
  Expr<Node, typename EA::device_type> e;
  e.node = Node{f, ea.node};
  e.shape = ea.shape;
  e.operands = ea.operands;
  return e;
}

// Builds f(a, b) lazily with NumPy broadcasting; throws ShapeError naming the op.
template <class F, TensorOrExpr A, TensorOrExpr B>
auto make_binary(F f, const A& a, const B& b) {
  const auto& ea = detail::as_expr(a);
  const auto& eb = detail::as_expr(b);
  using EA = std::remove_cvref_t<decltype(ea)>;
  using EB = std::remove_cvref_t<decltype(eb)>;
  static_assert(std::is_same_v<typename EA::value_type, typename EB::value_type>,
                "kiln: operands of an elementwise op have different element types; convert one with "
                ".to<float>() or .to<double>()");
  static_assert(std::is_same_v<typename EA::device_type, typename EB::device_type>,
                "kiln: operands of an elementwise op live on different devices; move one with .to<Device>()");
  using Node = expr::Binary<F, typename EA::node_type, typename EB::node_type>;
  Expr<Node, typename EA::device_type> e;
  if (!broadcast_shapes(ea.shape, eb.shape, e.shape))
    throw_shape_error(F::name, "operands cannot be broadcast together", ea.shape, eb.shape);
  e.node = Node{f, ea.node, eb.node};
  e.operands = detail::join(ea.operands, eb.operands);
  return e;
}

// Builds f(a, b, c) lazily with broadcasting.
template <class F, TensorOrExpr A, TensorOrExpr B, TensorOrExpr C>
auto make_ternary(F f, const A& a, const B& b, const C& c) {
  const auto& ea = detail::as_expr(a);
  const auto& eb = detail::as_expr(b);
  const auto& ec = detail::as_expr(c);
  using EA = std::remove_cvref_t<decltype(ea)>;
  using EB = std::remove_cvref_t<decltype(eb)>;
  using EC = std::remove_cvref_t<decltype(ec)>;
  static_assert(std::is_same_v<typename EA::value_type, typename EB::value_type> &&
                    std::is_same_v<typename EA::value_type, typename EC::value_type>,
                "kiln: operands of an elementwise op have different element types");
  static_assert(std::is_same_v<typename EA::device_type, typename EB::device_type> &&
                    std::is_same_v<typename EA::device_type, typename EC::device_type>,
                "kiln: operands of an elementwise op live on different devices");
  using Node = expr::Ternary<F, typename EA::node_type, typename EB::node_type, typename EC::node_type>;
  Expr<Node, typename EA::device_type> e;
  Shape ab;
  if (!broadcast_shapes(ea.shape, eb.shape, ab))
    throw_shape_error(F::name, "operands cannot be broadcast together", ea.shape, eb.shape);
  if (!broadcast_shapes(ab, ec.shape, e.shape))
    throw_shape_error(F::name, "operands cannot be broadcast together", ab, ec.shape);
  e.node = Node{f, ea.node, eb.node, ec.node};
  e.operands = detail::join(detail::join(ea.operands, eb.operands), ec.operands);
  return e;
}

}  // namespace kiln
