// kiln/ops/dropout.hpp — dropout(x, p, training, rng): inverted dropout as torch.nn.functional.dropout,
// with a mask drawn from kiln's Philox Rng (the same seed gives the same mask on any thread count).
// Builds on core/factories.hpp (bernoulli masks) and the fused expressions of autograd/fused.hpp.
#pragma once

#include <kiln/autograd/fused.hpp>
#include <kiln/autograd/graph.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/expr/ops.hpp>

#include <string>

namespace kiln {

// Inverted dropout (Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
// Overfitting", JMLR 2014, section 10; scaled at training time as PyTorch does): in training each
// element is kept with probability 1 − p and scaled by 1/(1 − p), else set to 0, so the expected
// output equals x; outside training (or with p = 0) x itself is returned. p = 1 zeroes everything.
// The mask takes ceil(numel / 4) blocks from `rng`.
//
// Backward. y = x ⊙ m / (1 − p) with the mask m ∈ {0, 1} fixed, so ∂y_i/∂x_i = m_i / (1 − p) and
// ∂L/∂x = g ⊙ m / (1 − p). The product is one fused elementwise expression whose recorded node
// derives exactly this gradient (and its own gradients for create_graph).
template <class T, class D>
Tensor<T, D> dropout(const Tensor<T, D>& x, double p, bool training, Rng& rng) {
  static_assert(is_floating_element<T>, "kiln::dropout works on float and double tensors");
  if (!(p >= 0.0 && p <= 1.0))
    throw_value_error("dropout", "the drop probability p must lie in [0, 1], got " + std::to_string(p));
  if (!x.defined()) throw_value_error("dropout", "the input is undefined");
  if (!training || p == 0.0 || x.numel() == 0) return x;
  if (p == 1.0) return Tensor<T, D>(x * T(0));
  auto mask = Tensor<T, D>::uninitialized(x.shape());
  Backend<D>::fill_bernoulli(mask.data(), mask.numel(), 1.0 - p, rng);
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  return Tensor<T, D>(x * mask * scale);
}

}  // namespace kiln
