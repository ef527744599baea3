// kiln/core/tensor.hpp — Tensor<T, Device>: shared storage + shape + strides + offset, with
// zero-copy views (reshape, permute, transpose, slice, expand, squeeze, unsqueeze) and optional
// gradient tracking (requires_grad, backward, grad; the machinery lives in kiln/autograd).
// Builds on core/shape.hpp, core/error.hpp and the Backend<Device> interface of core/device.hpp.
#pragma once

#include <kiln/core/device.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/shape.hpp>

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln {

// A block of device memory; freed by the backend that allocated it.
struct Buffer {
  void* data = nullptr;
  std::size_t bytes = 0;
  void (*release)(void*) = nullptr;

  Buffer(void* d, std::size_t n, void (*r)(void*)) : data(d), bytes(n), release(r) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (data && release) release(data);
  }
};

// Marks the user-facing lazy expression wrapper (kiln/expr/expr.hpp) without naming it here.
struct ExprTag {};
template <class E>
concept ExpressionLike = std::is_base_of_v<ExprTag, std::remove_cvref_t<E>>;

template <class T, class Device = cpu>
class Tensor;

namespace detail {
// Gradient-tracking state of a tensor (defined in kiln/autograd/graph.hpp).
template <class T, class Device>
struct AutogradMeta;
// Records that `out` is a view of tracked `in` made by `remake` (autograd/graph.hpp).
// `reshape_like` views keep the element order, so their gradient is a reshape.
template <class T, class Device, class F>
void track_view(const Tensor<T, Device>& in, Tensor<T, Device>& out, F remake, bool reshape_like);
// Records that `out` is `in` broadcast to out's shape (autograd/graph.hpp).
template <class T, class Device>
void track_expand(const Tensor<T, Device>& in, Tensor<T, Device>& out);
// Members of Tensor that need the autograd machinery (autograd/graph.hpp).
template <class T, class Device>
struct TensorAutograd;

// Evaluates expression `e` into a new tensor (defined in kiln/expr/eval.hpp).
template <class T, class Device, class E>
void evaluate_new(Tensor<T, Device>& out, const E& e);
// Writes expression `e` into the existing elements of `dst` (broadcasting e to dst's shape).
template <class T, class Device, class E>
void evaluate_into(Tensor<T, Device>& dst, const E& e);

// Strides that let a tensor of (shape, strides) be seen as `to` without copying; false when
// that is impossible (the data would have to move).
inline bool view_strides(const Shape& shape, const Shape& strides, const Shape& to, Shape& out) {
  out.ndim = to.ndim;
  if (shape.numel() == 0) {
    out = contiguous_strides(to);
    return true;
  }
  // Old dims without the size-1 ones (their strides carry no information).
  index_t od[max_dims], os[max_dims];
  int on = 0;
  for (int i = 0; i < shape.ndim; ++i)
    if (shape.dims[i] != 1) {
      od[on] = shape.dims[i];
      os[on] = strides.dims[i];
      ++on;
    }
  int ni = 0, oi = 0;
  while (ni < to.ndim && oi < on) {
    index_t np = to.dims[ni], op = od[oi];
    int nj = ni + 1, oj = oi + 1;
    while (np != op) {
      if (np < op) {
        if (nj >= to.ndim) return false;
        np *= to.dims[nj++];
      } else {
        if (oj >= on) return false;
        op *= od[oj++];
      }
    }
    for (int k = oi; k + 1 < oj; ++k)
      if (os[k] != od[k + 1] * os[k + 1]) return false;
    out.dims[nj - 1] = os[oj - 1];
    for (int k = nj - 1; k > ni; --k) out.dims[k - 1] = out.dims[k] * to.dims[k];
    ni = nj;
    oi = oj;
  }
  for (int k = ni; k < to.ndim; ++k) out.dims[k] = 1;
  return true;
}
}  // namespace detail

// An n-dimensional array of T on Device. Copies share storage (like PyTorch's Tensor);
// views share storage too; clone() and contiguous() copy.
template <class T, class Device>
class Tensor {
 public:
  using value_type = T;
  using device_type = Device;

  // An undefined tensor (defined() == false).
  Tensor() = default;

  // A new tensor of `shape` filled with zeros.
  explicit Tensor(const Shape& shape) : Tensor(uninitialized(shape)) { fill_(T(0)); }

  // Evaluates a lazy expression into a new tensor, in one fused pass.
  template <ExpressionLike E>
  Tensor(const E& e) {  // NOLINT: implicit on purpose, `Tensor<float> y = a * x + b;`
    detail::evaluate_new(*this, e);
  }
  // Rebinds this tensor to the value of `e` (the old storage is left untouched when shared).
  template <ExpressionLike E>
  Tensor& operator=(const E& e) {
    detail::evaluate_new(*this, e);
    return *this;
  }

  // A new tensor of `shape` whose elements are not initialised.
  static Tensor uninitialized(const Shape& shape) {
    for (int i = 0; i < shape.ndim; ++i)
      if (shape.dims[i] < 0) throw_shape_error("empty", "negative extent", shape);
    Tensor t;
    const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * sizeof(T);
    t.storage_ = std::make_shared<Buffer>(Backend<Device>::allocate(bytes), bytes,
                                          &Backend<Device>::deallocate);
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    t.offset_ = 0;
    return t;
  }

  // --- geometry -------------------------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return shape_.ndim; }
  index_t numel() const { return shape_.numel(); }
  index_t size(int d) const { return shape_.dims[normalize_axis("size", d, dim())]; }
  index_t stride(int d) const { return strides_.dims[normalize_axis("stride", d, dim())]; }
  index_t offset() const { return offset_; }
  const std::shared_ptr<Buffer>& storage() const { return storage_; }

  T* data() const { return storage_ ? static_cast<T*>(storage_->data) + offset_ : nullptr; }

  bool is_contiguous() const {
    index_t expect = 1;
    for (int i = shape_.ndim - 1; i >= 0; --i) {
      if (shape_.dims[i] != 1 && strides_.dims[i] != expect) return false;
      expect *= shape_.dims[i];
    }
    return true;
  }

  // --- element access (host devices) ----------------------------------------------------
  // Reference to the element at `index` (one entry per dimension).
  T& at(std::initializer_list<index_t> index) const {
    static_assert(std::is_same_v<Device, cpu>, "Tensor::at reads host memory: use .to<kiln::cpu>() first");
    if (static_cast<int>(index.size()) != dim())
      throw_value_error("at", "got " + std::to_string(index.size()) + " indices for a tensor of shape " +
                                  to_string(shape_));
    index_t off = 0;
    int d = 0;
    for (index_t i : index) {
      const index_t n = shape_.dims[d];
      const index_t j = i < 0 ? i + n : i;
      if (j < 0 || j >= n)
        throw_value_error("at", "index " + std::to_string(i) + " is out of range for dimension " +
                                    std::to_string(d) + " of shape " + to_string(shape_));
      off += j * strides_.dims[d];
      ++d;
    }
    return data()[off];
  }
  // The only element of a one-element tensor.
  T item() const {
    static_assert(std::is_same_v<Device, cpu>, "Tensor::item reads host memory: use .to<kiln::cpu>() first");
    if (numel() != 1) throw_shape_error("item", "needs exactly one element", shape_);
    return *data();
  }
  // Elements in row-major order, copied out.
  std::vector<T> to_vector() const {
    static_assert(std::is_same_v<Device, cpu>, "Tensor::to_vector reads host memory");
    Tensor c = contiguous();
    return std::vector<T>(c.data(), c.data() + c.numel());
  }

  // --- copies ---------------------------------------------------------------------------
  // This tensor if already contiguous, else a contiguous copy.
  Tensor contiguous() const {
    if (is_contiguous()) return *this;
    return clone();
  }
  // A contiguous copy with storage of its own.
  Tensor clone() const {
    Tensor out = clone_raw();
    if constexpr (is_floating_element<T>)
      if (meta_) detail::track_view(*this, out, [](const Tensor& t) { return t; }, true);
    return out;
  }
  // This tensor converted element by element to U (float, double, bfloat16, ...).
  template <class U>
  Tensor<U, Device> to() const {
    if constexpr (std::is_same_v<U, T>) {
      return *this;
    } else {
      auto out = Tensor<U, Device>::uninitialized(shape_);
      Backend<Device>::convert(out.data(), out.strides(), data(), strides_, shape_);
      return out;
    }
  }

  // --- gradient tracking (kiln/autograd) -----------------------------------------------
  // Marks this tensor as a leaf whose gradient backward() accumulates; returns *this, so
  // `auto w = kiln::randn<float>({4, 3}, rng).requires_grad();` works.
  Tensor& requires_grad(bool on = true) { return detail::TensorAutograd<T, Device>::set_requires_grad(*this, on); }
  // True when operations on this tensor are recorded for backward().
  bool tracks_grad() const { return meta_ != nullptr; }
  // True unless this tensor is the result of a recorded operation.
  bool is_leaf() const { return detail::TensorAutograd<T, Device>::is_leaf(*this); }
  // The gradient accumulated by backward() (an undefined tensor before any).
  Tensor grad() const { return detail::TensorAutograd<T, Device>::grad(*this); }
  // Replaces the accumulated gradient (an undefined tensor clears it).
  void set_grad(const Tensor& g) const { detail::TensorAutograd<T, Device>::set_grad(*this, g); }
  // Forgets the accumulated gradient (as PyTorch's zero_grad(set_to_none=True)).
  void zero_grad() const { detail::TensorAutograd<T, Device>::set_grad(*this, Tensor()); }
  // Keeps the gradient of this non-leaf tensor in grad() during backward().
  void retain_grad() const { detail::TensorAutograd<T, Device>::retain_grad(*this); }
  // Back-propagates from this one-element tensor (d self / d self = 1).
  void backward(bool retain_graph = false, bool create_graph = false) const {
    detail::TensorAutograd<T, Device>::backward(*this, Tensor(), retain_graph, create_graph);
  }
  // Back-propagates `gradient` (same shape as this tensor) from this tensor.
  void backward(const Tensor& gradient, bool retain_graph = false, bool create_graph = false) const {
    detail::TensorAutograd<T, Device>::backward(*this, gradient, retain_graph, create_graph);
  }
  // The same elements, cut off from the graph (never tracked).
  Tensor detach() const {
    Tensor t = *this;
    t.meta_ = nullptr;
    return t;
  }
  // The autograd state (nullptr when untracked); for kiln/autograd.
  const std::shared_ptr<detail::AutogradMeta<T, Device>>& autograd_meta() const { return meta_; }
  void set_autograd_meta(std::shared_ptr<detail::AutogradMeta<T, Device>> m) { meta_ = std::move(m); }

  // --- in-place writes ------------------------------------------------------------------
  // Sets every element to `v`.
  Tensor& fill_(T v) {
    Backend<Device>::fill_strided(data(), strides_, shape_, v);
    return *this;
  }
  // Writes the value of `e` (broadcast to this shape) into this tensor's elements; this
  // tensor may be a view. Safe when `e` reads this tensor too.
  template <class E>
  Tensor& assign(const E& e) {
    detail::evaluate_into(*this, e);
    return *this;
  }

  // --- views (share storage) ------------------------------------------------------------
  // Same elements seen with another shape; one extent may be -1. Throws when the strides
  // make a view impossible (use reshape, which copies then).
  Tensor view(Shape to) const {
    to = infer_shape("view", to);
    Shape st;
    if (!detail::view_strides(shape_, strides_, to, st))
      throw_shape_error("view", "the strides of this tensor do not allow this view; call reshape or "
                                "contiguous() first",
                        shape_, to);
    return tracked(with(to, st, offset_), [to](const Tensor& t) { return t.view(to); }, true);
  }
  // Like view, but copies when the elements cannot be seen with the new shape in place.
  Tensor reshape(Shape to) const {
    to = infer_shape("reshape", to);
    Shape st;
    if (detail::view_strides(shape_, strides_, to, st))
      return tracked(with(to, st, offset_), [to](const Tensor& t) { return t.reshape(to); }, true);
    return tracked(clone_raw().view_raw(to), [to](const Tensor& t) { return t.reshape(to); }, true);
  }
  // Collapses dims start..end (inclusive) into one.
  Tensor flatten(int start = 0, int end = -1) const {
    if (dim() == 0) return reshape({1});
    start = normalize_axis("flatten", start, dim());
    end = normalize_axis("flatten", end, dim());
    if (start > end) throw_value_error("flatten", "start dimension is after end dimension");
    Shape to;
    for (int i = 0; i < start; ++i) to.push_back(shape_.dims[i]);
    index_t n = 1;
    for (int i = start; i <= end; ++i) n *= shape_.dims[i];
    to.push_back(n);
    for (int i = end + 1; i < dim(); ++i) to.push_back(shape_.dims[i]);
    return reshape(to);
  }
  // Reorders the dimensions: result dim i is this tensor's dim order[i].
  Tensor permute(std::initializer_list<int> order) const { return permute(std::vector<int>(order)); }
  Tensor permute(const std::vector<int>& order) const {
    if (static_cast<int>(order.size()) != dim())
      throw_value_error("permute", "got " + std::to_string(order.size()) + " axes for a tensor of shape " +
                                       to_string(shape_));
    Shape s, st;
    bool seen[max_dims] = {};
    for (int a : order) {
      const int ax = normalize_axis("permute", a, dim());
      if (seen[ax]) throw_value_error("permute", "axis " + std::to_string(a) + " repeated");
      seen[ax] = true;
      s.push_back(shape_.dims[ax]);
      st.push_back(strides_.dims[ax]);
    }
    return tracked(with(s, st, offset_), [order](const Tensor& t) { return t.permute(order); }, false);
  }
  // Swaps two dimensions.
  Tensor transpose(int d0, int d1) const {
    d0 = normalize_axis("transpose", d0, dim());
    d1 = normalize_axis("transpose", d1, dim());
    Shape s = shape_, st = strides_;
    std::swap(s.dims[d0], s.dims[d1]);
    std::swap(st.dims[d0], st.dims[d1]);
    return tracked(with(s, st, offset_), [d0, d1](const Tensor& t) { return t.transpose(d0, d1); }, false);
  }
  // Transpose of a matrix (swaps the last two dims; a 1-d tensor is returned as is).
  Tensor t() const {
    if (dim() < 2) return *this;
    return transpose(-2, -1);
  }
  // Elements start, start+step, ... < end along dimension d (negative start/end count from
  // the end; both are clamped to the extent like Python slices). step >= 1.
  Tensor slice(int d, index_t start, index_t end, index_t step = 1) const {
    d = normalize_axis("slice", d, dim());
    if (step < 1) throw_value_error("slice", "step must be at least 1, got " + std::to_string(step));
    const index_t n = shape_.dims[d];
    auto clampi = [n](index_t i) {
      if (i < 0) i += n;
      return i < 0 ? index_t(0) : (i > n ? n : i);
    };
    const index_t b = clampi(start), e = clampi(end);
    const index_t len = e > b ? (e - b + step - 1) / step : 0;
    Shape s = shape_, st = strides_;
    s.dims[d] = len;
    st.dims[d] = strides_.dims[d] * step;
    return tracked(with(s, st, offset_ + (len > 0 ? b * strides_.dims[d] : 0)),
                   [d, start, end, step](const Tensor& t) { return t.slice(d, start, end, step); }, false);
  }
  // The sub-tensor at position `index` of dimension d (that dimension removed).
  Tensor select(int d, index_t index) const {
    d = normalize_axis("select", d, dim());
    const index_t n = shape_.dims[d];
    const index_t i = index < 0 ? index + n : index;
    if (i < 0 || i >= n)
      throw_value_error("select", "index " + std::to_string(index) + " is out of range for dimension " +
                                      std::to_string(d) + " of shape " + to_string(shape_));
    Shape s, st;
    for (int k = 0; k < dim(); ++k)
      if (k != d) {
        s.push_back(shape_.dims[k]);
        st.push_back(strides_.dims[k]);
      }
    return tracked(with(s, st, offset_ + i * strides_.dims[d]),
                   [d, i](const Tensor& t) { return t.select(d, i); }, false);
  }
  // A view broadcast to `to` (size-1 dims stretched with stride 0, leading dims added).
  Tensor expand(const Shape& to) const {
    if (!broadcastable_to(shape_, to)) throw_shape_error("expand", "cannot broadcast", shape_, to);
    Tensor out = with(to, broadcast_strides(shape_, strides_, to), offset_);
    if constexpr (is_floating_element<T>) {
      if (meta_ && to != shape_)
        detail::track_expand(*this, out);
      else
        out.meta_ = meta_;
    }
    return out;
  }
  Tensor broadcast_to(const Shape& to) const { return expand(to); }
  // Removes dimension d, which must have extent 1.
  Tensor squeeze(int d) const {
    d = normalize_axis("squeeze", d, dim());
    if (shape_.dims[d] != 1)
      throw_shape_error("squeeze", "dimension " + std::to_string(d) + " does not have extent 1", shape_);
    return select(d, 0);
  }
  // Removes every dimension of extent 1.
  Tensor squeeze() const {
    Shape s, st;
    for (int k = 0; k < dim(); ++k)
      if (shape_.dims[k] != 1) {
        s.push_back(shape_.dims[k]);
        st.push_back(strides_.dims[k]);
      }
    return tracked(with(s, st, offset_), [s](const Tensor& t) { return t.reshape(s); }, true);
  }
  // Inserts a dimension of extent 1 at position d (0..dim()).
  Tensor unsqueeze(int d) const {
    if (dim() >= max_dims) throw_shape_error("unsqueeze", "a tensor has at most 8 dimensions", shape_);
    d = normalize_axis("unsqueeze", d, dim() + 1);
    Shape s, st;
    for (int k = 0; k <= dim(); ++k) {
      if (k == d) {
        s.push_back(1);
        st.push_back(k < dim() ? strides_.dims[k] * shape_.dims[k] : 1);
      }
      if (k < dim()) {
        s.push_back(shape_.dims[k]);
        st.push_back(strides_.dims[k]);
      }
    }
    return tracked(with(s, st, offset_), [s](const Tensor& t) { return t.reshape(s); }, true);
  }

  // --- in-place arithmetic (defined with the expressions, kiln/expr/ops.hpp) -------------
  template <class E>
  Tensor& operator+=(const E& e);
  template <class E>
  Tensor& operator-=(const E& e);
  template <class E>
  Tensor& operator*=(const E& e);
  template <class E>
  Tensor& operator/=(const E& e);

  // Raw construction from parts, for backends and ops.
  static Tensor from_parts(std::shared_ptr<Buffer> storage, const Shape& shape, const Shape& strides,
                           index_t offset) {
    Tensor t;
    t.storage_ = std::move(storage);
    t.shape_ = shape;
    t.strides_ = strides;
    t.offset_ = offset;
    return t;
  }

 private:
  Tensor with(const Shape& s, const Shape& st, index_t off) const { return from_parts(storage_, s, st, off); }

  // `out` (a view of this tensor) joins the graph when this tensor is tracked.
  template <class F>
  Tensor tracked(Tensor out, F remake, bool reshape_like) const {
    if constexpr (is_floating_element<T>)
      if (meta_) detail::track_view(*this, out, remake, reshape_like);
    return out;
  }
  Tensor clone_raw() const {
    Tensor out = uninitialized(shape_);
    Backend<Device>::copy_strided(out.data(), out.strides_, data(), strides_, shape_);
    return out;
  }
  Tensor view_raw(const Shape& to) const {
    Shape st;
    detail::view_strides(shape_, strides_, to, st);
    return with(to, st, offset_);
  }

  Shape infer_shape(const char* op, Shape to) const {
    int infer = -1;
    index_t known = 1;
    for (int i = 0; i < to.ndim; ++i) {
      if (to.dims[i] == -1) {
        if (infer >= 0) throw_shape_error(op, "only one extent may be -1", shape_, to);
        infer = i;
      } else if (to.dims[i] < 0) {
        throw_shape_error(op, "negative extent", shape_, to);
      } else {
        known *= to.dims[i];
      }
    }
    if (infer >= 0) {
      if (known == 0 || numel() % known != 0) throw_shape_error(op, "cannot infer the -1 extent", shape_, to);
      to.dims[infer] = numel() / known;
    }
    if (to.numel() != numel())
      throw_shape_error(op, "element counts differ (" + std::to_string(numel()) + " vs " +
                                std::to_string(to.numel()) + ")",
                        shape_, to);
    return to;
  }

  std::shared_ptr<Buffer> storage_;
  Shape shape_;
  Shape strides_;
  index_t offset_ = 0;
  std::shared_ptr<detail::AutogradMeta<T, Device>> meta_;
};

}  // namespace kiln
