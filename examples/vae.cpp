// vae — trains a variational autoencoder on Fashion-MNIST with kiln::models::VAE: the W3 network
// (784-400-(20, 20), decoder 20-400-784 logits, Bernoulli likelihood, Adam 1e-3, batch 128) or a
// convolutional one (--conv). Reports the test negative ELBO after every epoch and the
// importance-weighted estimate of −log p(x) at the end; writes sample, reconstruction and latent
// interpolation grids (PNG), the loss curves, a CSV log, the configuration, checkpoints (resumable
// bit for bit; Ctrl-C saves one before exiting) and the final weights.
// With --holdout-class K it trains on the nine other classes and reports the AUROC of the
// negative ELBO as a score for spotting class K among the test images (anomaly detection).
#include "common.hpp"

#include <kiln/data/fashion_mnist.hpp>
#include <kiln/data/loader.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/progress.hpp>
#include <kiln/kiln.hpp>
#include <kiln/metrics/auroc.hpp>
#include <kiln/models/vae.hpp>
#include <kiln/nn/nn.hpp>
#include <kiln/optim/optim.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

namespace {

using kiln::index_t;
using kiln::Tensor;
using Net = kiln::nn::Sequential;
using VAE = kiln::models::VAE<Net, Net>;

struct Options {
  std::string data, out = "vae-out", resume;
  int epochs = 10;
  long steps = -1;
  long batch = 128;
  double lr = 1e-3;
  long latent = 20;
  double beta = 1.0;
  long kl_warmup = 0;
  bool conv = false;
  int iw_k = 100;
  long iw_images = 1000;
  int holdout_class = -1;
  long fid_samples = 10000;
  std::string features;
  int threads = 0;
  std::uint64_t seed = 0;
  bool deterministic = false;
};

std::shared_ptr<Net> mlp_encoder(index_t latent, kiln::Rng& rng) {
  auto n = std::make_shared<Net>();
  n->push_back(std::make_shared<kiln::nn::Flatten>());
  n->push_back(std::make_shared<kiln::nn::Linear>(784, 400, rng));
  n->push_back(std::make_shared<kiln::nn::ReLU>());
  n->push_back(std::make_shared<kiln::nn::Linear>(400, 2 * latent, rng));  // μ and log σ² heads in one
  return n;
}
std::shared_ptr<Net> mlp_decoder(index_t latent, kiln::Rng& rng) {
  auto n = std::make_shared<Net>();
  n->push_back(std::make_shared<kiln::nn::Linear>(latent, 400, rng));
  n->push_back(std::make_shared<kiln::nn::ReLU>());
  n->push_back(std::make_shared<kiln::nn::Linear>(400, 784, rng));
  n->push_back(std::make_shared<kiln::nn::Unflatten>(1, std::vector<index_t>{1, 28, 28}));
  return n;
}
std::shared_ptr<Net> conv_encoder(index_t latent, kiln::Rng& rng) {
  auto n = std::make_shared<Net>();
  n->push_back(std::make_shared<kiln::nn::Conv2d>(1, 32, 4, kiln::nn::Conv2dOptions{.stride = 2, .padding = 1}, rng));
  n->push_back(std::make_shared<kiln::nn::ReLU>());
  n->push_back(std::make_shared<kiln::nn::Conv2d>(32, 64, 4, kiln::nn::Conv2dOptions{.stride = 2, .padding = 1}, rng));
  n->push_back(std::make_shared<kiln::nn::ReLU>());
  n->push_back(std::make_shared<kiln::nn::Flatten>());
  n->push_back(std::make_shared<kiln::nn::Linear>(64 * 7 * 7, 2 * latent, rng));
  return n;
}
std::shared_ptr<Net> conv_decoder(index_t latent, kiln::Rng& rng) {
  auto n = std::make_shared<Net>();
  n->push_back(std::make_shared<kiln::nn::Linear>(latent, 64 * 7 * 7, rng));
  n->push_back(std::make_shared<kiln::nn::ReLU>());
  n->push_back(std::make_shared<kiln::nn::Unflatten>(1, std::vector<index_t>{64, 7, 7}));
  n->push_back(std::make_shared<kiln::nn::ConvTranspose2d>(64, 32, 4, kiln::nn::ConvTranspose2dOptions{.stride = 2, .padding = 1}, rng));
  n->push_back(std::make_shared<kiln::nn::ReLU>());
  n->push_back(std::make_shared<kiln::nn::ConvTranspose2d>(32, 1, 4, kiln::nn::ConvTranspose2dOptions{.stride = 2, .padding = 1}, rng));
  return n;
}

// The images of `set` whose label is not `holdout` (all of them when holdout < 0).
kiln::data::Dataset without_class(const kiln::data::Dataset& set, int holdout) {
  if (holdout < 0) return set;
  std::vector<index_t> keep;
  for (index_t i = 0; i < set.labels.numel(); ++i)
    if (set.labels.data()[i] != holdout) keep.push_back(i);
  kiln::data::Dataset out;
  out.images = Tensor<float>::uninitialized(kiln::Shape{static_cast<index_t>(keep.size()), 784});
  out.labels = Tensor<index_t>::uninitialized(kiln::Shape{static_cast<index_t>(keep.size())});
  for (std::size_t j = 0; j < keep.size(); ++j) {
    std::copy_n(set.images.data() + keep[j] * 784, 784, out.images.data() + static_cast<index_t>(j) * 784);
    out.labels.data()[j] = set.labels.data()[keep[j]];
  }
  return out;
}

Tensor<float> as_images(const Tensor<float>& flat) { return flat.reshape({flat.size(0), 1, 28, 28}); }

// Mean negative ELBO (nats per image) over a set, one sample of z per image.
double test_negative_elbo(VAE& vae, const Tensor<float>& images, kiln::Rng& rng, std::vector<double>* per_image = nullptr) {
  vae.eval();
  double total = 0;
  const index_t n = images.size(0);
  for (index_t b = 0; b < n; b += 1000) {
    const index_t e = std::min(n, b + 1000);
    const auto scores = vae.negative_elbo(as_images(images.slice(0, b, e)), rng).to_vector();
    for (float s : scores) {
      total += s;
      if (per_image) per_image->push_back(s);
    }
  }
  vae.train();
  return total / static_cast<double>(n);
}

void write_images(VAE& vae, const kiln::data::Dataset& test, kiln::Rng& rng, const std::string& out, const std::string& tag) {
  kiln::NoGrad guard;
  vae.eval();
  example::save_grid(out + "/samples" + tag + ".png", vae.sample(64, rng).reshape({64, 1, 28, 28}), 8);
  // Rows of eight: originals, then their reconstructions.
  const Tensor<float> x = as_images(test.images.slice(0, 0, 32));
  const Tensor<float> rec = vae.reconstruct(x);
  Tensor<float> pairs = Tensor<float>::uninitialized(kiln::Shape{64, 1, 28, 28});
  for (index_t r = 0; r < 4; ++r)
    for (index_t c = 0; c < 8; ++c) {
      std::copy_n(x.contiguous().data() + (r * 8 + c) * 784, 784, pairs.data() + (r * 16 + c) * 784);
      std::copy_n(rec.contiguous().data() + (r * 8 + c) * 784, 784, pairs.data() + (r * 16 + 8 + c) * 784);
    }
  example::save_grid(out + "/reconstructions" + tag + ".png", pairs, 8);
  // Eight pairs of test images, ten steps each along the line between their posterior means.
  const Tensor<float> a = as_images(test.images.slice(0, 100, 108)), b = as_images(test.images.slice(0, 200, 208));
  example::save_grid(out + "/interpolation" + tag + ".png", vae.interpolate(a, b, 10).reshape({80, 1, 28, 28}), 10);
  vae.train();
}

int run(const Options& o, const std::string& config) {
  if (o.deterministic) kiln::set_num_threads(1);
  if (o.threads > 0 && !o.deterministic) kiln::set_num_threads(o.threads);
  example::install_stop_handler();
  const std::string dir = kiln::data::find_fashion_mnist_dir(o.data);
  std::printf("kiln %s, %d threads, data %s\n", kiln::version(), kiln::num_threads(), dir.c_str());
  const auto full_train = kiln::data::load_fashion_mnist(dir, "train");
  const auto test = kiln::data::load_fashion_mnist(dir, "test");
  const auto train = without_class(full_train, o.holdout_class);
  const auto test_inliers = without_class(test, o.holdout_class);

  kiln::Rng init(o.seed);
  kiln::models::VAEOptions vo;
  vo.beta = o.beta;
  vo.kl_warmup_steps = o.kl_warmup;
  auto vae = std::make_shared<VAE>(o.conv ? conv_encoder(o.latent, init) : mlp_encoder(o.latent, init),
                                   o.conv ? conv_decoder(o.latent, init) : mlp_decoder(o.latent, init), o.latent, vo);
  kiln::optim::AdamOptions adam;
  adam.lr = o.lr;
  kiln::optim::Adam opt(vae->parameters(), adam);

  kiln::data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.seed = o.seed;
  kiln::data::DataLoader loader(train.images, train.labels, lo);
  const long per_epoch = loader.num_batches();
  long total = per_epoch * o.epochs;
  if (o.steps >= 0 && o.steps < total) total = o.steps;

  std::filesystem::create_directories(o.out);
  kiln::Rng noise(o.seed, 0, 1);  // the ε of the reparameterization trick
  long step = 0;
  if (!o.resume.empty()) {
    kiln::io::TrainingState st = kiln::io::load_checkpoint(o.resume, *vae, opt);
    step = st.step;
    noise = st.rng;
    std::printf("resumed from %s at step %ld\n", o.resume.c_str(), step);
  }
  std::ofstream(o.out + "/config.txt") << config << "data_dir " << dir << "\ntrain_images " << train.images.size(0)
                                       << "\nsteps_total " << total << "\n";
  const auto save = [&](long at) {
    kiln::io::TrainingState st;
    st.step = at;
    st.rng = noise;
    kiln::io::save_checkpoint(o.out + "/checkpoint.safetensors", *vae, opt, st);
  };

  kiln::io::CsvLog log(o.out + "/log.csv", {"step", "epoch", "train_loss", "train_recon", "train_kl", "test_nelbo", "seconds"},
                       !o.resume.empty());
  example::Curve train_curve{"train (mean of 50 steps)", {}, {}}, test_curve{"test", {}, {}};
  double window_sum = 0;
  long window_count = 0;
  kiln::io::ProgressBar bar("train", total);
  bar.set_start(step);
  const auto t0 = std::chrono::steady_clock::now();
  double test_nelbo = 0;
  bool stopped = false;
  while (step < total && !stopped) {
    const long epoch = step / per_epoch;
    loader.start_epoch(static_cast<std::uint64_t>(epoch), step % per_epoch);
    double sum_loss = 0, sum_rec = 0, sum_kl = 0;
    long count = 0;
    while (step < total && step / per_epoch == epoch) {
      if (example::stop_requested()) {
        stopped = true;
        break;
      }
      auto batch = loader.next();
      if (!batch) break;
      opt.zero_grad();
      auto r = vae->elbo(as_images(batch->inputs), noise, step);
      r.loss.backward();
      opt.step();
      ++step;
      sum_loss += r.loss.item();
      sum_rec += r.reconstruction.item();
      sum_kl += r.kl.item();
      ++count;
      window_sum += r.loss.item();
      if (++window_count == 50) {
        train_curve.x.push_back(double(step));
        train_curve.y.push_back(window_sum / 50);
        window_sum = 0;
        window_count = 0;
      }
      char text[96];
      std::snprintf(text, sizeof text, "epoch %ld loss %.2f (rec %.2f kl %.2f)", epoch + 1, r.loss.item(),
                    r.reconstruction.item(), r.kl.item());
      bar.update(step, text);
    }
    if (stopped) break;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    kiln::Rng eval_rng(o.seed, 0, 2);
    test_nelbo = test_negative_elbo(*vae, test_inliers.images, eval_rng);
    const double c = count ? static_cast<double>(count) : 1.0;
    std::printf("epoch %ld step %ld train_loss %.2f test_negative_elbo %.2f nats (%.1f s)\n", epoch + 1, step, sum_loss / c,
                test_nelbo, secs);
    log.row({double(step), double(epoch + 1), sum_loss / c, sum_rec / c, sum_kl / c, test_nelbo, secs});
    test_curve.x.push_back(double(step));
    test_curve.y.push_back(test_nelbo);
    save(step);
    kiln::Rng image_rng(o.seed, 0, 3);
    write_images(*vae, test, image_rng, o.out, "");
  }
  if (stopped) {
    save(step);
    std::printf("\nstopped at step %ld; checkpoint saved to %s/checkpoint.safetensors (continue with --resume)\n", step,
                o.out.c_str());
    return 130;
  }
  example::save_curves(o.out + "/loss.png", "VAE negative ELBO (nats per image)", {train_curve, test_curve});
  kiln::io::save_module(o.out + "/model.safetensors", *vae);

  std::ofstream summary(o.out + "/summary.txt");
  summary << "test_negative_elbo " << test_nelbo << "\n";
  if (o.iw_k > 0 && o.iw_images > 0) {
    kiln::Rng iw_rng(o.seed, 0, 4);
    vae->eval();
    const index_t n = std::min<index_t>(o.iw_images, test_inliers.images.size(0));
    double sum = 0;
    for (index_t b = 0; b < n; b += 100) {
      const index_t e = std::min(n, b + 100);
      for (float v : vae->importance_weighted_log_likelihood(as_images(test_inliers.images.slice(0, b, e)), o.iw_k, iw_rng).to_vector())
        sum += v;
    }
    const double nll = -sum / static_cast<double>(n);
    std::printf("importance-weighted -log p(x), k=%d over %ld test images: %.2f nats\n", o.iw_k, static_cast<long>(n), nll);
    summary << "iwae_k " << o.iw_k << "\niwae_images " << n << "\niwae_negative_log_likelihood " << nll << "\n";
  }
  if (o.fid_samples > 0) {
    // Decoder means (Bernoulli probabilities) for z ~ N(0, I), against the 10,000 test images.
    kiln::Rng sample_rng(o.seed, 0, 6);
    vae->eval();
    std::vector<Tensor<float>> parts;
    for (long done = 0; done < o.fid_samples; done += 1000) {
      const index_t n = std::min<long>(1000, o.fid_samples - done);
      parts.push_back(vae->sample(n, sample_rng).reshape({n, 784}));
    }
    const Tensor<float> samples = kiln::concat(parts, 0);
    example::save_idx_images(o.out + "/samples-images-idx3-ubyte", samples, 0.0, 1.0);
    example::report_quality(summary, example::sample_quality(samples, 0.0, 1.0, test.images, o.features));
  }
  if (o.holdout_class >= 0) {
    std::vector<double> scores;
    kiln::Rng score_rng(o.seed, 0, 5);
    test_negative_elbo(*vae, test.images, score_rng, &scores);
    std::vector<bool> anomalous;
    for (index_t i = 0; i < test.labels.numel(); ++i) anomalous.push_back(test.labels.data()[i] == o.holdout_class);
    const double auc = kiln::metrics::auroc(scores, anomalous);
    std::printf("anomaly detection of class %d by negative ELBO: AUROC %.4f\n", o.holdout_class, auc);
    summary << "holdout_class " << o.holdout_class << "\nanomaly_auroc " << auc << "\n";
  }
  std::printf("wrote %s/ (samples.png, reconstructions.png, interpolation.png, loss.png, log.csv, summary.txt)\n",
              o.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  example::Cli cli("vae", "trains a variational autoencoder on Fashion-MNIST with kiln");
  cli.add("--data", o.data, "Fashion-MNIST IDX folder (default: $KILN_FASHION_MNIST or Debian's dataset-fashion-mnist)", "DIR");
  cli.add("--out", o.out, "output folder", "DIR");
  cli.add("--epochs", o.epochs, "epochs to train");
  cli.add("--steps", o.steps, "stop after N steps in total (-1: the epochs decide)");
  cli.add("--batch", o.batch, "batch size");
  cli.add("--lr", o.lr, "Adam learning rate");
  cli.add("--latent", o.latent, "latent dimensions");
  cli.add("--beta", o.beta, "weight of the KL term (beta-VAE)");
  cli.add("--kl-warmup", o.kl_warmup, "steps over which the KL weight grows linearly to beta");
  cli.flag("--conv", o.conv, "a convolutional encoder/decoder instead of the W3 MLP");
  cli.add("--iw-k", o.iw_k, "importance samples of the final log-likelihood estimate (0: skip)");
  cli.add("--iw-images", o.iw_images, "test images of that estimate");
  cli.add("--fid-samples", o.fid_samples, "samples for the final FID and Inception Score (0: skip)");
  cli.add("--features", o.features, "weights of the feature network for FID/IS (default: the shipped file)", "FILE");
  cli.add("--holdout-class", o.holdout_class, "train without this class and report its anomaly AUROC (-1: off)");
  cli.add("--threads", o.threads, "CPU threads (0: KILN_NUM_THREADS or all cores)");
  cli.add("--seed", o.seed, "seed of the initialization, shuffling and noise");
  cli.flag("--deterministic", o.deterministic, "one thread, so runs repeat bit for bit on any core count");
  cli.add("--resume", o.resume, "continue from a checkpoint of an earlier run", "FILE");
  try {
    cli.parse(argc, argv);
    if (o.epochs < 1 || o.batch < 1 || o.latent < 1 || !(o.lr > 0))
      throw std::runtime_error("--epochs, --batch, --latent and --lr must be positive");
    if (o.holdout_class > 9) throw std::runtime_error("--holdout-class must be a class 0..9 or -1");
    return run(o, cli.config());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vae: %s\n", e.what());
    return 1;
  }
}
