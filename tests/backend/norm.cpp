// Tests for kiln/backend/cpu/norm.hpp: layer, RMS, group and batch norm forward against plain
// double-precision loops, backward against central finite differences, thread-count independence.
#include <kiln/backend/cpu/norm.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
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
};

std::vector<double> random_vector(index_t n, Lcg& rng, double lo = -2.0, double hi = 2.0) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = rng.uniform(lo, hi);
  return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// max_i |a_i - b_i| / (1 + |b_i|)
template <class A, class B>
double max_error(const std::vector<A>& a, const std::vector<B>& b) {
  REQUIRE(a.size() == b.size());
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    e = std::max(e, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])) /
                        (1.0 + std::fabs(static_cast<double>(b[i]))));
  return e;
}

template <class T>
const T* ptr_or_null(const std::vector<T>& v, bool use) {
  return use ? v.data() : nullptr;
}

// d loss / d p_i by central differences, p perturbed in place and restored.
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

constexpr double fd_tolerance = 1e-6;

// ---------------------------------------------------------------------------- references

// Layer norm (or RMS norm when rms) of each row, in double.
void reference_row_norm(const std::vector<double>& x, const double* w, const double* b,
                        index_t rows, index_t cols, double eps, bool rms, std::vector<double>& y,
                        std::vector<double>& mean, std::vector<double>& rstd) {
  y.assign(x.size(), 0);
  mean.assign(static_cast<std::size_t>(rows), 0);
  rstd.assign(static_cast<std::size_t>(rows), 0);
  for (index_t r = 0; r < rows; ++r) {
    double m = 0, v = 0;
    for (index_t c = 0; c < cols; ++c) m += x[r * cols + c];
    m /= cols;
    if (rms) m = 0;
    for (index_t c = 0; c < cols; ++c) v += (x[r * cols + c] - m) * (x[r * cols + c] - m);
    v /= cols;
    const double s = 1 / std::sqrt(v + eps);
    mean[r] = m;
    rstd[r] = s;
    for (index_t c = 0; c < cols; ++c)
      y[r * cols + c] = (x[r * cols + c] - m) * s * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
  }
}

// Group norm of [N, C, HW] with G groups (batch norm is the same with the roles of N and C
// exchanged; its reference is written separately below).
void reference_group_norm(const std::vector<double>& x, const double* w, const double* b, index_t N,
                          index_t C, index_t HW, index_t G, double eps, std::vector<double>& y,
                          std::vector<double>& mean, std::vector<double>& rstd) {
  y.assign(x.size(), 0);
  mean.assign(static_cast<std::size_t>(N * G), 0);
  rstd.assign(static_cast<std::size_t>(N * G), 0);
  const index_t Cg = C / G;
  for (index_t n = 0; n < N; ++n)
    for (index_t g = 0; g < G; ++g) {
      double m = 0, v = 0;
      for (index_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (index_t i = 0; i < HW; ++i) m += x[(n * C + c) * HW + i];
      m /= static_cast<double>(Cg * HW);
      for (index_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (index_t i = 0; i < HW; ++i) v += std::pow(x[(n * C + c) * HW + i] - m, 2);
      v /= static_cast<double>(Cg * HW);
      const double s = 1 / std::sqrt(v + eps);
      mean[n * G + g] = m;
      rstd[n * G + g] = s;
      for (index_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (index_t i = 0; i < HW; ++i) {
          const index_t at = (n * C + c) * HW + i;
          y[at] = (x[at] - m) * s * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
        }
    }
}

// Per-channel mean and biased variance of [N, C, HW].
void reference_channel_stats(const std::vector<double>& x, index_t N, index_t C, index_t HW,
                             std::vector<double>& mean, std::vector<double>& var) {
  mean.assign(static_cast<std::size_t>(C), 0);
  var.assign(static_cast<std::size_t>(C), 0);
  const double M = static_cast<double>(N * HW);
  for (index_t c = 0; c < C; ++c) {
    for (index_t n = 0; n < N; ++n)
      for (index_t i = 0; i < HW; ++i) mean[c] += x[(n * C + c) * HW + i];
    mean[c] /= M;
    for (index_t n = 0; n < N; ++n)
      for (index_t i = 0; i < HW; ++i) var[c] += std::pow(x[(n * C + c) * HW + i] - mean[c], 2);
    var[c] /= M;
  }
}

}  // namespace

// =================================================================================== layer norm

TEST_CASE_TEMPLATE("layer_norm_forward matches a double reference", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  const index_t shapes[][2] = {{1, 1}, {1, 7}, {3, 5}, {17, 33}, {5, 256}, {130, 769}, {2, 5000}};
  Lcg rng(1);
  for (const auto& s : shapes) {
    const index_t rows = s[0], cols = s[1];
    // An offset mean tests the two-pass variance.
    auto x = random_vector(rows * cols, rng, 3.0, 7.0);
    const auto w = random_vector(cols, rng), b = random_vector(cols, rng);
    for (int affine = 0; affine < 4; ++affine) {
      const bool use_w = affine & 1, use_b = affine & 2;
      CAPTURE(rows);
      CAPTURE(cols);
      CAPTURE(affine);
      std::vector<double> y_ref, mean_ref, rstd_ref;
      reference_row_norm(x, use_w ? w.data() : nullptr, use_b ? b.data() : nullptr, rows, cols,
                         1e-5, false, y_ref, mean_ref, rstd_ref);
      const auto xt = cast<T>(x), wt = cast<T>(w), bt = cast<T>(b);
      std::vector<T> y(x.size()), mean(static_cast<std::size_t>(rows)),
          rstd(static_cast<std::size_t>(rows));
      cpu::layer_norm_forward(xt.data(), ptr_or_null(wt, use_w), ptr_or_null(bt, use_b), rows, cols,
                              T(1e-5), y.data(), mean.data(), rstd.data());
      CHECK(max_error(y, y_ref) < tol);
      CHECK(max_error(mean, mean_ref) < tol);
      // rstd is large for constant rows (cols = 1): compare relatively.
      for (index_t r = 0; r < rows; ++r) CHECK(std::fabs(rstd[r] / rstd_ref[r] - 1) < tol);
    }
  }
}

TEST_CASE("layer_norm_backward matches finite differences") {
  const index_t shapes[][2] = {{1, 1}, {1, 6}, {3, 5}, {4, 37}, {70, 9}};
  Lcg rng(2);
  for (const auto& s : shapes) {
    const index_t rows = s[0], cols = s[1];
    auto x = random_vector(rows * cols, rng), w = random_vector(cols, rng),
         b = random_vector(cols, rng);
    const auto r = random_vector(rows * cols, rng);  // loss = sum(y * r), so gy = r
    for (const bool affine : {true, false}) {
      CAPTURE(rows);
      CAPTURE(cols);
      CAPTURE(affine);
      const auto loss = [&] {
        std::vector<double> y(x.size());
        cpu::layer_norm_forward(x.data(), affine ? w.data() : nullptr, affine ? b.data() : nullptr,
                                rows, cols, 1e-5, y.data(), static_cast<double*>(nullptr),
                                static_cast<double*>(nullptr));
        return dot(y, r);
      };
      std::vector<double> y(x.size()), mean(static_cast<std::size_t>(rows)),
          rstd(static_cast<std::size_t>(rows));
      cpu::layer_norm_forward(x.data(), affine ? w.data() : nullptr, affine ? b.data() : nullptr,
                              rows, cols, 1e-5, y.data(), mean.data(), rstd.data());
      std::vector<double> gx(x.size()), gw(w.size()), gb(b.size());
      cpu::layer_norm_backward(r.data(), x.data(), affine ? w.data() : nullptr, mean.data(),
                               rstd.data(), rows, cols, gx.data(), gw.data(), gb.data());
      CHECK(max_error(gx, numeric_gradient(x, loss)) < fd_tolerance);
      if (affine) {
        CHECK(max_error(gw, numeric_gradient(w, loss)) < fd_tolerance);
        CHECK(max_error(gb, numeric_gradient(b, loss)) < fd_tolerance);
      }
    }
  }
}

TEST_CASE("layer_norm_backward in float agrees with double") {
  const index_t rows = 300, cols = 77;
  Lcg rng(3);
  const auto x = random_vector(rows * cols, rng), w = random_vector(cols, rng),
             gy = random_vector(rows * cols, rng);
  std::vector<double> y(x.size()), mean(rows), rstd(rows), gx(x.size()), gw(cols), gb(cols);
  cpu::layer_norm_forward(x.data(), w.data(), static_cast<double*>(nullptr), rows, cols, 1e-5,
                          y.data(), mean.data(), rstd.data());
  cpu::layer_norm_backward(gy.data(), x.data(), w.data(), mean.data(), rstd.data(), rows, cols,
                           gx.data(), gw.data(), gb.data());
  const auto xf = cast<float>(x), wf = cast<float>(w), gyf = cast<float>(gy);
  std::vector<float> yf(x.size()), meanf(rows), rstdf(rows), gxf(x.size()), gwf(cols), gbf(cols);
  cpu::layer_norm_forward(xf.data(), wf.data(), static_cast<float*>(nullptr), rows, cols, 1e-5f,
                          yf.data(), meanf.data(), rstdf.data());
  cpu::layer_norm_backward(gyf.data(), xf.data(), wf.data(), meanf.data(), rstdf.data(), rows, cols,
                           gxf.data(), gwf.data(), gbf.data());
  CHECK(max_error(gxf, gx) < 1e-5);
  CHECK(max_error(gwf, gw) < 1e-5);
  CHECK(max_error(gbf, gb) < 1e-5);
  // Null outputs are skipped, the rest unchanged.
  std::vector<float> gw_only(cols);
  cpu::layer_norm_backward(gyf.data(), xf.data(), wf.data(), meanf.data(), rstdf.data(), rows, cols,
                           static_cast<float*>(nullptr), gw_only.data(),
                           static_cast<float*>(nullptr));
  CHECK(bit_equal(gw_only, gwf));
}

// ===================================================================================== RMS norm

TEST_CASE_TEMPLATE("rms_norm_forward matches a double reference", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  const index_t shapes[][2] = {{1, 1}, {3, 5}, {17, 33}, {130, 769}};
  Lcg rng(4);
  for (const auto& s : shapes) {
    const index_t rows = s[0], cols = s[1];
    const auto x = random_vector(rows * cols, rng), w = random_vector(cols, rng);
    for (const bool use_w : {true, false}) {
      std::vector<double> y_ref, mean_ref, rstd_ref;
      reference_row_norm(x, use_w ? w.data() : nullptr, nullptr, rows, cols, 1e-6, true, y_ref,
                         mean_ref, rstd_ref);
      const auto xt = cast<T>(x), wt = cast<T>(w);
      std::vector<T> y(x.size()), rstd(static_cast<std::size_t>(rows));
      cpu::rms_norm_forward(xt.data(), ptr_or_null(wt, use_w), rows, cols, T(1e-6), y.data(),
                            rstd.data());
      CHECK(max_error(y, y_ref) < tol);
      for (index_t r = 0; r < rows; ++r) CHECK(std::fabs(rstd[r] / rstd_ref[r] - 1) < tol);
    }
  }
}

TEST_CASE("rms_norm_backward matches finite differences") {
  const index_t shapes[][2] = {{1, 1}, {3, 5}, {4, 37}, {70, 9}};
  Lcg rng(5);
  for (const auto& s : shapes) {
    const index_t rows = s[0], cols = s[1];
    auto x = random_vector(rows * cols, rng), w = random_vector(cols, rng);
    const auto r = random_vector(rows * cols, rng);
    for (const bool affine : {true, false}) {
      CAPTURE(rows);
      CAPTURE(cols);
      const auto loss = [&] {
        std::vector<double> y(x.size());
        cpu::rms_norm_forward(x.data(), affine ? w.data() : nullptr, rows, cols, 1e-6, y.data(),
                              static_cast<double*>(nullptr));
        return dot(y, r);
      };
      std::vector<double> y(x.size()), rstd(static_cast<std::size_t>(rows)), gx(x.size()),
          gw(w.size());
      cpu::rms_norm_forward(x.data(), affine ? w.data() : nullptr, rows, cols, 1e-6, y.data(),
                            rstd.data());
      cpu::rms_norm_backward(r.data(), x.data(), affine ? w.data() : nullptr, rstd.data(), rows,
                             cols, gx.data(), gw.data());
      CHECK(max_error(gx, numeric_gradient(x, loss)) < fd_tolerance);
      if (affine) CHECK(max_error(gw, numeric_gradient(w, loss)) < fd_tolerance);
    }
  }
}

// =================================================================================== group norm

TEST_CASE_TEMPLATE("group_norm_forward matches a double reference", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  const index_t shapes[][4] = {{1, 1, 1, 1}, {2, 6, 5, 3},   {3, 4, 7, 1},
                               {2, 8, 1, 8}, {1, 32, 64, 8}, {2, 4, 4100, 2}};
  Lcg rng(6);
  for (const auto& s : shapes) {
    const index_t N = s[0], C = s[1], HW = s[2], G = s[3];
    const auto x = random_vector(N * C * HW, rng, -1.0, 5.0), w = random_vector(C, rng),
               b = random_vector(C, rng);
    for (const bool affine : {true, false}) {
      CAPTURE(N);
      CAPTURE(C);
      CAPTURE(HW);
      CAPTURE(G);
      std::vector<double> y_ref, mean_ref, rstd_ref;
      reference_group_norm(x, affine ? w.data() : nullptr, affine ? b.data() : nullptr, N, C, HW, G,
                           1e-5, y_ref, mean_ref, rstd_ref);
      const auto xt = cast<T>(x), wt = cast<T>(w), bt = cast<T>(b);
      std::vector<T> y(x.size()), mean(static_cast<std::size_t>(N * G)),
          rstd(static_cast<std::size_t>(N * G));
      cpu::group_norm_forward(xt.data(), ptr_or_null(wt, affine), ptr_or_null(bt, affine), N, C, HW,
                              G, T(1e-5), y.data(), mean.data(), rstd.data());
      CHECK(max_error(y, y_ref) < tol);
      CHECK(max_error(mean, mean_ref) < tol);
      for (std::size_t i = 0; i < rstd.size(); ++i)
        CHECK(std::fabs(rstd[i] / rstd_ref[i] - 1) < tol);
    }
  }
}

TEST_CASE("group_norm_backward matches finite differences") {
  const index_t shapes[][4] = {{1, 1, 1, 1}, {2, 6, 5, 3}, {3, 4, 7, 1}, {2, 4, 1, 4}};
  Lcg rng(7);
  for (const auto& s : shapes) {
    const index_t N = s[0], C = s[1], HW = s[2], G = s[3];
    auto x = random_vector(N * C * HW, rng), w = random_vector(C, rng), b = random_vector(C, rng);
    const auto r = random_vector(N * C * HW, rng);
    for (const bool affine : {true, false}) {
      CAPTURE(N);
      CAPTURE(C);
      CAPTURE(HW);
      CAPTURE(G);
      const auto loss = [&] {
        std::vector<double> y(x.size());
        cpu::group_norm_forward(x.data(), affine ? w.data() : nullptr, affine ? b.data() : nullptr,
                                N, C, HW, G, 1e-5, y.data(), static_cast<double*>(nullptr),
                                static_cast<double*>(nullptr));
        return dot(y, r);
      };
      std::vector<double> y(x.size()), mean(static_cast<std::size_t>(N * G)), rstd(mean.size());
      cpu::group_norm_forward(x.data(), affine ? w.data() : nullptr, affine ? b.data() : nullptr, N,
                              C, HW, G, 1e-5, y.data(), mean.data(), rstd.data());
      std::vector<double> gx(x.size()), gw(w.size()), gb(b.size());
      cpu::group_norm_backward(r.data(), x.data(), affine ? w.data() : nullptr, mean.data(),
                               rstd.data(), N, C, HW, G, gx.data(), gw.data(), gb.data());
      CHECK(max_error(gx, numeric_gradient(x, loss)) < fd_tolerance);
      if (affine) {
        CHECK(max_error(gw, numeric_gradient(w, loss)) < fd_tolerance);
        CHECK(max_error(gb, numeric_gradient(b, loss)) < fd_tolerance);
      }
    }
  }
}

// =================================================================================== batch norm

TEST_CASE_TEMPLATE("batch_norm forward (training and eval) matches a double reference", T, float,
                   double) {
  const double tol = std::is_same_v<T, float> ? 3e-6 : 1e-13;
  const index_t shapes[][3] = {{4, 3, 5}, {1, 2, 7}, {5, 1, 1}, {2, 17, 33}, {3, 2, 5000}};
  Lcg rng(8);
  for (const auto& s : shapes) {
    const index_t N = s[0], C = s[1], HW = s[2];
    CAPTURE(N);
    CAPTURE(C);
    CAPTURE(HW);
    const auto x = random_vector(N * C * HW, rng, 1.0, 4.0), w = random_vector(C, rng),
               b = random_vector(C, rng);
    const auto rm0 = random_vector(C, rng), rv0 = random_vector(C, rng, 0.5, 2.0);
    std::vector<double> mean_ref, var_ref;
    reference_channel_stats(x, N, C, HW, mean_ref, var_ref);
    const double M = static_cast<double>(N * HW), momentum = 0.1, eps = 1e-5;
    const auto xt = cast<T>(x), wt = cast<T>(w), bt = cast<T>(b);

    // Training: batch statistics normalize; the running ones move by momentum (unbiased var).
    auto rm = cast<T>(rm0), rv = cast<T>(rv0);
    std::vector<T> y(x.size()), save_mean(static_cast<std::size_t>(C)),
        save_rstd(static_cast<std::size_t>(C));
    cpu::batch_norm_forward_training(xt.data(), wt.data(), bt.data(), N, C, HW, T(eps), T(momentum),
                                     rm.data(), rv.data(), y.data(), save_mean.data(),
                                     save_rstd.data());
    std::vector<double> y_ref(x.size()), rm_ref(C), rv_ref(C), rstd_ref(C);
    for (index_t c = 0; c < C; ++c) {
      rstd_ref[c] = 1 / std::sqrt(var_ref[c] + eps);
      rm_ref[c] = (1 - momentum) * rm0[c] + momentum * mean_ref[c];
      rv_ref[c] = (1 - momentum) * rv0[c] + momentum * var_ref[c] * M / (M - 1);
      for (index_t n = 0; n < N; ++n)
        for (index_t i = 0; i < HW; ++i) {
          const index_t at = (n * C + c) * HW + i;
          y_ref[at] = (x[at] - mean_ref[c]) * rstd_ref[c] * w[c] + b[c];
        }
    }
    CHECK(max_error(y, y_ref) < tol);
    CHECK(max_error(save_mean, mean_ref) < tol);
    CHECK(max_error(save_rstd, rstd_ref) < tol);
    CHECK(max_error(rm, rm_ref) < tol);
    CHECK(max_error(rv, rv_ref) < tol);

    // Eval: the running statistics normalize.
    const auto rmt = cast<T>(rm0), rvt = cast<T>(rv0);
    cpu::batch_norm_forward_eval(xt.data(), wt.data(), bt.data(), rmt.data(), rvt.data(), N, C, HW,
                                 T(eps), y.data());
    for (index_t c = 0; c < C; ++c)
      for (index_t n = 0; n < N; ++n)
        for (index_t i = 0; i < HW; ++i) {
          const index_t at = (n * C + c) * HW + i;
          y_ref[at] = (x[at] - rm0[c]) / std::sqrt(rv0[c] + eps) * w[c] + b[c];
        }
    CHECK(max_error(y, y_ref) < tol);
  }
}

TEST_CASE("batch_norm backward (training and eval) matches finite differences") {
  const index_t shapes[][3] = {{4, 3, 5}, {1, 2, 7}, {5, 1, 1}, {2, 5, 3}};
  Lcg rng(9);
  for (const auto& s : shapes) {
    const index_t N = s[0], C = s[1], HW = s[2];
    CAPTURE(N);
    CAPTURE(C);
    CAPTURE(HW);
    auto x = random_vector(N * C * HW, rng), w = random_vector(C, rng), b = random_vector(C, rng);
    const auto rm = random_vector(C, rng), rv = random_vector(C, rng, 0.5, 2.0);
    const auto r = random_vector(N * C * HW, rng);
    for (const bool training : {true, false}) {
      CAPTURE(training);
      const auto loss = [&] {
        std::vector<double> y(x.size());
        if (training)
          cpu::batch_norm_forward_training(
              x.data(), w.data(), b.data(), N, C, HW, 1e-5, 0.1, static_cast<double*>(nullptr),
              static_cast<double*>(nullptr), y.data(), static_cast<double*>(nullptr),
              static_cast<double*>(nullptr));
        else
          cpu::batch_norm_forward_eval(x.data(), w.data(), b.data(), rm.data(), rv.data(), N, C, HW,
                                       1e-5, y.data());
        return dot(y, r);
      };
      std::vector<double> y(x.size()), mean(C), rstd(C), gx(x.size()), gw(C), gb(C);
      if (training) {
        cpu::batch_norm_forward_training(
            x.data(), w.data(), b.data(), N, C, HW, 1e-5, 0.1, static_cast<double*>(nullptr),
            static_cast<double*>(nullptr), y.data(), mean.data(), rstd.data());
        cpu::batch_norm_backward_training(r.data(), x.data(), w.data(), mean.data(), rstd.data(), N,
                                          C, HW, gx.data(), gw.data(), gb.data());
      } else {
        cpu::batch_norm_backward_eval(r.data(), x.data(), w.data(), rm.data(), rv.data(), N, C, HW,
                                      1e-5, gx.data(), gw.data(), gb.data());
      }
      CHECK(max_error(gx, numeric_gradient(x, loss)) < fd_tolerance);
      CHECK(max_error(gw, numeric_gradient(w, loss)) < fd_tolerance);
      CHECK(max_error(gb, numeric_gradient(b, loss)) < fd_tolerance);
    }
  }
}

// ============================================================================ threads, errors

TEST_CASE("normalization results do not depend on the number of threads") {
  Lcg rng(10);
  const index_t rows = 2048, cols = 96;
  const auto x = cast<float>(random_vector(rows * cols, rng)),
             w = cast<float>(random_vector(cols, rng));
  const auto b = cast<float>(random_vector(cols, rng)),
             gy = cast<float>(random_vector(rows * cols, rng));
  const index_t N = 16, C = 32, HW = 200, G = 4;
  const auto xg = cast<float>(random_vector(N * C * HW, rng)),
             gyg = cast<float>(random_vector(N * C * HW, rng));
  const auto wg = cast<float>(random_vector(C, rng)), bg = cast<float>(random_vector(C, rng));

  const auto run = [&](int threads) {
    cpu::set_num_threads(threads);
    std::vector<std::vector<float>> out;
    std::vector<float> y(x.size()), mean(rows), rstd(rows), gx(x.size()), gw(cols), gb(cols);
    cpu::layer_norm_forward(x.data(), w.data(), b.data(), rows, cols, 1e-5f, y.data(), mean.data(),
                            rstd.data());
    cpu::layer_norm_backward(gy.data(), x.data(), w.data(), mean.data(), rstd.data(), rows, cols,
                             gx.data(), gw.data(), gb.data());
    out.insert(out.end(), {y, mean, rstd, gx, gw, gb});
    cpu::rms_norm_forward(x.data(), w.data(), rows, cols, 1e-5f, y.data(), rstd.data());
    cpu::rms_norm_backward(gy.data(), x.data(), w.data(), rstd.data(), rows, cols, gx.data(),
                           gw.data());
    out.insert(out.end(), {y, rstd, gx, gw});
    std::vector<float> yg(xg.size()), gmean(N * G), grstd(N * G), gxg(xg.size()), gwg(C), gbg(C);
    cpu::group_norm_forward(xg.data(), wg.data(), bg.data(), N, C, HW, G, 1e-5f, yg.data(),
                            gmean.data(), grstd.data());
    cpu::group_norm_backward(gyg.data(), xg.data(), wg.data(), gmean.data(), grstd.data(), N, C, HW,
                             G, gxg.data(), gwg.data(), gbg.data());
    out.insert(out.end(), {yg, gmean, grstd, gxg, gwg, gbg});
    std::vector<float> bmean(C), brstd(C), rm(C, 0.f), rv(C, 1.f);
    cpu::batch_norm_forward_training(xg.data(), wg.data(), bg.data(), N, C, HW, 1e-5f, 0.1f,
                                     rm.data(), rv.data(), yg.data(), bmean.data(), brstd.data());
    cpu::batch_norm_backward_training(gyg.data(), xg.data(), wg.data(), bmean.data(), brstd.data(),
                                      N, C, HW, gxg.data(), gwg.data(), gbg.data());
    out.insert(out.end(), {yg, bmean, brstd, rm, rv, gxg, gwg, gbg});
    return out;
  };
  const auto one = run(1), two = run(2), three = run(3);
  cpu::set_num_threads(2);
  REQUIRE(one.size() == two.size());
  for (std::size_t i = 0; i < one.size(); ++i) {
    CAPTURE(i);
    CHECK(bit_equal(one[i], two[i]));
    CHECK(bit_equal(one[i], three[i]));
  }
}

TEST_CASE("normalization kernels reject bad sizes with a message") {
  std::vector<float> buf(64);
  float* p = buf.data();
  CHECK_THROWS_AS(cpu::layer_norm_forward(p, p, p, 2, 0, 1e-5f, p, p, p), kiln::ValueError);
  CHECK_THROWS_WITH_AS(cpu::group_norm_forward(p, p, p, 1, 6, 2, 4, 1e-5f, p, p, p),
                       doctest::Contains("divisible by the number of groups G = 4"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(
      cpu::batch_norm_forward_training(p, p, p, 1, 3, 1, 1e-5f, 0.1f, p, p, p, p, p),
      doctest::Contains("more than 1 value per channel"), kiln::ValueError);
  CHECK_THROWS_AS(cpu::rms_norm_forward(p, p, -1, 4, 1e-5f, p, p), kiln::ValueError);
}
