// A user's program: includes kiln, checks that the headers it got are the version its build
// system asked for (KILN_EXPECTED_VERSION comes from find_package, add_subdirectory or
// pkg-config), and returns non-zero on a mismatch.
#include <kiln/kiln.hpp>

#include <cstdio>
#include <cstring>

#ifndef KILN_EXPECTED_VERSION
#error "build with -DKILN_EXPECTED_VERSION=\"x.y.z\""
#endif

int main() {
  if (std::strcmp(KILN_VERSION_STRING, KILN_EXPECTED_VERSION) != 0 ||
      std::strcmp(kiln::version(), KILN_EXPECTED_VERSION) != 0) {
    std::fprintf(stderr, "kiln headers are %s, the build system expected %s\n", KILN_VERSION_STRING,
                 KILN_EXPECTED_VERSION);
    return 1;
  }
  std::printf("kiln %s\n", kiln::version());
  return 0;
}
