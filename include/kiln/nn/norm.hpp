// kiln/nn/norm.hpp — normalization layers as torch.nn: LayerNorm, RMSNorm, GroupNorm, BatchNorm1d and
// BatchNorm2d (running statistics, train/eval behaviour, momentum or cumulative averaging).
// Builds on nn/module.hpp (parameters and buffers with PyTorch's names) and ops/norm.hpp.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/device.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/norm.hpp>

#include <optional>
#include <string>
#include <type_traits>

namespace kiln::nn {

// Layer normalization over the trailing normalized_shape dims, as torch.nn.LayerNorm: parameters
// "weight" (ones) and "bias" (zeros) of normalized_shape when elementwise_affine, the bias left
// out when bias is false (PyTorch 2.1's bias flag).
template <class T, class Device = cpu>
class BasicLayerNorm : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  explicit BasicLayerNorm(const Shape& normalized_shape, double eps = 1e-5, bool elementwise_affine = true,
                          bool bias = true)
      : normalized_shape_(normalized_shape), eps_(eps) {
    if (normalized_shape.ndim < 1 || normalized_shape.numel() < 1)
      throw_shape_error("nn::LayerNorm", "normalized_shape needs at least one dim and one element", normalized_shape);
    kiln::detail::check_norm_eps("nn::LayerNorm", eps);
    if (elementwise_affine) {
      weight_ = &this->register_parameter("weight", ones<T, Device>(normalized_shape));
      if (bias) bias_ = &this->register_parameter("bias", zeros<T, Device>(normalized_shape));
    }
  }
  explicit BasicLayerNorm(index_t normalized_size, double eps = 1e-5, bool elementwise_affine = true, bool bias = true)
      : BasicLayerNorm(Shape{normalized_size}, eps, elementwise_affine, bias) {}

  // x [..., *normalized_shape] -> the same shape.
  tensor_type forward(const tensor_type& x) const { return layer_norm(x, normalized_shape_, weight(), bias(), eps_); }
  tensor_type operator()(const tensor_type& x) const { return forward(x); }

  // The parameters (undefined tensors when the layer has none).
  tensor_type weight() const { return weight_ ? *weight_ : tensor_type(); }
  tensor_type bias() const { return bias_ ? *bias_ : tensor_type(); }
  const Shape& normalized_shape() const { return normalized_shape_; }
  double eps() const { return eps_; }

 private:
  Shape normalized_shape_;
  double eps_;
  tensor_type* weight_ = nullptr;
  tensor_type* bias_ = nullptr;
};

// RMS normalization over the trailing normalized_shape dims, as torch.nn.RMSNorm (PyTorch 2.4):
// parameter "weight" (ones) of normalized_shape when elementwise_affine; eps nullopt means the
// machine epsilon of T.
template <class T, class Device = cpu>
class BasicRMSNorm : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  explicit BasicRMSNorm(const Shape& normalized_shape, std::optional<double> eps = std::nullopt,
                        bool elementwise_affine = true)
      : normalized_shape_(normalized_shape), eps_(eps) {
    if (normalized_shape.ndim < 1 || normalized_shape.numel() < 1)
      throw_shape_error("nn::RMSNorm", "normalized_shape needs at least one dim and one element", normalized_shape);
    if (eps) kiln::detail::check_norm_eps("nn::RMSNorm", *eps);
    if (elementwise_affine) weight_ = &this->register_parameter("weight", ones<T, Device>(normalized_shape));
  }
  explicit BasicRMSNorm(index_t normalized_size, std::optional<double> eps = std::nullopt,
                        bool elementwise_affine = true)
      : BasicRMSNorm(Shape{normalized_size}, eps, elementwise_affine) {}

  tensor_type forward(const tensor_type& x) const { return rms_norm(x, normalized_shape_, weight(), eps_); }
  tensor_type operator()(const tensor_type& x) const { return forward(x); }

  tensor_type weight() const { return weight_ ? *weight_ : tensor_type(); }
  const Shape& normalized_shape() const { return normalized_shape_; }
  std::optional<double> eps() const { return eps_; }

 private:
  Shape normalized_shape_;
  std::optional<double> eps_;
  tensor_type* weight_ = nullptr;
};

// Group normalization of [N, C, *] inputs, as torch.nn.GroupNorm(num_groups, num_channels): the
// channels split into num_groups groups (num_channels divisible by it); parameters "weight" (ones)
// and "bias" (zeros) [num_channels] when affine.
template <class T, class Device = cpu>
class BasicGroupNorm : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  BasicGroupNorm(index_t num_groups, index_t num_channels, double eps = 1e-5, bool affine = true)
      : num_groups_(num_groups), num_channels_(num_channels), eps_(eps) {
    if (num_groups < 1 || num_channels < 0 || num_channels % num_groups != 0)
      throw_value_error("nn::GroupNorm", "num_channels = " + std::to_string(num_channels) +
                                             " must be divisible by num_groups = " + std::to_string(num_groups) +
                                             " (num_groups >= 1)");
    kiln::detail::check_norm_eps("nn::GroupNorm", eps);
    if (affine) {
      weight_ = &this->register_parameter("weight", ones<T, Device>(Shape{num_channels}));
      bias_ = &this->register_parameter("bias", zeros<T, Device>(Shape{num_channels}));
    }
  }

  // x [N, num_channels, *] -> the same shape.
  tensor_type forward(const tensor_type& x) const {
    if (x.defined() && (x.dim() < 2 || x.size(1) != num_channels_))
      throw_shape_error("nn::GroupNorm",
                        "expected an input [N, " + std::to_string(num_channels_) + ", *] (num_channels = " +
                            std::to_string(num_channels_) + ")",
                        x.shape());
    return group_norm(x, num_groups_, weight(), bias(), eps_);
  }
  tensor_type operator()(const tensor_type& x) const { return forward(x); }

  tensor_type weight() const { return weight_ ? *weight_ : tensor_type(); }
  tensor_type bias() const { return bias_ ? *bias_ : tensor_type(); }
  index_t num_groups() const { return num_groups_; }
  index_t num_channels() const { return num_channels_; }
  double eps() const { return eps_; }

 private:
  index_t num_groups_, num_channels_;
  double eps_;
  tensor_type* weight_ = nullptr;
  tensor_type* bias_ = nullptr;
};

// Batch normalization over the channels of [N, C, *] inputs, as torch.nn.BatchNorm{1,2}d (the
// shared part; BasicBatchNorm1d and BasicBatchNorm2d fix the accepted input dims).
//
// Parameters "weight" (ones) and "bias" (zeros) [C] when affine; buffers "running_mean" (zeros),
// "running_var" (ones) [C] and "num_batches_tracked" when track_running_stats. PyTorch stores
// num_batches_tracked as a 0-d int64 tensor; kiln's buffers hold T, so it is a 0-d T tensor counting
// the training batches (exact up to 2^24 batches in float, 2^53 in double); a state dict written by
// PyTorch needs that entry converted to T before loading.
//
// Training mode: normalizes with the batch statistics; with track_running_stats it also counts the
// batch and updates the running statistics with `momentum`, or, when momentum is nullopt, with
// 1 / num_batches_tracked (a cumulative average of all batches so far). Evaluation mode: normalizes
// with the running statistics, or with the batch statistics when track_running_stats is false.
template <class T, class Device = cpu>
class BasicBatchNorm : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  // x [N, C, *] -> the same shape (see the class comment for the two modes).
  tensor_type forward(const tensor_type& x) {
    if (!x.defined()) throw_value_error(name_, "the input is an undefined tensor");
    if (x.dim() < min_dims_ || x.dim() > max_dims_) {
      const std::string dims = min_dims_ == max_dims_ ? std::to_string(min_dims_) + "-d"
                                                      : std::to_string(min_dims_) + "-d or " +
                                                            std::to_string(max_dims_) + "-d";
      throw_shape_error(name_, "expected a " + dims + " input", x.shape());
    }
    if (x.size(1) != num_features_)
      throw_shape_error(name_,
                        "expected " + std::to_string(num_features_) + " channels (dim 1 of the input) for num_features = " +
                            std::to_string(num_features_),
                        x.shape());
    double factor = 0.0;
    const bool training = this->is_training();
    if (training && track_running_stats_) {
      {
        NoGrad guard;
        num_batches_tracked_->detach().assign(*num_batches_tracked_ + T(1));
      }
      if (momentum_) {
        factor = *momentum_;
      } else if constexpr (std::is_same_v<Device, cpu>) {
        factor = 1.0 / static_cast<double>(num_batches_tracked_->item());
      } else {
        throw_value_error(name_, "momentum = nullopt (cumulative average) reads num_batches_tracked on the host; "
                                 "use a kiln::cpu module or a momentum value");
      }
    }
    // Batch statistics in training, and in evaluation without running statistics (as PyTorch).
    const bool use_batch_statistics = training || !track_running_stats_;
    return batch_norm(x, running_mean(), running_var(), weight(), bias(), use_batch_statistics, factor, eps_);
  }
  tensor_type operator()(const tensor_type& x) { return forward(x); }

  tensor_type weight() const { return weight_ ? *weight_ : tensor_type(); }
  tensor_type bias() const { return bias_ ? *bias_ : tensor_type(); }
  // The buffers (undefined tensors without track_running_stats).
  tensor_type running_mean() const { return running_mean_ ? *running_mean_ : tensor_type(); }
  tensor_type running_var() const { return running_var_ ? *running_var_ : tensor_type(); }
  tensor_type num_batches_tracked() const { return num_batches_tracked_ ? *num_batches_tracked_ : tensor_type(); }
  index_t num_features() const { return num_features_; }
  double eps() const { return eps_; }
  std::optional<double> momentum() const { return momentum_; }
  bool track_running_stats() const { return track_running_stats_; }

  // Running statistics back to zeros / ones and the batch count to 0 (reset_running_stats()).
  void reset_running_stats() {
    if (!track_running_stats_) return;
    NoGrad guard;
    running_mean_->detach().fill_(T(0));
    running_var_->detach().fill_(T(1));
    num_batches_tracked_->detach().fill_(T(0));
  }

 protected:
  BasicBatchNorm(const char* name, int min_dims, int max_dims, index_t num_features, double eps,
                 std::optional<double> momentum, bool affine, bool track_running_stats)
      : name_(name),
        min_dims_(min_dims),
        max_dims_(max_dims),
        num_features_(num_features),
        eps_(eps),
        momentum_(momentum),
        track_running_stats_(track_running_stats) {
    if (num_features < 1)
      throw_value_error(name, "num_features must be >= 1, got " + std::to_string(num_features));
    kiln::detail::check_norm_eps(name, eps);
    if (momentum && !(*momentum >= 0.0 && *momentum <= 1.0))
      throw_value_error(name, "momentum must lie in [0, 1] (or be nullopt), got " + std::to_string(*momentum));
    if (affine) {
      weight_ = &this->register_parameter("weight", ones<T, Device>(Shape{num_features}));
      bias_ = &this->register_parameter("bias", zeros<T, Device>(Shape{num_features}));
    }
    if (track_running_stats) {
      running_mean_ = &this->register_buffer("running_mean", zeros<T, Device>(Shape{num_features}));
      running_var_ = &this->register_buffer("running_var", ones<T, Device>(Shape{num_features}));
      num_batches_tracked_ = &this->register_buffer("num_batches_tracked", zeros<T, Device>(Shape{}));
    }
  }

 private:
  const char* name_;
  int min_dims_, max_dims_;
  index_t num_features_;
  double eps_;
  std::optional<double> momentum_;
  bool track_running_stats_;
  tensor_type* weight_ = nullptr;
  tensor_type* bias_ = nullptr;
  tensor_type* running_mean_ = nullptr;
  tensor_type* running_var_ = nullptr;
  tensor_type* num_batches_tracked_ = nullptr;
};

// torch.nn.BatchNorm1d: inputs [N, C] or [N, C, L].
template <class T, class Device = cpu>
class BasicBatchNorm1d : public BasicBatchNorm<T, Device> {
 public:
  explicit BasicBatchNorm1d(index_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1,
                            bool affine = true, bool track_running_stats = true)
      : BasicBatchNorm<T, Device>("nn::BatchNorm1d", 2, 3, num_features, eps, momentum, affine,
                                  track_running_stats) {}
};

// torch.nn.BatchNorm2d: inputs [N, C, H, W].
template <class T, class Device = cpu>
class BasicBatchNorm2d : public BasicBatchNorm<T, Device> {
 public:
  explicit BasicBatchNorm2d(index_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1,
                            bool affine = true, bool track_running_stats = true)
      : BasicBatchNorm<T, Device>("nn::BatchNorm2d", 4, 4, num_features, eps, momentum, affine,
                                  track_running_stats) {}
};

using LayerNorm = BasicLayerNorm<float, cpu>;
using RMSNorm = BasicRMSNorm<float, cpu>;
using GroupNorm = BasicGroupNorm<float, cpu>;
using BatchNorm1d = BasicBatchNorm1d<float, cpu>;
using BatchNorm2d = BasicBatchNorm2d<float, cpu>;

}  // namespace kiln::nn
