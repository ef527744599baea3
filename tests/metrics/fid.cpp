// Tests of include/kiln/metrics/linalg.hpp and include/kiln/metrics/fid.hpp: the symmetric
// eigen-decomposition against closed-form spectra, reconstruction and orthonormality; the matrix
// square root; Tr √(Σ₁Σ₂) and the Fréchet distance against closed forms (diagonal, commuting and
// 2 × 2 covariances); streaming statistics against two-pass loops; safetensors caching; errors;
// and FID against pytorch-fid's formula with scipy.linalg.sqrtm (tests/reference/fid_scipy.py).
#include <doctest/doctest.h>

#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/io/json.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/metrics/fid.hpp>
#include <kiln/metrics/linalg.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

using kiln::index_t;
using kiln::metrics::FeatureStatistics;
using kiln::metrics::linalg::Matrix;
namespace linalg = kiln::metrics::linalg;
namespace fs = std::filesystem;

namespace {

Matrix random_symmetric(index_t n, std::mt19937_64& gen) {
  std::normal_distribution<double> normal;
  Matrix a(n, n);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j <= i; ++j) a(i, j) = a(j, i) = normal(gen);
  return a;
}

// Naive triple loop, independent of the GEMM the library uses.
Matrix naive_product(const Matrix& a, const Matrix& b) {
  Matrix c(a.rows, b.cols);
  for (index_t i = 0; i < a.rows; ++i)
    for (index_t k = 0; k < a.cols; ++k)
      for (index_t j = 0; j < b.cols; ++j) c(i, j) += a(i, k) * b(k, j);
  return c;
}

double max_abs(const Matrix& a) {
  double m = 0;
  for (double v : a.values) m = std::max(m, std::fabs(v));
  return m;
}

double max_abs_difference(const Matrix& a, const Matrix& b) {
  REQUIRE(a.rows == b.rows);
  REQUIRE(a.cols == b.cols);
  double m = 0;
  for (std::size_t i = 0; i < a.values.size(); ++i)
    m = std::max(m, std::fabs(a.values[i] - b.values[i]));
  return m;
}

// An orthogonal matrix as a product of three Householder reflections I − 2uuᵀ/uᵀu with random u.
Matrix random_orthogonal(index_t n, std::mt19937_64& gen) {
  std::normal_distribution<double> normal;
  Matrix q = Matrix::identity(n);
  for (int r = 0; r < 3; ++r) {
    std::vector<double> u(static_cast<std::size_t>(n));
    double uu = 0;
    for (double& x : u) {
      x = normal(gen);
      uu += x * x;
    }
    Matrix h = Matrix::identity(n);
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j < n; ++j)
        h(i, j) -= 2 * u[static_cast<std::size_t>(i)] * u[static_cast<std::size_t>(j)] / uu;
    q = naive_product(q, h);
  }
  return q;
}

// Q diag(d) Qᵀ
Matrix with_spectrum(const Matrix& q, const std::vector<double>& d) {
  const index_t n = q.rows;
  Matrix out(n, n);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      double s = 0;
      for (index_t k = 0; k < n; ++k) s += q(i, k) * d[static_cast<std::size_t>(k)] * q(j, k);
      out(i, j) = s;
    }
  return out;
}

// Checks A V = V Λ, VᵀV = I, ascending eigenvalues and agreement with symmetric_eigenvalues.
void check_decomposition(const Matrix& a, double tolerance) {
  const index_t n = a.rows;
  const linalg::SymmetricEigen eig = linalg::symmetric_eigen(a);
  REQUIRE(static_cast<index_t>(eig.values.size()) == n);
  const double scale = std::max(max_abs(a), 1e-300);
  Matrix reconstructed(n, n);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      double s = 0;
      for (index_t k = 0; k < n; ++k)
        s += eig.vectors(i, k) * eig.values[static_cast<std::size_t>(k)] * eig.vectors(j, k);
      reconstructed(i, j) = s;
    }
  CHECK(max_abs_difference(reconstructed, a) <= tolerance * scale);
  Matrix vtv(n, n);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      double s = 0;
      for (index_t k = 0; k < n; ++k) s += eig.vectors(k, i) * eig.vectors(k, j);
      vtv(i, j) = s;
    }
  CHECK(max_abs_difference(vtv, Matrix::identity(n)) <= tolerance);
  for (index_t j = 1; j < n; ++j)
    CHECK(eig.values[static_cast<std::size_t>(j - 1)] <= eig.values[static_cast<std::size_t>(j)]);
  const std::vector<double> values = linalg::symmetric_eigenvalues(a);
  for (index_t j = 0; j < n; ++j)
    CHECK(std::fabs(values[static_cast<std::size_t>(j)] -
                    eig.values[static_cast<std::size_t>(j)]) <= tolerance * scale);
}

// Features whose rows are z W + b with z standard normal: covariance WᵀW, not diagonal.
std::vector<double> correlated_features(index_t rows, index_t dim, double shift, double spread,
                                        std::mt19937_64& gen) {
  std::normal_distribution<double> normal;
  std::vector<double> w(static_cast<std::size_t>(dim * dim)), b(static_cast<std::size_t>(dim));
  for (index_t i = 0; i < dim; ++i) {
    b[static_cast<std::size_t>(i)] = shift + normal(gen);
    for (index_t j = 0; j < dim; ++j)
      w[static_cast<std::size_t>(i * dim + j)] =
          (i == j ? spread : 0.0) + normal(gen) / std::sqrt(static_cast<double>(dim));
  }
  std::vector<double> out(static_cast<std::size_t>(rows * dim)), z(static_cast<std::size_t>(dim));
  for (index_t r = 0; r < rows; ++r) {
    for (double& x : z) x = normal(gen);
    for (index_t j = 0; j < dim; ++j) {
      double s = b[static_cast<std::size_t>(j)];
      for (index_t k = 0; k < dim; ++k)
        s += z[static_cast<std::size_t>(k)] * w[static_cast<std::size_t>(k * dim + j)];
      out[static_cast<std::size_t>(r * dim + j)] = s;
    }
  }
  return out;
}

kiln::Tensor<double> tensor_of(const std::vector<double>& values, index_t rows, index_t cols) {
  auto t = kiln::Tensor<double>::uninitialized(kiln::Shape{rows, cols});
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

// Two-pass mean and unbiased covariance, the textbook loops.
void two_pass(const std::vector<double>& x, index_t rows, index_t dim, std::vector<double>& mean,
              Matrix& cov) {
  mean.assign(static_cast<std::size_t>(dim), 0.0);
  for (index_t r = 0; r < rows; ++r)
    for (index_t j = 0; j < dim; ++j)
      mean[static_cast<std::size_t>(j)] += x[static_cast<std::size_t>(r * dim + j)];
  for (double& m : mean) m /= static_cast<double>(rows);
  cov = Matrix(dim, dim);
  for (index_t r = 0; r < rows; ++r)
    for (index_t i = 0; i < dim; ++i)
      for (index_t j = 0; j < dim; ++j)
        cov(i, j) +=
            (x[static_cast<std::size_t>(r * dim + i)] - mean[static_cast<std::size_t>(i)]) *
            (x[static_cast<std::size_t>(r * dim + j)] - mean[static_cast<std::size_t>(j)]);
  for (double& v : cov.values) v /= static_cast<double>(rows - 1);
}

double relative_difference(double a, double b) {
  return std::fabs(a - b) / std::max({std::fabs(a), std::fabs(b), 1e-300});
}

struct TemporaryDirectory {
  fs::path path;
  explicit TemporaryDirectory(const std::string& tag) {
    path = fs::temp_directory_path() / ("kiln_metrics_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TemporaryDirectory() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

void write_doubles(const fs::path& path, const std::vector<double>& values) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(values.data()),
            static_cast<std::streamsize>(values.size() * sizeof(double)));
  REQUIRE(out.good());
}

std::vector<double> read_doubles(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::vector<double> values(static_cast<std::size_t>(fs::file_size(path) / sizeof(double)));
  in.read(reinterpret_cast<char*>(values.data()),
          static_cast<std::streamsize>(values.size() * sizeof(double)));
  return values;
}

}  // namespace

TEST_CASE("symmetric_eigen: closed-form spectra") {
  SUBCASE("1 x 1 and 2 x 2") {
    Matrix one(1, 1, -3.5);
    const auto e1 = linalg::symmetric_eigen(one);
    CHECK(e1.values[0] == -3.5);
    CHECK(std::fabs(e1.vectors(0, 0)) == 1.0);
    // [[a, b], [b, c]]: (a + c)/2 ± √(((a − c)/2)² + b²)
    const double a = 2.0, b = -1.5, c = 0.25;
    Matrix two(2, 2);
    two(0, 0) = a, two(0, 1) = two(1, 0) = b, two(1, 1) = c;
    const double mid = (a + c) / 2, radius = std::sqrt((a - c) * (a - c) / 4 + b * b);
    const auto e2 = linalg::symmetric_eigen(two);
    CHECK(e2.values[0] == doctest::Approx(mid - radius).epsilon(1e-14));
    CHECK(e2.values[1] == doctest::Approx(mid + radius).epsilon(1e-14));
  }
  SUBCASE("tridiag(-1, 2, -1) as given and rotated: 2 − 2 cos(kπ/(n+1))") {
    // n = 50 runs the unblocked reduction only; n = 200 also the blocked panels (n > 160),
    // where the matrix as given needs no reflections at all (τ = 0 inside a panel).
    for (index_t n : {index_t{50}, index_t{200}}) {
      CAPTURE(n);
      Matrix t(n, n);
      for (index_t i = 0; i < n; ++i) {
        t(i, i) = 2;
        if (i + 1 < n) t(i, i + 1) = t(i + 1, i) = -1;
      }
      std::vector<double> expected;
      for (index_t k = 1; k <= n; ++k)
        expected.push_back(2 - 2 * std::cos(static_cast<double>(k) * std::numbers::pi /
                                            static_cast<double>(n + 1)));
      std::sort(expected.begin(), expected.end());
      std::mt19937_64 gen(5);
      const Matrix q = random_orthogonal(n, gen);
      for (const Matrix& a : {t, naive_product(naive_product(q, t), linalg::transpose(q))}) {
        const auto eig = linalg::symmetric_eigen(a);
        for (index_t k = 0; k < n; ++k)
          CHECK(std::fabs(eig.values[static_cast<std::size_t>(k)] -
                          expected[static_cast<std::size_t>(k)]) < 1e-13);
        check_decomposition(a, 1e-13);
      }
    }
  }
  SUBCASE("repeated eigenvalues, zero and diagonal matrices") {
    std::mt19937_64 gen(6);
    const index_t n = 40;
    const Matrix q = random_orthogonal(n, gen);
    std::vector<double> d;
    for (index_t i = 0; i < n; ++i) d.push_back(i < 20 ? 1.0 : i < 35 ? -2.0 : 7.0);
    const Matrix clustered = with_spectrum(q, d);
    const auto eig = linalg::symmetric_eigen(clustered);
    std::sort(d.begin(), d.end());
    for (index_t k = 0; k < n; ++k)
      CHECK(std::fabs(eig.values[static_cast<std::size_t>(k)] - d[static_cast<std::size_t>(k)]) <
            1e-13);
    check_decomposition(clustered, 1e-13);
    check_decomposition(Matrix(7, 7), 1e-15);
    check_decomposition(Matrix::identity(9), 1e-15);
    Matrix diagonal(5, 5);
    const double values[] = {3, -1, 4, 1e-3, -5};
    for (index_t i = 0; i < 5; ++i) diagonal(i, i) = values[i];
    const auto de = linalg::symmetric_eigen(diagonal);
    const double sorted[] = {-5, -1, 1e-3, 3, 4};
    for (index_t i = 0; i < 5; ++i) CHECK(de.values[static_cast<std::size_t>(i)] == sorted[i]);
    check_decomposition(diagonal, 1e-15);
  }
  SUBCASE("only the lower triangle is read") {
    std::mt19937_64 gen(8);
    for (index_t n : {6, 170}) {
      Matrix a = random_symmetric(n, gen), lower = a;
      for (index_t i = 0; i < n; ++i)
        for (index_t j = i + 1; j < n; ++j) lower(i, j) = 1e9;  // garbage above the diagonal
      CHECK(linalg::symmetric_eigen(lower).values == linalg::symmetric_eigen(a).values);
    }
  }
  SUBCASE("low rank: covariances of few samples, eigenvalue clusters at rounding level") {
    std::mt19937_64 gen(9);
    std::normal_distribution<double> normal;
    for (index_t n : {60, 200})
      for (index_t rank : {1, 5, 20}) {
        CAPTURE(n);
        CAPTURE(rank);
        Matrix x(rank, n);
        for (double& v : x.values) v = normal(gen);
        const Matrix s = naive_product(linalg::transpose(x), x);
        check_decomposition(s, 1e-12);
        const auto values = linalg::symmetric_eigenvalues(s);
        for (index_t k = 0; k < n - rank; ++k)
          CHECK(std::fabs(values[static_cast<std::size_t>(k)]) < 1e-12 * values.back());
        CHECK(values[static_cast<std::size_t>(n - rank)] > 1e-3 * values.back());
      }
  }
}

TEST_CASE("symmetric_eigen reconstructs random symmetric matrices with orthonormal vectors") {
  std::mt19937_64 gen(42);
  for (index_t n : {1, 2, 3, 50, 300}) {
    CAPTURE(n);
    check_decomposition(random_symmetric(n, gen), 1e-12);
  }
  // Badly scaled entries and a huge dynamic range.
  Matrix tiny = random_symmetric(20, gen), huge = tiny;
  for (double& v : tiny.values) v *= 1e-150;
  for (double& v : huge.values) v *= 1e150;
  check_decomposition(tiny, 1e-12);
  check_decomposition(huge, 1e-12);
}

TEST_CASE("symmetric_sqrt is the PSD root") {
  std::mt19937_64 gen(3);
  std::normal_distribution<double> normal;
  for (index_t rank : {30, 12}) {  // full rank and rank-deficient 30 x 30
    CAPTURE(rank);
    Matrix x(rank, 30);
    for (double& v : x.values) v = normal(gen);
    Matrix s = naive_product(linalg::transpose(x), x);
    const Matrix r = linalg::symmetric_sqrt(s);
    CHECK(max_abs_difference(r, linalg::transpose(r)) == 0.0);
    CHECK(max_abs_difference(naive_product(r, r), s) <= 1e-12 * max_abs(s));
    for (double v : linalg::symmetric_eigenvalues(r)) CHECK(v >= -1e-7);
  }
  Matrix diagonal(3, 3);
  diagonal(0, 0) = 4, diagonal(1, 1) = 9, diagonal(2, 2) = 0.25;
  const Matrix r = linalg::symmetric_sqrt(diagonal);
  CHECK(r(0, 0) == doctest::Approx(2).epsilon(1e-15));
  CHECK(r(1, 1) == doctest::Approx(3).epsilon(1e-15));
  CHECK(r(2, 2) == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(std::fabs(r(0, 1)) < 1e-15);
}

TEST_CASE("Tr sqrt(S1 S2) and the Frechet distance against closed forms") {
  SUBCASE("diagonal covariances: Tr √(S1 S2) = Σ √(d1 d2)") {
    const index_t n = 6;
    const double d1[] = {1, 4, 0.5, 2, 0, 3}, d2[] = {9, 1, 2, 0.5, 7, 3};
    Matrix s1(n, n), s2(n, n);
    std::vector<double> mu1(n), mu2(n);
    double expected_trace = 0, mean_term = 0, traces = 0;
    for (index_t i = 0; i < n; ++i) {
      s1(i, i) = d1[i], s2(i, i) = d2[i];
      mu1[static_cast<std::size_t>(i)] = static_cast<double>(i);
      mu2[static_cast<std::size_t>(i)] = 0.5 * static_cast<double>(i * i);
      expected_trace += std::sqrt(d1[i] * d2[i]);
      mean_term += std::pow(mu1[static_cast<std::size_t>(i)] - mu2[static_cast<std::size_t>(i)], 2);
      traces += d1[i] + d2[i];
    }
    CHECK(kiln::metrics::trace_sqrt_product(s1, s2) ==
          doctest::Approx(expected_trace).epsilon(1e-14));
    CHECK(kiln::metrics::frechet_distance(mu1, s1, mu2, s2) ==
          doctest::Approx(mean_term + traces - 2 * expected_trace).epsilon(1e-13));
  }
  SUBCASE("commuting covariances Q D1 Qᵀ, Q D2 Qᵀ") {
    std::mt19937_64 gen(11);
    std::uniform_real_distribution<double> uniform(0.0, 5.0);
    const index_t n = 32;
    const Matrix q = random_orthogonal(n, gen);
    std::vector<double> d1(n), d2(n);
    double expected = 0;
    for (index_t i = 0; i < n; ++i) {
      d1[static_cast<std::size_t>(i)] = i % 5 == 0 ? 0.0 : uniform(gen);  // singular S1
      d2[static_cast<std::size_t>(i)] = uniform(gen);
      expected += std::sqrt(d1[static_cast<std::size_t>(i)] * d2[static_cast<std::size_t>(i)]);
    }
    const Matrix s1 = with_spectrum(q, d1), s2 = with_spectrum(q, d2);
    CHECK(kiln::metrics::trace_sqrt_product(s1, s2) == doctest::Approx(expected).epsilon(1e-12));
    CHECK(kiln::metrics::trace_sqrt_product(s2, s1) == doctest::Approx(expected).epsilon(1e-12));
  }
  SUBCASE("non-commuting 2 x 2: Tr √M = √(tr M + 2 √det M) for M = S1 S2") {
    // M has eigenvalues μ1, μ2 >= 0 with (√μ1 + √μ2)² = tr M + 2 √(μ1 μ2).
    Matrix s1(2, 2), s2(2, 2);
    s1(0, 0) = 2, s1(0, 1) = s1(1, 0) = 0.7, s1(1, 1) = 1;
    s2(0, 0) = 0.5, s2(0, 1) = s2(1, 0) = -0.3, s2(1, 1) = 3;
    const double tr_m =
        s1(0, 0) * s2(0, 0) + s1(0, 1) * s2(1, 0) + s1(1, 0) * s2(0, 1) + s1(1, 1) * s2(1, 1);
    const double det_m =
        (s1(0, 0) * s1(1, 1) - s1(0, 1) * s1(1, 0)) * (s2(0, 0) * s2(1, 1) - s2(0, 1) * s2(1, 0));
    const double expected = std::sqrt(tr_m + 2 * std::sqrt(det_m));
    CHECK(kiln::metrics::trace_sqrt_product(s1, s2) == doctest::Approx(expected).epsilon(1e-14));
    const std::vector<double> mu1 = {1, -2}, mu2 = {0.5, 0.5};
    CHECK(kiln::metrics::frechet_distance(mu1, s1, mu2, s2) ==
          doctest::Approx(0.25 + 6.25 + 3 + 3.5 - 2 * expected).epsilon(1e-14));
  }
  SUBCASE("FID of a sample with itself is zero") {
    std::mt19937_64 gen(12);
    const auto x = correlated_features(400, 48, 3.0, 1.0, gen);
    const auto t = tensor_of(x, 400, 48);
    FeatureStatistics s;
    s.add(t);
    const Matrix sigma = s.covariance();
    const double fid = kiln::metrics::fid_from_features(t, t);
    CHECK(std::fabs(fid) < 1e-8 * 2 * linalg::trace(sigma));
    // Rank-deficient: 20 samples in 48 dimensions.
    const auto few = tensor_of(std::vector<double>(x.begin(), x.begin() + 20 * 48), 20, 48);
    FeatureStatistics f;
    f.add(few);
    CHECK(std::fabs(kiln::metrics::fid_from_features(few, few)) <
          1e-8 * 2 * linalg::trace(f.covariance()));
  }
}

TEST_CASE("FeatureStatistics: two-pass agreement, streaming, merging, views") {
  std::mt19937_64 gen(21);
  const index_t rows = 2500, dim = 24;  // more rows than one internal chunk (1024)
  const auto x = correlated_features(rows, dim, 1e4, 2.0, gen);  // a large mean tests the centering
  std::vector<double> mean;
  Matrix cov;
  two_pass(x, rows, dim, mean, cov);

  FeatureStatistics all;
  all.add(tensor_of(x, rows, dim));
  CHECK(all.count() == rows);
  CHECK(all.dim() == dim);
  for (index_t j = 0; j < dim; ++j)
    CHECK(all.mean()[static_cast<std::size_t>(j)] ==
          doctest::Approx(mean[static_cast<std::size_t>(j)]).epsilon(1e-14));
  CHECK(max_abs_difference(all.covariance(), cov) <= 1e-11 * max_abs(cov));

  // Batches of 1, 7, 333 and the rest; and the raw-pointer entry point.
  FeatureStatistics streamed(dim);
  index_t done = 0;
  for (index_t batch : {index_t{1}, index_t{7}, index_t{333}, rows}) {
    const index_t n = std::min(batch, rows - done);
    streamed.add(x.data() + done * dim, n, dim);
    done += n;
  }
  CHECK(streamed.count() == rows);
  CHECK(max_abs_difference(streamed.covariance(), all.covariance()) <= 1e-11 * max_abs(cov));
  for (index_t j = 0; j < dim; ++j)
    CHECK(streamed.mean()[static_cast<std::size_t>(j)] ==
          doctest::Approx(all.mean()[static_cast<std::size_t>(j)]).epsilon(1e-14));

  // Shards merged give the statistics of the union; merging into an empty one copies.
  FeatureStatistics first, second, merged;
  first.add(x.data(), 900, dim);
  second.add(x.data() + 900 * dim, rows - 900, dim);
  merged.merge(first);
  merged.merge(second);
  CHECK(merged.count() == rows);
  CHECK(max_abs_difference(merged.covariance(), cov) <= 1e-11 * max_abs(cov));

  // Float features and a transposed (strided) view give the same statistics as doubles.
  std::vector<float> xf(x.begin(), x.end());
  std::vector<double> xf_as_double(xf.begin(), xf.end());
  auto tf = kiln::Tensor<float>::uninitialized(kiln::Shape{rows, dim});
  std::copy(xf.begin(), xf.end(), tf.data());
  FeatureStatistics from_float, from_rounded;
  from_float.add(tf);
  from_rounded.add(xf_as_double.data(), rows, dim);
  CHECK(max_abs_difference(from_float.covariance(), from_rounded.covariance()) == 0.0);
  auto transposed_storage = kiln::Tensor<double>::uninitialized(kiln::Shape{dim, rows});
  for (index_t r = 0; r < rows; ++r)
    for (index_t j = 0; j < dim; ++j)
      transposed_storage.data()[j * rows + r] = x[static_cast<std::size_t>(r * dim + j)];
  FeatureStatistics from_view;
  from_view.add(kiln::Tensor<double>::from_parts(transposed_storage.storage(),
                                                 kiln::Shape{rows, dim}, kiln::Shape{1, rows},
                                                 0));  // a transposed view
  CHECK(max_abs_difference(from_view.covariance(), all.covariance()) == 0.0);

  // Against sums of outer products: at mean 1e4 with unit spread, Σxxᵀ − n·mean·meanᵀ would
  // lose about 8 of 16 digits; the centered update keeps the 1e-11 agreement checked above.
}

TEST_CASE("FeatureStatistics save and load through safetensors") {
  TemporaryDirectory dir("fid_stats");
  std::mt19937_64 gen(31);
  const index_t rows = 300, dim = 10;
  const auto x = correlated_features(rows, dim, -2.0, 1.0, gen);
  FeatureStatistics s;
  s.add(x.data(), 200, dim);
  const std::string path = (dir.path / "stats.safetensors").string();
  s.save(path);

  const kiln::io::SafeTensorsFile file(path);
  CHECK(file.dtype("mu") == kiln::io::DType::F64);
  CHECK(kiln::to_string(file.shape("sigma")) == "[10, 10]");
  CHECK(file.metadata().at("count") == "200");

  FeatureStatistics loaded = FeatureStatistics::load(path);
  CHECK(loaded.count() == 200);
  CHECK(loaded.mean() == s.mean());
  CHECK(max_abs_difference(loaded.covariance(), s.covariance()) <= 1e-15 * max_abs(s.covariance()));
  // Loaded statistics keep streaming.
  loaded.add(x.data() + 200 * dim, rows - 200, dim);
  s.add(x.data() + 200 * dim, rows - 200, dim);
  CHECK(max_abs_difference(loaded.covariance(), s.covariance()) <= 1e-13 * max_abs(s.covariance()));

  // Files without a count or with mismatched shapes are refused with the file named.
  const std::string bad = (dir.path / "bad.safetensors").string();
  auto mu = kiln::Tensor<double>::uninitialized(kiln::Shape{3});
  auto sigma = kiln::Tensor<double>::uninitialized(kiln::Shape{3, 3});
  mu.fill_(0.0);
  sigma.fill_(1.0);
  kiln::io::save_safetensors(bad, {{"mu", mu}, {"sigma", sigma}}, {}, kiln::io::DType::F64);
  CHECK_THROWS_WITH_AS(FeatureStatistics::load(bad),
                       doctest::Contains("bad.safetensors: has no metadata \"count\""),
                       kiln::ValueError);
  auto sigma_wrong = kiln::Tensor<double>::uninitialized(kiln::Shape{3, 4});
  sigma_wrong.fill_(1.0);
  kiln::io::save_safetensors(bad, {{"mu", mu}, {"sigma", sigma_wrong}}, {{"count", "5"}},
                             kiln::io::DType::F64);
  CHECK_THROWS_WITH_AS(FeatureStatistics::load(bad), doctest::Contains("got [3] and [3, 4]"),
                       kiln::ShapeError);
  kiln::io::save_safetensors(bad, {{"mu", mu}, {"sigma", sigma}}, {{"count", "1"}},
                             kiln::io::DType::F64);
  CHECK_THROWS_WITH_AS(FeatureStatistics::load(bad), doctest::Contains("must be an integer >= 2"),
                       kiln::ValueError);
}

TEST_CASE("FID errors name the problem") {
  std::vector<double> x(20 * 4, 1.0);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<double>(i));
  FeatureStatistics s;
  s.add(x.data(), 20, 4);
  CHECK_THROWS_WITH_AS(
      s.add(x.data(), 4, 5),
      doctest::Contains("features of shape [4, 5] do not match statistics of dimension 4"),
      kiln::ShapeError);
  CHECK_THROWS_WITH_AS(s.add(kiln::Tensor<double>::uninitialized(kiln::Shape{80})),
                       doctest::Contains("[N, D]"), kiln::ShapeError);
  std::vector<double> with_nan = x;
  with_nan[2 * 4 + 3] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(s.add(with_nan.data(), 20, 4),
                       doctest::Contains("feature (row 2, column 3)"), kiln::ValueError);
  CHECK(s.count() == 20);  // the bad batch changed nothing

  FeatureStatistics one;
  one.add(x.data(), 1, 4);
  CHECK_THROWS_WITH_AS(one.covariance(), doctest::Contains("needs at least 2 samples"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(FeatureStatistics().mean(), doctest::Contains("no samples"),
                       kiln::ValueError);
  FeatureStatistics other(5);
  CHECK_NOTHROW(s.merge(other));  // nothing to merge
  other.add(x.data(), 16, 5);
  CHECK_THROWS_WITH_AS(s.merge(other),
                       doctest::Contains("dimension 5 cannot merge into statistics of dimension 4"),
                       kiln::ShapeError);

  const auto a = tensor_of(x, 20, 4),
             b = tensor_of(std::vector<double>(x.begin(), x.begin() + 20), 4, 5);
  CHECK_THROWS_WITH_AS(kiln::metrics::fid_from_features(a, b),
                       doctest::Contains("shapes [20, 4] and [4, 5]"), kiln::ShapeError);
  const auto single = tensor_of(std::vector<double>(x.begin(), x.begin() + 4), 1, 4);
  CHECK_THROWS_WITH_AS(kiln::metrics::fid_from_features(a, single),
                       doctest::Contains("at least 2 samples"), kiln::ShapeError);

  Matrix sigma = s.covariance(), asymmetric = sigma;
  asymmetric(0, 1) += 1.0;
  const std::vector<double> mu = s.mean();
  CHECK_THROWS_WITH_AS(kiln::metrics::frechet_distance(mu, asymmetric, mu, sigma),
                       doctest::Contains("sigma1 is not symmetric"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(
      kiln::metrics::frechet_distance(mu, sigma, std::vector<double>(3, 0.0), Matrix(3, 3)),
      doctest::Contains("mu1 [4], sigma1 4 x 4 and mu2 [3], sigma2 3 x 3"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::metrics::frechet_distance(mu, Matrix(4, 3), mu, sigma),
                       doctest::Contains("sigma1 is 4 x 3"), kiln::ShapeError);
  std::vector<double> mu_inf = mu;
  mu_inf[1] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(kiln::metrics::frechet_distance(mu, sigma, mu_inf, sigma),
                       doctest::Contains("mu2[1] is inf"), kiln::ValueError);
}

TEST_CASE("FID agrees with pytorch-fid's scipy.linalg.sqrtm formula") {
  TemporaryDirectory dir("fid_scipy");
  struct Case {
    std::string name;
    index_t rows_a, rows_b, dim;
    std::vector<double> a, b;
  };
  std::mt19937_64 gen(2024);
  std::vector<Case> cases;
  cases.push_back({"small", 500, 500, 64, correlated_features(500, 64, 0.0, 1.0, gen),
                   correlated_features(500, 64, 0.3, 1.5, gen)});
  cases.push_back({"large", 2000, 1500, 256, correlated_features(2000, 256, 1.0, 1.0, gen),
                   correlated_features(1500, 256, 1.2, 0.7, gen)});
  // Fewer samples than dimensions: both covariances are singular.
  cases.push_back({"singular", 100, 90, 128, correlated_features(100, 128, 0.0, 1.0, gen),
                   correlated_features(90, 128, 0.5, 1.0, gen)});
  {
    std::ofstream listing(dir.path / "cases.txt");
    for (const Case& c : cases) {
      listing << c.name << ' ' << c.rows_a << ' ' << c.rows_b << ' ' << c.dim << '\n';
      write_doubles(dir.path / (c.name + "_a.bin"), c.a);
      write_doubles(dir.path / (c.name + "_b.bin"), c.b);
    }
  }
  REQUIRE(kiln::test::run_python_script("scipy, numpy", "python3-scipy python3-numpy",
                                        "reference/fid_scipy.py",
                                        kiln::test::shell_quote(dir.path.string())) == 0);
  const kiln::io::Json results =
      kiln::io::parse_json(kiln::io::read_file_bytes((dir.path / "results.json").string()));
  for (const Case& c : cases) {
    CAPTURE(c.name);
    FeatureStatistics sa, sb;
    sa.add(tensor_of(c.a, c.rows_a, c.dim));
    sb.add(tensor_of(c.b, c.rows_b, c.dim));
    // The statistics equal numpy.mean / numpy.cov(rowvar=False).
    for (const auto& [side, stats] : {std::pair{"a", &sa}, std::pair{"b", &sb}}) {
      const std::vector<double> mu = read_doubles(dir.path / (c.name + "_mu_" + side + ".bin"));
      const std::vector<double> sigma =
          read_doubles(dir.path / (c.name + "_sigma_" + side + ".bin"));
      const std::vector<double> mean = stats->mean();
      const Matrix cov = stats->covariance();
      REQUIRE(mu.size() == mean.size());
      REQUIRE(sigma.size() == cov.values.size());
      double mean_error = 0, cov_error = 0, cov_scale = 0;
      for (std::size_t i = 0; i < mu.size(); ++i)
        mean_error = std::max(mean_error, std::fabs(mu[i] - mean[i]));
      for (std::size_t i = 0; i < sigma.size(); ++i) {
        cov_error = std::max(cov_error, std::fabs(sigma[i] - cov.values[i]));
        cov_scale = std::max(cov_scale, std::fabs(sigma[i]));
      }
      CHECK(mean_error <= 1e-12);
      CHECK(cov_error <= 1e-12 * cov_scale);
    }
    const double fid = kiln::metrics::frechet_distance(sa, sb);
    const double tr = kiln::metrics::trace_sqrt_product(sa.covariance(), sb.covariance());
    const kiln::io::Json& reference = results.at(c.name);
    const double reference_fid = reference.at("fid").as_double();
    const double reference_tr = reference.at("tr_covmean").as_double();
    MESSAGE(c.name << ": kiln FID " << fid << ", scipy " << reference_fid
                   << ", relative difference " << relative_difference(fid, reference_fid)
                   << "; Tr sqrt relative difference " << relative_difference(tr, reference_tr)
                   << std::string(reference.at("offset_used").as_bool()
                                      ? " (scipy needed the eps offset)"
                                      : ""));
    // Measured with SciPy 1.10: about 1e-14 for the full-rank cases and 1e-8 for the singular one
    // (where √ of eigenvalues at rounding level differs between the two methods). The bounds
    // leave room for other SciPy versions (sqrtm was rewritten in SciPy 1.14).
    CHECK(relative_difference(fid, reference_fid) < (c.name == "singular" ? 1e-4 : 1e-6));
    CHECK(relative_difference(tr, reference_tr) < (c.name == "singular" ? 1e-4 : 1e-6));
  }
}
