// kiln/backend/cpu/conv.hpp — 2-D convolution and transposed convolution kernels on contiguous
// NCHW float/double buffers: forward, input, weight and bias gradients (no autograd).
// Builds on im2col/col2im column buffers (simd.hpp packets), gemm.hpp and thread_pool.hpp.
#pragma once

#include <kiln/backend/cpu/gemm.hpp>
#include <kiln/backend/cpu/simd.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln::backend::cpu {

namespace conv_detail {

// floor(a / b) for b > 0 and any sign of a.
constexpr index_t floor_div(index_t a, index_t b) {
  const index_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

inline std::string size_pair(index_t a, index_t b) {
  return std::to_string(a) + "x" + std::to_string(b);
}

inline void require_at_least(const char* op, index_t value, index_t minimum, const char* name) {
  if (value < minimum)
    throw_value_error(op, std::string(name) + " must be >= " + std::to_string(minimum) + ", got " +
                              std::to_string(value));
}

}  // namespace conv_detail

// A 2-D convolution as PyTorch's Conv2d computes it: x [N, C_in, H, W] and weight
// [C_out, C_in/groups, KH, KW] give y [N, C_out, H_out, W_out], with
// y[n, co, oh, ow] = sum over ci in co's group, kh, kw of
//   w[co, ci, kh, kw] · x[n, ci, oh·stride_h - pad_h + kh·dilation_h, ow·stride_w - pad_w +
//   kw·dilation_w]
// (zero outside the input).
struct Conv2dParams {
  index_t N = 1, C_in = 1, H = 1, W = 1, C_out = 1, KH = 1, KW = 1;
  index_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
  index_t groups = 1;

  // floor((H + 2·pad_h - dilation_h·(KH - 1) - 1) / stride_h) + 1, as PyTorch.
  index_t H_out() const {
    if (stride_h < 1) return 0;
    return conv_detail::floor_div(H + 2 * pad_h - dilation_h * (KH - 1) - 1, stride_h) + 1;
  }
  index_t W_out() const {
    if (stride_w < 1) return 0;
    return conv_detail::floor_div(W + 2 * pad_w - dilation_w * (KW - 1) - 1, stride_w) + 1;
  }

  // "input [2, 3, 5, 5], weight [4, 3, 3, 3], stride 1x1, padding 0x0, dilation 1x1, groups 1"
  std::string describe() const {
    using conv_detail::size_pair;
    return "input " + to_string(Shape{N, C_in, H, W}) + ", weight " +
           to_string(Shape{C_out, groups > 0 ? C_in / groups : C_in, KH, KW}) + ", stride " +
           size_pair(stride_h, stride_w) + ", padding " + size_pair(pad_h, pad_w) + ", dilation " +
           size_pair(dilation_h, dilation_w) + ", groups " + std::to_string(groups);
  }

  // Throws ValueError for sizes, strides or dilations below 1 and negative padding, and
  // ShapeError when the channels do not divide into the groups or the (dilated) kernel does
  // not fit in the padded input. `op` names the caller in the message.
  void validate(const char* op) const {
    using conv_detail::require_at_least;
    require_at_least(op, N, 0, "batch size N");
    require_at_least(op, C_in, 1, "C_in");
    require_at_least(op, H, 1, "input height H");
    require_at_least(op, W, 1, "input width W");
    require_at_least(op, C_out, 1, "C_out");
    require_at_least(op, KH, 1, "kernel height KH");
    require_at_least(op, KW, 1, "kernel width KW");
    require_at_least(op, stride_h, 1, "stride_h");
    require_at_least(op, stride_w, 1, "stride_w");
    require_at_least(op, pad_h, 0, "pad_h");
    require_at_least(op, pad_w, 0, "pad_w");
    require_at_least(op, dilation_h, 1, "dilation_h");
    require_at_least(op, dilation_w, 1, "dilation_w");
    require_at_least(op, groups, 1, "groups");
    const std::string prefix = std::string("kiln::") + op + ": ";
    if (C_in % groups != 0)
      throw ShapeError(prefix + "C_in = " + std::to_string(C_in) +
                       " is not divisible by groups = " + std::to_string(groups) + " (" +
                       describe() + ")");
    if (C_out % groups != 0)
      throw ShapeError(prefix + "C_out = " + std::to_string(C_out) +
                       " is not divisible by groups = " + std::to_string(groups) + " (" +
                       describe() + ")");
    const index_t eff_h = dilation_h * (KH - 1) + 1, eff_w = dilation_w * (KW - 1) + 1;
    if (eff_h > H + 2 * pad_h || eff_w > W + 2 * pad_w)
      throw ShapeError(prefix + "the kernel, " + conv_detail::size_pair(eff_h, eff_w) +
                       " with dilation, is larger than the padded input " +
                       conv_detail::size_pair(H + 2 * pad_h, W + 2 * pad_w) + " (" + describe() +
                       ")");
  }
};

// A 2-D transposed convolution as PyTorch's ConvTranspose2d computes it: x [N, C_in, H, W] and
// weight [C_in, C_out/groups, KH, KW] give y [N, C_out, H_out, W_out] with
// H_out = (H - 1)·stride_h - 2·pad_h + dilation_h·(KH - 1) + output_padding_h + 1; every input
// pixel scatters w[ci, co, kh, kw]·x[n, ci, h, w] to y[n, co, h·stride_h - pad_h + kh·dilation_h,
// w·stride_w - pad_w + kw·dilation_w]. It is the adjoint (gradient with respect to the input) of
// the Conv2d that maps [N, C_out, H_out, W_out] to [N, C_in, H, W] with the same weight.
struct ConvTranspose2dParams {
  index_t N = 1, C_in = 1, H = 1, W = 1, C_out = 1, KH = 1, KW = 1;
  index_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  index_t output_padding_h = 0, output_padding_w = 0;
  index_t dilation_h = 1, dilation_w = 1, groups = 1;

  index_t H_out() const {
    return (H - 1) * stride_h - 2 * pad_h + dilation_h * (KH - 1) + output_padding_h + 1;
  }
  index_t W_out() const {
    return (W - 1) * stride_w - 2 * pad_w + dilation_w * (KW - 1) + output_padding_w + 1;
  }

  std::string describe() const {
    using conv_detail::size_pair;
    return "input " + to_string(Shape{N, C_in, H, W}) + ", weight " +
           to_string(Shape{C_in, groups > 0 ? C_out / groups : C_out, KH, KW}) + ", stride " +
           size_pair(stride_h, stride_w) + ", padding " + size_pair(pad_h, pad_w) +
           ", output_padding " + size_pair(output_padding_h, output_padding_w) + ", dilation " +
           size_pair(dilation_h, dilation_w) + ", groups " + std::to_string(groups);
  }

  // Throws ValueError for sizes, strides or dilations below 1, negative padding, and an
  // output_padding not smaller than the stride or the dilation (PyTorch's rule); ShapeError when
  // the channels do not divide into the groups or the output would be empty.
  void validate(const char* op) const {
    using conv_detail::require_at_least;
    require_at_least(op, N, 0, "batch size N");
    require_at_least(op, C_in, 1, "C_in");
    require_at_least(op, H, 1, "input height H");
    require_at_least(op, W, 1, "input width W");
    require_at_least(op, C_out, 1, "C_out");
    require_at_least(op, KH, 1, "kernel height KH");
    require_at_least(op, KW, 1, "kernel width KW");
    require_at_least(op, stride_h, 1, "stride_h");
    require_at_least(op, stride_w, 1, "stride_w");
    require_at_least(op, pad_h, 0, "pad_h");
    require_at_least(op, pad_w, 0, "pad_w");
    require_at_least(op, output_padding_h, 0, "output_padding_h");
    require_at_least(op, output_padding_w, 0, "output_padding_w");
    require_at_least(op, dilation_h, 1, "dilation_h");
    require_at_least(op, dilation_w, 1, "dilation_w");
    require_at_least(op, groups, 1, "groups");
    if (output_padding_h >= std::max(stride_h, dilation_h) ||
        output_padding_w >= std::max(stride_w, dilation_w))
      throw_value_error(
          op, "output_padding " + conv_detail::size_pair(output_padding_h, output_padding_w) +
                  " must be smaller than either the stride or the dilation (" + describe() + ")");
    const std::string prefix = std::string("kiln::") + op + ": ";
    if (C_in % groups != 0)
      throw ShapeError(prefix + "C_in = " + std::to_string(C_in) +
                       " is not divisible by groups = " + std::to_string(groups) + " (" +
                       describe() + ")");
    if (C_out % groups != 0)
      throw ShapeError(prefix + "C_out = " + std::to_string(C_out) +
                       " is not divisible by groups = " + std::to_string(groups) + " (" +
                       describe() + ")");
    if (H_out() < 1 || W_out() < 1)
      throw ShapeError(prefix + "the output would be " + conv_detail::size_pair(H_out(), W_out()) +
                       ", which is empty; reduce the padding (" + describe() + ")");
  }
};

namespace conv_detail {

// Everything the kernels need: a convolution from [N, C_in, H, W] to [N, C_out, Ho, Wo]. Ho and
// Wo are explicit so that a transposed convolution can run as the adjoint of a convolution
// whose natural output would be one row larger (output_padding >= stride).
struct Geometry {
  index_t N, C_in, H, W, C_out, KH, KW, sh, sw, ph, pw, dh, dw, groups, Ho, Wo;

  index_t group_in() const { return C_in / groups; }
  index_t group_out() const { return C_out / groups; }
  index_t group_k() const { return group_in() * KH * KW; }  // GEMM depth of one group
  index_t col_rows() const { return C_in * KH * KW; }       // rows of the column matrix
  index_t in_plane() const { return H * W; }
  index_t out_plane() const { return Ho * Wo; }
  // A 1x1 convolution that reads every pixel once: the input already is the column matrix.
  bool pointwise() const {
    return KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && Ho == H && Wo == W;
  }
};

inline Geometry geometry(const Conv2dParams& p) {
  return {p.N,        p.C_in,  p.H,     p.W,          p.C_out,      p.KH,     p.KW,      p.stride_h,
          p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w, p.groups, p.H_out(), p.W_out()};
}

// The convolution whose adjoint the transposed convolution is: from the transposed output
// [N, C_out, H_out, W_out] to the transposed input [N, C_in, H, W].
inline Geometry geometry(const ConvTranspose2dParams& p) {
  return {p.N,        p.C_out, p.H_out(), p.W_out(),    p.C_in,       p.KH,     p.KW, p.stride_h,
          p.stride_w, p.pad_h, p.pad_w,   p.dilation_h, p.dilation_w, p.groups, p.H,  p.W};
}

// ------------------------------------------------------------------------------ scratch
// A 64-byte aligned per-thread buffer that only grows; `Which` tells the buffers apart.
template <class T>
struct ScratchBuffer {
  T* data = nullptr;
  std::size_t size = 0;
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() {
    if (data) ::operator delete(data, std::align_val_t(64));
  }
  T* get(std::size_t n) {
    if (n > size) {
      if (data) ::operator delete(data, std::align_val_t(64));
      data = nullptr;
      size = 0;
      data = static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
      size = n;
    }
    return data;
  }
};

template <class T, int Which>
T* scratch(index_t n) {
  thread_local ScratchBuffer<T> buffer;
  return buffer.get(static_cast<std::size_t>(std::max<index_t>(n, 1)));
}

// ------------------------------------------------------------------------------ work plan
// The batch is cut into blocks of whole images; a block's output pixels are cut into chunks of
// whole output rows, each one GEMM over a column matrix of `cols` columns. Blocks hold several
// images when an image has few output pixels (so that GEMMs stay wide), chunks cut an image
// when it has many (so that the column matrix stays in cache).
struct Plan {
  index_t images_per_block = 1;
  index_t rows_per_chunk = 1;
  index_t blocks = 0;
  bool parallel_blocks = false;  // blocks on separate threads, each running serial GEMMs
};

// `elem_bytes`: sizeof(T); `bytes_per_col`: scratch bytes per column; `threads` = 1 gives a
// plan that does not depend on the thread count.
inline Plan make_plan(const Geometry& g, index_t elem_bytes, index_t bytes_per_col,
                      index_t budget_bytes, index_t min_cols, index_t max_cols, int threads) {
  Plan plan;
  const index_t cols =
      std::clamp<index_t>(budget_bytes / std::max<index_t>(bytes_per_col, 1), min_cols, max_cols);
  const index_t plane = std::max<index_t>(g.out_plane(), 1);
  if (cols >= plane) {
    plan.rows_per_chunk = g.Ho;
    // Near the budget, the image count with the least waste: columns past the GEMM's last
    // register tile (tiles are 64 or 128 bytes wide on x86) and, when the blocks are shared
    // out (at least three per thread), threads left idle in the last round.
    const index_t target = std::clamp<index_t>(cols / plane, 1, std::max<index_t>(g.N, 1));
    const index_t tile = std::max<index_t>(1, 128 / elem_bytes);
    auto tile_waste = [&](index_t images) {
      const index_t n = images * plane;
      return static_cast<double>((n + tile - 1) / tile * tile - n) / static_cast<double>(n);
    };
    auto idle = [&](index_t images) {
      const index_t blocks = (g.N + images - 1) / images;
      const index_t rounds = (blocks + threads - 1) / threads;
      return static_cast<double>(rounds * threads - blocks) / static_cast<double>(blocks);
    };
    index_t best = target;
    for (index_t images = std::max<index_t>(1, target / 2);
         images <= std::min<index_t>(g.N, target + target / 2); ++images)
      if (tile_waste(images) + 0.01 < tile_waste(best)) best = images;
    if (threads > 1) {
      index_t shared = 0;
      for (index_t images = 1; images <= std::min<index_t>(g.N, 2 * target); ++images) {
        if ((g.N + images - 1) / images < 3 * threads) break;
        if (shared == 0 ||
            tile_waste(images) + idle(images) + 0.01 < tile_waste(shared) + idle(shared))
          shared = images;
      }
      if (shared == 0 && g.N >= 2 * threads) shared = 1;
      if (shared > 0) best = shared;
    }
    plan.images_per_block = best;
  } else {
    plan.rows_per_chunk = std::clamp<index_t>(cols / std::max<index_t>(g.Wo, 1), 1, g.Ho);
    plan.images_per_block = 1;
  }
  plan.blocks = (g.N + plan.images_per_block - 1) / plan.images_per_block;
  plan.parallel_blocks = threads > 1 && plan.blocks >= 2 * threads;
  return plan;
}

// Calls body(n_begin, n_end) for every block of the plan: handed out to the threads one at a
// time when the plan says so (the GEMMs inside then run serially), else in order on this
// thread (the GEMMs and copies inside then use the pool).
template <class F>
void for_each_block(const Plan& plan, index_t N, F&& body) {
  const index_t per = plan.images_per_block;
  if (plan.parallel_blocks) {
    std::atomic<index_t> next{0};
    parallel_tasks(num_threads(), [&](index_t) {
      for (;;) {
        const index_t b = next.fetch_add(1, std::memory_order_relaxed);
        if (b >= plan.blocks) return;
        body(b * per, std::min(N, (b + 1) * per));
      }
    });
    return;
  }
  for (index_t b = 0; b < plan.blocks; ++b) body(b * per, std::min(N, (b + 1) * per));
}

// Threads for the GEMMs and copies of the current call.
inline int current_threads() { return detail::in_worker ? 1 : num_threads(); }

// Grain (in items of `item_size` elements) so that a piece of a parallel copy is worth a thread.
inline index_t copy_grain(index_t item_size) {
  return std::max<index_t>(1, (index_t{1} << 15) / std::max<index_t>(item_size, 1));
}

// ------------------------------------------------------------------------------ im2col, col2im
// The column matrix of a chunk (images [0, images), output rows [oh0, oh0 + rows)) has one row
// per (c, kh, kw), row = (c·KH + kh)·KW + kw, and one column per output pixel,
// column = (i·rows + r)·Wo + ow:
//   col[row][column] = x[i, c, (oh0 + r)·sh - ph + kh·dh, ow·sw - pw + kw·dw], 0 outside.
// For one row and one image that is a window of the input plane read with the strides; three
// ways of copying it:
//  - contiguous (sh = sw = 1, Wo = W): consecutive output pixels read consecutive input pixels
//    except where a row wraps, so the window is one straight copy whose wrapped entries are
//    zeroed afterwards;
//  - phased (a stride above 1, Wo = ceil(W/sw)): the plane is first split into its sh·sw stride
//    phases P[a][b][i][j] = x[i·sh + a][j·sw + b] (zero past the edge), each Wo wide; the window
//    then is a contiguous window of one phase;
//  - gathered (anything else): row by row.

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

// d[0, n) = s[0, n) and d[0, n) = 0: whole packets, then one partial packet.
template <class T>
KILN_FORCEINLINE void copy_run(T* d, const T* s, index_t n) {
  using V = simd::Vec<T>;
  index_t j = 0;
  for (; j + V::size <= n; j += V::size) V::load(s + j).store(d + j);
  if (j < n)
    V::load_partial(s + j, static_cast<int>(n - j)).store_partial(d + j, static_cast<int>(n - j));
}
template <class T>
KILN_FORCEINLINE void zero(T* d, index_t n) {
  using V = simd::Vec<T>;
  index_t j = 0;
  for (; j + V::size <= n; j += V::size) V::zero().store(d + j);
  if (j < n) V::zero().store_partial(d + j, static_cast<int>(n - j));
}

enum class ColumnMode { contiguous, phased, gathered };

inline ColumnMode column_mode(const Geometry& g) {
  if (g.sh == 1 && g.sw == 1) return g.Wo == g.W ? ColumnMode::contiguous : ColumnMode::gathered;
  return g.Wo == (g.W + g.sw - 1) / g.sw ? ColumnMode::phased : ColumnMode::gathered;
}

// Where one column-matrix row reads in a plane of Hp rows of width Wp with strides (sh, sw):
// pixel (r, ow) reads (r·sh + off_h, ow·sw + off_w); spans: the (r, ow) that land inside.
struct Window {
  index_t off_h, off_w;
  Span rows, cols;
};
inline Window window(index_t off_h, index_t off_w, index_t sh, index_t sw, index_t Hp, index_t Wp,
                     index_t rows, index_t Wo) {
  return {off_h, off_w, valid_span(off_h, sh, Hp, rows), valid_span(off_w, sw, Wp, Wo)};
}

// dst[r·Wo + ow] = plane[(r + off_h)·Wo + ow + off_w] (a plane Wo wide), 0 outside it.
template <class T>
KILN_FORCEINLINE void copy_window(const T* plane, index_t Wo, index_t rows, const Window& win,
                                  T* dst) {
  const Span sr = win.rows, sc = win.cols;
  zero(dst, sr.lo * Wo);
  if (sr.hi > sr.lo && sc.hi > sc.lo) {
    const index_t first = sr.lo * Wo + sc.lo, last = (sr.hi - 1) * Wo + sc.hi;
    const T* src = plane + (sr.lo + win.off_h) * Wo + sc.lo + win.off_w;
    zero(dst + sr.lo * Wo, sc.lo);
    copy_run(dst + first, src, last - first);
    for (index_t r = sr.lo; r + 1 < sr.hi; ++r) zero(dst + r * Wo + sc.hi, Wo - sc.hi + sc.lo);
    zero(dst + last, Wo - sc.hi);
  } else {
    zero(dst + sr.lo * Wo, (sr.hi - sr.lo) * Wo);
  }
  zero(dst + sr.hi * Wo, (rows - sr.hi) * Wo);
}

// The adjoint: plane[(r + off_h)·Wo + ow + off_w] += src[r·Wo + ow] inside the plane. The
// wrapped-around entries of src (outside the plane) are zeroed first, so that one straight
// loop adds the whole range.
template <class T>
KILN_FORCEINLINE void add_window(T* src, index_t Wo, const Window& win, T* plane) {
  const Span sr = win.rows, sc = win.cols;
  if (sr.hi <= sr.lo || sc.hi <= sc.lo) return;
  const index_t first = sr.lo * Wo + sc.lo, last = (sr.hi - 1) * Wo + sc.hi;
  for (index_t r = sr.lo; r + 1 < sr.hi; ++r) zero(src + r * Wo + sc.hi, Wo - sc.hi + sc.lo);
  T* dst = plane + (sr.lo + win.off_h) * Wo + sc.lo + win.off_w;
  const T* s = src + first;
  for (index_t j = 0; j < last - first; ++j) dst[j] += s[j];
}

// dst[r·Wo + ow] = plane[(r·sh + off_h)·W + ow·sw + off_w], 0 outside; SW: sw when known at
// compile time (0: runtime `sw`).
template <index_t SW, class T>
KILN_FORCEINLINE void gather_window(const T* plane, index_t W, index_t sh, index_t sw, index_t Wo,
                                    index_t rows, const Window& win, T* dst) {
  const index_t stride = SW ? SW : sw;
  const Span sr = win.rows, sc = win.cols;
  zero(dst, sr.lo * Wo);
  for (index_t r = sr.lo; r < sr.hi; ++r) {
    T* d = dst + r * Wo;
    const T* src = plane + (r * sh + win.off_h) * W;
    zero(d, sc.lo);
    for (index_t ow = sc.lo; ow < sc.hi; ++ow) d[ow] = src[ow * stride + win.off_w];
    zero(d + sc.hi, Wo - sc.hi);
  }
  zero(dst + sr.hi * Wo, (rows - sr.hi) * Wo);
}

template <index_t SW, class T>
KILN_FORCEINLINE void scatter_window(const T* src, index_t W, index_t sh, index_t sw, index_t Wo,
                                     const Window& win, T* plane) {
  const index_t stride = SW ? SW : sw;
  for (index_t r = win.rows.lo; r < win.rows.hi; ++r) {
    const T* s = src + r * Wo;
    T* d = plane + (r * sh + win.off_h) * W;
    for (index_t ow = win.cols.lo; ow < win.cols.hi; ++ow) d[ow * stride + win.off_w] += s[ow];
  }
}

// Stride phases of a plane: (sh·sw) planes of Hs x Ws, Hs = ceil(H/sh), Ws = ceil(W/sw).
struct PhaseShape {
  index_t Hs, Ws;
};
inline PhaseShape phase_shape(const Geometry& g) {
  return {(g.H + g.sh - 1) / g.sh, (g.W + g.sw - 1) / g.sw};
}

// even[j] = src[2j] and odd[j] = src[2j + 1] for the n values src[0, n) (the column phases of
// one row at stride 2), and the adjoint dst[2j] += even[j], dst[2j + 1] += odd[j].
template <class T>
KILN_FORCEINLINE void deinterleave_row(const T* src, index_t n, T* even, T* odd) {
  index_t j = 0;
#if defined(KILN_SIMD_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __m512i pick_even =
        _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i pick_odd =
        _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (; j < n; j += 32) {
      const index_t m = std::min<index_t>(32, n - j);
      const auto lo = static_cast<__mmask16>((1u << std::min<index_t>(m, 16)) - 1u);
      const auto hi = static_cast<__mmask16>((1u << std::max<index_t>(m - 16, 0)) - 1u);
      const __m512 a = _mm512_maskz_loadu_ps(lo, src + j);
      const __m512 b = _mm512_maskz_loadu_ps(hi, src + j + 16);
      _mm512_mask_storeu_ps(even + j / 2, static_cast<__mmask16>((1u << ((m + 1) / 2)) - 1u),
                            _mm512_permutex2var_ps(a, pick_even, b));
      _mm512_mask_storeu_ps(odd + j / 2, static_cast<__mmask16>((1u << (m / 2)) - 1u),
                            _mm512_permutex2var_ps(a, pick_odd, b));
    }
    return;
  }
#endif
  for (; j + 1 < n; j += 2) {
    even[j / 2] = src[j];
    odd[j / 2] = src[j + 1];
  }
  if (j < n) even[j / 2] = src[j];
}

template <class T>
KILN_FORCEINLINE void interleave_add_row(const T* even, const T* odd, index_t n, T* dst) {
  index_t j = 0;
#if defined(KILN_SIMD_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __m512i mix_lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i mix_hi =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    for (; j < n; j += 32) {
      const index_t m = std::min<index_t>(32, n - j);
      const __m512 e =
          _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << ((m + 1) / 2)) - 1u), even + j / 2);
      const __m512 o =
          _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (m / 2)) - 1u), odd + j / 2);
      const auto lo = static_cast<__mmask16>((1u << std::min<index_t>(m, 16)) - 1u);
      const auto hi = static_cast<__mmask16>((1u << std::max<index_t>(m - 16, 0)) - 1u);
      _mm512_mask_storeu_ps(
          dst + j, lo,
          _mm512_add_ps(_mm512_maskz_loadu_ps(lo, dst + j), _mm512_permutex2var_ps(e, mix_lo, o)));
      _mm512_mask_storeu_ps(dst + j + 16, hi,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(hi, dst + j + 16),
                                          _mm512_permutex2var_ps(e, mix_hi, o)));
    }
    return;
  }
#endif
  for (; j + 1 < n; j += 2) {
    dst[j] += even[j / 2];
    dst[j + 1] += odd[j / 2];
  }
  if (j < n) dst[j] += even[j / 2];
}

// phases[a·sw + b][i][j] = plane[i·sh + a][j·sw + b], 0 past the edge.
template <class T>
void split_phases(const Geometry& g, const T* plane, T* phases) {
  const PhaseShape ps = phase_shape(g);
  const index_t phase_size = ps.Hs * ps.Ws;
  for (index_t ih = 0; ih < ps.Hs * g.sh; ++ih) {
    const index_t a = ih % g.sh, i = ih / g.sh;
    T* out = phases + a * g.sw * phase_size + i * ps.Ws;  // phase (a, 0), row i
    if (ih >= g.H) {
      for (index_t b = 0; b < g.sw; ++b) zero(out + b * phase_size, ps.Ws);
      continue;
    }
    const T* src = plane + ih * g.W;
    if (g.sw == 2) {
      deinterleave_row(src, g.W, out, out + phase_size);
      if (g.W % 2 != 0) out[phase_size + ps.Ws - 1] = T(0);
      continue;
    }
    for (index_t b = 0; b < g.sw; ++b) {
      T* o = out + b * phase_size;
      const index_t cols = (g.W - b + g.sw - 1) / g.sw;  // j with j·sw + b < W
      for (index_t j = 0; j < cols; ++j) o[j] = src[j * g.sw + b];
      zero(o + cols, ps.Ws - cols);
    }
  }
}

// plane[i·sh + a][j·sw + b] += phases[a·sw + b][i][j] inside the plane.
template <class T>
void merge_phases(const Geometry& g, const T* phases, T* plane) {
  const PhaseShape ps = phase_shape(g);
  const index_t phase_size = ps.Hs * ps.Ws;
  for (index_t ih = 0; ih < g.H; ++ih) {
    const index_t a = ih % g.sh, i = ih / g.sh;
    const T* in = phases + a * g.sw * phase_size + i * ps.Ws;
    T* dst = plane + ih * g.W;
    if (g.sw == 2) {
      interleave_add_row(in, in + phase_size, g.W, dst);
      continue;
    }
    for (index_t b = 0; b < g.sw; ++b) {
      const T* s = in + b * phase_size;
      const index_t cols = (g.W - b + g.sw - 1) / g.sw;
      for (index_t j = 0; j < cols; ++j) dst[j * g.sw + b] += s[j];
    }
  }
}

// The window of row (kh, kw) in phase coordinates: input row r·sh + off_h is row
// r + floor(off_h/sh) of phase floor_mod(off_h, sh), likewise for columns.
struct Tap {
  index_t phase;  // index of the phase plane (0 unless phased)
  Window win;
};
inline Tap phase_tap(const Geometry& g, index_t off_h, index_t off_w, index_t rows) {
  const index_t qh = floor_div(off_h, g.sh), qw = floor_div(off_w, g.sw);
  const index_t a = off_h - qh * g.sh, b = off_w - qw * g.sw;
  const PhaseShape ps = phase_shape(g);
  return {a * g.sw + b, window(qh, qw, 1, 1, ps.Hs, ps.Ws, rows, g.Wo)};
}

// The windows of every (kh, kw) for the chunk starting at output row oh0 (the same for every
// channel and image).
inline std::vector<Tap> chunk_taps(const Geometry& g, ColumnMode mode, index_t oh0, index_t rows) {
  std::vector<Tap> taps(static_cast<std::size_t>(g.KH * g.KW));
  for (index_t kh = 0; kh < g.KH; ++kh)
    for (index_t kw = 0; kw < g.KW; ++kw) {
      const index_t off_h = oh0 * g.sh - g.ph + kh * g.dh, off_w = kw * g.dw - g.pw;
      Tap& t = taps[static_cast<std::size_t>(kh * g.KW + kw)];
      if (mode == ColumnMode::phased)
        t = phase_tap(g, off_h, off_w, rows);
      else if (mode == ColumnMode::contiguous)
        t = {0, window(off_h, off_w, 1, 1, g.H, g.W, rows, g.Wo)};
      else
        t = {0, window(off_h, off_w, g.sh, g.sw, g.H, g.W, rows, g.Wo)};
    }
  return taps;
}

// Column-matrix rows of channels [c_begin, c_end) (all their KH·KW rows), for `images` images
// starting at x (image stride C_in·H·W).
template <class T>
void im2col(const Geometry& g, const T* x, index_t images, index_t oh0, index_t rows, T* col,
            index_t ldcol, index_t c_begin, index_t c_end) {
  const index_t plane_size = g.in_plane(), image_stride = g.C_in * plane_size;
  const index_t taps_per_channel = g.KH * g.KW;
  const ColumnMode mode = column_mode(g);
  const std::vector<Tap> taps = chunk_taps(g, mode, oh0, rows);
  const PhaseShape ps = phase_shape(g);
  const index_t phase_size = ps.Hs * ps.Ws;
  T* phases = mode == ColumnMode::phased ? scratch<T, 3>(g.sh * g.sw * phase_size) : nullptr;
  for (index_t c = c_begin; c < c_end; ++c)
    for (index_t i = 0; i < images; ++i) {
      const T* plane = x + i * image_stride + c * plane_size;
      if (phases) split_phases(g, plane, phases);
      T* dst = col + c * taps_per_channel * ldcol + i * rows * g.Wo;
      for (const Tap& t : taps) {
        if (mode == ColumnMode::contiguous) {
          copy_window(plane, g.Wo, rows, t.win, dst);
        } else if (mode == ColumnMode::phased) {
          copy_window(phases + t.phase * phase_size, g.Wo, rows, t.win, dst);
        } else if (g.sw == 1) {
          gather_window<1>(plane, g.W, g.sh, g.sw, g.Wo, rows, t.win, dst);
        } else if (g.sw == 2) {
          gather_window<2>(plane, g.W, g.sh, g.sw, g.Wo, rows, t.win, dst);
        } else {
          gather_window<0>(plane, g.W, g.sh, g.sw, g.Wo, rows, t.win, dst);
        }
        dst += ldcol;
      }
    }
}

// The adjoint of im2col for channels [c_begin, c_end): adds every column-matrix entry back onto
// the input pixel it was read from (entries read from the padding are dropped). Overwrites the
// entries of col that fall in the padding.
template <class T>
void col2im(const Geometry& g, T* col, index_t ldcol, index_t images, index_t oh0, index_t rows,
            T* x, index_t c_begin, index_t c_end) {
  const index_t plane_size = g.in_plane(), image_stride = g.C_in * plane_size;
  const index_t taps_per_channel = g.KH * g.KW;
  const ColumnMode mode = column_mode(g);
  const std::vector<Tap> taps = chunk_taps(g, mode, oh0, rows);
  const PhaseShape ps = phase_shape(g);
  const index_t phase_size = ps.Hs * ps.Ws, phases_size = g.sh * g.sw * phase_size;
  T* phases = mode == ColumnMode::phased ? scratch<T, 3>(phases_size) : nullptr;
  for (index_t c = c_begin; c < c_end; ++c)
    for (index_t i = 0; i < images; ++i) {
      T* plane = x + i * image_stride + c * plane_size;
      if (phases) zero(phases, phases_size);
      T* src = col + c * taps_per_channel * ldcol + i * rows * g.Wo;
      for (const Tap& t : taps) {
        if (mode == ColumnMode::contiguous) {
          add_window(src, g.Wo, t.win, plane);
        } else if (mode == ColumnMode::phased) {
          add_window(src, g.Wo, t.win, phases + t.phase * phase_size);
        } else if (g.sw == 1) {
          scatter_window<1>(src, g.W, g.sh, g.sw, g.Wo, t.win, plane);
        } else if (g.sw == 2) {
          scatter_window<2>(src, g.W, g.sh, g.sw, g.Wo, t.win, plane);
        } else {
          scatter_window<0>(src, g.W, g.sh, g.sw, g.Wo, t.win, plane);
        }
        src += ldcol;
      }
      if (phases) merge_phases(g, phases, plane);
    }
}

// Fills the column matrix of a chunk, in parallel over channels when not in a worker.
template <class T>
void fill_columns(const Geometry& g, const T* x, index_t images, index_t oh0, index_t rows, T* col,
                  index_t cols) {
  parallel_for(0, g.C_in, copy_grain(g.KH * g.KW * cols),
               [&](index_t b, index_t e) { im2col(g, x, images, oh0, rows, col, cols, b, e); });
}

// dst[c][i·plane + p] = src[i][c][p] for `images` images of `channels` planes: several images'
// planes side by side, the layout the GEMMs of a multi-image block use.
template <class T>
void gather_planes(const T* src, index_t images, index_t channels, index_t plane, T* dst) {
  parallel_for(0, channels, copy_grain(images * plane), [&](index_t b, index_t e) {
    for (index_t c = b; c < e; ++c)
      for (index_t i = 0; i < images; ++i)
        std::copy(src + (i * channels + c) * plane, src + (i * channels + c + 1) * plane,
                  dst + (c * images + i) * plane);
  });
}

// ------------------------------------------------------------------------------ kernels
// Budgets for the per-thread column matrix: about L2-sized for the forward and input-gradient
// GEMMs; larger for the weight gradient, whose GEMM depth is the column count.
inline constexpr index_t forward_budget_bytes = index_t{1} << 20;
inline constexpr index_t weight_budget_bytes = index_t{4} << 20;

// dst[c·ld_dst + q] (+)= src[q·ld_src + c] + (bias ? bias[c] : 0) for q < n, c in [c_begin, c_end):
// an output block computed pixel-major, written back channel-major, in tiles that stay in L1.
template <class T>
void transpose_out(const T* src, index_t ld_src, index_t n, const T* bias, T* dst, index_t ld_dst,
                   bool accumulate, index_t c_begin, index_t c_end) {
  constexpr index_t tile = 16;
  for (index_t c0 = c_begin; c0 < c_end; c0 += tile) {
    const index_t c1 = std::min(c0 + tile, c_end);
    for (index_t q0 = 0; q0 < n; q0 += tile) {
      const index_t q1 = std::min(q0 + tile, n);
      for (index_t c = c0; c < c1; ++c) {
        const T v = bias ? bias[c] : T(0);
        T* d = dst + c * ld_dst;
        const T* s = src + c;
        if (accumulate) {
          for (index_t q = q0; q < q1; ++q) d[q] += s[q * ld_src] + v;
        } else {
          for (index_t q = q0; q < q1; ++q) d[q] = s[q * ld_src] + v;
        }
      }
    }
  }
}

// y = conv(x, w) + bias (bias may be null); adds to y instead when `accumulate`.
// Per chunk and group, either y_g = W_g · col_g (channel-major: [C_out/groups, pixels], written
// straight into y when the chunk is one image) or y_gᵀ = col_gᵀ · W_gᵀ (pixel-major: the GEMM's
// rows are pixels, which tile with less waste when there are many output channels; W is
// transposed once per call and the result transposed back into y).
template <class T>
void forward(const Geometry& g, const T* x, const T* w, const T* bias, T* y, bool accumulate) {
  if (g.N == 0) return;
  const index_t in_image = g.C_in * g.in_plane(), out_plane = g.out_plane();
  const index_t out_image = g.C_out * out_plane;
  const index_t K = g.col_rows(), Kg = g.group_k(), Mg = g.group_out();
  const Plan plan = make_plan(g, sizeof(T), static_cast<index_t>(sizeof(T)) * (K + g.C_out),
                              forward_budget_bytes, 128, 4096, current_threads());
  const bool pixel_major = Mg >= 32 && Kg >= 64;  // else the transposes outweigh the gain
  T* w_t = nullptr;
  if (pixel_major) {
    w_t = scratch<T, 4>(g.groups * Kg * Mg);
    parallel_for(0, g.groups * Kg, copy_grain(Mg), [&](index_t b, index_t e) {
      for (index_t r = b; r < e; ++r) {
        const index_t gr = r / Kg, k = r % Kg;
        const T* src = w + gr * Mg * Kg + k;
        T* dst = w_t + r * Mg;
        for (index_t m = 0; m < Mg; ++m) dst[m] = src[m * Kg];
      }
    });
  }
  for_each_block(plan, g.N, [&](index_t n0, index_t n1) {
    const index_t images = n1 - n0;
    for (index_t oh0 = 0; oh0 < g.Ho; oh0 += plan.rows_per_chunk) {
      const index_t rows = std::min(plan.rows_per_chunk, g.Ho - oh0);
      const index_t chunk = rows * g.Wo;  // output pixels per image in this chunk
      const index_t cols = images * chunk;
      const T* col;
      index_t ldcol;
      if (g.pointwise() && images == 1) {
        col = x + n0 * in_image + oh0 * g.W;
        ldcol = g.in_plane();
      } else {
        T* buffer = scratch<T, 0>(K * cols);
        fill_columns(g, x + n0 * in_image, images, oh0, rows, buffer, cols);
        col = buffer;
        ldcol = cols;
      }
      if (pixel_major) {
        T* out = scratch<T, 1>(cols * g.C_out);  // [cols, C_out]
        for (index_t gr = 0; gr < g.groups; ++gr)
          gemm<T>(true, false, cols, Mg, Kg, T(1), col + gr * Kg * ldcol, ldcol, w_t + gr * Kg * Mg,
                  Mg, T(0), out + gr * Mg, g.C_out);
        parallel_for(0, g.C_out, copy_grain(cols), [&](index_t b, index_t e) {
          for (index_t i = 0; i < images; ++i)
            transpose_out(out + i * chunk * g.C_out, g.C_out, chunk, bias,
                          y + (n0 + i) * out_image + oh0 * g.Wo, out_plane, accumulate, b, e);
        });
        continue;
      }
      // One image: the GEMM writes y directly. Several: a [C_out, cols] buffer, copied out.
      T* out;
      index_t ldout;
      const bool direct = images == 1;
      if (direct) {
        out = y + n0 * out_image + oh0 * g.Wo;
        ldout = out_plane;
      } else {
        out = scratch<T, 1>(g.C_out * cols);
        ldout = cols;
      }
      const T beta = direct && accumulate ? T(1) : T(0);
      for (index_t gr = 0; gr < g.groups; ++gr)
        gemm<T>(false, false, Mg, cols, Kg, T(1), w + gr * Mg * Kg, Kg, col + gr * Kg * ldcol,
                ldcol, beta, out + gr * Mg * ldout, ldout);
      if (direct) {
        if (bias) {
          parallel_for(0, g.C_out, copy_grain(chunk), [&](index_t b, index_t e) {
            for (index_t co = b; co < e; ++co) {
              T* row = out + co * ldout;
              const T v = bias[co];
              for (index_t j = 0; j < chunk; ++j) row[j] += v;
            }
          });
        }
        continue;
      }
      parallel_for(0, g.C_out, copy_grain(cols), [&](index_t b, index_t e) {
        for (index_t co = b; co < e; ++co) {
          const T v = bias ? bias[co] : T(0);
          for (index_t i = 0; i < images; ++i) {
            const T* src = out + co * ldout + i * out_plane;
            T* dst = y + (n0 + i) * out_image + co * out_plane;
            if (accumulate) {
              for (index_t j = 0; j < out_plane; ++j) dst[j] += src[j] + v;
            } else {
              for (index_t j = 0; j < out_plane; ++j) dst[j] = src[j] + v;
            }
          }
        }
      });
    }
  });
}

// gx = conv's adjoint applied to gy (plus `fill` per channel, may be null); adds to gx instead
// when `accumulate`.
template <class T>
void backward_input(const Geometry& g, const T* gy, const T* w, const T* fill, T* gx,
                    bool accumulate) {
  if (g.N == 0) return;
  const index_t in_plane = g.in_plane(), in_image = g.C_in * in_plane;
  const index_t out_plane = g.out_plane(), out_image = g.C_out * out_plane;
  const index_t K = g.col_rows(), Kg = g.group_k(), Mg = g.group_out(), Cg = g.group_in();
  const Plan plan = make_plan(g, sizeof(T), static_cast<index_t>(sizeof(T)) * (K + g.C_out),
                              forward_budget_bytes, 128, 4096, current_threads());
  for_each_block(plan, g.N, [&](index_t n0, index_t n1) {
    const index_t images = n1 - n0;
    T* gx_block = gx + n0 * in_image;
    if (!accumulate) {
      parallel_for(0, images * g.C_in, copy_grain(in_plane), [&](index_t b, index_t e) {
        for (index_t p = b; p < e; ++p)
          std::fill(gx_block + p * in_plane, gx_block + (p + 1) * in_plane,
                    fill ? fill[p % g.C_in] : T(0));
      });
    }
    for (index_t oh0 = 0; oh0 < g.Ho; oh0 += plan.rows_per_chunk) {
      const index_t rows = std::min(plan.rows_per_chunk, g.Ho - oh0);
      const index_t cols = images * rows * g.Wo;
      const T* gy_cols;
      index_t ldg;
      if (images == 1) {
        gy_cols = gy + n0 * out_image + oh0 * g.Wo;
        ldg = out_plane;
      } else {
        T* buffer = scratch<T, 1>(g.C_out * cols);
        gather_planes(gy + n0 * out_image, images, g.C_out, out_plane, buffer);
        gy_cols = buffer;
        ldg = cols;
      }
      if (g.pointwise() && images == 1) {
        for (index_t gr = 0; gr < g.groups; ++gr)
          gemm<T>(true, false, Cg, cols, Mg, T(1), w + gr * Mg * Kg, Kg, gy_cols + gr * Mg * ldg,
                  ldg, T(1), gx_block + gr * Cg * in_plane + oh0 * g.W, in_plane);
        continue;
      }
      T* col = scratch<T, 0>(K * cols);
      for (index_t gr = 0; gr < g.groups; ++gr)
        gemm<T>(true, false, Kg, cols, Mg, T(1), w + gr * Mg * Kg, Kg, gy_cols + gr * Mg * ldg, ldg,
                T(0), col + gr * Kg * cols, cols);
      parallel_for(
          0, g.C_in, copy_grain(images * in_plane * g.KH * g.KW),
          [&](index_t b, index_t e) { col2im(g, col, cols, images, oh0, rows, gx_block, b, e); });
    }
  });
}

// gw (+)= sum over the batch of gy · columns(x)ᵀ.
// The GEMMs run as gwᵀ = col · gyᵀ, with the column matrix as their row-major A operand (the
// faster orientation of the two on the W4/W6 shapes), summed in scratch and transposed into gw
// at the end. Large weights: the blocks run in order, each GEMM using the pool. Small weights,
// whose GEMMs are too narrow to share out: the batch is cut into `slices` parts summed
// separately, in parallel, then added up in order. Either way the sums do not depend on the
// thread count.
template <class T>
void backward_weight(const Geometry& g, const T* x, const T* gy, T* gw, bool accumulate) {
  const index_t Kg = g.group_k(), Mg = g.group_out(), K = g.col_rows();
  if (g.N == 0) {
    if (!accumulate) std::fill(gw, gw + g.C_out * Kg, T(0));
    return;
  }
  const index_t in_image = g.C_in * g.in_plane();
  const index_t out_plane = g.out_plane(), out_image = g.C_out * out_plane;
  const index_t weight_size = g.groups * Kg * Mg;
  const index_t slices = weight_size <= (index_t{1} << 16) ? std::min<index_t>(4, g.N) : 1;
  Geometry slice_shape = g;
  slice_shape.N = (g.N + slices - 1) / slices;
  const Plan plan =
      make_plan(slice_shape, sizeof(T), static_cast<index_t>(sizeof(T)) * (K + g.C_out),
                weight_budget_bytes, 256, 8192, 1);
  T* partials = scratch<T, 2>(slices * weight_size);

  // Sums images [s·N/slices, (s+1)·N/slices) into partials[s].
  auto run_slice = [&](index_t s) {
    const index_t n_begin = s * g.N / slices, n_end = (s + 1) * g.N / slices;
    T* acc = partials + s * weight_size;
    bool first = true;
    for (index_t n0 = n_begin; n0 < n_end; n0 += plan.images_per_block) {
      const index_t images = std::min(plan.images_per_block, n_end - n0);
      for (index_t oh0 = 0; oh0 < g.Ho; oh0 += plan.rows_per_chunk) {
        const index_t rows = std::min(plan.rows_per_chunk, g.Ho - oh0);
        const index_t cols = images * rows * g.Wo;
        const T* col;
        index_t ldcol;
        if (g.pointwise() && images == 1) {
          col = x + n0 * in_image + oh0 * g.W;
          ldcol = g.in_plane();
        } else {
          T* buffer = scratch<T, 0>(K * cols);
          fill_columns(g, x + n0 * in_image, images, oh0, rows, buffer, cols);
          col = buffer;
          ldcol = cols;
        }
        const T* gy_cols;
        index_t ldg;
        if (images == 1) {
          gy_cols = gy + n0 * out_image + oh0 * g.Wo;
          ldg = out_plane;
        } else {
          T* buffer = scratch<T, 1>(g.C_out * cols);
          gather_planes(gy + n0 * out_image, images, g.C_out, out_plane, buffer);
          gy_cols = buffer;
          ldg = cols;
        }
        const T beta = first ? T(0) : T(1);
        for (index_t gr = 0; gr < g.groups; ++gr)
          gemm<T>(false, true, Kg, Mg, cols, T(1), col + gr * Kg * ldcol, ldcol,
                  gy_cols + gr * Mg * ldg, ldg, beta, acc + gr * Kg * Mg, Mg);
        first = false;
      }
    }
  };
  if (slices == 1)
    run_slice(0);
  else
    parallel_tasks(slices, run_slice);

  parallel_for(0, g.C_out, copy_grain(Kg * slices), [&](index_t b, index_t e) {
    for (index_t co = b; co < e; ++co) {
      const index_t gr = co / Mg, m = co % Mg;
      T* dst = gw + co * Kg;
      for (index_t k = 0; k < Kg; ++k) {
        const T* src = partials + (gr * Kg + k) * Mg + m;
        T sum = src[0];
        for (index_t s = 1; s < slices; ++s) sum += src[s * weight_size];
        dst[k] = accumulate ? dst[k] + sum : sum;
      }
    }
  });
}

// gb[c] (+)= sum over n and p of gy[n, c, p] for gy [N, C, plane]; float sums run in eight
// interleaved partial sums per plane and are added up in double.
template <class T>
void channel_sums(index_t N, index_t C, index_t plane, const T* gy, T* gb, bool accumulate) {
  parallel_for(0, C, copy_grain(N * plane), [&](index_t b, index_t e) {
    for (index_t c = b; c < e; ++c) {
      double total = 0;
      for (index_t n = 0; n < N; ++n) {
        const T* src = gy + (n * C + c) * plane;
        T part[8] = {};
        index_t j = 0;
        for (; j + 8 <= plane; j += 8)
          for (int l = 0; l < 8; ++l) part[l] += src[j + l];
        for (; j < plane; ++j) part[0] += src[j];
        for (int l = 0; l < 8; ++l) total += static_cast<double>(part[l]);
      }
      gb[c] = accumulate ? gb[c] + static_cast<T>(total) : static_cast<T>(total);
    }
  });
}

template <class T>
constexpr void check_scalar() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "kiln's CPU convolution kernels support float and double");
}

}  // namespace conv_detail

// ---------------------------------------------------------------------------------- Conv2d
// All buffers are contiguous NCHW (weights [C_out, C_in/groups, KH, KW]) and must not overlap.

// y [N, C_out, H_out, W_out] = conv2d(x [N, C_in, H, W], w) + bias [C_out] (bias may be null).
// im2col + GEMM: per group, y_n = W_g · columns(x_n), the column matrix having one row per
// (c, kh, kw) and one column per output pixel.
template <class T>
void conv2d_forward(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y) {
  conv_detail::check_scalar<T>();
  p.validate("conv2d_forward");
  conv_detail::forward(conv_detail::geometry(p), x, w, bias, y, false);
}

// gx [N, C_in, H, W] = dL/dx from gy = dL/dy; adds to gx instead when `accumulate`.
// Derivation: y = W·col(x) with col linear in x, so dL/dcol = Wᵀ·gy and dL/dx = colᵀ(Wᵀ·gy),
// where colᵀ (col2im) adds every column-matrix entry back onto the pixel it was read from;
// this is the transposed convolution of gy with the same weight.
template <class T>
void conv2d_backward_input(const Conv2dParams& p, const T* gy, const T* w, T* gx,
                           bool accumulate = false) {
  conv_detail::check_scalar<T>();
  p.validate("conv2d_backward_input");
  conv_detail::backward_input(conv_detail::geometry(p), gy, w, static_cast<const T*>(nullptr), gx,
                              accumulate);
}

// gw [C_out, C_in/groups, KH, KW] = dL/dw (or += when `accumulate`).
// Derivation: y_n = W·col(x_n) for every image n, so dL/dW = sum_n gy_n · col(x_n)ᵀ
// (dL/dW[co, k] = sum over n and output pixels of gy[n, co, pixel]·col(x_n)[k, pixel]).
template <class T>
void conv2d_backward_weight(const Conv2dParams& p, const T* x, const T* gy, T* gw,
                            bool accumulate = false) {
  conv_detail::check_scalar<T>();
  p.validate("conv2d_backward_weight");
  conv_detail::backward_weight(conv_detail::geometry(p), x, gy, gw, accumulate);
}

// gb [C_out] = dL/dbias (or += when `accumulate`).
// Derivation: bias[co] is added to every y[n, co, oh, ow], so dL/dbias[co] is the sum of
// gy[n, co, :, :] over the batch and the output pixels.
template <class T>
void conv2d_backward_bias(const Conv2dParams& p, const T* gy, T* gb, bool accumulate = false) {
  conv_detail::check_scalar<T>();
  p.validate("conv2d_backward_bias");
  conv_detail::channel_sums(p.N, p.C_out, p.H_out() * p.W_out(), gy, gb, accumulate);
}

// ---------------------------------------------------------------------- ConvTranspose2d
// Buffers contiguous NCHW; weights [C_in, C_out/groups, KH, KW], PyTorch's layout.

// y [N, C_out, H_out, W_out] = conv_transpose2d(x [N, C_in, H, W], w) + bias [C_out] (bias may be
// null): the adjoint of the Conv2d from [N, C_out, H_out, W_out] to [N, C_in, H, W] with weight
// w, i.e. that Conv2d's input gradient, started from the bias instead of zero.
template <class T>
void conv_transpose2d_forward(const ConvTranspose2dParams& p, const T* x, const T* w, const T* bias,
                              T* y) {
  conv_detail::check_scalar<T>();
  p.validate("conv_transpose2d_forward");
  conv_detail::backward_input(conv_detail::geometry(p), x, w, bias, y, false);
}

// gx [N, C_in, H, W] = dL/dx (or += when `accumulate`).
// Derivation: y = Aᵀ·x where A is the Conv2d above, so dL/dx = A·gy: that Conv2d's forward
// applied to gy, without bias.
template <class T>
void conv_transpose2d_backward_input(const ConvTranspose2dParams& p, const T* gy, const T* w, T* gx,
                                     bool accumulate = false) {
  conv_detail::check_scalar<T>();
  p.validate("conv_transpose2d_backward_input");
  conv_detail::forward(conv_detail::geometry(p), gy, w, static_cast<const T*>(nullptr), gx,
                       accumulate);
}

// gw [C_in, C_out/groups, KH, KW] = dL/dw (or += when `accumulate`).
// Derivation: y[n, co, ih, iw] += w[ci, co, kh, kw]·x[n, ci, oh, ow] for every pixel pair the
// Conv2d A links, so dL/dw[ci, co, kh, kw] = sum of gy[n, co, ih, iw]·x[n, ci, oh, ow]: the
// Conv2d weight gradient of A with gy as A's input and x as A's output gradient.
template <class T>
void conv_transpose2d_backward_weight(const ConvTranspose2dParams& p, const T* x, const T* gy,
                                      T* gw, bool accumulate = false) {
  conv_detail::check_scalar<T>();
  p.validate("conv_transpose2d_backward_weight");
  conv_detail::backward_weight(conv_detail::geometry(p), gy, x, gw, accumulate);
}

// gb [C_out] = dL/dbias (or += when `accumulate`): the sum of gy[n, co, :, :] over n and pixels,
// as for Conv2d.
template <class T>
void conv_transpose2d_backward_bias(const ConvTranspose2dParams& p, const T* gy, T* gb,
                                    bool accumulate = false) {
  conv_detail::check_scalar<T>();
  p.validate("conv_transpose2d_backward_bias");
  conv_detail::channel_sums(p.N, p.C_out, p.H_out() * p.W_out(), gy, gb, accumulate);
}

}  // namespace kiln::backend::cpu
