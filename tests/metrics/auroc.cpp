// Tests of include/kiln/metrics/auroc.hpp against hand-counted pairs and a brute-force count over
// every positive/negative pair on random scores with ties.
#include <doctest/doctest.h>

#include <kiln/core/error.hpp>
#include <kiln/metrics/auroc.hpp>

#include <random>
#include <vector>

TEST_CASE("AUROC by hand") {
  // positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5) (0.9>0.1) (0.4<0.5) (0.4>0.1) -> 3/4
  CHECK(kiln::metrics::auroc({0.9, 0.5, 0.4, 0.1}, {true, false, true, false}) == doctest::Approx(0.75));
  CHECK(kiln::metrics::auroc({1, 2, 3}, {false, false, true}) == 1.0);
  CHECK(kiln::metrics::auroc({3, 2, 1}, {false, false, true}) == 0.0);
  // a tie between a positive and a negative counts one half: pairs (2 = 2) -> 0.5, (2 > 1) -> 1
  CHECK(kiln::metrics::auroc({2, 2, 1}, {true, false, false}) == doctest::Approx(0.75));
}

TEST_CASE("AUROC equals the fraction of correctly ordered pairs on random tied scores") {
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> level(0, 9);
  std::bernoulli_distribution coin(0.3);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<double> s;
    std::vector<bool> y;
    for (int i = 0; i < 200; ++i) {
      s.push_back(level(gen));
      y.push_back(coin(gen));
    }
    y[0] = true;
    y[1] = false;
    double wins = 0, pairs = 0;
    for (std::size_t i = 0; i < s.size(); ++i)
      for (std::size_t j = 0; j < s.size(); ++j)
        if (y[i] && !y[j]) {
          pairs += 1;
          wins += s[i] > s[j] ? 1.0 : s[i] == s[j] ? 0.5 : 0.0;
        }
    CHECK(kiln::metrics::auroc(s, y) == doctest::Approx(wins / pairs).epsilon(1e-12));
  }
}

TEST_CASE("AUROC rejects what has no answer") {
  CHECK_THROWS_WITH_AS(kiln::metrics::auroc({1, 2}, {true}), doctest::Contains("2 scores but 1 labels"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::metrics::auroc({1, 2}, {true, true}), doctest::Contains("at least one positive and one negative"),
                       kiln::ValueError);
}
