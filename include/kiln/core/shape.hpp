// kiln/core/shape.hpp — Shape: a small fixed-capacity list of extents (and strides), with
// NumPy broadcasting rules. Builds on core/config.hpp; usable in host and device code.
#pragma once

#include <kiln/core/config.hpp>

#include <initializer_list>
#include <stdexcept>

namespace kiln {

// Extents (or strides) of up to max_dims dimensions, stored inline: trivially copyable so it
// can travel into kernels by value.
struct Shape {
  int ndim = 0;
  index_t dims[max_dims] = {};

  constexpr Shape() = default;
  constexpr Shape(std::initializer_list<index_t> list) {
    if (list.size() > static_cast<std::size_t>(max_dims))
      throw std::length_error("kiln::Shape: a tensor has at most 8 dimensions");
    for (index_t d : list) {
      if (ndim < max_dims) dims[ndim] = d;
      ++ndim;
    }
  }
  // Builds a shape from `n` extents at `p`.
  KILN_HD static constexpr Shape from(const index_t* p, int n) {
    Shape s;
    s.ndim = n;
    for (int i = 0; i < n; ++i) s.dims[i] = p[i];
    return s;
  }

  KILN_HD constexpr int size() const { return ndim; }
  KILN_HD constexpr index_t operator[](int i) const { return dims[i]; }
  KILN_HD constexpr index_t& operator[](int i) { return dims[i]; }
  KILN_HD constexpr const index_t* begin() const { return dims; }
  KILN_HD constexpr const index_t* end() const { return dims + ndim; }

  // Product of the extents (1 for a 0-d shape).
  KILN_HD constexpr index_t numel() const {
    index_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= dims[i];
    return n;
  }

  KILN_HD constexpr bool operator==(const Shape& o) const {
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; ++i)
      if (dims[i] != o.dims[i]) return false;
    return true;
  }
  KILN_HD constexpr bool operator!=(const Shape& o) const { return !(*this == o); }

  // Appends one extent.
  KILN_HD constexpr void push_back(index_t d) { dims[ndim++] = d; }
};

// Row-major (C-order) strides of a shape.
KILN_HD constexpr Shape contiguous_strides(const Shape& shape) {
  Shape st;
  st.ndim = shape.ndim;
  index_t s = 1;
  for (int i = shape.ndim - 1; i >= 0; --i) {
    st.dims[i] = s;
    s *= shape.dims[i];
  }
  return st;
}

// NumPy broadcasting of two shapes; returns false when they are incompatible.
KILN_HD constexpr bool broadcast_shapes(const Shape& a, const Shape& b, Shape& out) {
  const int n = a.ndim > b.ndim ? a.ndim : b.ndim;
  out.ndim = n;
  for (int i = 0; i < n; ++i) {
    const int ia = a.ndim - n + i, ib = b.ndim - n + i;
    const index_t da = ia >= 0 ? a.dims[ia] : 1;
    const index_t db = ib >= 0 ? b.dims[ib] : 1;
    if (da == db || db == 1) {
      out.dims[i] = da;
    } else if (da == 1) {
      out.dims[i] = db;
    } else {
      return false;
    }
  }
  return true;
}

// True when `from` broadcasts to exactly `to` (to's extents win, from's size-1 dims stretch).
KILN_HD constexpr bool broadcastable_to(const Shape& from, const Shape& to) {
  if (from.ndim > to.ndim) return false;
  for (int i = 0; i < from.ndim; ++i) {
    const index_t f = from.dims[i], t = to.dims[to.ndim - from.ndim + i];
    if (f != t && f != 1) return false;
  }
  return true;
}

// Strides of a tensor with `shape`/`strides` viewed as broadcast to `to` (stride 0 where
// stretched, leading dims added). Assumes broadcastable_to(shape, to).
KILN_HD constexpr Shape broadcast_strides(const Shape& shape, const Shape& strides, const Shape& to) {
  Shape out;
  out.ndim = to.ndim;
  const int lead = to.ndim - shape.ndim;
  for (int i = 0; i < to.ndim; ++i) {
    if (i < lead) {
      out.dims[i] = 0;
    } else {
      const int j = i - lead;
      out.dims[i] = (shape.dims[j] == 1 && to.dims[i] != 1) ? 0 : strides.dims[j];
    }
  }
  return out;
}

}  // namespace kiln
