// kiln/backend/cpu/backend.hpp — Backend<cpu>: the CPU implementation of kiln's backend
// interface (memory, strided copies, expression evaluation, reductions, GEMM, RNG fills).
// Builds on the other backend/cpu headers and core/device.hpp.
#pragma once

#include <kiln/backend/cpu/elementwise.hpp>
#include <kiln/backend/cpu/gemm.hpp>
#include <kiln/backend/cpu/random.hpp>
#include <kiln/backend/cpu/reduce.hpp>
#include <kiln/backend/cpu/strided.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/core/device.hpp>

#include <cstddef>
#include <new>

namespace kiln {

template <>
struct Backend<cpu> {
  static constexpr std::size_t alignment = 64;

  // --- memory ---------------------------------------------------------------------------
  static void* allocate(std::size_t bytes) {
    return ::operator new(bytes == 0 ? alignment : bytes, std::align_val_t(alignment));
  }
  static void deallocate(void* p) { ::operator delete(p, std::align_val_t(alignment)); }

  template <class T>
  static void copy_strided(T* dst, const Shape& dst_strides, const T* src, const Shape& src_strides,
                           const Shape& shape) {
    backend::cpu::strided_map(dst, dst_strides, src, src_strides, shape, [](const T& x) { return x; });
  }
  template <class U, class T>
  static void convert(U* dst, const Shape& dst_strides, const T* src, const Shape& src_strides, const Shape& shape) {
    backend::cpu::strided_map(dst, dst_strides, src, src_strides, shape,
                              [](const T& x) { return static_cast<U>(x); });
  }
  template <class T>
  static void fill_strided(T* dst, const Shape& strides, const Shape& shape, T v) {
    backend::cpu::strided_fill(dst, strides, shape, v);
  }

  // --- compute --------------------------------------------------------------------------
  template <class T, class Node>
  static void eval(T* dst, const Shape& dst_strides, const Shape& shape, const Node& node) {
    backend::cpu::eval_expression(dst, dst_strides, shape, node);
  }
  template <class T>
  static void reduce(Reduction kind, const T* in, T* out, index_t outer, index_t R, index_t inner,
                     double correction = 1) {
    backend::cpu::reduce(kind, in, out, outer, R, inner, correction);
  }
  template <class T>
  static void argreduce(const T* in, index_t* out, index_t outer, index_t R, index_t inner, bool is_max) {
    backend::cpu::argreduce(in, out, outer, R, inner, is_max);
  }
  template <class T>
  static void gemm_batched(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, T alpha, const T* A,
                           index_t lda, index_t stride_a, const T* B, index_t ldb, index_t stride_b, T beta, T* C,
                           index_t ldc, index_t stride_c, index_t batch) {
    backend::cpu::gemm_batched_strided(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
                                       ldc, stride_c, batch);
  }

  // --- random ---------------------------------------------------------------------------
  template <class T>
  static void fill_uniform(T* out, index_t n, T low, T high, Rng& rng) {
    backend::cpu::fill_uniform(out, n, low, high, rng);
  }
  template <class T>
  static void fill_normal(T* out, index_t n, T mean, T stddev, Rng& rng) {
    backend::cpu::fill_normal(out, n, mean, stddev, rng);
  }
  template <class T>
  static void fill_bernoulli(T* out, index_t n, double p, Rng& rng) {
    backend::cpu::fill_bernoulli(out, n, p, rng);
  }
  static void permutation(index_t* out, index_t n, Rng& rng) { backend::cpu::random_permutation(out, n, rng); }
};

// Number of threads kiln's CPU kernels use.
inline int num_threads() { return backend::cpu::num_threads(); }
// Sets the number of threads kiln's CPU kernels use (the default is KILN_NUM_THREADS or the
// number of hardware threads).
inline void set_num_threads(int n) { backend::cpu::set_num_threads(n); }

}  // namespace kiln
