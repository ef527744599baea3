// kiln/metrics/perplexity.hpp — perplexity of a causal language model over a token sequence longer
// than its context, with a strided sliding window (Hugging Face's "Perplexity of fixed-length models").
// Builds on core/tensor.hpp (token and logit tensors) and core/error.hpp.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

namespace kiln::metrics {

// What perplexity() measured; the log-likelihoods are natural logarithms (nats).
struct PerplexityResult {
  double nll_sum = 0.0;          // sum over the scored tokens of -log p(token | its window's context)
  std::int64_t token_count = 0;  // tokens scored
  double mean_nll = 0.0;         // nll_sum / token_count
  double perplexity = 0.0;       // exp(mean_nll)
  std::int64_t windows = 0;      // model calls made
};

namespace detail {

template <class T>
struct is_cpu_float_tensor : std::false_type {};
template <class T>
struct is_cpu_float_tensor<Tensor<T, cpu>> : std::bool_constant<std::is_floating_point_v<T>> {};

// Calls `model` on one window of token ids: with a Tensor<std::int64_t> of shape [1, L] when it
// accepts one, else with a std::span<const std::int64_t> of the L ids.
template <class Model>
auto call_language_model(Model& model, std::span<const std::int64_t> window) {
  if constexpr (std::is_invocable_v<Model&, const Tensor<std::int64_t, cpu>&>) {
    auto ids = Tensor<std::int64_t, cpu>::uninitialized(Shape{1, static_cast<index_t>(window.size())});
    std::copy(window.begin(), window.end(), ids.data());
    return model(std::as_const(ids));
  } else if constexpr (std::is_invocable_v<Model&, std::span<const std::int64_t>>) {
    return model(window);
  } else {
    static_assert(std::is_invocable_v<Model&, std::span<const std::int64_t>>,
                  "kiln::metrics::perplexity: the model must be callable with a kiln::Tensor<std::int64_t> of "
                  "token ids of shape [1, L] or with a std::span<const std::int64_t> of L ids, and return "
                  "logits as a kiln::Tensor<float> (or <double>) of shape [1, L, V]");
  }
}

}  // namespace detail

// Perplexity of `model` on `tokens` as the Hugging Face guide "Perplexity of fixed-length models"
// (transformers docs, conceptual guides) computes it with a strided sliding window:
//
//   for begin = 0, stride, 2 stride, ...:
//     end = min(begin + max_length, n); the model sees tokens[begin, end)
//     the window scores the tokens no earlier window scored, tokens[prev_end, end), except that
//     the first token of a window has no context in it and is never scored
//     prev_end = end; stop once end == n
//
// so window k scores min(end - prev_end, end - begin - 1) tokens: the first window all but its
// first token, each later one its last end - prev_end. With stride < max_length every token but
// tokens[0] is scored exactly once and gets at least max_length - stride tokens of context; with
// stride >= max_length the first token of each later window goes unscored (as in the guide, whose
// labels are shifted inside the model). The token at window position t is scored with the logits
// at position t - 1: -log softmax(logits[0, t-1, :])[token], the log-softmax computed in double as
// logit - logsumexp(logits) with the maximum subtracted first. Result: nll_sum over the scored
// tokens, their count, mean_nll = nll_sum / count and perplexity = exp(mean_nll). (The guide
// weights each window's mean loss by its count of valid labels minus one, which is exact for the
// first window only; here every scored token counts once.)
//
// `model` is called once per window that scores a token, with the window's ids as a
// Tensor<std::int64_t> of shape [1, L] or a std::span<const std::int64_t> (whichever it accepts),
// and returns logits Tensor<float or double, cpu> of shape [1, L, V] (any strides).
// Throws ValueError for max_length < 2, stride < 1, fewer than 2 tokens, a scored token outside
// [0, V), or a row of logits holding NaN or +infinity or only -infinity; ShapeError for logits of
// another shape.
template <class Model>
PerplexityResult perplexity(Model&& model, std::span<const std::int64_t> tokens, std::int64_t max_length,
                            std::int64_t stride) {
  const char* op = "metrics::perplexity";
  if (max_length < 2)
    throw_value_error(op, "max_length must be at least 2 (a window needs a context token and a target), got " +
                              std::to_string(max_length));
  if (stride < 1) throw_value_error(op, "stride must be at least 1, got " + std::to_string(stride));
  const auto n = static_cast<std::int64_t>(tokens.size());
  if (n < 2) throw_value_error(op, "needs at least 2 tokens, got " + std::to_string(n));

  PerplexityResult result;
  std::int64_t prev_end = 0;
  for (std::int64_t begin = 0; begin < n; begin += stride) {
    const std::int64_t end = std::min(begin + max_length, n);
    const std::int64_t length = end - begin;
    const std::int64_t scored = std::min(end - prev_end, length - 1);
    prev_end = end;
    if (scored > 0) {
      const auto logits = detail::call_language_model(model, tokens.subspan(static_cast<std::size_t>(begin),
                                                                           static_cast<std::size_t>(length)));
      static_assert(detail::is_cpu_float_tensor<std::remove_cvref_t<decltype(logits)>>::value,
                    "kiln::metrics::perplexity: the model must return logits as a kiln::Tensor<float> (or "
                    "<double>) on the cpu, of shape [1, L, V]");
      ++result.windows;
      const Shape& shape = logits.shape();
      if (shape.ndim != 3 || shape[0] != 1 || shape[1] != length || shape[2] < 1)
        throw_shape_error(op, "the model must return logits of shape [1, " + std::to_string(length) +
                                  ", V] for a window of " + std::to_string(length) + " tokens (tokens " +
                                  std::to_string(begin) + " to " + std::to_string(end - 1) + ")",
                          shape);
      const std::int64_t vocabulary = shape[2];
      const auto* base = logits.data();
      const index_t position_stride = logits.strides()[1], vocabulary_stride = logits.strides()[2];
      for (std::int64_t t = length - scored; t < length; ++t) {
        const std::int64_t target = tokens[static_cast<std::size_t>(begin + t)];
        if (target < 0 || target >= vocabulary)
          throw_value_error(op, "token " + std::to_string(begin + t) + " has id " + std::to_string(target) +
                                    ", outside the model's vocabulary [0, " + std::to_string(vocabulary) + ")");
        const auto* row = base + (t - 1) * position_stride;
        double maximum = -std::numeric_limits<double>::infinity();
        bool has_nan = false;
        for (std::int64_t v = 0; v < vocabulary; ++v) {
          const double x = static_cast<double>(row[v * vocabulary_stride]);
          has_nan = has_nan || std::isnan(x);
          maximum = std::max(maximum, x);
        }
        if (has_nan || !std::isfinite(maximum))
          throw_value_error(op, "the logits predicting token " + std::to_string(begin + t) + " (window position " +
                                    std::to_string(t - 1) + " of tokens " + std::to_string(begin) + " to " +
                                    std::to_string(end - 1) + ") " +
                                    (has_nan ? "hold NaN" : maximum > 0 ? "hold +infinity" : "are all -infinity"));
        double sum = 0.0;
        for (std::int64_t v = 0; v < vocabulary; ++v)
          sum += std::exp(static_cast<double>(row[v * vocabulary_stride]) - maximum);
        const double log_normalizer = maximum + std::log(sum);
        result.nll_sum += log_normalizer - static_cast<double>(row[target * vocabulary_stride]);
        ++result.token_count;
      }
    }
    if (end == n) break;
  }
  // count > 0: the first window always scores min(n, max_length) - 1 >= 1 tokens.
  result.mean_nll = result.nll_sum / static_cast<double>(result.token_count);
  result.perplexity = std::exp(result.mean_nll);
  return result;
}

}  // namespace kiln::metrics
