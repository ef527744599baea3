// Tests of nn::Unflatten (include/kiln/nn/activation.hpp): the shape it gives, the element order
// (the inverse of Flatten), gradients passing through, and the errors it names.
#include <doctest/doctest.h>

#include <kiln/autograd/fused.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/nn/activation.hpp>
#include <kiln/ops/reduce.hpp>

#include <vector>

TEST_CASE("Unflatten splits one dim and undoes Flatten") {
  std::vector<float> v(2 * 12);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  const auto x = kiln::from_vector<float>(v, {2, 12});
  kiln::nn::Unflatten unflatten(1, {3, 2, 2});
  const auto y = unflatten(x);
  CHECK(y.shape() == kiln::Shape{2, 3, 2, 2});
  const auto c = y.contiguous();
  // element [1, 2, 0, 1] sits at 1·12 + 2·4 + 0·2 + 1 = 21
  CHECK(c.data()[1 * 12 + 2 * 4 + 0 * 2 + 1] == 21.0f);
  CHECK(kiln::nn::Flatten()(y).to_vector() == v);
  kiln::nn::Unflatten last(-1, {4, 3});
  CHECK(last(x).shape() == kiln::Shape{2, 4, 3});
}

TEST_CASE("Unflatten passes gradients through") {
  auto x = kiln::from_vector<float>({1, 2, 3, 4, 5, 6}, {1, 6}).requires_grad();
  kiln::nn::Unflatten unflatten(1, {2, 3});
  kiln::Tensor<float> y = unflatten(x);
  kiln::sum(kiln::square(y)).backward();
  CHECK(x.grad().to_vector() == std::vector<float>{2, 4, 6, 8, 10, 12});
}

TEST_CASE("Unflatten names a size mismatch") {
  kiln::nn::Unflatten unflatten(1, {5, 2});
  CHECK_THROWS_WITH_AS(unflatten(kiln::zeros<float>({2, 12})), doctest::Contains("multiply to 10"), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::nn::Unflatten(1, {}), kiln::ValueError);
}
