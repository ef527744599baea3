// Tests of include/kiln/core/tensor.hpp and core/factories.hpp: storage sharing, views
// (reshape, permute, transpose, slice, select, expand, squeeze, unsqueeze), copies, errors.
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>

#include <cmath>
#include <string>
#include <vector>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;

namespace {
std::vector<float> iota_vec(int n) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<float>(i);
  return v;
}
Tensor<float> iota(Shape s) { return kiln::from_vector(iota_vec(static_cast<int>(s.numel())), s); }
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("shape basics and broadcasting rules") {
  Shape a{2, 1, 4}, b{3, 1}, out;
  CHECK(a.numel() == 8);
  CHECK(Shape{}.numel() == 1);
  CHECK(kiln::broadcast_shapes(a, b, out));
  CHECK(out == Shape{2, 3, 4});
  CHECK_FALSE(kiln::broadcast_shapes(Shape{2, 3}, Shape{4}, out));
  CHECK(kiln::broadcast_shapes(Shape{0, 3}, Shape{1, 3}, out));
  CHECK(out == Shape{0, 3});
  CHECK_FALSE(kiln::broadcast_shapes(Shape{0}, Shape{2}, out));
  CHECK(kiln::contiguous_strides(Shape{2, 3, 4}) == Shape{12, 4, 1});
  CHECK(kiln::to_string(Shape{2, 3}) == "[2, 3]");
  CHECK_THROWS_AS((Shape{1, 1, 1, 1, 1, 1, 1, 1, 1}), std::length_error);
}

TEST_CASE("new tensors: zeros, full, from_vector, at, item") {
  Tensor<float> z(Shape{2, 3});
  CHECK(z.dim() == 2);
  CHECK(z.numel() == 6);
  CHECK(z.is_contiguous());
  for (float v : z.to_vector()) CHECK(v == 0.0f);
  auto f = kiln::full<double>({2, 2}, 2.5);
  CHECK(f.at({1, 1}) == 2.5);
  auto t = iota({2, 3});
  CHECK(t.at({1, 2}) == 5.0f);
  CHECK(t.at({-1, -1}) == 5.0f);
  CHECK_THROWS_AS(t.at({2, 0}), kiln::ValueError);
  CHECK_THROWS_AS(t.at({0}), kiln::ValueError);
  CHECK(kiln::full<float>({}, 7.0f).item() == 7.0f);
  CHECK_THROWS_AS(t.item(), kiln::ShapeError);
  CHECK_THROWS_AS(kiln::from_vector(std::vector<float>{1, 2, 3}, Shape{2, 2}), kiln::ShapeError);
  Tensor<float> undefined;
  CHECK_FALSE(undefined.defined());
}

TEST_CASE("copies share storage; clone does not") {
  auto a = iota({4});
  Tensor<float> b = a;
  b.at({0}) = 42.0f;
  CHECK(a.at({0}) == 42.0f);
  auto c = a.clone();
  c.at({1}) = -1.0f;
  CHECK(a.at({1}) == 1.0f);
  CHECK(c.storage() != a.storage());
}

TEST_CASE("reshape and view") {
  auto t = iota({2, 3, 4});
  auto v = t.view({6, 4});
  CHECK(v.storage() == t.storage());
  CHECK(v.at({5, 3}) == 23.0f);
  auto w = t.reshape({4, -1});
  CHECK(w.shape() == Shape{4, 6});
  CHECK(w.at({3, 5}) == 23.0f);
  CHECK_THROWS_AS(t.reshape({5, -1}), kiln::ShapeError);
  CHECK_THROWS_AS(t.view({-1, -1}), kiln::ShapeError);
  // A transposed tensor cannot be viewed flat, but reshape copies.
  auto tt = iota({3, 4}).t();
  CHECK_FALSE(tt.is_contiguous());
  CHECK_THROWS_AS(tt.view({12}), kiln::ShapeError);
  auto flat = tt.reshape({12});
  CHECK(flat.storage() != tt.storage());
  CHECK(flat.at({1}) == 4.0f);  // tt[0][1] = t[1][0]
  // Splitting a dim of a transposed tensor is still a view.
  auto split = tt.view({2, 2, 3});
  CHECK(split.storage() == tt.storage());
  CHECK(split.at({1, 0, 2}) == tt.at({2, 2}));
  CHECK(t.flatten().shape() == Shape{24});
  CHECK(t.flatten(1).shape() == Shape{2, 12});
  // size-0 tensors reshape freely
  auto e = kiln::zeros<float>({0, 3});
  CHECK(e.reshape({3, 0}).shape() == Shape{3, 0});
}

TEST_CASE("permute, transpose, slice, select, squeeze, unsqueeze, expand") {
  auto t = iota({2, 3, 4});
  auto p = t.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.at({3, 1, 2}) == t.at({1, 2, 3}));
  CHECK_THROWS_AS(t.permute({0, 0, 1}), kiln::ValueError);
  auto tr = t.transpose(0, 2);
  CHECK(tr.shape() == Shape{4, 3, 2});
  CHECK(tr.at({1, 2, 1}) == t.at({1, 2, 1}));

  auto s = t.slice(2, 1, 4, 2);  // columns 1 and 3
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK(s.at({1, 2, 1}) == t.at({1, 2, 3}));
  CHECK(t.slice(1, -2, 100).shape() == Shape{2, 2, 4});
  CHECK(t.slice(1, 2, 1).shape() == Shape{2, 0, 4});
  CHECK_THROWS_AS(t.slice(0, 0, 1, 0), kiln::ValueError);

  auto row = t.select(1, 2);
  CHECK(row.shape() == Shape{2, 4});
  CHECK(row.at({1, 3}) == t.at({1, 2, 3}));
  CHECK_THROWS_AS(t.select(1, 3), kiln::ValueError);

  auto u = t.unsqueeze(1);
  CHECK(u.shape() == Shape{2, 1, 3, 4});
  CHECK(u.unsqueeze(-1).shape() == Shape{2, 1, 3, 4, 1});
  CHECK(u.squeeze(1).shape() == Shape{2, 3, 4});
  CHECK(u.squeeze().shape() == Shape{2, 3, 4});
  CHECK_THROWS_AS(t.squeeze(0), kiln::ShapeError);

  auto col = iota({3, 1});
  auto ex = col.expand({2, 3, 5});
  CHECK(ex.shape() == Shape{2, 3, 5});
  CHECK(ex.strides()[2] == 0);
  CHECK(ex.at({1, 2, 4}) == 2.0f);
  CHECK_THROWS_AS(col.expand({2, 2}), kiln::ShapeError);
  auto ec = ex.contiguous();
  CHECK(ec.is_contiguous());
  CHECK(ec.at({0, 1, 3}) == 1.0f);
}

TEST_CASE("shape errors name the op and both shapes") {
  auto a = iota({2, 3});
  auto b = iota({4});
  const std::string msg = error_of([&] { Tensor<float> c = a + b; });
  CHECK(msg.find("add") != std::string::npos);
  CHECK(msg.find("[2, 3]") != std::string::npos);
  CHECK(msg.find("[4]") != std::string::npos);
  const std::string mm = error_of([&] { kiln::matmul(a, a); });
  CHECK(mm.find("matmul") != std::string::npos);
  CHECK(mm.find("[2, 3]") != std::string::npos);
  const std::string rs = error_of([&] { a.view({7}); });
  CHECK(rs.find("view") != std::string::npos);
  CHECK(rs.find("[7]") != std::string::npos);
}

TEST_CASE("dtype conversion and bfloat16 storage") {
  auto t = kiln::from_vector(std::vector<float>{1.0f, 1.00390625f, -3.5f, 1e30f}, Shape{4});
  auto b = t.to<kiln::bfloat16>();
  auto back = b.to<float>();
  CHECK(back.at({0}) == 1.0f);
  CHECK(back.at({1}) == 1.0f);  // 1 + 2^-8 is a tie: rounds to even (1.0)
  CHECK(back.at({2}) == -3.5f);
  CHECK(std::abs(back.at({3}) - 1e30f) / 1e30f < 1.0f / 128);
  auto d = t.to<double>();
  CHECK(d.at({2}) == -3.5);
  // conversion of a strided view
  auto m = iota({3, 4}).t().to<double>();
  CHECK(m.shape() == Shape{4, 3});
  CHECK(m.at({3, 2}) == 11.0);
}

TEST_CASE("arange and linspace") {
  auto a = kiln::arange<float>(0.f, 1.f, 0.25f);
  CHECK(a.numel() == 4);
  CHECK(a.at({3}) == 0.75f);
  CHECK(kiln::arange<double>(5.0).numel() == 5);
  CHECK(kiln::arange<float>(3.f, 0.f, -1.f).to_vector() == std::vector<float>{3, 2, 1});
  CHECK(kiln::arange<float>(1.f, 1.f).numel() == 0);
  CHECK_THROWS_AS(kiln::arange<float>(0.f, 1.f, 0.f), kiln::ValueError);
  auto l = kiln::linspace<double>(-1.0, 1.0, 5);
  CHECK(l.to_vector() == std::vector<double>{-1.0, -0.5, 0.0, 0.5, 1.0});
  CHECK(kiln::linspace<float>(0.f, 1.f, 1).at({0}) == 0.0f);
  CHECK(kiln::linspace<float>(0.f, 0.3f, 7).at({6}) == 0.3f);
}

TEST_CASE("random factories are reproducible and independent of the thread count") {
  kiln::Rng r1(7), r2(7);
  kiln::set_num_threads(1);
  auto a = kiln::randn<float>({1000, 37}, r1);
  kiln::set_num_threads(2);
  auto b = kiln::randn<float>({1000, 37}, r2);
  CHECK(a.to_vector() == b.to_vector());
  auto u = kiln::rand<double>({10000}, r1, -2.0, 2.0);
  CHECK(kiln::min(u).item() >= -2.0);
  CHECK(kiln::max(u).item() < 2.0);
  CHECK(std::abs(kiln::mean(u).item()) < 0.1);
  auto bern = kiln::bernoulli<float>({10000}, 0.25, r1);
  CHECK(std::abs(kiln::mean(bern).item() - 0.25f) < 0.02f);
  auto p = kiln::randperm(100, r1);
  std::vector<int> seen(100, 0);
  for (index_t v : p.to_vector()) seen[static_cast<std::size_t>(v)]++;
  for (int s : seen) CHECK(s == 1);
  // successive draws differ
  kiln::Rng r3(7);
  auto x1 = kiln::rand<float>({8}, r3), x2 = kiln::rand<float>({8}, r3);
  CHECK(x1.to_vector() != x2.to_vector());
}
