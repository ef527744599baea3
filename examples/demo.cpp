// demo — trains a softmax-regression classifier on Fashion-MNIST with kiln's tensors, fused
// expressions, reductions and GEMM (gradients derived by hand), reports test accuracy per epoch
// and the speed of the kernels it used, and writes a CSV log and a JSON summary.
//
//   demo --data DIR [--epochs N] [--batch B] [--lr X] [--threads N] [--seed N] [--out DIR]
//
// DIR holds the Fashion-MNIST IDX files (train-images-idx3-ubyte, ...), uncompressed.
#include <kiln/kiln.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using kiln::index_t;
using kiln::Tensor;

struct Options {
  std::string data;
  std::string out = "demo-out";
  int epochs = 5;
  index_t batch = 128;
  float lr = 0.1f;
  int threads = 0;
  std::uint64_t seed = 0;
};

void usage() {
  std::printf(
      "demo: softmax regression on Fashion-MNIST with kiln\n\n"
      "  --data DIR     folder with the uncompressed Fashion-MNIST IDX files (required)\n"
      "  --epochs N     passes over the 60,000 training images (default 5)\n"
      "  --batch B      minibatch size (default 128)\n"
      "  --lr X         SGD learning rate (default 0.1)\n"
      "  --threads N    kiln threads (default: KILN_NUM_THREADS or all cores)\n"
      "  --seed N       seed of the shuffling RNG (default 0)\n"
      "  --out DIR      where log.csv and summary.json go (default demo-out)\n");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("option " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else if (a == "--data") {
      o.data = value();
    } else if (a == "--out") {
      o.out = value();
    } else if (a == "--epochs") {
      o.epochs = std::stoi(value());
    } else if (a == "--batch") {
      o.batch = std::stoll(value());
    } else if (a == "--lr") {
      o.lr = std::stof(value());
    } else if (a == "--threads") {
      o.threads = std::stoi(value());
    } else if (a == "--seed") {
      o.seed = std::stoull(value());
    } else {
      throw std::runtime_error("unknown option " + a + " (see --help)");
    }
  }
  if (o.data.empty()) throw std::runtime_error("--data DIR is required (see --help)");
  if (o.epochs < 1 || o.batch < 1) throw std::runtime_error("--epochs and --batch must be positive");
  return o;
}

std::vector<unsigned char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::uint32_t be32(const std::vector<unsigned char>& b, std::size_t off) {
  return (std::uint32_t(b[off]) << 24) | (std::uint32_t(b[off + 1]) << 16) | (std::uint32_t(b[off + 2]) << 8) |
         std::uint32_t(b[off + 3]);
}

// IDX images (magic 0x00000803) as a float tensor [n, rows*cols] scaled to [0, 1].
Tensor<float> load_images(const std::string& path) {
  const auto b = read_file(path);
  if (b.size() < 16 || be32(b, 0) != 0x803) throw std::runtime_error(path + ": not an IDX image file (bad magic at offset 0)");
  const std::size_t n = be32(b, 4), rows = be32(b, 8), cols = be32(b, 12);
  if (b.size() != 16 + n * rows * cols)
    throw std::runtime_error(path + ": expected " + std::to_string(16 + n * rows * cols) + " bytes, found " +
                             std::to_string(b.size()));
  auto t = kiln::empty<float>({static_cast<index_t>(n), static_cast<index_t>(rows * cols)});
  for (std::size_t i = 0; i < n * rows * cols; ++i) t.data()[i] = static_cast<float>(b[16 + i]) / 255.0f;
  return t;
}

// IDX labels (magic 0x00000801) as a float tensor [n].
Tensor<float> load_labels(const std::string& path) {
  const auto b = read_file(path);
  if (b.size() < 8 || be32(b, 0) != 0x801) throw std::runtime_error(path + ": not an IDX label file (bad magic at offset 0)");
  const std::size_t n = be32(b, 4);
  if (b.size() != 8 + n) throw std::runtime_error(path + ": truncated label file");
  auto t = kiln::empty<float>({static_cast<index_t>(n)});
  for (std::size_t i = 0; i < n; ++i) {
    if (b[8 + i] > 9) throw std::runtime_error(path + ": label out of range at offset " + std::to_string(8 + i));
    t.data()[i] = static_cast<float>(b[8 + i]);
  }
  return t;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Fraction of rows whose arg-max logit equals the label.
double accuracy(const Tensor<float>& x, const Tensor<float>& y, const Tensor<float>& w, const Tensor<float>& b) {
  Tensor<float> logits = kiln::matmul(x, w) + b;
  auto pred = kiln::argmax(logits, 1);
  index_t correct = 0;
  for (index_t i = 0; i < pred.numel(); ++i) correct += static_cast<float>(pred.data()[i]) == y.data()[i];
  return static_cast<double>(correct) / static_cast<double>(pred.numel());
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options opt = parse(argc, argv);
    if (opt.threads > 0) kiln::set_num_threads(opt.threads);
    std::filesystem::create_directories(opt.out);
    const auto dir = std::filesystem::path(opt.data);
    auto t0 = Clock::now();
    auto x_train = load_images((dir / "train-images-idx3-ubyte").string());
    auto y_train = load_labels((dir / "train-labels-idx1-ubyte").string());
    auto x_test = load_images((dir / "t10k-images-idx3-ubyte").string());
    auto y_test = load_labels((dir / "t10k-labels-idx1-ubyte").string());
    std::printf("kiln %s | SIMD %s | %d threads\n", KILN_VERSION_STRING, KILN_SIMD_NAME,
                kiln::num_threads());
    std::printf("loaded Fashion-MNIST: %lld train, %lld test images of %lld pixels (%.2f s)\n",
                static_cast<long long>(x_train.size(0)), static_cast<long long>(x_test.size(0)),
                static_cast<long long>(x_train.size(1)), seconds_since(t0));

    const index_t n = x_train.size(0), d = x_train.size(1), k = 10, B = opt.batch;
    kiln::Rng rng(opt.seed);
    Tensor<float> w = kiln::zeros<float>({d, k});
    Tensor<float> b = kiln::zeros<float>({k});
    auto classes = kiln::arange<float>(static_cast<float>(k));
    auto xb = kiln::empty<float>({B, d});
    auto yb = kiln::empty<float>({B});

    std::ofstream log(std::filesystem::path(opt.out) / "log.csv");
    log << "epoch,step,train_loss,test_accuracy,seconds\n";
    double last_acc = 0, train_seconds = 0, last_loss = 0;
    index_t step = 0;
    for (int epoch = 1; epoch <= opt.epochs; ++epoch) {
      auto perm = kiln::randperm(n, rng);
      const auto te = Clock::now();
      double loss_sum = 0;
      index_t loss_count = 0;
      for (index_t start = 0; start + B <= n; start += B, ++step) {
        // Gather the minibatch rows.
        for (index_t r = 0; r < B; ++r) {
          const index_t src = perm.data()[start + r];
          std::memcpy(xb.data() + r * d, x_train.data() + src * d, sizeof(float) * static_cast<std::size_t>(d));
          yb.data()[r] = y_train.data()[src];
        }
        // Forward: logits, log-softmax through a stable logsumexp.
        Tensor<float> logits = kiln::matmul(xb, w) + b;
        auto lse = kiln::logsumexp(logits, 1, true);
        Tensor<float> onehot = classes == yb.unsqueeze(1);
        // Cross-entropy: mean over rows of lse - logit[label].
        auto picked = kiln::sum(logits * onehot, 1, true);
        const float loss = kiln::mean(lse - picked).item();
        loss_sum += loss;
        ++loss_count;
        // Backward by hand: dL/dlogits = (softmax - onehot) / B.
        Tensor<float> g = (kiln::exp(logits - lse) - onehot) * (1.0f / static_cast<float>(B));
        auto grad_w = kiln::matmul(xb.t(), g);
        auto grad_b = kiln::sum(g, 0);
        w -= grad_w * opt.lr;
        b -= grad_b * opt.lr;
      }
      const double secs = seconds_since(te);
      train_seconds += secs;
      last_loss = loss_sum / static_cast<double>(loss_count);
      last_acc = accuracy(x_test, y_test, w, b);
      std::printf("epoch %d: train loss %.4f, test accuracy %.2f %% (%.2f s, %.0f images/s)\n", epoch, last_loss,
                  100.0 * last_acc, secs, static_cast<double>(n) / secs);
      log << epoch << ',' << step << ',' << last_loss << ',' << last_acc << ',' << secs << '\n';
    }

    // Kernel speeds on this machine.
    auto a = kiln::randn<float>({512, 512}, rng), c = kiln::randn<float>({512, 512}, rng);
    auto tg = Clock::now();
    int reps = 0;
    while (seconds_since(tg) < 0.5 || reps < 3) {
      auto p = kiln::matmul(a, c);
      ++reps;
    }
    const double gflops = 2.0 * 512 * 512 * 512 * reps / seconds_since(tg) / 1e9;
    auto big = kiln::randn<float>({1 << 22}, rng), yv = kiln::randn<float>({1 << 22}, rng);
    auto tf = Clock::now();
    reps = 0;
    while (seconds_since(tf) < 0.5 || reps < 3) {
      yv.assign(0.5f * big + 0.25f * yv + 1e-3f);
      ++reps;
    }
    const double gbs = 12.0 * (1 << 22) * reps / seconds_since(tf) / 1e9;
    std::printf("SGEMM 512x512x512: %.1f GFLOP/s; fused y = a*x + b*y + c: %.1f GB/s\n", gflops, gbs);

    std::ofstream summary(std::filesystem::path(opt.out) / "summary.json");
    summary << "{\n  \"model\": \"softmax regression 784-10\",\n  \"data\": \"Fashion-MNIST\",\n"
            << "  \"epochs\": " << opt.epochs << ",\n  \"final_train_loss\": " << last_loss
            << ",\n  \"test_accuracy\": " << last_acc << ",\n  \"train_seconds\": " << train_seconds
            << ",\n  \"sgemm_512_gflops\": " << gflops << ",\n  \"fused_axpby_gbs\": " << gbs
            << ",\n  \"threads\": " << kiln::num_threads() << "\n}\n";
    std::printf("wrote %s/log.csv and %s/summary.json\n", opt.out.c_str(), opt.out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "demo: %s\n", e.what());
    return 1;
  }
}
