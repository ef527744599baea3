// Must not compile: elementwise math on an integer tensor.
// expect: work on float and double tensors
#include <kiln/kiln.hpp>
int main() {
  kiln::Rng rng(0);
  auto p = kiln::randperm(4, rng);
  auto q = kiln::exp(p);
  (void)q;
}
