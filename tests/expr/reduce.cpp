// Tests of include/kiln/expr/reduce.hpp: sum, mean, max, min, var, logsumexp, argmax, argmin
// along every axis and over all elements, against hand-computed values and double loops.
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>

#include <cmath>
#include <limits>
#include <vector>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;

namespace {
Tensor<double> iota_d(Shape s) {
  std::vector<double> v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i);
  return kiln::from_vector(v, s);
}
}  // namespace

TEST_CASE("hand-computed reductions on a 2x3 matrix") {
  auto m = kiln::from_vector(std::vector<float>{1, 5, 3, -2, 4, 0}, Shape{2, 3});
  CHECK(kiln::sum(m).item() == 11.0f);
  CHECK(kiln::sum(m, 0).to_vector() == std::vector<float>{-1, 9, 3});
  CHECK(kiln::sum(m, 1).to_vector() == std::vector<float>{9, 2});
  CHECK(kiln::sum(m, -1, true).shape() == Shape{2, 1});
  CHECK(kiln::mean(m, 1).at({0}) == 3.0f);
  CHECK(kiln::max(m).item() == 5.0f);
  CHECK(kiln::min(m).item() == -2.0f);
  CHECK(kiln::max(m, 0).to_vector() == std::vector<float>{1, 5, 3});
  CHECK(kiln::min(m, 1).to_vector() == std::vector<float>{1, -2});
  CHECK(kiln::argmax(m, 1).to_vector() == std::vector<index_t>{1, 1});
  CHECK(kiln::argmin(m, 0).to_vector() == std::vector<index_t>{1, 1, 1});
  CHECK(kiln::argmax(m).item() == 1);
  CHECK(kiln::argmin(m).item() == 3);
  // var of {1,5,3}: mean 3, squared deviations 4+4+0 = 8, unbiased 4, biased 8/3
  CHECK(kiln::var(m, 1).at({0}) == doctest::Approx(4.0));
  CHECK(kiln::var(m, 1, 0.0).at({0}) == doctest::Approx(8.0 / 3.0));
  // logsumexp of {1,5,3}
  CHECK(kiln::logsumexp(m, 1).at({0}) == doctest::Approx(std::log(std::exp(1.0) + std::exp(5.0) + std::exp(3.0))));
  CHECK_THROWS_AS(kiln::sum(m, 2), kiln::ValueError);
}

TEST_CASE("every axis of a 3-d tensor against a double loop") {
  const Shape s{3, 37, 5};
  kiln::Rng rng(11);
  auto t = kiln::randn<double>(s, rng, 0.5, 2.0);
  for (int axis = 0; axis < 3; ++axis) {
    auto su = kiln::sum(t, axis), mx = kiln::max(t, axis), mn = kiln::min(t, axis), me = kiln::mean(t, axis);
    auto va = kiln::var(t, axis), ls = kiln::logsumexp(t, axis);
    auto am = kiln::argmax(t, axis);
    const index_t n0 = s[(axis + 1) % 3], n1 = s[(axis + 2) % 3], R = s[axis];
    CAPTURE(axis);
    for (index_t i = 0; i < n0; ++i)
      for (index_t j = 0; j < n1; ++j) {
        index_t idx[3];
        auto at = [&](index_t r) {
          idx[axis] = r;
          idx[(axis + 1) % 3] = i;
          idx[(axis + 2) % 3] = j;
          return t.at({idx[0], idx[1], idx[2]});
        };
        double sum = 0, best = -1e300, worst = 1e300;
        index_t arg = 0;
        for (index_t r = 0; r < R; ++r) {
          sum += at(r);
          if (at(r) > best) {
            best = at(r);
            arg = r;
          }
          worst = std::min(worst, at(r));
        }
        const double mean = sum / static_cast<double>(R);
        double ss = 0, se = 0;
        for (index_t r = 0; r < R; ++r) {
          ss += (at(r) - mean) * (at(r) - mean);
          se += std::exp(at(r) - best);
        }
        // output index: the remaining dims in order
        index_t out[2];
        int k = 0;
        for (int d = 0; d < 3; ++d)
          if (d != axis) out[k++] = idx[d];
        CHECK(su.at({out[0], out[1]}) == doctest::Approx(sum).epsilon(1e-12));
        CHECK(me.at({out[0], out[1]}) == doctest::Approx(mean).epsilon(1e-12));
        CHECK(mx.at({out[0], out[1]}) == best);
        CHECK(mn.at({out[0], out[1]}) == worst);
        CHECK(am.at({out[0], out[1]}) == arg);
        CHECK(va.at({out[0], out[1]}) == doctest::Approx(ss / static_cast<double>(R - 1)).epsilon(1e-12));
        CHECK(ls.at({out[0], out[1]}) == doctest::Approx(best + std::log(se)).epsilon(1e-12));
      }
  }
}

TEST_CASE("reductions of expressions and of non-contiguous views") {
  auto m = iota_d({4, 6});
  CHECK(kiln::sum(m * 2.0, 0).at({5}) == 2.0 * (5 + 11 + 17 + 23));
  CHECK(kiln::sum(m.t(), 1).at({5}) == 5 + 11 + 17 + 23);
  CHECK(kiln::max(m.slice(1, 0, 6, 2), 1).at({3}) == 22.0);
  CHECK(kiln::sum(kiln::from_vector(std::vector<double>{1, 2, 3}) * iota_d({2, 1})).item() == 6.0);
}

TEST_CASE("long rows, many threads: exact integer sums and thread-count independence") {
  const index_t n = (1 << 20) + 13;
  auto ones = kiln::ones<float>({n});
  CHECK(kiln::sum(ones).item() == static_cast<float>(n));
  kiln::Rng rng(5);
  auto x = kiln::randn<float>({3, 200001}, rng);
  kiln::set_num_threads(1);
  auto s1 = kiln::sum(x, 1), l1 = kiln::logsumexp(x, 1), v1 = kiln::var(x, 1), a1 = kiln::sum(x);
  kiln::set_num_threads(2);
  auto s2 = kiln::sum(x, 1), l2 = kiln::logsumexp(x, 1), v2 = kiln::var(x, 1), a2 = kiln::sum(x);
  CHECK(s1.to_vector() == s2.to_vector());
  CHECK(l1.to_vector() == l2.to_vector());
  CHECK(v1.to_vector() == v2.to_vector());
  CHECK(a1.item() == a2.item());
  double ref = 0;
  for (index_t j = 0; j < 200001; ++j) ref += x.at({1, j});
  CHECK(s1.at({1}) == doctest::Approx(ref).epsilon(1e-4));
  CHECK(v1.at({0}) == doctest::Approx(1.0).epsilon(0.02));
}

TEST_CASE("stable logsumexp and special values") {
  const double inf = std::numeric_limits<double>::infinity();
  auto big = kiln::from_vector(std::vector<double>{1000, 1000});
  CHECK(kiln::logsumexp(big).item() == doctest::Approx(1000 + std::log(2.0)));
  auto neg = kiln::from_vector(std::vector<double>{-inf, -inf});
  CHECK(kiln::logsumexp(neg).item() == -inf);
  auto pinf = kiln::from_vector(std::vector<double>{1, inf});
  CHECK(kiln::logsumexp(pinf).item() == inf);
  auto with_nan = kiln::from_vector(std::vector<double>{1, std::nan(""), 3});
  CHECK(std::isnan(kiln::max(with_nan).item()));
  CHECK(std::isnan(kiln::min(with_nan).item()));
  CHECK(std::isnan(kiln::sum(with_nan).item()));
  CHECK(kiln::argmax(with_nan).item() == 1);
  // empty reductions
  auto e = kiln::zeros<double>({0, 3});
  CHECK(kiln::sum(e, 0).to_vector() == std::vector<double>{0, 0, 0});
  CHECK(std::isnan(kiln::mean(e).item()));
  CHECK_THROWS_AS(kiln::max(e, 0), kiln::ShapeError);
  CHECK(kiln::sum(e, 1).numel() == 0);
}

TEST_CASE("0-d inputs reduce to 0-d; float sums down a long non-inner axis stay accurate") {
  auto s = kiln::full<float>({}, 2.5f);
  CHECK(kiln::sum(s, 0).dim() == 0);
  CHECK(kiln::sum(s, 0, true).dim() == 0);
  CHECK(kiln::max(s, -1).item() == 2.5f);
  CHECK_THROWS_AS(kiln::sum(s, 1), kiln::ValueError);
  // 20000 rows of 0.1f down axis 0: a plain running float sum drifts by ~1e-3 relative.
  auto col = kiln::full<float>({20000, 3}, 0.1f);
  const double want = 20000 * static_cast<double>(0.1f);
  auto got = kiln::sum(col, 0);
  for (int j = 0; j < 3; ++j) CHECK(std::abs(got.at({j}) - want) / want < 2e-5);
}
