// kiln/nn/linear.hpp — nn::Linear (nn::BasicLinear<T, Device>): y = x·Wᵀ + b as torch.nn.Linear, with
// PyTorch's default initialisation. Builds on nn/module.hpp, nn/init.hpp and ops/linear.hpp.
#pragma once

#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/nn/init.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/linear.hpp>

#include <cmath>
#include <string>

namespace kiln::nn {

// A fully connected layer: parameters "weight" [out_features, in_features] and, unless bias is
// false, "bias" [out_features]. Initialised as torch.nn.Linear: the weight with
// kaiming_uniform_(a = √5), i.e. U(−1/√in, 1/√in), then the bias with U(−1/√in, 1/√in), both
// drawn from `rng` in that order.
template <class T, class Device = cpu>
class BasicLinear : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  BasicLinear(index_t in_features, index_t out_features, bool bias, Rng& rng)
      : in_features_(in_features), out_features_(out_features) {
    if (in_features < 0 || out_features < 0)
      throw_value_error("nn::Linear", "in_features and out_features must be >= 0, got " +
                                          std::to_string(in_features) + " and " + std::to_string(out_features));
    weight_ = &this->register_parameter("weight", empty<T, Device>(Shape{out_features, in_features}));
    init::kaiming_uniform_(*weight_, rng, std::sqrt(5.0));
    if (bias) {
      bias_ = &this->register_parameter("bias", empty<T, Device>(Shape{out_features}));
      const double bound = in_features > 0 ? 1.0 / std::sqrt(static_cast<double>(in_features)) : 0.0;
      init::uniform_(*bias_, rng, -bound, bound);
    }
  }
  BasicLinear(index_t in_features, index_t out_features, Rng& rng)
      : BasicLinear(in_features, out_features, true, rng) {}

  // x [..., in_features] -> [..., out_features].
  tensor_type forward(const tensor_type& x) const { return kiln::linear(x, *weight_, bias()); }
  tensor_type operator()(const tensor_type& x) const { return forward(x); }

  // The parameters (sharing storage and autograd state with the module's); bias() is an
  // undefined tensor when the layer has none.
  tensor_type weight() const { return *weight_; }
  tensor_type bias() const { return bias_ ? *bias_ : tensor_type(); }
  index_t in_features() const { return in_features_; }
  index_t out_features() const { return out_features_; }

 private:
  index_t in_features_, out_features_;
  tensor_type* weight_ = nullptr;
  tensor_type* bias_ = nullptr;
};

using Linear = BasicLinear<float, cpu>;

}  // namespace kiln::nn
