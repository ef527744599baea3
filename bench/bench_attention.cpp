// The fused kernels of a transformer block at the shapes of workloads W7 (char GPT: B=16, H=4,
// T=128, D=64, C=256) and W8 (GPT-2 small: B=4, H=12, T=64, D=64, C=768): causal attention
// forward and backward, layer norm, softmax and cross-entropy, at 1 and 2 threads.
// Builds on Google Benchmark and kiln/backend/cpu/{attention,norm,softmax}.hpp.
//
// Run:   ./bench_attention --benchmark_min_time=0.3 --benchmark_repetitions=3
//          --benchmark_report_aggregates_only=true   (or --benchmark_filter='attention.*/1$')
// The last argument of every benchmark is the thread count. Attention's GFLOP/s counts the two
// forward products (4 B H T^2 D, halved for the causal mask) or the backward's five (10 B H T^2 D,
// halved); GB/s for the row kernels counts each input and output buffer once.
#include <benchmark/benchmark.h>

#include <kiln/backend/cpu/attention.hpp>
#include <kiln/backend/cpu/norm.hpp>
#include <kiln/backend/cpu/softmax.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>

#include <random>
#include <vector>

namespace {

using kiln::index_t;
namespace cpu = kiln::backend::cpu;

std::vector<float> random_floats(index_t n, unsigned seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(gen);
  return v;
}

// q, k, v, gout of one [B, H, T, D] problem and the forward's out and lse.
struct AttentionProblem {
  index_t B, H, T, D;
  std::vector<float> q, k, v, gout, out, lse, gq, gk, gv;
  AttentionProblem(index_t b, index_t h, index_t t, index_t d)
      : B(b),
        H(h),
        T(t),
        D(d),
        q(random_floats(b * h * t * d, 1)),
        k(random_floats(b * h * t * d, 2)),
        v(random_floats(b * h * t * d, 3)),
        gout(random_floats(b * h * t * d, 4)),
        out(q.size()),
        lse(static_cast<std::size_t>(b * h * t)),
        gq(q.size()),
        gk(q.size()),
        gv(q.size()) {}
  float scale() const { return cpu::attention_default_scale<float>(D); }
  void forward() {
    cpu::attention_forward(q.data(), k.data(), v.data(), B, H, T, T, D, scale(), true, out.data(),
                           lse.data());
  }
  void backward() {
    cpu::attention_backward(q.data(), k.data(), v.data(), out.data(), gout.data(), lse.data(), B, H,
                            T, T, D, scale(), true, gq.data(), gk.data(), gv.data());
  }
  double causal_products_flops() const {  // one T x T x D product over every head, halved
    return static_cast<double>(B * H) * static_cast<double>(T * T * D);
  }
};

void BM_attention_forward(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(4)));
  AttentionProblem p(state.range(0), state.range(1), state.range(2), state.range(3));
  for (auto _ : state) {
    p.forward();
    benchmark::DoNotOptimize(p.out.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * p.causal_products_flops() * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_attention_backward(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(4)));
  AttentionProblem p(state.range(0), state.range(1), state.range(2), state.range(3));
  p.forward();
  for (auto _ : state) {
    p.backward();
    benchmark::DoNotOptimize(p.gq.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(5.0 * p.causal_products_flops() * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void bytes_counter(benchmark::State& state, index_t elements, int buffers) {
  state.counters["GB/s"] =
      benchmark::Counter(static_cast<double>(elements) * sizeof(float) * buffers * 1e-9,
                         benchmark::Counter::kIsIterationInvariantRate);
}

// Arguments: rows, cols, threads.
void BM_layer_norm_forward(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(2)));
  const index_t rows = state.range(0), cols = state.range(1);
  const auto x = random_floats(rows * cols, 1), w = random_floats(cols, 2),
             b = random_floats(cols, 3);
  std::vector<float> y(x.size()), mean(static_cast<std::size_t>(rows)), rstd(mean.size());
  for (auto _ : state) {
    cpu::layer_norm_forward(x.data(), w.data(), b.data(), rows, cols, 1e-5f, y.data(), mean.data(),
                            rstd.data());
    benchmark::DoNotOptimize(y.data());
  }
  bytes_counter(state, rows * cols, 2);
}

void BM_layer_norm_backward(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(2)));
  const index_t rows = state.range(0), cols = state.range(1);
  const auto x = random_floats(rows * cols, 1), w = random_floats(cols, 2),
             b = random_floats(cols, 3);
  const auto gy = random_floats(rows * cols, 4);
  std::vector<float> y(x.size()), mean(static_cast<std::size_t>(rows)), rstd(mean.size()),
      gx(x.size()), gw(static_cast<std::size_t>(cols)), gb(gw.size());
  cpu::layer_norm_forward(x.data(), w.data(), b.data(), rows, cols, 1e-5f, y.data(), mean.data(),
                          rstd.data());
  for (auto _ : state) {
    cpu::layer_norm_backward(gy.data(), x.data(), w.data(), mean.data(), rstd.data(), rows, cols,
                             gx.data(), gw.data(), gb.data());
    benchmark::DoNotOptimize(gx.data());
  }
  bytes_counter(state, rows * cols, 3);
}

void BM_softmax_forward(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(2)));
  const index_t rows = state.range(0), cols = state.range(1);
  const auto x = random_floats(rows * cols, 1, -4.0f, 4.0f);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    cpu::softmax_forward(x.data(), rows, cols, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  bytes_counter(state, rows * cols, 2);
}

void BM_softmax_backward(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(2)));
  const index_t rows = state.range(0), cols = state.range(1);
  const auto x = random_floats(rows * cols, 1, -4.0f, 4.0f), gy = random_floats(rows * cols, 2);
  std::vector<float> y(x.size()), gx(x.size());
  cpu::softmax_forward(x.data(), rows, cols, y.data());
  for (auto _ : state) {
    cpu::softmax_backward(gy.data(), y.data(), rows, cols, gx.data());
    benchmark::DoNotOptimize(gx.data());
  }
  bytes_counter(state, rows * cols, 3);
}

// Forward and backward of a mean cross-entropy over logits [rows, classes].
void BM_cross_entropy(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(2)));
  const index_t rows = state.range(0), classes = state.range(1);
  const auto x = random_floats(rows * classes, 1, -4.0f, 4.0f);
  std::vector<index_t> targets(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) targets[r] = (r * 7919) % classes;
  std::vector<float> loss(static_cast<std::size_t>(rows)), lse(loss.size()), gx(x.size());
  for (auto _ : state) {
    cpu::cross_entropy_forward(x.data(), targets.data(), rows, classes, -100, 0.0f, loss.data(),
                               lse.data());
    cpu::cross_entropy_backward(x.data(), targets.data(), lse.data(), nullptr,
                                1.0f / static_cast<float>(rows), rows, classes, -100, 0.0f,
                                gx.data());
    benchmark::DoNotOptimize(gx.data());
  }
  bytes_counter(state, rows * classes, 3);
}

// W7: B=16, H=4, T=128, D=64; W8: B=4, H=12, T=64, D=64.
void attention_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "H", "T", "D", "threads"});
  for (int threads : {1, 2}) {
    b->Args({16, 4, 128, 64, threads});
    b->Args({4, 12, 64, 64, threads});
  }
}
// Layer norm over [B*T, C]: W7 [2048, 256], W8 [256, 768].
void layer_norm_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "threads"});
  for (int threads : {1, 2}) {
    b->Args({2048, 256, threads});
    b->Args({256, 768, threads});
  }
}
// Softmax over attention scores [B*H*T, T]: W7 [8192, 128], W8 [3072, 64].
void softmax_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "threads"});
  for (int threads : {1, 2}) {
    b->Args({8192, 128, threads});
    b->Args({3072, 64, threads});
  }
}
// Cross-entropy over the vocabulary [B*T, V]: W7 [2048, 65], W8 [256, 50257].
void cross_entropy_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "classes", "threads"});
  for (int threads : {1, 2}) {
    b->Args({2048, 65, threads});
    b->Args({256, 50257, threads});
  }
}

}  // namespace

BENCHMARK(BM_attention_forward)
    ->Apply(attention_args)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_attention_backward)
    ->Apply(attention_args)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_layer_norm_forward)
    ->Apply(layer_norm_args)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_layer_norm_backward)
    ->Apply(layer_norm_args)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_softmax_forward)->Apply(softmax_args)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_softmax_backward)->Apply(softmax_args)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_cross_entropy)
    ->Apply(cross_entropy_args)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

BENCHMARK_MAIN();
