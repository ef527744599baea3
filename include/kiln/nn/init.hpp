// kiln/nn/init.hpp — parameter initialisation as torch.nn.init: uniform_, normal_, constant_, zeros_,
// ones_, xavier_uniform_/normal_, kaiming_uniform_/normal_, with PyTorch's fan rule and gain table.
// Builds on core/tensor.hpp, core/philox.hpp (kiln::Rng) and Backend<Device>'s random fills.
#pragma once

#include <kiln/autograd/graph.hpp>
#include <kiln/core/device.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/tensor.hpp>

#include <cmath>
#include <optional>
#include <string>

namespace kiln::nn::init {

// Which fan a Kaiming initialisation preserves the variance of: fan_in keeps the forward
// activations' variance, fan_out the backward gradients'.
enum class FanMode { fan_in, fan_out };

// The nonlinearities of torch.nn.init.calculate_gain.
enum class Nonlinearity {
  linear,
  conv1d,
  conv2d,
  conv3d,
  conv_transpose1d,
  conv_transpose2d,
  conv_transpose3d,
  sigmoid,
  tanh,
  relu,
  leaky_relu,
  selu,
};

// The recommended gain for a nonlinearity (torch.nn.init.calculate_gain): 1 for the linear and
// convolution maps and sigmoid, 5/3 for tanh, √2 for relu, √(2 / (1 + slope²)) for leaky_relu
// (slope = param, 0.01 when not given), 3/4 for selu.
inline double calculate_gain(Nonlinearity nonlinearity, std::optional<double> param = std::nullopt) {
  switch (nonlinearity) {
    case Nonlinearity::linear:
    case Nonlinearity::conv1d:
    case Nonlinearity::conv2d:
    case Nonlinearity::conv3d:
    case Nonlinearity::conv_transpose1d:
    case Nonlinearity::conv_transpose2d:
    case Nonlinearity::conv_transpose3d:
    case Nonlinearity::sigmoid:
      return 1.0;
    case Nonlinearity::tanh:
      return 5.0 / 3.0;
    case Nonlinearity::relu:
      return std::sqrt(2.0);
    case Nonlinearity::leaky_relu: {
      const double slope = param.value_or(0.01);
      return std::sqrt(2.0 / (1.0 + slope * slope));
    }
    case Nonlinearity::selu:
      return 3.0 / 4.0;
  }
  throw_value_error("nn::init::calculate_gain", "unknown nonlinearity");
}

// Fan-in and fan-out of a weight of `shape` (at least 2 dims): dim 1 and dim 0 times the
// receptive field (the product of dims 2..), so a convolution weight [out, in/groups, kH, kW]
// has fan_in = in/groups·kH·kW and fan_out = out·kH·kW, as PyTorch computes them.
struct Fans {
  index_t fan_in = 0;
  index_t fan_out = 0;
};
inline Fans calculate_fans(const Shape& shape) {
  if (shape.ndim < 2)
    throw_shape_error("nn::init::calculate_fans",
                      "fan in and fan out need a tensor with at least 2 dimensions", shape);
  index_t receptive = 1;
  for (int i = 2; i < shape.ndim; ++i) receptive *= shape.dims[i];
  return Fans{shape.dims[1] * receptive, shape.dims[0] * receptive};
}

namespace detail {

// Writes `n` generated values through `fill(T* out, n)` into `t` (any view; tracked tensors are
// written without being recorded, as torch.nn.init works under no_grad).
template <class T, class D, class F>
void fill_generated(const Tensor<T, D>& t, F fill) {
  static_assert(is_floating_element<T>, "kiln::nn::init fills float or double tensors");
  if (!t.defined()) throw_value_error("nn::init", "the tensor is undefined");
  if (t.numel() == 0) return;
  if (t.is_contiguous()) {
    fill(t.data(), t.numel());
    return;
  }
  auto tmp = Tensor<T, D>::uninitialized(t.shape());
  fill(tmp.data(), tmp.numel());
  NoGrad guard;
  Tensor<T, D> dst = t.detach();
  dst.assign(tmp);
}

inline index_t chosen_fan(const Shape& shape, FanMode mode) {
  const Fans f = calculate_fans(shape);
  return mode == FanMode::fan_in ? f.fan_in : f.fan_out;
}

}  // namespace detail

// Values uniform on [low, high). Returns `t` (which shares storage with the argument).
template <class T, class D>
Tensor<T, D> uniform_(const Tensor<T, D>& t, Rng& rng, double low = 0.0, double high = 1.0) {
  if (!(low <= high))
    throw_value_error("nn::init::uniform_", "needs low <= high, got low = " + std::to_string(low) +
                                                ", high = " + std::to_string(high));
  detail::fill_generated(t, [&](T* p, index_t n) {
    Backend<D>::fill_uniform(p, n, static_cast<T>(low), static_cast<T>(high), rng);
  });
  return t;
}

// Normal values with the given mean and standard deviation.
template <class T, class D>
Tensor<T, D> normal_(const Tensor<T, D>& t, Rng& rng, double mean = 0.0, double std = 1.0) {
  if (!(std >= 0.0))
    throw_value_error("nn::init::normal_", "needs std >= 0, got " + std::to_string(std));
  detail::fill_generated(t, [&](T* p, index_t n) {
    Backend<D>::fill_normal(p, n, static_cast<T>(mean), static_cast<T>(std), rng);
  });
  return t;
}

// Every element set to `value` (no random numbers involved, so no Rng).
template <class T, class D>
Tensor<T, D> constant_(const Tensor<T, D>& t, double value) {
  if (!t.defined()) throw_value_error("nn::init::constant_", "the tensor is undefined");
  Tensor<T, D> dst = t.detach();
  dst.fill_(static_cast<T>(value));
  return t;
}
template <class T, class D>
Tensor<T, D> zeros_(const Tensor<T, D>& t) {
  return constant_(t, 0.0);
}
template <class T, class D>
Tensor<T, D> ones_(const Tensor<T, D>& t) {
  return constant_(t, 1.0);
}

// Glorot & Bengio (2010), eq. 16: U(−a, a) with a = gain·√(6 / (fan_in + fan_out)), i.e. the
// standard deviation gain·√(2 / (fan_in + fan_out)) times √3 (a uniform on (−a, a) has std a/√3).
template <class T, class D>
Tensor<T, D> xavier_uniform_(const Tensor<T, D>& t, Rng& rng, double gain = 1.0) {
  const Fans f = calculate_fans(t.shape());
  const double std = gain * std::sqrt(2.0 / static_cast<double>(f.fan_in + f.fan_out));
  const double a = std::sqrt(3.0) * std;
  return uniform_(t, rng, -a, a);
}
// N(0, std²) with std = gain·√(2 / (fan_in + fan_out)).
template <class T, class D>
Tensor<T, D> xavier_normal_(const Tensor<T, D>& t, Rng& rng, double gain = 1.0) {
  const Fans f = calculate_fans(t.shape());
  const double std = gain * std::sqrt(2.0 / static_cast<double>(f.fan_in + f.fan_out));
  return normal_(t, rng, 0.0, std);
}

// He et al. (2015), section 2.2: std = gain / √fan with gain = calculate_gain(nonlinearity, a)
// (a is the negative slope of a leaky ReLU); uniform on (−bound, bound), bound = √3·std.
// Linear's default, kaiming_uniform_(w, rng, √5), gives bound = 1/√fan_in.
template <class T, class D>
Tensor<T, D> kaiming_uniform_(const Tensor<T, D>& t, Rng& rng, double a = 0.0, FanMode mode = FanMode::fan_in,
                              Nonlinearity nonlinearity = Nonlinearity::leaky_relu) {
  const index_t fan = detail::chosen_fan(t.shape(), mode);
  if (fan == 0) return t;  // nothing to scale by: a zero-element weight (as PyTorch, a no-op)
  const double std = calculate_gain(nonlinearity, a) / std::sqrt(static_cast<double>(fan));
  const double bound = std::sqrt(3.0) * std;
  return uniform_(t, rng, -bound, bound);
}
// N(0, std²) with std = gain / √fan.
template <class T, class D>
Tensor<T, D> kaiming_normal_(const Tensor<T, D>& t, Rng& rng, double a = 0.0, FanMode mode = FanMode::fan_in,
                             Nonlinearity nonlinearity = Nonlinearity::leaky_relu) {
  const index_t fan = detail::chosen_fan(t.shape(), mode);
  if (fan == 0) return t;
  const double std = calculate_gain(nonlinearity, a) / std::sqrt(static_cast<double>(fan));
  return normal_(t, rng, 0.0, std);
}

}  // namespace kiln::nn::init
