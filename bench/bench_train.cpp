// Training-step benchmarks of BENCH.md's workloads on random data of the right shape. W2: the MLP
// classifier 784-512-512-10 (ReLU, cross-entropy, Adam 1e-3, batch 128), one full step (zero_grad,
// forward, backward, optimizer step), at 1 and 2 threads. PyTorch's side: tools/bench-compare runs
// ../shared/reference/W2_mlp.py in the same run.
#include <benchmark/benchmark.h>

#include <kiln/kiln.hpp>
#include <kiln/nn/nn.hpp>
#include <kiln/ops/loss.hpp>
#include <kiln/optim/optim.hpp>

#include <memory>

namespace {

using kiln::Tensor;

void BM_W2_mlp_step(benchmark::State& state) {
  kiln::set_num_threads(static_cast<int>(state.range(0)));
  kiln::Rng rng(0);
  kiln::nn::Sequential model;
  model.push_back(std::make_shared<kiln::nn::Linear>(784, 512, rng));
  model.push_back(std::make_shared<kiln::nn::ReLU>());
  model.push_back(std::make_shared<kiln::nn::Linear>(512, 512, rng));
  model.push_back(std::make_shared<kiln::nn::ReLU>());
  model.push_back(std::make_shared<kiln::nn::Linear>(512, 10, rng));
  kiln::optim::AdamOptions o;
  o.lr = 1e-3;
  kiln::optim::Adam opt(model.parameters(), o);
  const kiln::index_t B = 128, batches = 16;
  auto X = kiln::rand<float>({B * batches, 784}, rng);
  auto Y = Tensor<kiln::index_t>::uninitialized(kiln::Shape{B * batches});
  for (kiln::index_t i = 0; i < Y.numel(); ++i) Y.data()[i] = i % 10;
  kiln::index_t i = 0;
  for (auto _ : state) {
    const kiln::index_t j = (i++ % batches) * B;
    opt.zero_grad();
    Tensor<float> loss = kiln::cross_entropy(model.forward(X.slice(0, j, j + B)), Y.slice(0, j, j + B));
    loss.backward();
    opt.step();
    benchmark::DoNotOptimize(loss.data());
  }
  state.counters["threads"] = static_cast<double>(kiln::num_threads());
}
BENCHMARK(BM_W2_mlp_step)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
