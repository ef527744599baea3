// Must not compile: adding a float tensor to a double tensor.
// expect: different element types
#include <kiln/kiln.hpp>
int main() {
  auto a = kiln::zeros<float>({2});
  auto b = kiln::zeros<double>({2});
  auto c = a + b;
  (void)c;
}
