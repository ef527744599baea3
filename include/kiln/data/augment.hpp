// kiln/data/augment.hpp — seeded image augmentation for DataLoader batches [B, C, H, W]:
// RandomHorizontalFlip, RandomCrop (with constant padding), ColorJitter (brightness, contrast), Compose.
// Builds on data/loader.hpp (Batch, DataLoader::Transform), core/philox.hpp (Rng and its value rules)
// and core/error.hpp.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/data/loader.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace kiln::data {

// Random-number rule shared by every transform here. A call on a batch of B images reserves
// blocks from the Rng it is given, in one piece: one block per image (flip, jitter) or two
// (crop). Image k draws only from its own blocks, so what happens to an image depends on the
// Rng's state and the image's position in the batch, never on threads or on other images.
// A transform always reserves its blocks, whatever its parameters, so the transforms after it
// in a Compose see the same stream positions.

namespace detail {

struct ImageBatchDims {
  index_t batch, channels, height, width;
};

// Checks that batch.inputs is a float image batch [B, C, H, W], makes it contiguous (a copy only
// when it is a strided view) and returns its extents.
inline ImageBatchDims image_batch_dims(const char* op, Batch& batch) {
  if (!batch.inputs.defined()) throw_value_error(op, "the batch has no inputs");
  if (batch.inputs.dim() != 4)
    throw_shape_error(op, "expects image batches [B, C, H, W] (reshape flat images first, e.g. "
                          "[B, 784] to [B, 1, 28, 28])",
                      batch.inputs.shape());
  batch.inputs = batch.inputs.contiguous();
  const Shape& s = batch.inputs.shape();
  return ImageBatchDims{s[0], s[1], s[2], s[3]};
}

inline std::string extent_text(index_t h, index_t w) { return std::to_string(h) + "x" + std::to_string(w); }

}  // namespace detail

// Flips each image left-right (reverses the W axis of all its channels) with probability p.
// Image k is flipped when word 0 of its block is below ceil(p · 2^32) (bernoulli_from_word).
struct RandomHorizontalFlip {
  double p = 0.5;

  void operator()(Batch& batch, Rng& rng) const {
    const char* op = "RandomHorizontalFlip";
    if (!(p >= 0.0 && p <= 1.0)) throw_value_error(op, "p must lie in [0, 1], got " + std::to_string(p));
    const detail::ImageBatchDims d = detail::image_batch_dims(op, batch);
    const std::uint64_t threshold = bernoulli_threshold(p);
    const std::uint64_t first = rng.reserve(static_cast<std::uint64_t>(d.batch));
    const index_t image_size = d.channels * d.height * d.width;
    float* data = batch.inputs.data();
    for (index_t k = 0; k < d.batch; ++k) {
      if (!bernoulli_from_word(rng.block(first + static_cast<std::uint64_t>(k))[0], threshold)) continue;
      float* image = data + k * image_size;
      for (index_t row = 0; row < d.channels * d.height; ++row)
        std::reverse(image + row * d.width, image + (row + 1) * d.width);
    }
  }
};

// torchvision's RandomCrop with constant padding: pads each image by `padding` on every side with
// `fill`, then takes a size_h × size_w window at offset (top, left), top uniform in
// [0, H + 2·padding − size_h] and left uniform in [0, W + 2·padding − size_w] (one offset per
// image, shared by its channels). The batch becomes [B, C, size_h, size_w]; labels are kept.
// Image k's top comes from block 2k and its left from block 2k + 1 (bounded_from_block, unbiased).
// Throws ShapeError when the window is larger than the padded image.
struct RandomCrop {
  index_t size_h = 0, size_w = 0;
  index_t padding = 0;
  float fill = 0.0f;

  void operator()(Batch& batch, Rng& rng) const {
    const char* op = "RandomCrop";
    if (size_h < 1 || size_w < 1)
      throw_value_error(op, "crop size must be positive, got " + detail::extent_text(size_h, size_w));
    if (padding < 0) throw_value_error(op, "padding must be non-negative, got " + std::to_string(padding));
    const detail::ImageBatchDims d = detail::image_batch_dims(op, batch);
    const index_t padded_h = d.height + 2 * padding, padded_w = d.width + 2 * padding;
    if (size_h > padded_h || size_w > padded_w)
      throw_shape_error(op, "crop " + detail::extent_text(size_h, size_w) + " is larger than the padded image " +
                                detail::extent_text(padded_h, padded_w) + " (image " +
                                detail::extent_text(d.height, d.width) + ", padding " + std::to_string(padding) + ")",
                        batch.inputs.shape());

    const std::uint64_t first = rng.reserve(2 * static_cast<std::uint64_t>(d.batch));
    // Same shape and nothing to pad: the only window is the image itself.
    if (padding == 0 && size_h == d.height && size_w == d.width) return;

    const auto range_h = static_cast<std::uint64_t>(padded_h - size_h + 1);
    const auto range_w = static_cast<std::uint64_t>(padded_w - size_w + 1);
    Tensor<float> out = Tensor<float>::uninitialized(Shape{d.batch, d.channels, size_h, size_w});
    const float* src = batch.inputs.data();
    float* dst = out.data();
    const PhiloxKey key = rng.key();
    for (index_t k = 0; k < d.batch; ++k) {
      const std::uint64_t block = first + 2 * static_cast<std::uint64_t>(k);
      const auto top = static_cast<index_t>(bounded_from_block(rng.block(block), key, range_h));
      const auto left = static_cast<index_t>(bounded_from_block(rng.block(block + 1), key, range_w));
      // Output column x reads source column left + x − padding; the ones inside [0, W) are
      // x in [x_begin, x_end).
      const index_t x_begin = std::clamp<index_t>(padding - left, 0, size_w);
      const index_t x_end = std::clamp<index_t>(d.width + padding - left, x_begin, size_w);
      for (index_t c = 0; c < d.channels; ++c) {
        const float* src_plane = src + (k * d.channels + c) * d.height * d.width;
        float* dst_plane = dst + (k * d.channels + c) * size_h * size_w;
        for (index_t y = 0; y < size_h; ++y) {
          float* dst_row = dst_plane + y * size_w;
          const index_t src_y = top + y - padding;
          if (src_y < 0 || src_y >= d.height || x_begin == x_end) {
            std::fill(dst_row, dst_row + size_w, fill);
            continue;
          }
          std::fill(dst_row, dst_row + x_begin, fill);
          std::memcpy(dst_row + x_begin, src_plane + src_y * d.width + (left + x_begin - padding),
                      sizeof(float) * static_cast<std::size_t>(x_end - x_begin));
          std::fill(dst_row + x_end, dst_row + size_w, fill);
        }
      }
    }
    batch.inputs = std::move(out);
  }
};

// torchvision's ColorJitter restricted to brightness and contrast, per image:
//   brightness: factor b ~ U[max(0, 1 − brightness), 1 + brightness], x ← b·x;
//   contrast:   factor c ~ U[max(0, 1 − contrast), 1 + contrast], x ← c·x + (1 − c)·m, where m is
//               the mean over the image's pixels of the image (C = 1) or of its grayscale
//               0.2989·R + 0.587·G + 0.114·B (C = 3; torchvision's tensor coefficients).
// A zero parameter turns its adjustment off (nothing is applied, as torchvision does). With both
// on, the order is random per image as in torchvision: contrast first when the top bit of word 0
// of the image's block is set, brightness first otherwise; b comes from word 1, c from word 2
// (uniform_float, 24 bits). With clamp01 each adjustment clamps its result to [0, 1], as
// torchvision's blend does for float images (so the order matters only through clamping).
// Contrast needs C = 1 or 3 (ShapeError otherwise); brightness works for any C.
struct ColorJitter {
  double brightness = 0, contrast = 0;
  bool clamp01 = true;

  void operator()(Batch& batch, Rng& rng) const {
    const char* op = "ColorJitter";
    if (!(brightness >= 0.0 && std::isfinite(brightness)))
      throw_value_error(op, "brightness must be finite and non-negative, got " + std::to_string(brightness));
    if (!(contrast >= 0.0 && std::isfinite(contrast)))
      throw_value_error(op, "contrast must be finite and non-negative, got " + std::to_string(contrast));
    const detail::ImageBatchDims d = detail::image_batch_dims(op, batch);
    if (contrast > 0.0 && d.channels != 1 && d.channels != 3)
      throw_shape_error(op, "contrast needs 1 (gray) or 3 (RGB) channels, got " + std::to_string(d.channels),
                        batch.inputs.shape());
    const std::uint64_t first = rng.reserve(static_cast<std::uint64_t>(d.batch));
    if (brightness == 0.0 && contrast == 0.0) return;

    const index_t plane = d.height * d.width;
    const index_t image_size = d.channels * plane;
    float* data = batch.inputs.data();
    for (index_t k = 0; k < d.batch; ++k) {
      const PhiloxBlock words = rng.block(first + static_cast<std::uint64_t>(k));
      float* image = data + k * image_size;
      const bool contrast_first = (words[0] >> 31) != 0;
      if (contrast_first) adjust_contrast(image, d.channels, plane, words[2]);
      adjust_brightness(image, image_size, words[1]);
      if (!contrast_first) adjust_contrast(image, d.channels, plane, words[2]);
    }
  }

 private:
  // A factor uniform in [max(0, 1 − strength), 1 + strength) from one word.
  static float factor_from_word(double strength, std::uint32_t word) {
    const double low = std::max(0.0, 1.0 - strength), high = 1.0 + strength;
    return static_cast<float>(low + (high - low) * static_cast<double>(uniform_float(word)));
  }

  float clamped(float v) const { return clamp01 ? std::clamp(v, 0.0f, 1.0f) : v; }

  void adjust_brightness(float* image, index_t count, std::uint32_t word) const {
    if (brightness == 0.0) return;
    const float b = factor_from_word(brightness, word);
    for (index_t i = 0; i < count; ++i) image[i] = clamped(b * image[i]);
  }

  void adjust_contrast(float* image, index_t channels, index_t plane, std::uint32_t word) const {
    if (contrast == 0.0) return;
    const float c = factor_from_word(contrast, word);
    double sum = 0.0;
    if (channels == 3) {
      const float* r = image;
      const float* g = image + plane;
      const float* b = image + 2 * plane;
      for (index_t i = 0; i < plane; ++i) sum += 0.2989 * r[i] + 0.587 * g[i] + 0.114 * b[i];
    } else {
      for (index_t i = 0; i < plane; ++i) sum += image[i];
    }
    const auto mean = static_cast<float>(sum / static_cast<double>(std::max<index_t>(plane, 1)));
    const float mean_term = (1.0f - c) * mean;
    for (index_t i = 0; i < channels * plane; ++i) image[i] = clamped(c * image[i] + mean_term);
  }
};

// Applies transforms in order, each to the batch the previous one left, all drawing from the same
// Rng one after another. Usable directly as a DataLoader::Transform:
//   DataLoader loader(x, y, options, Compose{RandomCrop{28, 28, 4}, RandomHorizontalFlip{}});
class Compose {
 public:
  using Transform = DataLoader::Transform;

  Compose() = default;
  Compose(std::initializer_list<Transform> transforms) : transforms_(transforms) { check(); }
  explicit Compose(std::vector<Transform> transforms) : transforms_(std::move(transforms)) { check(); }

  // Appends a transform; returns *this for chaining.
  Compose& add(Transform transform) {
    if (!transform) throw_value_error("Compose", "transform " + std::to_string(transforms_.size()) + " is empty");
    transforms_.push_back(std::move(transform));
    return *this;
  }

  std::size_t size() const { return transforms_.size(); }

  void operator()(Batch& batch, Rng& rng) const {
    for (const Transform& t : transforms_) t(batch, rng);
  }

 private:
  void check() const {
    for (std::size_t i = 0; i < transforms_.size(); ++i)
      if (!transforms_[i]) throw_value_error("Compose", "transform " + std::to_string(i) + " is empty");
  }

  std::vector<Transform> transforms_;
};

}  // namespace kiln::data
