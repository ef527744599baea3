// kiln/ops/matmul.hpp — matrix products with gradients: matmul with NumPy semantics (1-d
// operands, broadcast batch dims), computed by the backend's strided batched GEMM without copying
// transposed views. Builds on autograd/graph.hpp and Backend<Device>::gemm_batched.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/tensor.hpp>

#include <string>
#include <vector>

namespace kiln {

namespace detail {

// How a 2-d matrix view is handed to GEMM: transposed or not, with its leading dimension.
template <class T, class D>
bool gemm_operand(const Tensor<T, D>& m, bool& trans, index_t& ld) {
  const index_t rows = m.size(-2), cols = m.size(-1);
  const index_t rs = m.stride(-2), cs = m.stride(-1);
  if ((cs == 1 || cols == 1) && (rs >= cols || rows == 1)) {
    trans = false;
    ld = rows == 1 ? cols : rs;
    ld = ld < cols ? cols : ld;
    return rows == 1 || rs >= cols;
  }
  if ((rs == 1 || rows == 1) && (cs >= rows || cols == 1)) {
    trans = true;
    ld = cols == 1 ? rows : cs;
    ld = ld < rows ? rows : ld;
    return true;
  }
  return false;
}

// The product without recording (inputs must not be tracked, or be detached by the caller).
template <class T, class D>
Tensor<T, D> matmul_raw(const Tensor<T, D>& a_in, const Tensor<T, D>& b_in) {
  static_assert(is_floating_element<T>, "kiln::matmul works on float and double tensors");
  if (a_in.dim() == 0 || b_in.dim() == 0)
    throw_shape_error("matmul", "both operands need at least one dimension", a_in.shape(), b_in.shape());
  const bool a_vec = a_in.dim() == 1, b_vec = b_in.dim() == 1;
  Tensor<T, D> a = a_vec ? a_in.unsqueeze(0) : a_in;
  Tensor<T, D> b = b_vec ? b_in.unsqueeze(1) : b_in;
  const index_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  if (b.size(-2) != K)
    throw_shape_error("matmul", "inner dimensions differ (" + std::to_string(K) + " vs " +
                                    std::to_string(b.size(-2)) + ")",
                      a_in.shape(), b_in.shape());
  // Broadcast batch dims.
  Shape a_batch = Shape::from(a.shape().dims, a.dim() - 2), b_batch = Shape::from(b.shape().dims, b.dim() - 2);
  Shape batch;
  if (!broadcast_shapes(a_batch, b_batch, batch))
    throw_shape_error("matmul", "batch dimensions cannot be broadcast", a_in.shape(), b_in.shape());
  Shape a_full = batch, b_full = batch;
  a_full.push_back(M);
  a_full.push_back(K);
  b_full.push_back(K);
  b_full.push_back(N);
  a = a.expand(a_full);
  b = b.expand(b_full);
  const index_t nbatch = batch.numel();

  bool ta = false, tb = false;
  index_t lda = 0, ldb = 0;
  if (!detail::gemm_operand(a, ta, lda)) {
    a = a.contiguous();
    detail::gemm_operand(a, ta, lda);
  }
  if (!detail::gemm_operand(b, tb, ldb)) {
    b = b.contiguous();
    detail::gemm_operand(b, tb, ldb);
  }
  // The batch dims of each operand must be walkable with one stride (0 = broadcast).
  auto batch_stride = [&](const Tensor<T, D>& m, index_t& stride) {
    const int nb = batch.ndim;
    if (nbatch <= 1) {
      stride = 0;
      return true;
    }
    index_t expect = -1;
    stride = -1;
    for (int i = nb - 1; i >= 0; --i) {
      if (batch.dims[i] == 1) continue;
      const index_t s = m.strides().dims[i];
      if (stride < 0) {
        stride = s;
        expect = s * batch.dims[i];
      } else {
        if (s != expect && !(s == 0 && stride == 0)) return false;
        expect = s * batch.dims[i];
      }
    }
    if (stride < 0) stride = 0;
    return true;
  };
  index_t sa = 0, sb = 0;
  if (!batch_stride(a, sa)) {
    a = a.contiguous();
    detail::gemm_operand(a, ta, lda);
    batch_stride(a, sa);
  }
  if (!batch_stride(b, sb)) {
    b = b.contiguous();
    detail::gemm_operand(b, tb, ldb);
    batch_stride(b, sb);
  }
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  auto c = Tensor<T, D>::uninitialized(out_shape);
  Backend<D>::gemm_batched(ta, tb, M, N, K, T(1), a.data(), lda, sa, b.data(), ldb, sb, T(0), c.data(), N, M * N,
                           nbatch);
  if (a_vec) c = c.squeeze(-2);
  if (b_vec) c = c.squeeze(-1);
  return c;
}

}  // namespace detail

// Matrix product. 2-d × 2-d is a GEMM; a 1-d operand is treated as a row (left) or column
// (right) vector and that dim is dropped from the result; leading (batch) dims broadcast.
// Backward (C = A·B): dA = dC·Bᵀ, dB = Aᵀ·dC, each summed over the batch dims it was broadcast
// along; both are matmuls themselves, so the gradient can be differentiated again.
template <class T, class D>
Tensor<T, D> matmul(const Tensor<T, D>& a, const Tensor<T, D>& b) {
  if (!(detail::grad_mode_enabled() && (a.tracks_grad() || b.tracks_grad())))
    return detail::matmul_raw(a.detach(), b.detach());
  if (a.dim() == 1 || b.dim() == 1) {
    if (a.dim() == 0 || b.dim() == 0)
      throw_shape_error("matmul", "both operands need at least one dimension", a.shape(), b.shape());
    Tensor<T, D> c = matmul(a.dim() == 1 ? a.unsqueeze(0) : a, b.dim() == 1 ? b.unsqueeze(1) : b);
    if (a.dim() == 1) c = c.squeeze(-2);
    if (b.dim() == 1) c = c.squeeze(-1);
    return c;
  }
  Tensor<T, D> c = detail::matmul_raw(a.detach(), b.detach());
  detail::record("matmul", c, {a, b}, [a, b](const Tensor<T, D>& g, const auto& node) {
    std::vector<Tensor<T, D>> out(2);
    if (node.needs(0)) out[0] = sum_to(matmul(g, b.transpose(-1, -2)), a.shape());
    if (node.needs(1)) out[1] = sum_to(matmul(a.transpose(-1, -2), g), b.shape());
    return out;
  });
  return c;
}

}  // namespace kiln
