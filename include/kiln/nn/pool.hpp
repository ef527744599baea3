// kiln/nn/pool.hpp — pooling and resampling modules as in torch.nn: MaxPool2d, AvgPool2d,
// AdaptiveAvgPool2d and Upsample (nearest or bilinear). Builds on nn/module.hpp and ops/pool.hpp.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/pool.hpp>

#include <string>

namespace kiln::nn {

namespace pool_detail {

inline void check_window(const char* module, Size2d kernel_size, Size2d stride, Size2d padding, Size2d dilation) {
  if (kernel_size.h < 1 || kernel_size.w < 1)
    throw_value_error(module, "kernel_size must be >= 1, got " + kernel_size.to_string());
  if (stride.h < 1 || stride.w < 1) throw_value_error(module, "stride must be >= 1, got " + stride.to_string());
  if (padding.h < 0 || padding.w < 0 || padding.h > kernel_size.h / 2 || padding.w > kernel_size.w / 2)
    throw_value_error(module, "padding " + padding.to_string() + " must be >= 0 and at most half the kernel size " +
                                  kernel_size.to_string());
  if (dilation.h < 1 || dilation.w < 1) throw_value_error(module, "dilation must be >= 1, got " + dilation.to_string());
}

}  // namespace pool_detail

// Max pooling, torch.nn.MaxPool2d; stride defaults to the kernel size. forward is kiln::max_pool2d.
template <class T, class Device = cpu>
class BasicMaxPool2d : public BasicModule<T, Device> {
 public:
  BasicMaxPool2d(Size2d kernel_size, Size2d stride, Size2d padding = 0, Size2d dilation = 1, bool ceil_mode = false)
      : kernel_size_(kernel_size), stride_(stride), padding_(padding), dilation_(dilation), ceil_mode_(ceil_mode) {
    pool_detail::check_window("nn::MaxPool2d", kernel_size, stride, padding, dilation);
  }
  explicit BasicMaxPool2d(Size2d kernel_size) : BasicMaxPool2d(kernel_size, kernel_size) {}

  Tensor<T, Device> forward(const Tensor<T, Device>& x) const {
    return max_pool2d(x, kernel_size_, stride_, padding_, dilation_, ceil_mode_);
  }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }

  Size2d kernel_size() const { return kernel_size_; }
  Size2d stride() const { return stride_; }
  Size2d padding() const { return padding_; }
  Size2d dilation() const { return dilation_; }
  bool ceil_mode() const { return ceil_mode_; }

 private:
  Size2d kernel_size_, stride_, padding_, dilation_;
  bool ceil_mode_;
};

// Average pooling, torch.nn.AvgPool2d; stride defaults to the kernel size, divisor_override 0
// means none. forward is kiln::avg_pool2d.
template <class T, class Device = cpu>
class BasicAvgPool2d : public BasicModule<T, Device> {
 public:
  BasicAvgPool2d(Size2d kernel_size, Size2d stride, Size2d padding = 0, bool ceil_mode = false,
                 bool count_include_pad = true, index_t divisor_override = 0)
      : kernel_size_(kernel_size), stride_(stride), padding_(padding), ceil_mode_(ceil_mode),
        count_include_pad_(count_include_pad), divisor_override_(divisor_override) {
    pool_detail::check_window("nn::AvgPool2d", kernel_size, stride, padding, 1);
    if (divisor_override < 0)
      throw_value_error("nn::AvgPool2d",
                        "divisor_override must be positive (0: none), got " + std::to_string(divisor_override));
  }
  explicit BasicAvgPool2d(Size2d kernel_size) : BasicAvgPool2d(kernel_size, kernel_size) {}

  Tensor<T, Device> forward(const Tensor<T, Device>& x) const {
    return avg_pool2d(x, kernel_size_, stride_, padding_, ceil_mode_, count_include_pad_, divisor_override_);
  }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }

  Size2d kernel_size() const { return kernel_size_; }
  Size2d stride() const { return stride_; }
  Size2d padding() const { return padding_; }
  bool ceil_mode() const { return ceil_mode_; }
  bool count_include_pad() const { return count_include_pad_; }
  index_t divisor_override() const { return divisor_override_; }

 private:
  Size2d kernel_size_, stride_, padding_;
  bool ceil_mode_, count_include_pad_;
  index_t divisor_override_;
};

// Adaptive average pooling to a fixed output size, torch.nn.AdaptiveAvgPool2d.
template <class T, class Device = cpu>
class BasicAdaptiveAvgPool2d : public BasicModule<T, Device> {
 public:
  explicit BasicAdaptiveAvgPool2d(Size2d output_size) : output_size_(output_size) {
    if (output_size.h < 1 || output_size.w < 1)
      throw_value_error("nn::AdaptiveAvgPool2d", "output_size must be >= 1, got " + output_size.to_string());
  }

  Tensor<T, Device> forward(const Tensor<T, Device>& x) const { return adaptive_avg_pool2d(x, output_size_); }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }

  Size2d output_size() const { return output_size_; }

 private:
  Size2d output_size_;
};

// Upsampling by integer scale factors, torch.nn.Upsample(scale_factor=s, mode=...,
// align_corners=...): mode "nearest" (kiln::upsample_nearest2d) or "bilinear"
// (kiln::upsample_bilinear2d); align_corners applies to bilinear only, as in PyTorch.
template <class T, class Device = cpu>
class BasicUpsample : public BasicModule<T, Device> {
 public:
  explicit BasicUpsample(Size2d scale_factor, const std::string& mode = "nearest", bool align_corners = false)
      : scale_factor_(scale_factor), bilinear_(mode == "bilinear"), align_corners_(align_corners) {
    const char* module = "nn::Upsample";
    if (mode != "nearest" && mode != "bilinear")
      throw_value_error(module, "mode must be \"nearest\" or \"bilinear\", got \"" + mode + "\"");
    if (align_corners && !bilinear_)
      throw_value_error(module, "align_corners applies to mode \"bilinear\" only (got mode \"nearest\")");
    if (scale_factor.h < 1 || scale_factor.w < 1)
      throw_value_error(module, "scale_factor must be a positive integer, got " + scale_factor.to_string());
  }

  Tensor<T, Device> forward(const Tensor<T, Device>& x) const {
    return bilinear_ ? upsample_bilinear2d(x, scale_factor_, align_corners_) : upsample_nearest2d(x, scale_factor_);
  }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) const { return forward(x); }

  Size2d scale_factor() const { return scale_factor_; }
  std::string mode() const { return bilinear_ ? "bilinear" : "nearest"; }
  bool align_corners() const { return align_corners_; }

 private:
  Size2d scale_factor_;
  bool bilinear_;
  bool align_corners_;
};

using MaxPool2d = BasicMaxPool2d<float, cpu>;
using AvgPool2d = BasicAvgPool2d<float, cpu>;
using AdaptiveAvgPool2d = BasicAdaptiveAvgPool2d<float, cpu>;
using Upsample = BasicUpsample<float, cpu>;

}  // namespace kiln::nn
