// gan — trains the W4 DCGAN on Fashion-MNIST with kiln::models::GAN. G: z100 → Linear(100, 128·7·7)
// + BN1d + ReLU → 128×7×7 → ConvT(128,64,4,2,1) + BN2d + ReLU → ConvT(64,1,4,2,1) + tanh. D:
// Conv(1,64,4,2,1) + LeakyReLU 0.2 → Conv(64,128,4,2,1) + BN2d + LeakyReLU 0.2 → Linear(6272, 1).
// Batch 64, images in [−1, 1], one D step and one G step per iteration, Adam(2e-4, β 0.5/0.999).
// Options: hinge or WGAN-GP losses, R1, n_critic, an EMA of the generator, and a class-conditional
// variant (G gets a label embedding concatenated to z; D a projection of the label, Miyato & Koyama
// 2018). Writes sample grids from a fixed latent batch, loss curves, a CSV log, the configuration,
// a summary, checkpoints (resumable; Ctrl-C saves one before exiting) and the final weights.
#include "common.hpp"
#include "dcgan.hpp"

#include <kiln/data/fashion_mnist.hpp>
#include <kiln/data/loader.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/progress.hpp>
#include <kiln/kiln.hpp>
#include <kiln/models/gan.hpp>
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
using Labels = Tensor<index_t>;
namespace nn = kiln::nn;

constexpr index_t feature_size = 128 * 7 * 7;

using Generator = example::DcganGenerator;

// W4's discriminator, children "0".."6" as the PyTorch reference's Sequential. With `layer_norm`
// the BatchNorm2d becomes GroupNorm(1, 128) (a per-example layer norm), so that the gradient
// penalties see each example on its own. With `classes` > 0 a projection term ⟨embed(y), h⟩ on
// the 6272 features h is added to the logit.
class Discriminator : public nn::Module {
 public:
  Discriminator(index_t classes, bool layer_norm, kiln::Rng& rng) {
    conv1_ = register_module("0", std::make_shared<nn::Conv2d>(
                                      1, 64, 4, nn::Conv2dOptions{.stride = 2, .padding = 1}, rng));
    act1_ = register_module("1", std::make_shared<nn::LeakyReLU>(0.2));
    conv2_ =
        register_module("2", std::make_shared<nn::Conv2d>(
                                 64, 128, 4, nn::Conv2dOptions{.stride = 2, .padding = 1}, rng));
    if (layer_norm)
      group_norm_ = register_module("3", std::make_shared<nn::GroupNorm>(1, 128));
    else
      batch_norm_ = register_module("3", std::make_shared<nn::BatchNorm2d>(128));
    act2_ = register_module("4", std::make_shared<nn::LeakyReLU>(0.2));
    flatten_ = register_module("5", std::make_shared<nn::Flatten>());
    head_ = register_module("6", std::make_shared<nn::Linear>(feature_size, 1, rng));
    if (classes > 0) {
      projection_ = register_module("projection",
                                    std::make_shared<nn::Embedding>(classes, feature_size, rng));
      kiln::nn::init::normal_(projection_->weight(), rng, 0.0,
                              1.0 / std::sqrt(static_cast<double>(feature_size)));
    }
  }
  Tensor<float> forward(const Tensor<float>& x) {
    if (projection_) throw kiln::ValueError("gan: the conditional discriminator needs labels");
    return head_->forward(features(x));
  }
  Tensor<float> forward(const Tensor<float>& x, const Labels& labels) {
    if (!projection_)
      throw kiln::ValueError("gan: the unconditional discriminator takes no labels");
    const Tensor<float> h = features(x);
    return Tensor<float>(head_->forward(h) + kiln::sum(h * projection_->forward(labels), 1, true));
  }

 private:
  Tensor<float> features(const Tensor<float>& x) {
    Tensor<float> h = conv2_->forward(act1_->forward(conv1_->forward(x)));
    h = group_norm_ ? group_norm_->forward(h) : batch_norm_->forward(h);
    return flatten_->forward(act2_->forward(h));
  }

  std::shared_ptr<nn::Conv2d> conv1_, conv2_;
  std::shared_ptr<nn::LeakyReLU> act1_, act2_;
  std::shared_ptr<nn::BatchNorm2d> batch_norm_;
  std::shared_ptr<nn::GroupNorm> group_norm_;
  std::shared_ptr<nn::Flatten> flatten_;
  std::shared_ptr<nn::Linear> head_;
  std::shared_ptr<nn::Embedding> projection_;
};

using GAN = kiln::models::GAN<Generator, Discriminator>;

struct Options {
  std::string data, out = "gan-out", resume, loss = "nonsat";
  int epochs = 4;
  long steps = -1;
  long batch = 64;
  double lr = 2e-4, beta1 = 0.5, beta2 = 0.999;
  long latent = 100;
  double gp = -1;  // -1: 10 for wgan-gp, else 0
  double r1 = 0;
  int critic_steps = 1;
  bool ema = false;
  double ema_decay = 0.999;
  bool conditional = false;
  int class_id = -1;
  long log_every = 50;
  long fid_samples = 10000;
  std::string features;
  int threads = 0;
  std::uint64_t seed = 0;
  bool deterministic = false;
};

constexpr index_t classes = 10;

// The fixed latent batch of the sample grids and its labels: 64 latents (one class for all with
// --class K), or for a conditional model 8 latents repeated over one row per class.
std::pair<Tensor<float>, Labels> fixed_inputs(const Options& o, const GAN& gan) {
  kiln::Rng rng(o.seed, 0, 7);
  if (!o.conditional) return {gan.latent(64, rng), Labels()};
  if (o.class_id >= 0)
    return {gan.latent(64, rng),
            kiln::full<index_t>(kiln::Shape{64}, static_cast<index_t>(o.class_id))};
  const Tensor<float> z8 = gan.latent(8, rng);
  Tensor<float> z = Tensor<float>::uninitialized(kiln::Shape{classes * 8, o.latent});
  Labels labels = Labels::uninitialized(kiln::Shape{classes * 8});
  for (index_t k = 0; k < classes; ++k)
    for (index_t c = 0; c < 8; ++c) {
      std::copy_n(z8.data() + c * o.latent, o.latent, z.data() + (k * 8 + c) * o.latent);
      labels.data()[k * 8 + c] = k;
    }
  return {z, labels};
}

// Samples of the fixed batch with G in eval mode (BatchNorm's running statistics, as the
// reference).
Tensor<float> fixed_samples(GAN& gan, const std::pair<Tensor<float>, Labels>& in) {
  gan.generator().eval();
  Tensor<float> x = gan.sample_from(in.first, in.second);
  gan.generator().train();
  return x;
}

int run(Options o, const std::string& config) {
  if (o.deterministic) kiln::set_num_threads(1);
  if (o.threads > 0 && !o.deterministic) kiln::set_num_threads(o.threads);
  example::install_stop_handler();
  const std::string dir = kiln::data::find_fashion_mnist_dir(o.data);
  std::printf("kiln %s, %d threads, data %s\n", kiln::version(), kiln::num_threads(), dir.c_str());
  const auto train = kiln::data::load_fashion_mnist(dir, "train");

  kiln::models::GANOptions go;
  if (o.loss == "nonsat")
    go.loss = kiln::models::GANLoss::non_saturating;
  else if (o.loss == "hinge")
    go.loss = kiln::models::GANLoss::hinge;
  else
    go.loss = kiln::models::GANLoss::wasserstein;
  if (o.gp < 0) o.gp = o.loss == "wgan-gp" ? 10.0 : 0.0;
  go.gradient_penalty = o.gp;
  go.r1 = o.r1;
  go.critic_steps = o.critic_steps;
  go.ema_decay = o.ema ? o.ema_decay : 0.0;
  go.ema_warmup = true;
  const index_t k = o.conditional ? classes : 0;
  const bool layer_norm = o.gp > 0 || o.r1 > 0;

  // D first, then G, as the reference.
  kiln::Rng init(o.seed);
  auto d = std::make_shared<Discriminator>(k, layer_norm, init);
  auto g = std::make_shared<Generator>(o.latent, k, init);
  auto gan = std::make_shared<GAN>(g, d, o.latent, go);
  kiln::optim::AdamOptions adam;
  adam.lr = o.lr;
  adam.beta1 = o.beta1;
  adam.beta2 = o.beta2;
  kiln::optim::Adam g_opt(g->parameters(), adam), d_opt(d->parameters(), adam);

  kiln::data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.seed = o.seed;
  kiln::data::DataLoader loader(train.images, train.labels, lo);
  const long per_epoch = loader.num_batches();
  long total = per_epoch * o.epochs;
  if (o.steps >= 0 && o.steps < total) total = o.steps;

  std::filesystem::create_directories(o.out);
  // The checkpoint holds G, D (and the EMA) with D's optimizer; G's optimizer goes to a second
  // file (io::save_checkpoint takes one optimizer), saved with an empty module.
  const std::string ckpt = o.out + "/checkpoint.safetensors",
                    g_ckpt = o.out + "/checkpoint_generator_optimizer.safetensors";
  nn::Module no_module;
  kiln::Rng noise(o.seed, 0, 1);  // latents and the penalty's mixing weights
  long step = 0;
  if (!o.resume.empty()) {
    kiln::io::TrainingState st = kiln::io::load_checkpoint(o.resume, *gan, d_opt);
    std::string g_path = o.resume;
    const std::size_t slash = g_path.find_last_of('/');
    g_path = (slash == std::string::npos ? std::string() : g_path.substr(0, slash + 1)) +
             "checkpoint_generator_optimizer.safetensors";
    const kiln::io::TrainingState gst = kiln::io::load_checkpoint(g_path, no_module, g_opt);
    if (gst.step != st.step)
      throw std::runtime_error(o.resume + " (step " + std::to_string(st.step) + ") and " + g_path +
                               " (step " + std::to_string(gst.step) +
                               ") come from different saves");
    step = st.step;
    noise = st.rng;
    std::printf("resumed from %s at step %ld\n", o.resume.c_str(), step);
  }
  std::ofstream(o.out + "/config.txt")
      << config << "gp_used " << o.gp << "\ndiscriminator_norm "
      << (layer_norm ? "groupnorm1" : "batchnorm") << "\ndata_dir " << dir << "\ntrain_images "
      << train.images.size(0) << "\nsteps_total " << total << "\n";
  const auto save = [&](long at) {
    kiln::io::TrainingState st;
    st.step = at;
    st.rng = noise;
    kiln::io::save_checkpoint(g_ckpt, no_module, g_opt, st);
    kiln::io::save_checkpoint(ckpt, *gan, d_opt, st);
  };
  const auto fixed = fixed_inputs(o, *gan);
  const int grid_columns = 8;
  const auto write_samples = [&](const std::string& tag) {
    const Tensor<float> x = fixed_samples(*gan, fixed);
    example::save_grid(o.out + "/samples.png", x, grid_columns, -1.0, 1.0);
    if (!tag.empty())
      example::save_grid(o.out + "/samples_" + tag + ".png", x, grid_columns, -1.0, 1.0);
    return x;
  };

  kiln::io::CsvLog log(
      o.out + "/log.csv",
      {"step", "epoch", "d_loss", "g_loss", "d_real", "d_fake", "penalty", "seconds"},
      !o.resume.empty());
  example::Curve d_curve{"D loss", {}, {}}, g_curve{"G loss", {}, {}};
  double sum_d = 0, sum_g = 0, sum_real = 0, sum_fake = 0, sum_pen = 0;
  long window = 0;
  double last_d = 0, last_g = 0, last_real = 0, last_fake = 0;
  kiln::io::ProgressBar bar("train", total);
  bar.set_start(step);
  const long first_step = step;
  const auto t0 = std::chrono::steady_clock::now();
  bool stopped = false;
  while (step < total && !stopped) {
    const long epoch = step / per_epoch;
    loader.start_epoch(static_cast<std::uint64_t>(epoch), step % per_epoch);
    while (step < total && step / per_epoch == epoch) {
      if (example::stop_requested()) {
        stopped = true;
        break;
      }
      auto batch = loader.next();
      if (!batch) break;
      const index_t b = batch->inputs.size(0);
      const Tensor<float> real = Tensor<float>(batch->inputs * 2.0f - 1.0f).reshape({b, 1, 28, 28});
      const auto r =
          gan->train_step(real, o.conditional ? batch->labels : Labels(), noise, g_opt, d_opt);
      ++step;
      sum_d += r.d_loss;
      sum_g += r.g_loss;
      sum_real += r.d_real;
      sum_fake += r.d_fake;
      sum_pen += r.penalty;
      if (++window == o.log_every) {
        const double n = static_cast<double>(window);
        last_d = sum_d / n, last_g = sum_g / n, last_real = sum_real / n, last_fake = sum_fake / n;
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        log.row({double(step), double(epoch + 1), last_d, last_g, last_real, last_fake, sum_pen / n,
                 secs});
        d_curve.x.push_back(double(step));
        d_curve.y.push_back(last_d);
        g_curve.x.push_back(double(step));
        g_curve.y.push_back(last_g);
        sum_d = sum_g = sum_real = sum_fake = sum_pen = 0;
        window = 0;
      }
      char text[112];
      std::snprintf(text, sizeof text, "epoch %ld D %.3f G %.3f D(x) %.2f D(G(z)) %.2f", epoch + 1,
                    r.d_loss, r.g_loss, r.d_real, r.d_fake);
      bar.update(step, text);
    }
    if (stopped) break;
    if (step % per_epoch == 0 && step > 0) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("epoch %ld step %ld D %.3f G %.3f (%.1f s)\n", epoch + 1, step, last_d, last_g,
                  secs);
      save(step);
      write_samples("epoch" + std::to_string(epoch + 1));
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (stopped) {
    save(step);
    std::printf("\nstopped at step %ld; checkpoint saved to %s (continue with --resume)\n", step,
                ckpt.c_str());
    return 130;
  }
  save(step);
  const Tensor<float> final_samples = write_samples("");
  example::save_curves(o.out + "/loss.png",
                       "GAN losses (mean over " + std::to_string(o.log_every) + " steps)",
                       {d_curve, g_curve});
  kiln::io::save_module(o.out + "/model.safetensors", *gan);

  const double steps_per_second = step > first_step ? static_cast<double>(step - first_step) / seconds : 0.0;
  double mean_pixel = 0;
  for (float v : final_samples.to_vector()) mean_pixel += (v + 1.0) * 127.5;
  mean_pixel /= static_cast<double>(final_samples.numel());
  std::ofstream summary(o.out + "/summary.txt");
  summary << "steps " << step << "\nthreads " << kiln::num_threads() << "\ntrain_seconds "
          << seconds << "\nsteps_per_second " << steps_per_second << "\nd_loss " << last_d
          << "\ng_loss " << last_g << "\nd_real " << last_real << "\nd_fake " << last_fake
          << "\nsample_mean_pixel " << mean_pixel << "\n";
  if (o.fid_samples > 0) {
    // Samples of G in eval mode (the EMA weights when --ema), classes drawn uniformly when
    // conditional, against the 10,000 test images.
    kiln::Rng rng(o.seed, 0, 11);
    gan->generator().eval();
    std::vector<Tensor<float>> parts;
    for (long done = 0; done < o.fid_samples; done += 500) {
      const index_t n = std::min<long>(500, o.fid_samples - done);
      Labels labels;
      if (o.conditional) {
        labels = Labels::uninitialized(kiln::Shape{n});
        for (index_t i = 0; i < n; ++i) labels.data()[i] = (done + i) % classes;
      }
      parts.push_back(gan->sample(n, rng, labels));
    }
    gan->generator().train();
    const auto test = kiln::data::load_fashion_mnist(dir, "test");
    example::report_quality(summary, example::sample_quality(kiln::concat(parts, 0), -1.0, 1.0, test.images, o.features));
  }
  std::printf(
      "%ld steps in %.1f s (%.2f steps/s); D %.3f G %.3f; wrote %s/ (samples.png, loss.png, "
      "log.csv, summary.txt, "
      "model.safetensors)\n",
      step - first_step, seconds, steps_per_second, last_d, last_g, o.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  example::Cli cli("gan",
                   "trains the W4 DCGAN (or a hinge / WGAN-GP / R1 / conditional variant) on "
                   "Fashion-MNIST with kiln");
  cli.add(
      "--data", o.data,
      "Fashion-MNIST IDX folder (default: $KILN_FASHION_MNIST or Debian's dataset-fashion-mnist)",
      "DIR");
  cli.add("--out", o.out, "output folder", "DIR");
  cli.add("--epochs", o.epochs, "epochs to train");
  cli.add("--steps", o.steps, "stop after N generator steps in total (-1: the epochs decide)");
  cli.add("--batch", o.batch, "batch size");
  cli.add("--lr", o.lr, "Adam learning rate of both networks");
  cli.add("--beta1", o.beta1, "Adam beta1");
  cli.add("--beta2", o.beta2, "Adam beta2");
  cli.add("--latent", o.latent, "latent dimensions");
  cli.add("--loss", o.loss, "nonsat (BCE-with-logits, W4), hinge or wgan-gp", "NAME");
  cli.add("--gp", o.gp,
          "gradient-penalty weight lambda (-1: 10 for wgan-gp, else 0); with a penalty D uses "
          "GroupNorm(1)");
  cli.add(
      "--r1", o.r1,
      "R1 penalty weight gamma (0: off); with a penalty D uses GroupNorm(1) instead of BatchNorm");
  cli.add("--critic-steps", o.critic_steps,
          "discriminator steps per generator step (on the same real batch)");
  cli.flag("--ema", o.ema, "keep an exponential moving average of G's weights and sample from it");
  cli.add("--ema-decay", o.ema_decay,
          "decay of that average (the n-th update uses at most (1 + n) / (10 + n))");
  cli.flag("--conditional", o.conditional,
           "class-conditional G (label embedding) and D (projection); grid rows = classes");
  cli.add("--class", o.class_id,
          "with --conditional: the sample grid shows this class only (-1: one row per class)");
  cli.add("--log-every", o.log_every, "steps per row of log.csv and point of loss.png");
  cli.add("--fid-samples", o.fid_samples, "samples for the final FID and Inception Score (0: skip)");
  cli.add("--features", o.features, "weights of the feature network for FID/IS (default: the shipped file)", "FILE");
  cli.add("--threads", o.threads, "CPU threads (0: KILN_NUM_THREADS or all cores)");
  cli.add("--seed", o.seed, "seed of the initialization, shuffling and noise");
  cli.flag("--deterministic", o.deterministic,
           "one thread, so runs repeat bit for bit on any core count");
  cli.add("--resume", o.resume,
          "continue from a checkpoint of an earlier run (its folder also holds G's optimizer)",
          "FILE");
  try {
    cli.parse(argc, argv);
    if (o.epochs < 1 || o.batch < 1 || o.latent < 1 || !(o.lr > 0) || o.log_every < 1)
      throw std::runtime_error(
          "--epochs, --batch, --latent, --lr and --log-every must be positive");
    if (o.loss != "nonsat" && o.loss != "hinge" && o.loss != "wgan-gp")
      throw std::runtime_error("--loss must be nonsat, hinge or wgan-gp, got '" + o.loss + "'");
    if (o.critic_steps < 1) throw std::runtime_error("--critic-steps must be at least 1");
    if (o.class_id >= classes || (o.class_id >= 0 && !o.conditional))
      throw std::runtime_error("--class needs --conditional and a class 0..9");
    if (o.ema && !(o.ema_decay > 0 && o.ema_decay < 1))
      throw std::runtime_error("--ema-decay must be in (0, 1)");
    return run(o, cli.config());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gan: %s\n", e.what());
    return 1;
  }
}
