// kiln/backend/cpu/elementwise.hpp — evaluates a lazy expression into a strided destination in
// one pass: dims coalesced, SIMD packets along the innermost run, rows split across threads.
// Builds on backend/cpu/simd.hpp, backend/cpu/strided.hpp and the node interface of expr/expr.hpp.
#pragma once

#include <kiln/backend/cpu/simd.hpp>
#include <kiln/backend/cpu/strided.hpp>
#include <kiln/expr/expr.hpp>

namespace kiln::backend::cpu {

namespace detail {

template <class V, expr::Access A, class T, class Node>
KILN_FORCEINLINE void eval_run(Node& node, T* out, index_t out_stride, index_t len) {
  constexpr int W = V::size;
  index_t j = 0;
  if (out_stride == 1) {
    for (; j + W <= len; j += W) node.template packet<V, A>(j).store(out + j);
    if (j < len) node.template packet_partial<V, A>(j, static_cast<int>(len - j)).store_partial(out + j, static_cast<int>(len - j));
  } else {
    alignas(64) T buf[W];
    for (; j < len; j += W) {
      const int n = (len - j) < W ? static_cast<int>(len - j) : W;
      const V v = n == W ? node.template packet<V, A>(j) : node.template packet_partial<V, A>(j, n);
      v.store(buf);
      for (int k = 0; k < n; ++k) out[(j + k) * out_stride] = buf[k];
    }
  }
}

}  // namespace detail

// dst (with `dst_strides`, extents `shape`) = node, node broadcast to shape.
template <class T, class Node>
void eval_expression(T* dst, Shape dst_strides, Shape shape, Node node) {
  using V = simd::Vec<T>;
  static_assert(Node::leaves < 63, "kiln: an expression may read at most 62 tensors");
  if (shape.numel() == 0) return;
  node.bind(shape);
  Shape* lists[64];
  int n = 0;
  lists[n++] = &dst_strides;
  node.for_each_strides([&](Shape& s) { lists[n++] = &s; });
  coalesce(shape, lists, n);
  const int nd = shape.ndim;
  bool all_unit = true, all_unit_or_zero = true;
  node.for_each_leaf([&](const T*, const Shape& s) {
    const index_t in = s.dims[nd - 1];
    all_unit = all_unit && in == 1;
    all_unit_or_zero = all_unit_or_zero && (in == 1 || in == 0);
  });
  const index_t out_stride = dst_strides.dims[nd - 1];
  auto run = [&](auto access) {
    constexpr expr::Access A = decltype(access)::value;
    parallel_for(0, shape.numel(), elementwise_grain, [&](index_t b, index_t e) {
      Node local = node;
      for_each_run(shape, b, e, [&](const index_t* c, index_t col, index_t len) {
        local.seek(c, nd, col);
        T* out = dst + outer_offset(c, dst_strides, nd) + col * out_stride;
        detail::eval_run<V, A>(local, out, out_stride, len);
      });
    });
  };
  if (all_unit)
    run(std::integral_constant<expr::Access, expr::Access::contiguous>{});
  else if (all_unit_or_zero)
    run(std::integral_constant<expr::Access, expr::Access::mixed>{});
  else
    run(std::integral_constant<expr::Access, expr::Access::general>{});
}

}  // namespace kiln::backend::cpu
