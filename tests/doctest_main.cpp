// The one main() shared by every kiln test executable: doctest's runner, compiled once.
// Test files under tests/<area>/ hold only TEST_CASEs and link against this.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
