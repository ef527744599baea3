// Workload W1 of BENCH.md: SGEMM (and one DGEMM) C = A·B, row-major, kiln against OpenBLAS
// cblas_?gemm and Eigen 3.4 at 1 and 2 threads. Builds on Google Benchmark, cblas.h, Eigen.
//
// Build: g++ -O3 -march=native -std=c++20 -fopenmp -Iinclude -Ibackends/cpu/include
//          -isystem /usr/include/eigen3 bench/bench_gemm.cpp -o bench_gemm -lbenchmark -lpthread
//          -lopenblas
// Run:   ./bench_gemm --benchmark_min_time=0.3 --benchmark_repetitions=3
//          --benchmark_report_aggregates_only=true   (or --benchmark_filter='sgemm.*threads:1')
// Each shape runs kiln, OpenBLAS and Eigen back to back; compare within one run.
// Arguments of every benchmark: M, N, K, threads. Counter GFLOP/s = 2·M·N·K per second.
#include <benchmark/benchmark.h>

#include <cblas.h>

#include <Eigen/Core>

#include <kiln/backend/cpu/gemm.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

using kiln::index_t;

template <class T>
struct Problem {
  index_t M, N, K;
  std::vector<T> a, b, c;
  Problem(index_t m, index_t n, index_t k)
      : M(m), N(n), K(k), a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(k * n)),
        c(static_cast<std::size_t>(m * n)) {
    std::mt19937 gen(42);
    std::uniform_real_distribution<T> dist(T(-1), T(1));
    for (auto& x : a) x = dist(gen);
    for (auto& x : b) x = dist(gen);
  }
};

template <class T>
void set_counters(benchmark::State& state, const Problem<T>& p) {
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * static_cast<double>(p.M) * static_cast<double>(p.N) * static_cast<double>(p.K) * 1e-9,
      benchmark::Counter::kIsIterationInvariantRate);
}

// OpenBLAS's and OpenMP's worker threads keep spinning for a while after a call; on a 2-core
// machine they would steal a core from the next benchmark, so every benchmark first lets them
// settle.
void settle() { std::this_thread::sleep_for(std::chrono::milliseconds(150)); }

template <class T>
void BM_kiln(benchmark::State& state) {
  Problem<T> p(state.range(0), state.range(1), state.range(2));
  settle();
  kiln::backend::cpu::set_num_threads(static_cast<int>(state.range(3)));
  for (auto _ : state) {
    kiln::backend::cpu::gemm<T>(false, false, p.M, p.N, p.K, T(1), p.a.data(), p.K, p.b.data(),
                                p.N, T(0), p.c.data(), p.N);
    benchmark::DoNotOptimize(p.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, p);
  state.SetLabel(kiln::backend::cpu::gemm_kernel_name<T>());
}

template <class T>
void BM_openblas(benchmark::State& state) {
  Problem<T> p(state.range(0), state.range(1), state.range(2));
  settle();
  openblas_set_num_threads(static_cast<int>(state.range(3)));
  const int M = static_cast<int>(p.M), N = static_cast<int>(p.N), K = static_cast<int>(p.K);
  for (auto _ : state) {
    if constexpr (std::is_same_v<T, float>)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, p.a.data(), K,
                  p.b.data(), N, 0.0f, p.c.data(), N);
    else
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0, p.a.data(), K,
                  p.b.data(), N, 0.0, p.c.data(), N);
    benchmark::DoNotOptimize(p.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, p);
}

template <class T>
void BM_eigen(benchmark::State& state) {
  Problem<T> p(state.range(0), state.range(1), state.range(2));
  settle();
  Eigen::setNbThreads(static_cast<int>(state.range(3)));
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const Mat> a(p.a.data(), p.M, p.K), b(p.b.data(), p.K, p.N);
  Eigen::Map<Mat> c(p.c.data(), p.M, p.N);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(p.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, p);
}

// Registers one shape for every library, side by side, so that the three are measured close
// together in time (this matters on a shared machine).
template <class T>
void register_shape(const char* suffix, index_t M, index_t N, index_t K, int threads) {
  const std::string s = suffix;
  for (auto* b : {benchmark::RegisterBenchmark(("kiln_" + s).c_str(), BM_kiln<T>),
                  benchmark::RegisterBenchmark(("openblas_" + s).c_str(), BM_openblas<T>),
                  benchmark::RegisterBenchmark(("eigen_" + s).c_str(), BM_eigen<T>)}) {
    b->Args({M, N, K, threads});
    b->ArgNames({"M", "N", "K", "threads"});
    b->Unit(benchmark::kMillisecond);
    b->UseRealTime();
  }
}

const int registered = [] {
  for (int threads : {1, 2}) {
    for (index_t n : {128, 256, 512, 1024, 2048}) register_shape<float>("sgemm", n, n, n, threads);
    register_shape<float>("sgemm", 8192, 768, 768, threads);
    register_shape<float>("sgemm", 8192, 3072, 768, threads);
    register_shape<double>("dgemm", 1024, 1024, 1024, threads);
  }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
