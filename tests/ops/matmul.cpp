// Tests of include/kiln/ops/matmul.hpp: 2-d, vector, batched and broadcast products, transposed
// and sliced operands, against a double loop; shape errors.
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>

#include <cmath>
#include <vector>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;

namespace {
// C[b, i, j] = sum_k A[b, i, k] B[b, k, j] in double, on 3-d tensors.
void check_product(const Tensor<float>& a, const Tensor<float>& b, const Tensor<float>& c) {
  const index_t B = c.size(0), M = c.size(1), N = c.size(2), K = a.size(2);
  for (index_t z = 0; z < B; ++z)
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j) {
        double s = 0, mag = 0;
        for (index_t k = 0; k < K; ++k) {
          const double p = static_cast<double>(a.at({a.size(0) == 1 ? 0 : z, i, k})) *
                           static_cast<double>(b.at({b.size(0) == 1 ? 0 : z, k, j}));
          s += p;
          mag += std::abs(p);
        }
        CHECK(std::abs(c.at({z, i, j}) - s) <= 1e-5 * (mag + 1));
      }
}
}  // namespace

TEST_CASE("2-d product by hand") {
  auto a = kiln::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, Shape{2, 3});
  auto b = kiln::from_vector(std::vector<float>{7, 8, 9, 10, 11, 12}, Shape{3, 2});
  auto c = kiln::matmul(a, b);
  CHECK(c.shape() == Shape{2, 2});
  CHECK(c.to_vector() == std::vector<float>{58, 64, 139, 154});
  // transposed views go straight to GEMM
  auto ct = kiln::matmul(b.t(), a.t());
  CHECK(ct.to_vector() == std::vector<float>{58, 139, 64, 154});
  // vectors
  auto v = kiln::from_vector(std::vector<float>{1, 0, -1});
  CHECK(kiln::matmul(a, v).to_vector() == std::vector<float>{-2, -2});
  auto w = kiln::from_vector(std::vector<float>{1, -1});
  CHECK(kiln::matmul(w, a).to_vector() == std::vector<float>{-3, -3, -3});
  CHECK(kiln::matmul(v, v).item() == 2.0f);
  CHECK_THROWS_AS(kiln::matmul(a, a), kiln::ShapeError);
}

TEST_CASE("odd sizes, transposed and sliced operands, batches with broadcasting") {
  kiln::Rng rng(1);
  for (index_t n : {1, 7, 33, 65}) {
    auto a = kiln::randn<float>({2, n, n + 3}, rng);
    auto b = kiln::randn<float>({2, n + 3, 5}, rng);
    check_product(a, b, kiln::matmul(a, b));
    auto bt = kiln::randn<float>({2, 5, n + 3}, rng).transpose(1, 2);
    check_product(a, bt.contiguous(), kiln::matmul(a, bt));
    auto b1 = kiln::randn<float>({1, n + 3, 4}, rng);
    check_product(a, b1, kiln::matmul(a, b1));
    auto b2d = kiln::randn<float>({n + 3, 4}, rng);
    check_product(a, b2d.unsqueeze(0), kiln::matmul(a, b2d));
  }
  auto big = kiln::randn<float>({40, 50}, rng);
  auto sub = big.slice(0, 3, 40, 2).slice(1, 1, 50, 3);  // non-unit strides both ways
  auto rhs = kiln::randn<float>({sub.size(1), 9}, rng);
  check_product(sub.contiguous().unsqueeze(0), rhs.unsqueeze(0), kiln::matmul(sub, rhs).unsqueeze(0));
  // batch dims broadcast: [3,1,M,K] x [4,K,N] -> [3,4,M,N]
  auto x = kiln::randn<float>({3, 1, 6, 8}, rng);
  auto y = kiln::randn<float>({4, 8, 2}, rng);
  auto z = kiln::matmul(x, y);
  CHECK(z.shape() == Shape{3, 4, 6, 2});
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j)
      check_product(x.select(0, i).select(0, 0).unsqueeze(0), y.select(0, j).unsqueeze(0),
                    z.select(0, i).select(0, j).unsqueeze(0));
  // K = 0 gives zeros
  auto k0 = kiln::matmul(kiln::zeros<float>({3, 0}), kiln::zeros<float>({0, 2}));
  CHECK(k0.to_vector() == std::vector<float>(6, 0.0f));
}

TEST_CASE("double precision") {
  kiln::Rng rng(2);
  auto a = kiln::randn<double>({17, 29}, rng), b = kiln::randn<double>({29, 13}, rng);
  auto c = kiln::matmul(a, b);
  for (index_t i = 0; i < 17; ++i)
    for (index_t j = 0; j < 13; ++j) {
      double s = 0;
      for (index_t k = 0; k < 29; ++k) s += a.at({i, k}) * b.at({k, j});
      CHECK(c.at({i, j}) == doctest::Approx(s).epsilon(1e-12));
    }
}
