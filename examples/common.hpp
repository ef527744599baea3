// examples/common.hpp — what the example programs share: a small command-line parser that also
// writes the run's configuration, a Ctrl-C handler that asks the training loop to stop (so it can
// save a checkpoint first), the image/plot outputs of a run, and the sample-quality figures (FID and
// Inception Score through kiln's Fashion-MNIST feature network).
#pragma once

#include <kiln/core/tensor.hpp>
#include <kiln/metrics/fashion_features.hpp>
#include <kiln/metrics/fid.hpp>
#include <kiln/metrics/inception_score.hpp>
#include <kiln/io/plot.hpp>
#include <kiln/io/png.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/version.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace example {

// Options by name ("--epochs"), each bound to a variable; --help and --version built in.
class Cli {
 public:
  Cli(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  void add(const std::string& name, std::string& v, const std::string& help, const char* value_name = "TEXT") {
    bind(name, value_name, help, [&v](const std::string& s) { v = s; }, [&v] { return v; });
  }
  void add(const std::string& name, int& v, const std::string& help) {
    bind(name, "N", help, [&v, name](const std::string& s) { v = static_cast<int>(integer(name, s)); },
         [&v] { return std::to_string(v); });
  }
  void add(const std::string& name, long& v, const std::string& help) {
    bind(name, "N", help, [&v, name](const std::string& s) { v = integer(name, s); }, [&v] { return std::to_string(v); });
  }
  void add(const std::string& name, std::uint64_t& v, const std::string& help) {
    bind(name, "N", help,
         [&v, name](const std::string& s) {
           const long long x = integer(name, s);
           if (x < 0) throw std::runtime_error(name + " must not be negative");
           v = static_cast<std::uint64_t>(x);
         },
         [&v] { return std::to_string(v); });
  }
  void add(const std::string& name, double& v, const std::string& help) {
    bind(name, "X", help, [&v, name](const std::string& s) { v = real(name, s); },
         [&v] {
           std::ostringstream o;
           o.precision(17);
           o << v;
           return o.str();
         });
  }
  // A flag without a value.
  void flag(const std::string& name, bool& v, const std::string& help) {
    options_.push_back({name, "", help, [&v](const std::string&) { v = true; }, [&v] { return std::string(v ? "true" : "false"); }, true});
  }

  // Parses argv; prints the help or the version and exits for --help / --version; throws
  // std::runtime_error naming an unknown option or a bad value.
  void parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        usage();
        std::exit(0);
      }
      if (a == "--version") {
        std::printf("%s (kiln %s)\n", program_.c_str(), kiln::version());
        std::exit(0);
      }
      Option* o = find(a);
      if (!o) throw std::runtime_error("unknown option " + a + " (see --help)");
      if (o->is_flag) {
        o->set("");
      } else {
        if (i + 1 >= argc) throw std::runtime_error("option " + a + " needs a value (see --help)");
        o->set(argv[++i]);
      }
    }
  }

  void usage() const {
    std::printf("%s — %s\n\n", program_.c_str(), summary_.c_str());
    for (const Option& o : options_) {
      std::string left = "  " + o.name + (o.is_flag ? "" : " " + o.value_name);
      if (left.size() < 24) left.resize(24, ' ');
      std::printf("%s %s", left.c_str(), o.help.c_str());
      if (!o.is_flag && !o.get().empty()) std::printf(" (default %s)", o.get().c_str());
      std::printf("\n");
    }
    std::printf("  %-22s this text;  --version: kiln's version\n", "--help");
  }

  // "name value" lines of every option, for the run's config file.
  std::string config() const {
    std::string out = "program " + program_ + "\nkiln " + kiln::version() + "\n";
    for (const Option& o : options_) out += o.name.substr(2) + " " + o.get() + "\n";
    return out;
  }

 private:
  struct Option {
    std::string name, value_name, help;
    std::function<void(const std::string&)> set;
    std::function<std::string()> get;
    bool is_flag = false;
  };
  void bind(const std::string& name, const char* value_name, const std::string& help, std::function<void(const std::string&)> set,
            std::function<std::string()> get) {
    options_.push_back({name, value_name, help, std::move(set), std::move(get), false});
  }
  Option* find(const std::string& name) {
    for (Option& o : options_)
      if (o.name == name) return &o;
    return nullptr;
  }
  static long long integer(const std::string& name, const std::string& s) {
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != s.size() || s.empty()) throw std::runtime_error(name + " needs an integer, got '" + s + "'");
    return v;
  }
  static double real(const std::string& name, const std::string& s) {
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != s.size() || s.empty()) throw std::runtime_error(name + " needs a number, got '" + s + "'");
    return v;
  }

  std::string program_, summary_;
  std::vector<Option> options_;
};

// Set by SIGINT/SIGTERM: the training loop finishes its step, saves a checkpoint and exits.
inline std::atomic<bool>& stop_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}
inline void install_stop_handler() {
  static_assert(std::atomic<bool>::is_always_lock_free);
  auto handler = [](int) { stop_flag().store(true); };
  std::signal(SIGINT, handler);
  std::signal(SIGTERM, handler);
}
inline bool stop_requested() { return stop_flag().load(); }

// Writes a [N, C, H, W] batch of images with values in [lo, hi] as one PNG grid.
inline void save_grid(const std::string& path, const kiln::Tensor<float>& images, int columns, double lo = 0.0,
                      double hi = 1.0) {
  kiln::io::write_png(path, kiln::io::image_grid(images, columns, 2, lo, hi));
}

// A curve of a run: its name and points.
struct Curve {
  std::string name;
  std::vector<double> x, y;
};

// Writes the curves as a line plot (steps on x); curves without points are left out.
inline void save_curves(const std::string& path, const std::string& title, const std::vector<Curve>& curves,
                        bool log_y = false) {
  std::vector<kiln::io::Series> series;
  for (const Curve& c : curves)
    if (!c.x.empty()) series.push_back({c.name, c.x, c.y, kiln::io::plot_color(series.size())});
  if (series.empty()) return;
  kiln::io::PlotOptions o;
  o.title = title;
  o.x_label = "step";
  o.log_y = log_y;
  kiln::io::write_png(path, kiln::io::line_plot(series, o));
}

// FID against a set of real images and Inception Score (10 splits) of generated images, both
// through kiln's Fashion-MNIST feature network (weights/fashion-features.safetensors, or
// `features_path`). `generated` and `real` hold images [N, 784] or [N, 1, 28, 28] with values in
// [lo, hi] (mapped to [0, 1], clamped, as a PNG of them would show them).
struct SampleQuality {
  double fid = 0, inception_mean = 0, inception_std = 0;
  kiln::index_t samples = 0;
};

inline SampleQuality sample_quality(const kiln::Tensor<float>& generated, double lo, double hi,
                                    const kiln::Tensor<float>& real, const std::string& features_path = "") {
  auto net = kiln::metrics::load_fashion_features(features_path);
  // [0, 1] as a PNG would show the values (NaN as 0).
  const auto to_unit = [&](const kiln::Tensor<float>& x) {
    kiln::Tensor<float> unit = kiln::Tensor<float>::uninitialized(kiln::Shape{x.size(0), 784});
    const std::vector<float> values = x.contiguous().to_vector();
    for (std::size_t i = 0; i < values.size(); ++i) {
      const double v = (static_cast<double>(values[i]) - lo) / (hi - lo);
      unit.data()[i] = std::isnan(v) ? 0.0f : static_cast<float>(std::clamp(v, 0.0, 1.0));
    }
    return unit;
  };
  const auto fake = kiln::metrics::evaluate_features(*net, to_unit(generated));
  const auto truth = kiln::metrics::evaluate_features(*net, real.reshape({real.size(0), 784}));
  SampleQuality q;
  q.samples = generated.size(0);
  q.fid = kiln::metrics::fid_from_features(fake.features, truth.features);
  const auto is = kiln::metrics::inception_score_from_logits(fake.logits, 10);
  q.inception_mean = is.mean;
  q.inception_std = is.std;
  return q;
}

// Appends the figures to a summary (keys prefixed by `prefix`, e.g. "ddpm_") and prints them.
inline void report_quality(std::ostream& summary, const SampleQuality& q, const std::string& prefix = "") {
  summary << prefix << "fid_samples " << q.samples << "\n" << prefix << "fid " << q.fid << "\n" << prefix
          << "inception_score " << q.inception_mean << "\n" << prefix << "inception_score_std " << q.inception_std << "\n";
  std::printf("%sFID %.3f, Inception Score %.3f ± %.3f (%ld samples, Fashion-MNIST feature network, test set as reference)\n",
              prefix.c_str(), q.fid, q.inception_mean, q.inception_std, static_cast<long>(q.samples));
}

// Writes images [N, 1, H, W] (or [N, H * W] with H = W) with values in [lo, hi] as an IDX file of
// uint8 [N, H, W] (the format of the Fashion-MNIST files), so kiln-eval and other tools can read
// them: `kiln-eval fid --real t10k-images-idx3-ubyte.gz --fake FILE`.
inline void save_idx_images(const std::string& path, const kiln::Tensor<float>& images, double lo, double hi) {
  const kiln::index_t n = images.size(0), pixels = images.numel() / n;
  kiln::index_t side = 0;
  while ((side + 1) * (side + 1) <= pixels) ++side;
  const kiln::index_t h = images.dim() == 4 ? images.size(2) : side, w = images.dim() == 4 ? images.size(3) : side;
  if (h * w != pixels) throw std::runtime_error("save_idx_images: images are not single-channel squares or [N, 1, H, W]");
  std::string bytes = {0, 0, 8, 3};
  for (kiln::index_t v : {n, h, w})
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<char>((v >> shift) & 0xff));
  const std::vector<float> values = images.contiguous().to_vector();
  for (float v : values) {
    const double unit = std::clamp((static_cast<double>(v) - lo) / (hi - lo), 0.0, 1.0);
    bytes.push_back(static_cast<char>(static_cast<unsigned char>(std::lround(unit * 255.0))));
  }
  kiln::io::write_file_atomic(path, bytes);
}

}  // namespace example
