// Compiles kiln's expression nodes into a CUDA kernel: an expression built with the ordinary
// operators (a * 2 + exp(b) with broadcasting) is passed by value to a __global__ function and
// evaluated element by element there. Runs and checks the result where a GPU is present;
// without one it reports that and exits 0 (compiling is the test then).
#include <kiln/core/tensor.hpp>
#include <kiln/expr/ops.hpp>

#include <cmath>
#include <cstdio>
#include <cuda_runtime.h>
#include <memory>
#include <vector>

namespace {

template <class Node>
__global__ void eval_kernel(float* out, kiln::Shape shape, Node node) {
  const kiln::index_t i = static_cast<kiln::index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= shape.numel()) return;
  kiln::index_t coords[kiln::max_dims];
  kiln::index_t rest = i;
  for (int d = shape.ndim - 1; d >= 0; --d) {
    coords[d] = rest % shape.dims[d];
    rest /= shape.dims[d];
  }
  out[i] = node.at(coords, shape.ndim);
}

void release_device(void* p) { cudaFree(p); }

// A tensor header over device memory, so the expression builder records device pointers.
kiln::Tensor<float> device_tensor(const std::vector<float>& host, kiln::Shape shape) {
  void* p = nullptr;
  cudaMalloc(&p, host.size() * sizeof(float));
  cudaMemcpy(p, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
  auto buf = std::make_shared<kiln::Buffer>(p, host.size() * sizeof(float), &release_device);
  return kiln::Tensor<float>::from_parts(buf, shape, kiln::contiguous_strides(shape), 0);
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: the kernel compiled; nothing to run\n");
    return 0;
  }
  const int M = 3, N = 5;
  std::vector<float> a(M * N), b(N);
  for (int i = 0; i < M * N; ++i) a[i] = 0.1f * static_cast<float>(i);
  for (int j = 0; j < N; ++j) b[j] = -0.2f * static_cast<float>(j);
  auto da = device_tensor(a, {M, N});
  auto db = device_tensor(b, {N});
  auto e = kiln::sigmoid(da * 2.0f + kiln::exp(db)) - kiln::relu(db);
  auto node = e.node;
  node.bind(e.shape);
  float* out = nullptr;
  cudaMalloc(&out, sizeof(float) * M * N);
  eval_kernel<<<1, 64>>>(out, e.shape, node);
  std::vector<float> got(M * N);
  cudaMemcpy(got.data(), out, sizeof(float) * M * N, cudaMemcpyDeviceToHost);
  cudaFree(out);
  int bad = 0;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      const double x = 2.0 * a[i * N + j] + std::exp(static_cast<double>(b[j]));
      const double want = 1.0 / (1.0 + std::exp(-x)) - (b[j] > 0 ? b[j] : 0.0);
      if (std::abs(got[i * N + j] - want) > 1e-5) ++bad;
    }
  std::printf("%s: %d of %d elements differ\n", bad ? "FAILED" : "ok", bad, M * N);
  return bad ? 1 : 0;
}
