// kiln/metrics/inception_score.hpp — the Inception Score of generated samples from a classifier's
// class probabilities p(y|x) [N, C] or its logits, split into groups as in Salimans et al. 2016.
// Builds on core/tensor.hpp (reading CPU tensors of any strides) and core/error.hpp.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln::metrics {

// The score: mean and standard deviation over the splits, and each split's score.
struct InceptionScoreResult {
  double mean = 0;
  double std = 0;  // population standard deviation (numpy.std, ddof = 0)
  std::vector<double> split_scores;
};

namespace detail {

// exp(mean over the rows of KL(p(y|x) ‖ p(y))) for rows [first, last) of `log_probs` (n × c,
// row-major) whose probabilities are `probs`; p(y) is those rows' mean.
inline double inception_split_score(const std::vector<double>& probs,
                                    const std::vector<double>& log_probs, index_t c, index_t first,
                                    index_t last) {
  std::vector<double> marginal(static_cast<std::size_t>(c), 0.0);
  for (index_t i = first; i < last; ++i)
    for (index_t k = 0; k < c; ++k)
      marginal[static_cast<std::size_t>(k)] += probs[static_cast<std::size_t>(i * c + k)];
  const double rows = static_cast<double>(last - first);
  std::vector<double> log_marginal(static_cast<std::size_t>(c));
  for (index_t k = 0; k < c; ++k) {
    marginal[static_cast<std::size_t>(k)] /= rows;
    log_marginal[static_cast<std::size_t>(k)] = std::log(marginal[static_cast<std::size_t>(k)]);
  }
  double kl_sum = 0;
  for (index_t i = first; i < last; ++i) {
    double kl = 0;
    for (index_t k = 0; k < c; ++k) {
      const std::size_t at = static_cast<std::size_t>(i * c + k);
      // 0 · log(0 / q) = 0 (the limit; scipy.special.rel_entr). p > 0 implies q > 0.
      if (probs[at] > 0)
        kl += probs[at] * (log_probs[at] - log_marginal[static_cast<std::size_t>(k)]);
    }
    kl_sum += kl;
  }
  return std::exp(kl_sum / rows);
}

inline InceptionScoreResult inception_score_from(const std::vector<double>& probs,
                                                 const std::vector<double>& log_probs, index_t n,
                                                 index_t c, int splits, const char* op) {
  if (splits < 1 || splits > n)
    throw ValueError(std::string("kiln::metrics::") + op +
                     ": splits must be between 1 and the number of samples (" + std::to_string(n) +
                     "), got " + std::to_string(splits));
  InceptionScoreResult out;
  for (index_t s = 0; s < splits; ++s) {
    const index_t first = s * n / splits, last = (s + 1) * n / splits;
    out.split_scores.push_back(inception_split_score(probs, log_probs, c, first, last));
  }
  double sum = 0;
  for (double v : out.split_scores) sum += v;
  out.mean = sum / static_cast<double>(splits);
  double squares = 0;
  for (double v : out.split_scores) squares += (v - out.mean) * (v - out.mean);
  out.std = std::sqrt(squares / static_cast<double>(splits));
  return out;
}

inline void check_extents(const char* op, index_t n, index_t c) {
  if (n < 1 || c < 1)
    throw ShapeError(std::string("kiln::metrics::") + op +
                     ": needs at least one sample and one class, got [" + std::to_string(n) + ", " +
                     std::to_string(c) + "]");
}

template <class T>
InceptionScoreResult is_from_probabilities(const T* data, index_t n, index_t c, index_t row_stride,
                                           index_t col_stride, int splits) {
  const char* op = "inception_score";
  check_extents(op, n, c);
  std::vector<double> probs(static_cast<std::size_t>(n * c)), logs(static_cast<std::size_t>(n * c));
  for (index_t i = 0; i < n; ++i) {
    double row_sum = 0;
    for (index_t k = 0; k < c; ++k) {
      const double p = static_cast<double>(data[i * row_stride + k * col_stride]);
      if (!(p >= 0.0 && p <= 1.0))
        throw ValueError(std::string("kiln::metrics::") + op + ": probability (row " +
                         std::to_string(i) + ", class " + std::to_string(k) + ") is " +
                         std::to_string(p) +
                         ", outside [0, 1] (pass logits to inception_score_from_logits)");
      probs[static_cast<std::size_t>(i * c + k)] = p;
      logs[static_cast<std::size_t>(i * c + k)] = p > 0 ? std::log(p) : 0.0;
      row_sum += p;
    }
    if (std::fabs(row_sum - 1.0) > 1e-3)
      throw ValueError(std::string("kiln::metrics::") + op + ": row " + std::to_string(i) +
                       " sums to " + std::to_string(row_sum) +
                       ", not 1: pass softmax outputs (or logits to inception_score_from_logits)");
  }
  return inception_score_from(probs, logs, n, c, splits, op);
}

template <class T>
InceptionScoreResult is_from_logits(const T* data, index_t n, index_t c, index_t row_stride,
                                    index_t col_stride, int splits) {
  const char* op = "inception_score_from_logits";
  check_extents(op, n, c);
  std::vector<double> probs(static_cast<std::size_t>(n * c)), logs(static_cast<std::size_t>(n * c));
  for (index_t i = 0; i < n; ++i) {
    double largest = -std::numeric_limits<double>::infinity();
    for (index_t k = 0; k < c; ++k) {
      const double z = static_cast<double>(data[i * row_stride + k * col_stride]);
      if (!std::isfinite(z))
        throw ValueError(std::string("kiln::metrics::") + op + ": logit (row " + std::to_string(i) +
                         ", class " + std::to_string(k) + ") is not finite");
      largest = std::max(largest, z);
    }
    // log_softmax(z)_k = z_k − max − log Σ exp(z_j − max), in double.
    double total = 0;
    for (index_t k = 0; k < c; ++k)
      total += std::exp(static_cast<double>(data[i * row_stride + k * col_stride]) - largest);
    const double log_total = std::log(total);
    for (index_t k = 0; k < c; ++k) {
      const std::size_t at = static_cast<std::size_t>(i * c + k);
      logs[at] = static_cast<double>(data[i * row_stride + k * col_stride]) - largest - log_total;
      probs[at] = std::exp(logs[at]);
    }
  }
  return inception_score_from(probs, logs, n, c, splits, op);
}

template <class T>
void check_matrix(const char* op, const Tensor<T>& t) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the Inception Score takes float or double tensors");
  if (!t.defined() || t.dim() != 2)
    throw ShapeError(std::string("kiln::metrics::") + op +
                     ": needs a matrix [N, C] (one row per sample), got " +
                     (t.defined() ? to_string(t.shape()) : std::string("an undefined tensor")));
}

}  // namespace detail

// The Inception Score (Salimans et al., "Improved Techniques for Training GANs", 2016) of the
// class probabilities p(y|x) of N samples over C classes (softmax outputs; each row must sum to 1
// within 1e-3 and lie in [0, 1]): the samples are cut into `splits` consecutive groups, split s
// holding rows [s·N/splits, (s+1)·N/splits) (integer division, as the original
// improved-gan/inception_score.py; when splits divides N this equals the common PyTorch
// implementation's N/splits rows per split). Per split, with p(y) the mean of its rows,
//   score = exp( mean over its rows of KL(p(y|x) ‖ p(y)) ),  KL = Σ_y p(y|x) (log p(y|x) − log
//   p(y)),
// with terms where p(y|x) = 0 counted as 0 (their limit; the original would give NaN). Returns the
// mean and the population standard deviation (numpy.std, ddof = 0) of the split scores, computed
// in double. Rows are not renormalized (as the original; scipy.stats.entropy would renormalize).
// Throws ShapeError for a non-matrix and ValueError for bad probabilities or splits outside [1, N].
template <class T>
InceptionScoreResult inception_score(const Tensor<T>& probabilities, int splits = 10) {
  detail::check_matrix("inception_score", probabilities);
  return detail::is_from_probabilities(probabilities.data(), probabilities.size(0),
                                       probabilities.size(1), probabilities.stride(0),
                                       probabilities.stride(1), splits);
}
// The same from `rows` × `classes` probabilities stored row-major and contiguous.
inline InceptionScoreResult inception_score(const float* probabilities, index_t rows,
                                            index_t classes, int splits = 10) {
  return detail::is_from_probabilities(probabilities, rows, classes, classes, 1, splits);
}
inline InceptionScoreResult inception_score(const double* probabilities, index_t rows,
                                            index_t classes, int splits = 10) {
  return detail::is_from_probabilities(probabilities, rows, classes, classes, 1, splits);
}

// The Inception Score from classifier logits [N, C]: p(y|x) = softmax(logits) and
// log p(y|x) = log_softmax(logits), both in double (so no probability underflows to a log of 0),
// then as inception_score. torchmetrics' InceptionScore likewise takes logits.
template <class T>
InceptionScoreResult inception_score_from_logits(const Tensor<T>& logits, int splits = 10) {
  detail::check_matrix("inception_score_from_logits", logits);
  return detail::is_from_logits(logits.data(), logits.size(0), logits.size(1), logits.stride(0),
                                logits.stride(1), splits);
}
inline InceptionScoreResult inception_score_from_logits(const float* logits, index_t rows,
                                                        index_t classes, int splits = 10) {
  return detail::is_from_logits(logits, rows, classes, classes, 1, splits);
}
inline InceptionScoreResult inception_score_from_logits(const double* logits, index_t rows,
                                                        index_t classes, int splits = 10) {
  return detail::is_from_logits(logits, rows, classes, classes, 1, splits);
}

}  // namespace kiln::metrics
