// kiln/ops/conv.hpp — conv2d and conv_transpose2d as torch.nn.functional computes them (stride,
// padding, dilation, groups, output_padding), with gradients of any order (gradient penalties).
// Builds on autograd/graph.hpp, ops/reduce.hpp and the CPU kernels of backend/cpu/conv.hpp.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/backend/cpu/conv.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/ops/reduce.hpp>

#include <string>
#include <type_traits>
#include <vector>

namespace kiln {

// A height/width pair for kernel sizes, strides, paddings, dilations and scale factors: one number
// for both (as PyTorch's int arguments, `2`) or `{height, width}` (as its tuples, `{2, 1}`).
struct Size2d {
  index_t h = 0, w = 0;
  constexpr Size2d() = default;
  constexpr Size2d(index_t both) : h(both), w(both) {}  // NOLINT: implicit on purpose, `stride = 2`
  constexpr Size2d(index_t height, index_t width) : h(height), w(width) {}
  friend constexpr bool operator==(const Size2d&, const Size2d&) = default;
  // "2x3" (a member: a free kiln::to_string(Size2d) would also take plain integers).
  std::string to_string() const { return std::to_string(h) + "x" + std::to_string(w); }
};

template <class T, class D>
Tensor<T, D> conv2d(const Tensor<T, D>& input, const Tensor<T, D>& weight, const Tensor<T, D>& bias = {},
                    Size2d stride = 1, Size2d padding = 0, Size2d dilation = 1, index_t groups = 1);
template <class T, class D>
Tensor<T, D> conv_transpose2d(const Tensor<T, D>& input, const Tensor<T, D>& weight, const Tensor<T, D>& bias = {},
                              Size2d stride = 1, Size2d padding = 0, Size2d output_padding = 0, index_t groups = 1,
                              Size2d dilation = 1);

namespace detail {

template <class T, class D>
constexpr void require_conv_types() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "kiln's convolutions work on float and double tensors");
  static_assert(std::is_same_v<D, cpu>,
                "kiln's convolutions run on kiln::cpu tensors only (no Backend<Device> convolution entry "
                "points exist yet for other devices)");
}

// A convolution A from [N, C_in, H, W] to [N, C_out, H_out, W_out] with a weight
// [C_out, C_in/groups, KH, KW]:
//   (A_w x)[n, co, oh, ow] = Σ over ci in co's group, kh, kw of
//       w[co, ci, kh, kw]·x[n, ci, oh·stride_h − pad_h + kh·dil_h, ow·stride_w − pad_w + kw·dil_w]
// (zero outside x). conv2d is A_w x; conv_transpose2d is the adjoint A_wᵀ of the convolution that
// maps its output back to its input. H_out and W_out are explicit: a transposed convolution with
// output_padding >= stride (allowed while output_padding < dilation) is the adjoint of a
// convolution whose output keeps only the first H_out rows of the usual floor rule.
struct ConvGeometry {
  index_t N = 0, C_in = 1, H = 1, W = 1, C_out = 1, KH = 1, KW = 1;
  Size2d stride{1}, padding{0}, dilation{1};
  index_t groups = 1, H_out = 1, W_out = 1;

  Shape input_shape() const { return Shape{N, C_in, H, W}; }
  Shape output_shape() const { return Shape{N, C_out, H_out, W_out}; }
  Shape weight_shape() const { return Shape{C_out, C_in / groups, KH, KW}; }

  backend::cpu::Conv2dParams conv_params() const {
    backend::cpu::Conv2dParams p;
    p.N = N, p.C_in = C_in, p.H = H, p.W = W, p.C_out = C_out, p.KH = KH, p.KW = KW;
    p.stride_h = stride.h, p.stride_w = stride.w, p.pad_h = padding.h, p.pad_w = padding.w;
    p.dilation_h = dilation.h, p.dilation_w = dilation.w, p.groups = groups;
    return p;
  }
  // True when H_out and W_out follow the floor rule (every convolution conv2d runs).
  bool natural() const {
    const auto p = conv_params();
    return p.H_out() == H_out && p.W_out() == W_out;
  }
  // The same map written as the transposed convolution that is A's adjoint: its input is A's
  // output and its output A's input, output_padding making up the rows the floor rule drops.
  backend::cpu::ConvTranspose2dParams transposed_params() const {
    backend::cpu::ConvTranspose2dParams p;
    p.N = N, p.C_in = C_out, p.H = H_out, p.W = W_out, p.C_out = C_in, p.KH = KH, p.KW = KW;
    p.stride_h = stride.h, p.stride_w = stride.w, p.pad_h = padding.h, p.pad_w = padding.w;
    p.dilation_h = dilation.h, p.dilation_w = dilation.w, p.groups = groups;
    p.output_padding_h = H - ((H_out - 1) * stride.h - 2 * padding.h + dilation.h * (KH - 1) + 1);
    p.output_padding_w = W - ((W_out - 1) * stride.w - 2 * padding.w + dilation.w * (KW - 1) + 1);
    return p;
  }
};

// Raw kernels on contiguous buffers (nothing recorded).
// y = A_w x (+ bias per output channel; bias may be null).
template <class T>
void conv_apply_raw(const ConvGeometry& A, const T* x, const T* w, const T* bias, T* y) {
  if (A.natural()) {
    backend::cpu::conv2d_forward(A.conv_params(), x, w, bias, y);
    return;
  }
  // Only the backward of a transposed convolution gets here, and it has no bias.
  backend::cpu::conv_transpose2d_backward_input(A.transposed_params(), x, w, y);
  if (bias) {
    const index_t plane = A.H_out * A.W_out;
    for (index_t n = 0; n < A.N; ++n)
      for (index_t c = 0; c < A.C_out; ++c)
        for (T *p = y + (n * A.C_out + c) * plane, *e = p + plane; p != e; ++p) *p += bias[c];
  }
}
// gx = A_wᵀ g (+ bias per channel of gx; bias may be null).
template <class T>
void conv_adjoint_raw(const ConvGeometry& A, const T* g, const T* w, const T* bias, T* gx) {
  backend::cpu::conv_transpose2d_forward(A.transposed_params(), g, w, bias, gx);
}
// gw = Σ_n g_n·columns(x_n)ᵀ, the weight gradient of y = A_w x for the output gradient g.
template <class T>
void conv_weight_grad_raw(const ConvGeometry& A, const T* x, const T* g, T* gw) {
  if (A.natural())
    backend::cpu::conv2d_backward_weight(A.conv_params(), x, g, gw);
  else
    backend::cpu::conv_transpose2d_backward_weight(A.transposed_params(), g, x, gw);
}

template <class T, class D>
Tensor<T, D> contiguous_data(const Tensor<T, D>& t) {
  return t.defined() ? t.detach().contiguous() : Tensor<T, D>();
}

// Σ over n, h, w of g[n, c, h, w] for g [N, C, H, W]: the gradient of a per-channel bias. With
// grad mode on (create_graph) it is built from tracked sums, so it is differentiable again.
template <class T, class D>
Tensor<T, D> channel_sums(const Tensor<T, D>& g) {
  const index_t N = g.size(0), C = g.size(1), plane = g.size(2) * g.size(3);
  if (grad_mode_enabled() && g.tracks_grad())
    return kiln::sum(kiln::sum(g.reshape(Shape{N, C, plane}), 2), 0);
  const Tensor<T, D> gc = g.detach().contiguous();
  auto out = Tensor<T, D>::uninitialized(Shape{C});
  backend::cpu::Conv2dParams p;  // a 1x1 convolution with this output: its bias gradient is the sum
  p.N = N, p.C_in = C, p.H = g.size(2), p.W = g.size(3), p.C_out = C;
  backend::cpu::conv2d_backward_bias(p, gc.data(), out.data());
  return out;
}

template <class T, class D>
Tensor<T, D> conv_apply(const char* name, const ConvGeometry& A, const Tensor<T, D>& x, const Tensor<T, D>& w,
                        const Tensor<T, D>& bias);
template <class T, class D>
Tensor<T, D> conv_adjoint(const char* name, const ConvGeometry& A, const Tensor<T, D>& g, const Tensor<T, D>& w,
                          const Tensor<T, D>& bias);
template <class T, class D>
Tensor<T, D> conv_weight_grad(const ConvGeometry& A, const Tensor<T, D>& x, const Tensor<T, D>& g);

// The three maps below are bilinear in their two tensor arguments and each one's gradients are
// the other two, so any order of derivative stays within them. With ⟨a, b⟩ = Σ a ⊙ b and
// ⟨G, A_w x⟩ = ⟨A_wᵀ G, x⟩ = ⟨conv_weight_grad(x, G), w⟩ (all three are the same triple sum
// Σ G[n, co, o]·w[co, ci, k]·x[n, ci, o·s − p + k·d], read with one factor left out; see the
// kernels' derivations in backend/cpu/conv.hpp):
//   y  = A_w x             : ∂L/∂x = A_wᵀ gy,          ∂L/∂w = conv_weight_grad(x, gy),  ∂L/∂b = Σ_{n,h,w} gy
//   gx = A_wᵀ g            : ∂L/∂g = A_w G,            ∂L/∂w = conv_weight_grad(G, g)
//   gw = conv_weight_grad(x, g) : ∂L/∂x = A_Gᵀ g,      ∂L/∂g = A_G x
// where G is the gradient arriving at each map's output. (The same rules as PyTorch's
// convolution_backward / _convolution_double_backward.) When grad mode is off they run on the
// raw kernels; under create_graph each gradient is recorded as one of these maps again.

// y = A_w x + bias, recorded as `name`.
template <class T, class D>
Tensor<T, D> conv_apply(const char* name, const ConvGeometry& A, const Tensor<T, D>& x, const Tensor<T, D>& w,
                        const Tensor<T, D>& bias) {
  auto y = Tensor<T, D>::uninitialized(A.output_shape());
  {
    const Tensor<T, D> xc = contiguous_data(x), wc = contiguous_data(w), bc = contiguous_data(bias);
    conv_apply_raw(A, xc.data(), wc.data(), bc.defined() ? bc.data() : nullptr, y.data());
  }
  const bool has_bias = bias.defined();
  if (!grad_mode_enabled() || !(x.tracks_grad() || w.tracks_grad() || (has_bias && bias.tracks_grad()))) return y;
  std::vector<Tensor<T, D>> inputs{x, w};
  if (has_bias) inputs.push_back(bias);
  // Keep only what a needed gradient reads: x for ∂L/∂w, w for ∂L/∂x.
  const Tensor<T, D> x_saved = w.tracks_grad() ? x : Tensor<T, D>();
  const Tensor<T, D> w_saved = x.tracks_grad() ? w : Tensor<T, D>();
  record_many(name, y, inputs, [A, x_saved, w_saved, has_bias](const Tensor<T, D>& g, const auto& node) {
    std::vector<Tensor<T, D>> grads(has_bias ? 3 : 2);
    if (node.needs(0)) grads[0] = conv_adjoint("conv2d_backward_input", A, g, w_saved, Tensor<T, D>());
    if (node.needs(1)) grads[1] = conv_weight_grad(A, x_saved, g);
    if (has_bias && node.needs(2)) grads[2] = channel_sums(g);
    return grads;
  });
  return y;
}

// gx = A_wᵀ g + bias, recorded as `name` (conv_transpose2d, or conv2d's input gradient).
template <class T, class D>
Tensor<T, D> conv_adjoint(const char* name, const ConvGeometry& A, const Tensor<T, D>& g, const Tensor<T, D>& w,
                          const Tensor<T, D>& bias) {
  auto gx = Tensor<T, D>::uninitialized(A.input_shape());
  {
    const Tensor<T, D> gc = contiguous_data(g), wc = contiguous_data(w), bc = contiguous_data(bias);
    conv_adjoint_raw(A, gc.data(), wc.data(), bc.defined() ? bc.data() : nullptr, gx.data());
  }
  const bool has_bias = bias.defined();
  if (!grad_mode_enabled() || !(g.tracks_grad() || w.tracks_grad() || (has_bias && bias.tracks_grad())))
    return gx;
  std::vector<Tensor<T, D>> inputs{g, w};
  if (has_bias) inputs.push_back(bias);
  const Tensor<T, D> g_saved = w.tracks_grad() ? g : Tensor<T, D>();
  const Tensor<T, D> w_saved = g.tracks_grad() ? w : Tensor<T, D>();
  record_many(name, gx, inputs, [A, g_saved, w_saved, has_bias](const Tensor<T, D>& G, const auto& node) {
    std::vector<Tensor<T, D>> grads(has_bias ? 3 : 2);
    if (node.needs(0)) grads[0] = conv_apply("conv_transpose2d_backward_input", A, G, w_saved, Tensor<T, D>());
    if (node.needs(1)) grads[1] = conv_weight_grad(A, G, g_saved);
    if (has_bias && node.needs(2)) grads[2] = channel_sums(G);
    return grads;
  });
  return gx;
}

// gw = conv_weight_grad(x, g) [C_out, C_in/groups, KH, KW], recorded.
template <class T, class D>
Tensor<T, D> conv_weight_grad(const ConvGeometry& A, const Tensor<T, D>& x, const Tensor<T, D>& g) {
  auto gw = Tensor<T, D>::uninitialized(A.weight_shape());
  {
    const Tensor<T, D> xc = contiguous_data(x), gc = contiguous_data(g);
    conv_weight_grad_raw(A, xc.data(), gc.data(), gw.data());
  }
  if (!grad_mode_enabled() || !(x.tracks_grad() || g.tracks_grad())) return gw;
  const Tensor<T, D> x_saved = g.tracks_grad() ? x : Tensor<T, D>();
  const Tensor<T, D> g_saved = x.tracks_grad() ? g : Tensor<T, D>();
  record("conv2d_backward_weight", gw, {x, g}, [A, x_saved, g_saved](const Tensor<T, D>& G, const auto& node) {
    std::vector<Tensor<T, D>> grads(2);
    if (node.needs(0)) grads[0] = conv_adjoint("conv2d_backward_weight_backward", A, g_saved, G, Tensor<T, D>());
    if (node.needs(1)) grads[1] = conv_apply("conv2d_backward_weight_backward", A, x_saved, G, Tensor<T, D>());
    return grads;
  });
  return gw;
}

// Checks shared by conv2d and conv_transpose2d; returns the input as a batch ([N, C, H, W]).
template <class T, class D>
Tensor<T, D> conv_batch(const char* op, const Tensor<T, D>& input, const Tensor<T, D>& weight, index_t groups,
                        const char* weight_layout) {
  if (!input.defined() || !weight.defined())
    throw_value_error(op, "the input and the weight must be defined tensors");
  if (weight.dim() != 4)
    throw_shape_error(op, std::string("the weight must be 4-d ") + weight_layout + "; input and weight",
                      input.shape(), weight.shape());
  if (input.dim() != 4 && input.dim() != 3)
    throw_shape_error(op, "the input must be 4-d [N, C, H, W] (or 3-d [C, H, W] without a batch); input and weight",
                      input.shape(), weight.shape());
  if (groups < 1) throw_value_error(op, "groups must be >= 1, got " + std::to_string(groups));
  return input.dim() == 3 ? input.unsqueeze(0) : input;
}

inline void check_conv_bias(const char* op, const Shape& bias, index_t channels, const Shape& weight) {
  if (bias.ndim != 1 || bias.dims[0] != channels)
    throw_shape_error(op, "the bias must be 1-d with one element per output channel (" + std::to_string(channels) +
                              "); bias and weight",
                      bias, weight);
}

}  // namespace detail

// 2-D convolution, torch.nn.functional.conv2d: input [N, C_in, H, W] (or [C_in, H, W]), weight
// [C_out, C_in/groups, KH, KW], bias [C_out] or undefined; output [N, C_out, H_out, W_out] with
// H_out = ⌊(H + 2·padding − dilation·(KH − 1) − 1) / stride⌋ + 1 (likewise W_out). Any argument
// may be a strided view (it is made contiguous for the kernel). Gradients of any order; see the
// derivation above detail::conv_apply.
template <class T, class D>
Tensor<T, D> conv2d(const Tensor<T, D>& input, const Tensor<T, D>& weight, const Tensor<T, D>& bias, Size2d stride,
                    Size2d padding, Size2d dilation, index_t groups) {
  detail::require_conv_types<T, D>();
  const char* op = "conv2d";
  const Tensor<T, D> x = detail::conv_batch(op, input, weight, groups, "[C_out, C_in/groups, KH, KW]");
  const index_t C_in = x.size(1), C_out = weight.size(0);
  if (C_in != weight.size(1) * groups)
    throw_shape_error(op,
                      "the input has " + std::to_string(C_in) + " channels but the weight expects C_in/groups·groups = " +
                          std::to_string(weight.size(1)) + "·" + std::to_string(groups) + " = " +
                          std::to_string(weight.size(1) * groups) + "; input and weight",
                      input.shape(), weight.shape());
  if (C_out % groups != 0)
    throw_shape_error(op, "the weight's C_out = " + std::to_string(C_out) + " is not divisible by groups = " +
                              std::to_string(groups) + "; input and weight",
                      input.shape(), weight.shape());
  if (bias.defined()) detail::check_conv_bias(op, bias.shape(), C_out, weight.shape());
  detail::ConvGeometry A;
  A.N = x.size(0), A.C_in = C_in, A.H = x.size(2), A.W = x.size(3), A.C_out = C_out;
  A.KH = weight.size(2), A.KW = weight.size(3), A.stride = stride, A.padding = padding, A.dilation = dilation;
  A.groups = groups;
  const backend::cpu::Conv2dParams p = A.conv_params();
  p.validate(op);  // strides, paddings, dilations, and a kernel that fits the padded input
  A.H_out = p.H_out(), A.W_out = p.W_out();
  Tensor<T, D> y = detail::conv_apply(op, A, x, weight, bias);
  return input.dim() == 3 ? y.squeeze(0) : y;
}

// 2-D transposed convolution, torch.nn.functional.conv_transpose2d (note PyTorch's argument order:
// output_padding and groups before dilation): input [N, C_in, H, W] (or [C_in, H, W]), weight
// [C_in, C_out/groups, KH, KW], bias [C_out] or undefined; output [N, C_out, H_out, W_out] with
// H_out = (H − 1)·stride − 2·padding + dilation·(KH − 1) + output_padding + 1. It is the adjoint
// (the input gradient) of conv2d from [N, C_out, H_out, W_out] to [N, C_in, H, W] with the same
// weight; gradients of any order (see detail::conv_apply).
template <class T, class D>
Tensor<T, D> conv_transpose2d(const Tensor<T, D>& input, const Tensor<T, D>& weight, const Tensor<T, D>& bias,
                              Size2d stride, Size2d padding, Size2d output_padding, index_t groups, Size2d dilation) {
  detail::require_conv_types<T, D>();
  const char* op = "conv_transpose2d";
  const Tensor<T, D> x = detail::conv_batch(op, input, weight, groups, "[C_in, C_out/groups, KH, KW]");
  const index_t C_in = x.size(1);
  if (C_in != weight.size(0))
    throw_shape_error(op, "the input has " + std::to_string(C_in) + " channels but the weight's first dimension (C_in) is " +
                              std::to_string(weight.size(0)) + "; input and weight",
                      input.shape(), weight.shape());
  if (C_in % groups != 0)
    throw_shape_error(op, "C_in = " + std::to_string(C_in) + " is not divisible by groups = " + std::to_string(groups) +
                              "; input and weight",
                      input.shape(), weight.shape());
  const index_t C_out = weight.size(1) * groups;
  if (bias.defined()) detail::check_conv_bias(op, bias.shape(), C_out, weight.shape());
  backend::cpu::ConvTranspose2dParams p;
  p.N = x.size(0), p.C_in = C_in, p.H = x.size(2), p.W = x.size(3), p.C_out = C_out;
  p.KH = weight.size(2), p.KW = weight.size(3), p.stride_h = stride.h, p.stride_w = stride.w;
  p.pad_h = padding.h, p.pad_w = padding.w, p.output_padding_h = output_padding.h;
  p.output_padding_w = output_padding.w, p.dilation_h = dilation.h, p.dilation_w = dilation.w, p.groups = groups;
  p.validate(op);  // strides, paddings, output_padding < max(stride, dilation), a non-empty output
  // The convolution this is the adjoint of: from the output [N, C_out, H_out, W_out] to the input.
  detail::ConvGeometry A;
  A.N = p.N, A.C_in = C_out, A.H = p.H_out(), A.W = p.W_out(), A.C_out = C_in, A.KH = p.KH, A.KW = p.KW;
  A.stride = stride, A.padding = padding, A.dilation = dilation, A.groups = groups, A.H_out = p.H, A.W_out = p.W;
  Tensor<T, D> y = detail::conv_adjoint(op, A, x, weight, bias);
  return input.dim() == 3 ? y.squeeze(0) : y;
}

}  // namespace kiln
