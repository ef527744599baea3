// Tests for kiln/backend/cpu/random.hpp: the counter rule against a scalar reference, thread-count
// independence, reproducibility, distribution statistics and random permutations.
#include <kiln/backend/cpu/random.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <tuple>
#include <vector>

namespace cpu = kiln::backend::cpu;
using kiln::index_t;

namespace {

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

struct Moments {
  double mean = 0, variance = 0, skewness = 0, kurtosis = 0;
};

template <class T>
Moments moments(const std::vector<T>& x) {
  const double n = static_cast<double>(x.size());
  double s = 0;
  for (T v : x) s += static_cast<double>(v);
  Moments m;
  m.mean = s / n;
  double m2 = 0, m3 = 0, m4 = 0;
  for (T v : x) {
    const double d = static_cast<double>(v) - m.mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
  }
  m2 /= n;
  m3 /= n;
  m4 /= n;
  m.variance = m2;
  m.skewness = m3 / std::pow(m2, 1.5);
  m.kurtosis = m4 / (m2 * m2);
  return m;
}

// Restores the thread count a test changed.
struct ThreadCountGuard {
  int saved = cpu::num_threads();
  ~ThreadCountGuard() { cpu::set_num_threads(saved); }
};

}  // namespace

TEST_CASE("fills follow the counter rule: value i from block first + i / V, slot i % V") {
  const index_t n = 10007;  // not a multiple of 4
  const std::uint64_t seed = 0xfeedfacecafebeefull, start = 12345;

  SUBCASE("float uniform") {
    kiln::Rng rng(seed, start);
    std::vector<float> out(n);
    cpu::fill_uniform(out.data(), n, 0.0f, 1.0f, rng);
    CHECK(rng.offset() == start + (n + 3) / 4);
    const kiln::Rng ref(seed);
    for (index_t i = 0; i < n; ++i) {
      const kiln::PhiloxBlock b = ref.block(start + static_cast<std::uint64_t>(i / 4));
      REQUIRE(out[i] == kiln::uniform_float(b[static_cast<int>(i % 4)]));
    }
  }
  SUBCASE("double uniform") {
    kiln::Rng rng(seed, start);
    std::vector<double> out(n);
    cpu::fill_uniform(out.data(), n, 0.0, 1.0, rng);
    CHECK(rng.offset() == start + (n + 1) / 2);
    const kiln::Rng ref(seed);
    for (index_t i = 0; i < n; ++i) {
      const kiln::PhiloxBlock b = ref.block(start + static_cast<std::uint64_t>(i / 2));
      const int w = 2 * static_cast<int>(i % 2);
      REQUIRE(out[i] == kiln::uniform_double(b[w], b[w + 1]));
    }
  }
  SUBCASE("float normal") {
    kiln::Rng rng(seed, start);
    std::vector<float> out(n);
    cpu::fill_normal(out.data(), n, 0.0f, 1.0f, rng);
    CHECK(rng.offset() == start + (n + 3) / 4);
    const kiln::Rng ref(seed);
    for (index_t i = 0; i < n; ++i) {
      const kiln::PhiloxBlock b = ref.block(start + static_cast<std::uint64_t>(i / 4));
      const int pair = static_cast<int>(i % 4) / 2;
      const auto z = kiln::normal_pair_float(b[2 * pair], b[2 * pair + 1]);
      REQUIRE(out[i] == (i % 2 == 0 ? z.first : z.second));
    }
  }
  SUBCASE("double normal") {
    kiln::Rng rng(seed, start);
    std::vector<double> out(n);
    cpu::fill_normal(out.data(), n, 0.0, 1.0, rng);
    CHECK(rng.offset() == start + (n + 1) / 2);
    const kiln::Rng ref(seed);
    for (index_t i = 0; i < n; ++i) {
      const kiln::PhiloxBlock b = ref.block(start + static_cast<std::uint64_t>(i / 2));
      const auto z = kiln::normal_pair_double(b[0], b[1], b[2], b[3]);
      REQUIRE(out[i] == (i % 2 == 0 ? z.first : z.second));
    }
  }
  SUBCASE("bernoulli, any element type") {
    kiln::Rng rng(seed, start);
    std::vector<double> out(n);
    cpu::fill_bernoulli(out.data(), n, 0.3, rng);
    CHECK(rng.offset() == start + (n + 3) / 4);
    kiln::Rng rng8(seed, start);
    std::vector<std::uint8_t> out8(n);
    cpu::fill_bernoulli(out8.data(), n, 0.3, rng8);
    const std::uint64_t threshold = kiln::bernoulli_threshold(0.3);
    const kiln::Rng ref(seed);
    for (index_t i = 0; i < n; ++i) {
      const kiln::PhiloxBlock b = ref.block(start + static_cast<std::uint64_t>(i / 4));
      const bool one = b[static_cast<int>(i % 4)] < threshold;
      REQUIRE(out[i] == (one ? 1.0 : 0.0));
      REQUIRE(out8[i] == (one ? 1 : 0));
    }
  }
  SUBCASE("permutation reserves n blocks") {
    kiln::Rng rng(seed, start);
    std::vector<index_t> out(n);
    cpu::random_permutation(out.data(), n, rng);
    CHECK(rng.offset() == start + n);
  }
  SUBCASE("uses the subsequence") {
    kiln::Rng a(seed, start, 0), b(seed, start, 1);
    std::vector<float> x(64), y(64);
    cpu::fill_uniform(x.data(), 64, 0.0f, 1.0f, a);
    cpu::fill_uniform(y.data(), 64, 0.0f, 1.0f, b);
    CHECK_FALSE(same_bits(x, y));
    const kiln::Rng ref(seed, 0, 1);
    CHECK(y[5] == kiln::uniform_float(ref.block(start + 1)[1]));
  }
}

TEST_CASE("results are bit-identical for 1, 2 and 3 threads") {
  ThreadCountGuard guard;
  const index_t n = 1000003;
  auto run = [&](int threads) {
    cpu::set_num_threads(threads);
    kiln::Rng rng(2024, 77);
    std::vector<float> uf(n), nf(n), bf(n);
    std::vector<double> ud(n), nd(n);
    std::vector<kiln::bfloat16> ub(n), nb(n);
    std::vector<index_t> perm(n);
    cpu::fill_uniform(uf.data(), n, -2.0f, 3.0f, rng);
    cpu::fill_uniform(ud.data(), n, -2.0, 3.0, rng);
    cpu::fill_normal(nf.data(), n, 1.0f, 2.0f, rng);
    cpu::fill_normal(nd.data(), n, 1.0, 2.0, rng);
    cpu::fill_bernoulli(bf.data(), n, 0.25, rng);
    cpu::fill_uniform(ub.data(), n, kiln::bfloat16(0.0f), kiln::bfloat16(1.0f), rng);
    cpu::fill_normal(nb.data(), n, kiln::bfloat16(0.0f), kiln::bfloat16(1.0f), rng);
    cpu::random_permutation(perm.data(), n, rng);
    return std::make_tuple(uf, ud, nf, nd, bf, ub, nb, perm, rng);
  };
  const auto one = run(1);
  for (int threads : {2, 3}) {
    CAPTURE(threads);
    const auto other = run(threads);
    CHECK(cpu::num_threads() == threads);
    CHECK(same_bits(std::get<0>(one), std::get<0>(other)));
    CHECK(same_bits(std::get<1>(one), std::get<1>(other)));
    CHECK(same_bits(std::get<2>(one), std::get<2>(other)));
    CHECK(same_bits(std::get<3>(one), std::get<3>(other)));
    CHECK(same_bits(std::get<4>(one), std::get<4>(other)));
    CHECK(same_bits(std::get<5>(one), std::get<5>(other)));
    CHECK(same_bits(std::get<6>(one), std::get<6>(other)));
    CHECK(same_bits(std::get<7>(one), std::get<7>(other)));
    CHECK(std::get<8>(one) == std::get<8>(other));
  }
}

TEST_CASE("reproducible from the same seed and offset; splitting a fill changes nothing") {
  const index_t n = 100000;
  kiln::Rng a(99, 5);
  std::vector<float> x(n), y(n);
  cpu::fill_normal(x.data(), n, 0.0f, 1.0f, a);
  kiln::Rng b(99, 5);
  cpu::fill_normal(y.data(), n, 0.0f, 1.0f, b);
  CHECK(same_bits(x, y));
  CHECK(a == b);

  // Restoring a serialized state continues the stream exactly.
  std::uint8_t saved[kiln::Rng::serialized_size];
  a.serialize(saved);
  std::vector<float> next1(1000), next2(1000);
  cpu::fill_uniform(next1.data(), 1000, 0.0f, 1.0f, a);
  kiln::Rng restored = kiln::Rng::deserialize(saved);
  cpu::fill_uniform(next2.data(), 1000, 0.0f, 1.0f, restored);
  CHECK(same_bits(next1, next2));

  // Two fills whose sizes are multiples of 4 equal one fill of the total.
  kiln::Rng c(99, 5);
  std::vector<float> z(n);
  cpu::fill_normal(z.data(), 40000, 0.0f, 1.0f, c);
  cpu::fill_normal(z.data() + 40000, n - 40000, 0.0f, 1.0f, c);
  CHECK(same_bits(x, z));

  // A different seed or offset gives different numbers.
  kiln::Rng d(100, 5), e(99, 6);
  std::vector<float> w(n), v(n);
  cpu::fill_normal(w.data(), n, 0.0f, 1.0f, d);
  cpu::fill_normal(v.data(), n, 0.0f, 1.0f, e);
  CHECK_FALSE(same_bits(x, w));
  CHECK_FALSE(same_bits(x, v));
  // Offset 6 is offset 5 shifted by one block (4 values).
  CHECK(std::equal(v.begin(), v.end() - 4, x.begin() + 4));
}

TEST_CASE("uniform: range, mean and variance on 1e6 samples") {
  const index_t n = 1000000;
  kiln::Rng rng(1);
  SUBCASE("float [0, 1)") {
    std::vector<float> x(n);
    cpu::fill_uniform(x.data(), n, 0.0f, 1.0f, rng);
    CHECK(*std::min_element(x.begin(), x.end()) >= 0.0f);
    CHECK(*std::max_element(x.begin(), x.end()) < 1.0f);
    const Moments m = moments(x);
    // sd of the mean: sqrt(1/12/n) = 2.9e-4; of the variance: sqrt((1/80 - 1/144)/n) = 7.5e-5.
    CHECK(std::fabs(m.mean - 0.5) < 5 * 2.9e-4);
    CHECK(std::fabs(m.variance - 1.0 / 12) < 5 * 7.5e-5);
  }
  SUBCASE("double [-3, 5)") {
    std::vector<double> x(n);
    cpu::fill_uniform(x.data(), n, -3.0, 5.0, rng);
    CHECK(*std::min_element(x.begin(), x.end()) >= -3.0);
    CHECK(*std::max_element(x.begin(), x.end()) < 5.0);
    const Moments m = moments(x);
    CHECK(std::fabs(m.mean - 1.0) < 5 * 8 * 2.9e-4);
    CHECK(std::fabs(m.variance - 64.0 / 12) < 5 * 64 * 7.5e-5);
    // Ten equal bins: chi-square with 9 degrees of freedom, p = 1e-4 bound 33.7.
    std::vector<double> bins(10, 0);
    for (double v : x) bins[static_cast<std::size_t>((v + 3.0) / 0.8)] += 1;
    double chi2 = 0;
    for (double c : bins) chi2 += (c - n / 10.0) * (c - n / 10.0) / (n / 10.0);
    CHECK(chi2 < 33.7);
  }
  SUBCASE("bfloat16 [0, 1)") {
    std::vector<kiln::bfloat16> x(n);
    cpu::fill_uniform(x.data(), n, kiln::bfloat16(0.0f), kiln::bfloat16(1.0f), rng);
    float lo = 1, hi = 0;
    for (auto v : x) {
      lo = std::min(lo, float(v));
      hi = std::max(hi, float(v));
    }
    CHECK(lo >= 0.0f);
    CHECK(hi < 1.0f);
    const Moments m = moments(x);
    // Rounding down onto the bfloat16 grid (spacing up to 2^-8 in [0.5, 1)) shifts the mean by
    // at most about 2^-9.
    CHECK(std::fabs(m.mean - 0.5) < 5 * 2.9e-4 + 0x1p-9);
    CHECK(std::fabs(m.variance - 1.0 / 12) < 2e-3);
  }
  SUBCASE("degenerate and narrow ranges stay inside [low, high)") {
    std::vector<float> x(1000);
    cpu::fill_uniform(x.data(), 1000, 2.5f, 2.5f, rng);
    CHECK(std::all_of(x.begin(), x.end(), [](float v) { return v == 2.5f; }));
    const float low = 1.0f, high = std::nextafter(1.0f, 2.0f);
    cpu::fill_uniform(x.data(), 1000, low, high, rng);
    CHECK(std::all_of(x.begin(), x.end(), [&](float v) { return v >= low && v < high; }));
  }
}

TEST_CASE("normal: mean, variance, skewness and kurtosis on 1e6 samples") {
  const index_t n = 1000000;
  kiln::Rng rng(2);
  // Standard errors: mean 1/sqrt(n) = 1e-3, variance sqrt(2/n) = 1.41e-3,
  // skewness sqrt(6/n) = 2.45e-3, kurtosis sqrt(24/n) = 4.9e-3. Bounds at 5 of them.
  SUBCASE("float") {
    std::vector<float> x(n);
    cpu::fill_normal(x.data(), n, 0.0f, 1.0f, rng);
    const Moments m = moments(x);
    CHECK(std::fabs(m.mean) < 5e-3);
    CHECK(std::fabs(m.variance - 1) < 5 * 1.41e-3);
    CHECK(std::fabs(m.skewness) < 5 * 2.45e-3);
    CHECK(std::fabs(m.kurtosis - 3) < 5 * 4.9e-3);
    // Tail: P(|z| > 3) = 0.0026998.
    const auto tail = std::count_if(x.begin(), x.end(), [](float v) { return std::fabs(v) > 3; });
    CHECK(std::fabs(double(tail) / n - 0.0026998) < 5 * std::sqrt(0.0027 / n));
  }
  SUBCASE("double with mean and stddev") {
    std::vector<double> x(n);
    cpu::fill_normal(x.data(), n, 10.0, 0.5, rng);
    const Moments m = moments(x);
    CHECK(std::fabs(m.mean - 10) < 5 * 0.5e-3);
    CHECK(std::fabs(m.variance - 0.25) < 5 * 0.25 * 1.41e-3);
    CHECK(std::fabs(m.skewness) < 5 * 2.45e-3);
    CHECK(std::fabs(m.kurtosis - 3) < 5 * 4.9e-3);
  }
  SUBCASE("the two values of a Box-Muller pair are uncorrelated") {
    std::vector<float> x(n);
    cpu::fill_normal(x.data(), n, 0.0f, 1.0f, rng);
    double c01 = 0, c12 = 0;
    for (index_t i = 0; i + 1 < n; i += 2) c01 += double(x[i]) * x[i + 1];
    for (index_t i = 1; i + 1 < n; i += 2) c12 += double(x[i]) * x[i + 1];
    CHECK(std::fabs(c01 / (n / 2)) < 5 / std::sqrt(n / 2.0));
    CHECK(std::fabs(c12 / (n / 2)) < 5 / std::sqrt(n / 2.0));
  }
  SUBCASE("stddev 0 gives the mean") {
    std::vector<double> x(100);
    cpu::fill_normal(x.data(), 100, 4.0, 0.0, rng);
    CHECK(std::all_of(x.begin(), x.end(), [](double v) { return v == 4.0; }));
  }
}

TEST_CASE("bernoulli frequency") {
  const index_t n = 1000000;
  kiln::Rng rng(3);
  for (double p : {0.01, 0.3, 0.5, 0.9}) {
    CAPTURE(p);
    std::vector<float> x(n);
    cpu::fill_bernoulli(x.data(), n, p, rng);
    CHECK(std::all_of(x.begin(), x.end(), [](float v) { return v == 0.0f || v == 1.0f; }));
    const double freq = std::count(x.begin(), x.end(), 1.0f) / double(n);
    CHECK(std::fabs(freq - p) < 5 * std::sqrt(p * (1 - p) / n));
  }
  std::vector<double> x(1000);
  cpu::fill_bernoulli(x.data(), 1000, 0.0, rng);
  CHECK(std::all_of(x.begin(), x.end(), [](double v) { return v == 0.0; }));
  cpu::fill_bernoulli(x.data(), 1000, 1.0, rng);
  CHECK(std::all_of(x.begin(), x.end(), [](double v) { return v == 1.0; }));
}

TEST_CASE("random_permutation is a uniform permutation") {
  SUBCASE("large n is a permutation") {
    const index_t n = 300001;
    std::vector<index_t> p(n);
    kiln::Rng rng(4);
    cpu::random_permutation(p.data(), n, rng);
    std::vector<char> seen(n, 0);
    for (index_t v : p) {
      REQUIRE(v >= 0);
      REQUIRE(v < n);
      REQUIRE(seen[v] == 0);
      seen[v] = 1;
    }
    index_t fixed = 0;
    for (index_t i = 0; i < n; ++i) fixed += p[i] == i;
    CHECK(fixed < 10);  // expected 1 fixed point
  }
  SUBCASE("small n: each position uniform, every permutation equally likely") {
    const int n = 5, trials = 120000;
    kiln::Rng rng(5);
    std::vector<std::vector<int>> counts(n, std::vector<int>(n, 0));
    std::map<std::vector<index_t>, int> perms;
    std::vector<index_t> p(n);
    for (int t = 0; t < trials; ++t) {
      cpu::random_permutation(p.data(), n, rng);
      for (int i = 0; i < n; ++i) ++counts[i][p[i]];
      ++perms[p];
    }
    const double expected = double(trials) / n;
    for (int i = 0; i < n; ++i) {
      double chi2 = 0;
      for (int v = 0; v < n; ++v)
        chi2 += (counts[i][v] - expected) * (counts[i][v] - expected) / expected;
      CAPTURE(i);
      CHECK(chi2 < 23.5);  // 4 degrees of freedom, p = 1e-4
    }
    CHECK(perms.size() == 120);
    double chi2 = 0;
    for (const auto& [perm, c] : perms) chi2 += (c - 1000.0) * (c - 1000.0) / 1000.0;
    CHECK(chi2 < 119 + 6 * std::sqrt(2 * 119.0));  // 119 degrees of freedom
  }
  SUBCASE("n = 0 and n = 1") {
    kiln::Rng rng(6);
    cpu::random_permutation(nullptr, 0, rng);
    CHECK(rng.offset() == 0);
    index_t one = -1;
    cpu::random_permutation(&one, 1, rng);
    CHECK(one == 0);
    CHECK(rng.offset() == 1);
  }
}

TEST_CASE("bad arguments are rejected with a message and leave the state alone") {
  kiln::Rng rng(8, 3);
  std::vector<float> x(10);
  CHECK_THROWS_AS(cpu::fill_uniform(x.data(), -1, 0.0f, 1.0f, rng), std::invalid_argument);
  CHECK_THROWS_AS(cpu::fill_uniform(x.data(), 10, 1.0f, 0.0f, rng), std::invalid_argument);
  CHECK_THROWS_AS(cpu::fill_uniform(x.data(), 10, std::nanf(""), 1.0f, rng), std::invalid_argument);
  CHECK_THROWS_AS(cpu::fill_normal(x.data(), 10, 0.0f, -1.0f, rng), std::invalid_argument);
  CHECK_THROWS_AS(cpu::fill_bernoulli(x.data(), 10, 1.5, rng), std::invalid_argument);
  CHECK_THROWS_AS(cpu::fill_bernoulli(x.data(), 10, std::nan(""), rng), std::invalid_argument);
  CHECK_THROWS_AS(cpu::fill_uniform<float>(nullptr, 10, 0.0f, 1.0f, rng), std::invalid_argument);
  CHECK_THROWS_WITH(cpu::fill_bernoulli(x.data(), 10, -0.5, rng),
                    doctest::Contains("fill_bernoulli"));
  CHECK(rng.offset() == 3);
  cpu::fill_uniform(x.data(), 0, 0.0f, 1.0f, rng);
  CHECK(rng.offset() == 3);
}
