// kiln/backend/cpu/pool.hpp — 2-D pooling and upsampling kernels on contiguous NCHW float/double
// buffers: max/avg/adaptive-avg pooling, nearest and bilinear upsampling, forward and backward.
// Builds on thread_pool.hpp (parallel_for over image planes) and core/error.hpp.
#pragma once

#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::backend::cpu {

namespace pool_detail {

constexpr index_t floor_div(index_t a, index_t b) {
  const index_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// PyTorch's pooling output size: floor (or ceil) of (in + 2·pad - dilation·(k - 1) - 1) / stride,
// plus one; in ceil mode the last window must start inside the input or its left padding.
inline index_t pooled_size(index_t in, index_t k, index_t stride, index_t pad, index_t dilation,
                           bool ceil_mode) {
  if (stride < 1) return 0;
  const index_t span = in + 2 * pad - dilation * (k - 1) - 1;
  index_t out = floor_div(span + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

inline std::string size_pair(index_t a, index_t b) {
  return std::to_string(a) + "x" + std::to_string(b);
}

inline void require_at_least(const char* op, index_t value, index_t minimum, const char* name) {
  if (value < minimum)
    throw_value_error(op, std::string(name) + " must be >= " + std::to_string(minimum) + ", got " +
                              std::to_string(value));
}

// Runs f(plane_begin, plane_end) over the N·C image planes, in parallel when there is enough
// work (`work_per_plane` elements touched per plane).
template <class F>
void for_planes(index_t planes, index_t work_per_plane, F&& f) {
  const index_t grain =
      std::max<index_t>(1, (index_t{1} << 15) / std::max<index_t>(work_per_plane, 1));
  parallel_for(0, planes, grain, f);
}

template <class T>
constexpr void check_scalar() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "kiln's CPU pooling and upsampling kernels support float and double");
}

}  // namespace pool_detail

// A 2-D pooling window, PyTorch's MaxPool2d/AvgPool2d arguments: input [N, C, H, W], windows of
// KH x KW taps (dilation apart, max pooling only) every stride pixels, over an input padded by
// pad on each side; output [N, C, H_out, W_out]. count_include_pad and divisor_override apply
// to average pooling only (divisor_override 0: none).
struct Pool2dParams {
  index_t N = 1, C = 1, H = 1, W = 1, KH = 1, KW = 1;
  index_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
  bool ceil_mode = false;
  bool count_include_pad = true;
  index_t divisor_override = 0;

  index_t H_out() const {
    return pool_detail::pooled_size(H, KH, stride_h, pad_h, dilation_h, ceil_mode);
  }
  index_t W_out() const {
    return pool_detail::pooled_size(W, KW, stride_w, pad_w, dilation_w, ceil_mode);
  }

  std::string describe() const {
    using pool_detail::size_pair;
    return "input " + to_string(Shape{N, C, H, W}) + ", kernel " + size_pair(KH, KW) + ", stride " +
           size_pair(stride_h, stride_w) + ", padding " + size_pair(pad_h, pad_w) + ", dilation " +
           size_pair(dilation_h, dilation_w) + (ceil_mode ? ", ceil_mode" : "");
  }

  // Throws ValueError for sizes, strides, dilations below 1, negative padding or padding above
  // half the kernel (PyTorch's rule), ShapeError when the output would be empty.
  void validate(const char* op) const {
    using pool_detail::require_at_least;
    require_at_least(op, N, 0, "batch size N");
    require_at_least(op, C, 0, "channels C");
    require_at_least(op, H, 1, "input height H");
    require_at_least(op, W, 1, "input width W");
    require_at_least(op, KH, 1, "kernel height KH");
    require_at_least(op, KW, 1, "kernel width KW");
    require_at_least(op, stride_h, 1, "stride_h");
    require_at_least(op, stride_w, 1, "stride_w");
    require_at_least(op, pad_h, 0, "pad_h");
    require_at_least(op, pad_w, 0, "pad_w");
    require_at_least(op, dilation_h, 1, "dilation_h");
    require_at_least(op, dilation_w, 1, "dilation_w");
    require_at_least(op, divisor_override, 0, "divisor_override");
    if (pad_h > KH / 2 || pad_w > KW / 2)
      throw_value_error(op, "padding " + pool_detail::size_pair(pad_h, pad_w) +
                                " must be at most half the kernel size (" + describe() + ")");
    if (H_out() < 1 || W_out() < 1)
      throw ShapeError(std::string("kiln::") + op + ": the output would be " +
                       pool_detail::size_pair(H_out(), W_out()) + ", which is empty (" +
                       describe() + ")");
  }
};

// ------------------------------------------------------------------------------ max pooling
namespace pool_detail {

// Output positions o in [0, n) whose input position o·stride + offset lies in [0, size).
struct Span {
  index_t lo, hi;
};
inline Span valid_span(index_t offset, index_t stride, index_t size, index_t n) {
  index_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const index_t room = size - offset;
  index_t hi = room <= 0 ? 0 : (room + stride - 1) / stride;
  lo = std::min(lo, n);
  hi = std::clamp(hi, lo, n);
  return {lo, hi};
}

// The kernel column kw of every window reads input column ow·stride_w + offset; `cols`: the
// outputs for which that lies inside the input.
struct ColumnTap {
  index_t offset;
  Span cols;
};
inline std::vector<ColumnTap> column_taps(const Pool2dParams& p, index_t Wo) {
  std::vector<ColumnTap> taps(static_cast<std::size_t>(p.KW));
  for (index_t kw = 0; kw < p.KW; ++kw) {
    const index_t offset = kw * p.dilation_w - p.pad_w;
    taps[static_cast<std::size_t>(kw)] = {offset, valid_span(offset, p.stride_w, p.W, Wo)};
  }
  return taps;
}

// One output row of max pooling: the taps in PyTorch's order (kh, then kw), each a pass over
// the row that keeps the larger value (or a NaN) and where it came from, so the first maximum
// wins. Positions are tracked as T (exact below 2^24 for float: the caller checks) so that the
// passes vectorize; `pos` is scratch of Wo entries.
template <bool WithIndex, index_t SW, class T>
void max_pool_row(const Pool2dParams& p, const T* src, index_t oh, index_t Wo,
                  const std::vector<ColumnTap>& taps, T* best, index_t* at, T* pos) {
  for (index_t ow = 0; ow < Wo; ++ow) best[ow] = -std::numeric_limits<T>::infinity();
  if (WithIndex)
    for (index_t ow = 0; ow < Wo; ++ow) pos[ow] = T(-1);
  const index_t sw = SW ? SW : p.stride_w;  // SW: the column stride when fixed at compile time
  for (index_t kh = 0; kh < p.KH; ++kh) {
    const index_t ih = oh * p.stride_h - p.pad_h + kh * p.dilation_h;
    if (ih < 0 || ih >= p.H) continue;
    const T* row = src + ih * p.W;
    for (const ColumnTap& t : taps) {
      const T base = static_cast<T>(ih * p.W + t.offset);
      for (index_t ow = t.cols.lo; ow < t.cols.hi; ++ow) {
        const T v = row[ow * sw + t.offset];
        const bool take = (v > best[ow]) | (v != v);
        best[ow] = take ? v : best[ow];
        if (WithIndex) pos[ow] = take ? base + static_cast<T>(ow * sw) : pos[ow];
      }
    }
  }
  if (!WithIndex) return;
  for (index_t ow = 0; ow < Wo; ++ow) {
    if (pos[ow] >= T(0)) {
      at[ow] = static_cast<index_t>(pos[ow]);
      continue;
    }
    // Windows whose values are all -inf keep their first input pixel, as PyTorch.
    index_t h0 = oh * p.stride_h - p.pad_h, w0 = ow * sw - p.pad_w;
    const index_t h1 = std::min(h0 + (p.KH - 1) * p.dilation_h + 1, p.H);
    const index_t w1 = std::min(w0 + (p.KW - 1) * p.dilation_w + 1, p.W);
    while (h0 < 0) h0 += p.dilation_h;
    while (w0 < 0) w0 += p.dilation_w;
    at[ow] = h0 < h1 && w0 < w1 ? h0 * p.W + w0 : -1;
  }
}

// Max pooling one output at a time with integer positions, for planes too large for T to hold
// every position exactly.
template <class T>
void max_pool2d_exact(const Pool2dParams& p, const T* x, T* y, index_t* indices) {
  const index_t Ho = p.H_out(), Wo = p.W_out(), in_plane = p.H * p.W, out_plane = Ho * Wo;
  for_planes(p.N * p.C, out_plane * p.KH * p.KW, [&](index_t b, index_t e) {
    for (index_t plane = b; plane < e; ++plane) {
      const T* src = x + plane * in_plane;
      for (index_t oh = 0; oh < Ho; ++oh) {
        index_t h0 = oh * p.stride_h - p.pad_h;
        const index_t h1 = std::min(h0 + (p.KH - 1) * p.dilation_h + 1, p.H);
        while (h0 < 0) h0 += p.dilation_h;
        for (index_t ow = 0; ow < Wo; ++ow) {
          index_t w0 = ow * p.stride_w - p.pad_w;
          const index_t w1 = std::min(w0 + (p.KW - 1) * p.dilation_w + 1, p.W);
          while (w0 < 0) w0 += p.dilation_w;
          T best = -std::numeric_limits<T>::infinity();
          index_t best_at = h0 < h1 && w0 < w1 ? h0 * p.W + w0 : -1;
          for (index_t ih = h0; ih < h1; ih += p.dilation_h)
            for (index_t iw = w0; iw < w1; iw += p.dilation_w) {
              const T v = src[ih * p.W + iw];
              if (v > best || v != v) {
                best = v;
                best_at = ih * p.W + iw;
              }
            }
          y[plane * out_plane + oh * Wo + ow] = best;
          indices[plane * out_plane + oh * Wo + ow] = best_at;
        }
      }
    }
  });
}

}  // namespace pool_detail

// y[n, c, oh, ow] = max of x over the window; indices (may be null) receive the argmax as a flat
// index ih·W + iw into the input plane, as PyTorch's return_indices. As in PyTorch, the first
// of equal values wins and NaN counts as the maximum (the last NaN of the window gives the
// index). A window that covers only padding (possible with dilation) gives -inf and index -1.
template <class T>
void max_pool2d_forward(const Pool2dParams& p, const T* x, T* y, index_t* indices) {
  pool_detail::check_scalar<T>();
  p.validate("max_pool2d_forward");
  const index_t Ho = p.H_out(), Wo = p.W_out(), in_plane = p.H * p.W, out_plane = Ho * Wo;
  const auto taps = pool_detail::column_taps(p, Wo);
  if (indices && static_cast<double>(in_plane) >= 1.0 / std::numeric_limits<T>::epsilon())
    // Positions beyond T's exact integers: track them one output at a time.
    return pool_detail::max_pool2d_exact(p, x, y, indices);
  pool_detail::for_planes(p.N * p.C, out_plane * p.KH * p.KW, [&](index_t b, index_t e) {
    std::vector<T> pos(static_cast<std::size_t>(Wo));
    for (index_t plane = b; plane < e; ++plane)
      for (index_t oh = 0; oh < Ho; ++oh) {
        const T* src = x + plane * in_plane;
        T* best = y + plane * out_plane + oh * Wo;
        index_t* at = indices ? indices + plane * out_plane + oh * Wo : nullptr;
        using pool_detail::max_pool_row;
        if (at && p.stride_w == 1)
          max_pool_row<true, 1>(p, src, oh, Wo, taps, best, at, pos.data());
        else if (at && p.stride_w == 2)
          max_pool_row<true, 2>(p, src, oh, Wo, taps, best, at, pos.data());
        else if (at)
          max_pool_row<true, 0>(p, src, oh, Wo, taps, best, at, pos.data());
        else if (p.stride_w == 1)
          max_pool_row<false, 1>(p, src, oh, Wo, taps, best, at, pos.data());
        else if (p.stride_w == 2)
          max_pool_row<false, 2>(p, src, oh, Wo, taps, best, at, pos.data());
        else
          max_pool_row<false, 0>(p, src, oh, Wo, taps, best, at, pos.data());
      }
  });
}

// gx (+)= dL/dx: each gy[n, c, oh, ow] goes to the input pixel its window took the maximum from
// (index -1: nowhere); throws ValueError for any other index outside the plane.
// Derivation: y = x[argmax], so dy/dx is 1 at the argmax and 0 elsewhere (a subgradient at ties).
template <class T>
void max_pool2d_backward(const Pool2dParams& p, const T* gy, const index_t* indices, T* gx,
                         bool accumulate = false) {
  pool_detail::check_scalar<T>();
  p.validate("max_pool2d_backward");
  const index_t out_plane = p.H_out() * p.W_out(), in_plane = p.H * p.W;
  pool_detail::for_planes(p.N * p.C, in_plane + out_plane, [&](index_t b, index_t e) {
    for (index_t plane = b; plane < e; ++plane) {
      T* dst = gx + plane * in_plane;
      if (!accumulate) std::fill(dst, dst + in_plane, T(0));
      const T* g = gy + plane * out_plane;
      const index_t* idx = indices + plane * out_plane;
      for (index_t o = 0; o < out_plane; ++o) {
        const index_t at = idx[o];
        if (at == -1) continue;  // a window without input pixels
        if (at < 0 || at >= in_plane)
          throw_value_error("max_pool2d_backward",
                            "index " + std::to_string(at) + " at output " + std::to_string(o) +
                                " of plane " + std::to_string(plane) +
                                " is outside the input plane of " + std::to_string(in_plane) +
                                " pixels (" + p.describe() + ")");
        dst[at] += g[o];
      }
    }
  });
}

// ------------------------------------------------------------------------------ average pooling
namespace pool_detail {

// PyTorch's divisor, which factors into a row and a column part: the window is first clipped to
// the padded input (at size + pad); with count_include_pad its extent there counts, otherwise
// its extent inside the input.
inline std::vector<index_t> avg_extents(index_t n_out, index_t k, index_t stride, index_t pad,
                                        index_t size, bool include_pad) {
  std::vector<index_t> extent(static_cast<std::size_t>(n_out));
  for (index_t o = 0; o < n_out; ++o) {
    index_t begin = o * stride - pad;
    index_t end = std::min(begin + k, size + pad);
    if (!include_pad) {
      begin = std::max<index_t>(begin, 0);
      end = std::min(end, size);
    }
    extent[static_cast<std::size_t>(o)] = end - begin;
  }
  return extent;
}

// 1 / divisor of every output pixel of a plane (divisor_override replaces the extents).
template <class T>
std::vector<T> avg_divisors(const Pool2dParams& p, index_t Ho, index_t Wo) {
  const auto eh = avg_extents(Ho, p.KH, p.stride_h, p.pad_h, p.H, p.count_include_pad);
  const auto ew = avg_extents(Wo, p.KW, p.stride_w, p.pad_w, p.W, p.count_include_pad);
  std::vector<T> divisor(static_cast<std::size_t>(Ho * Wo));
  for (index_t oh = 0; oh < Ho; ++oh)
    for (index_t ow = 0; ow < Wo; ++ow)
      divisor[static_cast<std::size_t>(oh * Wo + ow)] =
          static_cast<T>(p.divisor_override > 0
                             ? p.divisor_override
                             : eh[static_cast<std::size_t>(oh)] * ew[static_cast<std::size_t>(ow)]);
  return divisor;
}

inline void check_avg(const Pool2dParams& p, const char* op) {
  p.validate(op);
  if (p.dilation_h != 1 || p.dilation_w != 1)
    throw_value_error(op, "average pooling has no dilation; got " +
                              size_pair(p.dilation_h, p.dilation_w) + " (" + p.describe() + ")");
}

}  // namespace pool_detail

// y[n, c, oh, ow] = (sum of x over the window inside the input) / divisor, the divisor as
// PyTorch's: the window's size within the padded input (count_include_pad, its default; the
// window is cut at the padded edge, which matters in ceil_mode), or the number of input pixels
// in it, or divisor_override when > 0.
template <class T>
void avg_pool2d_forward(const Pool2dParams& p, const T* x, T* y) {
  pool_detail::check_scalar<T>();
  pool_detail::check_avg(p, "avg_pool2d_forward");
  const index_t Ho = p.H_out(), Wo = p.W_out(), in_plane = p.H * p.W, out_plane = Ho * Wo;
  const auto taps = pool_detail::column_taps(p, Wo);
  const auto divisor = pool_detail::avg_divisors<T>(p, Ho, Wo);
  pool_detail::for_planes(p.N * p.C, out_plane * p.KH * p.KW, [&](index_t b, index_t e) {
    for (index_t plane = b; plane < e; ++plane)
      for (index_t oh = 0; oh < Ho; ++oh) {
        T* sum = y + plane * out_plane + oh * Wo;
        for (index_t ow = 0; ow < Wo; ++ow) sum[ow] = T(0);
        for (index_t kh = 0; kh < p.KH; ++kh) {
          const index_t ih = oh * p.stride_h - p.pad_h + kh;
          if (ih < 0 || ih >= p.H) continue;
          const T* row = x + plane * in_plane + ih * p.W;
          for (const auto& t : taps)
            for (index_t ow = t.cols.lo; ow < t.cols.hi; ++ow)
              sum[ow] += row[ow * p.stride_w + t.offset];
        }
        const T* d = divisor.data() + oh * Wo;
        for (index_t ow = 0; ow < Wo; ++ow) sum[ow] /= d[ow];
      }
  });
}

// gx (+)= dL/dx. Derivation: y = (1/divisor)·sum of the window, so every input pixel of the
// window receives gy / divisor.
template <class T>
void avg_pool2d_backward(const Pool2dParams& p, const T* gy, T* gx, bool accumulate = false) {
  pool_detail::check_scalar<T>();
  pool_detail::check_avg(p, "avg_pool2d_backward");
  const index_t Ho = p.H_out(), Wo = p.W_out(), in_plane = p.H * p.W, out_plane = Ho * Wo;
  const auto taps = pool_detail::column_taps(p, Wo);
  const auto divisor = pool_detail::avg_divisors<T>(p, Ho, Wo);
  pool_detail::for_planes(p.N * p.C, out_plane * p.KH * p.KW, [&](index_t b, index_t e) {
    std::vector<T> share(static_cast<std::size_t>(Wo));
    for (index_t plane = b; plane < e; ++plane) {
      T* dst = gx + plane * in_plane;
      if (!accumulate) std::fill(dst, dst + in_plane, T(0));
      for (index_t oh = 0; oh < Ho; ++oh) {
        const T* g = gy + plane * out_plane + oh * Wo;
        const T* d = divisor.data() + oh * Wo;
        for (index_t ow = 0; ow < Wo; ++ow) share[static_cast<std::size_t>(ow)] = g[ow] / d[ow];
        for (index_t kh = 0; kh < p.KH; ++kh) {
          const index_t ih = oh * p.stride_h - p.pad_h + kh;
          if (ih < 0 || ih >= p.H) continue;
          T* row = dst + ih * p.W;
          for (const auto& t : taps)
            for (index_t ow = t.cols.lo; ow < t.cols.hi; ++ow)
              row[ow * p.stride_w + t.offset] += share[static_cast<std::size_t>(ow)];
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------ adaptive average
// PyTorch's AdaptiveAvgPool2d: output pixel o averages input rows [floor(o·H/H_out),
// ceil((o + 1)·H/H_out)) (and likewise the columns).
struct AdaptivePool2dParams {
  index_t N = 1, C = 1, H = 1, W = 1, H_out = 1, W_out = 1;

  void validate(const char* op) const {
    using pool_detail::require_at_least;
    require_at_least(op, N, 0, "batch size N");
    require_at_least(op, C, 0, "channels C");
    require_at_least(op, H, 1, "input height H");
    require_at_least(op, W, 1, "input width W");
    require_at_least(op, H_out, 1, "output height H_out");
    require_at_least(op, W_out, 1, "output width W_out");
  }
};

namespace pool_detail {
inline index_t adaptive_begin(index_t o, index_t in, index_t out) { return (o * in) / out; }
inline index_t adaptive_end(index_t o, index_t in, index_t out) {
  return ((o + 1) * in + out - 1) / out;
}
}  // namespace pool_detail

template <class T>
void adaptive_avg_pool2d_forward(const AdaptivePool2dParams& p, const T* x, T* y) {
  pool_detail::check_scalar<T>();
  p.validate("adaptive_avg_pool2d_forward");
  using pool_detail::adaptive_begin, pool_detail::adaptive_end;
  const index_t in_plane = p.H * p.W, out_plane = p.H_out * p.W_out;
  pool_detail::for_planes(p.N * p.C, in_plane + out_plane, [&](index_t b, index_t e) {
    for (index_t plane = b; plane < e; ++plane) {
      const T* src = x + plane * in_plane;
      T* dst = y + plane * out_plane;
      for (index_t oh = 0; oh < p.H_out; ++oh) {
        const index_t h0 = adaptive_begin(oh, p.H, p.H_out), h1 = adaptive_end(oh, p.H, p.H_out);
        for (index_t ow = 0; ow < p.W_out; ++ow) {
          const index_t w0 = adaptive_begin(ow, p.W, p.W_out);
          const index_t w1 = adaptive_end(ow, p.W, p.W_out);
          T sum = 0;
          for (index_t ih = h0; ih < h1; ++ih)
            for (index_t iw = w0; iw < w1; ++iw) sum += src[ih * p.W + iw];
          dst[oh * p.W_out + ow] = sum / static_cast<T>((h1 - h0) * (w1 - w0));
        }
      }
    }
  });
}

// gx (+)= dL/dx. Derivation: each output is the mean of its window, so each pixel of the window
// receives gy / (window size).
template <class T>
void adaptive_avg_pool2d_backward(const AdaptivePool2dParams& p, const T* gy, T* gx,
                                  bool accumulate = false) {
  pool_detail::check_scalar<T>();
  p.validate("adaptive_avg_pool2d_backward");
  using pool_detail::adaptive_begin, pool_detail::adaptive_end;
  const index_t in_plane = p.H * p.W, out_plane = p.H_out * p.W_out;
  pool_detail::for_planes(p.N * p.C, in_plane + out_plane, [&](index_t b, index_t e) {
    for (index_t plane = b; plane < e; ++plane) {
      T* dst = gx + plane * in_plane;
      if (!accumulate) std::fill(dst, dst + in_plane, T(0));
      const T* g = gy + plane * out_plane;
      for (index_t oh = 0; oh < p.H_out; ++oh) {
        const index_t h0 = adaptive_begin(oh, p.H, p.H_out), h1 = adaptive_end(oh, p.H, p.H_out);
        for (index_t ow = 0; ow < p.W_out; ++ow) {
          const index_t w0 = adaptive_begin(ow, p.W, p.W_out);
          const index_t w1 = adaptive_end(ow, p.W, p.W_out);
          const T share = g[oh * p.W_out + ow] / static_cast<T>((h1 - h0) * (w1 - w0));
          for (index_t ih = h0; ih < h1; ++ih)
            for (index_t iw = w0; iw < w1; ++iw) dst[ih * p.W + iw] += share;
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------ upsampling
// Resizing [N, C, H, W] to [N, C, H_out, W_out] (for an integer scale factor s, H_out = s·H).
// align_corners applies to bilinear only.
struct Upsample2dParams {
  index_t N = 1, C = 1, H = 1, W = 1, H_out = 1, W_out = 1;
  bool align_corners = false;

  void validate(const char* op) const {
    using pool_detail::require_at_least;
    require_at_least(op, N, 0, "batch size N");
    require_at_least(op, C, 0, "channels C");
    require_at_least(op, H, 1, "input height H");
    require_at_least(op, W, 1, "input width W");
    require_at_least(op, H_out, 1, "output height H_out");
    require_at_least(op, W_out, 1, "output width W_out");
  }
};

namespace pool_detail {

// PyTorch's 'nearest' source index: floor(dst·(in/out)) in float, at most in - 1.
inline index_t nearest_source(index_t dst, index_t in, index_t out) {
  if (out == in) return dst;
  if (out == 2 * in) return dst >> 1;
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  return std::min(static_cast<index_t>(std::floor(static_cast<float>(dst) * scale)), in - 1);
}

inline std::vector<index_t> nearest_sources(index_t in, index_t out) {
  std::vector<index_t> src(static_cast<std::size_t>(out));
  for (index_t o = 0; o < out; ++o) src[static_cast<std::size_t>(o)] = nearest_source(o, in, out);
  return src;
}

// Two source taps and their weights for one output coordinate of a bilinear resize.
template <class T>
struct LinearTap {
  index_t i0, i1;
  T l0, l1;
};

// PyTorch's bilinear source coordinate: with align_corners, src = dst·(in - 1)/(out - 1);
// otherwise src = (dst + 0.5)·in/out - 0.5, clamped at 0. Taps floor(src) and the next pixel
// (the same one at the border), weighted by the distance.
template <class T>
std::vector<LinearTap<T>> linear_taps(index_t in, index_t out, bool align_corners) {
  std::vector<LinearTap<T>> taps(static_cast<std::size_t>(out));
  const T scale = align_corners
                      ? (out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0))
                      : static_cast<T>(in) / static_cast<T>(out);
  for (index_t o = 0; o < out; ++o) {
    auto& t = taps[static_cast<std::size_t>(o)];
    if (in == out) {
      t = {o, o, T(1), T(0)};
      continue;
    }
    T src =
        align_corners ? scale * static_cast<T>(o) : scale * (static_cast<T>(o) + T(0.5)) - T(0.5);
    if (src < T(0)) src = T(0);
    const index_t i0 = std::min(static_cast<index_t>(src), in - 1);
    const index_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
    const T l1 = std::clamp(src - static_cast<T>(i0), T(0), T(1));
    t = {i0, i1, T(1) - l1, l1};
  }
  return taps;
}

}  // namespace pool_detail

// y[n, c, oh, ow] = x[n, c, nearest(oh), nearest(ow)] with PyTorch's 'nearest' rule.
template <class T>
void upsample_nearest2d_forward(const Upsample2dParams& p, const T* x, T* y) {
  pool_detail::check_scalar<T>();
  p.validate("upsample_nearest2d_forward");
  const auto src_h = pool_detail::nearest_sources(p.H, p.H_out);
  const auto src_w = pool_detail::nearest_sources(p.W, p.W_out);
  const index_t in_plane = p.H * p.W, out_plane = p.H_out * p.W_out;
  pool_detail::for_planes(p.N * p.C, out_plane, [&](index_t b, index_t e) {
    for (index_t plane = b; plane < e; ++plane) {
      const T* src = x + plane * in_plane;
      T* dst = y + plane * out_plane;
      for (index_t oh = 0; oh < p.H_out; ++oh) {
        const T* row = src + src_h[static_cast<std::size_t>(oh)] * p.W;
        T* out = dst + oh * p.W_out;
        for (index_t ow = 0; ow < p.W_out; ++ow) out[ow] = row[src_w[static_cast<std::size_t>(ow)]];
      }
    }
  });
}

// gx (+)= dL/dx. Derivation: y copies x[nearest(oh), nearest(ow)], so each input pixel receives
// the sum of gy over the output pixels that copy it.
template <class T>
void upsample_nearest2d_backward(const Upsample2dParams& p, const T* gy, T* gx,
                                 bool accumulate = false) {
  pool_detail::check_scalar<T>();
  p.validate("upsample_nearest2d_backward");
  const auto src_h = pool_detail::nearest_sources(p.H, p.H_out);
  const auto src_w = pool_detail::nearest_sources(p.W, p.W_out);
  const index_t in_plane = p.H * p.W, out_plane = p.H_out * p.W_out;
  pool_detail::for_planes(p.N * p.C, in_plane + out_plane, [&](index_t b, index_t e) {
    for (index_t plane = b; plane < e; ++plane) {
      T* dst = gx + plane * in_plane;
      if (!accumulate) std::fill(dst, dst + in_plane, T(0));
      const T* g = gy + plane * out_plane;
      for (index_t oh = 0; oh < p.H_out; ++oh) {
        T* row = dst + src_h[static_cast<std::size_t>(oh)] * p.W;
        const T* in = g + oh * p.W_out;
        for (index_t ow = 0; ow < p.W_out; ++ow) row[src_w[static_cast<std::size_t>(ow)]] += in[ow];
      }
    }
  });
}

// y[n, c, oh, ow] = sum over the two row taps and two column taps of lh·lw·x (PyTorch's
// bilinear interpolation, align_corners as given).
template <class T>
void upsample_bilinear2d_forward(const Upsample2dParams& p, const T* x, T* y) {
  pool_detail::check_scalar<T>();
  p.validate("upsample_bilinear2d_forward");
  const auto th = pool_detail::linear_taps<T>(p.H, p.H_out, p.align_corners);
  const auto tw = pool_detail::linear_taps<T>(p.W, p.W_out, p.align_corners);
  const index_t in_plane = p.H * p.W, out_plane = p.H_out * p.W_out;
  pool_detail::for_planes(p.N * p.C, 4 * out_plane, [&](index_t b, index_t e) {
    for (index_t plane = b; plane < e; ++plane) {
      const T* src = x + plane * in_plane;
      T* dst = y + plane * out_plane;
      for (index_t oh = 0; oh < p.H_out; ++oh) {
        const auto& h = th[static_cast<std::size_t>(oh)];
        const T* r0 = src + h.i0 * p.W;
        const T* r1 = src + h.i1 * p.W;
        T* out = dst + oh * p.W_out;
        for (index_t ow = 0; ow < p.W_out; ++ow) {
          const auto& w = tw[static_cast<std::size_t>(ow)];
          out[ow] = h.l0 * (w.l0 * r0[w.i0] + w.l1 * r0[w.i1]) +
                    h.l1 * (w.l0 * r1[w.i0] + w.l1 * r1[w.i1]);
        }
      }
    }
  });
}

// gx (+)= dL/dx. Derivation: y is linear in x with coefficient lh·lw on each of its four taps,
// so each tap pixel receives lh·lw·gy. As matrices, y = Lh·x·Lwᵀ and gx = Lhᵀ·gy·Lw: each
// output row is first folded onto the input columns (two taps per output pixel), then added
// onto its two input rows with weights lh0 and lh1.
template <class T>
void upsample_bilinear2d_backward(const Upsample2dParams& p, const T* gy, T* gx,
                                  bool accumulate = false) {
  pool_detail::check_scalar<T>();
  p.validate("upsample_bilinear2d_backward");
  const auto th = pool_detail::linear_taps<T>(p.H, p.H_out, p.align_corners);
  const auto tw = pool_detail::linear_taps<T>(p.W, p.W_out, p.align_corners);
  // The column taps grouped by input column: input column iw gathers weight·gy[ow] over
  // (ow, weight) in [first[iw], first[iw + 1]), so the fold has no read-modify-write chain.
  std::vector<index_t> first(static_cast<std::size_t>(p.W + 1), 0), source;
  std::vector<T> weight;
  {
    for (const auto& w : tw) {
      ++first[static_cast<std::size_t>(w.i0 + 1)];
      ++first[static_cast<std::size_t>(w.i1 + 1)];
    }
    for (std::size_t i = 1; i < first.size(); ++i) first[i] += first[i - 1];
    source.resize(static_cast<std::size_t>(first.back()));
    weight.resize(source.size());
    std::vector<index_t> fill(first.begin(), first.end() - 1);
    for (index_t ow = 0; ow < p.W_out; ++ow) {
      const auto& w = tw[static_cast<std::size_t>(ow)];
      for (const auto& [col, l] : {std::pair{w.i0, w.l0}, std::pair{w.i1, w.l1}}) {
        const auto at = static_cast<std::size_t>(fill[static_cast<std::size_t>(col)]++);
        source[at] = ow;
        weight[at] = l;
      }
    }
  }
  const index_t in_plane = p.H * p.W, out_plane = p.H_out * p.W_out;
  pool_detail::for_planes(p.N * p.C, in_plane + 4 * out_plane, [&](index_t b, index_t e) {
    std::vector<T> folded(static_cast<std::size_t>(p.W));
    T* f = folded.data();
    for (index_t plane = b; plane < e; ++plane) {
      T* dst = gx + plane * in_plane;
      if (!accumulate) std::fill(dst, dst + in_plane, T(0));
      const T* g = gy + plane * out_plane;
      for (index_t oh = 0; oh < p.H_out; ++oh) {
        const T* in = g + oh * p.W_out;
        for (index_t iw = 0; iw < p.W; ++iw) {
          T sum = 0;
          for (index_t j = first[static_cast<std::size_t>(iw)];
               j < first[static_cast<std::size_t>(iw + 1)]; ++j)
            sum += weight[static_cast<std::size_t>(j)] * in[source[static_cast<std::size_t>(j)]];
          f[iw] = sum;
        }
        const auto& h = th[static_cast<std::size_t>(oh)];
        T* r0 = dst + h.i0 * p.W;
        T* r1 = dst + h.i1 * p.W;
        for (index_t iw = 0; iw < p.W; ++iw) r0[iw] += h.l0 * f[iw];
        for (index_t iw = 0; iw < p.W; ++iw) r1[iw] += h.l1 * f[iw];
      }
    }
  });
}

}  // namespace kiln::backend::cpu
