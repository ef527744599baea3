// kiln/version.hpp — the library version: KILN_VERSION_* macros and kiln::version().
// Builds on nothing; CMake reads the project version from this file, so edit it here only.
#pragma once

#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 1
#define KILN_VERSION_PATCH 0
#define KILN_VERSION_STRING "0.1.0"

// One number for preprocessor comparisons: major * 10000 + minor * 100 + patch.
#define KILN_VERSION (KILN_VERSION_MAJOR * 10000 + KILN_VERSION_MINOR * 100 + KILN_VERSION_PATCH)

namespace kiln {

// The library version as "major.minor.patch".
constexpr const char* version() noexcept { return KILN_VERSION_STRING; }

// The library version as major * 10000 + minor * 100 + patch.
constexpr int version_number() noexcept { return KILN_VERSION; }

}  // namespace kiln
