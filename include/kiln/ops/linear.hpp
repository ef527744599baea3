// kiln/ops/linear.hpp — linear(x, weight, bias) = x·weightᵀ + bias as torch.nn.functional.linear, with
// its gradient: forward and plain backward are one GEMM each (bias preloaded, transposes as flags).
// Builds on ops/matmul.hpp and ops/reduce.hpp (the differentiable backward), Backend<Device>::gemm_batched.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/ops/matmul.hpp>
#include <kiln/ops/reduce.hpp>

#include <string>
#include <vector>

namespace kiln {

namespace detail {

// A rows×cols matrix handed to GEMM: `keep` holds its elements (a view of the caller's tensor when
// the strides allow one, else a contiguous copy), `trans` and `ld` say how GEMM reads them.
template <class T, class D>
struct GemmMatrix {
  Tensor<T, D> keep;
  bool trans = false;
  index_t ld = 0;
  const T* data() const { return keep.data(); }
};

// The elements of `t` in row-major order seen as a rows×cols matrix (rows, cols >= 1), without
// copying when a strided view of them is a GEMM operand (plain or transposed).
template <class T, class D>
GemmMatrix<T, D> gemm_matrix(const Tensor<T, D>& t, index_t rows, index_t cols) {
  const Shape to{rows, cols};
  GemmMatrix<T, D> m;
  Shape st;
  if (view_strides(t.shape(), t.strides(), to, st)) {
    m.keep = Tensor<T, D>::from_parts(t.storage(), to, st, t.offset());
    if (gemm_operand(m.keep, m.trans, m.ld)) return m;
  }
  m.keep = t.detach().clone().view(to);
  m.trans = false;
  m.ld = cols;
  return m;
}

// y[M, out] = x[M, in]·wᵀ + b: the bias is copied into every row of y, then one GEMM adds the
// product with beta = 1 (beta = 0 without a bias). Raw: records nothing.
template <class T, class D>
void linear_forward_raw(const Tensor<T, D>& x, const Tensor<T, D>& w, const Tensor<T, D>& b, Tensor<T, D>& y,
                        index_t M, index_t in, index_t out) {
  if (M == 0 || out == 0) return;
  const Shape rows{M, out};
  T beta = T(0);
  if (b.defined()) {
    Backend<D>::copy_strided(y.data(), contiguous_strides(rows), b.data(), Shape{0, b.stride(0)}, rows);
    beta = T(1);
  }
  if (in == 0) {
    if (!b.defined()) y.fill_(T(0));
    return;
  }
  const GemmMatrix<T, D> A = gemm_matrix(x, M, in);
  const GemmMatrix<T, D> B = gemm_matrix(w.t(), in, out);  // op(B) = wᵀ, usually w read transposed
  Backend<D>::gemm_batched(A.trans, B.trans, M, out, in, T(1), A.data(), A.ld, 0, B.data(), B.ld, 0, beta,
                           y.data(), out, M * out, 1);
}

// The gradients of linear from g[M, out] with raw GEMMs (plain backward, nothing recorded).
// gx = g·w (M×out · out×in), gw = gᵀ·x (out×M · M×in): g's transpose is a flag, never a copy.
// gb = Σ_rows g: the backend's column reduction when g is contiguous, else onesᵀ·g as a GEMM.
template <class T, class D>
std::vector<Tensor<T, D>> linear_backward_raw(const Tensor<T, D>& g_in, const Tensor<T, D>& x, const Tensor<T, D>& w,
                                              const Shape& x_shape, bool need_x, bool need_w, bool need_b,
                                              bool has_bias, index_t M, index_t in, index_t out) {
  std::vector<Tensor<T, D>> grads(has_bias ? 3 : 2);
  const Tensor<T, D> g = g_in.detach();
  const bool has_g = M > 0 && out > 0;
  GemmMatrix<T, D> G;
  if (has_g) G = gemm_matrix(g, M, out);
  if (need_x) {
    auto gx = Tensor<T, D>::uninitialized(x_shape);
    if (M > 0 && in > 0) {
      if (out == 0) {
        gx.fill_(T(0));
      } else {
        const GemmMatrix<T, D> W = gemm_matrix(w.detach(), out, in);
        Backend<D>::gemm_batched(G.trans, W.trans, M, in, out, T(1), G.data(), G.ld, 0, W.data(), W.ld, 0, T(0),
                                 gx.data(), in, M * in, 1);
      }
    }
    grads[0] = gx;
  }
  if (need_w) {
    auto gw = Tensor<T, D>::uninitialized(Shape{out, in});
    if (out > 0 && in > 0) {
      if (M == 0) {
        gw.fill_(T(0));
      } else {
        const GemmMatrix<T, D> X = gemm_matrix(x.detach(), M, in);
        // op(A) = gᵀ: g stored plainly is read transposed, and a transposed g is read plainly.
        Backend<D>::gemm_batched(!G.trans, X.trans, out, in, M, T(1), G.data(), G.ld, 0, X.data(), X.ld, 0, T(0),
                                 gw.data(), in, out * in, 1);
      }
    }
    grads[1] = gw;
  }
  if (need_b) {
    auto gb = Tensor<T, D>::uninitialized(Shape{out});
    if (out > 0) {
      if (M == 0) {
        gb.fill_(T(0));
      } else if (!G.trans && G.ld == out) {
        Backend<D>::reduce(Reduction::sum, G.data(), gb.data(), 1, M, out);
      } else {
        const Tensor<T, D> ones = Tensor<T, D>(Shape{M}).fill_(T(1));
        Backend<D>::gemm_batched(false, G.trans, 1, out, M, T(1), ones.data(), M, 0, G.data(), G.ld, 0, T(0),
                                 gb.data(), out, out, 1);
      }
    }
    grads[2] = gb;
  }
  return grads;
}

}  // namespace detail

// y = x·weightᵀ + bias (torch.nn.functional.linear). x is [..., in_features], weight is
// [out_features, in_features], bias is [out_features] or an undefined tensor (no bias); y is
// [..., out_features]. Any of them may be a strided view: views that GEMM can read are not copied.
//
// Backward. With the leading dims of x flattened into M rows, y = x Wᵀ + 1 bᵀ, so for an output
// gradient g = ∂L/∂y [M, out] (standard matrix calculus, e.g. Petersen & Pedersen, "The Matrix
// Cookbook", eqs. 69–70):
//   ∂L/∂x = g W          [M, in]
//   ∂L/∂W = gᵀ x         [out, in]
//   ∂L/∂b = Σ_rows g = gᵀ 1   [out]
// A plain backward computes each with one GEMM (or a column sum) on raw memory; under
// create_graph they are built from matmul, sum and views of the tracked tensors, so the gradient
// is differentiable again (gradient penalties). Gradients no input needs are not computed.
template <class T, class D>
Tensor<T, D> linear(const Tensor<T, D>& x, const Tensor<T, D>& weight, const Tensor<T, D>& bias = Tensor<T, D>()) {
  static_assert(is_floating_element<T>, "kiln::linear works on float and double tensors");
  if (!x.defined() || !weight.defined()) throw_value_error("linear", "the input and the weight must be defined tensors");
  if (weight.dim() != 2)
    throw_shape_error("linear", "the weight must be 2-d [out_features, in_features]", weight.shape());
  if (x.dim() < 1)
    throw_shape_error("linear", "the input needs at least one dimension (its last is in_features)", x.shape(),
                      weight.shape());
  const index_t out = weight.size(0), in = weight.size(1);
  if (x.size(-1) != in)
    throw_shape_error("linear",
                      "the input's last dimension (" + std::to_string(x.size(-1)) +
                          ") differs from the weight's in_features (" + std::to_string(in) + "); input and weight",
                      x.shape(), weight.shape());
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != out))
    throw_shape_error("linear", "the bias must be 1-d with out_features = " + std::to_string(out) +
                                    " elements; bias and weight",
                      bias.shape(), weight.shape());
  Shape y_shape = x.shape();
  y_shape.dims[y_shape.ndim - 1] = out;
  index_t M = 1;
  for (int i = 0; i + 1 < x.dim(); ++i) M *= x.shape().dims[i];

  auto y = Tensor<T, D>::uninitialized(y_shape);
  detail::linear_forward_raw(x.detach(), weight.detach(), bias.detach(), y, M, in, out);

  const bool has_bias = bias.defined();
  if (!detail::grad_mode_enabled() ||
      !(x.tracks_grad() || weight.tracks_grad() || (has_bias && bias.tracks_grad())))
    return y;
  std::vector<Tensor<T, D>> inputs{x, weight};
  if (has_bias) inputs.push_back(bias);
  // Save only what a needed gradient reads: x for ∂L/∂W, W for ∂L/∂x.
  const Tensor<T, D> x_saved = weight.tracks_grad() ? x : Tensor<T, D>();
  const Tensor<T, D> w_saved = x.tracks_grad() ? weight : Tensor<T, D>();
  const Shape x_shape = x.shape();
  detail::record_many("linear", y, inputs,
                      [x_saved, w_saved, x_shape, has_bias, M, in, out](const Tensor<T, D>& g, const auto& node) {
                        const bool need_x = node.needs(0), need_w = node.needs(1);
                        const bool need_b = has_bias && node.needs(2);
                        if (!detail::grad_mode_enabled())
                          return detail::linear_backward_raw(g, x_saved, w_saved, x_shape, need_x, need_w,
                                                             need_b, has_bias, M, in, out);
                        // create_graph: the same formulas from tracked ops.
                        std::vector<Tensor<T, D>> grads(has_bias ? 3 : 2);
                        const Tensor<T, D> g2 = g.reshape(Shape{M, out});
                        const bool degenerate = M == 0 || in == 0 || out == 0;
                        if (need_x)
                          grads[0] = degenerate ? Tensor<T, D>(x_shape) : matmul(g2, w_saved).reshape(x_shape);
                        if (need_w)
                          grads[1] = degenerate ? Tensor<T, D>(Shape{out, in})
                                                : matmul(g2.t(), x_saved.reshape(Shape{M, in}));
                        if (need_b) grads[2] = M == 0 || out == 0 ? Tensor<T, D>(Shape{out}) : sum(g2, 0);
                        return grads;
                      });
  return y;
}

}  // namespace kiln
