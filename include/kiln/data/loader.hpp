// kiln/data/loader.hpp — DataLoader: mini-batches of an in-memory dataset (inputs and integer
// labels), shuffled each epoch with kiln's Philox RNG, optional drop-last, an optional transform
// (augmentation) per batch, and a background thread that prepares the next batch.
// Builds on core/tensor.hpp, core/factories.hpp (randperm), autograd (Tensor copies), the CPU backend (batches live on the
// CPU) and the standard thread library.
#pragma once

#include <kiln/autograd/fused.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/tensor.hpp>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

namespace kiln::data {

// One mini-batch: inputs [B, ...] and labels [B] (labels undefined when the dataset has none).
struct Batch {
  Tensor<float> inputs;
  Tensor<index_t> labels;
  index_t index = 0;  // position of the batch within its epoch
};

struct LoaderOptions {
  index_t batch_size = 64;
  bool shuffle = true;
  bool drop_last = true;
  bool prefetch = true;  // prepare the next batch on a background thread
  std::uint64_t seed = 0;
};

// Iterates over (inputs, labels) in batches. Epoch e uses the permutation drawn from the stream
// (seed, e), so a run resumed at epoch e sees the same batches as an uninterrupted one.
class DataLoader {
 public:
  using Transform = std::function<void(Batch&, Rng&)>;

  DataLoader(Tensor<float> inputs, Tensor<index_t> labels, LoaderOptions options, Transform transform = nullptr)
      : inputs_(inputs.contiguous()), labels_(labels), options_(options), transform_(std::move(transform)) {
    if (!inputs_.defined() || inputs_.dim() < 1) throw_value_error("DataLoader", "inputs need a batch dimension");
    if (labels_.defined() && (labels_.dim() != 1 || labels_.size(0) != inputs_.size(0)))
      throw_shape_error("DataLoader", "labels must be one per input", labels_.shape(), inputs_.shape());
    if (options_.batch_size < 1) throw_value_error("DataLoader", "batch_size must be at least 1");
    labels_ = labels_.defined() ? labels_.contiguous() : labels_;
  }
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;
  ~DataLoader() { stop(); }

  index_t size() const { return inputs_.size(0); }
  // Batches per epoch.
  index_t num_batches() const {
    const index_t n = size(), b = options_.batch_size;
    return options_.drop_last ? n / b : (n + b - 1) / b;
  }

  // Starts epoch `epoch` at batch `first` (to resume in the middle of an epoch).
  void start_epoch(std::uint64_t epoch, index_t first = 0) {
    stop();
    epoch_ = epoch;
    next_ = first;
    if (options_.shuffle) {
      Rng rng(options_.seed, 0, epoch * 2);
      order_ = randperm(size(), rng);
    } else {
      order_ = Tensor<index_t>::uninitialized(Shape{size()});
      for (index_t i = 0; i < size(); ++i) order_.data()[i] = i;
    }
    if (options_.prefetch) schedule(next_);
  }

  // The next batch of the current epoch, or nothing at its end.
  std::optional<Batch> next() {
    if (next_ >= num_batches()) return std::nullopt;
    Batch b;
    if (options_.prefetch) {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_cv_.wait(lock, [&] { return ready_.has_value() || error_; });
      if (error_) {
        auto e = error_;
        error_ = nullptr;
        lock.unlock();
        stop();
        std::rethrow_exception(e);
      }
      b = std::move(*ready_);
      ready_.reset();
      lock.unlock();
      if (worker_.joinable()) worker_.join();
      if (next_ + 1 < num_batches()) schedule(next_ + 1);
    } else {
      b = make_batch(next_);
    }
    ++next_;
    return b;
  }

  // Batch `i` of the current epoch, computed on the calling thread.
  Batch make_batch(index_t i) const {
    const index_t n = size(), bs = options_.batch_size;
    const index_t begin = i * bs, end = std::min(n, begin + bs);
    const index_t count = end - begin;
    Shape s = inputs_.shape();
    s.dims[0] = count;
    Batch b;
    b.index = i;
    b.inputs = Tensor<float>::uninitialized(s);
    const index_t row = inputs_.numel() / std::max<index_t>(n, 1);
    if (labels_.defined()) b.labels = Tensor<index_t>::uninitialized(Shape{count});
    for (index_t k = 0; k < count; ++k) {
      const index_t src = order_.data()[begin + k];
      std::memcpy(b.inputs.data() + k * row, inputs_.data() + src * row, sizeof(float) * static_cast<std::size_t>(row));
      if (labels_.defined()) b.labels.data()[k] = labels_.data()[src];
    }
    if (transform_) {
      // Augmentation draws from the stream (seed, 2·epoch + 1) at an offset per batch, so it does
      // not depend on which thread prepares the batch.
      Rng rng(options_.seed, static_cast<std::uint64_t>(i) << 32, epoch_ * 2 + 1);
      transform_(b, rng);
    }
    return b;
  }

 private:
  void schedule(index_t i) {
    worker_ = std::thread([this, i] {
      try {
        Batch b = make_batch(i);
        std::lock_guard<std::mutex> lock(mutex_);
        ready_ = std::move(b);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = std::current_exception();
      }
      ready_cv_.notify_one();
    });
  }
  void stop() {
    if (worker_.joinable()) worker_.join();
    ready_.reset();
    error_ = nullptr;
  }

  Tensor<float> inputs_;
  Tensor<index_t> labels_;
  LoaderOptions options_;
  Transform transform_;
  Tensor<index_t> order_;
  std::uint64_t epoch_ = 0;
  index_t next_ = 0;
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable ready_cv_;
  std::optional<Batch> ready_;
  std::exception_ptr error_;
};

}  // namespace kiln::data
