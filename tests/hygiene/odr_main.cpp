// Drives odr_a.cpp and odr_b.cpp: both include <kiln/kiln.hpp>, and they must agree on the one
// copy of every inline variable and function (the thread pool, the version).
#include <cstdio>
#include <cstring>

namespace kiln_hygiene {
int set_threads_from_a(int n);
const char* version_from_a();
int threads_from_b();
long long parallel_sum_from_b(long long n);
const char* version_from_b();
}  // namespace kiln_hygiene

int main() {
  using namespace kiln_hygiene;
  int failures = 0;
  if (std::strcmp(version_from_a(), version_from_b()) != 0) {
    std::fprintf(stderr, "version differs between TUs: %s vs %s\n", version_from_a(), version_from_b());
    ++failures;
  }
  const int set = set_threads_from_a(2);
  if (threads_from_b() != set) {
    std::fprintf(stderr, "thread count set in one TU (%d) reads %d in the other\n", set, threads_from_b());
    ++failures;
  }
  const long long n = 100000;
  const long long sum = parallel_sum_from_b(n);
  if (sum != n * (n - 1) / 2) {
    std::fprintf(stderr, "parallel_for sum is %lld, expected %lld\n", sum, n * (n - 1) / 2);
    ++failures;
  }
  if (failures == 0) std::printf("hygiene_odr: ok (kiln %s, %d threads)\n", version_from_a(), set);
  return failures == 0 ? 0 : 1;
}
