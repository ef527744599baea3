// diffusion — trains the W6 DDPM (the small UNet of kiln::models::UNet, ε-prediction, linear β
// 1e-4…0.02, T = 1000, Adam 2e-4, batch 64) on Fashion-MNIST scaled to [−1, 1] with
// kiln::models::Diffusion. Options: the cosine schedule, v-prediction, class-conditional training
// with classifier-free guidance (--conditional, sampling a chosen --class with --guidance w).
// Writes DDPM (ancestral) and DDIM sample grids (PNG), the loss curve, a CSV log, the
// configuration, checkpoints (resumable bit for bit; Ctrl-C saves one) and the final weights.
#include "common.hpp"

#include <kiln/data/augment.hpp>
#include <kiln/data/fashion_mnist.hpp>
#include <kiln/data/loader.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/progress.hpp>
#include <kiln/kiln.hpp>
#include <kiln/models/diffusion.hpp>
#include <kiln/optim/optim.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

namespace {

using kiln::index_t;
using kiln::Tensor;
using UNet = kiln::models::UNet<float>;
using Model = kiln::models::Diffusion<UNet>;

struct Options {
  std::string data, out = "diffusion-out", resume, schedule = "linear", prediction = "eps";
  int epochs = 3;
  long steps = -1;
  long batch = 64;
  double lr = 2e-4;
  bool conditional = false;
  int sample_class = -1;
  double guidance = 3.0;
  long ddim_steps = 50;
  long ddpm_every = 1;  // epochs between ancestral (1000-step) sample grids
  long fid_samples = 1000;
  std::string features;
  int threads = 0;
  std::uint64_t seed = 0;
  bool deterministic = false;
  bool flip = false;
};

// Labels for a grid of 64 samples: one row of eight per class 0…7 (or all `cls`).
Tensor<index_t> grid_labels(int cls) {
  auto l = Tensor<index_t>::uninitialized(kiln::Shape{64});
  for (index_t i = 0; i < 64; ++i) l.data()[i] = cls >= 0 ? cls : i / 8;
  return l;
}

// Writes the DDIM grid (and the ancestral one when `ddpm`); returns the ancestral samples (or an
// undefined tensor).
Tensor<float> write_samples(Model& model, const Options& o, const std::string& tag, bool ddpm) {
  model.eval();
  const Tensor<index_t> labels = o.conditional ? grid_labels(o.sample_class) : Tensor<index_t>();
  kiln::Rng rng(o.seed, 0, 7);  // the same starting noise every time: grids are comparable
  example::save_grid(o.out + "/samples_ddim" + tag + ".png",
                     model.ddim_sample(64, {1, 28, 28}, o.ddim_steps, rng, 0.0, labels, o.guidance), 8, -1.0, 1.0);
  Tensor<float> ancestral;
  if (ddpm) {
    kiln::Rng rng2(o.seed, 0, 8);
    ancestral = model.ddpm_sample(64, {1, 28, 28}, rng2, labels, o.guidance);
    example::save_grid(o.out + "/samples_ddpm" + tag + ".png", ancestral, 8, -1.0, 1.0);
  }
  model.train();
  return ancestral;
}

int run(const Options& o, const std::string& config) {
  if (o.deterministic) kiln::set_num_threads(1);
  if (o.threads > 0 && !o.deterministic) kiln::set_num_threads(o.threads);
  example::install_stop_handler();
  const std::string dir = kiln::data::find_fashion_mnist_dir(o.data);
  std::printf("kiln %s, %d threads, data %s\n", kiln::version(), kiln::num_threads(), dir.c_str());
  const auto train = kiln::data::load_fashion_mnist(dir, "train");
  // Pixels in [0, 1] → [−1, 1], shaped as images.
  const Tensor<float> images(train.images.reshape({train.images.size(0), 1, 28, 28}) * 2.0f - 1.0f);

  kiln::Rng init(o.seed);
  auto unet = std::make_shared<UNet>(init, 1, o.conditional ? 10 : 0);
  kiln::models::DiffusionOptions dopt;
  dopt.prediction = o.prediction == "v" ? kiln::models::Prediction::v : kiln::models::Prediction::epsilon;
  dopt.num_classes = o.conditional ? 10 : 0;
  dopt.clip_denoised = 1.0;
  auto schedule = o.schedule == "cosine" ? kiln::models::NoiseSchedule::cosine(1000) : kiln::models::NoiseSchedule::linear(1000);
  Model model(unet, schedule, dopt);
  kiln::optim::AdamOptions adam;
  adam.lr = o.lr;
  kiln::optim::Adam opt(model.parameters(), adam);

  kiln::data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.seed = o.seed;
  kiln::data::DataLoader loader(images, train.labels, lo,
                                o.flip ? kiln::data::DataLoader::Transform(kiln::data::RandomHorizontalFlip{0.5}) : nullptr);
  const long per_epoch = loader.num_batches();
  long total = per_epoch * o.epochs;
  if (o.steps >= 0 && o.steps < total) total = o.steps;

  std::filesystem::create_directories(o.out);
  kiln::Rng noise(o.seed, 0, 1);  // timesteps, noise and label dropout
  long step = 0;
  if (!o.resume.empty()) {
    kiln::io::TrainingState st = kiln::io::load_checkpoint(o.resume, model, opt);
    step = st.step;
    noise = st.rng;
    std::printf("resumed from %s at step %ld\n", o.resume.c_str(), step);
  }
  std::ofstream(o.out + "/config.txt") << config << "data_dir " << dir << "\nsteps_total " << total << "\n";
  const auto save = [&](long at) {
    kiln::io::TrainingState st;
    st.step = at;
    st.rng = noise;
    kiln::io::save_checkpoint(o.out + "/checkpoint.safetensors", model, opt, st);
  };

  kiln::io::CsvLog log(o.out + "/log.csv", {"step", "epoch", "train_loss", "seconds"}, !o.resume.empty());
  example::Curve curve{"train MSE (mean of 25 steps)", {}, {}};
  double window = 0;
  long in_window = 0;
  kiln::io::ProgressBar bar("train", total);
  bar.set_start(step);
  const auto t0 = std::chrono::steady_clock::now();
  double last_epoch_loss = 0;
  bool stopped = false;
  while (step < total && !stopped) {
    const long epoch = step / per_epoch;
    loader.start_epoch(static_cast<std::uint64_t>(epoch), step % per_epoch);
    double sum = 0;
    long count = 0;
    while (step < total && step / per_epoch == epoch) {
      if (example::stop_requested()) {
        stopped = true;
        break;
      }
      auto batch = loader.next();
      if (!batch) break;
      opt.zero_grad();
      Tensor<float> loss = model.loss(batch->inputs, noise, o.conditional ? batch->labels : Tensor<index_t>());
      loss.backward();
      opt.step();
      ++step;
      const double l = loss.item();
      sum += l;
      ++count;
      window += l;
      if (++in_window == 25) {
        curve.x.push_back(double(step));
        curve.y.push_back(window / 25);
        window = 0;
        in_window = 0;
      }
      char text[64];
      std::snprintf(text, sizeof text, "epoch %ld loss %.4f", epoch + 1, l);
      bar.update(step, text);
    }
    if (stopped) break;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    last_epoch_loss = count ? sum / double(count) : 0.0;
    std::printf("epoch %ld step %ld train_loss %.4f (%.1f s)\n", epoch + 1, step, last_epoch_loss, secs);
    log.row({double(step), double(epoch + 1), last_epoch_loss, secs});
    save(step);
    const bool end = step >= total;
    if (!end) write_samples(model, o, "", o.ddpm_every > 0 && (epoch + 1) % o.ddpm_every == 0);
  }
  if (stopped) {
    save(step);
    std::printf("\nstopped at step %ld; checkpoint saved to %s/checkpoint.safetensors (continue with --resume)\n", step,
                o.out.c_str());
    return 130;
  }
  example::save_curves(o.out + "/loss.png", "DDPM training loss", {curve}, true);
  kiln::io::save_module(o.out + "/model.safetensors", model);
  const auto ts = std::chrono::steady_clock::now();
  const Tensor<float> ancestral = write_samples(model, o, "", o.ddpm_every > 0);
  const double sample_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
  std::ofstream summary(o.out + "/summary.txt");
  summary << "train_loss_last_epoch " << last_epoch_loss << "\nsteps " << step << "\nsampling_seconds " << sample_secs
          << "\n";
  if (o.fid_samples > 0) {
    // DDIM (η = 0) samples, classes in turn when conditional, against the 10,000 test images; the
    // samples are kept as an IDX file for kiln-eval.
    const auto test = kiln::data::load_fashion_mnist(kiln::data::find_fashion_mnist_dir(o.data), "test");
    model.eval();
    kiln::Rng rng(o.seed, 0, 12);
    std::vector<Tensor<float>> parts;
    for (long done = 0; done < o.fid_samples; done += 250) {
      const index_t n = std::min<long>(250, o.fid_samples - done);
      Tensor<index_t> labels;
      if (o.conditional) {
        labels = Tensor<index_t>::uninitialized(kiln::Shape{n});
        for (index_t i = 0; i < n; ++i) labels.data()[i] = (done + i) % 10;
      }
      parts.push_back(model.ddim_sample(n, {1, 28, 28}, o.ddim_steps, rng, 0.0, labels, o.guidance));
    }
    model.train();
    const Tensor<float> ddim = kiln::concat(parts, 0);
    example::save_idx_images(o.out + "/samples_ddim-images-idx3-ubyte", ddim, -1.0, 1.0);
    example::report_quality(summary, example::sample_quality(ddim, -1.0, 1.0, test.images, o.features), "ddim_");
    if (ancestral.defined()) {
      example::save_idx_images(o.out + "/samples_ddpm-images-idx3-ubyte", ancestral, -1.0, 1.0);
      example::report_quality(summary, example::sample_quality(ancestral, -1.0, 1.0, test.images, o.features), "ddpm64_");
    }
  }
  std::printf("wrote %s/ (samples_ddim.png%s, loss.png, log.csv, summary.txt)\n", o.out.c_str(),
              o.ddpm_every > 0 ? ", samples_ddpm.png" : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  example::Cli cli("diffusion", "trains a DDPM denoiser (W6 UNet) on Fashion-MNIST with kiln");
  cli.add("--data", o.data, "Fashion-MNIST IDX folder (default: $KILN_FASHION_MNIST or Debian's dataset-fashion-mnist)", "DIR");
  cli.add("--out", o.out, "output folder", "DIR");
  cli.add("--epochs", o.epochs, "epochs to train");
  cli.add("--steps", o.steps, "stop after N steps in total (-1: the epochs decide)");
  cli.add("--batch", o.batch, "batch size");
  cli.add("--lr", o.lr, "Adam learning rate");
  cli.add("--schedule", o.schedule, "noise schedule: linear or cosine", "NAME");
  cli.add("--prediction", o.prediction, "what the network predicts: eps or v", "NAME");
  cli.flag("--conditional", o.conditional, "class-conditional with classifier-free guidance");
  cli.add("--class", o.sample_class, "with --conditional: sample only this class (-1: one row per class 0-7)");
  cli.add("--guidance", o.guidance, "with --conditional: guidance scale w");
  cli.add("--fid-samples", o.fid_samples, "DDIM samples for the final FID and Inception Score (0: skip)");
  cli.add("--features", o.features, "weights of the feature network for FID/IS (default: the shipped file)", "FILE");
  cli.add("--ddim-steps", o.ddim_steps, "steps of the DDIM sampler");
  cli.add("--ddpm-every", o.ddpm_every, "epochs between 1000-step ancestral sample grids (0: never)");
  cli.flag("--flip", o.flip, "augment: flip each training image left-right with probability 1/2");
  cli.add("--threads", o.threads, "CPU threads (0: KILN_NUM_THREADS or all cores)");
  cli.add("--seed", o.seed, "seed of the initialization, shuffling and noise");
  cli.flag("--deterministic", o.deterministic, "one thread, so runs repeat bit for bit on any core count");
  cli.add("--resume", o.resume, "continue from a checkpoint of an earlier run", "FILE");
  try {
    cli.parse(argc, argv);
    if (o.epochs < 1 || o.batch < 1 || !(o.lr > 0) || o.ddim_steps < 1 || o.ddim_steps > 1000)
      throw std::runtime_error("--epochs, --batch, --lr must be positive and --ddim-steps in 1..1000");
    if (o.schedule != "linear" && o.schedule != "cosine") throw std::runtime_error("--schedule must be linear or cosine");
    if (o.prediction != "eps" && o.prediction != "v") throw std::runtime_error("--prediction must be eps or v");
    if (o.sample_class > 9) throw std::runtime_error("--class must be 0..9 or -1");
    return run(o, cli.config());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "diffusion: %s\n", e.what());
    return 1;
  }
}
