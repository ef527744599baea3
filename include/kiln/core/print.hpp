// kiln/core/print.hpp — readable text for tensors: to_string(t) and `std::cout << t`, nested
// brackets per dimension, large dimensions summarised with "..." (first and last 3 entries).
// Builds on core/tensor.hpp and <ostream>/<sstream>.
#pragma once

#include <kiln/core/tensor.hpp>

#include <cstdio>
#include <ostream>
#include <sstream>
#include <string>
#include <type_traits>

namespace kiln {

namespace detail {

template <class T>
std::string format_element(T v) {
  char buf[48];
  if constexpr (std::is_integral_v<T>) {
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
  } else {
    std::snprintf(buf, sizeof buf, "%.6g", static_cast<double>(v));
  }
  return buf;
}

template <class T, class D>
void print_dim(std::ostream& os, const Tensor<T, D>& t, int d, index_t offset, int indent, bool summarize) {
  const index_t n = t.shape().dims[d];
  const index_t stride = t.strides().dims[d];
  constexpr index_t edge = 3;
  os << '[';
  for (index_t i = 0; i < n; ++i) {
    if (summarize && n > 2 * edge && i == edge) {
      os << (d + 1 == t.dim() ? "..., " : "...,\n" + std::string(static_cast<std::size_t>(indent + 1), ' '));
      i = n - edge;
    }
    if (d + 1 == t.dim()) {
      os << format_element(t.data()[offset + i * stride]);
      if (i + 1 < n) os << ", ";
    } else {
      print_dim(os, t, d + 1, offset + i * stride, indent + 1, summarize);
      if (i + 1 < n) os << ",\n" << std::string(static_cast<std::size_t>(indent + 1), ' ');
    }
  }
  os << ']';
}

}  // namespace detail

// "tensor([[0, 1, 2],\n        [3, 4, 5]], shape=[2, 3])"; tensors above 1000 elements are
// summarised. A tensor on another device is described without its elements.
template <class T, class D>
std::string to_string(const Tensor<T, D>& t) {
  std::ostringstream os;
  if (!t.defined()) return "tensor(undefined)";
  if constexpr (!std::is_same_v<D, cpu>) {
    os << "tensor(shape=" << to_string(t.shape()) << ", device=" << D::name << ')';
  } else {
    os << "tensor(";
    if (t.dim() == 0) {
      os << detail::format_element(*t.data());
    } else {
      detail::print_dim(os, t, 0, 0, 7, t.numel() > 1000);
    }
    os << ", shape=" << to_string(t.shape()) << ')';
  }
  return os.str();
}

template <class T, class D>
std::ostream& operator<<(std::ostream& os, const Tensor<T, D>& t) {
  return os << to_string(t);
}

}  // namespace kiln
