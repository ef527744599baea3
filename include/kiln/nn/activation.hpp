// kiln/nn/activation.hpp — activation modules as in torch.nn: ReLU, LeakyReLU, GELU, SiLU, Tanh,
// Sigmoid, Softplus, plus Identity, Flatten and Unflatten. Builds on nn/module.hpp and the fused elementwise
// functions of expr/ops.hpp (their gradients come from autograd/fused.hpp).
#pragma once

#include <kiln/autograd/fused.hpp>
#include <kiln/core/error.hpp>
#include <kiln/expr/ops.hpp>
#include <kiln/nn/module.hpp>

#include <string>
#include <utility>
#include <vector>

namespace kiln::nn {

// max(x, 0).
template <class T, class Device = cpu>
class BasicReLU : public BasicModule<T, Device> {
 public:
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const { return Tensor<T, Device>(kiln::relu(x)); }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }
};

// x for x >= 0, negative_slope·x below.
template <class T, class Device = cpu>
class BasicLeakyReLU : public BasicModule<T, Device> {
 public:
  explicit BasicLeakyReLU(double negative_slope = 0.01) : negative_slope_(negative_slope) {}
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const {
    return Tensor<T, Device>(kiln::leaky_relu(x, negative_slope_));
  }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }
  double negative_slope() const { return negative_slope_; }

 private:
  double negative_slope_;
};

// GELU: x·Φ(x) exactly (approximate = "none"), or with the tanh approximation ("tanh").
template <class T, class Device = cpu>
class BasicGELU : public BasicModule<T, Device> {
 public:
  explicit BasicGELU(const std::string& approximate = "none") : tanh_(approximate == "tanh") {
    if (approximate != "none" && approximate != "tanh")
      throw_value_error("nn::GELU", "approximate must be \"none\" or \"tanh\", got \"" + approximate + "\"");
  }
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const {
    return tanh_ ? Tensor<T, Device>(kiln::gelu_tanh(x)) : Tensor<T, Device>(kiln::gelu(x));
  }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }
  std::string approximate() const { return tanh_ ? "tanh" : "none"; }

 private:
  bool tanh_;
};

// x·sigmoid(x).
template <class T, class Device = cpu>
class BasicSiLU : public BasicModule<T, Device> {
 public:
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const { return Tensor<T, Device>(kiln::silu(x)); }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }
};

template <class T, class Device = cpu>
class BasicTanh : public BasicModule<T, Device> {
 public:
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const { return Tensor<T, Device>(kiln::tanh(x)); }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }
};

template <class T, class Device = cpu>
class BasicSigmoid : public BasicModule<T, Device> {
 public:
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const { return Tensor<T, Device>(kiln::sigmoid(x)); }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }
};

// (1/beta)·log(1 + exp(beta·x)), and x itself where beta·x > threshold.
template <class T, class Device = cpu>
class BasicSoftplus : public BasicModule<T, Device> {
 public:
  explicit BasicSoftplus(double beta = 1.0, double threshold = 20.0) : beta_(beta), threshold_(threshold) {
    if (!(beta > 0)) throw_value_error("nn::Softplus", "beta must be positive, got " + std::to_string(beta));
  }
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const {
    return Tensor<T, Device>(kiln::softplus(x, beta_, threshold_));
  }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }

 private:
  double beta_, threshold_;
};

// Returns its input (the same tensor).
template <class T, class Device = cpu>
class BasicIdentity : public BasicModule<T, Device> {
 public:
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const { return x; }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }
};

// Collapses dims start_dim..end_dim into one (default: all but the batch dim), a view when the
// strides allow it.
template <class T, class Device = cpu>
class BasicFlatten : public BasicModule<T, Device> {
 public:
  explicit BasicFlatten(int start_dim = 1, int end_dim = -1) : start_dim_(start_dim), end_dim_(end_dim) {}
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const { return x.flatten(start_dim_, end_dim_); }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }

 private:
  int start_dim_, end_dim_;
};

// Splits dim `dim` into `sizes` (torch.nn.Unflatten), e.g. [B, 3136] -> [B, 64, 7, 7] with
// dim 1 and sizes {64, 7, 7}; a view when the strides allow it.
template <class T, class Device = cpu>
class BasicUnflatten : public BasicModule<T, Device> {
 public:
  BasicUnflatten(int dim, std::vector<index_t> sizes) : dim_(dim), sizes_(std::move(sizes)) {
    if (sizes_.empty()) throw_value_error("nn::Unflatten", "sizes must not be empty");
  }
  Tensor<T, Device> forward(const Tensor<T, Device>& x) const {
    const int d = normalize_axis("nn::Unflatten", dim_, x.dim());
    index_t product = 1;
    for (index_t s : sizes_) product *= s;
    if (product != x.size(d))
      throw_shape_error("nn::Unflatten", "dim " + std::to_string(d) + " has " + std::to_string(x.size(d)) +
                                             " elements, the sizes multiply to " + std::to_string(product),
                        x.shape());
    if (x.dim() - 1 + static_cast<int>(sizes_.size()) > max_dims)
      throw_shape_error("nn::Unflatten", "the result would have more than 8 dims", x.shape());
    Shape out;
    for (int i = 0; i < d; ++i) out.dims[out.ndim++] = x.size(i);
    for (index_t s : sizes_) out.dims[out.ndim++] = s;
    for (int i = d + 1; i < x.dim(); ++i) out.dims[out.ndim++] = x.size(i);
    return x.reshape(out);
  }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }

 private:
  int dim_;
  std::vector<index_t> sizes_;
};

using ReLU = BasicReLU<float, cpu>;
using LeakyReLU = BasicLeakyReLU<float, cpu>;
using GELU = BasicGELU<float, cpu>;
using SiLU = BasicSiLU<float, cpu>;
using Tanh = BasicTanh<float, cpu>;
using Sigmoid = BasicSigmoid<float, cpu>;
using Softplus = BasicSoftplus<float, cpu>;
using Identity = BasicIdentity<float, cpu>;
using Flatten = BasicFlatten<float, cpu>;
using Unflatten = BasicUnflatten<float, cpu>;

}  // namespace kiln::nn
