// kiln/ops/index.hpp — indexing and joining with gradients: index_select, gather (PyTorch
// semantics), embedding lookups whose backward adds into the weight rows, concat and stack, and
// split/chunk into views.
// Builds on autograd/graph.hpp (recording; views are tracked by core/tensor.hpp) and host loops.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln {

// An index (an id, a target, a position) outside the range it must lie in; the message names
// the op, the index, where it was found and the valid range. A ValueError, so code catching
// those catches these too.
class IndexError : public ValueError {
 public:
  using ValueError::ValueError;
};

namespace detail {

template <class D>
constexpr void require_host_indices() {
  static_assert(std::is_same_v<D, cpu>,
                "kiln's indexing ops (index_select, gather, embedding, cross_entropy's targets) read their "
                "indices on the host: run them on kiln::cpu tensors");
}

// "[1, 2]" for coordinates.
inline std::string coords_text(const index_t* coords, int ndim) {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(coords[i]);
  }
  return s + "]";
}

// Calls f(o0, o1, o2, coords) for every element of `shape` in row-major order, where ok is the
// offset of that element in a tensor with strides sk.
template <class F>
void walk_strided(const Shape& shape, const Shape& s0, const Shape& s1, const Shape& s2, F f) {
  const index_t n = shape.numel();
  if (n == 0) return;
  index_t coords[max_dims] = {};
  index_t o0 = 0, o1 = 0, o2 = 0;
  for (index_t i = 0; i < n; ++i) {
    f(o0, o1, o2, static_cast<const index_t*>(coords));
    for (int d = shape.ndim - 1; d >= 0; --d) {
      if (++coords[d] < shape.dims[d]) {
        o0 += s0.dims[d];
        o1 += s1.dims[d];
        o2 += s2.dims[d];
        break;
      }
      o0 -= (shape.dims[d] - 1) * s0.dims[d];
      o1 -= (shape.dims[d] - 1) * s1.dims[d];
      o2 -= (shape.dims[d] - 1) * s2.dims[d];
      coords[d] = 0;
    }
  }
}

// outer = Π dims before `ax`, inner = Π dims after it.
inline void split_at_axis(const Shape& s, int ax, index_t& outer, index_t& inner) {
  outer = 1;
  inner = 1;
  for (int i = 0; i < s.ndim; ++i) {
    if (i < ax) outer *= s.dims[i];
    if (i > ax) inner *= s.dims[i];
  }
}

// Checks that every index of the 1-d contiguous `idx` lies in [0, limit).
template <class D>
void check_index_list(const char* op, const Tensor<index_t, D>& idx, index_t limit, const Shape& input_shape,
                      int ax) {
  const index_t* p = idx.data();
  for (index_t j = 0; j < idx.numel(); ++j)
    if (p[j] < 0 || p[j] >= limit)
      throw IndexError(std::string("kiln::") + op + ": index " + std::to_string(p[j]) + " at position " +
                       std::to_string(j) + " is out of range for dimension " + std::to_string(ax) + " of size " +
                       std::to_string(limit) + " (input shape " + to_string(input_shape) + ")");
}

// y[o, j, i] = x[o, idx[j], i] over the [outer, n, inner] layout of contiguous `x`. Raw.
template <class T, class D>
Tensor<T, D> index_select_raw(const Tensor<T, D>& x, int ax, const Tensor<index_t, D>& idx) {
  const Tensor<T, D> xc = x.detach().contiguous();
  Shape out_shape = x.shape();
  const index_t n = out_shape.dims[ax], k = idx.numel();
  out_shape.dims[ax] = k;
  auto out = Tensor<T, D>::uninitialized(out_shape);
  index_t outer = 1, inner = 1;
  split_at_axis(x.shape(), ax, outer, inner);
  const index_t* ip = idx.data();
  const T* src = xc.data();
  T* dst = out.data();
  for (index_t o = 0; o < outer; ++o)
    for (index_t j = 0; j < k; ++j) std::copy_n(src + (o * n + ip[j]) * inner, inner, dst + (o * k + j) * inner);
  return out;
}

// Zeros of `shape` with out[o, idx[j], i] += src[o, j, i] (repeated indices add up). Raw.
template <class T, class D>
Tensor<T, D> index_add_raw(const Tensor<T, D>& src, int ax, const Tensor<index_t, D>& idx, const Shape& shape) {
  const Tensor<T, D> sc = src.detach().contiguous();
  Tensor<T, D> out(shape);
  const index_t n = shape.dims[ax], k = idx.numel();
  index_t outer = 1, inner = 1;
  split_at_axis(shape, ax, outer, inner);
  const index_t* ip = idx.data();
  const T* s = sc.data();
  T* dst = out.data();
  for (index_t o = 0; o < outer; ++o)
    for (index_t j = 0; j < k; ++j) {
      const T* from = s + (o * k + j) * inner;
      T* to = dst + (o * n + ip[j]) * inner;
      for (index_t i = 0; i < inner; ++i) to[i] += from[i];
    }
  return out;
}

template <class T, class D>
Tensor<T, D> index_add_to_zeros(const Tensor<T, D>& src, int ax, const Tensor<index_t, D>& idx, const Shape& shape);

// index_select on checked, contiguous 1-d indices; recorded. Its backward adds the gradient rows
// back into zeros at the selected positions (a row picked twice gets both gradients): for
// y = x[idx] along ax, ∂L/∂x[r] = Σ_{j: idx[j] = r} ∂L/∂y[j].
template <class T, class D>
Tensor<T, D> index_select_checked(const Tensor<T, D>& x, int ax, const Tensor<index_t, D>& idx) {
  Tensor<T, D> y = index_select_raw(x, ax, idx);
  if constexpr (is_floating_element<T>) {
    record("index_select", y, {x}, [idx, ax, shape = x.shape()](const Tensor<T, D>& g, const auto&) {
      return std::vector<Tensor<T, D>>{index_add_to_zeros(g, ax, idx, shape)};
    });
  }
  return y;
}

// The backward of index_select as a recorded op: linear in src, so its own gradient is
// index_select of the incoming gradient (which makes any order of derivative work).
template <class T, class D>
Tensor<T, D> index_add_to_zeros(const Tensor<T, D>& src, int ax, const Tensor<index_t, D>& idx, const Shape& shape) {
  Tensor<T, D> out = index_add_raw(src, ax, idx, shape);
  record("index_select_backward", out, {src}, [idx, ax](const Tensor<T, D>& g, const auto&) {
    return std::vector<Tensor<T, D>>{index_select_checked(g, ax, idx)};
  });
  return out;
}

// Checks gather's index tensor against x (PyTorch's rules): same number of dims, no larger than x
// in every dim but `ax`, every value in [0, x.size(ax)).
template <class T, class D>
void check_gather(const char* op, const Tensor<T, D>& x, int ax, const Tensor<index_t, D>& idx) {
  if (idx.dim() != x.dim())
    throw_shape_error(op, "the index needs as many dimensions as the input", x.shape(), idx.shape());
  for (int d = 0; d < x.dim(); ++d)
    if (d != ax && idx.size(d) > x.size(d))
      throw_shape_error(op, "the index is larger than the input in dimension " + std::to_string(d) +
                                " (only dimension " + std::to_string(ax) + " may differ)",
                        x.shape(), idx.shape());
  const index_t limit = x.size(ax);
  walk_strided(idx.shape(), idx.strides(), idx.strides(), idx.strides(),
               [&](index_t o, index_t, index_t, const index_t* coords) {
                 const index_t v = idx.data()[o];
                 if (v < 0 || v >= limit)
                   throw IndexError(std::string("kiln::") + op + ": index " + std::to_string(v) + " at position " +
                                    coords_text(coords, idx.dim()) + " is out of range for dimension " +
                                    std::to_string(ax) + " of size " + std::to_string(limit) + " (input shape " +
                                    to_string(x.shape()) + ")");
               });
}

// x's strides with the gathered axis zeroed: the offset of x[c_0, .., idx, .., c_n] is the walk's
// offset plus idx · stride(ax).
inline Shape strides_without_axis(const Shape& strides, int ax) {
  Shape s = strides;
  s.dims[ax] = 0;
  return s;
}

// y[c] = x[c with c_ax replaced by idx[c]], y of idx's shape. Raw; indices checked.
template <class T, class D>
Tensor<T, D> gather_raw(const Tensor<T, D>& x, int ax, const Tensor<index_t, D>& idx) {
  auto out = Tensor<T, D>::uninitialized(idx.shape());
  const Shape xs = strides_without_axis(x.strides(), ax);
  const index_t step = x.strides().dims[ax];
  const T* src = x.data();
  const index_t* ip = idx.data();
  T* dst = out.data();
  walk_strided(idx.shape(), idx.strides(), xs, out.strides(), [&](index_t oi, index_t ox, index_t oy, const index_t*) {
    dst[oy] = src[ox + ip[oi] * step];
  });
  return out;
}

// Zeros of `shape` with out[c with c_ax replaced by idx[c]] += src[c] (PyTorch's scatter_add). Raw.
template <class T, class D>
Tensor<T, D> scatter_add_raw(const Tensor<T, D>& src, int ax, const Tensor<index_t, D>& idx, const Shape& shape) {
  Tensor<T, D> out(shape);
  const Shape os = strides_without_axis(out.strides(), ax);
  const index_t step = out.strides().dims[ax];
  const T* s = src.data();
  const index_t* ip = idx.data();
  T* dst = out.data();
  walk_strided(idx.shape(), idx.strides(), src.strides(), os, [&](index_t oi, index_t os_, index_t oo, const index_t*) {
    dst[oo + ip[oi] * step] += s[os_];
  });
  return out;
}

template <class T, class D>
Tensor<T, D> gather_checked(const Tensor<T, D>& x, int ax, const Tensor<index_t, D>& idx);

// The backward of gather as a recorded op: y = gather(x, idx) gives ∂L/∂x = scatter_add of ∂L/∂y
// at the gathered positions; that map is linear, and its adjoint is gather again.
template <class T, class D>
Tensor<T, D> scatter_add_to_zeros(const Tensor<T, D>& src, int ax, const Tensor<index_t, D>& idx, const Shape& shape) {
  Tensor<T, D> out = scatter_add_raw(src.detach(), ax, idx, shape);
  record("gather_backward", out, {src}, [idx, ax](const Tensor<T, D>& g, const auto&) {
    return std::vector<Tensor<T, D>>{gather_checked(g, ax, idx)};
  });
  return out;
}

template <class T, class D>
Tensor<T, D> gather_checked(const Tensor<T, D>& x, int ax, const Tensor<index_t, D>& idx) {
  Tensor<T, D> y = gather_raw(x.detach(), ax, idx);
  if constexpr (is_floating_element<T>) {
    record("gather", y, {x}, [idx, ax, shape = x.shape()](const Tensor<T, D>& g, const auto&) {
      return std::vector<Tensor<T, D>>{scatter_add_to_zeros(g, ax, idx, shape)};
    });
  }
  return y;
}

}  // namespace detail

// The slices of `x` at positions `indices` (0-d or 1-d, each in [0, x.size(axis))) along `axis`,
// in that order (as torch.index_select): the result has x's shape with that extent replaced by
// the number of indices. A position listed twice appears twice, and gets both gradients.
template <class T, class D>
Tensor<T, D> index_select(const Tensor<T, D>& x, int axis, const Tensor<index_t, D>& indices) {
  detail::require_host_indices<D>();
  if (!x.defined() || !indices.defined()) throw_value_error("index_select", "an input is an undefined tensor");
  if (x.dim() == 0) throw_shape_error("index_select", "the input needs at least one dimension", x.shape());
  const int ax = normalize_axis("index_select", axis, x.dim());
  if (indices.dim() > 1)
    throw_shape_error("index_select", "the indices must be 0-d or 1-d", x.shape(), indices.shape());
  // A copy: the backward must see the indices of this call even if the caller reuses the buffer.
  const Tensor<index_t, D> idx = indices.clone().reshape({-1});
  detail::check_index_list("index_select", idx, x.size(ax), x.shape(), ax);
  return detail::index_select_checked(x, ax, idx);
}

// out[i][j][k] = x[idx[i][j][k]][j][k] for axis 0, x[i][idx[i][j][k]][k] for axis 1, ... (as
// torch.gather): `indices` has x's number of dims, is no larger than x in every dim but `axis`,
// and the result has its shape. The gradient adds back into the gathered positions.
template <class T, class D>
Tensor<T, D> gather(const Tensor<T, D>& x, int axis, const Tensor<index_t, D>& indices) {
  detail::require_host_indices<D>();
  if (!x.defined() || !indices.defined()) throw_value_error("gather", "an input is an undefined tensor");
  if (x.dim() == 0) {
    // PyTorch treats a 0-d input and index as one element along axis 0.
    normalize_axis("gather", axis, 1);
    if (indices.dim() != 0) throw_shape_error("gather", "the index needs as many dimensions as the input", x.shape(), indices.shape());
    return gather(x.reshape({1}), 0, indices.reshape({1})).reshape(Shape{});
  }
  const int ax = normalize_axis("gather", axis, x.dim());
  detail::check_gather("gather", x, ax, indices);
  return detail::gather_checked(x, ax, indices.clone());
}

// Rows of `weight` [V, D] looked up at `ids` (any shape, each in [0, V)): the result has shape
// [ids..., D]. The gradient adds each output row's gradient into the weight row it came from
// (rows used several times accumulate; unused rows get zero), as torch.nn.functional.embedding.
template <class T, class D>
Tensor<T, D> embedding(const Tensor<T, D>& weight, const Tensor<index_t, D>& ids) {
  detail::require_host_indices<D>();
  if (!weight.defined() || !ids.defined()) throw_value_error("embedding", "an input is an undefined tensor");
  if (weight.dim() != 2)
    throw_shape_error("embedding", "the weight must be a matrix [vocabulary, dim]", weight.shape(), ids.shape());
  const index_t V = weight.size(0);
  const Tensor<index_t, D> flat = ids.clone().reshape({-1});
  const index_t* p = flat.data();
  for (index_t j = 0; j < flat.numel(); ++j)
    if (p[j] < 0 || p[j] >= V)
      throw IndexError("kiln::embedding: id " + std::to_string(p[j]) + " at position " + std::to_string(j) +
                       " of the ids (shape " + to_string(ids.shape()) + ") is outside the vocabulary of size " +
                       std::to_string(V) + " (valid ids are 0.." + std::to_string(V - 1) + ")");
  Shape out_shape = ids.shape();
  if (out_shape.ndim >= max_dims)
    throw_shape_error("embedding", "the result would have more than 8 dimensions", ids.shape());
  out_shape.push_back(weight.size(1));
  return detail::index_select_checked(weight, 0, flat).reshape(out_shape);
}

// The tensors joined along `axis` (as torch.cat): all have the same number of dims and the same
// extents except along `axis`. The gradient of each input is its slice of the output's gradient.
template <class T, class D>
Tensor<T, D> concat(const std::vector<Tensor<T, D>>& tensors, int axis = 0) {
  if (tensors.empty()) throw_value_error("concat", "needs at least one tensor");
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (!tensors[i].defined())
      throw_value_error("concat", "tensor " + std::to_string(i) + " is an undefined tensor");
  const Shape& first = tensors[0].shape();
  if (first.ndim == 0) throw_shape_error("concat", "0-d tensors cannot be concatenated (use stack)", first);
  const int ax = normalize_axis("concat", axis, first.ndim);
  Shape out_shape = first;
  out_shape.dims[ax] = 0;
  std::vector<index_t> extents;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const Shape& s = tensors[i].shape();
    bool fits = s.ndim == first.ndim;
    for (int d = 0; fits && d < s.ndim; ++d) fits = d == ax || s.dims[d] == first.dims[d];
    if (!fits)
      throw_shape_error("concat", "tensor " + std::to_string(i) + " differs from tensor 0 in a dimension other than " +
                                      std::to_string(ax),
                        first, s);
    extents.push_back(s.dims[ax]);
    out_shape.dims[ax] += s.dims[ax];
  }
  auto out = Tensor<T, D>::uninitialized(out_shape);
  index_t start = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].numel() > 0) {
      const Tensor<T, D> dst = out.slice(ax, start, start + extents[i]);
      Backend<D>::copy_strided(dst.data(), dst.strides(), tensors[i].data(), tensors[i].strides(), dst.shape());
    }
    start += extents[i];
  }
  if constexpr (is_floating_element<T>) {
    // y = [x_0; x_1; ...] along ax: ∂L/∂x_i is the slice of ∂L/∂y that x_i was copied to (a view,
    // so the gradient is differentiable again).
    detail::record_many("concat", out, tensors, [extents, ax](const Tensor<T, D>& g, const auto& node) {
      std::vector<Tensor<T, D>> grads(extents.size());
      index_t begin = 0;
      for (std::size_t i = 0; i < extents.size(); ++i) {
        if (node.needs(i)) grads[i] = g.slice(ax, begin, begin + extents[i]);
        begin += extents[i];
      }
      return grads;
    });
  }
  return out;
}

// The tensors, all of one shape, stacked along a new dimension at `axis` (0..dim, as torch.stack).
template <class T, class D>
Tensor<T, D> stack(const std::vector<Tensor<T, D>>& tensors, int axis = 0) {
  if (tensors.empty()) throw_value_error("stack", "needs at least one tensor");
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].defined()) throw_value_error("stack", "tensor " + std::to_string(i) + " is an undefined tensor");
    if (tensors[i].shape() != tensors[0].shape())
      throw_shape_error("stack", "tensor " + std::to_string(i) + " differs in shape from tensor 0",
                        tensors[0].shape(), tensors[i].shape());
  }
  if (tensors[0].dim() >= max_dims)
    throw_shape_error("stack", "the result would have more than 8 dimensions", tensors[0].shape());
  const int ax = normalize_axis("stack", axis, tensors[0].dim() + 1);
  std::vector<Tensor<T, D>> expanded;
  expanded.reserve(tensors.size());
  for (const auto& t : tensors) expanded.push_back(t.unsqueeze(ax));
  return concat(expanded, ax);
}

// Views of `x` along `axis` of `size` elements each (the last one shorter when size does not
// divide the extent), as torch.split. Each view is tracked like any slice.
template <class T, class D>
std::vector<Tensor<T, D>> split(const Tensor<T, D>& x, index_t size, int axis = 0) {
  if (x.dim() == 0) throw_shape_error("split", "the input needs at least one dimension", x.shape());
  const int ax = normalize_axis("split", axis, x.dim());
  const index_t n = x.size(ax);
  if (size < 1 && !(size == 0 && n == 0))
    throw_value_error("split", "the size of each piece must be at least 1, got " + std::to_string(size));
  std::vector<Tensor<T, D>> pieces;
  if (n == 0) {
    pieces.push_back(x.slice(ax, 0, 0));
    return pieces;
  }
  for (index_t start = 0; start < n; start += size) pieces.push_back(x.slice(ax, start, std::min(n, start + size)));
  return pieces;
}

// Views of `x` along `axis` with the given extents, which must add up to x.size(axis).
template <class T, class D>
std::vector<Tensor<T, D>> split(const Tensor<T, D>& x, const std::vector<index_t>& sizes, int axis = 0) {
  if (x.dim() == 0) throw_shape_error("split", "the input needs at least one dimension", x.shape());
  const int ax = normalize_axis("split", axis, x.dim());
  index_t total = 0;
  for (index_t s : sizes) {
    if (s < 0) throw_value_error("split", "a size is negative: " + std::to_string(s));
    total += s;
  }
  if (total != x.size(ax))
    throw_shape_error("split", "the sizes add up to " + std::to_string(total) + ", not to the extent " +
                                   std::to_string(x.size(ax)) + " of dimension " + std::to_string(ax),
                      x.shape());
  std::vector<Tensor<T, D>> pieces;
  index_t start = 0;
  for (index_t s : sizes) {
    pieces.push_back(x.slice(ax, start, start + s));
    start += s;
  }
  return pieces;
}

// `x` cut into at most `chunks` views along `axis`, each of ceil(extent / chunks) elements but
// the last (as torch.chunk, which may return fewer pieces: 5 split in 4 gives 2, 2, 1).
template <class T, class D>
std::vector<Tensor<T, D>> chunk(const Tensor<T, D>& x, index_t chunks, int axis = 0) {
  if (chunks < 1) throw_value_error("chunk", "the number of chunks must be at least 1, got " + std::to_string(chunks));
  if (x.dim() == 0) throw_shape_error("chunk", "the input needs at least one dimension", x.shape());
  const int ax = normalize_axis("chunk", axis, x.dim());
  const index_t n = x.size(ax);
  if (n == 0) return std::vector<Tensor<T, D>>(static_cast<std::size_t>(chunks), x.slice(ax, 0, 0));
  return split(x, (n + chunks - 1) / chunks, ax);
}

}  // namespace kiln
