// kiln/models/flow.hpp — normalizing flows: invertible layers that report log|det ∂y/∂x| per example
// (RealNVP's affine coupling with its masks, Glow's ActNorm and invertible 1×1 convolution, squeeze,
// the logit transform), uniform dequantization, and a multi-scale Flow container with factored-out
// latents giving the exact log-likelihood, bits per dimension and sampling at a temperature.
// Builds on nn/module.hpp (layers are modules, coupling networks their children), ops/matmul.hpp,
// ops/reduce.hpp, ops/index.hpp and autograd/graph.hpp (log|det W| is a recorded op).
#pragma once

#include <kiln/autograd/fused.hpp>
#include <kiln/autograd/graph.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/nn/sequential.hpp>
#include <kiln/ops/index.hpp>
#include <kiln/ops/matmul.hpp>
#include <kiln/ops/reduce.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <numbers>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::models {

// ---------------------------------------------------------------------------------------------
// The interface of every invertible layer.
//
// A layer maps a batch x [B, ...] to y and reports, per example, log|det ∂y_b/∂x_b| ([B]), so a
// stack of layers gives log p(x) = log p(z) + Σ_layers logdet (change of variables). inverse()
// undoes forward() exactly (up to rounding). output_shape() says what one example becomes (only
// Squeeze changes it) and throws ShapeError for an example the layer cannot take.
template <class T = float, class Device = cpu>
class FlowLayer : public nn::BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  // (y, log|det ∂y/∂x| per example [B]).
  virtual std::pair<tensor_type, tensor_type> forward(const tensor_type& x) = 0;
  // x from y.
  virtual tensor_type inverse(const tensor_type& y) = 0;
  // The shape of one output example for one input example of shape `in`.
  virtual Shape output_shape(const Shape& in) const { return in; }

  std::pair<tensor_type, tensor_type> operator()(const tensor_type& x) { return forward(x); }
};

namespace detail {

// The shape of one example of a batch [B, ...].
template <class T, class D>
Shape example_shape_of(const Tensor<T, D>& x) {
  return x.dim() == 0 ? Shape{} : Shape::from(x.shape().dims + 1, x.dim() - 1);
}

// Σ over every dim but the first: [B, ...] -> [B] (tracked).
template <class T, class D>
Tensor<T, D> sum_per_example(const Tensor<T, D>& t) {
  if (t.dim() == 1) return t;
  return sum(t.reshape(Shape{t.size(0), -1}), 1);
}

// A 0-d value repeated for each of `batch` examples (tracked: the gradient sums back).
template <class T, class D>
Tensor<T, D> repeat_per_example(const Tensor<T, D>& value, index_t batch) {
  return value.reshape(Shape{1}).expand(Shape{batch});
}

// Throws ShapeError unless x is a non-empty batch whose examples have shape `expected`.
template <class T, class D>
void check_examples(const char* op, const Tensor<T, D>& x, const Shape& expected, const char* what) {
  if (x.dim() < 1 || x.size(0) < 1 || example_shape_of(x) != expected)
    throw_shape_error(op, std::string("expected a batch [B, ...] whose examples have the shape of ") + what +
                              " (first shape; second: the batch)",
                      expected, x.shape());
}

// P·A = L·U of a square row-major matrix with partial pivoting (Golub & Van Loan, "Matrix
// Computations", algorithm 3.4.1), in double: `lu` holds L (unit lower, below the diagonal) and U
// (upper, diagonal included); row i of P·A is row perm[i] of A.
struct LUDecomposition {
  index_t n = 0;
  std::vector<double> lu;
  std::vector<index_t> perm;

  // The first zero pivot's column, or -1 when the matrix is invertible.
  index_t zero_pivot() const {
    for (index_t k = 0; k < n; ++k)
      if (lu[static_cast<std::size_t>(k * n + k)] == 0.0) return k;
    return -1;
  }
  // log|det A| = Σ log|U_kk| (det P = ±1, det L = 1).
  double log_abs_det() const {
    double s = 0;
    for (index_t k = 0; k < n; ++k) s += std::log(std::fabs(lu[static_cast<std::size_t>(k * n + k)]));
    return s;
  }
  // A⁻¹ row-major: column j solves L·U·x = P·e_j by forward then back substitution.
  std::vector<double> inverse() const {
    const auto at = [&](index_t r, index_t c) { return lu[static_cast<std::size_t>(r * n + c)]; };
    std::vector<double> inv(static_cast<std::size_t>(n * n)), col(static_cast<std::size_t>(n));
    for (index_t j = 0; j < n; ++j) {
      for (index_t i = 0; i < n; ++i) {
        double v = perm[static_cast<std::size_t>(i)] == j ? 1.0 : 0.0;
        for (index_t k = 0; k < i; ++k) v -= at(i, k) * col[static_cast<std::size_t>(k)];
        col[static_cast<std::size_t>(i)] = v;
      }
      for (index_t i = n - 1; i >= 0; --i) {
        double v = col[static_cast<std::size_t>(i)];
        for (index_t k = i + 1; k < n; ++k) v -= at(i, k) * col[static_cast<std::size_t>(k)];
        col[static_cast<std::size_t>(i)] = v / at(i, i);
      }
      for (index_t i = 0; i < n; ++i) inv[static_cast<std::size_t>(i * n + j)] = col[static_cast<std::size_t>(i)];
    }
    return inv;
  }
};

inline LUDecomposition lu_decompose(std::vector<double> a, index_t n) {
  LUDecomposition d;
  d.n = n;
  d.perm.resize(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) d.perm[static_cast<std::size_t>(i)] = i;
  const auto at = [&](index_t r, index_t c) -> double& { return a[static_cast<std::size_t>(r * n + c)]; };
  for (index_t k = 0; k < n; ++k) {
    index_t p = k;
    for (index_t i = k + 1; i < n; ++i)
      if (std::fabs(at(i, k)) > std::fabs(at(p, k))) p = i;
    if (p != k) {
      for (index_t j = 0; j < n; ++j) std::swap(at(k, j), at(p, j));
      std::swap(d.perm[static_cast<std::size_t>(k)], d.perm[static_cast<std::size_t>(p)]);
    }
    const double pivot = at(k, k);
    if (pivot == 0.0) continue;  // singular: the column below is already zero
    for (index_t i = k + 1; i < n; ++i) {
      const double l = at(i, k) / pivot;
      at(i, k) = l;
      for (index_t j = k + 1; j < n; ++j) at(i, j) -= l * at(k, j);
    }
  }
  d.lu = std::move(a);
  return d;
}

// The LU decomposition of a square [n, n] tensor (read on the host, in double); throws
// ValueError naming `op` when it is singular.
template <class T, class D>
LUDecomposition lu_of(const char* op, const Tensor<T, D>& w) {
  static_assert(std::is_same_v<D, cpu>, "kiln::models flow layers compute LU decompositions in host memory (CPU tensors)");
  if (w.dim() != 2 || w.size(0) != w.size(1)) throw_shape_error(op, "expected a square matrix [n, n]", w.shape());
  const index_t n = w.size(0);
  const Tensor<T, D> c = w.detach().contiguous();
  std::vector<double> a(static_cast<std::size_t>(n * n));
  for (index_t i = 0; i < n * n; ++i) a[static_cast<std::size_t>(i)] = static_cast<double>(c.data()[i]);
  LUDecomposition lu = lu_decompose(std::move(a), n);
  if (const index_t k = lu.zero_pivot(); k >= 0)
    throw_value_error(op, "the matrix is singular (zero pivot in column " + std::to_string(k) + " of its LU decomposition)");
  return lu;
}

// A tensor of shape `shape` from row-major doubles.
template <class T, class D>
Tensor<T, D> tensor_from_doubles(const std::vector<double>& v, const Shape& shape) {
  std::vector<T> t(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) t[i] = static_cast<T>(v[i]);
  return from_vector<T, D>(t, shape);
}

}  // namespace detail

// log|det W| of a square matrix W [n, n], as a 0-d tensor, from an LU decomposition with partial
// pivoting computed in double. Throws ValueError for a singular W.
//
// Backward. Jacobi's formula d(det W) = det W · tr(W⁻¹ dW) gives d log|det W| = tr(W⁻¹ dW) =
// ⟨W⁻ᵀ, dW⟩ (Petersen & Pedersen, "The Matrix Cookbook", eqs. 46 and 57), so
//   ∂L/∂W = g · W⁻ᵀ   for the incoming gradient g of the 0-d output.
// W⁻¹ comes from the same LU decomposition; the gradient is first order in W (W⁻ᵀ is a constant
// of the backward; under create_graph it stays differentiable in g only).
template <class T, class D>
Tensor<T, D> log_abs_det(const Tensor<T, D>& w) {
  const detail::LUDecomposition lu = detail::lu_of("models::log_abs_det", w);
  Tensor<T, D> out = full<T, D>(Shape{}, static_cast<T>(lu.log_abs_det()));
  kiln::detail::record("log_abs_det", out, {w}, [lu](const Tensor<T, D>& g, const auto& node) {
    std::vector<Tensor<T, D>> grads(1);
    if (node.needs(0)) {
      const index_t n = lu.n;
      const std::vector<double> inv = lu.inverse();
      std::vector<double> inv_t(inv.size());
      for (index_t i = 0; i < n; ++i)
        for (index_t j = 0; j < n; ++j) inv_t[static_cast<std::size_t>(i * n + j)] = inv[static_cast<std::size_t>(j * n + i)];
      grads[0] = Tensor<T, D>(detail::tensor_from_doubles<T, D>(inv_t, Shape{n, n}) * g);
    }
    return grads;
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Masks of the affine coupling (1: the conditioning part, passed through unchanged).

// [C, H, W] with m[c, h, w] = (h + w + parity) mod 2 (RealNVP's spatial checkerboard).
template <class T = float, class Device = cpu>
Tensor<T, Device> checkerboard_mask(index_t channels, index_t height, index_t width, int parity = 0) {
  if (channels < 1 || height < 1 || width < 1)
    throw_value_error("models::checkerboard_mask", "C, H and W must be positive, got " + std::to_string(channels) + ", " +
                                                       std::to_string(height) + ", " + std::to_string(width));
  std::vector<T> m(static_cast<std::size_t>(channels * height * width));
  for (index_t c = 0; c < channels; ++c)
    for (index_t h = 0; h < height; ++h)
      for (index_t w = 0; w < width; ++w)
        m[static_cast<std::size_t>((c * height + h) * width + w)] = static_cast<T>((h + w + parity) % 2 != 0 ? 1 : 0);
  return from_vector<T, Device>(m, Shape{channels, height, width});
}

// [C, H, W] with ones on the first ⌊C/2⌋ channels (first_half) or on the others.
template <class T = float, class Device = cpu>
Tensor<T, Device> channel_mask(index_t channels, index_t height, index_t width, bool first_half = true) {
  if (channels < 2 || height < 1 || width < 1)
    throw_value_error("models::channel_mask", "needs C >= 2 and positive H, W, got " + std::to_string(channels) + ", " +
                                                  std::to_string(height) + ", " + std::to_string(width));
  std::vector<T> m(static_cast<std::size_t>(channels * height * width));
  for (index_t c = 0; c < channels; ++c)
    for (index_t i = 0; i < height * width; ++i)
      m[static_cast<std::size_t>(c * height * width + i)] = static_cast<T>(((c < channels / 2) == first_half) ? 1 : 0);
  return from_vector<T, Device>(m, Shape{channels, height, width});
}

// [D] with m[i] = (i + parity) mod 2 (flat-index parity; W5's masks alternate parity 0, 1, 0, ...).
template <class T = float, class Device = cpu>
Tensor<T, Device> parity_mask(index_t dim, int parity = 0) {
  if (dim < 2) throw_value_error("models::parity_mask", "needs at least 2 features, got " + std::to_string(dim));
  std::vector<T> m(static_cast<std::size_t>(dim));
  for (index_t i = 0; i < dim; ++i) m[static_cast<std::size_t>(i)] = static_cast<T>((i + parity) % 2 != 0 ? 1 : 0);
  return from_vector<T, Device>(m, Shape{dim});
}

// ---------------------------------------------------------------------------------------------
struct AffineCouplingOptions {
  // s = tanh_scale · tanh(s_raw) instead of s = s_raw (bounds the log-scale; W5 uses tanh, scale 1).
  bool tanh = false;
  double tanh_scale = 1.0;
};

// RealNVP's affine coupling (Dinh, Sohl-Dickstein & Bengio 2017, eqs. 6–9) with a fixed binary
// mask m of one example's shape:
//   y = m⊙x + (1−m)⊙(x⊙exp(s) + t),   (s, t) = networks(m⊙x),   logdet = Σ (1−m)⊙s,
// and x = m⊙y + (1−m)⊙((y − t)⊙exp(−s)) with (s, t) recomputed from m⊙y = m⊙x. The Jacobian is
// triangular (after reordering) with diagonal 1 on the mask and exp(s) off it, hence the logdet.
// The networks are the user's: one mapping m⊙x [B, C, ...] to [B, 2C, ...] (s then t along dim 1;
// child "net"), or two mapping it to x's shape each (children "s_net" and "t_net"). The mask is
// the buffer "mask"; W5's state dict names match PyTorch's (layers.k.s_net.0.weight, ...).
template <class T = float, class Device = cpu>
class AffineCoupling : public FlowLayer<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  template <class Net>
    requires nn::TensorToTensorModule<Net, T, Device>
  AffineCoupling(const tensor_type& mask, std::shared_ptr<Net> net, AffineCouplingOptions options = {})
      : options_(options) {
    set_mask(mask);
    auto n = this->register_module("net", std::move(net));
    Net* raw = n.get();
    net_ = [raw](const tensor_type& x) { return tensor_type(raw->forward(x)); };
  }
  template <class SNet, class TNet>
    requires nn::TensorToTensorModule<SNet, T, Device> && nn::TensorToTensorModule<TNet, T, Device>
  AffineCoupling(const tensor_type& mask, std::shared_ptr<SNet> s_net, std::shared_ptr<TNet> t_net,
                 AffineCouplingOptions options = {})
      : options_(options) {
    set_mask(mask);
    auto s = this->register_module("s_net", std::move(s_net));
    auto t = this->register_module("t_net", std::move(t_net));
    SNet* rs = s.get();
    TNet* rt = t.get();
    s_net_ = [rs](const tensor_type& x) { return tensor_type(rs->forward(x)); };
    t_net_ = [rt](const tensor_type& x) { return tensor_type(rt->forward(x)); };
  }

  std::pair<tensor_type, tensor_type> forward(const tensor_type& x) override {
    detail::check_examples("models::AffineCoupling::forward", x, mask_->shape(), "the mask");
    const tensor_type& m = *mask_;
    const tensor_type xm(x * m);
    auto [s, t] = log_scale_and_shift("models::AffineCoupling::forward", xm);
    tensor_type y(xm + (T(1) - m) * (x * exp(s) + t));
    return {y, detail::sum_per_example(s)};
  }

  tensor_type inverse(const tensor_type& y) override {
    detail::check_examples("models::AffineCoupling::inverse", y, mask_->shape(), "the mask");
    const tensor_type& m = *mask_;
    const tensor_type ym(y * m);
    auto [s, t] = log_scale_and_shift("models::AffineCoupling::inverse", ym);
    return tensor_type(ym + (T(1) - m) * ((y - t) * exp(-s)));
  }

  Shape output_shape(const Shape& in) const override {
    if (in != mask_->shape())
      throw_shape_error("models::AffineCoupling", "an example must have the mask's shape (mask, example)", mask_->shape(), in);
    return in;
  }

  const tensor_type& mask() const { return *mask_; }
  const AffineCouplingOptions& options() const { return options_; }

 private:
  void set_mask(const tensor_type& mask) {
    if (!mask.defined() || mask.dim() < 1) throw_value_error("models::AffineCoupling", "the mask must be a tensor of one example's shape");
    if constexpr (std::is_same_v<Device, cpu>) {
      for (T v : mask.to_vector())
        if (v != T(0) && v != T(1)) throw_value_error("models::AffineCoupling", "the mask must hold only 0 and 1");
    }
    if (mask.shape()[0] < 1) throw_value_error("models::AffineCoupling", "the mask is empty");
    if (!(options_.tanh_scale > 0))
      throw_value_error("models::AffineCoupling", "tanh_scale must be positive, got " + std::to_string(options_.tanh_scale));
    mask_ = &this->register_buffer("mask", mask.detach().contiguous().clone());
  }

  // s (already multiplied by 1 − m, so Σ s is the logdet) and t from the masked input.
  std::pair<tensor_type, tensor_type> log_scale_and_shift(const char* op, const tensor_type& masked) {
    tensor_type s_raw, t;
    if (net_) {
      const tensor_type h = net_(masked);
      Shape want = masked.shape();
      want[1] *= 2;
      if (h.shape() != want)
        throw_shape_error(op, "the network must map m*x to twice its channels along dim 1 (s then t) (expected, got)", want, h.shape());
      const index_t c = masked.size(1);
      s_raw = h.slice(1, 0, c);
      t = h.slice(1, c, 2 * c);
    } else {
      s_raw = s_net_(masked);
      t = t_net_(masked);
      if (s_raw.shape() != masked.shape())
        throw_shape_error(op, "s_net must give x's shape (expected, got)", masked.shape(), s_raw.shape());
      if (t.shape() != masked.shape())
        throw_shape_error(op, "t_net must give x's shape (expected, got)", masked.shape(), t.shape());
    }
    const tensor_type& m = *mask_;
    if (options_.tanh) return {tensor_type(tanh(s_raw) * static_cast<T>(options_.tanh_scale) * (T(1) - m)), t};
    return {tensor_type(s_raw * (T(1) - m)), t};
  }

  AffineCouplingOptions options_;
  tensor_type* mask_ = nullptr;
  std::function<tensor_type(const tensor_type&)> net_, s_net_, t_net_;
};

// ---------------------------------------------------------------------------------------------
struct ActNormOptions {
  bool data_init = true;  // set scale and bias from the first forward batch
  double eps = 1e-6;      // added to the variance of that batch
};

// Glow's activation normalization (Kingma & Dhariwal 2018, section 3.1): per channel (dim 1 of
// [B, C] or [B, C, H, W, ...]) y = s ⊙ (x + b), logdet = H·W·Σ_c log|s_c| (the Jacobian is
// diagonal, each s_c repeated over the H·W positions), x = y / s − b. With data_init, the first
// forward sets b = −mean and s = 1/√(var + eps) of that batch per channel (biased variance over
// the batch and positions), so its output has zero mean and unit variance per channel.
// Parameters "scale" and "bias" [C]; buffer "initialized" [1] (1 once set, kept in checkpoints).
template <class T = float, class Device = cpu>
class ActNorm : public FlowLayer<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  explicit ActNorm(index_t channels, ActNormOptions options = {}) : channels_(channels), options_(options) {
    if (channels < 1) throw_value_error("models::ActNorm", "channels must be positive, got " + std::to_string(channels));
    if (!(options.eps >= 0)) throw_value_error("models::ActNorm", "eps must be non-negative");
    scale_ = &this->register_parameter("scale", ones<T, Device>(Shape{channels}));
    bias_ = &this->register_parameter("bias", zeros<T, Device>(Shape{channels}));
    initialized_ = &this->register_buffer("initialized", zeros<T, Device>(Shape{1}));
  }

  std::pair<tensor_type, tensor_type> forward(const tensor_type& x) override {
    check("models::ActNorm::forward", x);
    if (options_.data_init && !initialized()) initialize(x);
    const Shape pc = per_channel(x.dim());
    tensor_type y((x + bias_->reshape(pc)) * scale_->reshape(pc));
    const index_t positions = x.numel() / (x.size(0) * channels_);
    const tensor_type ld = sum(log(abs(*scale_)) * static_cast<T>(positions));
    return {y, detail::repeat_per_example(ld, x.size(0))};
  }

  tensor_type inverse(const tensor_type& y) override {
    check("models::ActNorm::inverse", y);
    const Shape pc = per_channel(y.dim());
    return tensor_type(y / scale_->reshape(pc) - bias_->reshape(pc));
  }

  Shape output_shape(const Shape& in) const override {
    if (in.ndim < 1 || in[0] != channels_)
      throw_shape_error("models::ActNorm", "an example must be [C, ...] with C = " + std::to_string(channels_), in);
    return in;
  }

  // Sets b and s from the batch x (the data-dependent initialization); marks the layer initialized.
  void initialize(const tensor_type& x) {
    static_assert(std::is_same_v<Device, cpu>, "models::ActNorm computes its initialization in host memory");
    check("models::ActNorm::initialize", x);
    const tensor_type c = x.detach().contiguous();
    const index_t batch = x.size(0), positions = x.numel() / (batch * channels_);
    const double count = static_cast<double>(batch * positions);
    NoGrad guard;
    for (index_t ch = 0; ch < channels_; ++ch) {
      double mean = 0, var = 0;
      for (index_t b = 0; b < batch; ++b)
        for (index_t i = 0; i < positions; ++i) mean += static_cast<double>(c.data()[(b * channels_ + ch) * positions + i]);
      mean /= count;
      for (index_t b = 0; b < batch; ++b)
        for (index_t i = 0; i < positions; ++i) {
          const double d = static_cast<double>(c.data()[(b * channels_ + ch) * positions + i]) - mean;
          var += d * d;
        }
      var /= count;
      if (!(var + options_.eps > 0))
        throw_value_error("models::ActNorm::initialize", "channel " + std::to_string(ch) +
                                                             " is constant over the batch (variance 0); use eps > 0");
      bias_->data()[ch] = static_cast<T>(-mean);
      scale_->data()[ch] = static_cast<T>(1.0 / std::sqrt(var + options_.eps));
    }
    initialized_->data()[0] = T(1);
  }
  bool initialized() const {
    static_assert(std::is_same_v<Device, cpu>, "models::ActNorm reads its flag in host memory");
    return initialized_->data()[0] != T(0);
  }

  tensor_type scale() const { return *scale_; }
  tensor_type bias() const { return *bias_; }
  index_t channels() const { return channels_; }

 private:
  void check(const char* op, const tensor_type& x) const {
    if (x.dim() < 2 || x.size(1) != channels_ || x.size(0) < 1)
      throw_shape_error(op, "expected [B, C, ...] with C = " + std::to_string(channels_), x.shape());
  }
  // [C, 1, 1, ...]: broadcasts along dim 1 of an ndim-d batch.
  Shape per_channel(int ndim) const {
    Shape s{channels_};
    for (int i = 2; i < ndim; ++i) s.push_back(1);
    return s;
  }

  index_t channels_;
  ActNormOptions options_;
  tensor_type* scale_ = nullptr;
  tensor_type* bias_ = nullptr;
  tensor_type* initialized_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Glow's invertible 1×1 convolution (Kingma & Dhariwal 2018, section 3.2): the same C×C matrix W
// mixes the channels at every position, y[:, :, p] = W x[:, :, p] for [B, C, H, W, ...] (or
// y = W x for [B, C]); the Jacobian is block diagonal with H·W copies of W, so
// logdet = H·W·log|det W| (log_abs_det above: LU with partial pivoting, backward W⁻ᵀ), and
// x = W⁻¹ y with W⁻¹ from the same LU (computed on the detached weight: inverse() does not
// differentiate with respect to W). W starts as a random rotation: the Q of a Gaussian matrix's
// QR decomposition (Gram–Schmidt in double), so log|det W| = 0. Parameter "weight" [C, C].
template <class T = float, class Device = cpu>
class InvertibleConv1x1 : public FlowLayer<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  InvertibleConv1x1(index_t channels, Rng& rng) : channels_(channels) {
    if (channels < 1)
      throw_value_error("models::InvertibleConv1x1", "channels must be positive, got " + std::to_string(channels));
    weight_ = &this->register_parameter("weight", detail::tensor_from_doubles<T, Device>(random_rotation(channels, rng),
                                                                                         Shape{channels, channels}));
  }

  std::pair<tensor_type, tensor_type> forward(const tensor_type& x) override {
    check("models::InvertibleConv1x1::forward", x);
    const index_t b = x.size(0), positions = x.numel() / (b * channels_);
    const tensor_type y = matmul(*weight_, x.reshape(Shape{b, channels_, positions})).reshape(x.shape());
    const tensor_type ld(log_abs_det(*weight_) * static_cast<T>(positions));
    return {y, detail::repeat_per_example(ld, b)};
  }

  tensor_type inverse(const tensor_type& y) override {
    check("models::InvertibleConv1x1::inverse", y);
    const index_t b = y.size(0), positions = y.numel() / (b * channels_);
    const tensor_type w_inv = detail::tensor_from_doubles<T, Device>(
        detail::lu_of("models::InvertibleConv1x1::inverse", *weight_).inverse(), Shape{channels_, channels_});
    return matmul(w_inv, y.reshape(Shape{b, channels_, positions})).reshape(y.shape());
  }

  Shape output_shape(const Shape& in) const override {
    if (in.ndim < 1 || in[0] != channels_)
      throw_shape_error("models::InvertibleConv1x1", "an example must be [C, ...] with C = " + std::to_string(channels_), in);
    return in;
  }

  tensor_type weight() const { return *weight_; }
  index_t channels() const { return channels_; }

  // An n×n orthogonal matrix, row-major: Gram–Schmidt (twice, for orthogonality to rounding) on
  // the columns of a standard Gaussian matrix from `rng`, i.e. the Q of its QR decomposition with
  // a positive diagonal R (Haar-distributed).
  static std::vector<double> random_rotation(index_t n, Rng& rng) {
    std::vector<double> a = randn<double, cpu>(Shape{n, n}, rng).to_vector();
    const auto at = [&](index_t r, index_t c) -> double& { return a[static_cast<std::size_t>(r * n + c)]; };
    for (index_t j = 0; j < n; ++j) {
      for (int pass = 0; pass < 2; ++pass)
        for (index_t k = 0; k < j; ++k) {
          double dot = 0;
          for (index_t i = 0; i < n; ++i) dot += at(i, k) * at(i, j);
          for (index_t i = 0; i < n; ++i) at(i, j) -= dot * at(i, k);
        }
      double norm = 0;
      for (index_t i = 0; i < n; ++i) norm += at(i, j) * at(i, j);
      norm = std::sqrt(norm);
      if (!(norm > 0)) throw_value_error("models::InvertibleConv1x1", "degenerate random matrix (draw again)");
      for (index_t i = 0; i < n; ++i) at(i, j) /= norm;
    }
    return a;
  }

 private:
  void check(const char* op, const tensor_type& x) const {
    if (x.dim() < 2 || x.size(1) != channels_ || x.size(0) < 1)
      throw_shape_error(op, "expected [B, C, ...] with C = " + std::to_string(channels_), x.shape());
  }

  index_t channels_;
  tensor_type* weight_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Squeeze (RealNVP section 3.6, Glow's squeeze2d): [B, C, H, W] -> [B, 4C, H/2, W/2], each 2×2
// block of a channel becoming four channels: y[b, 4c + 2i + j, h, w] = x[b, c, 2h + i, 2w + j].
// A permutation, so logdet = 0. H and W must be even.
template <class T = float, class Device = cpu>
class Squeeze : public FlowLayer<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  std::pair<tensor_type, tensor_type> forward(const tensor_type& x) override {
    check("models::Squeeze::forward", x);
    const index_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    const tensor_type y = x.reshape(Shape{b, c, h / 2, 2, w / 2, 2})
                              .permute({0, 1, 3, 5, 2, 4})
                              .reshape(Shape{b, 4 * c, h / 2, w / 2});
    return {y, zeros<T, Device>(Shape{b})};
  }

  tensor_type inverse(const tensor_type& y) override {
    if (y.dim() != 4 || y.size(1) % 4 != 0)
      throw_shape_error("models::Squeeze::inverse", "expected [B, 4C, H/2, W/2]", y.shape());
    const index_t b = y.size(0), c = y.size(1) / 4, h = y.size(2), w = y.size(3);
    return y.reshape(Shape{b, c, 2, 2, h, w}).permute({0, 1, 4, 2, 5, 3}).reshape(Shape{b, c, 2 * h, 2 * w});
  }

  Shape output_shape(const Shape& in) const override {
    if (in.ndim != 3 || in[1] % 2 != 0 || in[2] % 2 != 0)
      throw_shape_error("models::Squeeze", "an example must be [C, H, W] with even H and W", in);
    return Shape{4 * in[0], in[1] / 2, in[2] / 2};
  }

 private:
  static void check(const char* op, const tensor_type& x) {
    if (x.dim() != 4 || x.size(2) % 2 != 0 || x.size(3) % 2 != 0)
      throw_shape_error(op, "expected [B, C, H, W] with even H and W", x.shape());
  }
};

// ---------------------------------------------------------------------------------------------
// Preprocessing of 8-bit images.

// Uniform dequantization: (v + u) / levels with u ~ U[0, 1) per element, for integer pixel values
// v in [0, levels); the result lies in [0, 1). Modelling this continuous x with a density p_X is
// modelling the discrete v: the probability of v's cell is ∫ p_X ≥ exp(E_u log p_X) · vol (Theis,
// van den Oord & Bethge 2016), so the NLL of x bounds that of v (see Flow::bits_per_dim).
template <class T, class D>
Tensor<T, D> dequantize(const Tensor<T, D>& pixels, Rng& rng, double levels = 256) {
  if (!(levels > 0)) throw_value_error("models::dequantize", "levels must be positive");
  const Tensor<T, D> u = rand<T, D>(pixels.shape(), rng);
  return Tensor<T, D>((pixels.detach() + u) * static_cast<T>(1.0 / levels));
}

// The logit transform of RealNVP (section 4.1): x in [0, 1] -> y = logit(α + (1 − 2α)x), which
// maps the bounded data to ℝ away from logit's poles. With s = α + (1 − 2α)x,
//   dy/dx = (1 − 2α) · (1/s + 1/(1 − s)) = (1 − 2α) / (s(1 − s)),
// elementwise, so logdet = Σ [log(1 − 2α) − log s − log(1 − s)]. Inverse: x = (σ(y) − α)/(1 − 2α).
template <class T = float, class Device = cpu>
class LogitTransform : public FlowLayer<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  explicit LogitTransform(double alpha = 0.05) : alpha_(alpha) {
    if (!(alpha >= 0 && alpha < 0.5)) throw_value_error("models::LogitTransform", "alpha must lie in [0, 0.5), got " + std::to_string(alpha));
  }

  std::pair<tensor_type, tensor_type> forward(const tensor_type& x) override {
    if (x.dim() < 1 || x.size(0) < 1) throw_shape_error("models::LogitTransform::forward", "expected a batch [B, ...]", x.shape());
    const auto s = x * static_cast<T>(1 - 2 * alpha_) + static_cast<T>(alpha_);
    tensor_type y(log(s) - log1p(-s));
    const tensor_type ld(static_cast<T>(std::log1p(-2 * alpha_)) - log(s) - log1p(-s));
    return {y, detail::sum_per_example(ld)};
  }

  tensor_type inverse(const tensor_type& y) override {
    return tensor_type((sigmoid(y) - static_cast<T>(alpha_)) * static_cast<T>(1 / (1 - 2 * alpha_)));
  }

  double alpha() const { return alpha_; }

 private:
  double alpha_;
};

// ---------------------------------------------------------------------------------------------
// What Flow::encode gives: the latents (one per split, in order, then the final one), each
// [B, shape...], and Σ logdet per example [B].
template <class T, class Device>
struct FlowLatents {
  std::vector<Tensor<T, Device>> latents;
  Tensor<T, Device> logdet;
};

// A normalizing flow with a standard normal prior, multi-scale as in RealNVP (section 3.6) and
// Glow (figure 2b). Layers are added in order with add(); split() ends the current level and
// factors out the second half of the channels (dim 1) of the level's output: that half is a latent
// of its own (it goes straight to the prior N(0, I)) and the next level sees the first half only.
// The levels' layers are the children "layers.0", "layers.1", ... (split() adds none), and an
// optional preprocessing layer (such as LogitTransform) is applied first as the child
// "preprocessing"; its logdet counts in log_prob.
//
//   x ─pre─ level 0 ─┬─ split: 2nd half ─────────────────────── z_0
//                    └─ 1st half ─ level 1 ─┬─ split ─────────── z_1
//                                           └─ ... ─ last level ─ z_L
//
// forward(x) gives (z, logdet) with z [B, D] the latents flattened and joined in that order;
// inverse(z) takes such a z apart, runs the levels backwards, joining each factored-out half back
// on; sample() draws z from N(0, T²I).
template <class T = float, class Device = cpu>
class Flow : public nn::BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;
  using layer_ptr = std::shared_ptr<FlowLayer<T, Device>>;

  // `example_shape` is one example's ([784], [1, 28, 28], ...).
  explicit Flow(Shape example_shape, layer_ptr preprocessing = nullptr)
      : example_shape_(example_shape), shape_(example_shape) {
    if (example_shape.ndim < 1 || example_shape.numel() < 1)
      throw_shape_error("models::Flow", "the example shape must have at least one dimension and one element", example_shape);
    if (preprocessing) {
      shape_ = preprocessing->output_shape(shape_);
      preprocessing_ = this->register_module("preprocessing", std::move(preprocessing));
    }
    layers_ = this->register_module("layers", std::make_shared<nn::BasicModule<T, Device>>());
    levels_.emplace_back();
  }

  // Appends a layer to the current level; throws ShapeError when it cannot take the examples
  // reaching it.
  template <class L>
  Flow& add(std::shared_ptr<L> layer) {
    static_assert(std::is_base_of_v<FlowLayer<T, Device>, L>,
                  "kiln::models::Flow::add takes flow layers (derived from models::FlowLayer<T, Device>, same T and Device)");
    if (!layer) throw_value_error("models::Flow::add", "the layer is null");
    shape_ = layer->output_shape(shape_);
    layers_->register_module(std::to_string(count_++), layer);
    levels_.back().push_back(std::move(layer));
    return *this;
  }

  // Ends the current level: the second half of its output's channels (dim 1) becomes a latent.
  Flow& split() {
    if (shape_[0] < 2 || shape_[0] % 2 != 0)
      throw_shape_error("models::Flow::split", "needs an even number of channels (dim 0 of an example) to halve", shape_);
    Shape half = shape_;
    half[0] /= 2;
    split_shapes_.push_back(half);
    shape_ = half;
    levels_.emplace_back();
    return *this;
  }

  // The latents and Σ logdet of x [B, example shape...].
  FlowLatents<T, Device> encode(const tensor_type& x) {
    detail::check_examples("models::Flow::encode", x, example_shape_, "the flow's examples");
    FlowLatents<T, Device> out;
    tensor_type h = x;
    out.logdet = zeros<T, Device>(Shape{x.size(0)});
    const auto step = [&](FlowLayer<T, Device>& layer) {
      auto [y, ld] = layer.forward(h);
      h = std::move(y);
      out.logdet = tensor_type(out.logdet + ld);
    };
    if (preprocessing_) step(*preprocessing_);
    for (std::size_t level = 0; level < levels_.size(); ++level) {
      for (auto& layer : levels_[level]) step(*layer);
      if (level + 1 < levels_.size()) {
        const index_t c = h.size(1);
        out.latents.push_back(h.slice(1, c / 2, c));
        h = h.slice(1, 0, c / 2);
      }
    }
    out.latents.push_back(h);
    return out;
  }

  // x from latents of latent_shapes() (each [B, shape...]).
  tensor_type decode(const std::vector<tensor_type>& latents) {
    const std::vector<Shape> shapes = latent_shapes();
    if (latents.size() != shapes.size())
      throw_value_error("models::Flow::decode", "expected " + std::to_string(shapes.size()) + " latents, got " +
                                                    std::to_string(latents.size()));
    for (std::size_t i = 0; i < shapes.size(); ++i)
      detail::check_examples("models::Flow::decode", latents[i], shapes[i], "the latent");
    tensor_type h = latents.back();
    for (std::size_t level = levels_.size(); level-- > 0;) {
      if (level + 1 < levels_.size()) h = concat(std::vector<tensor_type>{h, latents[level]}, 1);
      for (auto it = levels_[level].rbegin(); it != levels_[level].rend(); ++it) h = (*it)->inverse(h);
    }
    if (preprocessing_) h = preprocessing_->inverse(h);
    return h;
  }

  // (z [B, D], Σ logdet [B]): the latents flattened and joined.
  std::pair<tensor_type, tensor_type> forward(const tensor_type& x) {
    FlowLatents<T, Device> r = encode(x);
    const index_t b = x.size(0);
    if (r.latents.size() == 1) return {r.latents[0].reshape(Shape{b, -1}), r.logdet};
    std::vector<tensor_type> flat;
    for (const auto& z : r.latents) flat.push_back(z.reshape(Shape{b, -1}));
    return {concat(flat, 1), r.logdet};
  }
  std::pair<tensor_type, tensor_type> operator()(const tensor_type& x) { return forward(x); }

  // x from z [B, D].
  tensor_type inverse(const tensor_type& z) {
    if (z.dim() != 2 || z.size(1) != dim() || z.size(0) < 1)
      throw_shape_error("models::Flow::inverse", "expected z [B, D] with D = " + std::to_string(dim()), z.shape());
    const index_t b = z.size(0);
    std::vector<tensor_type> latents;
    index_t at = 0;
    for (const Shape& s : latent_shapes()) {
      Shape full{b};
      for (index_t d : s) full.push_back(d);
      latents.push_back(z.slice(1, at, at + s.numel()).reshape(full));
      at += s.numel();
    }
    return decode(latents);
  }

  // log p(x) per example [B] (nats): log N(z; 0, I) + Σ logdet.
  tensor_type log_prob(const tensor_type& x) {
    auto [z, logdet] = forward(x);
    const T log_norm = static_cast<T>(0.5 * static_cast<double>(dim()) * std::log(2 * std::numbers::pi));
    return tensor_type(logdet - sum(square(z), 1) * T(0.5) - log_norm);
  }

  // Bits per dimension of the discrete data per example [B], for x = v / levels + noise in [0, 1)
  // (dequantized data, e.g. `levels` = 256 for 8-bit pixels v).
  // Derivation: v = levels·x maps [0, 1)^D onto [0, levels)^D with |det| = levels^D, so the
  // density of the continuous v is p_V(v) = p_X(x) / levels^D and −log p_V = −log p_X + D·log levels
  // (nats). p_X already includes every layer's logdet — the logit transform's too when it is the
  // preprocessing — so −log p_X is the NLL in [0, 1) space. In bits per dimension:
  //   bits/dim = (−log p_X(x) + D·log levels) / (D·ln 2),
  // which bounds the discrete v's −log₂ P(v) / D from above (dequantization, Jensen's inequality).
  tensor_type bits_per_dim(const tensor_type& x, double levels = 256) {
    if (!(levels > 0)) throw_value_error("models::Flow::bits_per_dim", "levels must be positive");
    const double d = static_cast<double>(dim());
    return tensor_type((static_cast<T>(d * std::log(levels)) - log_prob(x)) * static_cast<T>(1 / (d * std::numbers::ln2)));
  }

  // n examples: the inverse of z ~ N(0, temperature²·I) (temperature 0: the inverse of z = 0).
  // Nothing is recorded.
  tensor_type sample(index_t n, Rng& rng, double temperature = 1.0) {
    if (n < 1) throw_value_error("models::Flow::sample", "n must be positive, got " + std::to_string(n));
    if (!(temperature >= 0)) throw_value_error("models::Flow::sample", "temperature must be non-negative");
    NoGrad guard;
    const tensor_type z(randn<T, Device>(Shape{n, dim()}, rng) * static_cast<T>(temperature));
    return inverse(z);
  }

  // The shapes of one example's latents: one per split, then the final one.
  std::vector<Shape> latent_shapes() const {
    std::vector<Shape> out = split_shapes_;
    out.push_back(shape_);
    return out;
  }
  // D: the number of elements of one example (= of its latents together).
  index_t dim() const { return example_shape_.numel(); }
  const Shape& example_shape() const { return example_shape_; }
  std::size_t num_levels() const { return levels_.size(); }
  std::size_t num_layers() const { return count_; }
  // The i-th layer added (over all levels).
  layer_ptr layer(std::size_t i) const {
    std::size_t k = i;
    for (const auto& level : levels_) {
      if (k < level.size()) return level[k];
      k -= level.size();
    }
    throw_value_error("models::Flow::layer", "index " + std::to_string(i) + " is out of range for " + std::to_string(count_) + " layers");
  }
  layer_ptr preprocessing() const { return preprocessing_; }

 private:
  Shape example_shape_, shape_;
  layer_ptr preprocessing_;
  std::shared_ptr<nn::BasicModule<T, Device>> layers_;
  std::vector<std::vector<layer_ptr>> levels_;
  std::vector<Shape> split_shapes_;
  std::size_t count_ = 0;
};

}  // namespace kiln::models
