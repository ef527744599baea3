// Compiles kiln's Philox4x32-10 and bfloat16 into a CUDA kernel, and where a GPU is present
// checks that the device produces the same uniforms as the host for the same (seed, offset)
// and the Random123 known answer for counter 0, key 0. Without a GPU it exits 0 after compiling.
#include <kiln/core/bfloat16.hpp>
#include <kiln/core/philox.hpp>

#include <cstdio>
#include <cuda_runtime.h>
#include <vector>

namespace {

__global__ void uniform_kernel(float* out, kiln::Rng rng, std::uint64_t first, int n, std::uint32_t* kat) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i == 0) {
    const kiln::PhiloxBlock zero{{0, 0, 0, 0}};
    const kiln::PhiloxKey key{{0, 0}};
    const kiln::PhiloxBlock r = kiln::philox4x32_10(zero, key);
    for (int k = 0; k < 4; ++k) kat[k] = r[k];
  }
  if (i >= n) return;
  const auto u = kiln::uniform_float_block(rng.block(first + i / 4));
  const kiln::bfloat16 h(u[i % 4]);
  out[i] = static_cast<float>(h) * 0.0f + u[i % 4];
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: the kernel compiled; nothing to run\n");
    return 0;
  }
  const int n = 1000;
  kiln::Rng host(1234);
  const std::uint64_t first = host.reserve(kiln::Rng::blocks_for(n, 4));
  float* out = nullptr;
  std::uint32_t* kat = nullptr;
  cudaMalloc(&out, n * sizeof(float));
  cudaMalloc(&kat, 4 * sizeof(std::uint32_t));
  uniform_kernel<<<(n + 255) / 256, 256>>>(out, kiln::Rng(1234), first, n, kat);
  std::vector<float> got(n);
  std::uint32_t k[4];
  cudaMemcpy(got.data(), out, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaMemcpy(k, kat, sizeof(k), cudaMemcpyDeviceToHost);
  cudaFree(out);
  cudaFree(kat);
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    const auto u = kiln::uniform_float_block(host.block(first + i / 4));
    if (u[i % 4] != got[i]) ++bad;
  }
  const bool kat_ok = k[0] == 0x6627e8d5u && k[1] == 0xe169c58du && k[2] == 0xbc57ac4cu && k[3] == 0x9b00dbd8u;
  std::printf("%s: %d of %d uniforms differ from the host; known answer %s\n", (bad || !kat_ok) ? "FAILED" : "ok", bad,
              n, kat_ok ? "matches" : "differs");
  return (bad || !kat_ok) ? 1 : 0;
}
