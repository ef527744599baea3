// Training-step benchmarks of BENCH.md's workloads W2–W6 on random data of the right shape, each
// one full step (zero_grad, forward, backward, optimizer step) at 1 and 2 threads, the same
// computation as the PyTorch reference of ../shared/reference/ (tools/bench-compare runs both in
// one run). W2: MLP classifier 784-512-512-10. W3: VAE 784-400-(20, 20) / 20-400-784 with
// models::VAE. W4: DCGAN, one discriminator and one generator step with models::GAN. W5: RealNVP,
// 8 affine couplings with models::Flow. W6: DDPM ε-prediction with models::Diffusion and the W6
// models::UNet. Inputs are uniform random images in the references' value ranges.
#include <benchmark/benchmark.h>

#include <kiln/kiln.hpp>
#include <kiln/nn/nn.hpp>
#include <kiln/ops/loss.hpp>
#include <kiln/optim/optim.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

namespace {

using kiln::index_t;
using kiln::Tensor;
namespace nn = kiln::nn;

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

// Batches of uniform random images in [low, high): `batches` batches of `batch` examples of shape
// `example`, cycled through by the step loops (as W2).
Tensor<float> random_images(index_t batch, index_t batches, std::vector<index_t> example, kiln::Rng& rng, float low = 0,
                            float high = 1) {
  kiln::Shape shape{batch * batches};
  for (index_t d : example) shape.push_back(d);
  return kiln::rand<float>(shape, rng, low, high);
}

// W3: VAE, encoder Linear(784, 400) ReLU Linear(400, 40) (μ and log σ² side by side: the same
// work as the reference's two Linear(400, 20) heads), decoder Linear(20, 400) ReLU Linear(400, 784)
// giving logits; Bernoulli-logit likelihood, one reparameterized sample per step, Adam 1e-3, batch
// 128, inputs in [0, 1]. models::VAE::elbo averages over the batch; the reference sums its BCE and
// KL over the batch, so the loss is scaled by B here to the same value (the scale of the loss
// changes neither the work of the step nor, up to Adam's ε, its update).
void BM_W3_vae_step(benchmark::State& state) {
  kiln::set_num_threads(static_cast<int>(state.range(0)));
  kiln::Rng rng(0);
  const index_t latent = 20;
  auto encoder = std::make_shared<nn::Sequential>(std::make_shared<nn::Linear>(784, 400, rng), std::make_shared<nn::ReLU>(),
                                                  std::make_shared<nn::Linear>(400, 2 * latent, rng));
  auto decoder = std::make_shared<nn::Sequential>(std::make_shared<nn::Linear>(latent, 400, rng), std::make_shared<nn::ReLU>(),
                                                  std::make_shared<nn::Linear>(400, 784, rng));
  kiln::models::VAE<nn::Sequential, nn::Sequential> vae(encoder, decoder, latent);
  kiln::optim::AdamOptions o;
  o.lr = 1e-3;
  kiln::optim::Adam opt(vae.parameters(), o);
  const index_t B = 128, batches = 16;
  const Tensor<float> X = random_images(B, batches, {784}, rng);
  kiln::Rng noise(0, 0, 1);
  index_t i = 0;
  const auto step = [&] {
    const index_t j = (i++ % batches) * B;
    opt.zero_grad();
    const auto elbo = vae.elbo(X.slice(0, j, j + B), noise);
    Tensor<float> loss(elbo.loss * static_cast<float>(B));  // the reference's sum over the batch
    loss.backward();
    opt.step();
    return loss;
  };
  step();  // warm-up: the optimizer's state and the first allocations
  Tensor<float> loss;
  for (auto _ : state) {
    loss = step().detach();  // keeps no graph alive across steps
    benchmark::DoNotOptimize(loss.data());
  }
  state.counters["threads"] = static_cast<double>(kiln::num_threads());
  state.counters["loss"] = static_cast<double>(loss.item());  // the last step's, for a sanity check
}
BENCHMARK(BM_W3_vae_step)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

// W4's generator (as examples/gan.cpp, unconditional): z100 → Linear(100, 128·7·7) + BN1d + ReLU →
// 128×7×7 → ConvT(128, 64, 4, 2, 1) + BN2d + ReLU → ConvT(64, 1, 4, 2, 1) + tanh.
class DcganGenerator : public nn::Module {
 public:
  DcganGenerator(index_t latent, kiln::Rng& rng) {
    fc_ = register_module("fc", std::make_shared<nn::Sequential>(std::make_shared<nn::Linear>(latent, 128 * 7 * 7, rng),
                                                                 std::make_shared<nn::BatchNorm1d>(128 * 7 * 7),
                                                                 std::make_shared<nn::ReLU>()));
    const nn::ConvTranspose2dOptions up{.stride = 2, .padding = 1};
    net_ = register_module("net", std::make_shared<nn::Sequential>(std::make_shared<nn::ConvTranspose2d>(128, 64, 4, up, rng),
                                                                   std::make_shared<nn::BatchNorm2d>(64), std::make_shared<nn::ReLU>(),
                                                                   std::make_shared<nn::ConvTranspose2d>(64, 1, 4, up, rng),
                                                                   std::make_shared<nn::Tanh>()));
  }
  Tensor<float> forward(const Tensor<float>& z) { return net_->forward(fc_->forward(z).reshape({z.size(0), 128, 7, 7})); }

 private:
  std::shared_ptr<nn::Sequential> fc_, net_;
};

// W4's discriminator: Conv(1, 64, 4, 2, 1) + LeakyReLU 0.2 → Conv(64, 128, 4, 2, 1) + BN2d +
// LeakyReLU 0.2 → flatten → Linear(6272, 1), a logit per example.
std::shared_ptr<nn::Sequential> dcgan_discriminator(kiln::Rng& rng) {
  const nn::Conv2dOptions down{.stride = 2, .padding = 1};
  return std::make_shared<nn::Sequential>(std::make_shared<nn::Conv2d>(1, 64, 4, down, rng), std::make_shared<nn::LeakyReLU>(0.2),
                                          std::make_shared<nn::Conv2d>(64, 128, 4, down, rng), std::make_shared<nn::BatchNorm2d>(128),
                                          std::make_shared<nn::LeakyReLU>(0.2), std::make_shared<nn::Flatten>(),
                                          std::make_shared<nn::Linear>(128 * 7 * 7, 1, rng));
}

// W4: DCGAN, batch 64, real images in [−1, 1], non-saturating loss (BCE-with-logits against 1 and
// 0), Adam(2e-4, β 0.5/0.999) for each network; one models::GAN::train_step = z ~ N(0, I), one
// generator forward, one discriminator step on the real and the detached fake batch, one
// generator step (the discriminator's third forward, on the fakes). Unlike the reference, whose
// generator step's backward also computes the discriminator's parameter gradients (cleared by the
// next D step), train_step freezes the discriminator then, so kiln skips that work.
void BM_W4_dcgan_step(benchmark::State& state) {
  kiln::set_num_threads(static_cast<int>(state.range(0)));
  kiln::Rng rng(0);
  const index_t latent = 100;
  kiln::models::GAN<DcganGenerator, nn::Sequential> gan(std::make_shared<DcganGenerator>(latent, rng), dcgan_discriminator(rng),
                                                        latent);
  kiln::optim::AdamOptions o;
  o.lr = 2e-4;
  o.beta1 = 0.5;
  o.beta2 = 0.999;
  kiln::optim::Adam g_opt(gan.generator().parameters(), o);
  kiln::optim::Adam d_opt(gan.discriminator().parameters(), o);
  const index_t B = 64, batches = 16;
  const Tensor<float> X = random_images(B, batches, {1, 28, 28}, rng, -1.0f, 1.0f);
  kiln::Rng noise(0, 0, 1);
  index_t i = 0;
  const auto step = [&] {
    const index_t j = (i++ % batches) * B;
    return gan.train_step(X.slice(0, j, j + B), Tensor<index_t>(), noise, g_opt, d_opt);
  };
  step();  // warm-up
  kiln::models::GANStepResult r;
  for (auto _ : state) {
    r = step();
    // The whole struct (kept in memory): g++ may put a lone double in a general register under
    // DoNotOptimize's "+m,r" constraint and corrupt it (google/benchmark issue 903).
    benchmark::DoNotOptimize(r);
  }
  state.counters["threads"] = static_cast<double>(kiln::num_threads());
  state.counters["d_loss"] = r.d_loss;  // the last step's, for a sanity check
  state.counters["g_loss"] = r.g_loss;
}
BENCHMARK(BM_W4_dcgan_step)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

// W5's s/t network (as examples/flow.cpp): 784-512-512-784 with ReLU.
std::shared_ptr<nn::Sequential> flow_mlp(kiln::Rng& rng) {
  return std::make_shared<nn::Sequential>(std::make_shared<nn::Linear>(784, 512, rng), std::make_shared<nn::ReLU>(),
                                          std::make_shared<nn::Linear>(512, 512, rng), std::make_shared<nn::ReLU>(),
                                          std::make_shared<nn::Linear>(512, 784, rng));
}

// W5: RealNVP on 784-dim vectors, 8 affine couplings (mask parity k mod 2, separate s and t
// networks, tanh on s), standard normal prior, no logit transform (as the timing reference);
// loss: the mean NLL over the batch of 128; Adam 1e-3. Pixels are random integers 0..255,
// dequantized inside the step, (v + u)/256 with fresh u ~ U[0, 1), as the reference.
void BM_W5_realnvp_step(benchmark::State& state) {
  kiln::set_num_threads(static_cast<int>(state.range(0)));
  kiln::Rng rng(0);
  kiln::models::Flow<> flow(kiln::Shape{784});
  for (int k = 0; k < 8; ++k) {
    auto s_net = flow_mlp(rng);
    auto t_net = flow_mlp(rng);
    flow.add(std::make_shared<kiln::models::AffineCoupling<>>(kiln::models::parity_mask(784, k % 2), s_net, t_net,
                                                               kiln::models::AffineCouplingOptions{.tanh = true}));
  }
  kiln::optim::AdamOptions o;
  o.lr = 1e-3;
  kiln::optim::Adam opt(flow.parameters(), o);
  const index_t B = 128, batches = 16;
  Tensor<float> pixels = random_images(B, batches, {784}, rng, 0.0f, 256.0f);
  for (index_t p = 0; p < pixels.numel(); ++p) pixels.data()[p] = std::min(255.0f, std::floor(pixels.data()[p]));
  kiln::Rng noise(0, 0, 1);
  index_t i = 0;
  const auto step = [&] {
    const index_t j = (i++ % batches) * B;
    const Tensor<float> x = kiln::models::dequantize(pixels.slice(0, j, j + B), noise);
    opt.zero_grad();
    Tensor<float> loss = kiln::mean(-flow.log_prob(x));
    loss.backward();
    opt.step();
    return loss;
  };
  step();  // warm-up
  Tensor<float> loss;
  for (auto _ : state) {
    loss = step().detach();  // keeps no graph alive across steps
    benchmark::DoNotOptimize(loss.data());
  }
  state.counters["threads"] = static_cast<double>(kiln::num_threads());
  state.counters["loss"] = static_cast<double>(loss.item());  // the last step's, for a sanity check
}
BENCHMARK(BM_W5_realnvp_step)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

// W6: DDPM with the small UNet of models::UNet (306,593 parameters), linear β 1e-4 … 0.02, T =
// 1000, batch 64 of images in [−1, 1]; models::Diffusion::loss draws t ~ U{0 … 999} and ε ~ N(0, I)
// per example, noises x_0 and takes the MSE of the ε-prediction; Adam 2e-4.
void BM_W6_ddpm_step(benchmark::State& state) {
  kiln::set_num_threads(static_cast<int>(state.range(0)));
  kiln::Rng rng(0);
  kiln::models::Diffusion<kiln::models::UNet<>> model(std::make_shared<kiln::models::UNet<>>(rng),
                                                      kiln::models::NoiseSchedule::linear(1000, 1e-4, 0.02));
  kiln::optim::AdamOptions o;
  o.lr = 2e-4;
  kiln::optim::Adam opt(model.parameters(), o);
  const index_t B = 64, batches = 16;
  const Tensor<float> X = random_images(B, batches, {1, 28, 28}, rng, -1.0f, 1.0f);
  kiln::Rng noise(0, 0, 1);
  index_t i = 0;
  const auto step = [&] {
    const index_t j = (i++ % batches) * B;
    opt.zero_grad();
    Tensor<float> loss = model.loss(X.slice(0, j, j + B), noise);
    loss.backward();
    opt.step();
    return loss;
  };
  step();  // warm-up
  Tensor<float> loss;
  for (auto _ : state) {
    loss = step().detach();  // keeps no graph alive across steps
    benchmark::DoNotOptimize(loss.data());
  }
  state.counters["threads"] = static_cast<double>(kiln::num_threads());
  state.counters["loss"] = static_cast<double>(loss.item());  // the last step's, for a sanity check
}
BENCHMARK(BM_W6_ddpm_step)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
