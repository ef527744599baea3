// Benchmarks of BENCH.md's GPT workloads with models::GPT, at 1 and 2 threads, the same computation
// as the PyTorch references of ../shared/reference/ (W7_chargpt.py, W8_gpt2.py, gpt_model.py):
// W7: char GPT (vocab 65, 4 layers, 4 heads, width 256, block 128, pre-LN, GELU MLP 4×, learned
// positions, tied embeddings, no dropout), one AdamW(3e-4, weight decay 0.1) step on a batch of
// 16 × 128 random tokens; and KV-cache generation at batch 1 after a one-token prompt (127 new
// tokens = the reference's generate_kv, and 256 = BENCH.md's figure, where the context is cropped
// to the last 128 tokens once the block is full), tokens per second as a counter.
// W8: GPT-2 124M's shape (12 layers, 12 heads, width 768, vocab 50257, block 1024), one
// AdamW(1e-4, weight decay 0) step at B = 4, T = 64 (llm.c's settings).
#include <benchmark/benchmark.h>

#include <kiln/kiln.hpp>
#include <kiln/models/gpt.hpp>
#include <kiln/optim/optim.hpp>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

namespace {

using kiln::index_t;
using kiln::Tensor;
using GPT = kiln::models::GPT<float>;

kiln::models::GPTConfig w7_config() {
  kiln::models::GPTConfig c;
  c.n_layer = 4, c.n_head = 4, c.n_embd = 256, c.block_size = 128, c.vocab_size = 65;
  return c;
}

// `count` batches of random tokens [B, T + 1] in [0, vocab) from a fixed seed, cycled through by
// the step loops (the reference draws fresh ones each step: the same work).
std::vector<Tensor<index_t>> random_token_batches(index_t count, index_t B, index_t T, index_t vocab) {
  std::mt19937_64 gen(0);
  std::uniform_int_distribution<index_t> token(0, vocab - 1);
  std::vector<Tensor<index_t>> out;
  for (index_t i = 0; i < count; ++i) {
    std::vector<index_t> ids(static_cast<std::size_t>(B * (T + 1)));
    for (auto& id : ids) id = token(gen);
    out.push_back(kiln::from_vector<index_t>(ids, kiln::Shape{B, T + 1}));
  }
  return out;
}

// One training step as the references: zero_grad, loss of x = d[:, :-1] against y = d[:, 1:],
// backward, AdamW step.
struct TrainStep {
  GPT& model;
  kiln::optim::AdamW& opt;
  const std::vector<Tensor<index_t>>& batches;
  index_t i = 0;
  Tensor<float> operator()() {
    const Tensor<index_t>& d = batches[static_cast<std::size_t>(i++ % static_cast<index_t>(batches.size()))];
    const index_t T = d.size(1) - 1;
    opt.zero_grad();
    Tensor<float> loss = model.loss(d.slice(1, 0, T), d.slice(1, 1, T + 1));
    loss.backward();
    opt.step();
    return loss.detach();
  }
};

void BM_W7_chargpt_step(benchmark::State& state) {
  kiln::set_num_threads(static_cast<int>(state.range(0)));
  kiln::Rng rng(0);
  GPT model(w7_config(), rng);
  kiln::optim::AdamWOptions o;
  o.lr = 3e-4;
  o.weight_decay = 0.1;
  kiln::optim::AdamW opt(model.parameters(), o);
  const auto batches = random_token_batches(8, 16, 128, 65);
  TrainStep step{model, opt, batches};
  step();  // warm-up
  Tensor<float> loss;
  for (auto _ : state) {
    loss = step();
    benchmark::DoNotOptimize(loss.data());
  }
  state.counters["threads"] = static_cast<double>(kiln::num_threads());
  state.counters["loss"] = static_cast<double>(loss.item());  // near log 65 = 4.17 on random tokens
}
BENCHMARK(BM_W7_chargpt_step)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

// Args: threads, new tokens. Sampling at temperature 1 from the untrained model (as the
// reference), a fresh seed per run.
void BM_W7_generate(benchmark::State& state) {
  kiln::set_num_threads(static_cast<int>(state.range(0)));
  const index_t n = state.range(1);
  kiln::Rng rng(0);
  GPT model(w7_config(), rng);
  kiln::models::GenerateOptions g;
  g.max_new_tokens = n;
  g.temperature = 1.0;
  model.generate(std::vector<index_t>{0}, g);  // warm-up
  std::uint64_t seed = 1;
  for (auto _ : state) {
    g.seed = seed++;
    auto out = model.generate(std::vector<index_t>{0}, g);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["threads"] = static_cast<double>(kiln::num_threads());
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(n) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_W7_generate)
    ->Args({1, 127})
    ->Args({2, 127})
    ->Args({1, 256})
    ->Args({2, 256})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);

void BM_W8_gpt2_step(benchmark::State& state) {
  kiln::set_num_threads(static_cast<int>(state.range(0)));
  kiln::Rng rng(0);
  GPT model(kiln::models::GPTConfig::gpt2("124M"), rng);
  kiln::optim::AdamWOptions o;
  o.lr = 1e-4;
  o.weight_decay = 0.0;
  kiln::optim::AdamW opt(model.parameters(), o);
  const auto batches = random_token_batches(2, 4, 64, 50257);
  TrainStep step{model, opt, batches};
  step();  // warm-up (allocates the optimizer's state)
  Tensor<float> loss;
  for (auto _ : state) {
    loss = step();
    benchmark::DoNotOptimize(loss.data());
  }
  state.counters["threads"] = static_cast<double>(kiln::num_threads());
  state.counters["params"] = static_cast<double>(model.num_parameters());
  state.counters["loss"] = static_cast<double>(loss.item());  // near log 50257 = 10.8 on random tokens
}
BENCHMARK(BM_W8_gpt2_step)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
