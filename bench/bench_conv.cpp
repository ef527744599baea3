// The convolution layers of workloads W4 (DCGAN on 28x28) and W6 (UNet), float, batch 64:
// kiln's conv2d / conv_transpose2d forward, input gradient and weight gradient at 1 and 2
// threads. Builds on Google Benchmark and kiln/backend/cpu/conv.hpp.
//
// Build: cmake --build BUILD --target bench_conv
// Run:   BUILD/bench/bench_conv --benchmark_min_time=0.5 (or --benchmark_filter='threads:1')
// Counter GFLOP/s = 2·(multiply-adds of the convolution) per second, the same for all three
// passes: N·C_out·H_out·W_out·(C_in/groups)·KH·KW for a Conv2d (output pixels of a
// ConvTranspose2d's input side for a transposed one).
#include <benchmark/benchmark.h>

#include <kiln/backend/cpu/conv.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>

#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using kiln::index_t;
namespace cpu = kiln::backend::cpu;

// One layer: a Conv2d, or a ConvTranspose2d with the same fields read as its parameters.
struct Layer {
  const char* name;
  bool transposed;
  index_t N, C_in, H, W, C_out, K, stride, pad;

  cpu::Conv2dParams conv() const {
    cpu::Conv2dParams p;
    p.N = N, p.C_in = C_in, p.H = H, p.W = W, p.C_out = C_out, p.KH = p.KW = K;
    p.stride_h = p.stride_w = stride, p.pad_h = p.pad_w = pad;
    return p;
  }
  cpu::ConvTranspose2dParams conv_transpose() const {
    cpu::ConvTranspose2dParams p;
    p.N = N, p.C_in = C_in, p.H = H, p.W = W, p.C_out = C_out, p.KH = p.KW = K;
    p.stride_h = p.stride_w = stride, p.pad_h = p.pad_w = pad;
    return p;
  }
  index_t in_size() const { return N * C_in * H * W; }
  index_t out_size() const {
    if (transposed) {
      const auto p = conv_transpose();
      return N * C_out * p.H_out() * p.W_out();
    }
    const auto p = conv();
    return N * C_out * p.H_out() * p.W_out();
  }
  index_t weight_size() const { return C_in * C_out * K * K; }
  double flops() const {
    if (transposed) return 2.0 * double(N * C_in * H * W) * double(C_out * K * K);
    const auto p = conv();
    return 2.0 * double(N * C_out * p.H_out() * p.W_out()) * double(C_in * K * K);
  }
};

const Layer layers[] = {
    {"conv_1_64_k4s2_28x28", false, 64, 1, 28, 28, 64, 4, 2, 1},
    {"conv_64_128_k4s2_14x14", false, 64, 64, 14, 14, 128, 4, 2, 1},
    {"convT_128_64_k4s2_7x7", true, 64, 128, 7, 7, 64, 4, 2, 1},
    {"convT_64_1_k4s2_14x14", true, 64, 64, 14, 14, 1, 4, 2, 1},
    {"conv3x3_64_64_14x14", false, 64, 64, 14, 14, 64, 3, 1, 1},
};

enum Pass { forward = 0, backward_input = 1, backward_weight = 2 };
const char* const pass_names[] = {"forward", "backward_input", "backward_weight"};

std::vector<float> random_vector(index_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(gen);
  return v;
}

void BM_conv(benchmark::State& state, const Layer& layer, Pass pass) {
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let other threads settle
  cpu::set_num_threads(static_cast<int>(state.range(0)));
  auto x = random_vector(layer.in_size(), 1), w = random_vector(layer.weight_size(), 2);
  auto y = random_vector(layer.out_size(), 3), b = random_vector(layer.C_out, 4);
  auto gw = w;
  auto gx = x;
  for (auto _ : state) {
    if (!layer.transposed) {
      const auto p = layer.conv();
      if (pass == forward) cpu::conv2d_forward(p, x.data(), w.data(), b.data(), y.data());
      if (pass == backward_input) cpu::conv2d_backward_input(p, y.data(), w.data(), gx.data());
      if (pass == backward_weight) cpu::conv2d_backward_weight(p, x.data(), y.data(), gw.data());
    } else {
      const auto p = layer.conv_transpose();
      if (pass == forward) cpu::conv_transpose2d_forward(p, x.data(), w.data(), b.data(), y.data());
      if (pass == backward_input)
        cpu::conv_transpose2d_backward_input(p, y.data(), w.data(), gx.data());
      if (pass == backward_weight)
        cpu::conv_transpose2d_backward_weight(p, x.data(), y.data(), gw.data());
    }
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(layer.flops() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(cpu::gemm_kernel_name<float>());
}

const int registered = [] {
  for (const auto& layer : layers)
    for (int pass = 0; pass < 3; ++pass) {
      const std::string name = std::string(layer.name) + "/" + pass_names[pass];
      auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_conv, layer, Pass(pass));
      b->ArgName("threads")->Arg(1)->Arg(2);
      b->Unit(benchmark::kMillisecond);
      b->UseRealTime();
    }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
