// examples/dcgan.hpp — W4's DCGAN generator for 28×28 images, shared by the gan and semisupervised
// examples: Linear(z → 128·7·7) + BatchNorm1d + ReLU, ConvT(128→64, 4, 2, 1) + BatchNorm2d + ReLU,
// ConvT(64→1, 4, 2, 1) + Tanh. Children "fc" and "net" as in the PyTorch reference.
#pragma once

#include <kiln/nn/activation.hpp>
#include <kiln/nn/conv.hpp>
#include <kiln/nn/embedding.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/norm.hpp>
#include <kiln/nn/sequential.hpp>
#include <kiln/ops/index.hpp>

#include <memory>
#include <vector>

namespace example {

// With `classes` > 0, z is concatenated with a learned embedding of the label (`classes` numbers,
// child "label_embedding") before the first Linear, and forward takes the labels.
class DcganGenerator : public kiln::nn::Module {
 public:
  static constexpr kiln::index_t feature_size = 128 * 7 * 7;

  DcganGenerator(kiln::index_t latent, kiln::index_t classes, kiln::Rng& rng) {
    namespace nn = kiln::nn;
    if (classes > 0)
      embedding_ = register_module("label_embedding", std::make_shared<nn::Embedding>(classes, classes, rng));
    fc_ = register_module("fc", std::make_shared<nn::Sequential>(std::make_shared<nn::Linear>(latent + classes, feature_size, rng),
                                                                 std::make_shared<nn::BatchNorm1d>(feature_size),
                                                                 std::make_shared<nn::ReLU>()));
    net_ = register_module(
        "net", std::make_shared<nn::Sequential>(
                   std::make_shared<nn::ConvTranspose2d>(128, 64, 4, nn::ConvTranspose2dOptions{.stride = 2, .padding = 1}, rng),
                   std::make_shared<nn::BatchNorm2d>(64), std::make_shared<nn::ReLU>(),
                   std::make_shared<nn::ConvTranspose2d>(64, 1, 4, nn::ConvTranspose2dOptions{.stride = 2, .padding = 1}, rng),
                   std::make_shared<nn::Tanh>()));
  }
  kiln::Tensor<float> forward(const kiln::Tensor<float>& z) {
    if (embedding_) throw kiln::ValueError("DcganGenerator: the conditional generator needs labels");
    return body(z);
  }
  kiln::Tensor<float> forward(const kiln::Tensor<float>& z, const kiln::Tensor<kiln::index_t>& labels) {
    if (!embedding_) throw kiln::ValueError("DcganGenerator: the unconditional generator takes no labels");
    return body(kiln::concat(std::vector<kiln::Tensor<float>>{z, embedding_->forward(labels)}, 1));
  }

 private:
  kiln::Tensor<float> body(const kiln::Tensor<float>& in) {
    return net_->forward(fc_->forward(in).reshape({in.size(0), 128, 7, 7}));
  }

  std::shared_ptr<kiln::nn::Embedding> embedding_;
  std::shared_ptr<kiln::nn::Sequential> fc_, net_;
};

}  // namespace example
