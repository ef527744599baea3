// One of two translation units that include <kiln/kiln.hpp>; linked with odr_b.cpp and
// odr_main.cpp into one program, so any non-inline definition in a header fails to link.
#include <kiln/kiln.hpp>

#include <kiln/backend/cpu/thread_pool.hpp>

namespace kiln_hygiene {

// Sets the thread count from this TU; odr_b reads it back through its own copy of the inline
// functions, which must be the same single pool.
int set_threads_from_a(int n) {
  kiln::backend::cpu::set_num_threads(n);
  return kiln::backend::cpu::num_threads();
}

const char* version_from_a() { return kiln::version(); }

}  // namespace kiln_hygiene
