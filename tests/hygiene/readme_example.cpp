// The "A first program" of README.md, verbatim between the markers: it must compile and run.
// Keep the two in step when either changes.
// README-BEGIN
#include <kiln/kiln.hpp>

int main() {
  kiln::Rng rng(42);
  auto a = kiln::randn<float>({512, 256}, rng);      // Tensor<float> on the CPU
  auto b = kiln::randn<float>({256, 128}, rng);
  auto c = kiln::matmul(a, b);                       // GEMM
  kiln::Tensor<float> d = a * 2.0f + kiln::exp(a);   // one fused pass over memory
  auto s = kiln::sum(d, 1);                          // reduce axis 1
}
// README-END
