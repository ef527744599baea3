// mlp — trains the W2 classifier (784-512-512-10, ReLU, cross-entropy, Adam 1e-3, batch 128) on
// Fashion-MNIST with kiln's autograd, reports test accuracy after every epoch, and writes a CSV
// log, the run's configuration, a checkpoint per epoch (resumable bit for bit) and the final
// weights as safetensors (names as PyTorch's nn.Sequential: 0.weight, 2.weight, 4.weight).
//
//   mlp [--data DIR] [--epochs N] [--steps N] [--batch B] [--lr X] [--threads N] [--seed N]
//       [--out DIR] [--resume FILE]
#include <kiln/data/fashion_mnist.hpp>
#include <kiln/data/loader.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/progress.hpp>
#include <kiln/kiln.hpp>
#include <kiln/nn/nn.hpp>
#include <kiln/ops/loss.hpp>
#include <kiln/optim/optim.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

namespace {

using kiln::index_t;
using kiln::Tensor;

struct Options {
  std::string data;
  std::string out = "mlp-out";
  std::string resume;
  int epochs = 10;
  long steps = -1;  // cap on the total number of steps (-1: epochs decide)
  index_t batch = 128;
  double lr = 1e-3;
  int threads = 0;
  std::uint64_t seed = 0;
};

void usage() {
  std::printf(
      "mlp: trains a 784-512-512-10 MLP classifier on Fashion-MNIST with kiln\n\n"
      "  --data DIR      Fashion-MNIST IDX files, .gz or not (default: $KILN_FASHION_MNIST or\n"
      "                  /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist)\n"
      "  --epochs N      epochs to train (default 10)\n"
      "  --steps N       stop after N steps in total (default: no cap)\n"
      "  --batch B       batch size (default 128)\n"
      "  --lr X          Adam learning rate (default 0.001)\n"
      "  --threads N     CPU threads (default: KILN_NUM_THREADS or all cores)\n"
      "  --seed N        seed of the initialization and the shuffling (default 0)\n"
      "  --out DIR       output folder (default mlp-out): log.csv, config.txt, checkpoint.safetensors,\n"
      "                  model.safetensors\n"
      "  --resume FILE   continue from a checkpoint written by an earlier run\n"
      "  --help          this text;  --version  kiln's version\n");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("option " + a + " needs a value (see --help)");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else if (a == "--version") {
      std::printf("mlp (kiln %s)\n", kiln::version());
      std::exit(0);
    } else if (a == "--data") {
      o.data = value();
    } else if (a == "--out") {
      o.out = value();
    } else if (a == "--resume") {
      o.resume = value();
    } else if (a == "--epochs") {
      o.epochs = std::stoi(value());
    } else if (a == "--steps") {
      o.steps = std::stol(value());
    } else if (a == "--batch") {
      o.batch = std::stol(value());
    } else if (a == "--lr") {
      o.lr = std::stod(value());
    } else if (a == "--threads") {
      o.threads = std::stoi(value());
    } else if (a == "--seed") {
      o.seed = std::stoull(value());
    } else {
      throw std::runtime_error("unknown option " + a + " (see --help)");
    }
  }
  if (o.epochs < 1 || o.batch < 1 || !(o.lr > 0)) throw std::runtime_error("--epochs, --batch and --lr must be positive");
  return o;
}

// Test accuracy in eval mode, without recording.
double accuracy(kiln::nn::Sequential& model, const kiln::data::Dataset& test) {
  kiln::NoGrad guard;
  model.eval();
  index_t correct = 0;
  const index_t n = test.images.size(0);
  for (index_t b = 0; b < n; b += 1000) {
    const index_t e = std::min(n, b + 1000);
    Tensor<float> logits = model.forward(test.images.slice(0, b, e));
    auto pred = kiln::argmax(logits, 1);
    for (index_t i = 0; i < e - b; ++i) correct += pred.data()[i] == test.labels.data()[b + i];
  }
  model.train();
  return static_cast<double>(correct) / static_cast<double>(n);
}

int run(const Options& o) {
  if (o.threads > 0) kiln::set_num_threads(o.threads);
  const std::string dir = kiln::data::find_fashion_mnist_dir(o.data);
  std::printf("kiln %s, %d threads, data %s\n", kiln::version(), kiln::num_threads(), dir.c_str());
  const auto train = kiln::data::load_fashion_mnist(dir, "train");
  const auto test = kiln::data::load_fashion_mnist(dir, "test");

  kiln::Rng init_rng(o.seed);
  kiln::nn::Sequential model;
  model.push_back(std::make_shared<kiln::nn::Linear>(784, 512, init_rng));
  model.push_back(std::make_shared<kiln::nn::ReLU>());
  model.push_back(std::make_shared<kiln::nn::Linear>(512, 512, init_rng));
  model.push_back(std::make_shared<kiln::nn::ReLU>());
  model.push_back(std::make_shared<kiln::nn::Linear>(512, 10, init_rng));
  kiln::optim::AdamOptions adam;
  adam.lr = o.lr;
  kiln::optim::Adam opt(model.parameters(), adam);

  kiln::data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.seed = o.seed;
  kiln::data::DataLoader loader(train.images, train.labels, lo);
  const long per_epoch = loader.num_batches();
  long total = per_epoch * o.epochs;
  if (o.steps >= 0 && o.steps < total) total = o.steps;

  std::filesystem::create_directories(o.out);
  long step = 0;
  if (!o.resume.empty()) {
    kiln::io::TrainingState st = kiln::io::load_checkpoint(o.resume, model, opt);
    step = st.step;
    std::printf("resumed from %s at step %ld\n", o.resume.c_str(), step);
  }
  {
    std::ofstream cfg(o.out + "/config.txt");
    cfg << "program mlp\nkiln " << kiln::version() << "\ndata " << dir << "\nepochs " << o.epochs << "\nsteps "
        << total << "\nbatch " << o.batch << "\nlr " << o.lr << "\nthreads " << kiln::num_threads() << "\nseed "
        << o.seed << "\nresume " << o.resume << "\n";
  }
  kiln::io::CsvLog log(o.out + "/log.csv", {"step", "epoch", "train_loss", "test_accuracy", "seconds"},
                       !o.resume.empty());
  kiln::io::ProgressBar bar("train", total);
  bar.set_start(step);
  const auto t0 = std::chrono::steady_clock::now();
  double acc = 0;
  while (step < total) {
    const long epoch = step / per_epoch;
    loader.start_epoch(static_cast<std::uint64_t>(epoch), step % per_epoch);
    double loss_sum = 0;
    long loss_count = 0;
    while (step < total && step / per_epoch == epoch) {
      auto batch = loader.next();
      if (!batch) break;
      opt.zero_grad();
      Tensor<float> logits = model.forward(batch->inputs);
      Tensor<float> loss = kiln::cross_entropy(logits, batch->labels);
      loss.backward();
      opt.step();
      ++step;
      const double l = loss.item();
      loss_sum += l;
      ++loss_count;
      char text[64];
      std::snprintf(text, sizeof text, "epoch %ld loss %.4f", epoch + 1, l);
      bar.update(step, text);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    acc = accuracy(model, test);
    const double mean_loss = loss_count ? loss_sum / static_cast<double>(loss_count) : 0.0;
    std::printf("epoch %ld step %ld train_loss %.4f test_accuracy %.4f (%.1f s)\n", epoch + 1, step, mean_loss, acc,
                secs);
    log.row({static_cast<double>(step), static_cast<double>(epoch + 1), mean_loss, acc, secs});
    kiln::io::TrainingState st;
    st.step = step;
    kiln::io::save_checkpoint(o.out + "/checkpoint.safetensors", model, opt, st);
  }
  kiln::io::save_module(o.out + "/model.safetensors", model);
  std::printf("test_accuracy %.4f after %ld steps; wrote %s/\n", acc, step, o.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mlp: %s\n", e.what());
    return 1;
  }
}
