// kiln/core/device.hpp — device tags (kiln::cpu, kiln::cuda) and the Backend<Device> interface
// that each backend specialises. Builds on core/config.hpp only.
#pragma once

#include <kiln/core/config.hpp>

namespace kiln {

// Tensors on the host, computed by backends/cpu.
struct cpu {
  static constexpr const char* name = "cpu";
};
// Tensors on an NVIDIA GPU, computed by backends/cuda.
struct cuda {
  static constexpr const char* name = "cuda";
};

// What a device must supply (see DESIGN.md, "A narrow backend interface"): memory
// (allocate/deallocate/copy/fill), elementwise evaluation, reductions, GEMM, RNG fills.
// Each backend specialises this template; the primary is deliberately left undefined.
template <class Device>
struct Backend;

// Reductions a backend computes over the middle axis of a contiguous [outer, R, inner] block.
enum class Reduction { sum, mean, max, min, var, logsumexp };

template <class T>
inline constexpr bool is_floating_element = false;
template <>
inline constexpr bool is_floating_element<float> = true;
template <>
inline constexpr bool is_floating_element<double> = true;

}  // namespace kiln
