// Tests of include/kiln/data/augment.hpp: flips against hand-reversed images and a binomial bound,
// crops against every window of a hand-padded image, jitter factors recovered from pixel ratios
// and deviations from the mean, reproducibility by seed, and a DataLoader run with prefetch on
// and off.
#include <doctest/doctest.h>
#include <kiln/backend/cpu/thread_pool.hpp>
#include <kiln/data/augment.hpp>
#include <kiln/data/loader.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

using kiln::index_t;
using kiln::Rng;
using kiln::Shape;
using kiln::Tensor;
using kiln::data::Batch;

Tensor<float> tensor_of(const std::vector<float>& values, const Shape& shape) {
  Tensor<float> t = Tensor<float>::uninitialized(shape);
  REQUIRE(static_cast<std::size_t>(t.numel()) == values.size());
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

// Values 0, 1, 2, ... over the shape (all distinct).
Tensor<float> counting(const Shape& shape) {
  std::vector<float> v(static_cast<std::size_t>(shape.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return tensor_of(v, shape);
}

// Values uniform in [low, high) from a small linear congruential generator (independent of kiln).
Tensor<float> pseudo_random(const Shape& shape, float low, float high, std::uint32_t seed) {
  std::vector<float> v(static_cast<std::size_t>(shape.numel()));
  std::uint32_t state = seed * 2654435761u + 1u;
  for (float& x : v) {
    state = state * 1664525u + 1013904223u;
    x = low + (high - low) * static_cast<float>(state >> 8) / 16777216.0f;
  }
  return tensor_of(v, shape);
}

Batch batch_of(const Tensor<float>& inputs) {
  Batch b;
  b.inputs = inputs.clone();
  return b;
}

std::vector<float> values(const Tensor<float>& t) { return t.to_vector(); }

bool same_bits(const Tensor<float>& a, const Tensor<float>& b) {
  if (a.shape() != b.shape()) return false;
  const std::vector<float> va = values(a), vb = values(b);
  return std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("RandomHorizontalFlip with p = 1 reverses every row of every image") {
  const Shape shape{3, 2, 3, 5};
  const Tensor<float> x = counting(shape);
  Batch b = batch_of(x);
  Rng rng(1);
  kiln::data::RandomHorizontalFlip{1.0}(b, rng);
  REQUIRE(b.inputs.shape() == shape);
  const std::vector<float> in = values(x), out = values(b.inputs);
  for (index_t row = 0; row < 3 * 2 * 3; ++row)
    for (index_t col = 0; col < 5; ++col)
      CHECK(out[static_cast<std::size_t>(row * 5 + col)] == in[static_cast<std::size_t>(row * 5 + (4 - col))]);
  CHECK(rng.offset() == 3);  // one block per image
}

TEST_CASE("RandomHorizontalFlip with p = 0 leaves the batch unchanged") {
  const Tensor<float> x = counting(Shape{4, 3, 2, 6});
  Batch b = batch_of(x);
  Rng rng(2);
  kiln::data::RandomHorizontalFlip{0.0}(b, rng);
  CHECK(same_bits(b.inputs, x));
}

TEST_CASE("RandomHorizontalFlip with p = 0.5 flips about half of 2000 images") {
  // Each image is the row [0, 1]; a flipped one starts with 1.
  const index_t n = 2000;
  std::vector<float> v;
  for (index_t i = 0; i < n; ++i) v.insert(v.end(), {0.0f, 1.0f});
  for (double p : {0.5, 0.2}) {
    Batch b = batch_of(tensor_of(v, Shape{n, 1, 1, 2}));
    Rng rng(3);
    kiln::data::RandomHorizontalFlip{p}(b, rng);
    const std::vector<float> out = values(b.inputs);
    index_t flipped = 0;
    for (index_t i = 0; i < n; ++i) {
      const float first = out[static_cast<std::size_t>(2 * i)], second = out[static_cast<std::size_t>(2 * i + 1)];
      REQUIRE(first + second == 1.0f);
      flipped += first == 1.0f ? 1 : 0;
    }
    const double fraction = static_cast<double>(flipped) / static_cast<double>(n);
    const double sigma = std::sqrt(p * (1 - p) / static_cast<double>(n));
    CHECK(std::abs(fraction - p) < 4 * sigma);
  }
}

TEST_CASE("RandomHorizontalFlip rejects p outside [0, 1] and non-image batches") {
  Batch b = batch_of(counting(Shape{2, 1, 2, 2}));
  Rng rng(4);
  CHECK_THROWS_AS((kiln::data::RandomHorizontalFlip{1.5}(b, rng)), kiln::ValueError);
  CHECK_THROWS_AS((kiln::data::RandomHorizontalFlip{-0.1}(b, rng)), kiln::ValueError);
  Batch flat = batch_of(counting(Shape{2, 784}));
  try {
    kiln::data::RandomHorizontalFlip{}(flat, rng);
    FAIL("expected a ShapeError");
  } catch (const kiln::ShapeError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("RandomHorizontalFlip") != std::string::npos);
    CHECK(msg.find("[2, 784]") != std::string::npos);
  }
}

TEST_CASE("RandomHorizontalFlip works on a strided view of the inputs") {
  // A [2, 1, 3, 4] batch stored as [2, 1, 4, 3] and transposed: flip reads it correctly.
  const Tensor<float> stored = counting(Shape{2, 1, 4, 3});
  Batch b;
  b.inputs = stored.transpose(2, 3);
  const std::vector<float> logical = values(b.inputs);  // contiguous copy of the view
  Rng rng(5);
  kiln::data::RandomHorizontalFlip{1.0}(b, rng);
  const std::vector<float> out = values(b.inputs);
  for (index_t row = 0; row < 2 * 3; ++row)
    for (index_t col = 0; col < 4; ++col)
      CHECK(out[static_cast<std::size_t>(row * 4 + col)] == logical[static_cast<std::size_t>(row * 4 + 3 - col)]);
}

TEST_CASE("RandomCrop with no padding and the image's own size is the identity") {
  const Tensor<float> x = counting(Shape{4, 2, 5, 6});
  Batch b = batch_of(x);
  Rng rng(6);
  kiln::data::RandomCrop{5, 6}(b, rng);
  CHECK(same_bits(b.inputs, x));
  CHECK(rng.offset() == 8);  // two blocks per image, reserved even when nothing moves
}

namespace {

// The image padded by `pad` with `fill` on every side, row-major [C, H + 2 pad, W + 2 pad].
std::vector<float> padded_by_hand(const std::vector<float>& image, index_t c, index_t h, index_t w, index_t pad,
                                  float fill) {
  const index_t ph = h + 2 * pad, pw = w + 2 * pad;
  std::vector<float> out(static_cast<std::size_t>(c * ph * pw), fill);
  for (index_t ch = 0; ch < c; ++ch)
    for (index_t y = 0; y < h; ++y)
      for (index_t x = 0; x < w; ++x)
        out[static_cast<std::size_t>((ch * ph + y + pad) * pw + x + pad)] =
            image[static_cast<std::size_t>((ch * h + y) * w + x)];
  return out;
}

// Counts, for every window offset of a crop of the padded image, how many of the cropped images
// equal that window; each cropped image must equal exactly one window.
std::vector<index_t> crop_offset_counts(index_t n, index_t c, index_t h, index_t w, index_t pad, index_t ch,
                                        index_t cw, float fill, std::uint64_t seed) {
  std::vector<float> image(static_cast<std::size_t>(c * h * w));
  for (std::size_t i = 0; i < image.size(); ++i) image[i] = 1.0f + static_cast<float>(i);
  std::vector<float> all;
  for (index_t k = 0; k < n; ++k) all.insert(all.end(), image.begin(), image.end());
  Batch b = batch_of(tensor_of(all, Shape{n, c, h, w}));
  b.labels = Tensor<index_t>::uninitialized(Shape{n});
  for (index_t k = 0; k < n; ++k) b.labels.data()[k] = 10 + k;
  Rng rng(seed);
  kiln::data::RandomCrop{ch, cw, pad, fill}(b, rng);
  REQUIRE(b.inputs.shape() == Shape{n, c, ch, cw});
  for (index_t k = 0; k < n; ++k) REQUIRE(b.labels.data()[k] == 10 + k);

  const std::vector<float> padded = padded_by_hand(image, c, h, w, pad, fill);
  const index_t ph = h + 2 * pad, pw = w + 2 * pad;
  const index_t offsets_h = ph - ch + 1, offsets_w = pw - cw + 1;
  std::vector<index_t> counts(static_cast<std::size_t>(offsets_h * offsets_w), 0);
  const std::vector<float> out = values(b.inputs);
  for (index_t k = 0; k < n; ++k) {
    int matches = 0;
    for (index_t top = 0; top < offsets_h; ++top)
      for (index_t left = 0; left < offsets_w; ++left) {
        bool equal = true;
        for (index_t chan = 0; chan < c && equal; ++chan)
          for (index_t y = 0; y < ch && equal; ++y)
            for (index_t x = 0; x < cw && equal; ++x)
              equal = out[static_cast<std::size_t>(((k * c + chan) * ch + y) * cw + x)] ==
                      padded[static_cast<std::size_t>((chan * ph + top + y) * pw + left + x)];
        if (equal) {
          ++matches;
          ++counts[static_cast<std::size_t>(top * offsets_w + left)];
        }
      }
    REQUIRE(matches == 1);
  }
  return counts;
}

}  // namespace

TEST_CASE("RandomCrop of a 4x4 image with padding 1 takes every window of the padded image") {
  // 2 channels with distinct values 1..32 and fill -1: every 4x4 window of the 6x6 padded image
  // differs from the others, so each crop names its offset; the channels share it.
  const index_t n = 900;
  const std::vector<index_t> counts = crop_offset_counts(n, 2, 4, 4, 1, 4, 4, -1.0f, 7);
  REQUIRE(counts.size() == 9);
  const double expected = static_cast<double>(n) / 9.0;
  const double sigma = std::sqrt(static_cast<double>(n) * (1.0 / 9.0) * (8.0 / 9.0));
  for (index_t count : counts) {
    CHECK(count > 0);
    CHECK(std::abs(static_cast<double>(count) - expected) < 4 * sigma);
  }
}

TEST_CASE("RandomCrop with a non-square window and padding") {
  // A 3x5 window of a 4x4 image padded by 2 (8x8): 6 x 4 offsets, all of which occur.
  const std::vector<index_t> counts = crop_offset_counts(1200, 1, 4, 4, 2, 3, 5, 0.0f, 8);
  REQUIRE(counts.size() == 24);
  for (index_t count : counts) CHECK(count > 0);
  // A window as large as the padded image has one offset.
  const std::vector<index_t> whole = crop_offset_counts(10, 1, 3, 2, 1, 5, 4, 0.5f, 9);
  REQUIRE(whole.size() == 1);
  CHECK(whole[0] == 10);
}

TEST_CASE("RandomCrop names the sizes when the window does not fit") {
  Batch b = batch_of(counting(Shape{2, 1, 28, 28}));
  Rng rng(10);
  try {
    kiln::data::RandomCrop{32, 32, 1}(b, rng);
    FAIL("expected a ShapeError");
  } catch (const kiln::ShapeError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("RandomCrop") != std::string::npos);
    CHECK(msg.find("32x32") != std::string::npos);
    CHECK(msg.find("30x30") != std::string::npos);
    CHECK(msg.find("[2, 1, 28, 28]") != std::string::npos);
  }
  CHECK_THROWS_AS((kiln::data::RandomCrop{28, 31, 1}(b, rng)), kiln::ShapeError);
  CHECK_THROWS_AS((kiln::data::RandomCrop{0, 28}(b, rng)), kiln::ValueError);
  CHECK_THROWS_AS((kiln::data::RandomCrop{28, 28, -1}(b, rng)), kiln::ValueError);
  Batch three_d = batch_of(counting(Shape{2, 28, 28}));
  CHECK_THROWS_AS((kiln::data::RandomCrop{28, 28}(three_d, rng)), kiln::ShapeError);
  CHECK(b.inputs.shape() == Shape{2, 1, 28, 28});
}

TEST_CASE("ColorJitter with brightness 0 and contrast 0 is the identity") {
  // Values outside [0, 1] too: nothing is applied, not even the clamp.
  const Tensor<float> x = pseudo_random(Shape{5, 3, 4, 4}, -0.5f, 1.5f, 11);
  Batch b = batch_of(x);
  Rng rng(11);
  kiln::data::ColorJitter{}(b, rng);
  CHECK(same_bits(b.inputs, x));
}

TEST_CASE("ColorJitter brightness scales each image by one factor in [1 - b, 1 + b]") {
  // Pixels in [0.05, 0.6] times at most 1.4 stay below 1: no clamping.
  const index_t n = 300;
  const Tensor<float> x = pseudo_random(Shape{n, 3, 4, 5}, 0.05f, 0.6f, 12);
  Batch b = batch_of(x);
  Rng rng(12);
  kiln::data::ColorJitter{0.4, 0.0}(b, rng);
  const std::vector<float> in = values(x), out = values(b.inputs);
  const std::size_t image = 3 * 4 * 5;
  double min_factor = 10, max_factor = 0;
  for (index_t k = 0; k < n; ++k) {
    const std::size_t base = static_cast<std::size_t>(k) * image;
    const double factor = static_cast<double>(out[base]) / static_cast<double>(in[base]);
    CHECK(factor >= 0.6 - 1e-6);
    CHECK(factor <= 1.4 + 1e-6);
    for (std::size_t i = 0; i < image; ++i)
      CHECK(static_cast<double>(out[base + i]) / static_cast<double>(in[base + i]) ==
            doctest::Approx(factor).epsilon(1e-6));
    min_factor = std::min(min_factor, factor);
    max_factor = std::max(max_factor, factor);
  }
  // 300 uniform draws on [0.6, 1.4] reach both ends' tenths.
  CHECK(min_factor < 0.7);
  CHECK(max_factor > 1.3);
}

TEST_CASE("ColorJitter contrast keeps a gray image's mean and scales its deviations by one factor") {
  // Pixels in [0.3, 0.7] with factors in [0.5, 1.5] stay within [0.2, 0.8]: no clamping.
  const index_t n = 200, pixels = 6 * 6;
  const Tensor<float> x = pseudo_random(Shape{n, 1, 6, 6}, 0.3f, 0.7f, 13);
  Batch b = batch_of(x);
  Rng rng(13);
  kiln::data::ColorJitter{0.0, 0.5}(b, rng);
  const std::vector<float> in = values(x), out = values(b.inputs);
  double min_factor = 10, max_factor = 0;
  for (index_t k = 0; k < n; ++k) {
    const std::size_t base = static_cast<std::size_t>(k * pixels);
    double mean_in = 0, mean_out = 0;
    for (index_t i = 0; i < pixels; ++i) {
      mean_in += in[base + static_cast<std::size_t>(i)];
      mean_out += out[base + static_cast<std::size_t>(i)];
    }
    mean_in /= static_cast<double>(pixels);
    mean_out /= static_cast<double>(pixels);
    CHECK(mean_out == doctest::Approx(mean_in).epsilon(1e-5));
    // The factor from the pixel farthest from the mean, then every pixel against it.
    std::size_t far = base;
    for (index_t i = 0; i < pixels; ++i)
      if (std::abs(in[base + static_cast<std::size_t>(i)] - mean_in) > std::abs(in[far] - mean_in))
        far = base + static_cast<std::size_t>(i);
    const double factor = (out[far] - mean_in) / (in[far] - mean_in);
    CHECK(factor >= 0.5 - 1e-4);
    CHECK(factor <= 1.5 + 1e-4);
    for (index_t i = 0; i < pixels; ++i) {
      const std::size_t at = base + static_cast<std::size_t>(i);
      CHECK(out[at] - mean_in == doctest::Approx(factor * (in[at] - mean_in)).epsilon(1e-4).scale(1.0));
    }
    min_factor = std::min(min_factor, factor);
    max_factor = std::max(max_factor, factor);
  }
  CHECK(min_factor < 0.6);
  CHECK(max_factor > 1.4);
}

TEST_CASE("ColorJitter contrast of an RGB image blends towards the grayscale mean") {
  // Constant channels R = 0.8, G = 0.2, B = 0.5: gray = 0.2989·0.8 + 0.587·0.2 + 0.114·0.5 =
  // 0.41352 (the plain channel mean would be 0.5). Each output channel is c·v + (1 − c)·gray
  // with one c for all three.
  const index_t n = 50, plane = 3 * 3;
  std::vector<float> v;
  for (index_t k = 0; k < n; ++k)
    for (float channel : {0.8f, 0.2f, 0.5f}) v.insert(v.end(), static_cast<std::size_t>(plane), channel);
  Batch b = batch_of(tensor_of(v, Shape{n, 3, 3, 3}));
  Rng rng(14);
  kiln::data::ColorJitter{0.0, 0.3}(b, rng);
  const std::vector<float> out = values(b.inputs);
  const double gray = 0.2989 * 0.8 + 0.587 * 0.2 + 0.114 * 0.5;
  for (index_t k = 0; k < n; ++k) {
    const std::size_t base = static_cast<std::size_t>(k * 3 * plane);
    const double c = (out[base] - gray) / (0.8 - gray);
    CHECK(c >= 0.7 - 1e-5);
    CHECK(c <= 1.3 + 1e-5);
    const double inputs[3] = {0.8, 0.2, 0.5};
    for (int ch = 0; ch < 3; ++ch)
      for (index_t i = 0; i < plane; ++i)
        CHECK(out[base + static_cast<std::size_t>(ch * plane + i)] ==
              doctest::Approx(c * inputs[ch] + (1 - c) * gray).epsilon(1e-5));
  }
}

TEST_CASE("ColorJitter clamps to [0, 1] unless told not to") {
  const Tensor<float> x = pseudo_random(Shape{40, 1, 4, 4}, 0.5f, 1.0f, 15);
  Batch clamped = batch_of(x), free = batch_of(x);
  Rng rng_a(15), rng_b(15);
  kiln::data::ColorJitter{3.0, 0.0}(clamped, rng_a);
  kiln::data::ColorJitter{3.0, 0.0, false}(free, rng_b);
  const std::vector<float> a = values(clamped.inputs), f = values(free.inputs);
  bool saw_above_one = false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i] >= 0.0f);
    CHECK(a[i] <= 1.0f);
    CHECK(a[i] == std::min(f[i], 1.0f));
    saw_above_one = saw_above_one || f[i] > 1.0f;
  }
  CHECK(saw_above_one);
}

TEST_CASE("ColorJitter with both adjustments picks their order per image, as documented") {
  // The documented stream layout: image k uses block k of the reservation; word 0's top bit set
  // means contrast first; b from word 1 and c from word 2 as low + (high - low) · uniform_float.
  // Both orders are computed here in double; with clamping they differ, and each image must match
  // the order its bit names.
  const index_t n = 200, pixels = 4 * 4;
  const Tensor<float> x = pseudo_random(Shape{n, 1, 4, 4}, 0.6f, 1.0f, 19);
  Batch b = batch_of(x);
  Rng rng(19, 40, 2);
  const Rng start = rng;
  kiln::data::ColorJitter{0.8, 0.8}(b, rng);
  CHECK(rng.offset() == 40 + static_cast<std::uint64_t>(n));
  const std::vector<float> in = values(x), out = values(b.inputs);
  auto clamp01 = [](double v) { return std::min(1.0, std::max(0.0, v)); };
  auto brighten = [&](std::vector<double>& img, double f) {
    for (double& v : img) v = clamp01(f * v);
  };
  auto contrast = [&](std::vector<double>& img, double f) {
    double mean = 0;
    for (double v : img) mean += v;
    mean /= static_cast<double>(img.size());
    for (double& v : img) v = clamp01(f * v + (1 - f) * mean);
  };
  int contrast_first_count = 0, orders_differ = 0;
  for (index_t k = 0; k < n; ++k) {
    const kiln::PhiloxBlock words = start.block(40 + static_cast<std::uint64_t>(k));
    const double bf = 0.2 + 1.6 * static_cast<double>(kiln::uniform_float(words[1]));
    const double cf = 0.2 + 1.6 * static_cast<double>(kiln::uniform_float(words[2]));
    std::vector<double> image(in.begin() + k * pixels, in.begin() + (k + 1) * pixels);
    std::vector<double> brightness_first = image, contrast_first = image;
    brighten(brightness_first, bf);
    contrast(brightness_first, cf);
    contrast(contrast_first, cf);
    brighten(contrast_first, bf);
    const bool want_contrast_first = (words[0] >> 31) != 0;
    const std::vector<double>& expected = want_contrast_first ? contrast_first : brightness_first;
    bool differ = false;
    for (index_t i = 0; i < pixels; ++i) {
      const auto at = static_cast<std::size_t>(i);
      CHECK(static_cast<double>(out[static_cast<std::size_t>(k * pixels) + at]) ==
            doctest::Approx(expected[at]).epsilon(1e-5).scale(1.0));
      differ = differ || std::abs(brightness_first[at] - contrast_first[at]) > 1e-3;
    }
    contrast_first_count += want_contrast_first ? 1 : 0;
    orders_differ += differ ? 1 : 0;
  }
  CHECK(contrast_first_count > 60);
  CHECK(contrast_first_count < 140);
  CHECK(orders_differ > 50);
}

TEST_CASE("ColorJitter rejects bad parameters and contrast on 2-channel images") {
  Batch b = batch_of(pseudo_random(Shape{2, 2, 3, 3}, 0.0f, 1.0f, 16));
  Rng rng(16);
  CHECK_THROWS_AS((kiln::data::ColorJitter{-0.1, 0.0}(b, rng)), kiln::ValueError);
  CHECK_THROWS_AS((kiln::data::ColorJitter{0.0, std::nan("")}(b, rng)), kiln::ValueError);
  try {
    kiln::data::ColorJitter{0.0, 0.2}(b, rng);
    FAIL("expected a ShapeError");
  } catch (const kiln::ShapeError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("ColorJitter") != std::string::npos);
    CHECK(msg.find("[2, 2, 3, 3]") != std::string::npos);
  }
  CHECK_NOTHROW((kiln::data::ColorJitter{0.2, 0.0}(b, rng)));  // brightness takes any channel count
}

TEST_CASE("Compose applies its transforms in order from one Rng; same seed, same bits") {
  const kiln::data::Compose pipeline{kiln::data::RandomCrop{5, 5, 2, 0.25f}, kiln::data::RandomHorizontalFlip{},
                                     kiln::data::ColorJitter{0.3, 0.3}};
  CHECK(pipeline.size() == 3);
  const Tensor<float> x = pseudo_random(Shape{16, 3, 6, 6}, 0.0f, 1.0f, 17);

  Batch composed = batch_of(x);
  Rng rng(21, 5, 3);
  pipeline(composed, rng);
  REQUIRE(composed.inputs.shape() == Shape{16, 3, 5, 5});

  Batch by_hand = batch_of(x);
  Rng rng_hand(21, 5, 3);
  kiln::data::RandomCrop{5, 5, 2, 0.25f}(by_hand, rng_hand);
  kiln::data::RandomHorizontalFlip{}(by_hand, rng_hand);
  kiln::data::ColorJitter{0.3, 0.3}(by_hand, rng_hand);
  CHECK(same_bits(composed.inputs, by_hand.inputs));
  CHECK(rng == rng_hand);
  CHECK(rng.offset() == 5 + 16 * 2 + 16 + 16);

  Batch again = batch_of(x);
  Rng same(21, 5, 3);
  pipeline(again, same);
  CHECK(same_bits(again.inputs, composed.inputs));

  for (Rng other : {Rng(22, 5, 3), Rng(21, 6, 3), Rng(21, 5, 4)}) {
    Batch different = batch_of(x);
    pipeline(different, other);
    CHECK_FALSE(same_bits(different.inputs, composed.inputs));
  }

  kiln::data::Compose built;
  built.add(kiln::data::RandomHorizontalFlip{1.0}).add(kiln::data::RandomHorizontalFlip{1.0});
  Batch twice = batch_of(x);
  Rng r(1);
  built(twice, r);
  CHECK(same_bits(twice.inputs, x));  // two flips undo each other
  CHECK_THROWS_AS(kiln::data::Compose({kiln::data::Compose::Transform{}}), kiln::ValueError);
}

TEST_CASE("DataLoader with a Compose transform: prefetch on and off give the same batches") {
  const index_t n = 45;
  const Tensor<float> inputs = pseudo_random(Shape{n, 1, 6, 6}, 0.0f, 1.0f, 18);
  Tensor<index_t> labels = Tensor<index_t>::uninitialized(Shape{n});
  for (index_t i = 0; i < n; ++i) labels.data()[i] = i;
  auto make_transform = [] {
    return kiln::data::Compose{kiln::data::RandomCrop{4, 4, 1}, kiln::data::RandomHorizontalFlip{},
                               kiln::data::ColorJitter{0.2, 0.2}};
  };
  kiln::data::LoaderOptions options;
  options.batch_size = 8;
  options.drop_last = false;
  options.seed = 99;
  options.prefetch = true;
  kiln::data::DataLoader with_prefetch(inputs, labels, options, make_transform());
  options.prefetch = false;
  kiln::data::DataLoader without_prefetch(inputs, labels, options, make_transform());
  kiln::data::DataLoader plain(inputs, labels, options);

  const int threads_before = kiln::backend::cpu::num_threads();
  std::vector<std::vector<float>> first_epoch;
  for (std::uint64_t epoch = 0; epoch < 2; ++epoch) {
    kiln::backend::cpu::set_num_threads(epoch == 0 ? 1 : 3);  // thread count must not matter
    with_prefetch.start_epoch(epoch);
    without_prefetch.start_epoch(epoch);
    plain.start_epoch(epoch);
    index_t batches = 0;
    bool any_changed = false;
    while (auto a = with_prefetch.next()) {
      auto b = without_prefetch.next();
      auto p = plain.next();
      REQUIRE(b.has_value());
      REQUIRE(p.has_value());
      CHECK(a->index == b->index);
      CHECK(a->inputs.shape() == Shape{a->labels.size(0), 1, 4, 4});
      CHECK(same_bits(a->inputs, b->inputs));
      CHECK(a->labels.to_vector() == b->labels.to_vector());
      CHECK(a->labels.to_vector() == p->labels.to_vector());
      // The augmented batch is not the plain batch's centre crop.
      const Tensor<float> centre = p->inputs.slice(2, 1, 5).slice(3, 1, 5).contiguous();
      any_changed = any_changed || !same_bits(a->inputs, centre);
      // The loader's seeding: the transform sees Rng(seed, index << 32, 2 epoch + 1).
      Batch manual = *p;
      manual.inputs = manual.inputs.clone();
      Rng rng(options.seed, static_cast<std::uint64_t>(p->index) << 32, 2 * epoch + 1);
      make_transform()(manual, rng);
      CHECK(same_bits(a->inputs, manual.inputs));
      if (epoch == 0) first_epoch.push_back(values(a->inputs));
      else CHECK(values(a->inputs) != first_epoch[static_cast<std::size_t>(batches)]);
      ++batches;
    }
    CHECK_FALSE(without_prefetch.next().has_value());
    CHECK(batches == 6);
    CHECK(any_changed);
  }
  kiln::backend::cpu::set_num_threads(threads_before);
}
