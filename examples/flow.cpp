// flow — trains a normalizing flow on Fashion-MNIST with kiln::models::Flow: the W5 RealNVP (8 affine
// couplings on 784-dim vectors, masks alternating by flat-index parity, s/t networks
// 784-512-512-784 with ReLU and tanh on s, standard normal prior, Adam 1e-3, batch 128) or, with
// --glow, a small multi-scale Glow-style convolutional flow (squeeze, ActNorm + invertible 1×1
// convolution + affine coupling per step, split). The 8-bit pixels are dequantized, (v + u)/256,
// and logit-transformed (α = 0.05); the logit's log-determinant is part of the likelihood, so the
// reported bits/dim are those of the discrete [0, 256) pixels. Reports train/test bits/dim after
// every epoch; writes samples at temperatures 0.5, 0.7, 0.85 and 1 (PNG grids), the loss curves, a
// CSV log, the configuration, a summary, checkpoints (resumable; Ctrl-C saves one before exiting)
// and the final weights.
#include "common.hpp"

#include <kiln/data/fashion_mnist.hpp>
#include <kiln/data/loader.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/progress.hpp>
#include <kiln/kiln.hpp>
#include <kiln/models/flow.hpp>
#include <kiln/nn/nn.hpp>
#include <kiln/optim/optim.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <numbers>
#include <string>

namespace {

using kiln::index_t;
using kiln::Tensor;
using Net = kiln::nn::Sequential;
using Flow = kiln::models::Flow<>;
using Coupling = kiln::models::AffineCoupling<>;

struct Options {
  std::string data, out = "flow-out", resume;
  int epochs = 11;
  long steps = -1;
  long batch = 128;
  double lr = 1e-3;
  long couplings = 8;
  long hidden = 512;
  double alpha = 0.05;
  bool glow = false;
  long glow_steps = 4;
  long glow_hidden = 64;
  long test_images = 10000;
  double clip_norm = 0;
  long fid_samples = 10000;
  std::string features;
  int threads = 0;
  std::uint64_t seed = 0;
  bool deterministic = false;
};

// W5's s/t network: 784-512-512-784 with ReLU.
std::shared_ptr<Net> mlp(index_t dim, index_t hidden, kiln::Rng& rng) {
  return std::make_shared<Net>(std::make_shared<kiln::nn::Linear>(dim, hidden, rng), std::make_shared<kiln::nn::ReLU>(),
                               std::make_shared<kiln::nn::Linear>(hidden, hidden, rng), std::make_shared<kiln::nn::ReLU>(),
                               std::make_shared<kiln::nn::Linear>(hidden, dim, rng));
}

// Glow's coupling network: conv3×3 (C→h), ReLU, conv1×1 (h→h), ReLU, conv3×3 (h→2C) starting at
// zero, so each coupling starts as the identity.
std::shared_ptr<Net> conv_net(index_t channels, index_t hidden, kiln::Rng& rng) {
  const kiln::nn::Conv2dOptions same{.padding = 1};
  auto last = std::make_shared<kiln::nn::Conv2d>(hidden, 2 * channels, 3, same, rng);
  {
    kiln::NoGrad guard;
    last->weight().fill_(0.0f);
    last->bias().fill_(0.0f);
  }
  return std::make_shared<Net>(std::make_shared<kiln::nn::Conv2d>(channels, hidden, 3, same, rng), std::make_shared<kiln::nn::ReLU>(),
                               std::make_shared<kiln::nn::Conv2d>(hidden, hidden, 1, rng), std::make_shared<kiln::nn::ReLU>(), last);
}

std::shared_ptr<Flow> realnvp(const Options& o, kiln::Rng& rng) {
  auto flow = std::make_shared<Flow>(kiln::Shape{784}, std::make_shared<kiln::models::LogitTransform<>>(o.alpha));
  for (long k = 0; k < o.couplings; ++k) {
    auto s_net = mlp(784, o.hidden, rng);
    auto t_net = mlp(784, o.hidden, rng);
    flow->add(std::make_shared<Coupling>(kiln::models::parity_mask(784, static_cast<int>(k % 2)), s_net, t_net,
                                         kiln::models::AffineCouplingOptions{.tanh = true}));
  }
  return flow;
}

// 1×28×28 → squeeze → 4×14×14: K steps → split (2×14×14 out) → squeeze → 8×7×7: K steps.
std::shared_ptr<Flow> glow(const Options& o, kiln::Rng& rng) {
  auto flow = std::make_shared<Flow>(kiln::Shape{1, 28, 28}, std::make_shared<kiln::models::LogitTransform<>>(o.alpha));
  const auto level = [&](index_t c, index_t hw) {
    flow->add(std::make_shared<kiln::models::Squeeze<>>());
    for (long k = 0; k < o.glow_steps; ++k) {
      flow->add(std::make_shared<kiln::models::ActNorm<>>(c));
      flow->add(std::make_shared<kiln::models::InvertibleConv1x1<>>(c, rng));
      flow->add(std::make_shared<Coupling>(kiln::models::channel_mask(c, hw, hw, k % 2 == 0), conv_net(c, o.glow_hidden, rng),
                                           kiln::models::AffineCouplingOptions{.tanh = true}));
    }
  };
  level(4, 14);
  flow->split();
  level(8, 7);
  return flow;
}

// Pixel values 0..255 from the loader's pixel / 255.
Tensor<float> to_pixels(const Tensor<float>& images) {
  Tensor<float> out = Tensor<float>::uninitialized(images.shape());
  const Tensor<float> c = images.contiguous();
  for (index_t i = 0; i < c.numel(); ++i) out.data()[i] = std::round(c.data()[i] * 255.0f);
  return out;
}

// The model's input shape for a batch of flat examples.
Tensor<float> shaped(const Tensor<float>& flat, bool glow) {
  return glow ? flat.reshape({flat.size(0), 1, 28, 28}) : flat;
}

// Mean bits/dim over the (already dequantized) test set.
double test_bits_per_dim(Flow& flow, const Tensor<float>& x, bool glow) {
  kiln::NoGrad guard;
  flow.eval();
  double total = 0;
  const index_t n = x.size(0);
  for (index_t b = 0; b < n; b += 500) {
    const index_t e = std::min(n, b + 500);
    for (float v : flow.bits_per_dim(shaped(x.slice(0, b, e), glow)).to_vector()) total += v;
  }
  flow.train();
  return total / static_cast<double>(n);
}

void write_samples(Flow& flow, const Options& o) {
  const double temperatures[] = {0.5, 0.7, 0.85, 1.0};
  for (int i = 0; i < 4; ++i) {
    kiln::Rng rng(o.seed, 0, 10 + static_cast<std::uint64_t>(i));
    // The inverse runs through the logit transform's inverse: pixel intensities in [0, 1]
    // (clipped by the grid; a few samples reach slightly beyond).
    const Tensor<float> x = flow.sample(64, rng, temperatures[i]);
    char name[64];
    std::snprintf(name, sizeof name, "/samples_t%03d.png", static_cast<int>(std::lround(temperatures[i] * 100)));
    example::save_grid(o.out + name, x.reshape({64, 1, 28, 28}), 8);
  }
}

int run(const Options& o, const std::string& config) {
  if (o.deterministic) kiln::set_num_threads(1);
  if (o.threads > 0 && !o.deterministic) kiln::set_num_threads(o.threads);
  example::install_stop_handler();
  const std::string dir = kiln::data::find_fashion_mnist_dir(o.data);
  std::printf("kiln %s, %d threads, data %s, %s\n", kiln::version(), kiln::num_threads(), dir.c_str(),
              o.glow ? "Glow-style multi-scale flow" : "W5 RealNVP");
  const auto train = kiln::data::load_fashion_mnist(dir, "train");
  const auto test = kiln::data::load_fashion_mnist(dir, "test");
  const Tensor<float> train_pixels = to_pixels(train.images);
  // One fixed draw of the dequantization noise for the test images, reused after every epoch.
  const index_t n_test = std::min<index_t>(o.test_images, test.images.size(0));
  kiln::Rng test_noise(o.seed, 0, 7);
  const Tensor<float> test_x = kiln::models::dequantize(to_pixels(test.images.slice(0, 0, n_test)), test_noise);

  kiln::Rng init(o.seed);
  auto flow = o.glow ? glow(o, init) : realnvp(o, init);
  std::printf("%ld parameters, %zu layers, %zu levels\n", static_cast<long>(flow->num_parameters()), flow->num_layers(),
              flow->num_levels());
  kiln::optim::AdamOptions adam;
  adam.lr = o.lr;
  const auto params = flow->parameters();
  kiln::optim::Adam opt(params, adam);

  kiln::data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.seed = o.seed;
  kiln::data::DataLoader loader(train_pixels, train.labels, lo);
  const long per_epoch = loader.num_batches();
  long total = per_epoch * o.epochs;
  if (o.steps >= 0 && o.steps < total) total = o.steps;

  std::filesystem::create_directories(o.out);
  kiln::Rng noise(o.seed, 0, 1);  // the training batches' dequantization noise
  long step = 0;
  double best = std::numeric_limits<double>::infinity();
  if (!o.resume.empty()) {
    kiln::io::TrainingState st = kiln::io::load_checkpoint(o.resume, *flow, opt);
    step = st.step;
    noise = st.rng;
    if (auto it = st.values.find("best_test_bpd"); it != st.values.end()) best = std::stod(it->second);
    std::printf("resumed from %s at step %ld\n", o.resume.c_str(), step);
  }
  std::ofstream(o.out + "/config.txt") << config << "data_dir " << dir << "\nparameters " << flow->num_parameters()
                                       << "\ntest_images " << n_test << "\nsteps_total " << total << "\n";
  const auto save = [&](long at) {
    kiln::io::TrainingState st;
    st.step = at;
    st.rng = noise;
    char text[40];
    std::snprintf(text, sizeof text, "%.17g", best);
    st.values["best_test_bpd"] = text;
    kiln::io::save_checkpoint(o.out + "/checkpoint.safetensors", *flow, opt, st);
  };

  // bits/dim = (NLL in [0,1) space + D·log 256) / (D·ln 2): the same map as Flow::bits_per_dim.
  const double d = 784.0;
  const auto to_bpd = [&](double nll) { return (nll + d * std::log(256.0)) / (d * std::numbers::ln2); };

  kiln::io::CsvLog log(o.out + "/log.csv", {"step", "epoch", "train_bpd", "test_bpd", "best_test_bpd", "seconds", "steps_per_second"},
                       !o.resume.empty());
  example::Curve train_curve{"train (mean of 50 steps)", {}, {}}, test_curve{"test", {}, {}};
  double window_sum = 0;
  long window_count = 0;
  kiln::io::ProgressBar bar("train", total);
  bar.set_start(step);
  double train_seconds = 0;
  long trained_steps = 0;
  double test_bpd = std::numeric_limits<double>::quiet_NaN(), last_train_bpd = test_bpd;
  bool stopped = false, diverged = false;
  while (step < total && !stopped && !diverged) {
    const long epoch = step / per_epoch;
    loader.start_epoch(static_cast<std::uint64_t>(epoch), step % per_epoch);
    double sum_bpd = 0;
    long count = 0;
    const auto t_epoch = std::chrono::steady_clock::now();
    while (step < total && step / per_epoch == epoch) {
      if (example::stop_requested()) {
        stopped = true;
        break;
      }
      auto batch = loader.next();
      if (!batch) break;
      const Tensor<float> x = shaped(kiln::models::dequantize(batch->inputs, noise), o.glow);
      opt.zero_grad();
      const Tensor<float> loss = kiln::mean(-flow->log_prob(x));  // mean NLL, nats per image
      loss.backward();
      if (o.clip_norm > 0) kiln::optim::clip_grad_norm_(params, o.clip_norm);
      opt.step();
      ++step;
      const double bpd = to_bpd(loss.item());
      if (!std::isfinite(bpd)) {
        diverged = true;
        std::printf("\nstep %ld: the loss is not finite, stopping\n", step);
        break;
      }
      sum_bpd += bpd;
      ++count;
      window_sum += bpd;
      if (++window_count == 50) {
        train_curve.x.push_back(double(step));
        train_curve.y.push_back(window_sum / 50);
        window_sum = 0;
        window_count = 0;
      }
      char text[64];
      std::snprintf(text, sizeof text, "epoch %ld bits/dim %.3f", epoch + 1, bpd);
      bar.update(step, text);
    }
    train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_epoch).count();
    trained_steps += count;
    if (stopped || diverged) break;
    test_bpd = test_bits_per_dim(*flow, test_x, o.glow);
    best = std::min(best, test_bpd);
    last_train_bpd = count ? sum_bpd / static_cast<double>(count) : last_train_bpd;
    const double rate = train_seconds > 0 ? static_cast<double>(trained_steps) / train_seconds : 0.0;
    std::printf("epoch %ld step %ld train_bpd %.4f test_bpd %.4f (best %.4f; %.2f steps/s, train %.0f s)\n", epoch + 1, step,
                last_train_bpd, test_bpd, best, rate, train_seconds);
    log.row({double(step), double(epoch + 1), last_train_bpd, test_bpd, best, train_seconds, rate});
    test_curve.x.push_back(double(step));
    test_curve.y.push_back(test_bpd);
    save(step);
  }
  if (stopped) {
    save(step);
    std::printf("\nstopped at step %ld; checkpoint saved to %s/checkpoint.safetensors (continue with --resume)\n", step,
                o.out.c_str());
    return 130;
  }
  example::save_curves(o.out + "/loss.png", o.glow ? "Glow-style flow: bits/dim" : "RealNVP (W5): bits/dim", {train_curve, test_curve});
  write_samples(*flow, o);
  kiln::io::save_module(o.out + "/model.safetensors", *flow);
  const double rate = train_seconds > 0 ? static_cast<double>(trained_steps) / train_seconds : 0.0;
  std::ofstream summary(o.out + "/summary.txt");
  summary << "model " << (o.glow ? "glow" : "realnvp_w5") << "\nsteps " << step << "\ntrain_bpd " << last_train_bpd
          << "\ntest_bpd " << test_bpd << "\nbest_test_bpd " << best << "\ntest_images " << n_test << "\nthreads "
          << kiln::num_threads() << "\nsteps_per_second " << rate << "\ndiverged " << (diverged ? 1 : 0) << "\n";
  if (o.fid_samples > 0 && !diverged) {
    // Samples at temperature 1 (pixel intensities in [0, 1]) against the 10,000 test images.
    const auto test = kiln::data::load_fashion_mnist(kiln::data::find_fashion_mnist_dir(o.data), "test");
    flow->eval();
    kiln::Rng rng(o.seed, 0, 20);
    std::vector<Tensor<float>> parts;
    for (long done = 0; done < o.fid_samples; done += 500) {
      const index_t n = std::min<long>(500, o.fid_samples - done);
      parts.push_back(flow->sample(n, rng, 1.0).reshape({n, 784}));
    }
    flow->train();
    const Tensor<float> samples = kiln::concat(parts, 0);
    example::save_idx_images(o.out + "/samples_t100-images-idx3-ubyte", samples, 0.0, 1.0);
    example::report_quality(summary, example::sample_quality(samples, 0.0, 1.0, test.images, o.features));
  }
  std::printf("%.2f steps/s at %d threads; best test bits/dim %.4f\n", rate, kiln::num_threads(), best);
  std::printf("wrote %s/ (samples_t050/070/085/100.png, loss.png, log.csv, config.txt, summary.txt, model.safetensors)\n",
              o.out.c_str());
  return diverged ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  example::Cli cli("flow", "trains a normalizing flow (RealNVP, or a Glow-style multi-scale flow) on Fashion-MNIST with kiln");
  cli.add("--data", o.data, "Fashion-MNIST IDX folder (default: $KILN_FASHION_MNIST or Debian's dataset-fashion-mnist)", "DIR");
  cli.add("--out", o.out, "output folder", "DIR");
  cli.add("--epochs", o.epochs, "epochs to train");
  cli.add("--steps", o.steps, "stop after N steps in total (-1: the epochs decide)");
  cli.add("--batch", o.batch, "batch size");
  cli.add("--lr", o.lr, "Adam learning rate");
  cli.add("--couplings", o.couplings, "RealNVP: affine coupling layers");
  cli.add("--hidden", o.hidden, "RealNVP: hidden width of each s/t network");
  cli.add("--fid-samples", o.fid_samples, "samples (temperature 1) for the final FID and Inception Score (0: skip)");
  cli.add("--features", o.features, "weights of the feature network for FID/IS (default: the shipped file)", "FILE");
  cli.add("--alpha", o.alpha, "alpha of the logit transform logit(alpha + (1 - 2 alpha) x)");
  cli.flag("--glow", o.glow, "a Glow-style multi-scale convolutional flow instead of W5's RealNVP");
  cli.add("--glow-steps", o.glow_steps, "Glow: steps (ActNorm, 1x1 conv, coupling) per level");
  cli.add("--glow-hidden", o.glow_hidden, "Glow: channels of the coupling networks");
  cli.add("--clip-norm", o.clip_norm, "clip the gradients' total 2-norm to X before each step (0: off, as W5)");
  cli.add("--test-images", o.test_images, "test images of the bits/dim evaluation (at most 10000)");
  cli.add("--threads", o.threads, "CPU threads (0: KILN_NUM_THREADS or all cores)");
  cli.add("--seed", o.seed, "seed of the initialization, shuffling and dequantization noise");
  cli.flag("--deterministic", o.deterministic, "one thread, so runs repeat bit for bit on any core count");
  cli.add("--resume", o.resume, "continue from a checkpoint of an earlier run", "FILE");
  try {
    cli.parse(argc, argv);
    if (o.epochs < 1 || o.batch < 1 || o.couplings < 1 || o.hidden < 1 || o.glow_steps < 1 || o.glow_hidden < 1 ||
        o.test_images < 1 || !(o.lr > 0))
      throw std::runtime_error("--epochs, --batch, --couplings, --hidden, --glow-steps, --glow-hidden, --test-images and --lr must be positive");
    if (!(o.clip_norm >= 0)) throw std::runtime_error("--clip-norm must not be negative");
    if (!(o.alpha >= 0 && o.alpha < 0.5)) throw std::runtime_error("--alpha must lie in [0, 0.5)");
    return run(o, cli.config());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flow: %s\n", e.what());
    return 1;
  }
}
