// kiln/metrics/auroc.hpp — the area under the ROC curve of scores against binary labels (the
// probability that a random positive scores above a random negative, ties counting one half),
// as sklearn.metrics.roc_auc_score; used to report anomaly detection.
// Builds on the standard library and core/error.hpp.
#pragma once

#include <kiln/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <string>
#include <vector>

namespace kiln::metrics {

// AUROC of `scores` (higher means more likely positive) for `positive` labels, by the
// Mann–Whitney U statistic over average ranks: (R₊ − n₊(n₊ + 1)/2) / (n₊ n₋), where R₊ is the sum
// of the positives' ranks and tied scores share the mean of their ranks. O(n log n).
inline double auroc(const std::vector<double>& scores, const std::vector<bool>& positive) {
  if (scores.size() != positive.size())
    throw ValueError("kiln::metrics::auroc: " + std::to_string(scores.size()) + " scores but " +
                     std::to_string(positive.size()) + " labels");
  const std::size_t n = scores.size();
  for (std::size_t i = 0; i < n; ++i)
    if (std::isnan(scores[i])) throw ValueError("kiln::metrics::auroc: score " + std::to_string(i) + " is NaN");
  const auto n_pos = static_cast<double>(std::count(positive.begin(), positive.end(), true));
  const double n_neg = static_cast<double>(n) - n_pos;
  if (n_pos == 0 || n_neg == 0)
    throw ValueError("kiln::metrics::auroc: needs at least one positive and one negative label (got " +
                     std::to_string(static_cast<long>(n_pos)) + " positives of " + std::to_string(n) + ")");
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  double rank_sum = 0;
  for (std::size_t i = 0; i < n;) {
    std::size_t j = i;
    while (j < n && scores[order[j]] == scores[order[i]]) ++j;
    const double mean_rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2;  // ranks i+1..j
    for (std::size_t k = i; k < j; ++k)
      if (positive[order[k]]) rank_sum += mean_rank;
    i = j;
  }
  return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg);
}

}  // namespace kiln::metrics
