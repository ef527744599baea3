// W1e of BENCH.md: the fused expression y = a*x + b*y + c over 2^26 floats, against a
// STREAM-style triad in plain C++ (std::thread), at 1 and 2 threads; reports GB/s
// (3 floats moved per element: read x, read y, write y). Also a transcendental chain.
#include <benchmark/benchmark.h>
#include <kiln/kiln.hpp>

#include <thread>
#include <vector>

namespace {

constexpr kiln::index_t n = kiln::index_t(1) << 26;

void set_bytes(benchmark::State& state, double bytes_per_element) {
  state.counters["GB/s"] = benchmark::Counter(bytes_per_element * static_cast<double>(n),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}

void BM_kiln_fused_axpby(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  kiln::set_num_threads(threads);
  kiln::Rng rng(1);
  auto x = kiln::rand<float>({n}, rng);
  auto y = kiln::rand<float>({n}, rng);
  const float a = 0.5f, b = 0.25f, c = 1e-3f;
  for (auto _ : state) {
    y.assign(a * x + b * y + c);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, 12.0);
}

void BM_plain_triad(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  std::vector<float> x(static_cast<std::size_t>(n), 0.5f), y(static_cast<std::size_t>(n), 0.25f);
  const float a = 0.5f, b = 0.25f, c = 1e-3f;
  auto work = [&](std::size_t lo, std::size_t hi) {
    float* __restrict yp = y.data();
    const float* __restrict xp = x.data();
    for (std::size_t i = lo; i < hi; ++i) yp[i] = a * xp[i] + b * yp[i] + c;
  };
  // First touch from the threads that use the memory.
  for (auto _ : state) {
    std::vector<std::thread> pool;
    const std::size_t total = static_cast<std::size_t>(n);
    for (int t = 1; t < threads; ++t)
      pool.emplace_back(work, total * static_cast<std::size_t>(t) / static_cast<std::size_t>(threads),
                        total * static_cast<std::size_t>(t + 1) / static_cast<std::size_t>(threads));
    work(0, total / static_cast<std::size_t>(threads));
    for (auto& th : pool) th.join();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, 12.0);
}

// A chain of transcendental ops (GELU of an affine map plus sigmoid gate), one pass.
void BM_kiln_fused_gelu_gate(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  kiln::set_num_threads(threads);
  kiln::Rng rng(2);
  const kiln::index_t m = kiln::index_t(1) << 24;
  auto x = kiln::randn<float>({m}, rng);
  auto g = kiln::randn<float>({m}, rng);
  auto y = kiln::zeros<float>({m});
  for (auto _ : state) {
    y.assign(kiln::gelu(x * 1.5f + 0.1f) * kiln::sigmoid(g));
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["Gelem/s"] = benchmark::Counter(static_cast<double>(m), benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}

}  // namespace

BENCHMARK(BM_kiln_fused_axpby)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_plain_triad)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_kiln_fused_gelu_gate)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
