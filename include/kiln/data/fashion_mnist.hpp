// kiln/data/fashion_mnist.hpp — Fashion-MNIST (Xiao et al., 2017) as tensors: images [N, 784]
// scaled to [0, 1] and labels [N], read from the IDX files, gzip-compressed or not.
// Builds on data/idx.hpp, io/safetensors.hpp (FileError), core/tensor.hpp and the CPU backend's
// memory (Backend<cpu>).
#pragma once

#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/data/idx.hpp>
#include <kiln/io/gzip.hpp>
#include <kiln/io/safetensors.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace kiln::data {

// A labelled image set: images [N, 784] as float in [0, 1], labels [N] in 0..9.
struct Dataset {
  kiln::Tensor<float> images;
  kiln::Tensor<kiln::index_t> labels;
};

// Fashion-MNIST's ten classes, indexed by label.
inline constexpr const char* fashion_mnist_classes[10] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

// Where the Fashion-MNIST files are: `hint` when it is not empty, else the KILN_FASHION_MNIST
// environment variable when set and not empty, else /usr/share/datasets/fashion-mnist (Debian's
// dataset-fashion-mnist package). Does not check that the directory exists.
inline std::string find_fashion_mnist_dir(const std::string& hint = {}) {
  if (!hint.empty()) return hint;
  if (const char* env = std::getenv("KILN_FASHION_MNIST"); env && *env) return env;
  return "/usr/share/datasets/fashion-mnist";
}

namespace detail {

// DIR/STEM.gz when it exists, else DIR/STEM when it exists; FileError naming both otherwise.
inline std::string fashion_mnist_file(const std::string& dir, const std::string& stem) {
  const std::filesystem::path base(dir);
  std::error_code ignored;
  const std::filesystem::path gz = base / (stem + ".gz");
  if (std::filesystem::is_regular_file(gz, ignored)) return gz.string();
  const std::filesystem::path plain = base / stem;
  if (std::filesystem::is_regular_file(plain, ignored)) return plain.string();
  throw io::FileError("kiln::load_fashion_mnist: directory " + dir + " has neither " + stem +
                      ".gz nor " + stem +
                      " (pass the directory, set KILN_FASHION_MNIST, or on Debian install the "
                      "package dataset-fashion-mnist)");
}

}  // namespace detail

// Loads the "train" (60000 examples) or "test" (10000 examples) split from `dir` (see
// find_fashion_mnist_dir). Images become float [N, 784], pixel / 255; labels become index_t [N].
// Throws io::FileError for a missing file, io::FormatError for a corrupt one, ValueError for an
// unknown split or image and label files that do not match.
inline Dataset load_fashion_mnist(const std::string& dir, const std::string& split = "train") {
  const char* op = "kiln::load_fashion_mnist: ";
  std::string prefix;
  if (split == "train") prefix = "train";
  else if (split == "test") prefix = "t10k";
  else throw ValueError(op + ("unknown split \"" + split + "\" (expected \"train\" or \"test\")"));

  const std::string image_path = detail::fashion_mnist_file(dir, prefix + "-images-idx3-ubyte");
  const std::string label_path = detail::fashion_mnist_file(dir, prefix + "-labels-idx1-ubyte");
  const IdxArray images = read_idx(image_path);
  const IdxArray labels = read_idx(label_path);

  if (images.type != idx_uint8 || images.dims.size() != 3 || images.dims[1] != 28 ||
      images.dims[2] != 28)
    throw ValueError(op + image_path + ": expected uint8 images [N, 28, 28], found " +
                     idx_type_name(images.type) + " " + kiln::to_string(Shape::from(images.dims.data(),
                                                              static_cast<int>(images.dims.size()))));
  if (labels.type != idx_uint8 || labels.dims.size() != 1)
    throw ValueError(op + label_path + ": expected uint8 labels [N], found " +
                     idx_type_name(labels.type) + " " + kiln::to_string(Shape::from(labels.dims.data(),
                                                              static_cast<int>(labels.dims.size()))));
  const index_t count = images.dims[0];
  if (labels.dims[0] != count)
    throw ValueError(op + image_path + " has " + std::to_string(count) + " images but " +
                     label_path + " has " + std::to_string(labels.dims[0]) + " labels");

  Dataset set;
  set.labels = Tensor<index_t>::uninitialized(Shape{count});
  index_t* label_out = set.labels.data();
  for (index_t i = 0; i < count; ++i) {
    const std::uint8_t label = labels.bytes[static_cast<std::size_t>(i)];
    if (label > 9)
      throw ValueError(op + label_path + ": label " + std::to_string(label) + " at index " +
                       std::to_string(i) + " (expected 0 to 9)");
    label_out[i] = label;
  }

  constexpr index_t pixels = 28 * 28;
  set.images = Tensor<float>::uninitialized(Shape{count, pixels});
  float* image_out = set.images.data();
  const std::uint8_t* image_in = images.bytes.data();
  const std::size_t total = images.bytes.size();
  for (std::size_t i = 0; i < total; ++i) image_out[i] = static_cast<float>(image_in[i]) / 255.0f;
  return set;
}

}  // namespace kiln::data
