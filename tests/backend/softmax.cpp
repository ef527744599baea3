// Tests for kiln/backend/cpu/softmax.hpp: softmax, log-softmax and cross-entropy forward against
// plain double loops and hand-derived values, backward against central finite differences,
// thread-count independence and argument errors.
#include <kiln/backend/cpu/softmax.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

namespace {

using kiln::index_t;
namespace cpu = kiln::backend::cpu;

struct Lcg {
  std::uint64_t s;
  explicit Lcg(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ULL + 1) {}
  double uniform(double lo, double hi) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * static_cast<double>(s >> 11) * (1.0 / 9007199254740992.0);
  }
  index_t below(index_t n) {
    return std::min<index_t>(n - 1, static_cast<index_t>(uniform(0, static_cast<double>(n))));
  }
};

std::vector<double> random_vector(index_t n, Lcg& rng, double lo = -3.0, double hi = 3.0) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = rng.uniform(lo, hi);
  return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class A, class B>
double max_error(const std::vector<A>& a, const std::vector<B>& b) {
  REQUIRE(a.size() == b.size());
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    e = std::max(e, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])) /
                        (1.0 + std::fabs(static_cast<double>(b[i]))));
  return e;
}

std::vector<double> numeric_gradient(std::vector<double>& p, const std::function<double()>& loss,
                                     double h = 1e-5) {
  std::vector<double> g(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) {
    const double saved = p[i];
    p[i] = saved + h;
    const double up = loss();
    p[i] = saved - h;
    const double down = loss();
    p[i] = saved;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// log-sum-exp of each row, in double with the maximum taken out.
std::vector<double> reference_lse(const std::vector<double>& x, index_t rows, index_t cols) {
  std::vector<double> out(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) {
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    for (index_t c = 0; c < cols; ++c) m = std::max(m, x[r * cols + c]);
    for (index_t c = 0; c < cols; ++c) s += std::exp(x[r * cols + c] - m);
    out[r] = m + std::log(s);
  }
  return out;
}

const index_t shapes[][2] = {{1, 1}, {1, 17}, {5, 3}, {33, 100}, {4, 1000}, {2, 5003}};

}  // namespace

TEST_CASE_TEMPLATE("softmax and log_softmax forward match a double reference", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  Lcg rng(1);
  for (const auto& s : shapes) {
    const index_t rows = s[0], cols = s[1];
    CAPTURE(rows);
    CAPTURE(cols);
    const auto x = random_vector(rows * cols, rng, -10.0, 10.0);
    const auto lse = reference_lse(x, rows, cols);
    std::vector<double> p_ref(x.size()), logp_ref(x.size());
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) {
        logp_ref[r * cols + c] = x[r * cols + c] - lse[r];
        p_ref[r * cols + c] = std::exp(logp_ref[r * cols + c]);
      }
    const auto xt = cast<T>(x);
    std::vector<T> y(x.size());
    cpu::softmax_forward(xt.data(), rows, cols, y.data());
    CHECK(max_error(y, p_ref) < tol);
    cpu::log_softmax_forward(xt.data(), rows, cols, y.data());
    CHECK(max_error(y, logp_ref) < tol);
    // In place.
    y = xt;
    cpu::softmax_forward(y.data(), rows, cols, y.data());
    CHECK(max_error(y, p_ref) < tol);
  }
}

TEST_CASE("softmax: hand-derived values and large logits") {
  // softmax(0, ln 3) = (1/4, 3/4); softmax(1000, 1001) = (1, e) / (1 + e) without overflow.
  const std::vector<float> x = {0.0f, std::log(3.0f), 1000.0f, 1001.0f};
  const double e = std::exp(1.0);
  std::vector<float> y(4);
  cpu::softmax_forward(x.data(), 2, 2, y.data());
  CHECK(y[0] == doctest::Approx(0.25).epsilon(1e-6));
  CHECK(y[1] == doctest::Approx(0.75).epsilon(1e-6));
  CHECK(y[2] == doctest::Approx(1 / (1 + e)).epsilon(1e-6));
  CHECK(y[3] == doctest::Approx(e / (1 + e)).epsilon(1e-6));
  cpu::log_softmax_forward(x.data(), 2, 2, y.data());
  CHECK(y[0] == doctest::Approx(std::log(0.25)).epsilon(1e-6));
  CHECK(y[2] == doctest::Approx(-std::log(1 + e)).epsilon(1e-6));
  CHECK(y[3] == doctest::Approx(1 - std::log(1 + e)).epsilon(1e-6));
}

TEST_CASE("log_softmax and cross-entropy on long rows whose maximum comes late") {
  // Rows are summed in chunks of 4096; a larger maximum in a later chunk rescales the sum.
  Lcg rng(7);
  const index_t cols = 9000;
  auto x = random_vector(2 * cols, rng);
  x[5000] = 40.0;         // row 0: maximum in the second chunk
  x[cols + 8999] = 25.0;  // row 1: maximum in the last, partial chunk
  const auto lse = reference_lse(x, 2, cols);
  const std::vector<index_t> t = {5000, 3};
  for (const bool in_float : {false, true}) {
    CAPTURE(in_float);
    const double tol = in_float ? 2e-6 : 1e-13;
    std::vector<double> logp_ref(x.size()), loss_ref = {lse[0] - x[5000], lse[1] - x[cols + 3]};
    for (index_t r = 0; r < 2; ++r)
      for (index_t c = 0; c < cols; ++c) logp_ref[r * cols + c] = x[r * cols + c] - lse[r];
    if (in_float) {
      const auto xf = cast<float>(x);
      std::vector<float> y(x.size()), loss(2), lse_out(2);
      cpu::log_softmax_forward(xf.data(), 2, cols, y.data());
      cpu::cross_entropy_forward(xf.data(), t.data(), 2, cols, -100, 0.0f, loss.data(),
                                 lse_out.data());
      CHECK(max_error(y, logp_ref) < tol);
      CHECK(max_error(loss, loss_ref) < tol);
      CHECK(max_error(lse_out, lse) < tol);
    } else {
      std::vector<double> y(x.size()), loss(2), lse_out(2);
      cpu::log_softmax_forward(x.data(), 2, cols, y.data());
      cpu::cross_entropy_forward(x.data(), t.data(), 2, cols, -100, 0.0, loss.data(),
                                 lse_out.data());
      CHECK(max_error(y, logp_ref) < tol);
      CHECK(max_error(loss, loss_ref) < tol);
      CHECK(max_error(lse_out, lse) < tol);
    }
  }
}

TEST_CASE("softmax_backward and log_softmax_backward match finite differences") {
  const index_t fd_shapes[][2] = {{1, 1}, {1, 9}, {3, 5}, {4, 37}};
  Lcg rng(2);
  for (const auto& s : fd_shapes) {
    const index_t rows = s[0], cols = s[1];
    CAPTURE(rows);
    CAPTURE(cols);
    auto x = random_vector(rows * cols, rng);
    const auto r = random_vector(rows * cols, rng);
    for (const bool log : {false, true}) {
      CAPTURE(log);
      const auto forward = [&](std::vector<double>& y) {
        if (log)
          cpu::log_softmax_forward(x.data(), rows, cols, y.data());
        else
          cpu::softmax_forward(x.data(), rows, cols, y.data());
      };
      const auto loss = [&] {
        std::vector<double> y(x.size());
        forward(y);
        return dot(y, r);
      };
      std::vector<double> y(x.size()), gx(x.size());
      forward(y);
      if (log)
        cpu::log_softmax_backward(r.data(), y.data(), rows, cols, gx.data());
      else
        cpu::softmax_backward(r.data(), y.data(), rows, cols, gx.data());
      CHECK(max_error(gx, numeric_gradient(x, loss)) < 1e-8);
    }
  }
}

TEST_CASE_TEMPLATE("softmax backward in float agrees with double on long rows", T, float) {
  Lcg rng(3);
  const index_t rows = 7, cols = 3001;
  const auto x = random_vector(rows * cols, rng), gy = random_vector(rows * cols, rng);
  for (const bool log : {false, true}) {
    std::vector<double> y(x.size()), gx(x.size());
    std::vector<T> yt(x.size()), gxt(x.size());
    const auto xt = cast<T>(x), gyt = cast<T>(gy);
    if (log) {
      cpu::log_softmax_forward(x.data(), rows, cols, y.data());
      cpu::log_softmax_backward(gy.data(), y.data(), rows, cols, gx.data());
      cpu::log_softmax_forward(xt.data(), rows, cols, yt.data());
      cpu::log_softmax_backward(gyt.data(), yt.data(), rows, cols, gxt.data());
    } else {
      cpu::softmax_forward(x.data(), rows, cols, y.data());
      cpu::softmax_backward(gy.data(), y.data(), rows, cols, gx.data());
      cpu::softmax_forward(xt.data(), rows, cols, yt.data());
      cpu::softmax_backward(gyt.data(), yt.data(), rows, cols, gxt.data());
    }
    CHECK(max_error(gxt, gx) < 1e-5);
  }
}

// ================================================================================ cross-entropy

TEST_CASE("cross_entropy_forward: hand-derived values") {
  // logits (0, ln 3), target 1: lse = ln 4, loss = ln 4 - ln 3. With label smoothing 0.2:
  // loss = lse - 0.8 x_t - 0.1 (x_0 + x_1) = ln 4 - 0.9 ln 3. Target 0 of (0, 0): ln 2.
  const std::vector<double> x = {0.0, std::log(3.0), 0.0, 0.0, 5.0, 1.0};
  const std::vector<index_t> t = {1, 0, -100};
  std::vector<double> loss(3), lse(3);
  cpu::cross_entropy_forward(x.data(), t.data(), 3, 2, -100, 0.0, loss.data(), lse.data());
  CHECK(loss[0] == doctest::Approx(std::log(4.0) - std::log(3.0)).epsilon(1e-14));
  CHECK(loss[1] == doctest::Approx(std::log(2.0)).epsilon(1e-14));
  CHECK(loss[2] == 0.0);  // ignored
  CHECK(lse[0] == doctest::Approx(std::log(4.0)).epsilon(1e-14));
  cpu::cross_entropy_forward(x.data(), t.data(), 3, 2, -100, 0.2, loss.data(), lse.data());
  CHECK(loss[0] == doctest::Approx(std::log(4.0) - 0.9 * std::log(3.0)).epsilon(1e-14));
  CHECK(loss[1] == doctest::Approx(std::log(2.0)).epsilon(1e-14));
}

TEST_CASE_TEMPLATE("cross_entropy_forward matches a double reference", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 3e-6 : 1e-13;
  Lcg rng(4);
  for (const auto& s : shapes) {
    const index_t rows = s[0], classes = s[1];
    const auto x = random_vector(rows * classes, rng, -8.0, 8.0);
    std::vector<index_t> t(static_cast<std::size_t>(rows));
    for (index_t r = 0; r < rows; ++r) t[r] = (r % 4 == 3) ? -1 : rng.below(classes);
    const auto lse = reference_lse(x, rows, classes);
    for (const double eps : {0.0, 0.1, 1.0}) {
      CAPTURE(rows);
      CAPTURE(classes);
      CAPTURE(eps);
      std::vector<double> loss_ref(static_cast<std::size_t>(rows));
      for (index_t r = 0; r < rows; ++r) {
        if (t[r] == -1) continue;
        // -sum_j q_j log p_j with q = (1 - eps) onehot + eps / classes
        double l = 0;
        for (index_t c = 0; c < classes; ++c) {
          const double q = (c == t[r] ? 1 - eps : 0) + eps / static_cast<double>(classes);
          l -= q * (x[r * classes + c] - lse[r]);
        }
        loss_ref[r] = l;
      }
      const auto xt = cast<T>(x);
      std::vector<T> loss(static_cast<std::size_t>(rows)), lse_out(static_cast<std::size_t>(rows));
      cpu::cross_entropy_forward(xt.data(), t.data(), rows, classes, -1, T(eps), loss.data(),
                                 lse_out.data());
      CHECK(max_error(loss, loss_ref) < tol * 4);
      CHECK(max_error(lse_out, lse) < tol);
    }
  }
}

TEST_CASE("cross_entropy_backward matches finite differences") {
  const index_t fd_shapes[][2] = {{1, 1}, {1, 9}, {5, 4}, {6, 37}};
  Lcg rng(5);
  for (const auto& s : fd_shapes) {
    const index_t rows = s[0], classes = s[1];
    auto x = random_vector(rows * classes, rng);
    std::vector<index_t> t(static_cast<std::size_t>(rows));
    for (index_t r = 0; r < rows; ++r) t[r] = (r % 3 == 2) ? -100 : rng.below(classes);
    const auto weights = random_vector(rows, rng);  // loss = 0.5 * sum_r weights_r * loss_r
    for (const double eps : {0.0, 0.3}) {
      for (const bool per_row : {true, false}) {
        CAPTURE(rows);
        CAPTURE(classes);
        CAPTURE(eps);
        CAPTURE(per_row);
        const auto loss = [&] {
          std::vector<double> l(static_cast<std::size_t>(rows));
          cpu::cross_entropy_forward(x.data(), t.data(), rows, classes, -100, eps, l.data(),
                                     static_cast<double*>(nullptr));
          double total = 0;
          for (index_t r = 0; r < rows; ++r) total += 0.5 * (per_row ? weights[r] : 1.0) * l[r];
          return total;
        };
        std::vector<double> l(static_cast<std::size_t>(rows)), lse(static_cast<std::size_t>(rows)),
            gx(x.size(), 7.0);
        cpu::cross_entropy_forward(x.data(), t.data(), rows, classes, -100, eps, l.data(),
                                   lse.data());
        cpu::cross_entropy_backward(x.data(), t.data(), lse.data(),
                                    per_row ? weights.data() : nullptr, 0.5, rows, classes, -100,
                                    eps, gx.data());
        CHECK(max_error(gx, numeric_gradient(x, loss)) < 1e-8);
      }
    }
  }
}

TEST_CASE("cross_entropy rejects bad targets and smoothing with a message") {
  const std::vector<float> x(6, 0.0f);
  std::vector<float> loss(3), lse(3), gx(6);
  const std::vector<index_t> bad = {0, 2, 1};
  CHECK_THROWS_WITH_AS(
      cpu::cross_entropy_forward(x.data(), bad.data(), 3, 2, -100, 0.0f, loss.data(), lse.data()),
      doctest::Contains("target 2 of row 1 is outside [0, 2)"), kiln::ValueError);
  CHECK_THROWS_AS(cpu::cross_entropy_backward(x.data(), bad.data(), lse.data(), nullptr, 1.0f, 3, 2,
                                              -100, 0.0f, gx.data()),
                  kiln::ValueError);
  const std::vector<index_t> good = {0, 1, 1};
  CHECK_THROWS_WITH_AS(
      cpu::cross_entropy_forward(x.data(), good.data(), 3, 2, -100, 1.5f, loss.data(), lse.data()),
      doctest::Contains("label_smoothing must be in [0, 1]"), kiln::ValueError);
  CHECK_THROWS_AS(cpu::softmax_forward(x.data(), 3, 0, gx.data()), kiln::ValueError);
}

TEST_CASE("softmax and cross-entropy results do not depend on the number of threads") {
  Lcg rng(6);
  const index_t rows = 512, cols = 300;
  const auto x = cast<float>(random_vector(rows * cols, rng)),
             gy = cast<float>(random_vector(rows * cols, rng));
  std::vector<index_t> t(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) t[r] = rng.below(cols);
  const auto run = [&](int threads) {
    cpu::set_num_threads(threads);
    std::vector<std::vector<float>> out;
    std::vector<float> y(x.size()), gx(x.size()), loss(rows), lse(rows);
    cpu::softmax_forward(x.data(), rows, cols, y.data());
    cpu::softmax_backward(gy.data(), y.data(), rows, cols, gx.data());
    out.insert(out.end(), {y, gx});
    cpu::log_softmax_forward(x.data(), rows, cols, y.data());
    cpu::log_softmax_backward(gy.data(), y.data(), rows, cols, gx.data());
    out.insert(out.end(), {y, gx});
    cpu::cross_entropy_forward(x.data(), t.data(), rows, cols, -100, 0.1f, loss.data(), lse.data());
    cpu::cross_entropy_backward(x.data(), t.data(), lse.data(), nullptr, 1.0f / rows, rows, cols,
                                -100, 0.1f, gx.data());
    out.insert(out.end(), {loss, lse, gx});
    return out;
  };
  const auto one = run(1), two = run(2);
  for (std::size_t i = 0; i < one.size(); ++i) {
    CAPTURE(i);
    CHECK(bit_equal(one[i], two[i]));
  }
}
