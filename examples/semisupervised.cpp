// semisupervised — semi-supervised classification of Fashion-MNIST with a GAN whose discriminator
// is a 10-class classifier with an implicit 11th "fake" class (Salimans et al. 2016, "Improved
// Techniques for Training GANs", §5), with kiln::models::SemiSupervisedGAN. Only
// --labels-per-class images of each class keep their label (chosen with a seeded RNG); the rest of
// the training set is used without labels. Trains, on the same labels:
//   (a) a baseline: the discriminator's architecture trained as a plain classifier on the labelled
//       images alone (cross-entropy, random-crop and flip augmentation, a fixed epoch budget);
//   (b) the semi-supervised GAN: D minimises CE(labelled) + [−log D(unlabelled) − log(1 − D(G(z)))]
//       with D(x) = Z/(Z+1), Z = Σ_k exp(l_k); G (W4's DCGAN generator) is trained with feature
//       matching on D's last hidden layer (Salimans et al. §3.1).
// and reports both accuracies on the 10,000 test images. Networks (examples/gan.cpp's sizes):
//   G: z100 → Linear(100, 128·7·7) + BN1d + ReLU → ConvT(128,64,4,2,1) + BN2d + ReLU →
//      ConvT(64,1,4,2,1) + tanh.
//   D: Conv(1,64,4,2,1) + LeakyReLU 0.2 → Conv(64,128,4,2,1) + LeakyReLU 0.2 → features (6272) →
//      Dropout → Linear(6272, 10). No BatchNorm: D sees labelled, unlabelled and fake batches
//      separately, and batch statistics mixing those (or running averages over them at test time)
//      would make the classifier depend on the batch it is in.
// Writes summary.txt (both accuracies, per class), samples.png (G's samples from a fixed latent
// batch), loss.png, accuracy.png, log.csv (the GAN), baseline_log.csv, config.txt and resumable
// checkpoints (Ctrl-C saves one before exiting).
#include "common.hpp"
#include "dcgan.hpp"

#include <kiln/autograd/fused.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/data/augment.hpp>
#include <kiln/data/fashion_mnist.hpp>
#include <kiln/data/loader.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/progress.hpp>
#include <kiln/models/semisupervised.hpp>
#include <kiln/nn/activation.hpp>
#include <kiln/nn/conv.hpp>
#include <kiln/nn/dropout.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/norm.hpp>
#include <kiln/nn/sequential.hpp>
#include <kiln/optim/adam.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using kiln::index_t;
using kiln::Tensor;
using Labels = Tensor<index_t>;
namespace nn = kiln::nn;

constexpr index_t classes = 10;
constexpr index_t feature_size = 128 * 7 * 7;

// W4's generator (examples/dcgan.hpp), unconditional.
using Generator = example::DcganGenerator;

// The discriminator / classifier: W4's discriminator without its BatchNorm, with K = 10 logits
// and dropout before the head. features() is the 6272-wide layer feature matching compares.
class Classifier : public nn::Module {
 public:
  Classifier(double dropout, double input_noise, kiln::Rng& rng)
      : input_noise_(input_noise), noise_generator_(nn::derive_generator(rng)) {
    conv1_ = register_module("0", std::make_shared<nn::Conv2d>(
                                      1, 64, 4, nn::Conv2dOptions{.stride = 2, .padding = 1}, rng));
    conv2_ = register_module(
        "2", std::make_shared<nn::Conv2d>(64, 128, 4, nn::Conv2dOptions{.stride = 2, .padding = 1},
                                          rng));
    dropout_ = register_module("6", std::make_shared<nn::Dropout>(dropout, rng));
    head_ = register_module("7", std::make_shared<nn::Linear>(feature_size, classes, rng));
    act_ = std::make_shared<nn::LeakyReLU>(0.2);
  }
  // In training mode with input_noise σ > 0, x + σ·N(0, I) goes in (Salimans et al.'s MNIST
  // discriminator adds Gaussian noise to its input).
  Tensor<float> features(const Tensor<float>& x) {
    Tensor<float> in = x;
    if (is_training() && input_noise_ > 0)
      in = Tensor<float>(x + kiln::randn<float>(x.shape(), noise_generator_) * static_cast<float>(input_noise_));
    const Tensor<float> h = act_->forward(conv2_->forward(act_->forward(conv1_->forward(in))));
    return h.reshape({x.size(0), feature_size});
  }
  Tensor<float> classify(const Tensor<float>& h) { return head_->forward(dropout_->forward(h)); }
  kiln::Rng& dropout_generator() { return dropout_->generator(); }
  kiln::Rng& noise_generator() { return noise_generator_; }

 private:
  double input_noise_;
  kiln::Rng noise_generator_;
  std::shared_ptr<nn::Conv2d> conv1_, conv2_;
  std::shared_ptr<nn::Dropout> dropout_;
  std::shared_ptr<nn::Linear> head_;
  std::shared_ptr<nn::LeakyReLU> act_;
};

using SSLGAN = kiln::models::SemiSupervisedGAN<Generator, Classifier>;

struct Options {
  std::string data, out = "semisupervised-out", resume, g_loss = "fm";
  long labels_per_class = 100;
  int epochs = 1;  // passes over the unlabelled images
  long steps = -1;
  int baseline_epochs = 80;
  long batch = 64, labelled_batch = 64;
  double lr = 2e-3, beta1 = 0.5, beta2 = 0.999;
  double lr_decay = 0.5;  // the last half of each run decays the lr linearly to 0
  double unsupervised_weight = 1.0;
  double dropout = 0.5, input_noise = 0.0;
  bool no_augment = false;
  long latent = 100;
  long eval_every = 250, log_every = 25;
  int threads = 0;
  std::uint64_t seed = 0;
  bool deterministic = false;
};

// Images [N, 784] in [0, 1] → [N, 1, 28, 28] in [−1, 1] (G's tanh range), rows `rows` only.
Tensor<float> images_of(const Tensor<float>& flat, const std::vector<index_t>& rows) {
  Tensor<float> out = Tensor<float>::uninitialized({static_cast<index_t>(rows.size()), 1, 28, 28});
  const float* src = flat.data();
  float* dst = out.data();
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (index_t j = 0; j < 784; ++j) dst[i * 784 + j] = src[rows[i] * 784 + j] * 2.0f - 1.0f;
  return out;
}
Labels labels_of(const Labels& all, const std::vector<index_t>& rows) {
  Labels out = Labels::uninitialized({static_cast<index_t>(rows.size())});
  for (std::size_t i = 0; i < rows.size(); ++i) out.data()[i] = all.data()[rows[i]];
  return out;
}

// A balanced labelled subset: the first `per_class` images of each class in a seeded random
// order of the training set; every other image is unlabelled. Both lists are in index order.
void split_labelled(const Labels& labels, long per_class, std::uint64_t seed,
                    std::vector<index_t>& labelled, std::vector<index_t>& unlabelled) {
  const index_t n = labels.size(0);
  kiln::Rng rng(seed, 0, 11);
  const Labels order = kiln::randperm(n, rng);
  std::vector<long> taken(classes, 0);
  std::vector<char> chosen(static_cast<std::size_t>(n), 0);
  for (index_t i = 0; i < n; ++i) {
    const index_t row = order.data()[i];
    const index_t c = labels.data()[row];
    if (taken[static_cast<std::size_t>(c)] < per_class) {
      ++taken[static_cast<std::size_t>(c)];
      chosen[static_cast<std::size_t>(row)] = 1;
    }
  }
  for (index_t c = 0; c < classes; ++c)
    if (taken[static_cast<std::size_t>(c)] < per_class)
      throw std::runtime_error("class " + std::to_string(c) + " has only " +
                               std::to_string(taken[static_cast<std::size_t>(c)]) +
                               " training images, fewer than --labels-per-class");
  for (index_t i = 0; i < n; ++i)
    (chosen[static_cast<std::size_t>(i)] ? labelled : unlabelled).push_back(i);
  if (unlabelled.empty()) throw std::runtime_error("--labels-per-class leaves no unlabelled images");
}

// Batch `step` of an endless sequence of epochs of a loader (epoch = step / batches per epoch), so
// that a run resumed at any step sees the batches an uninterrupted one would.
class Cycler {
 public:
  explicit Cycler(kiln::data::DataLoader& loader) : loader_(loader), per_epoch_(loader.num_batches()) {}
  kiln::data::Batch at(long step) {
    const long epoch = step / per_epoch_, index = step % per_epoch_;
    if (epoch != epoch_ || index != next_) {
      loader_.start_epoch(static_cast<std::uint64_t>(epoch), index);
      epoch_ = epoch;
    }
    next_ = index + 1;
    return *loader_.next();
  }
  long per_epoch() const { return per_epoch_; }

 private:
  kiln::data::DataLoader& loader_;
  long per_epoch_, epoch_ = -1, next_ = -1;
};

struct Evaluation {
  bool done = false;
  double accuracy = 0;
  std::array<double, classes> per_class{};
};

// Test accuracy of a classifier (eval mode: no dropout), in chunks of 500 images.
Evaluation evaluate(Classifier& net, const Tensor<float>& images, const Labels& labels) {
  net.eval();
  kiln::NoGrad guard;
  std::array<long, classes> right{}, count{};
  const index_t n = images.size(0);
  for (index_t begin = 0; begin < n; begin += 500) {
    const index_t end = std::min(n, begin + 500);
    const Labels guess =
        kiln::argmax(net.classify(net.features(images.slice(0, begin, end))), 1).contiguous();
    for (index_t i = begin; i < end; ++i) {
      const auto c = static_cast<std::size_t>(labels.data()[i]);
      ++count[c];
      right[c] += guess.data()[i - begin] == labels.data()[i];
    }
  }
  net.train();
  Evaluation e;
  long total_right = 0;
  for (std::size_t c = 0; c < classes; ++c) {
    total_right += right[c];
    e.per_class[c] = count[c] ? static_cast<double>(right[c]) / static_cast<double>(count[c]) : 0;
  }
  e.accuracy = static_cast<double>(total_right) / static_cast<double>(n);
  e.done = true;
  return e;
}

std::string rng_text(const kiln::Rng& rng) {
  const kiln::RngState s = rng.state();
  return std::to_string(s.seed) + "," + std::to_string(s.offset) + "," + std::to_string(s.subsequence);
}
kiln::Rng rng_from_text(const std::string& text, const std::string& file) {
  kiln::RngState s;
  char tail = 0;
  unsigned long long a = 0, b = 0, c = 0;
  if (std::sscanf(text.c_str(), "%llu,%llu,%llu%c", &a, &b, &c, &tail) != 3)
    throw std::runtime_error(file + ": malformed generator state '" + text + "'");
  s.seed = a;
  s.offset = b;
  s.subsequence = c;
  return kiln::Rng(s);
}
const std::string& value_of(const kiln::io::TrainingState& st, const std::string& key,
                            const std::string& file) {
  const auto it = st.values.find(key);
  if (it == st.values.end()) throw std::runtime_error(file + " has no value '" + key + "'");
  return it->second;
}

// The points of an earlier run's log (for the curves of a resumed run): column `y` against `x`.
example::Curve curve_from_log(const std::string& path, const std::string& name, const std::string& x,
                              const std::string& y) {
  example::Curve c{name, {}, {}};
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) return c;
  std::vector<std::string> header;
  {
    std::stringstream ss(line);
    for (std::string cell; std::getline(ss, cell, ',');) header.push_back(cell);
  }
  int xi = -1, yi = -1;
  for (std::size_t i = 0; i < header.size(); ++i) {
    if (header[i] == x) xi = static_cast<int>(i);
    if (header[i] == y) yi = static_cast<int>(i);
  }
  if (xi < 0 || yi < 0) return c;
  while (std::getline(in, line)) {
    std::vector<double> cells;
    std::stringstream ss(line);
    for (std::string cell; std::getline(ss, cell, ',');) cells.push_back(std::strtod(cell.c_str(), nullptr));
    if (static_cast<int>(cells.size()) <= std::max(xi, yi) || std::isnan(cells[static_cast<std::size_t>(yi)]))
      continue;
    c.x.push_back(cells[static_cast<std::size_t>(xi)]);
    c.y.push_back(cells[static_cast<std::size_t>(yi)]);
  }
  return c;
}

// The learning rate of step `step` (0-based) of `total`: constant, then over the last fraction
// `decay` of the run falling linearly towards 0 (as Salimans et al.'s code decays it at the end).
double lr_at(double base, long step, long total, double decay) {
  if (decay <= 0 || total <= 0) return base;
  const double left = static_cast<double>(total - step) / (decay * static_cast<double>(total));
  return base * std::min(1.0, left);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run(const Options& o, const std::string& config) {
  if (o.deterministic) kiln::set_num_threads(1);
  if (o.threads > 0 && !o.deterministic) kiln::set_num_threads(o.threads);
  example::install_stop_handler();
  const std::string dir = kiln::data::find_fashion_mnist_dir(o.data);
  std::printf("kiln %s, %d threads, data %s\n", kiln::version(), kiln::num_threads(), dir.c_str());
  const auto train = kiln::data::load_fashion_mnist(dir, "train");
  const auto test = kiln::data::load_fashion_mnist(dir, "test");
  std::vector<index_t> labelled_rows, unlabelled_rows, test_rows(static_cast<std::size_t>(test.images.size(0)));
  split_labelled(train.labels, o.labels_per_class, o.seed, labelled_rows, unlabelled_rows);
  for (std::size_t i = 0; i < test_rows.size(); ++i) test_rows[i] = static_cast<index_t>(i);
  const Tensor<float> labelled_x = images_of(train.images, labelled_rows);
  const Labels labelled_y = labels_of(train.labels, labelled_rows);
  const Tensor<float> unlabelled_x = images_of(train.images, unlabelled_rows);
  const Tensor<float> test_x = images_of(test.images, test_rows);
  const Labels test_y = test.labels;

  // Augmentation of the labelled batches (both models): pad 2 with the background (−1), crop
  // 28×28 at a random offset, flip left-right with probability 1/2.
  kiln::data::DataLoader::Transform augment;
  if (!o.no_augment)
    augment = [](kiln::data::Batch& b, kiln::Rng& rng) {
      kiln::data::RandomCrop{28, 28, 2, -1.0f}(b, rng);
      kiln::data::RandomHorizontalFlip{0.5}(b, rng);
    };
  const index_t labelled_batch = std::min<index_t>(o.labelled_batch, labelled_x.size(0));
  kiln::data::LoaderOptions lo;
  lo.batch_size = labelled_batch;
  lo.seed = o.seed + 1;
  kiln::data::DataLoader baseline_loader(labelled_x, labelled_y, lo, augment);
  lo.seed = o.seed + 2;
  kiln::data::DataLoader labelled_loader(labelled_x, labelled_y, lo, augment);
  lo.batch_size = o.batch;
  lo.seed = o.seed + 3;
  kiln::data::DataLoader unlabelled_loader(unlabelled_x, Labels(), lo);
  Cycler baseline_batches(baseline_loader), labelled_batches(labelled_loader),
      unlabelled_batches(unlabelled_loader);

  // Networks: the baseline and D start from the same weights (the same seed and order).
  kiln::Rng init(o.seed);
  auto baseline = std::make_shared<Classifier>(o.dropout, o.input_noise, init);
  kiln::Rng init_gan(o.seed);
  auto d = std::make_shared<Classifier>(o.dropout, o.input_noise, init_gan);
  auto g = std::make_shared<Generator>(o.latent, 0, init_gan);
  kiln::models::SemiSupervisedGANOptions so;
  so.generator_loss = o.g_loss == "fm" ? kiln::models::SemiSupervisedGeneratorLoss::feature_matching
                                       : kiln::models::SemiSupervisedGeneratorLoss::non_saturating;
  so.unsupervised_weight = o.unsupervised_weight;
  auto gan = std::make_shared<SSLGAN>(g, d, o.latent, so);
  kiln::optim::AdamOptions adam;
  adam.lr = o.lr;
  adam.beta1 = o.beta1;
  adam.beta2 = o.beta2;
  kiln::optim::Adam baseline_opt(baseline->parameters(), adam), d_opt(d->parameters(), adam),
      g_opt(g->parameters(), adam);

  long baseline_total = baseline_batches.per_epoch() * o.baseline_epochs;
  if (o.steps >= 0 && o.steps < baseline_total) baseline_total = o.steps;
  long gan_total = unlabelled_batches.per_epoch() * o.epochs;
  if (o.steps >= 0 && o.steps < gan_total) gan_total = o.steps;

  std::filesystem::create_directories(o.out);
  // Checkpoints: the baseline with its optimizer; the GAN (G and D) with D's optimizer; G's
  // optimizer in a third file (io::save_checkpoint takes one optimizer), with an empty module.
  const std::string baseline_ckpt = o.out + "/checkpoint_baseline.safetensors",
                    ckpt = o.out + "/checkpoint.safetensors",
                    g_ckpt = o.out + "/checkpoint_generator_optimizer.safetensors";
  nn::Module no_module;
  kiln::Rng noise(o.seed, 0, 1);  // the latents
  long baseline_step = 0, gan_step = 0;
  bool baseline_done = false;
  Evaluation baseline_eval, gan_eval;
  double baseline_seconds = 0, gan_seconds = 0;
  if (!o.resume.empty()) {
    namespace fs = std::filesystem;
    const fs::path from = fs::is_directory(o.resume) ? fs::path(o.resume) : fs::path(o.resume).parent_path();
    const std::string b_path = (from / "checkpoint_baseline.safetensors").string();
    kiln::io::TrainingState bst = kiln::io::load_checkpoint(b_path, *baseline, baseline_opt);
    baseline_step = bst.step;
    baseline->dropout_generator() = rng_from_text(value_of(bst, "dropout_rng", b_path), b_path);
    baseline->noise_generator() = rng_from_text(value_of(bst, "input_noise_rng", b_path), b_path);
    baseline_done = value_of(bst, "done", b_path) == "1";
    baseline_seconds = std::strtod(value_of(bst, "seconds", b_path).c_str(), nullptr);
    if (baseline_done) {
      baseline_eval.done = true;
      baseline_eval.accuracy = std::strtod(value_of(bst, "test_accuracy", b_path).c_str(), nullptr);
      for (std::size_t c = 0; c < classes; ++c)
        baseline_eval.per_class[c] =
            std::strtod(value_of(bst, "test_accuracy_class_" + std::to_string(c), b_path).c_str(), nullptr);
    }
    const std::string d_path = (from / "checkpoint.safetensors").string();
    if (fs::exists(d_path)) {
      const std::string gp = (from / "checkpoint_generator_optimizer.safetensors").string();
      kiln::io::TrainingState st = kiln::io::load_checkpoint(d_path, *gan, d_opt);
      const kiln::io::TrainingState gst = kiln::io::load_checkpoint(gp, no_module, g_opt);
      if (gst.step != st.step)
        throw std::runtime_error(d_path + " (step " + std::to_string(st.step) + ") and " + gp +
                                 " (step " + std::to_string(gst.step) + ") come from different saves");
      gan_step = st.step;
      noise = st.rng;
      d->dropout_generator() = rng_from_text(value_of(st, "dropout_rng", d_path), d_path);
      d->noise_generator() = rng_from_text(value_of(st, "input_noise_rng", d_path), d_path);
      gan_seconds = std::strtod(value_of(st, "seconds", d_path).c_str(), nullptr);
    }
    std::printf("resumed from %s: baseline step %ld%s, GAN step %ld\n", from.string().c_str(), baseline_step,
                baseline_done ? " (done)" : "", gan_step);
  }
  {
    std::ofstream cfg(o.out + "/config.txt");
    cfg << config << "data_dir " << dir << "\nlabelled_images " << labelled_x.size(0) << "\nunlabelled_images "
        << unlabelled_x.size(0) << "\ntest_images " << test_x.size(0) << "\nbaseline_steps_total " << baseline_total
        << "\ngan_steps_total " << gan_total << "\nlabelled_rows_first";
    for (std::size_t i = 0; i < 10 && i < labelled_rows.size(); ++i) cfg << (i ? "," : " ") << labelled_rows[i];
    cfg << "\n";
  }
  if (o.resume.empty()) {
    // A fresh run: checkpoints left in the folder by an earlier run must not be resumed later.
    std::filesystem::remove(baseline_ckpt);
    std::filesystem::remove(ckpt);
    std::filesystem::remove(g_ckpt);
  }

  const auto save_baseline = [&](long at, double secs) {
    kiln::io::TrainingState st;
    st.step = at;
    st.values["dropout_rng"] = rng_text(baseline->dropout_generator());
    st.values["input_noise_rng"] = rng_text(baseline->noise_generator());
    st.values["done"] = baseline_done ? "1" : "0";
    st.values["seconds"] = std::to_string(secs);
    st.values["test_accuracy"] = std::to_string(baseline_eval.accuracy);
    for (std::size_t c = 0; c < classes; ++c)
      st.values["test_accuracy_class_" + std::to_string(c)] = std::to_string(baseline_eval.per_class[c]);
    kiln::io::save_checkpoint(baseline_ckpt, *baseline, baseline_opt, st);
  };
  const auto save_gan = [&](long at, double secs) {
    kiln::io::TrainingState st;
    st.step = at;
    st.rng = noise;
    st.values["dropout_rng"] = rng_text(d->dropout_generator());
    st.values["input_noise_rng"] = rng_text(d->noise_generator());
    st.values["seconds"] = std::to_string(secs);
    kiln::io::save_checkpoint(g_ckpt, no_module, g_opt, st);
    kiln::io::save_checkpoint(ckpt, *gan, d_opt, st);
  };
  const auto stop_now = [&](const std::string& file) {
    std::printf("\nstopped; checkpoint saved to %s (continue with --resume %s)\n", file.c_str(), file.c_str());
    return 130;
  };

  // (a) The baseline: the classifier on the labelled images alone.
  const bool resumed = !o.resume.empty();
  kiln::io::CsvLog baseline_log(o.out + "/baseline_log.csv",
                                {"step", "epoch", "loss", "train_accuracy", "test_accuracy", "seconds"}, resumed);
  example::Curve baseline_curve = curve_from_log(o.out + "/baseline_log.csv", "baseline CE", "step", "loss");
  if (!baseline_done) {
    std::printf("(a) baseline: %ld labelled images, %ld steps (%.1f epochs)\n", static_cast<long>(labelled_x.size(0)),
                baseline_total, static_cast<double>(baseline_total) / static_cast<double>(baseline_batches.per_epoch()));
    kiln::io::ProgressBar bar("baseline", baseline_total);
    bar.set_start(baseline_step);
    const auto t0 = std::chrono::steady_clock::now();
    const double before = baseline_seconds;
    double sum_loss = 0, sum_acc = 0;
    long window = 0;
    while (baseline_step < baseline_total) {
      if (example::stop_requested()) {
        save_baseline(baseline_step, before + seconds_since(t0));
        return stop_now(baseline_ckpt);
      }
      const kiln::data::Batch b = baseline_batches.at(baseline_step);
      baseline_opt.set_lr(lr_at(o.lr, baseline_step, baseline_total, o.lr_decay));
      baseline_opt.zero_grad();
      const Tensor<float> logits = baseline->classify(baseline->features(b.inputs));
      const Tensor<float> loss = kiln::models::supervised_loss(logits, b.labels);
      loss.backward();
      baseline_opt.step();
      ++baseline_step;
      const Labels guess = kiln::argmax(logits.detach(), 1);
      long right = 0;
      for (index_t i = 0; i < guess.numel(); ++i) right += guess.data()[i] == b.labels.data()[i];
      sum_loss += static_cast<double>(loss.item());
      sum_acc += static_cast<double>(right) / static_cast<double>(guess.numel());
      ++window;
      const bool epoch_end = baseline_step % baseline_batches.per_epoch() == 0;
      const bool last = baseline_step == baseline_total;
      if (epoch_end) {
        const long epoch = baseline_step / baseline_batches.per_epoch();
        double test_acc = std::nan("");
        if (last) {
          baseline_eval = evaluate(*baseline, test_x, test_y);
          test_acc = baseline_eval.accuracy;
        }
        const double n = static_cast<double>(window);
        baseline_log.row({double(baseline_step), double(epoch), sum_loss / n, sum_acc / n, test_acc,
                          before + seconds_since(t0)});
        baseline_curve.x.push_back(double(baseline_step));
        baseline_curve.y.push_back(sum_loss / n);
        sum_loss = sum_acc = 0;
        window = 0;
      }
      char text[96];
      std::snprintf(text, sizeof text, "epoch %ld CE %.3f", baseline_step / baseline_batches.per_epoch() + 1,
                    static_cast<double>(loss.item()));
      bar.update(baseline_step, text);
    }
    if (!baseline_eval.done) baseline_eval = evaluate(*baseline, test_x, test_y);
    baseline_done = true;
    baseline_seconds = before + seconds_since(t0);
    save_baseline(baseline_step, baseline_seconds);
    std::printf("baseline: test accuracy %.2f %% after %ld steps (%.1f s)\n", 100 * baseline_eval.accuracy,
                baseline_step, baseline_seconds);
  } else {
    std::printf("(a) baseline: done earlier, test accuracy %.2f %%\n", 100 * baseline_eval.accuracy);
  }

  // (b) The semi-supervised GAN.
  kiln::Rng fixed_rng(o.seed, 0, 7);
  const Tensor<float> fixed_z = gan->latent(64, fixed_rng);
  const auto write_samples = [&] {
    g->eval();
    const Tensor<float> x = [&] {
      kiln::NoGrad guard;
      return gan->generate(fixed_z);
    }();
    g->train();
    example::save_grid(o.out + "/samples.png", x, 8, -1.0, 1.0);
  };
  kiln::io::CsvLog log(o.out + "/log.csv",
                       {"step", "epoch", "d_loss", "supervised", "unsupervised", "g_loss", "d_real", "d_fake",
                        "labelled_accuracy", "test_accuracy", "seconds"},
                       resumed);
  const std::string log_path = o.out + "/log.csv";
  example::Curve sup_curve = curve_from_log(log_path, "SSL-GAN D supervised CE", "step", "supervised"),
                 unsup_curve = curve_from_log(log_path, "SSL-GAN D unsupervised", "step", "unsupervised"),
                 g_curve = curve_from_log(log_path, "SSL-GAN G feature matching", "step", "g_loss"),
                 acc_curve = curve_from_log(log_path, "SSL-GAN test accuracy", "step", "test_accuracy");
  if (o.g_loss != "fm") g_curve.name = "SSL-GAN G loss";
  std::printf("(b) semi-supervised GAN: %ld labelled + %ld unlabelled images, %ld steps\n",
              static_cast<long>(labelled_x.size(0)), static_cast<long>(unlabelled_x.size(0)), gan_total);
  kiln::io::ProgressBar bar("SSL-GAN", gan_total);
  bar.set_start(gan_step);
  const auto t0 = std::chrono::steady_clock::now();
  const double before = gan_seconds;
  double s_d = 0, s_sup = 0, s_unsup = 0, s_g = 0, s_real = 0, s_fake = 0, s_acc = 0;
  long window = 0;
  kiln::models::SemiSupervisedStepResult last{};
  while (gan_step < gan_total) {
    if (example::stop_requested()) {
      save_gan(gan_step, before + seconds_since(t0));
      return stop_now(ckpt);
    }
    const kiln::data::Batch lab = labelled_batches.at(gan_step);
    const kiln::data::Batch unl = unlabelled_batches.at(gan_step);
    d_opt.set_lr(lr_at(o.lr, gan_step, gan_total, o.lr_decay));
    g_opt.set_lr(lr_at(o.lr, gan_step, gan_total, o.lr_decay));
    const auto r = gan->train_step(lab.inputs, lab.labels, unl.inputs, noise, g_opt, d_opt);
    ++gan_step;
    s_d += r.d_loss, s_sup += r.supervised, s_unsup += r.unsupervised, s_g += r.g_loss;
    s_real += r.d_real, s_fake += r.d_fake, s_acc += r.labelled_accuracy;
    ++window;
    const bool eval_now = gan_step % o.eval_every == 0 || gan_step == gan_total;
    if (gan_step % o.log_every == 0 || eval_now) {
      const double n = static_cast<double>(window);
      last = {s_d / n, s_sup / n, s_unsup / n, s_g / n, s_real / n, s_fake / n, s_acc / n};
      double test_acc = std::nan("");
      if (eval_now) {
        gan_eval = evaluate(*d, test_x, test_y);
        test_acc = gan_eval.accuracy;
        acc_curve.x.push_back(double(gan_step));
        acc_curve.y.push_back(test_acc);
      }
      log.row({double(gan_step), double(gan_step / unlabelled_batches.per_epoch() + 1), last.d_loss, last.supervised,
               last.unsupervised, last.g_loss, last.d_real, last.d_fake, last.labelled_accuracy, test_acc,
               before + seconds_since(t0)});
      sup_curve.x.push_back(double(gan_step));
      sup_curve.y.push_back(last.supervised);
      unsup_curve.x.push_back(double(gan_step));
      unsup_curve.y.push_back(last.unsupervised);
      g_curve.x.push_back(double(gan_step));
      g_curve.y.push_back(last.g_loss);
      s_d = s_sup = s_unsup = s_g = s_real = s_fake = s_acc = 0;
      window = 0;
      if (eval_now) {
        std::printf("\nstep %ld: SSL-GAN test accuracy %.2f %% (baseline %.2f %%), D(real) %.2f D(fake) %.2f\n",
                    gan_step, 100 * test_acc, 100 * baseline_eval.accuracy, last.d_real, last.d_fake);
        if (gan_step < gan_total) {
          save_gan(gan_step, before + seconds_since(t0));
          write_samples();
        }
      }
    }
    char text[112];
    std::snprintf(text, sizeof text, "CE %.3f unsup %.3f G %.3f D(x) %.2f D(G(z)) %.2f", r.supervised,
                  r.unsupervised, r.g_loss, r.d_real, r.d_fake);
    bar.update(gan_step, text);
  }
  gan_seconds = before + seconds_since(t0);
  if (!gan_eval.done) gan_eval = evaluate(*d, test_x, test_y);
  save_gan(gan_step, gan_seconds);
  write_samples();
  example::save_curves(o.out + "/loss.png",
                       "losses, SSL-GAN per " + std::to_string(o.log_every) + " steps, baseline per epoch",
                       {sup_curve, unsup_curve, g_curve, baseline_curve}, /*log_y=*/true);
  if (!acc_curve.x.empty()) {
    example::Curve base_line{"baseline (final)", {0.0, acc_curve.x.back()},
                             {baseline_eval.accuracy, baseline_eval.accuracy}};
    example::save_curves(o.out + "/accuracy.png", "test accuracy", {acc_curve, base_line});
  }
  kiln::io::save_module(o.out + "/model.safetensors", *gan);
  kiln::io::save_module(o.out + "/baseline.safetensors", *baseline);

  std::ofstream summary(o.out + "/summary.txt");
  summary << "labels_per_class " << o.labels_per_class << "\nlabelled_images " << labelled_x.size(0)
          << "\nunlabelled_images " << unlabelled_x.size(0) << "\ntest_images " << test_x.size(0)
          << "\nbaseline_test_accuracy " << baseline_eval.accuracy << "\nssl_gan_test_accuracy " << gan_eval.accuracy
          << "\nbaseline_steps " << baseline_step << "\nbaseline_seconds " << baseline_seconds << "\ngan_steps "
          << gan_step << "\ngan_seconds " << gan_seconds << "\ngan_steps_per_second "
          << (gan_seconds > 0 ? static_cast<double>(gan_step) / gan_seconds : 0.0) << "\nthreads " << kiln::num_threads()
          << "\nd_real " << last.d_real << "\nd_fake " << last.d_fake << "\ng_loss " << last.g_loss << "\n";
  for (std::size_t c = 0; c < classes; ++c)
    summary << "baseline_class_" << c << " " << baseline_eval.per_class[c] << "\nssl_gan_class_" << c << " "
            << gan_eval.per_class[c] << "\n";
  std::printf("\n%-14s %10s %10s\n", "test accuracy", "baseline", "SSL-GAN");
  for (std::size_t c = 0; c < classes; ++c)
    std::printf("%-14s %9.1f%% %9.1f%%\n", kiln::data::fashion_mnist_classes[c], 100 * baseline_eval.per_class[c],
                100 * gan_eval.per_class[c]);
  std::printf("%-14s %9.2f%% %9.2f%%\n", "all (10,000)", 100 * baseline_eval.accuracy, 100 * gan_eval.accuracy);
  std::printf("with %ld labels (%ld per class); baseline %.1f s, SSL-GAN %ld steps in %.1f s; wrote %s/ (summary.txt, "
              "samples.png, loss.png, accuracy.png, log.csv, baseline_log.csv, model.safetensors)\n",
              static_cast<long>(labelled_x.size(0)), o.labels_per_class, baseline_seconds, gan_step, gan_seconds,
              o.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  example::Cli cli("semisupervised",
                   "semi-supervised Fashion-MNIST: a K+1-class GAN discriminator (Salimans et al. 2016) "
                   "against a classifier trained on the labels alone");
  cli.add("--data", o.data,
          "Fashion-MNIST IDX folder (default: $KILN_FASHION_MNIST or Debian's dataset-fashion-mnist)", "DIR");
  cli.add("--out", o.out, "output folder", "DIR");
  cli.add("--labels-per-class", o.labels_per_class, "labelled training images per class (seeded, balanced)");
  cli.add("--epochs", o.epochs, "GAN epochs (passes over the unlabelled images); --steps caps them");
  cli.add("--steps", o.steps, "cap on the steps of each phase, baseline and GAN (-1: the epochs decide)");
  cli.add("--baseline-epochs", o.baseline_epochs, "epochs of the baseline over the labelled images");
  cli.add("--batch", o.batch, "unlabelled (and generated) images per GAN step");
  cli.add("--labelled-batch", o.labelled_batch, "labelled images per step (both models)");
  cli.add("--lr", o.lr, "Adam learning rate (all networks)");
  cli.add("--lr-decay", o.lr_decay,
          "fraction at the end of each run (baseline, GAN) over which the lr falls linearly to 0");
  cli.add("--beta1", o.beta1, "Adam beta1");
  cli.add("--beta2", o.beta2, "Adam beta2");
  cli.add("--latent", o.latent, "latent dimensions of G");
  cli.add("--g-loss", o.g_loss, "generator loss: fm (feature matching, the paper's) or nonsat (-log D(G(z)))",
          "NAME");
  cli.add("--unsupervised-weight", o.unsupervised_weight, "weight of D's real/fake loss");
  cli.add("--dropout", o.dropout, "dropout before the classifier's head (both models)");
  cli.add("--input-noise", o.input_noise,
          "std of Gaussian noise added to the classifier's input in training (both models; 0: off)");
  cli.flag("--no-augment", o.no_augment, "no crop/flip augmentation of the labelled images");
  cli.add("--eval-every", o.eval_every, "GAN steps between test evaluations (and checkpoints, sample grids)");
  cli.add("--log-every", o.log_every, "GAN steps per row of log.csv");
  cli.add("--threads", o.threads, "CPU threads (0: KILN_NUM_THREADS or all cores)");
  cli.add("--seed", o.seed, "seed of the labelled subset, initialization, shuffling, augmentation and noise");
  cli.flag("--deterministic", o.deterministic, "one thread, so runs repeat bit for bit on any core count");
  cli.add("--resume", o.resume,
          "continue an earlier run from its checkpoint (any of its checkpoint files, or its folder)", "PATH");
  try {
    cli.parse(argc, argv);
    if (o.labels_per_class < 1 || o.epochs < 0 || o.baseline_epochs < 0 || o.batch < 1 || o.labelled_batch < 1 ||
        o.latent < 1 || !(o.lr > 0) || o.eval_every < 1 || o.log_every < 1)
      throw std::runtime_error(
          "--labels-per-class, --batch, --labelled-batch, --latent, --lr, --eval-every and --log-every must be "
          "positive; --epochs and --baseline-epochs non-negative");
    if (o.g_loss != "fm" && o.g_loss != "nonsat")
      throw std::runtime_error("--g-loss must be fm or nonsat, got '" + o.g_loss + "'");
    if (!(o.input_noise >= 0)) throw std::runtime_error("--input-noise must be non-negative");
    if (!(o.lr_decay >= 0 && o.lr_decay <= 1)) throw std::runtime_error("--lr-decay must be in [0, 1]");
    if (!(o.dropout >= 0 && o.dropout < 1)) throw std::runtime_error("--dropout must be in [0, 1)");
    if (!(o.unsupervised_weight >= 0)) throw std::runtime_error("--unsupervised-weight must be non-negative");
    return run(o, cli.config());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "semisupervised: %s\n", e.what());
    return 1;
  }
}
