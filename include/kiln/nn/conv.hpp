// kiln/nn/conv.hpp — nn::Conv2d and nn::ConvTranspose2d (nn::BasicConv2d<T, Device>, ...) as torch.nn
// defines them, with PyTorch's default initialisation. Builds on nn/module.hpp, nn/init.hpp and ops/conv.hpp.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/nn/init.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/conv.hpp>

#include <algorithm>
#include <cmath>
#include <string>

namespace kiln::nn {

// The optional arguments of Conv2d, for designated initialisers:
//   nn::Conv2d conv(1, 64, 4, {.stride = 2, .padding = 1}, rng);
struct Conv2dOptions {
  Size2d stride = 1;
  Size2d padding = 0;
  Size2d dilation = 1;
  index_t groups = 1;
  bool bias = true;
};

// The optional arguments of ConvTranspose2d, in PyTorch's order.
struct ConvTranspose2dOptions {
  Size2d stride = 1;
  Size2d padding = 0;
  Size2d output_padding = 0;
  index_t groups = 1;
  bool bias = true;
  Size2d dilation = 1;
};

namespace conv_detail {

inline void check_conv_module(const char* module, index_t in_channels, index_t out_channels, Size2d kernel_size,
                              Size2d stride, Size2d padding, Size2d dilation, index_t groups) {
  const auto fail = [module](const std::string& what) { throw_value_error(module, what); };
  if (in_channels < 1 || out_channels < 1)
    fail("in_channels and out_channels must be >= 1, got " + std::to_string(in_channels) + " and " +
         std::to_string(out_channels));
  if (groups < 1) fail("groups must be >= 1, got " + std::to_string(groups));
  if (in_channels % groups != 0)
    fail("in_channels = " + std::to_string(in_channels) + " is not divisible by groups = " + std::to_string(groups));
  if (out_channels % groups != 0)
    fail("out_channels = " + std::to_string(out_channels) + " is not divisible by groups = " + std::to_string(groups));
  if (kernel_size.h < 1 || kernel_size.w < 1) fail("kernel_size must be >= 1, got " + kernel_size.to_string());
  if (stride.h < 1 || stride.w < 1) fail("stride must be >= 1, got " + stride.to_string());
  if (padding.h < 0 || padding.w < 0) fail("padding must be >= 0, got " + padding.to_string());
  if (dilation.h < 1 || dilation.w < 1) fail("dilation must be >= 1, got " + dilation.to_string());
}

// PyTorch's _ConvNd.reset_parameters: kaiming_uniform_(weight, a = √5), i.e. U(−1/√fan_in, 1/√fan_in)
// with fan_in = weight dim 1 · kernel area, then the bias from U(−1/√fan_in, 1/√fan_in). For a
// transposed convolution (weight [in, out/groups, KH, KW]) fan_in is therefore out/groups·KH·KW.
template <class T, class D>
void reset_conv_parameters(Tensor<T, D>& weight, Tensor<T, D>* bias, Rng& rng) {
  init::kaiming_uniform_(weight, rng, std::sqrt(5.0));
  if (bias) {
    const index_t fan_in = init::calculate_fans(weight.shape()).fan_in;
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    init::uniform_(*bias, rng, -bound, bound);
  }
}

}  // namespace conv_detail

// A 2-D convolution layer, torch.nn.Conv2d: parameters "weight" [out_channels, in_channels/groups,
// KH, KW] and, unless bias is false, "bias" [out_channels]; forward is kiln::conv2d. Initialised
// as PyTorch does (conv_detail::reset_conv_parameters), weight then bias drawn from `rng`.
template <class T, class Device = cpu>
class BasicConv2d : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  BasicConv2d(index_t in_channels, index_t out_channels, Size2d kernel_size, Size2d stride, Size2d padding,
              Size2d dilation, index_t groups, bool bias, Rng& rng)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size), stride_(stride),
        padding_(padding), dilation_(dilation), groups_(groups) {
    conv_detail::check_conv_module("nn::Conv2d", in_channels, out_channels, kernel_size, stride, padding, dilation, groups);
    weight_ = &this->register_parameter(
        "weight", empty<T, Device>(Shape{out_channels, in_channels / groups, kernel_size.h, kernel_size.w}));
    if (bias) bias_ = &this->register_parameter("bias", empty<T, Device>(Shape{out_channels}));
    conv_detail::reset_conv_parameters(*weight_, bias_, rng);
  }
  BasicConv2d(index_t in_channels, index_t out_channels, Size2d kernel_size, const Conv2dOptions& options, Rng& rng)
      : BasicConv2d(in_channels, out_channels, kernel_size, options.stride, options.padding, options.dilation,
                    options.groups, options.bias, rng) {}
  BasicConv2d(index_t in_channels, index_t out_channels, Size2d kernel_size, Rng& rng)
      : BasicConv2d(in_channels, out_channels, kernel_size, Conv2dOptions{}, rng) {}

  // x [N, in_channels, H, W] (or [in_channels, H, W]) -> [N, out_channels, H_out, W_out].
  tensor_type forward(const tensor_type& x) const {
    return conv2d(x, *weight_, bias(), stride_, padding_, dilation_, groups_);
  }
  tensor_type operator()(const tensor_type& x) const { return forward(x); }

  // The parameters (sharing storage and autograd state with the module's); bias() is undefined
  // when the layer has none.
  tensor_type weight() const { return *weight_; }
  tensor_type bias() const { return bias_ ? *bias_ : tensor_type(); }
  index_t in_channels() const { return in_channels_; }
  index_t out_channels() const { return out_channels_; }
  Size2d kernel_size() const { return kernel_size_; }
  Size2d stride() const { return stride_; }
  Size2d padding() const { return padding_; }
  Size2d dilation() const { return dilation_; }
  index_t groups() const { return groups_; }

 private:
  index_t in_channels_, out_channels_;
  Size2d kernel_size_, stride_, padding_, dilation_;
  index_t groups_;
  tensor_type* weight_ = nullptr;
  tensor_type* bias_ = nullptr;
};

// A 2-D transposed convolution layer, torch.nn.ConvTranspose2d: parameters "weight" [in_channels,
// out_channels/groups, KH, KW] and, unless bias is false, "bias" [out_channels]; forward is
// kiln::conv_transpose2d. Initialised as PyTorch does (fan_in from weight dim 1, see
// conv_detail::reset_conv_parameters), weight then bias drawn from `rng`.
template <class T, class Device = cpu>
class BasicConvTranspose2d : public BasicModule<T, Device> {
 public:
  using tensor_type = Tensor<T, Device>;

  BasicConvTranspose2d(index_t in_channels, index_t out_channels, Size2d kernel_size, Size2d stride, Size2d padding,
                       Size2d output_padding, index_t groups, bool bias, Size2d dilation, Rng& rng)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size), stride_(stride),
        padding_(padding), output_padding_(output_padding), dilation_(dilation), groups_(groups) {
    const char* module = "nn::ConvTranspose2d";
    conv_detail::check_conv_module(module, in_channels, out_channels, kernel_size, stride, padding, dilation, groups);
    if (output_padding.h < 0 || output_padding.w < 0 || output_padding.h >= std::max(stride.h, dilation.h) ||
        output_padding.w >= std::max(stride.w, dilation.w))
      throw_value_error(module, "output_padding " + output_padding.to_string() +
                                    " must be >= 0 and smaller than either the stride (" + stride.to_string() +
                                    ") or the dilation (" + dilation.to_string() + ")");
    weight_ = &this->register_parameter(
        "weight", empty<T, Device>(Shape{in_channels, out_channels / groups, kernel_size.h, kernel_size.w}));
    if (bias) bias_ = &this->register_parameter("bias", empty<T, Device>(Shape{out_channels}));
    conv_detail::reset_conv_parameters(*weight_, bias_, rng);
  }
  BasicConvTranspose2d(index_t in_channels, index_t out_channels, Size2d kernel_size,
                       const ConvTranspose2dOptions& options, Rng& rng)
      : BasicConvTranspose2d(in_channels, out_channels, kernel_size, options.stride, options.padding,
                             options.output_padding, options.groups, options.bias, options.dilation, rng) {}
  BasicConvTranspose2d(index_t in_channels, index_t out_channels, Size2d kernel_size, Rng& rng)
      : BasicConvTranspose2d(in_channels, out_channels, kernel_size, ConvTranspose2dOptions{}, rng) {}

  // x [N, in_channels, H, W] (or [in_channels, H, W]) -> [N, out_channels, H_out, W_out] with
  // H_out = (H − 1)·stride − 2·padding + dilation·(KH − 1) + output_padding + 1.
  tensor_type forward(const tensor_type& x) const {
    return conv_transpose2d(x, *weight_, bias(), stride_, padding_, output_padding_, groups_, dilation_);
  }
  tensor_type operator()(const tensor_type& x) const { return forward(x); }

  tensor_type weight() const { return *weight_; }
  tensor_type bias() const { return bias_ ? *bias_ : tensor_type(); }
  index_t in_channels() const { return in_channels_; }
  index_t out_channels() const { return out_channels_; }
  Size2d kernel_size() const { return kernel_size_; }
  Size2d stride() const { return stride_; }
  Size2d padding() const { return padding_; }
  Size2d output_padding() const { return output_padding_; }
  Size2d dilation() const { return dilation_; }
  index_t groups() const { return groups_; }

 private:
  index_t in_channels_, out_channels_;
  Size2d kernel_size_, stride_, padding_, output_padding_, dilation_;
  index_t groups_;
  tensor_type* weight_ = nullptr;
  tensor_type* bias_ = nullptr;
};

using Conv2d = BasicConv2d<float, cpu>;
using ConvTranspose2d = BasicConvTranspose2d<float, cpu>;

}  // namespace kiln::nn
