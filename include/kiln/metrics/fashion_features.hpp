// kiln/metrics/fashion_features.hpp — the Fashion-MNIST feature network: a small convolutional
// classifier (two conv/BatchNorm/ReLU/max-pool stages, a 128-unit hidden layer, 10 classes) whose
// 128-d hidden activations are the features for FID and whose softmax gives the Inception Score of
// generated Fashion-MNIST images. Trained by tools/train_fashion_features.cpp; the trained weights
// ship as weights/fashion-features.safetensors (installed to <prefix>/share/kiln/weights). Builds on nn (Conv2d, BatchNorm2d, Linear, Dropout)
// and io/checkpoint.hpp (load_module).
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/nn/conv.hpp>
#include <kiln/nn/dropout.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/nn/norm.hpp>
#include <kiln/ops/index.hpp>
#include <kiln/ops/pool.hpp>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

namespace kiln::metrics {

// Per-pixel mean and standard deviation of Fashion-MNIST's training images (in [0, 1]); the
// network standardizes its input with them.
inline constexpr double fashion_mnist_mean = 0.2860;
inline constexpr double fashion_mnist_std = 0.3530;

// The network. Input: images in [0, 1], [N, 784] or [N, 1, 28, 28]. Parameter names (PyTorch
// style): c1.*, bn1.*, c2.*, bn2.*, fc1.*, fc2.*.
//   c1  Conv2d(1, 16, 3, padding 1) → bn1 BatchNorm2d(16) → ReLU → MaxPool 2   → [N, 16, 14, 14]
//   c2  Conv2d(16, 32, 3, padding 1) → bn2 BatchNorm2d(32) → ReLU → MaxPool 2  → [N, 32, 7, 7]
//   fc1 Linear(1568, 128) → ReLU                                               → features [N, 128]
//   Dropout(0.25) → fc2 Linear(128, 10)                                        → logits [N, 10]
template <class T = float, class Device = cpu>
class BasicFashionFeatureNet : public nn::BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;
  static constexpr index_t feature_dim = 128;
  static constexpr index_t num_classes = 10;

  explicit BasicFashionFeatureNet(Rng& rng) {
    c1_ = this->register_module("c1", std::make_shared<nn::BasicConv2d<T, Device>>(1, 16, 3, nn::Conv2dOptions{.padding = 1}, rng));
    bn1_ = this->register_module("bn1", std::make_shared<nn::BasicBatchNorm2d<T, Device>>(16));
    c2_ = this->register_module("c2", std::make_shared<nn::BasicConv2d<T, Device>>(16, 32, 3, nn::Conv2dOptions{.padding = 1}, rng));
    bn2_ = this->register_module("bn2", std::make_shared<nn::BasicBatchNorm2d<T, Device>>(32));
    fc1_ = this->register_module("fc1", std::make_shared<nn::BasicLinear<T, Device>>(32 * 7 * 7, feature_dim, rng));
    drop_ = this->register_module("drop", std::make_shared<nn::BasicDropout<T, Device>>(0.25, rng));
    fc2_ = this->register_module("fc2", std::make_shared<nn::BasicLinear<T, Device>>(feature_dim, num_classes, rng));
  }

  // The 128-d features (post-ReLU hidden layer) of `images`.
  tensor_type features(const tensor_type& images) const {
    const index_t n = images.dim() >= 1 ? images.size(0) : 0;
    if (!((images.dim() == 2 && images.size(1) == 784) ||
          (images.dim() == 4 && images.size(1) == 1 && images.size(2) == 28 && images.size(3) == 28)))
      throw_shape_error("metrics::FashionFeatureNet", "expected images [N, 784] or [N, 1, 28, 28]", images.shape());
    const tensor_type x = images.reshape({n, 1, 28, 28});
    const T scale = static_cast<T>(1.0 / fashion_mnist_std), shift = static_cast<T>(fashion_mnist_mean);
    tensor_type h = c1_->forward(tensor_type((x - shift) * scale));
    h = max_pool2d(tensor_type(relu(bn1_->forward(h))), 2, 2);
    h = c2_->forward(h);
    h = max_pool2d(tensor_type(relu(bn2_->forward(h))), 2, 2);
    return tensor_type(relu(fc1_->forward(h.reshape({n, 32 * 7 * 7}))));
  }

  // Class logits from features (dropout is active in training mode only).
  tensor_type classify(const tensor_type& features) const { return fc2_->forward(drop_->forward(features)); }

  // Class logits of `images`.
  tensor_type forward(const tensor_type& images) const { return classify(features(images)); }

 private:
  std::shared_ptr<nn::BasicConv2d<T, Device>> c1_, c2_;
  std::shared_ptr<nn::BasicBatchNorm2d<T, Device>> bn1_, bn2_;
  std::shared_ptr<nn::BasicLinear<T, Device>> fc1_, fc2_;
  std::shared_ptr<nn::BasicDropout<T, Device>> drop_;
};

using FashionFeatureNet = BasicFashionFeatureNet<float, cpu>;

// Features and class logits of a set of images, computed in eval mode without recording, `batch`
// images at a time. (Function templates, so that including this header instantiates nothing.)
template <class T = float>
struct FeaturesAndLogits {
  Tensor<T> features;  // [N, 128]
  Tensor<T> logits;    // [N, 10]
};

template <class T>
FeaturesAndLogits<T> evaluate_features(BasicFashionFeatureNet<T, cpu>& net, const Tensor<T>& images, index_t batch = 500) {
  if (images.dim() < 1 || images.size(0) < 1)
    throw_shape_error("metrics::evaluate_features", "expected a non-empty batch of images", images.shape());
  if (batch < 1) throw_value_error("metrics::evaluate_features", "batch must be at least 1");
  NoGrad no_grad;
  const bool was_training = net.is_training();
  net.eval();
  const index_t n = images.size(0);
  std::vector<Tensor<T>> features, logits;
  for (index_t b = 0; b < n; b += batch) {
    const index_t e = std::min(n, b + batch);
    Tensor<T> f = net.features(images.slice(0, b, e).contiguous());
    logits.push_back(net.classify(f));
    features.push_back(f);
  }
  if (was_training) net.train();
  return {concat(features, 0), concat(logits, 0)};
}

// Where the trained weights are: `hint` when not empty, else $KILN_FASHION_FEATURES, else
// fashion-features.safetensors in KILN_WEIGHTS_DIR (defined by kiln's CMake target: the source
// tree's weights/ folder, or <prefix>/share/kiln/weights once installed), else the weights/ folder
// of the source tree this header sits in. Throws kiln::Error naming every place tried when none
// exists.
inline std::string find_fashion_features(const std::string& hint = "") {
  std::vector<std::string> tried;
  auto exists = [&](const std::string& path) {
    tried.push_back(path);
    std::error_code ec;
    return std::filesystem::is_regular_file(path, ec);
  };
  if (!hint.empty()) {
    if (exists(hint)) return hint;
  } else {
    if (const char* env = std::getenv("KILN_FASHION_FEATURES"); env && *env && exists(env)) return env;
#ifdef KILN_WEIGHTS_DIR
    if (const std::string configured = std::string(KILN_WEIGHTS_DIR) + "/fashion-features.safetensors"; exists(configured))
      return configured;
#endif
    const std::filesystem::path here = std::filesystem::path(__FILE__).parent_path();
    const std::string shipped = (here / ".." / ".." / ".." / "weights" / "fashion-features.safetensors").lexically_normal().string();
    if (exists(shipped)) return shipped;
  }
  std::string list;
  for (const auto& t : tried) list += (list.empty() ? "" : ", ") + t;
  throw Error("metrics::find_fashion_features: no weights file found (tried " + (list.empty() ? std::string("$KILN_FASHION_FEATURES") : list) +
              "); train it with tools/train_fashion_features, pass its path, or set KILN_FASHION_FEATURES");
}

// The feature network with the trained weights of `path` (see find_fashion_features), in eval mode.
template <class T = float>
std::shared_ptr<BasicFashionFeatureNet<T, cpu>> load_fashion_features(const std::string& path = "") {
  Rng rng(0);
  auto net = std::make_shared<BasicFashionFeatureNet<T, cpu>>(rng);
  io::load_module(find_fashion_features(path), *net);
  net->eval();
  return net;
}

}  // namespace kiln::metrics
