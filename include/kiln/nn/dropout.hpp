// kiln/nn/dropout.hpp — nn::Dropout (nn::BasicDropout<T, Device>): inverted dropout while the module is in
// training mode, the identity in eval mode. Builds on nn/module.hpp, ops/dropout.hpp and kiln::Rng.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/dropout.hpp>

#include <cstdint>
#include <string>

namespace kiln::nn {

// A generator of its own for a module, seeded from one block of `parent` (which advances by one
// block): modules built from the same generator in the same order draw the same numbers.
inline Rng derive_generator(Rng& parent) {
  const PhiloxBlock b = parent.next_block();
  const std::uint64_t seed = static_cast<std::uint64_t>(b[0]) | (static_cast<std::uint64_t>(b[1]) << 32);
  const std::uint64_t subsequence = static_cast<std::uint64_t>(b[2]) | (static_cast<std::uint64_t>(b[3]) << 32);
  return Rng(seed, 0, subsequence);
}

// Zeroes each element with probability p in training mode, scaling the rest by 1/(1 − p); the
// identity in eval mode. The masks come from a generator of the module's own, derived from `rng`
// at construction (generator() exposes it, e.g. to save and restore its state).
template <class T, class Device = cpu>
class BasicDropout : public BasicModule<T, Device> {
 public:
  BasicDropout(double p, Rng& rng) : p_(p), generator_(derive_generator(rng)) {
    if (!(p >= 0.0 && p <= 1.0))
      throw_value_error("nn::Dropout", "the drop probability p must lie in [0, 1], got " + std::to_string(p));
  }

  Tensor<T, Device> forward(const Tensor<T, Device>& x) { return kiln::dropout(x, p_, this->is_training(), generator_); }
  Tensor<T, Device> operator()(const Tensor<T, Device>& x) { return forward(x); }

  double p() const { return p_; }
  Rng& generator() { return generator_; }

 private:
  double p_;
  Rng generator_;
};

using Dropout = BasicDropout<float, cpu>;

}  // namespace kiln::nn
