// train_fashion_features — trains kiln's Fashion-MNIST feature network
// (kiln/metrics/fashion_features.hpp) on the 60,000 training images (random crop with padding 2
// and horizontal flips; Adam with cosine learning-rate decay), reports test accuracy after every
// epoch and writes the weights (with the accuracy, seed and epochs in the file's metadata) to
// weights/fashion-features.safetensors, the file kiln's FID and Inception Score use by default.
//
//   train_fashion_features [--data DIR] [--epochs N] [--out FILE] [--threads N] [--seed N]
#include "../examples/common.hpp"

#include <kiln/data/augment.hpp>
#include <kiln/data/fashion_mnist.hpp>
#include <kiln/data/loader.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/progress.hpp>
#include <kiln/metrics/fashion_features.hpp>
#include <kiln/ops/loss.hpp>
#include <kiln/optim/adam.hpp>
#include <kiln/optim/schedule.hpp>

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

namespace {

using kiln::index_t;
using kiln::Tensor;

struct Options {
  std::string data;
  std::string out = "weights/fashion-features.safetensors";
  int epochs = 12;
  long batch = 128;
  double lr = 2e-3;
  int threads = 0;
  std::uint64_t seed = 0;
};

double accuracy(kiln::metrics::FashionFeatureNet& net, const kiln::data::Dataset& test) {
  const auto out = kiln::metrics::evaluate_features(net, test.images);
  const auto pred = kiln::argmax(out.logits, 1);
  index_t correct = 0;
  for (index_t i = 0; i < test.labels.size(0); ++i) correct += pred.data()[i] == test.labels.data()[i];
  return static_cast<double>(correct) / static_cast<double>(test.labels.size(0));
}

int run(const Options& o) {
  if (o.threads > 0) kiln::set_num_threads(o.threads);
  const std::string dir = kiln::data::find_fashion_mnist_dir(o.data);
  std::printf("kiln %s, %d threads, data %s\n", kiln::version(), kiln::num_threads(), dir.c_str());
  const auto train = kiln::data::load_fashion_mnist(dir, "train");
  const auto test = kiln::data::load_fashion_mnist(dir, "test");

  kiln::Rng rng(o.seed);
  kiln::metrics::FashionFeatureNet net(rng);
  kiln::optim::AdamOptions adam;
  adam.lr = o.lr;
  kiln::optim::Adam opt(net.parameters(), adam);

  kiln::data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.seed = o.seed;
  const index_t n = train.images.size(0);
  kiln::data::DataLoader loader(train.images.reshape({n, 1, 28, 28}), train.labels, lo,
                                kiln::data::Compose{kiln::data::RandomCrop{28, 28, 2}, kiln::data::RandomHorizontalFlip{0.5}});
  const long per_epoch = loader.num_batches(), total = per_epoch * o.epochs;
  kiln::optim::CosineAnnealingLR schedule(opt, total);

  kiln::io::ProgressBar bar("train", total);
  const auto t0 = std::chrono::steady_clock::now();
  long step = 0;
  double acc = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    loader.start_epoch(static_cast<std::uint64_t>(epoch));
    net.train();
    while (auto batch = loader.next()) {
      opt.zero_grad();
      Tensor<float> loss = kiln::cross_entropy(net.forward(batch->inputs), batch->labels);
      loss.backward();
      opt.step();
      schedule.step();
      ++step;
      char text[64];
      std::snprintf(text, sizeof text, "epoch %d loss %.4f", epoch + 1, loss.item());
      bar.update(step, text);
      if (example::stop_requested()) return 130;
    }
    acc = accuracy(net, test);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("epoch %d test_accuracy %.4f (%.0f s)\n", epoch + 1, acc, secs);
  }
  const std::filesystem::path out(o.out);
  if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
  char accuracy_text[32];
  std::snprintf(accuracy_text, sizeof accuracy_text, "%.4f", acc);
  kiln::io::save_module(o.out, net,
                        {{"network", "kiln::metrics::FashionFeatureNet"},
                         {"test_accuracy", accuracy_text},
                         {"epochs", std::to_string(o.epochs)},
                         {"seed", std::to_string(o.seed)},
                         {"kiln", kiln::version()}});
  std::printf("test_accuracy %.4f; wrote %s\n", acc, o.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  example::Cli cli("train_fashion_features", "trains kiln's Fashion-MNIST feature network (features for FID and IS)");
  cli.add("--data", o.data, "Fashion-MNIST folder (default: $KILN_FASHION_MNIST or Debian's dataset-fashion-mnist)", "DIR");
  cli.add("--out", o.out, "weights file to write", "FILE");
  cli.add("--epochs", o.epochs, "epochs to train");
  cli.add("--batch", o.batch, "batch size");
  cli.add("--lr", o.lr, "Adam learning rate at the start of the cosine decay");
  cli.add("--threads", o.threads, "CPU threads (0: KILN_NUM_THREADS or all cores)");
  cli.add("--seed", o.seed, "seed of the initialization, shuffling and augmentation");
  try {
    cli.parse(argc, argv);
    if (o.epochs < 1 || o.batch < 1 || !(o.lr > 0)) throw std::runtime_error("--epochs, --batch and --lr must be positive");
    example::install_stop_handler();
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_fashion_features: error: %s\n", e.what());
    return 1;
  }
}
