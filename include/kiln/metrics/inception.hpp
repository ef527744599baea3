// kiln/metrics/inception.hpp — Inception-v3 as torchvision's inception_v3 and as pytorch-fid's FID Inception
// (the network of the standard FID and Inception Score): 2048-d pool features and class logits, torchvision's
// parameter names, PyTorch's CPU bilinear resize, and a loader for state dicts converted from PyTorch to safetensors.
// Builds on nn (Conv2d, BatchNorm2d, Linear), ops/pool.hpp (pooling; detail::linear_map records the resize),
// ops/index.hpp (concat) and io/safetensors.hpp.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/io/json.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/nn/conv.hpp>
#include <kiln/nn/linear.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/nn/norm.hpp>
#include <kiln/ops/conv.hpp>
#include <kiln/ops/index.hpp>
#include <kiln/ops/pool.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::metrics {

// Which Inception-v3 the module computes.
//   torchvision: torchvision.models.inception_v3 (torchvision 0.14) in eval mode with transform_input = False
//                unless InceptionV3Options::transform_input says otherwise; 1000 classes.
//   fid:         pytorch-fid's fid_inception_v3 (src/pytorch_fid/inception.py), the port of the TensorFlow
//                Inception graph of the original FID code: torchvision's network with Mixed_5b/5c/5d
//                (FIDInceptionA), Mixed_6b..6e (FIDInceptionC) and Mixed_7b (FIDInceptionE_1) averaging their
//                branch_pool input without the zero padding (count_include_pad = False), Mixed_7c
//                (FIDInceptionE_2) taking a 3x3 max pool (stride 1, padding 1) there instead; 1008 classes.
enum class InceptionVariant { torchvision, fid };

// What happens to the images before the network (the defaults are pytorch-fid's InceptionV3).
struct InceptionV3Options {
  // Resize to 299x299 with F.interpolate(mode='bilinear', align_corners=False) (pytorch-fid's resize_input).
  // Without it the images go in at their own size, which must be at least 75x75.
  bool resize_input = true;
  // Scale from [0, 1] to [-1, 1] by 2x − 1 (pytorch-fid's normalize_input).
  bool normalize_input = true;
  // torchvision's transform_input, applied after the two steps above as torchvision does inside the
  // network: channel c becomes x·(std_c/0.5) + (mean_c − 0.5)/0.5 with ImageNet's mean (0.485, 0.456, 0.406)
  // and std (0.229, 0.224, 0.225). torchvision turns it on by default when it loads its pretrained weights,
  // so pytorch-fid's use_fid_inception = False path has it; the FID network never does.
  bool transform_input = false;
};

// How an Inception block pools its branch_pool input (3x3 windows, stride 1, padding 1).
enum class InceptionBranchPool {
  average,                    // F.avg_pool2d with count_include_pad = True (torchvision)
  average_excluding_padding,  // count_include_pad = False (pytorch-fid's FIDInceptionA/C/E_1)
  max                         // F.max_pool2d (pytorch-fid's FIDInceptionE_2)
};

// torchvision's BasicConv2d: "conv" (Conv2d without bias) → "bn" (BatchNorm2d, eps 0.001) → ReLU.
template <class T>
class InceptionConvBlock : public nn::BasicModule<T, cpu> {
 public:
  using tensor_type = Tensor<T, cpu>;

  InceptionConvBlock(index_t in_channels, index_t out_channels, Size2d kernel_size, Size2d stride, Size2d padding,
                     Rng& rng) {
    const nn::Conv2dOptions options{.stride = stride, .padding = padding, .bias = false};
    conv_ = this->register_module(
        "conv", std::make_shared<nn::BasicConv2d<T, cpu>>(in_channels, out_channels, kernel_size, options, rng));
    bn_ = this->register_module("bn", std::make_shared<nn::BasicBatchNorm2d<T, cpu>>(out_channels, 0.001));
  }
  InceptionConvBlock(index_t in_channels, index_t out_channels, Size2d kernel_size, Rng& rng)
      : InceptionConvBlock(in_channels, out_channels, kernel_size, 1, 0, rng) {}

  tensor_type forward(const tensor_type& x) const { return tensor_type(relu(bn_->forward(conv_->forward(x)))); }
  tensor_type operator()(const tensor_type& x) const { return forward(x); }

 private:
  std::shared_ptr<nn::BasicConv2d<T, cpu>> conv_;
  std::shared_ptr<nn::BasicBatchNorm2d<T, cpu>> bn_;
};

namespace inception_detail {

template <class T>
using Block = std::shared_ptr<InceptionConvBlock<T>>;

template <class T>
Block<T> add_block(nn::BasicModule<T, cpu>& parent, const char* name, index_t in_channels, index_t out_channels,
                   Size2d kernel_size, Size2d stride, Size2d padding, Rng& rng) {
  return parent.register_module(
      name, std::make_shared<InceptionConvBlock<T>>(in_channels, out_channels, kernel_size, stride, padding, rng));
}
template <class T>
Block<T> add_block(nn::BasicModule<T, cpu>& parent, const char* name, index_t in_channels, index_t out_channels,
                   Size2d kernel_size, Size2d padding, Rng& rng) {
  return add_block(parent, name, in_channels, out_channels, kernel_size, 1, padding, rng);
}
template <class T>
Block<T> add_block(nn::BasicModule<T, cpu>& parent, const char* name, index_t in_channels, index_t out_channels,
                   Size2d kernel_size, Rng& rng) {
  return add_block(parent, name, in_channels, out_channels, kernel_size, 1, 0, rng);
}

// The 3x3, stride 1, padding 1 pooling in front of an A, C or E block's branch_pool convolution.
template <class T>
Tensor<T, cpu> branch_pool_input(const Tensor<T, cpu>& x, InceptionBranchPool pool) {
  switch (pool) {
    case InceptionBranchPool::average: return avg_pool2d(x, 3, 1, 1, false, true);
    case InceptionBranchPool::average_excluding_padding: return avg_pool2d(x, 3, 1, 1, false, false);
    case InceptionBranchPool::max: return max_pool2d(x, 3, 1, 1);
  }
  return x;
}

// ---- the bilinear resize of pytorch-fid's preprocessing ----------------------------------------------------
// F.interpolate(x, size, mode='bilinear', align_corners=False) as PyTorch's CPU kernel computes it (torch 1.13;
// its weights read back by resizing one-hot rows, for sizes 5 to 401): per axis, scale = in/out rounded to
// float; output coordinate o reads source coordinate s = max(scale·(o + ½) − ½, 0), evaluated in double;
// taps i0 = min(⌊s⌋, in − 1) and i1 = i0 + 1 (i0 again at the last pixel) with weights 1 − λ and λ,
// λ = min(s − i0, 1) rounded to T. kiln::upsample_bilinear2d_to_size (backend/cpu/pool.hpp) evaluates s in
// T, which for float moves the weights by up to an ulp of s (1.5e-5 when resizing 400 pixels to 299), so the
// resize is done here to follow PyTorch's weights exactly.
template <class T>
struct ResizeTap {
  index_t i0, i1;
  T l0, l1;
};

template <class T>
std::vector<ResizeTap<T>> resize_taps(index_t in, index_t out) {
  std::vector<ResizeTap<T>> taps(static_cast<std::size_t>(out));
  const double scale = static_cast<double>(static_cast<float>(in) / static_cast<float>(out));
  for (index_t o = 0; o < out; ++o) {
    double s = scale * (static_cast<double>(o) + 0.5) - 0.5;
    if (s < 0) s = 0;
    const index_t i0 = std::min(static_cast<index_t>(s), in - 1);
    const T l1 = static_cast<T>(std::min(s - static_cast<double>(i0), 1.0));
    taps[static_cast<std::size_t>(o)] = {i0, i0 < in - 1 ? i0 + 1 : i0, T(1) - l1, l1};
  }
  return taps;
}

// The resize of `planes` planes [H, W] → [H_out, W_out]: y = R_h·x·R_wᵀ per plane, R holding each output
// row's two tap weights.
struct ResizeGeometry {
  index_t planes = 0, H = 1, W = 1, H_out = 1, W_out = 1;
};

// y = R_h·x·R_wᵀ: each output pixel is l_h0·(l_w0·x[i0, j0] + l_w1·x[i0, j1]) + l_h1·(l_w0·x[i1, j0] + l_w1·x[i1, j1]).
template <class T>
void resize_apply(const ResizeGeometry& g, const T* x, T* y) {
  const auto th = resize_taps<T>(g.H, g.H_out), tw = resize_taps<T>(g.W, g.W_out);
  for (index_t p = 0; p < g.planes; ++p) {
    const T* src = x + p * g.H * g.W;
    T* dst = y + p * g.H_out * g.W_out;
    for (index_t oh = 0; oh < g.H_out; ++oh) {
      const ResizeTap<T>& h = th[static_cast<std::size_t>(oh)];
      const T* r0 = src + h.i0 * g.W;
      const T* r1 = src + h.i1 * g.W;
      for (index_t ow = 0; ow < g.W_out; ++ow) {
        const ResizeTap<T>& w = tw[static_cast<std::size_t>(ow)];
        dst[oh * g.W_out + ow] =
            h.l0 * (w.l0 * r0[w.i0] + w.l1 * r0[w.i1]) + h.l1 * (w.l0 * r1[w.i0] + w.l1 * r1[w.i1]);
      }
    }
  }
}

// gx = R_hᵀ·gy·R_w, the adjoint (∂⟨gy, R_h x R_wᵀ⟩/∂x): each output pixel's gradient goes back to its four taps
// with the same weights.
template <class T>
void resize_adjoint(const ResizeGeometry& g, const T* gy, T* gx) {
  const auto th = resize_taps<T>(g.H, g.H_out), tw = resize_taps<T>(g.W, g.W_out);
  std::fill(gx, gx + g.planes * g.H * g.W, T(0));
  for (index_t p = 0; p < g.planes; ++p) {
    const T* src = gy + p * g.H_out * g.W_out;
    T* dst = gx + p * g.H * g.W;
    for (index_t oh = 0; oh < g.H_out; ++oh) {
      const ResizeTap<T>& h = th[static_cast<std::size_t>(oh)];
      T* r0 = dst + h.i0 * g.W;
      T* r1 = dst + h.i1 * g.W;
      for (index_t ow = 0; ow < g.W_out; ++ow) {
        const ResizeTap<T>& w = tw[static_cast<std::size_t>(ow)];
        const T v = src[oh * g.W_out + ow];
        r0[w.i0] += h.l0 * w.l0 * v;
        r0[w.i1] += h.l0 * w.l1 * v;
        r1[w.i0] += h.l1 * w.l0 * v;
        r1[w.i1] += h.l1 * w.l1 * v;
      }
    }
  }
}

}  // namespace inception_detail

// Resizes images [N, C, H, W] to [N, C, size.h, size.w] as F.interpolate(mode='bilinear', align_corners=False)
// does on PyTorch's CPU (the weights of inception_detail::resize_taps), up or down (without antialiasing, as
// pytorch-fid). Linear in the images; recorded with its adjoint as backward, so gradients of any order flow.
template <class T>
Tensor<T, cpu> resize_bilinear_like_pytorch(const Tensor<T, cpu>& images, Size2d size) {
  const char* op = "metrics::resize_bilinear_like_pytorch";
  if (!images.defined()) throw_value_error(op, "the images are an undefined tensor");
  if (images.dim() != 4) throw_shape_error(op, "expected images [N, C, H, W]", images.shape());
  if (images.size(2) < 1 || images.size(3) < 1) throw_shape_error(op, "the images are empty", images.shape());
  if (size.h < 1 || size.w < 1) throw_value_error(op, "the output size must be positive, got " + size.to_string());
  inception_detail::ResizeGeometry g;
  g.planes = images.size(0) * images.size(1), g.H = images.size(2), g.W = images.size(3);
  g.H_out = size.h, g.W_out = size.w;
  return kiln::detail::linear_map(
      "resize_bilinear_like_pytorch", "resize_bilinear_like_pytorch_backward", images,
      Shape{images.size(0), images.size(1), size.h, size.w},
      [g](const T* x, T* y) { inception_detail::resize_apply(g, x, y); },
      [g](const T* gy, T* gx) { inception_detail::resize_adjoint(g, gy, gx); });
}

// torchvision's InceptionA (Mixed_5b/5c/5d): 1x1 → 64; 1x1 → 48, 5x5 (pad 2) → 64; 1x1 → 64, 3x3 → 96,
// 3x3 → 96 (pad 1); pool → 1x1 → pool_features. Output channels 224 + pool_features.
template <class T>
class InceptionBlockA : public nn::BasicModule<T, cpu> {
 public:
  using tensor_type = Tensor<T, cpu>;
  InceptionBlockA(index_t in_channels, index_t pool_features, InceptionBranchPool pool, Rng& rng) : pool_(pool) {
    using inception_detail::add_block;
    branch1x1_ = add_block(*this, "branch1x1", in_channels, 64, 1, rng);
    branch5x5_1_ = add_block(*this, "branch5x5_1", in_channels, 48, 1, rng);
    branch5x5_2_ = add_block(*this, "branch5x5_2", 48, 64, 5, 2, rng);
    branch3x3dbl_1_ = add_block(*this, "branch3x3dbl_1", in_channels, 64, 1, rng);
    branch3x3dbl_2_ = add_block(*this, "branch3x3dbl_2", 64, 96, 3, 1, rng);
    branch3x3dbl_3_ = add_block(*this, "branch3x3dbl_3", 96, 96, 3, 1, rng);
    branch_pool_ = add_block(*this, "branch_pool", in_channels, pool_features, 1, rng);
  }
  tensor_type forward(const tensor_type& x) const {
    std::vector<tensor_type> out;
    out.push_back(branch1x1_->forward(x));
    out.push_back(branch5x5_2_->forward(branch5x5_1_->forward(x)));
    out.push_back(branch3x3dbl_3_->forward(branch3x3dbl_2_->forward(branch3x3dbl_1_->forward(x))));
    out.push_back(branch_pool_->forward(inception_detail::branch_pool_input(x, pool_)));
    return concat(out, 1);
  }

 private:
  InceptionBranchPool pool_;
  inception_detail::Block<T> branch1x1_, branch5x5_1_, branch5x5_2_, branch3x3dbl_1_, branch3x3dbl_2_,
      branch3x3dbl_3_, branch_pool_;
};

// torchvision's InceptionB (Mixed_6a), the 35 → 17 reduction: 3x3 stride 2 → 384; 1x1 → 64, 3x3 (pad 1) → 96,
// 3x3 stride 2 → 96; 3x3 stride 2 max pool. Output channels 480 + in_channels.
template <class T>
class InceptionBlockB : public nn::BasicModule<T, cpu> {
 public:
  using tensor_type = Tensor<T, cpu>;
  InceptionBlockB(index_t in_channels, Rng& rng) {
    using inception_detail::add_block;
    branch3x3_ = add_block(*this, "branch3x3", in_channels, 384, 3, 2, 0, rng);
    branch3x3dbl_1_ = add_block(*this, "branch3x3dbl_1", in_channels, 64, 1, rng);
    branch3x3dbl_2_ = add_block(*this, "branch3x3dbl_2", 64, 96, 3, 1, rng);
    branch3x3dbl_3_ = add_block(*this, "branch3x3dbl_3", 96, 96, 3, 2, 0, rng);
  }
  tensor_type forward(const tensor_type& x) const {
    std::vector<tensor_type> out;
    out.push_back(branch3x3_->forward(x));
    out.push_back(branch3x3dbl_3_->forward(branch3x3dbl_2_->forward(branch3x3dbl_1_->forward(x))));
    out.push_back(max_pool2d(x, 3, 2));
    return concat(out, 1);
  }

 private:
  inception_detail::Block<T> branch3x3_, branch3x3dbl_1_, branch3x3dbl_2_, branch3x3dbl_3_;
};

// torchvision's InceptionC (Mixed_6b..6e) with c7 = channels_7x7: 1x1 → 192; 1x1 → c7, 1x7 → c7, 7x1 → 192;
// 1x1 → c7, 7x1 → c7, 1x7 → c7, 7x1 → c7, 1x7 → 192 (padding 3 along the 7); pool → 1x1 → 192. Output 768.
template <class T>
class InceptionBlockC : public nn::BasicModule<T, cpu> {
 public:
  using tensor_type = Tensor<T, cpu>;
  InceptionBlockC(index_t in_channels, index_t channels_7x7, InceptionBranchPool pool, Rng& rng) : pool_(pool) {
    using inception_detail::add_block;
    const index_t c7 = channels_7x7;
    const Size2d k1x7{1, 7}, k7x1{7, 1}, p1x7{0, 3}, p7x1{3, 0};
    branch1x1_ = add_block(*this, "branch1x1", in_channels, 192, 1, rng);
    branch7x7_1_ = add_block(*this, "branch7x7_1", in_channels, c7, 1, rng);
    branch7x7_2_ = add_block(*this, "branch7x7_2", c7, c7, k1x7, p1x7, rng);
    branch7x7_3_ = add_block(*this, "branch7x7_3", c7, 192, k7x1, p7x1, rng);
    branch7x7dbl_1_ = add_block(*this, "branch7x7dbl_1", in_channels, c7, 1, rng);
    branch7x7dbl_2_ = add_block(*this, "branch7x7dbl_2", c7, c7, k7x1, p7x1, rng);
    branch7x7dbl_3_ = add_block(*this, "branch7x7dbl_3", c7, c7, k1x7, p1x7, rng);
    branch7x7dbl_4_ = add_block(*this, "branch7x7dbl_4", c7, c7, k7x1, p7x1, rng);
    branch7x7dbl_5_ = add_block(*this, "branch7x7dbl_5", c7, 192, k1x7, p1x7, rng);
    branch_pool_ = add_block(*this, "branch_pool", in_channels, 192, 1, rng);
  }
  tensor_type forward(const tensor_type& x) const {
    std::vector<tensor_type> out;
    out.push_back(branch1x1_->forward(x));
    out.push_back(branch7x7_3_->forward(branch7x7_2_->forward(branch7x7_1_->forward(x))));
    tensor_type d = branch7x7dbl_1_->forward(x);
    d = branch7x7dbl_3_->forward(branch7x7dbl_2_->forward(d));
    out.push_back(branch7x7dbl_5_->forward(branch7x7dbl_4_->forward(d)));
    out.push_back(branch_pool_->forward(inception_detail::branch_pool_input(x, pool_)));
    return concat(out, 1);
  }

 private:
  InceptionBranchPool pool_;
  inception_detail::Block<T> branch1x1_, branch7x7_1_, branch7x7_2_, branch7x7_3_, branch7x7dbl_1_, branch7x7dbl_2_,
      branch7x7dbl_3_, branch7x7dbl_4_, branch7x7dbl_5_, branch_pool_;
};

// torchvision's InceptionD (Mixed_7a), the 17 → 8 reduction: 1x1 → 192, 3x3 stride 2 → 320; 1x1 → 192,
// 1x7 → 192, 7x1 → 192, 3x3 stride 2 → 192; 3x3 stride 2 max pool. Output channels 512 + in_channels.
template <class T>
class InceptionBlockD : public nn::BasicModule<T, cpu> {
 public:
  using tensor_type = Tensor<T, cpu>;
  InceptionBlockD(index_t in_channels, Rng& rng) {
    using inception_detail::add_block;
    branch3x3_1_ = add_block(*this, "branch3x3_1", in_channels, 192, 1, rng);
    branch3x3_2_ = add_block(*this, "branch3x3_2", 192, 320, 3, 2, 0, rng);
    branch7x7x3_1_ = add_block(*this, "branch7x7x3_1", in_channels, 192, 1, rng);
    branch7x7x3_2_ = add_block(*this, "branch7x7x3_2", 192, 192, Size2d{1, 7}, Size2d{0, 3}, rng);
    branch7x7x3_3_ = add_block(*this, "branch7x7x3_3", 192, 192, Size2d{7, 1}, Size2d{3, 0}, rng);
    branch7x7x3_4_ = add_block(*this, "branch7x7x3_4", 192, 192, 3, 2, 0, rng);
  }
  tensor_type forward(const tensor_type& x) const {
    std::vector<tensor_type> out;
    out.push_back(branch3x3_2_->forward(branch3x3_1_->forward(x)));
    tensor_type b = branch7x7x3_2_->forward(branch7x7x3_1_->forward(x));
    out.push_back(branch7x7x3_4_->forward(branch7x7x3_3_->forward(b)));
    out.push_back(max_pool2d(x, 3, 2));
    return concat(out, 1);
  }

 private:
  inception_detail::Block<T> branch3x3_1_, branch3x3_2_, branch7x7x3_1_, branch7x7x3_2_, branch7x7x3_3_,
      branch7x7x3_4_;
};

// torchvision's InceptionE (Mixed_7b, 7c): 1x1 → 320; 1x1 → 384 then [1x3, 3x1] → 384 each; 1x1 → 448,
// 3x3 (pad 1) → 384, then [1x3, 3x1] → 384 each; pool → 1x1 → 192. Output 2048 channels in that order.
template <class T>
class InceptionBlockE : public nn::BasicModule<T, cpu> {
 public:
  using tensor_type = Tensor<T, cpu>;
  InceptionBlockE(index_t in_channels, InceptionBranchPool pool, Rng& rng) : pool_(pool) {
    using inception_detail::add_block;
    const Size2d k1x3{1, 3}, k3x1{3, 1}, p1x3{0, 1}, p3x1{1, 0};
    branch1x1_ = add_block(*this, "branch1x1", in_channels, 320, 1, rng);
    branch3x3_1_ = add_block(*this, "branch3x3_1", in_channels, 384, 1, rng);
    branch3x3_2a_ = add_block(*this, "branch3x3_2a", 384, 384, k1x3, p1x3, rng);
    branch3x3_2b_ = add_block(*this, "branch3x3_2b", 384, 384, k3x1, p3x1, rng);
    branch3x3dbl_1_ = add_block(*this, "branch3x3dbl_1", in_channels, 448, 1, rng);
    branch3x3dbl_2_ = add_block(*this, "branch3x3dbl_2", 448, 384, 3, 1, rng);
    branch3x3dbl_3a_ = add_block(*this, "branch3x3dbl_3a", 384, 384, k1x3, p1x3, rng);
    branch3x3dbl_3b_ = add_block(*this, "branch3x3dbl_3b", 384, 384, k3x1, p3x1, rng);
    branch_pool_ = add_block(*this, "branch_pool", in_channels, 192, 1, rng);
  }
  tensor_type forward(const tensor_type& x) const {
    std::vector<tensor_type> out;
    out.push_back(branch1x1_->forward(x));
    const tensor_type b = branch3x3_1_->forward(x);
    out.push_back(branch3x3_2a_->forward(b));
    out.push_back(branch3x3_2b_->forward(b));
    const tensor_type d = branch3x3dbl_2_->forward(branch3x3dbl_1_->forward(x));
    out.push_back(branch3x3dbl_3a_->forward(d));
    out.push_back(branch3x3dbl_3b_->forward(d));
    out.push_back(branch_pool_->forward(inception_detail::branch_pool_input(x, pool_)));
    return concat(out, 1);
  }

 private:
  InceptionBranchPool pool_;
  inception_detail::Block<T> branch1x1_, branch3x3_1_, branch3x3_2a_, branch3x3_2b_, branch3x3dbl_1_, branch3x3dbl_2_,
      branch3x3dbl_3a_, branch3x3dbl_3b_, branch_pool_;
};

// Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", 2016) as
// torchvision builds it, in either InceptionVariant. Input: images [N, 3, H, W] with values in [0, 1]
// (gray [N, 1, H, W] is repeated to three channels), preprocessed by `options` (by default as pytorch-fid:
// bilinear resize to 299x299, then 2x − 1). features() gives the [N, 2048] output of the adaptive average
// pool (what FID compares), forward() the logits [N, num_classes()] of the final "fc" layer (what the
// Inception Score's softmax reads).
//
// Parameters and buffers carry the names of torchvision's state dict ("Conv2d_1a_3x3.conv.weight",
// "Mixed_5b.branch1x1.bn.running_mean", ..., "fc.weight", "fc.bias"); convolutions have no bias and the
// BatchNorms eps = 0.001. The auxiliary classifier (torchvision's "AuxLogits.*", used only to train the
// network) is not built: load_inception_v3_weights skips those entries of a full torchvision state dict.
// Dropout before fc is not applied (the network is an evaluation tool; torchvision's eval mode drops nothing).
// The module is created in eval mode, so the BatchNorms use their running statistics; it computes with
// kiln's ordinary ops, so gradients flow through it when grad mode is on (e.g. for a perceptual loss), but
// for metrics run it under kiln::NoGrad. The parameters start as PyTorch's default layer initialisation from a
// fixed seed: placeholders until weights are loaded.
template <class T = float>
class BasicInceptionV3 : public nn::BasicModule<T, cpu> {
 public:
  using tensor_type = Tensor<T, cpu>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "kiln::metrics::BasicInceptionV3 computes in float or double");

  static constexpr index_t feature_dim = 2048;
  static constexpr index_t resized_size = 299;  // the side images are resized to
  static constexpr index_t min_input_size = 75;  // the smallest side the network accepts (without resizing)

  explicit BasicInceptionV3(InceptionVariant variant = InceptionVariant::fid, InceptionV3Options options = {})
      : variant_(variant), options_(options) {
    using inception_detail::add_block;
    const bool fid = variant == InceptionVariant::fid;
    const InceptionBranchPool average =
        fid ? InceptionBranchPool::average_excluding_padding : InceptionBranchPool::average;
    const InceptionBranchPool last = fid ? InceptionBranchPool::max : InceptionBranchPool::average;
    num_classes_ = fid ? 1008 : 1000;
    Rng rng(0);
    auto& self = static_cast<nn::BasicModule<T, cpu>&>(*this);
    conv1a_ = add_block(self, "Conv2d_1a_3x3", 3, 32, 3, 2, 0, rng);
    conv2a_ = add_block(self, "Conv2d_2a_3x3", 32, 32, 3, rng);
    conv2b_ = add_block(self, "Conv2d_2b_3x3", 32, 64, 3, 1, rng);
    conv3b_ = add_block(self, "Conv2d_3b_1x1", 64, 80, 1, rng);
    conv4a_ = add_block(self, "Conv2d_4a_3x3", 80, 192, 3, rng);
    mixed5b_ = this->register_module("Mixed_5b", std::make_shared<InceptionBlockA<T>>(192, 32, average, rng));
    mixed5c_ = this->register_module("Mixed_5c", std::make_shared<InceptionBlockA<T>>(256, 64, average, rng));
    mixed5d_ = this->register_module("Mixed_5d", std::make_shared<InceptionBlockA<T>>(288, 64, average, rng));
    mixed6a_ = this->register_module("Mixed_6a", std::make_shared<InceptionBlockB<T>>(288, rng));
    mixed6b_ = this->register_module("Mixed_6b", std::make_shared<InceptionBlockC<T>>(768, 128, average, rng));
    mixed6c_ = this->register_module("Mixed_6c", std::make_shared<InceptionBlockC<T>>(768, 160, average, rng));
    mixed6d_ = this->register_module("Mixed_6d", std::make_shared<InceptionBlockC<T>>(768, 160, average, rng));
    mixed6e_ = this->register_module("Mixed_6e", std::make_shared<InceptionBlockC<T>>(768, 192, average, rng));
    mixed7a_ = this->register_module("Mixed_7a", std::make_shared<InceptionBlockD<T>>(768, rng));
    mixed7b_ = this->register_module("Mixed_7b", std::make_shared<InceptionBlockE<T>>(1280, average, rng));
    mixed7c_ = this->register_module("Mixed_7c", std::make_shared<InceptionBlockE<T>>(2048, last, rng));
    fc_ = this->register_module("fc", std::make_shared<nn::BasicLinear<T, cpu>>(feature_dim, num_classes_, rng));
    this->eval();
  }

  InceptionVariant variant() const { return variant_; }
  const InceptionV3Options& options() const { return options_; }
  index_t num_classes() const { return num_classes_; }

  // The network's input for `images` [N, 3, H, W] or [N, 1, H, W] (values in [0, 1]): gray repeated to three
  // channels, then the steps of options() in pytorch-fid's order (resize, 2x − 1), then torchvision's
  // transform_input when asked. Throws ShapeError for other shapes, or for sides below 75 without resizing.
  tensor_type preprocess(const tensor_type& images) const {
    const char* op = "metrics::InceptionV3";
    if (!images.defined()) throw_value_error(op, "the images are an undefined tensor");
    if (images.dim() != 4 || (images.size(1) != 1 && images.size(1) != 3))
      throw_shape_error(op, "expected images [N, 3, H, W] or gray [N, 1, H, W] with values in [0, 1]",
                        images.shape());
    if (images.size(2) < 1 || images.size(3) < 1) throw_shape_error(op, "the images are empty", images.shape());
    tensor_type x = images;
    if (options_.resize_input) {
      x = resize_bilinear_like_pytorch(x, Size2d{resized_size, resized_size});
    } else if (x.size(2) < min_input_size || x.size(3) < min_input_size) {
      throw_shape_error(op,
                        "without resize_input the images must be at least " + std::to_string(min_input_size) + "x" +
                            std::to_string(min_input_size) + " (or turn resize_input on)",
                        images.shape());
    }
    // Gray to three channels (after the resize, which acts on each channel alone: the same numbers, a third
    // of the work).
    if (x.size(1) == 1) x = x.expand(Shape{x.size(0), 3, x.size(2), x.size(3)});
    if (options_.normalize_input) x = tensor_type(x * T(2) - T(1));
    if (options_.transform_input) {
      // torchvision's constants, each rounded to T as PyTorch multiplies a float tensor by a Python float.
      const double mean[3] = {0.485, 0.456, 0.406}, std[3] = {0.229, 0.224, 0.225};
      std::vector<T> scale(3), shift(3);
      for (int c = 0; c < 3; ++c) {
        scale[static_cast<std::size_t>(c)] = static_cast<T>(std[c] / 0.5);
        shift[static_cast<std::size_t>(c)] = static_cast<T>((mean[c] - 0.5) / 0.5);
      }
      x = tensor_type(x * from_vector<T>(scale, Shape{1, 3, 1, 1}) + from_vector<T>(shift, Shape{1, 3, 1, 1}));
    }
    return x;
  }

  // The [N, 2048] pool features of `images` (after the adaptive average pool, before dropout and fc).
  tensor_type features(const tensor_type& images) const {
    tensor_type x = preprocess(images);
    x = conv2b_->forward(conv2a_->forward(conv1a_->forward(x)));  // [N, 64, 147, 147] at 299x299
    x = max_pool2d(x, 3, 2);                                       // [N, 64, 73, 73]
    x = conv4a_->forward(conv3b_->forward(x));                     // [N, 192, 71, 71]
    x = max_pool2d(x, 3, 2);                                       // [N, 192, 35, 35]
    x = mixed5d_->forward(mixed5c_->forward(mixed5b_->forward(x)));  // [N, 288, 35, 35]
    x = mixed6a_->forward(x);                                      // [N, 768, 17, 17]
    x = mixed6e_->forward(mixed6d_->forward(mixed6c_->forward(mixed6b_->forward(x))));
    x = mixed7c_->forward(mixed7b_->forward(mixed7a_->forward(x)));  // [N, 2048, 8, 8]
    return adaptive_avg_pool2d(x, 1).reshape(Shape{x.size(0), feature_dim});
  }

  // The logits [N, num_classes()] of pool features [N, 2048] (the "fc" layer).
  tensor_type classify(const tensor_type& features) const {
    if (!features.defined() || features.dim() != 2 || features.size(1) != feature_dim)
      throw_shape_error("metrics::InceptionV3::classify", "expected features [N, 2048]",
                        features.defined() ? features.shape() : Shape{});
    return fc_->forward(features);
  }

  // The logits [N, num_classes()] of `images`.
  tensor_type forward(const tensor_type& images) const { return classify(features(images)); }
  tensor_type operator()(const tensor_type& images) const { return forward(images); }

 private:
  InceptionVariant variant_;
  InceptionV3Options options_;
  index_t num_classes_ = 0;
  inception_detail::Block<T> conv1a_, conv2a_, conv2b_, conv3b_, conv4a_;
  std::shared_ptr<InceptionBlockA<T>> mixed5b_, mixed5c_, mixed5d_;
  std::shared_ptr<InceptionBlockB<T>> mixed6a_;
  std::shared_ptr<InceptionBlockC<T>> mixed6b_, mixed6c_, mixed6d_, mixed6e_;
  std::shared_ptr<InceptionBlockD<T>> mixed7a_;
  std::shared_ptr<InceptionBlockE<T>> mixed7b_, mixed7c_;
  std::shared_ptr<nn::BasicLinear<T, cpu>> fc_;
};

using InceptionV3 = BasicInceptionV3<float>;

namespace inception_detail {

inline bool is_aux_entry(const std::string& name) { return name.rfind("AuxLogits.", 0) == 0; }

inline bool is_batch_count(const std::string& name) {
  static constexpr const char suffix[] = "num_batches_tracked";
  const std::size_t n = sizeof(suffix) - 1;
  return name.size() >= n && name.compare(name.size() - n, n, suffix) == 0;
}

}  // namespace inception_detail

// Loads an Inception-v3 state dict into `model` by torchvision's names, as it comes from PyTorch
// (torchvision's inception_v3().state_dict(), or pytorch-fid's FID weights, written to safetensors):
//   - "AuxLogits.*" entries (torchvision's auxiliary classifier, which the model does not build) are skipped
//     and listed in the result's unexpected_keys;
//   - "*.num_batches_tracked" (PyTorch stores them as 0-d I64 tensors; kiln's BatchNorm holds T) are read as
//     one I64, I32 or floating-point number and stored with the model's shape; where the file has none the
//     model keeps its own (they only count training batches) and the result's missing_keys lists them
//     (io::load_module cannot read such files: SafeTensorsFile::get converts floating-point data only);
//   - every other parameter and buffer must be present with its shape, and nothing else may be: otherwise
//     nn::StateDictError lists the problems and the model is left unchanged.
template <class T>
nn::LoadStateDictResult load_inception_v3_weights(const io::SafeTensorsFile& file, BasicInceptionV3<T>& model) {
  const nn::StateDict<T, cpu> current = model.state_dict();
  nn::LoadStateDictResult result;
  nn::StateDict<T, cpu> dict;
  for (const std::string& name : file.names()) {
    if (inception_detail::is_aux_entry(name)) {
      result.unexpected_keys.push_back(name);
      continue;
    }
    if (!inception_detail::is_batch_count(name)) {
      dict.insert(name, file.template get<T>(name));
      continue;
    }
    // A batch count: one number, stored with the model's shape for it.
    const io::DType dtype = file.dtype(name);
    const std::string_view bytes = file.raw(name);
    double count = 0;
    if (io::is_convertible_float(dtype) && file.info(name).numel() == 1) {
      count = static_cast<double>(file.template get<T>(name).data()[0]);
    } else if ((dtype == io::DType::I64 || dtype == io::DType::I32) && bytes.size() == io::dtype_size(dtype)) {
      std::uint64_t bits = 0;  // little endian
      for (std::size_t i = bytes.size(); i-- > 0;) bits = (bits << 8) | static_cast<unsigned char>(bytes[i]);
      if (dtype == io::DType::I64)
        count = static_cast<double>(static_cast<std::int64_t>(bits));
      else
        count = static_cast<double>(static_cast<std::int32_t>(static_cast<std::uint32_t>(bits)));
    } else {
      throw io::FormatError("kiln::metrics::load_inception_v3_weights: " + file.source() + ": '" + name + "' holds " +
                            std::to_string(file.info(name).numel()) + " " + io::dtype_name(dtype) +
                            " elements; expected one I64, I32 or floating-point count");
    }
    const Tensor<T, cpu>* mine = current.find(name);
    dict.insert(name, full<T, cpu>(mine ? mine->shape() : file.shape(name), static_cast<T>(count)));
  }
  for (const auto& [name, value] : current)
    if (inception_detail::is_batch_count(name) && !dict.contains(name)) {
      result.missing_keys.push_back(name);
      dict.insert(name, value.clone());
    }
  model.load_state_dict(dict, true);
  return result;
}

// The same from the safetensors file at `path` (io::FileError when it cannot be read).
template <class T>
nn::LoadStateDictResult load_inception_v3_weights(const std::string& path, BasicInceptionV3<T>& model) {
  return load_inception_v3_weights(io::SafeTensorsFile(path), model);
}

}  // namespace kiln::metrics
