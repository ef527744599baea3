// kiln/backend/cpu/strided.hpp — dimension coalescing and strided loops (copy, convert, fill)
// over any element type. Builds on core/shape.hpp and backend/cpu/thread_pool.hpp.
#pragma once

#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/shape.hpp>

namespace kiln::backend::cpu {

// Work per thread below which a loop stays on one thread (elements).
inline constexpr index_t elementwise_grain = 32768;

// Simplifies an iteration space shared by `n` stride arrays: drops extent-1 dims and merges
// neighbouring dims that every array walks contiguously. Afterwards shape.ndim >= 1.
inline void coalesce(Shape& shape, Shape* const* strides, int n) {
  Shape s;
  Shape st[64];
  for (int k = 0; k < n; ++k) st[k].ndim = 0;
  for (int d = 0; d < shape.ndim; ++d) {
    if (shape.dims[d] == 1) continue;
    bool merge = s.ndim > 0;
    for (int k = 0; k < n && merge; ++k)
      merge = st[k].dims[st[k].ndim - 1] == strides[k]->dims[d] * shape.dims[d];
    if (merge) {
      s.dims[s.ndim - 1] *= shape.dims[d];
      for (int k = 0; k < n; ++k) st[k].dims[st[k].ndim - 1] = strides[k]->dims[d];
    } else {
      s.push_back(shape.dims[d]);
      for (int k = 0; k < n; ++k) st[k].push_back(strides[k]->dims[d]);
    }
  }
  if (s.ndim == 0) {
    s.push_back(shape.numel() == 0 ? 0 : 1);
    for (int k = 0; k < n; ++k) st[k].push_back(0);
  }
  shape = s;
  for (int k = 0; k < n; ++k) *strides[k] = st[k];
}

// Calls f(coords, col, len) for every run of the innermost dimension covering the flat range
// [begin, end) of `shape` (coords: indices of the outer dims).
template <class F>
void for_each_run(const Shape& shape, index_t begin, index_t end, F&& f) {
  const int nd = shape.ndim;
  const index_t inner = shape.dims[nd - 1];
  index_t coords[max_dims] = {};
  index_t row = begin / inner, col = begin % inner;
  for (int d = nd - 2; d >= 0; --d) {
    coords[d] = row % shape.dims[d];
    row /= shape.dims[d];
  }
  index_t i = begin;
  while (i < end) {
    const index_t len = (inner - col) < (end - i) ? (inner - col) : (end - i);
    f(static_cast<const index_t*>(coords), col, len);
    i += len;
    col = 0;
    for (int d = nd - 2; d >= 0; --d) {
      if (++coords[d] < shape.dims[d]) break;
      coords[d] = 0;
    }
  }
}

inline index_t outer_offset(const index_t* coords, const Shape& strides, int nd) {
  index_t off = 0;
  for (int d = 0; d + 1 < nd; ++d) off += coords[d] * strides.dims[d];
  return off;
}

// dst[i] = convert(src[i]) over a strided iteration space.
template <class U, class T, class Convert>
void strided_map(U* dst, Shape dst_strides, const T* src, Shape src_strides, Shape shape, Convert convert) {
  if (shape.numel() == 0) return;
  Shape* lists[2] = {&dst_strides, &src_strides};
  coalesce(shape, lists, 2);
  const int nd = shape.ndim;
  const index_t ds = dst_strides.dims[nd - 1], ss = src_strides.dims[nd - 1];
  parallel_for(0, shape.numel(), elementwise_grain, [&](index_t b, index_t e) {
    for_each_run(shape, b, e, [&](const index_t* c, index_t col, index_t len) {
      U* d = dst + outer_offset(c, dst_strides, nd) + col * ds;
      const T* s = src + outer_offset(c, src_strides, nd) + col * ss;
      if (ds == 1 && ss == 1) {
        for (index_t j = 0; j < len; ++j) d[j] = convert(s[j]);
      } else {
        for (index_t j = 0; j < len; ++j) d[j * ds] = convert(s[j * ss]);
      }
    });
  });
}

template <class T>
void strided_fill(T* dst, Shape strides, Shape shape, T v) {
  if (shape.numel() == 0) return;
  Shape* lists[1] = {&strides};
  coalesce(shape, lists, 1);
  const int nd = shape.ndim;
  const index_t ds = strides.dims[nd - 1];
  parallel_for(0, shape.numel(), elementwise_grain, [&](index_t b, index_t e) {
    for_each_run(shape, b, e, [&](const index_t* c, index_t col, index_t len) {
      T* d = dst + outer_offset(c, strides, nd) + col * ds;
      if (ds == 1) {
        for (index_t j = 0; j < len; ++j) d[j] = v;
      } else {
        for (index_t j = 0; j < len; ++j) d[j * ds] = v;
      }
    });
  });
}

}  // namespace kiln::backend::cpu
