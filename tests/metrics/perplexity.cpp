// Tests of include/kiln/metrics/perplexity.hpp against hand-derived values: a bigram model whose
// probabilities are powers of two (NLL = bits * ln 2), a model whose loss reveals the window
// position each token was scored at (hand-traced windows for several max_length/stride pairs),
// a uniform model (perplexity = V), logits far outside exp's range, and the errors.
#include <doctest/doctest.h>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/metrics/perplexity.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace {

using Tokens = std::vector<std::int64_t>;
const double ln2 = std::log(2.0);

// Probabilities p[previous][next], each a power of two, so -log p = bits[previous][next] * ln 2.
constexpr int bigram_bits[4][4] = {{3, 1, 2, 3}, {2, 3, 1, 3}, {3, 3, 2, 1}, {1, 2, 3, 3}};

// A bigram model: the logits at position t depend only on the token at t. Each row is
// log p + a row-dependent shift (softmax ignores it).
struct BigramModel {
  int calls = 0;
  kiln::Tensor<float> operator()(const kiln::Tensor<std::int64_t>& ids) {
    ++calls;
    REQUIRE(ids.dim() == 2);
    REQUIRE(ids.size(0) == 1);
    const std::int64_t length = ids.size(1);
    kiln::Tensor<float> logits(kiln::Shape{1, length, 4});
    for (std::int64_t t = 0; t < length; ++t) {
      const std::int64_t previous = (ids.data()[t] % 4 + 4) % 4;  // ids of the error tests wrap
      for (int v = 0; v < 4; ++v)
        logits.data()[t * 4 + v] =
            static_cast<float>(-bigram_bits[previous][v] * ln2 + 3.0 * double(previous) - 5.0);
    }
    return logits;
  }
};

// The model's loss for a token scored at window position t is t - 1 nats whatever the token is
// 0: the logits at position p are [0, log(e^p - 1)], so p(token 0) = e^-p. Summing the losses
// tells which window positions were scored. Takes the ids as a span, and returns the logits as a
// non-contiguous view ([1, 2, L] permuted to [1, L, 2]).
struct PositionModel {
  std::vector<std::int64_t> lengths;  // window lengths it was called with
  kiln::Tensor<float> operator()(std::span<const std::int64_t> ids) {
    const auto length = static_cast<std::int64_t>(ids.size());
    lengths.push_back(length);
    for (std::int64_t id : ids) REQUIRE(id == 0);
    kiln::Tensor<float> transposed(kiln::Shape{1, 2, length});
    for (std::int64_t p = 0; p < length; ++p) {
      transposed.data()[p] = 0.0f;
      transposed.data()[length + p] = static_cast<float>(std::log(std::expm1(double(p))));  // p = 0: -inf
    }
    // the view [1, L, 2] of the [1, 2, L] storage: strides (2L, 1, L)
    return kiln::Tensor<float>::from_parts(transposed.storage(), kiln::Shape{1, length, 2},
                                           kiln::Shape{2 * length, 1, length}, 0);
  }
};

}  // namespace

TEST_CASE("perplexity of a bigram model: bits counted by hand") {
  // transitions 0>1 1>2 2>3 3>0 0>1 1>1 1>3 3>3 3>2 2>2 2>0 cost 1+1+1+1+1+3+3+3+3+2+3 = 22 bits
  const Tokens tokens = {0, 1, 2, 3, 0, 1, 1, 3, 3, 2, 2, 0};
  BigramModel model;
  const auto r = kiln::metrics::perplexity(model, tokens, 12, 12);  // one window holds it all
  CHECK(r.windows == 1);
  CHECK(r.token_count == 11);
  CHECK(r.nll_sum == doctest::Approx(22 * ln2).epsilon(1e-6));
  CHECK(r.mean_nll == doctest::Approx(2 * ln2).epsilon(1e-6));
  CHECK(r.perplexity == doctest::Approx(4.0).epsilon(1e-6));  // 2^(22 / 11)

  // Context independence: every window with stride < max_length scores each token but the first
  // exactly once, with at least its previous token as context, so the result is the same.
  for (std::int64_t max_length : {2, 3, 4, 5, 11, 12, 40})
    for (std::int64_t stride = 1; stride < max_length; ++stride) {
      CAPTURE(max_length);
      CAPTURE(stride);
      BigramModel m;
      const auto s = kiln::metrics::perplexity(m, tokens, max_length, stride);
      CHECK(s.token_count == 11);
      CHECK(s.nll_sum == doctest::Approx(22 * ln2).epsilon(1e-6));
      CHECK(s.perplexity == doctest::Approx(4.0).epsilon(1e-6));
      CHECK(s.windows == m.calls);
    }

  // stride == max_length == 4: windows [0,4) [4,8) [8,12); the first token of each later window
  // has no context and is not scored: tokens 1-3 (1+1+1), 5-7 (1+3+3), 9-11 (3+2+3) = 18 bits.
  BigramModel m;
  const auto s = kiln::metrics::perplexity(m, tokens, 4, 4);
  CHECK(s.windows == 3);
  CHECK(s.token_count == 9);
  CHECK(s.nll_sum == doctest::Approx(18 * ln2).epsilon(1e-6));
  CHECK(s.perplexity == doctest::Approx(std::exp(18 * ln2 / 9)).epsilon(1e-6));
}

TEST_CASE("perplexity: which window positions are scored, traced by hand") {
  struct Case {
    std::int64_t n, max_length, stride;
    std::vector<std::int64_t> lengths;  // windows the model sees
    std::int64_t tokens;                // scored
    double nll;                         // sum over scored tokens of (window position - 1)
  };
  const Case cases[] = {
      // [0,4) t=1..3: 0+1+2; [2,6) [4,8) [6,10) t=2,3: 1+2 each
      {10, 4, 2, {4, 4, 4, 4}, 9, 3 + 3 + 3 + 3},
      // [0,4) t=1..3; [3,7) t=1..3 (end - prev_end = 3)
      {7, 4, 3, {4, 4}, 6, 3 + 3},
      // stride == max_length: [0,4) t=1..3; [4,8) t=1..3; [8,9) scores nothing, no call
      {9, 4, 4, {4, 4}, 6, 3 + 3},
      // stride > max_length: [0,3) t=1,2; [5,8) t=1,2; begin 10 ends the loop; 3, 4, 8, 9 unscored
      {10, 3, 5, {3, 3}, 4, 1 + 1},
      // a sequence shorter than max_length: one window of n tokens
      {3, 8, 2, {3}, 2, 0 + 1},
      // stride 1: [0,3) t=1,2; then [1,4) ... [5,8) score t=2 each (cost 1)
      {8, 3, 1, {3, 3, 3, 3, 3, 3}, 7, 1 + 5 * 1},
  };
  for (const Case& c : cases) {
    CAPTURE(c.n);
    CAPTURE(c.max_length);
    CAPTURE(c.stride);
    PositionModel model;
    const auto r = kiln::metrics::perplexity(model, Tokens(static_cast<std::size_t>(c.n), 0), c.max_length, c.stride);
    CHECK(model.lengths == c.lengths);
    CHECK(r.windows == static_cast<std::int64_t>(c.lengths.size()));
    CHECK(r.token_count == c.tokens);
    CHECK(r.nll_sum == doctest::Approx(c.nll).epsilon(1e-6));
    CHECK(r.mean_nll == doctest::Approx(c.nll / double(c.tokens)).epsilon(1e-6));
    CHECK(r.perplexity == doctest::Approx(std::exp(c.nll / double(c.tokens))).epsilon(1e-6));
  }
}

TEST_CASE("perplexity of a uniform model is the vocabulary size") {
  const std::int64_t vocabulary = 50;
  auto uniform = [&](const kiln::Tensor<std::int64_t>& ids) {
    kiln::Tensor<double> logits(kiln::Shape{1, ids.size(1), vocabulary});
    logits.fill_(7.25);
    return logits;
  };
  Tokens tokens;
  for (int i = 0; i < 37; ++i) tokens.push_back((i * 17) % vocabulary);
  const auto r = kiln::metrics::perplexity(uniform, tokens, 8, 3);
  CHECK(r.token_count == 36);
  CHECK(r.perplexity == doctest::Approx(50.0).epsilon(1e-12));
  CHECK(r.mean_nll == doctest::Approx(std::log(50.0)).epsilon(1e-12));
}

TEST_CASE("perplexity: log-softmax stays finite for logits far outside exp's range") {
  // logits [1000, 0]: -log softmax = [log(1 + e^-1000), 1000 + log(1 + e^-1000)] = [0, 1000]
  // logits [-1000, -1000]: ln 2 each (exp would underflow to 0 without the maximum subtracted)
  auto model = [](std::span<const std::int64_t> ids) {
    const auto length = static_cast<std::int64_t>(ids.size());
    kiln::Tensor<float> logits(kiln::Shape{1, length, 2});
    for (std::int64_t t = 0; t < length; ++t) {
      logits.data()[2 * t] = t % 2 == 0 ? 1000.0f : -1000.0f;
      logits.data()[2 * t + 1] = t % 2 == 0 ? 0.0f : -1000.0f;
    }
    return logits;
  };
  // one window of 5: token t scored with row t-1; rows 0, 2 are [1000, 0], rows 1, 3 uniform
  const auto r = kiln::metrics::perplexity(model, Tokens{0, 1, 0, 0, 1}, 5, 5);
  CHECK(r.token_count == 4);
  CHECK(r.nll_sum == doctest::Approx(1000 + ln2 + 0 + ln2).epsilon(1e-12));
  CHECK(std::isfinite(r.perplexity));
}

TEST_CASE("perplexity rejects what has no answer") {
  BigramModel model;
  const Tokens tokens = {0, 1, 2, 3};
  CHECK_THROWS_WITH_AS(kiln::metrics::perplexity(model, tokens, 4, 0), doctest::Contains("stride must be at least 1, got 0"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::metrics::perplexity(model, tokens, 1, 1),
                       doctest::Contains("max_length must be at least 2"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::metrics::perplexity(model, Tokens{2}, 4, 1), doctest::Contains("at least 2 tokens, got 1"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::metrics::perplexity(model, Tokens{}, 4, 1), doctest::Contains("at least 2 tokens, got 0"),
                       kiln::ValueError);
  CHECK(model.calls == 0);
  CHECK_THROWS_WITH_AS(kiln::metrics::perplexity(model, Tokens{0, 1, 4}, 4, 1),
                       doctest::Contains("token 2 has id 4, outside the model's vocabulary [0, 4)"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::metrics::perplexity(model, Tokens{0, -1}, 4, 1), doctest::Contains("token 1 has id -1"),
                       kiln::ValueError);

  auto wrong_shape = [](const kiln::Tensor<std::int64_t>& ids) { return kiln::Tensor<float>(kiln::Shape{ids.size(1), 4}); };
  CHECK_THROWS_WITH_AS(kiln::metrics::perplexity(wrong_shape, tokens, 3, 1),
                       doctest::Contains("logits of shape [1, 3, V] for a window of 3 tokens"), kiln::ShapeError);
  auto nan_logits = [](const kiln::Tensor<std::int64_t>& ids) {
    kiln::Tensor<float> logits(kiln::Shape{1, ids.size(1), 3});
    logits.fill_(std::numeric_limits<float>::quiet_NaN());
    return logits;
  };
  CHECK_THROWS_WITH_AS(kiln::metrics::perplexity(nan_logits, Tokens{0, 1}, 2, 1),
                       doctest::Contains("the logits predicting token 1 (window position 0 of tokens 0 to 1) hold NaN"),
                       kiln::ValueError);
}
