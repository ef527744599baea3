// The second translation unit that includes <kiln/kiln.hpp> (see odr_a.cpp).
#include <kiln/kiln.hpp>

#include <kiln/backend/cpu/thread_pool.hpp>

#include <atomic>

namespace kiln_hygiene {

int threads_from_b() { return kiln::backend::cpu::num_threads(); }

// Sums 0..n-1 with parallel_for: the pool started in odr_a's TU does the work.
long long parallel_sum_from_b(long long n) {
  std::atomic<long long> total{0};
  kiln::backend::cpu::parallel_for(0, n, 1, [&](kiln::index_t begin, kiln::index_t end) {
    long long part = 0;
    for (kiln::index_t i = begin; i < end; ++i) part += i;
    total += part;
  });
  return total.load();
}

const char* version_from_b() { return kiln::version(); }

}  // namespace kiln_hygiene
