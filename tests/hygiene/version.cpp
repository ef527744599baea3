// include/kiln/version.hpp agrees with the CMake project version (passed in by
// tests/hygiene/CMakeLists.txt) and its macros agree with each other.
#include <kiln/version.hpp>

#include <doctest/doctest.h>

#include <string>

static_assert(KILN_VERSION_MAJOR == KILN_EXPECTED_VERSION_MAJOR, "version.hpp major differs from CMake");
static_assert(KILN_VERSION_MINOR == KILN_EXPECTED_VERSION_MINOR, "version.hpp minor differs from CMake");
static_assert(KILN_VERSION_PATCH == KILN_EXPECTED_VERSION_PATCH, "version.hpp patch differs from CMake");
static_assert(kiln::version_number() == KILN_VERSION, "kiln::version_number() differs from KILN_VERSION");

TEST_CASE("version.hpp matches the CMake project version") {
  CHECK(std::string(KILN_VERSION_STRING) == KILN_EXPECTED_VERSION_STRING);
  CHECK(std::string(kiln::version()) == KILN_EXPECTED_VERSION_STRING);
  const std::string from_numbers = std::to_string(KILN_VERSION_MAJOR) + "." +
                                   std::to_string(KILN_VERSION_MINOR) + "." +
                                   std::to_string(KILN_VERSION_PATCH);
  CHECK(from_numbers == KILN_VERSION_STRING);
  CHECK(KILN_VERSION == KILN_VERSION_MAJOR * 10000 + KILN_VERSION_MINOR * 100 + KILN_VERSION_PATCH);
}
