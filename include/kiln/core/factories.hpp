// kiln/core/factories.hpp — tensor factories: empty, zeros, ones, full, arange, linspace, rand,
// randn, bernoulli, randperm, and copies from a std::vector or a pointer.
// Builds on core/tensor.hpp, core/philox.hpp and the Backend<Device> fill entry points.
#pragma once

#include <kiln/core/philox.hpp>
#include <kiln/core/tensor.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace kiln {

// A tensor whose elements are not initialised.
template <class T, class Device = cpu>
Tensor<T, Device> empty(const Shape& shape) {
  return Tensor<T, Device>::uninitialized(shape);
}

template <class T, class Device = cpu>
Tensor<T, Device> full(const Shape& shape, T value) {
  auto t = Tensor<T, Device>::uninitialized(shape);
  t.fill_(value);
  return t;
}
template <class T, class Device = cpu>
Tensor<T, Device> zeros(const Shape& shape) {
  return full<T, Device>(shape, T(0));
}
template <class T, class Device = cpu>
Tensor<T, Device> ones(const Shape& shape) {
  return full<T, Device>(shape, T(1));
}

// A copy of `values` with `shape` (a 1-d tensor when shape is omitted).
template <class T, class Device = cpu>
Tensor<T, Device> from_vector(const std::vector<T>& values, Shape shape) {
  if (shape.numel() != static_cast<index_t>(values.size()))
    throw_shape_error("from_vector", std::to_string(values.size()) + " values do not fill the shape", shape);
  static_assert(std::is_same_v<Device, cpu>, "kiln::from_vector builds a cpu tensor; move it with .to<Device>()");
  auto t = Tensor<T, Device>::uninitialized(shape);
  for (std::size_t i = 0; i < values.size(); ++i) t.data()[i] = values[i];
  return t;
}
template <class T, class Device = cpu>
Tensor<T, Device> from_vector(const std::vector<T>& values) {
  return from_vector<T, Device>(values, Shape{static_cast<index_t>(values.size())});
}
// A copy of shape.numel() elements read from `data` (row-major).
template <class T, class Device = cpu>
Tensor<T, Device> from_data(const T* data, const Shape& shape) {
  static_assert(std::is_same_v<Device, cpu>, "kiln::from_data builds a cpu tensor; move it with .to<Device>()");
  auto t = Tensor<T, Device>::uninitialized(shape);
  if (shape.numel() > 0 && data == nullptr) throw_value_error("from_data", "null pointer");
  for (index_t i = 0; i < shape.numel(); ++i) t.data()[i] = data[i];
  return t;
}

// start, start+step, ... < end (like Python's range, for floats too).
template <class T, class Device = cpu>
Tensor<T, Device> arange(T start, T end, T step = T(1)) {
  static_assert(std::is_same_v<Device, cpu>, "kiln::arange builds a cpu tensor");
  if (step == T(0)) throw_value_error("arange", "step must not be zero");
  const double n = std::ceil((static_cast<double>(end) - static_cast<double>(start)) / static_cast<double>(step));
  const index_t count = n > 0 ? static_cast<index_t>(n) : 0;
  auto t = Tensor<T, Device>::uninitialized(Shape{count});
  for (index_t i = 0; i < count; ++i) t.data()[i] = static_cast<T>(start + static_cast<T>(i) * step);
  return t;
}
template <class T, class Device = cpu>
Tensor<T, Device> arange(T end) {
  return arange<T, Device>(T(0), end, T(1));
}

// `steps` evenly spaced values from start to end inclusive.
template <class T, class Device = cpu>
Tensor<T, Device> linspace(T start, T end, index_t steps) {
  static_assert(std::is_same_v<Device, cpu>, "kiln::linspace builds a cpu tensor");
  if (steps < 0) throw_value_error("linspace", "steps must be non-negative");
  auto t = Tensor<T, Device>::uninitialized(Shape{steps});
  const double a = static_cast<double>(start), b = static_cast<double>(end);
  const double h = steps > 1 ? (b - a) / static_cast<double>(steps - 1) : 0.0;
  // Fill from both ends so the last value is exactly `end`, as PyTorch does.
  for (index_t i = 0; i < steps; ++i)
    t.data()[i] = static_cast<T>(steps == 1 || i < steps / 2 ? a + h * static_cast<double>(i)
                                               : b - h * static_cast<double>(steps - 1 - i));
  return t;
}

// Uniform on [low, high).
template <class T, class Device = cpu>
Tensor<T, Device> rand(const Shape& shape, Rng& rng, T low = T(0), T high = T(1)) {
  auto t = Tensor<T, Device>::uninitialized(shape);
  Backend<Device>::fill_uniform(t.data(), t.numel(), low, high, rng);
  return t;
}
// Normal with the given mean and standard deviation.
template <class T, class Device = cpu>
Tensor<T, Device> randn(const Shape& shape, Rng& rng, T mean = T(0), T stddev = T(1)) {
  auto t = Tensor<T, Device>::uninitialized(shape);
  Backend<Device>::fill_normal(t.data(), t.numel(), mean, stddev, rng);
  return t;
}
// 1 with probability p, else 0.
template <class T, class Device = cpu>
Tensor<T, Device> bernoulli(const Shape& shape, double p, Rng& rng) {
  if (!(p >= 0.0 && p <= 1.0)) throw_value_error("bernoulli", "p must lie in [0, 1]");
  auto t = Tensor<T, Device>::uninitialized(shape);
  Backend<Device>::fill_bernoulli(t.data(), t.numel(), p, rng);
  return t;
}
// A uniformly random permutation of 0..n-1.
template <class Device = cpu>
Tensor<index_t, Device> randperm(index_t n, Rng& rng) {
  if (n < 0) throw_value_error("randperm", "n must be non-negative");
  auto t = Tensor<index_t, Device>::uninitialized(Shape{n});
  Backend<Device>::permutation(t.data(), n, rng);
  return t;
}

}  // namespace kiln
