// Tests of include/kiln/metrics/inception_score.hpp: uniform and balanced one-hot predictions, a
// hand-computed two-class example with splits, logits against probabilities, strided and float
// tensors, errors, and random softmaxes against the original numpy implementation
// (tests/reference/inception_score_numpy.py) to 1e-9.
#include <doctest/doctest.h>

#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/io/json.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/metrics/inception_score.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

using kiln::index_t;
using kiln::metrics::inception_score;
using kiln::metrics::inception_score_from_logits;
namespace fs = std::filesystem;

namespace {

// Softmax of `logits` row by row, in double (the test's own loop).
std::vector<double> softmax_rows(const std::vector<double>& logits, index_t classes) {
  std::vector<double> out(logits.size());
  for (std::size_t row = 0; row < logits.size() / static_cast<std::size_t>(classes); ++row) {
    const double* z = logits.data() + row * static_cast<std::size_t>(classes);
    const double top = *std::max_element(z, z + classes);
    double total = 0;
    for (index_t k = 0; k < classes; ++k) total += std::exp(z[k] - top);
    for (index_t k = 0; k < classes; ++k)
      out[row * static_cast<std::size_t>(classes) + static_cast<std::size_t>(k)] =
          std::exp(z[k] - top) / total;
  }
  return out;
}

std::vector<double> random_logits(index_t rows, index_t classes, double scale,
                                  std::mt19937_64& gen) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> z(static_cast<std::size_t>(rows * classes));
  for (double& v : z) v = normal(gen);
  return z;
}

double relative_difference(double a, double b) {
  return std::fabs(a - b) / std::max({std::fabs(a), std::fabs(b), 1e-300});
}

}  // namespace

TEST_CASE("Inception Score of uniform and of balanced one-hot predictions") {
  const index_t classes = 7,
                rows = 10 * classes * 3;  // each of the 10 splits holds 3 of every class
  std::vector<double> uniform(static_cast<std::size_t>(rows * classes), 1.0 / classes);
  const auto u = inception_score(uniform.data(), rows, classes);
  CHECK(u.mean == doctest::Approx(1.0).epsilon(1e-14));
  CHECK(u.std < 1e-14);
  CHECK(u.split_scores.size() == 10);

  std::vector<double> one_hot(static_cast<std::size_t>(rows * classes), 0.0);
  for (index_t i = 0; i < rows; ++i)
    one_hot[static_cast<std::size_t>(i * classes + i % classes)] = 1.0;
  const auto h = inception_score(one_hot.data(), rows, classes);
  CHECK(h.mean == doctest::Approx(classes).epsilon(1e-14));
  CHECK(h.std < 1e-13);
  // All samples of one class: p(y) is that one-hot, KL = 0, score 1.
  std::vector<double> single_class(static_cast<std::size_t>(20 * classes), 0.0);
  for (index_t i = 0; i < 20; ++i) single_class[static_cast<std::size_t>(i * classes + 2)] = 1.0;
  CHECK(inception_score(single_class.data(), 20, classes, 4).mean == 1.0);
}

TEST_CASE("Inception Score by hand: two classes, two splits") {
  // Split 1: p(y|x) = (0.8, 0.2), (0.4, 0.6); p(y) = (0.6, 0.4);
  //   KL₁ = 0.8 ln(0.8/0.6) + 0.2 ln(0.2/0.4), KL₂ = 0.4 ln(0.4/0.6) + 0.6 ln(0.6/0.4),
  //   score = exp((KL₁ + KL₂)/2) = 1.090138357569351.
  // Split 2: (1, 0), (0, 1); p(y) = (0.5, 0.5); KL = ln 2 for both; score 2.
  const std::vector<double> p = {0.8, 0.2, 0.4, 0.6, 1.0, 0.0, 0.0, 1.0};
  const double first = std::exp((0.8 * std::log(0.8 / 0.6) + 0.2 * std::log(0.2 / 0.4) +
                                 0.4 * std::log(0.4 / 0.6) + 0.6 * std::log(0.6 / 0.4)) /
                                2);
  CHECK(first == doctest::Approx(1.090138357569351).epsilon(1e-15));
  const auto one_split = inception_score(p.data(), 2, 2, 1);
  CHECK(one_split.mean == doctest::Approx(first).epsilon(1e-14));
  const auto two = inception_score(p.data(), 4, 2, 2);
  REQUIRE(two.split_scores.size() == 2);
  CHECK(two.split_scores[0] == doctest::Approx(first).epsilon(1e-14));
  CHECK(two.split_scores[1] == doctest::Approx(2.0).epsilon(1e-14));
  CHECK(two.mean == doctest::Approx((first + 2.0) / 2).epsilon(1e-14));
  CHECK(two.std ==
        doctest::Approx((2.0 - first) / 2).epsilon(1e-13));  // population std of two values
  // Uneven splits follow the original's s·N/splits boundaries: N = 5, 2 splits -> rows [0, 2) and
  // [2, 5).
  const std::vector<double> five = {0.8, 0.2, 0.4, 0.6, 1.0, 0.0, 0.0, 1.0, 0.5, 0.5};
  const auto uneven = inception_score(five.data(), 5, 2, 2);
  CHECK(uneven.split_scores[0] == doctest::Approx(first).epsilon(1e-14));
  // Rows (1, 0), (0, 1), (0.5, 0.5): p(y) = (0.5, 0.5), KLs ln 2, ln 2, 0 -> exp(2 ln 2 / 3).
  CHECK(uneven.split_scores[1] == doctest::Approx(std::exp(2 * std::log(2.0) / 3)).epsilon(1e-14));
}

TEST_CASE("Inception Score from logits, float and strided tensors") {
  std::mt19937_64 gen(77);
  const index_t rows = 120, classes = 9;
  const auto z = random_logits(rows, classes, 2.0, gen);
  const auto p = softmax_rows(z, classes);
  const auto from_probs = inception_score(p.data(), rows, classes, 6);
  const auto from_logits = inception_score_from_logits(z.data(), rows, classes, 6);
  CHECK(relative_difference(from_probs.mean, from_logits.mean) < 1e-13);
  CHECK(relative_difference(from_probs.std, from_logits.std) < 1e-10);

  // Tensor inputs: float probabilities and a transposed (strided) layout.
  auto tensor = kiln::Tensor<float>::uninitialized(kiln::Shape{rows, classes});
  for (std::size_t i = 0; i < p.size(); ++i) tensor.data()[i] = static_cast<float>(p[i]);
  const auto from_float = inception_score(tensor, 6);
  CHECK(relative_difference(from_float.mean, from_probs.mean) < 1e-5);
  auto columns = kiln::Tensor<double>::uninitialized(kiln::Shape{classes, rows});
  for (index_t i = 0; i < rows; ++i)
    for (index_t k = 0; k < classes; ++k)
      columns.data()[k * rows + i] = z[static_cast<std::size_t>(i * classes + k)];
  const kiln::Tensor<double> logits_view = kiln::Tensor<double>::from_parts(
      columns.storage(), kiln::Shape{rows, classes}, kiln::Shape{1, rows}, 0);
  const auto strided = inception_score_from_logits(logits_view, 6);
  CHECK(strided.mean == from_logits.mean);
  CHECK(strided.std == from_logits.std);
  // Very confident logits: probabilities underflow in float but log_softmax stays exact.
  std::vector<double> sharp(static_cast<std::size_t>(4 * 3), -800.0);
  for (index_t i = 0; i < 4; ++i) sharp[static_cast<std::size_t>(i * 3 + i % 3)] = 800.0;
  // Rows are one-hot for classes 0, 1, 2, 0: p(y) = (1/2, 1/4, 1/4), KLs ln 2, ln 4, ln 4, ln 2.
  CHECK(inception_score_from_logits(sharp.data(), 4, 3, 1).mean ==
        doctest::Approx(std::exp(std::log(8.0) / 2)).epsilon(1e-14));
}

TEST_CASE("Inception Score errors name the problem") {
  const std::vector<double> p = {0.5, 0.5, 0.25, 0.75};
  CHECK_THROWS_WITH_AS(
      inception_score(p.data(), 2, 2, 3),
      doctest::Contains("splits must be between 1 and the number of samples (2), got 3"),
      kiln::ValueError);
  CHECK_THROWS_WITH_AS(inception_score(p.data(), 2, 2, 0), doctest::Contains("got 0"),
                       kiln::ValueError);
  const std::vector<double> bad_sum = {0.5, 0.6, 0.25, 0.75};
  CHECK_THROWS_WITH_AS(inception_score(bad_sum.data(), 2, 2, 1),
                       doctest::Contains("row 0 sums to 1.1"), kiln::ValueError);
  const std::vector<double> negative = {0.5, 0.5, -0.25, 1.25};
  CHECK_THROWS_WITH_AS(inception_score(negative.data(), 2, 2, 1),
                       doctest::Contains("probability (row 1, class 0)"), kiln::ValueError);
  const std::vector<double> nan = {0.5, std::numeric_limits<double>::quiet_NaN(), 0.25, 0.75};
  CHECK_THROWS_WITH_AS(inception_score(nan.data(), 2, 2, 1), doctest::Contains("outside [0, 1]"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(inception_score_from_logits(nan.data(), 2, 2, 1),
                       doctest::Contains("logit (row 0, class 1) is not finite"), kiln::ValueError);
  auto vector = kiln::Tensor<double>::uninitialized(kiln::Shape{4});
  CHECK_THROWS_WITH_AS(inception_score(vector), doctest::Contains("needs a matrix [N, C]"),
                       kiln::ShapeError);
  CHECK_THROWS_AS(inception_score(p.data(), 0, 2, 1), kiln::ShapeError);
}

TEST_CASE("Inception Score agrees with the original numpy implementation on random softmaxes") {
  const fs::path dir =
      fs::temp_directory_path() / ("kiln_metrics_is_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  struct Case {
    std::string name;
    index_t rows, classes;
    int splits;
    double scale;
    std::vector<double> probabilities;
  };
  std::mt19937_64 gen(99);
  std::vector<Case> cases = {{"cifar_like", 1000, 10, 10, 3.0, {}},
                             {"uneven", 1003, 10, 7, 1.0, {}},
                             {"imagenet_like", 500, 1000, 10, 4.0, {}}};
  {
    std::ofstream listing(dir / "cases.txt");
    for (Case& c : cases) {
      c.probabilities = softmax_rows(random_logits(c.rows, c.classes, c.scale, gen), c.classes);
      listing << c.name << ' ' << c.rows << ' ' << c.classes << ' ' << c.splits << '\n';
      std::ofstream out(dir / (c.name + ".bin"), std::ios::binary);
      out.write(reinterpret_cast<const char*>(c.probabilities.data()),
                static_cast<std::streamsize>(c.probabilities.size() * sizeof(double)));
    }
  }
  const int status =
      kiln::test::run_python_script("numpy", "python3-numpy", "reference/inception_score_numpy.py",
                                    kiln::test::shell_quote(dir.string()));
  const std::string text =
      status == 0 ? kiln::io::read_file_bytes((dir / "results.json").string()) : std::string();
  fs::remove_all(dir);
  REQUIRE(status == 0);
  const kiln::io::Json results = kiln::io::parse_json(text);
  double largest = 0;
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const auto ours = inception_score(c.probabilities.data(), c.rows, c.classes, c.splits);
    const kiln::io::Json& reference = results.at(c.name);
    CHECK(relative_difference(ours.mean, reference.at("mean").as_double()) < 1e-9);
    CHECK(std::fabs(ours.std - reference.at("std").as_double()) < 1e-9 * ours.mean);
    const auto& splits = reference.at("splits").as_array();
    REQUIRE(splits.size() == ours.split_scores.size());
    for (std::size_t s = 0; s < splits.size(); ++s) {
      CHECK(relative_difference(ours.split_scores[s], splits[s].as_double()) < 1e-9);
      largest = std::max(largest, relative_difference(ours.split_scores[s], splits[s].as_double()));
    }
  }
  MESSAGE("largest relative difference of a split score from numpy: " << largest);
}
