// Tests of include/kiln/core/print.hpp: the text of small, strided, 0-d, empty, integer and
// large (summarised) tensors.
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>

#include <sstream>
#include <string>
#include <vector>

TEST_CASE("tensors print with nested brackets and their shape") {
  auto m = kiln::arange<float>(6.f).reshape({2, 3});
  CHECK(kiln::to_string(m) == "tensor([[0, 1, 2],\n        [3, 4, 5]], shape=[2, 3])");
  CHECK(kiln::to_string(m.t()) == "tensor([[0, 3],\n        [1, 4],\n        [2, 5]], shape=[3, 2])");
  CHECK(kiln::to_string(kiln::full<double>({}, 0.5)) == "tensor(0.5, shape=[])");
  CHECK(kiln::to_string(kiln::zeros<float>({0})) == "tensor([], shape=[0])");
  kiln::Rng rng(0);
  CHECK(kiln::to_string(kiln::randperm(1, rng)) == "tensor([0], shape=[1])");
  CHECK(kiln::to_string(kiln::Tensor<float>()) == "tensor(undefined)");
  std::ostringstream os;
  os << kiln::from_vector(std::vector<float>{1.5f, -2.0f});
  CHECK(os.str() == "tensor([1.5, -2], shape=[2])");
}

TEST_CASE("large tensors are summarised with the first and last three entries") {
  auto v = kiln::arange<float>(2000.f);
  CHECK(kiln::to_string(v) == "tensor([0, 1, 2, ..., 1997, 1998, 1999], shape=[2000])");
  auto m = kiln::arange<float>(2000.f).reshape({100, 20});
  const std::string s = kiln::to_string(m);
  CHECK(s.rfind("tensor([[0, 1, 2, ..., 17, 18, 19],\n        [20, 21, 22, ..., 37, 38, 39],", 0) == 0);
  CHECK(s.find("...,\n") != std::string::npos);
  CHECK(s.find("[1980, 1981, 1982, ..., 1997, 1998, 1999]], shape=[100, 20])") != std::string::npos);
}
