// kiln/ops/pool.hpp — max_pool2d, avg_pool2d, adaptive_avg_pool2d and nearest/bilinear upsampling
// as torch.nn.functional computes them, with gradients of any order.
// Builds on autograd/graph.hpp, ops/conv.hpp (Size2d) and the CPU kernels of backend/cpu/pool.hpp.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/backend/cpu/pool.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/ops/conv.hpp>

#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln {

namespace detail {

template <class T, class D>
constexpr void require_pool_types() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "kiln's pooling and upsampling ops work on float and double tensors");
  static_assert(std::is_same_v<D, cpu>,
                "kiln's pooling and upsampling ops run on kiln::cpu tensors only (no Backend<Device> pooling "
                "entry points exist yet for other devices)");
}

// y = M x for a linear map M from x's shape to `out_shape` that does not depend on x (an average
// over fixed windows, a resampling, a selection of fixed pixels): `apply(x, y)` writes M x and
// `adjoint(g, gx)` writes Mᵀ g, both on contiguous buffers. Gradients: ∂⟨G, M x⟩/∂x = Mᵀ G, and
// the map g ↦ Mᵀ g is linear too, with gradient M G'. So M x records Mᵀ as its backward and
// Mᵀ g records M: any order of derivative, built from the same two kernels.
template <class T, class D, class Apply, class Adjoint>
Tensor<T, D> linear_map(const char* name, const char* adjoint_name, const Tensor<T, D>& x, const Shape& out_shape,
                        const Apply& apply, const Adjoint& adjoint) {
  auto y = Tensor<T, D>::uninitialized(out_shape);
  {
    const Tensor<T, D> xc = x.detach().contiguous();
    apply(xc.data(), y.data());
  }
  const Shape in_shape = x.shape();
  record(name, y, {x}, [name, adjoint_name, in_shape, apply, adjoint](const Tensor<T, D>& g, const auto&) {
    return std::vector<Tensor<T, D>>{linear_map(adjoint_name, name, g, in_shape, adjoint, apply)};
  });
  return y;
}

// The input as a batch [N, C, H, W] (a 3-d [C, H, W] input gets N = 1).
template <class T, class D>
Tensor<T, D> pool_batch(const char* op, const Tensor<T, D>& input) {
  if (!input.defined()) throw_value_error(op, "the input is an undefined tensor");
  if (input.dim() != 4 && input.dim() != 3)
    throw_shape_error(op, "the input must be 4-d [N, C, H, W] (or 3-d [C, H, W] without a batch)", input.shape());
  return input.dim() == 3 ? input.unsqueeze(0) : input;
}

template <class T, class D>
Tensor<T, D> unbatch_like(const Tensor<T, D>& input, const Tensor<T, D>& y) {
  return input.dim() == 3 ? y.squeeze(0) : y;
}

inline backend::cpu::Pool2dParams pool_params(const Shape& x, Size2d kernel, Size2d stride, Size2d padding,
                                              Size2d dilation, bool ceil_mode) {
  backend::cpu::Pool2dParams p;
  p.N = x.dims[0], p.C = x.dims[1], p.H = x.dims[2], p.W = x.dims[3];
  p.KH = kernel.h, p.KW = kernel.w, p.stride_h = stride.h, p.stride_w = stride.w;
  p.pad_h = padding.h, p.pad_w = padding.w, p.dilation_h = dilation.h, p.dilation_w = dilation.w;
  p.ceil_mode = ceil_mode;
  return p;
}

// Resampling [N, C, H, W] to [N, C, size.h, size.w] with `op`'s kernels.
template <class T, class D>
Tensor<T, D> upsample(const char* op, const char* backward_name, const Tensor<T, D>& input, Size2d size,
                      bool bilinear, bool align_corners) {
  const Tensor<T, D> x = pool_batch(op, input);
  backend::cpu::Upsample2dParams p;
  p.N = x.size(0), p.C = x.size(1), p.H = x.size(2), p.W = x.size(3), p.H_out = size.h, p.W_out = size.w;
  p.align_corners = align_corners;
  p.validate(op);
  const Shape out{p.N, p.C, p.H_out, p.W_out};
  Tensor<T, D> y;
  if (bilinear)
    y = linear_map(
        op, backward_name, x, out, [p](const T* in, T* o) { backend::cpu::upsample_bilinear2d_forward(p, in, o); },
        [p](const T* g, T* gx) { backend::cpu::upsample_bilinear2d_backward(p, g, gx); });
  else
    y = linear_map(
        op, backward_name, x, out, [p](const T* in, T* o) { backend::cpu::upsample_nearest2d_forward(p, in, o); },
        [p](const T* g, T* gx) { backend::cpu::upsample_nearest2d_backward(p, g, gx); });
  return unbatch_like(input, y);
}

inline Size2d scaled_size(const char* op, const Shape& input, Size2d scale_factor) {
  if (scale_factor.h < 1 || scale_factor.w < 1)
    throw_value_error(op, "the scale factor must be a positive integer, got " + scale_factor.to_string());
  if (input.ndim < 2) return Size2d{0};  // pool_batch reports the shape
  return Size2d{input.dims[input.ndim - 2] * scale_factor.h, input.dims[input.ndim - 1] * scale_factor.w};
}

}  // namespace detail

// Max pooling, torch.nn.functional.max_pool2d: input [N, C, H, W] (or [C, H, W]); windows of
// kernel taps `dilation` apart, every `stride` pixels, over the input padded by `padding` (at most
// half the kernel) with -inf; output sizes by PyTorch's floor (or ceil_mode) rule.
// Backward: y = x[argmax of the window], so ∂L/∂x receives each gy at its window's argmax (ties:
// the first maximum, as PyTorch). With the argmax held fixed the map x ↦ y is a selection, a linear
// map, so its gradient (the scatter) and the scatter's gradient (the selection again) are recorded
// through detail::linear_map: double backward works (the second derivative in x is zero almost
// everywhere; the gradient is differentiable with respect to the incoming gradient, as gradient
// penalties need).
template <class T, class D>
Tensor<T, D> max_pool2d(const Tensor<T, D>& input, Size2d kernel_size, Size2d stride, Size2d padding = 0,
                        Size2d dilation = 1, bool ceil_mode = false) {
  detail::require_pool_types<T, D>();
  const char* op = "max_pool2d";
  const Tensor<T, D> x = detail::pool_batch(op, input);
  const backend::cpu::Pool2dParams p = detail::pool_params(x.shape(), kernel_size, stride, padding, dilation, ceil_mode);
  p.validate(op);
  const Shape out{p.N, p.C, p.H_out(), p.W_out()};
  auto indices = std::make_shared<std::vector<index_t>>(static_cast<std::size_t>(out.numel()));
  auto y = Tensor<T, D>::uninitialized(out);
  {
    const Tensor<T, D> xc = x.detach().contiguous();
    backend::cpu::max_pool2d_forward(p, xc.data(), y.data(), indices->data());
  }
  const Shape in_shape = x.shape();
  detail::record(op, y, {x}, [p, indices, in_shape, out](const Tensor<T, D>& g, const auto&) {
    // Mᵀ g: each gradient goes to its window's argmax; M G: each output reads its argmax.
    auto scatter = [p, indices](const T* gy, T* gx) { backend::cpu::max_pool2d_backward(p, gy, indices->data(), gx); };
    auto select = [p, indices, out](const T* x_in, T* y_out) {
      const index_t in_plane = p.H * p.W, out_plane = out.dims[2] * out.dims[3];
      const index_t* idx = indices->data();
      for (index_t plane = 0; plane < p.N * p.C; ++plane)
        for (index_t o = 0; o < out_plane; ++o) {
          const index_t at = idx[plane * out_plane + o];
          y_out[plane * out_plane + o] = at < 0 ? T(0) : x_in[plane * in_plane + at];
        }
    };
    return std::vector<Tensor<T, D>>{
        detail::linear_map("max_pool2d_backward", "max_pool2d_backward_backward", g, in_shape, scatter, select)};
  });
  return detail::unbatch_like(input, y);
}
// The same with stride = kernel_size (PyTorch's default).
template <class T, class D>
Tensor<T, D> max_pool2d(const Tensor<T, D>& input, Size2d kernel_size) {
  return max_pool2d(input, kernel_size, kernel_size);
}

// Average pooling, torch.nn.functional.avg_pool2d: the mean over each kernel window, every
// `stride` pixels, over the input zero-padded by `padding` (at most half the kernel). The divisor
// is the window's size within the padded input (count_include_pad) or its number of real pixels,
// or divisor_override when that is not 0.
// Backward: y = (1/divisor)·Σ_window x, so every pixel of a window receives gy/divisor. The map is
// linear in x, so its gradient is the adjoint map and the adjoint's gradient the pooling again
// (detail::linear_map): gradients of any order.
template <class T, class D>
Tensor<T, D> avg_pool2d(const Tensor<T, D>& input, Size2d kernel_size, Size2d stride, Size2d padding = 0,
                        bool ceil_mode = false, bool count_include_pad = true, index_t divisor_override = 0) {
  detail::require_pool_types<T, D>();
  const char* op = "avg_pool2d";
  const Tensor<T, D> x = detail::pool_batch(op, input);
  backend::cpu::Pool2dParams p = detail::pool_params(x.shape(), kernel_size, stride, padding, 1, ceil_mode);
  p.count_include_pad = count_include_pad;
  p.divisor_override = divisor_override;
  p.validate(op);  // also rejects a negative divisor_override
  const Shape out{p.N, p.C, p.H_out(), p.W_out()};
  Tensor<T, D> y = detail::linear_map(
      op, "avg_pool2d_backward", x, out, [p](const T* in, T* o) { backend::cpu::avg_pool2d_forward(p, in, o); },
      [p](const T* g, T* gx) { backend::cpu::avg_pool2d_backward(p, g, gx); });
  return detail::unbatch_like(input, y);
}
// The same with stride = kernel_size (PyTorch's default).
template <class T, class D>
Tensor<T, D> avg_pool2d(const Tensor<T, D>& input, Size2d kernel_size) {
  return avg_pool2d(input, kernel_size, kernel_size);
}

// Adaptive average pooling, torch.nn.functional.adaptive_avg_pool2d: output pixel (oh, ow) is the
// mean of input rows [⌊oh·H/H_out⌋, ⌈(oh + 1)·H/H_out⌉) and the columns likewise.
// Backward: each pixel of a window receives gy / (window size); linear, so gradients of any order
// (detail::linear_map).
template <class T, class D>
Tensor<T, D> adaptive_avg_pool2d(const Tensor<T, D>& input, Size2d output_size) {
  detail::require_pool_types<T, D>();
  const char* op = "adaptive_avg_pool2d";
  const Tensor<T, D> x = detail::pool_batch(op, input);
  backend::cpu::AdaptivePool2dParams p;
  p.N = x.size(0), p.C = x.size(1), p.H = x.size(2), p.W = x.size(3), p.H_out = output_size.h, p.W_out = output_size.w;
  p.validate(op);
  const Shape out{p.N, p.C, p.H_out, p.W_out};
  Tensor<T, D> y = detail::linear_map(
      op, "adaptive_avg_pool2d_backward", x, out,
      [p](const T* in, T* o) { backend::cpu::adaptive_avg_pool2d_forward(p, in, o); },
      [p](const T* g, T* gx) { backend::cpu::adaptive_avg_pool2d_backward(p, g, gx); });
  return detail::unbatch_like(input, y);
}

// Nearest-neighbour upsampling by integer factors, F.interpolate(x, scale_factor=s,
// mode='nearest'): y[n, c, oh, ow] = x[n, c, ⌊oh/s_h⌋, ⌊ow/s_w⌋].
// Backward: each input pixel receives the sum of gy over the outputs that copy it; linear, so
// gradients of any order (detail::linear_map).
template <class T, class D>
Tensor<T, D> upsample_nearest2d(const Tensor<T, D>& input, Size2d scale_factor) {
  detail::require_pool_types<T, D>();
  const char* op = "upsample_nearest2d";
  return detail::upsample(op, "upsample_nearest2d_backward", input,
                          detail::scaled_size(op, input.defined() ? input.shape() : Shape{}, scale_factor), false,
                          false);
}
// The same to a given output size, F.interpolate(x, size=(h, w), mode='nearest'): source index
// ⌊o·(in/out)⌋ computed in float, as PyTorch.
template <class T, class D>
Tensor<T, D> upsample_nearest2d_to_size(const Tensor<T, D>& input, Size2d output_size) {
  detail::require_pool_types<T, D>();
  return detail::upsample("upsample_nearest2d", "upsample_nearest2d_backward", input, output_size, false, false);
}

// Bilinear upsampling by integer factors, F.interpolate(x, scale_factor=s, mode='bilinear',
// align_corners=...): each output pixel interpolates its four nearest input pixels, at source
// coordinate (o + ½)/s − ½ clamped at 0 (or o·(in − 1)/(out − 1) with align_corners).
// Backward: y is linear in x with weight l_h·l_w on each of its four taps, so each tap receives
// l_h·l_w·gy; linear, so gradients of any order (detail::linear_map).
template <class T, class D>
Tensor<T, D> upsample_bilinear2d(const Tensor<T, D>& input, Size2d scale_factor, bool align_corners = false) {
  detail::require_pool_types<T, D>();
  const char* op = "upsample_bilinear2d";
  return detail::upsample(op, "upsample_bilinear2d_backward", input,
                          detail::scaled_size(op, input.defined() ? input.shape() : Shape{}, scale_factor), true,
                          align_corners);
}
// The same to a given output size, F.interpolate(x, size=(h, w), mode='bilinear', align_corners=...).
template <class T, class D>
Tensor<T, D> upsample_bilinear2d_to_size(const Tensor<T, D>& input, Size2d output_size, bool align_corners = false) {
  detail::require_pool_types<T, D>();
  return detail::upsample("upsample_bilinear2d", "upsample_bilinear2d_backward", input, output_size, true,
                          align_corners);
}

}  // namespace kiln
