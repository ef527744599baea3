// kiln/backend/cpu/elementwise.hpp — evaluates a lazy expression into a strided destination in
// one pass: dims coalesced, SIMD packets along the innermost run, rows split across threads.
// Builds on backend/cpu/simd.hpp, backend/cpu/strided.hpp and the node interface of expr/expr.hpp.
#pragma once

#include <kiln/backend/cpu/simd.hpp>
#include <kiln/backend/cpu/strided.hpp>
#include <kiln/expr/expr.hpp>

namespace kiln::backend::cpu {

namespace detail {

#if defined(__GNUC__) || defined(__clang__)
#define KILN_NOINLINE __attribute__((noinline))
#else
#define KILN_NOINLINE
#endif

// `packets` full packets of a run, from element j0 on, stored contiguously at `out`. Every
// packet, the last partial one of a run included, goes through this one compiled loop, so an
// element's value never depends on where a run was cut between threads (a compiler may contract
// a*b+c into an FMA differently in two inlined copies of the same arithmetic).
template <class V, expr::Access A, class T, class Node>
KILN_NOINLINE void eval_packets(const Node& node, T* out, index_t j0, index_t packets) {
  constexpr int W = V::size;
  for (index_t p = 0; p < packets; ++p) node.template packet<V, A>(j0 + p * W).store(out + p * W);
}

template <class V, expr::Access A, class T, class Node>
void eval_run(const Node& node, T* out, index_t out_stride, index_t len) {
  constexpr int W = V::size;
  const index_t full = len / W;
  if (out_stride == 1) {
    if (full > 0) eval_packets<V, A>(node, out, 0, full);
  } else {
    constexpr index_t chunk = 64;  // packets per staging buffer
    alignas(64) T buf[chunk * W];
    for (index_t p0 = 0; p0 < full; p0 += chunk) {
      const index_t cnt = full - p0 < chunk ? full - p0 : chunk;
      eval_packets<V, A>(node, buf, p0 * W, cnt);
      T* dst = out + p0 * W * out_stride;
      for (index_t q = 0; q < cnt * W; ++q) dst[q * out_stride] = buf[q];
    }
  }
  const int n = static_cast<int>(len - full * W);
  if (n == 0) return;
  // The partial packet: operands copied to zero-padded scratch, computed as a full packet.
  alignas(64) T scratch[Node::leaves > 0 ? Node::leaves : 1][W];
  alignas(64) T result[W];
  Node tail = node;
  int k = 0;
  tail.for_each_leaf_node([&](auto& leaf) { leaf.redirect_tail(scratch[k++], full * W, n, W); });
  eval_packets<V, A>(tail, result, 0, 1);
  T* dst = out + full * W * out_stride;
  for (int q = 0; q < n; ++q) dst[q * out_stride] = result[q];
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
