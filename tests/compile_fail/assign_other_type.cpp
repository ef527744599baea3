// Must not compile: evaluating a double expression into a float tensor.
// expect: element type differs
#include <kiln/kiln.hpp>
int main() {
  auto a = kiln::zeros<double>({2});
  kiln::Tensor<float> b = a * 2.0;
  (void)b;
}
