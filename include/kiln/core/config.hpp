// kiln/core/config.hpp — compile-time configuration: host/device annotations, index type,
// inlining hints and limits shared by every layer. Builds on nothing but <cstdint>.
#pragma once

#include <cstdint>

// Functions usable both on the host and inside CUDA kernels carry KILN_HD.
#if defined(__CUDACC__)
#define KILN_HD __host__ __device__
#define KILN_DEVICE_CODE 1
#else
#define KILN_HD
#endif

#if defined(_MSC_VER)
#define KILN_FORCEINLINE __forceinline
#elif defined(__GNUC__) || defined(__clang__)
#define KILN_FORCEINLINE inline __attribute__((always_inline))
#else
#define KILN_FORCEINLINE inline
#endif

namespace kiln {

// Signed 64-bit index: element counts, strides and offsets.
using index_t = std::int64_t;

// The largest number of dimensions a tensor may have.
inline constexpr int max_dims = 8;

}  // namespace kiln
