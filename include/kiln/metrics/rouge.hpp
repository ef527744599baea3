// kiln/metrics/rouge.hpp — ROUGE-N, ROUGE-L and ROUGE-Lsum precision, recall and F-measure exactly as
// Google's rouge-score package computes them (rouge_scorer.py, tokenize.py, scoring.py), with its
// multi-reference rule (best F-measure) and a plain mean over a corpus.
// Builds on metrics/porter_stemmer.hpp, core/error.hpp and the standard library.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/metrics/porter_stemmer.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kiln::metrics {

// Precision, recall and F-measure (rouge_score.scoring.Score), each in [0, 1].
struct RougeScore {
  double precision = 0;
  double recall = 0;
  double fmeasure = 0;
};

// Scores by ROUGE type name ("rouge1", "rouge2", "rougeL", "rougeLsum").
using RougeScores = std::map<std::string, RougeScore>;

// The harmonic mean 2PR / (P + R), or 0 when P + R = 0 (rouge_score.scoring.fmeasure).
inline double rouge_fmeasure(double precision, double recall) {
  return precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
}

// rouge-score's tokenizer (tokenize.py with DefaultTokenizer): lower-case the text, replace every
// run of characters other than [a-z0-9] by a space, split; with `use_stemmer`, tokens longer than
// 3 characters are replaced by their Porter stem as NLTK's PorterStemmer() computes it (its
// default NLTK_EXTENSIONS mode, which is what rouge-score constructs; see porter_stemmer.hpp).
// UTF-8 input: as Python's str.lower() maps only two non-ASCII characters into [a-z0-9] —
// U+0130 İ to "i" plus a combining dot (which then separates) and U+212A KELVIN SIGN to "k" —
// those two are handled and every other non-ASCII character separates tokens. Linear time.
inline std::vector<std::string> rouge_tokenize(std::string_view text, bool use_stemmer = false) {
  std::vector<std::string> tokens;
  std::string current;
  const auto finish = [&] {
    if (current.empty()) return;
    if (use_stemmer && current.size() > 3) current = porter_stem(current, PorterMode::nltk_extensions);
    if (!current.empty()) tokens.push_back(std::move(current));
    current.clear();
  };
  const auto byte = [&](std::size_t k) { return k < text.size() ? static_cast<unsigned char>(text[k]) : 0u; };
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char c = byte(i);
    if (c >= 'A' && c <= 'Z') {
      current += static_cast<char>(c - 'A' + 'a');
      ++i;
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      current += static_cast<char>(c);
      ++i;
    } else if (c == 0xC4 && byte(i + 1) == 0xB0) {  // U+0130 -> "i" + U+0307 (a separator)
      current += 'i';
      finish();
      i += 2;
    } else if (c == 0xE2 && byte(i + 1) == 0x84 && byte(i + 2) == 0xAA) {  // U+212A -> "k"
      current += 'k';
      i += 3;
    } else {
      finish();
      ++i;
    }
  }
  finish();
  return tokens;
}

// The lines of `text` for ROUGE-Lsum: split at "\n", empty lines dropped (rouge-score's
// get_sents without split_summaries). A line of spaces is kept; it just has no tokens.
inline std::vector<std::string> rouge_lsum_sentences(std::string_view text) {
  std::vector<std::string> sentences;
  std::size_t start = 0;
  while (true) {
    const std::size_t newline = text.find('\n', start);
    const std::string_view line = text.substr(start, newline == std::string_view::npos ? std::string_view::npos : newline - start);
    if (!line.empty()) sentences.emplace_back(line);
    if (newline == std::string_view::npos) break;
    start = newline + 1;
  }
  return sentences;
}

namespace detail::rouge {

// Token strings as small integers shared by the texts being compared.
class Vocabulary {
 public:
  std::vector<std::uint32_t> ids(const std::vector<std::string>& tokens) {
    std::vector<std::uint32_t> out;
    out.reserve(tokens.size());
    for (const std::string& t : tokens)
      out.push_back(ids_.emplace(t, static_cast<std::uint32_t>(ids_.size())).first->second);
    return out;
  }

 private:
  std::unordered_map<std::string, std::uint32_t> ids_;
};

inline std::unordered_map<std::string, std::size_t> count_ngrams(const std::vector<std::uint32_t>& ids, std::size_t n) {
  std::unordered_map<std::string, std::size_t> counts;
  for (std::size_t i = 0; i + n <= ids.size(); ++i)
    ++counts[std::string(reinterpret_cast<const char*>(ids.data() + i), n * sizeof(std::uint32_t))];
  return counts;
}

inline void check_lcs_size(std::size_t target_tokens, std::size_t prediction_tokens, std::size_t max_cells,
                           const char* what) {
  if (target_tokens != 0 && prediction_tokens > max_cells / target_tokens)
    throw ValueError(std::string("kiln::metrics::") + what + ": the LCS of " + std::to_string(target_tokens) +
                     " target tokens and " + std::to_string(prediction_tokens) + " prediction tokens needs " +
                     std::to_string(target_tokens) + " x " + std::to_string(prediction_tokens) +
                     " table cells, over the limit of " + std::to_string(max_cells) +
                     " (RougeOptions::max_lcs_cells)");
}

inline std::size_t lcs_length(const std::vector<std::uint32_t>& a, const std::vector<std::uint32_t>& b) {
  std::vector<std::uint32_t> previous(b.size() + 1, 0), row(b.size() + 1, 0);
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j)
      row[j] = a[i - 1] == b[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], row[j - 1]);
    std::swap(previous, row);
  }
  return previous[b.size()];
}

// The positions in `ref` of one longest common subsequence with `can`, in increasing order, read
// back from the full table as rouge-score's _backtrack_norec does: from the bottom-right corner,
// take a match; else move left when the cell to the left is strictly larger than the one above,
// else move up. Which LCS comes out matters for ROUGE-Lsum's union.
inline std::vector<std::size_t> lcs_positions(const std::vector<std::uint32_t>& ref, const std::vector<std::uint32_t>& can) {
  const std::size_t cols = can.size() + 1;
  std::vector<std::uint32_t> table((ref.size() + 1) * cols, 0);
  for (std::size_t i = 1; i <= ref.size(); ++i)
    for (std::size_t j = 1; j <= can.size(); ++j)
      table[i * cols + j] = ref[i - 1] == can[j - 1] ? table[(i - 1) * cols + j - 1] + 1
                                                     : std::max(table[(i - 1) * cols + j], table[i * cols + j - 1]);
  std::vector<std::size_t> positions;
  std::size_t i = ref.size(), j = can.size();
  while (i > 0 && j > 0) {
    if (ref[i - 1] == can[j - 1]) {
      positions.push_back(i - 1);
      --i;
      --j;
    } else if (table[i * cols + j - 1] > table[(i - 1) * cols + j]) {
      --j;
    } else {
      --i;
    }
  }
  std::reverse(positions.begin(), positions.end());
  return positions;
}

}  // namespace detail::rouge

// Limits that keep ROUGE-L and ROUGE-Lsum bounded. The LCS of T target and P prediction tokens
// takes T x P steps (O(n m) time); ROUGE-L keeps two table rows (O(P) memory), ROUGE-Lsum keeps
// the full table of one sentence pair at a time (4 bytes a cell, at most about T x P cells).
// Inputs with T x P above max_lcs_cells are refused with a ValueError instead of running for
// minutes or exhausting memory; the default, 25 million, allows e.g. 5000 x 5000 tokens (under
// 100 MB, well under a second).
struct RougeOptions {
  bool use_stemmer = false;  // Porter-stem tokens longer than 3 characters (rouge-score's use_stemmer)
  std::size_t max_lcs_cells = 25'000'000;
};

// ROUGE-N of token lists (rouge_scorer._score_ngrams): the clipped overlap of n-grams,
// sum over the target's n-grams of min(count in target, count in prediction), divided by the
// prediction's n-gram count for precision and the target's for recall (each at least 1, so an
// empty side gives 0). Throws ValueError for n < 1.
inline RougeScore rouge_n(const std::vector<std::string>& target_tokens, const std::vector<std::string>& prediction_tokens,
                          int n) {
  if (n < 1) throw ValueError("kiln::metrics::rouge_n: n must be positive, got " + std::to_string(n));
  detail::rouge::Vocabulary vocabulary;
  const auto target = detail::rouge::count_ngrams(vocabulary.ids(target_tokens), static_cast<std::size_t>(n));
  const auto prediction = detail::rouge::count_ngrams(vocabulary.ids(prediction_tokens), static_cast<std::size_t>(n));
  std::size_t overlap = 0, target_count = 0, prediction_count = 0;
  for (const auto& [ngram, count] : target) {
    target_count += count;
    const auto it = prediction.find(ngram);
    if (it != prediction.end()) overlap += std::min(count, it->second);
  }
  for (const auto& entry : prediction) prediction_count += entry.second;
  RougeScore s;
  s.precision = static_cast<double>(overlap) / static_cast<double>(std::max<std::size_t>(prediction_count, 1));
  s.recall = static_cast<double>(overlap) / static_cast<double>(std::max<std::size_t>(target_count, 1));
  s.fmeasure = rouge_fmeasure(s.precision, s.recall);
  return s;
}

// ROUGE-L of token lists (rouge_scorer._score_lcs): L = length of the longest common
// subsequence; precision L / prediction length, recall L / target length; all 0 when either
// side is empty. Throws ValueError when target x prediction tokens exceed `max_lcs_cells`.
inline RougeScore rouge_l(const std::vector<std::string>& target_tokens, const std::vector<std::string>& prediction_tokens,
                          std::size_t max_lcs_cells = RougeOptions{}.max_lcs_cells) {
  if (target_tokens.empty() || prediction_tokens.empty()) return {};
  detail::rouge::check_lcs_size(target_tokens.size(), prediction_tokens.size(), max_lcs_cells, "rouge_l");
  detail::rouge::Vocabulary vocabulary;
  const auto target = vocabulary.ids(target_tokens);
  const auto prediction = vocabulary.ids(prediction_tokens);
  const auto lcs = static_cast<double>(detail::rouge::lcs_length(target, prediction));
  RougeScore s;
  s.precision = lcs / static_cast<double>(prediction.size());
  s.recall = lcs / static_cast<double>(target.size());
  s.fmeasure = rouge_fmeasure(s.precision, s.recall);
  return s;
}

// ROUGE-Lsum of tokenized sentences (rouge_scorer._summary_level_lcs; Lin 2004, section 3.2,
// as ROUGE-1.5.5 implements it): for each target sentence r, the union over prediction sentences
// c of the positions of one LCS of r and c (chosen as lcs_positions does); the tokens of r at
// those positions, in order, count as hits while both the target's and the prediction's
// remaining counts of that token are positive, and each hit uses one of each. Precision is
// hits / prediction tokens, recall hits / target tokens; all 0 when either side has no sentence
// or no token. Throws ValueError when target x prediction tokens exceed `max_lcs_cells`.
inline RougeScore rouge_lsum(const std::vector<std::vector<std::string>>& target_sentences,
                             const std::vector<std::vector<std::string>>& prediction_sentences,
                             std::size_t max_lcs_cells = RougeOptions{}.max_lcs_cells) {
  if (target_sentences.empty() || prediction_sentences.empty()) return {};
  std::size_t m = 0, n = 0;
  for (const auto& s : target_sentences) m += s.size();
  for (const auto& s : prediction_sentences) n += s.size();
  if (m == 0 || n == 0) return {};
  detail::rouge::check_lcs_size(m, n, max_lcs_cells, "rouge_lsum");
  detail::rouge::Vocabulary vocabulary;
  std::vector<std::vector<std::uint32_t>> target, prediction;
  for (const auto& s : target_sentences) target.push_back(vocabulary.ids(s));
  for (const auto& s : prediction_sentences) prediction.push_back(vocabulary.ids(s));
  std::unordered_map<std::uint32_t, std::size_t> target_left, prediction_left;
  for (const auto& s : target)
    for (const std::uint32_t t : s) ++target_left[t];
  for (const auto& s : prediction)
    for (const std::uint32_t t : s) ++prediction_left[t];
  std::size_t hits = 0;
  std::vector<char> in_union;
  for (const auto& r : target) {
    in_union.assign(r.size(), 0);
    for (const auto& c : prediction)
      for (const std::size_t position : detail::rouge::lcs_positions(r, c)) in_union[position] = 1;
    for (std::size_t k = 0; k < r.size(); ++k) {
      if (!in_union[k]) continue;
      std::size_t& left_in_prediction = prediction_left[r[k]];
      std::size_t& left_in_target = target_left[r[k]];
      if (left_in_prediction > 0 && left_in_target > 0) {
        ++hits;
        --left_in_prediction;
        --left_in_target;
      }
    }
  }
  RougeScore s;
  s.recall = static_cast<double>(hits) / static_cast<double>(m);
  s.precision = static_cast<double>(hits) / static_cast<double>(n);
  s.fmeasure = rouge_fmeasure(s.precision, s.recall);
  return s;
}

// rouge-score's RougeScorer: scores a prediction against a target (note the order: target
// first, as rouge-score's score(target, prediction)) for each of `rouge_types`:
//  - "rouge1" ... "rouge9": ROUGE-N on the whole texts' tokens (rouge_n);
//  - "rougeL": ROUGE-L on the whole texts' tokens, newlines ignored (rouge_l);
//  - "rougeLsum": ROUGE-Lsum on the texts' lines, split at "\n" (rouge_lsum_sentences, rouge_lsum).
// Tokens come from rouge_tokenize. Empty texts score 0. The constructor throws ValueError for
// an unknown type (rouge-score's rule: "rouge" and one digit, "rouge0" refused) or no types.
class RougeScorer {
 public:
  explicit RougeScorer(std::vector<std::string> rouge_types, RougeOptions options = {})
      : types_(std::move(rouge_types)), options_(options) {
    if (types_.empty()) throw ValueError("kiln::metrics::RougeScorer: no ROUGE types given");
    for (const std::string& type : types_) {
      if (type == "rougeL" || type == "rougeLsum") continue;
      if (type.size() == 6 && type.compare(0, 5, "rouge") == 0 && type[5] >= '0' && type[5] <= '9') {
        if (type[5] == '0') throw ValueError("kiln::metrics::RougeScorer: rouge-N needs a positive N: " + type);
        continue;
      }
      throw ValueError("kiln::metrics::RougeScorer: invalid ROUGE type \"" + type +
                       "\" (expected rouge1 ... rouge9, rougeL or rougeLsum)");
    }
  }

  const std::vector<std::string>& rouge_types() const { return types_; }
  const RougeOptions& options() const { return options_; }

  RougeScores score(std::string_view target, std::string_view prediction) const {
    RougeScores result;
    bool tokenized = false;
    std::vector<std::string> target_tokens, prediction_tokens;
    for (const std::string& type : types_) {
      if (type == "rougeLsum") {
        result[type] = rouge_lsum(sentence_tokens(target), sentence_tokens(prediction), options_.max_lcs_cells);
        continue;
      }
      if (!tokenized) {
        target_tokens = rouge_tokenize(target, options_.use_stemmer);
        prediction_tokens = rouge_tokenize(prediction, options_.use_stemmer);
        tokenized = true;
      }
      if (type == "rougeL") result[type] = rouge_l(target_tokens, prediction_tokens, options_.max_lcs_cells);
      else result[type] = rouge_n(target_tokens, prediction_tokens, type[5] - '0');
    }
    return result;
  }

  // rouge-score's score_multi: the prediction scored against each target; for each type, the
  // score of the target with the highest F-measure (the first of equal ones), so different
  // types may come from different targets. Throws ValueError when `targets` is empty.
  RougeScores score_multi(const std::vector<std::string>& targets, std::string_view prediction) const {
    if (targets.empty()) throw ValueError("kiln::metrics::RougeScorer::score_multi: no targets");
    RougeScores best;
    for (std::size_t t = 0; t < targets.size(); ++t) {
      RougeScores scores = score(targets[t], prediction);
      for (auto& [type, s] : scores) {
        auto it = best.find(type);
        if (t == 0 || s.fmeasure > it->second.fmeasure) best[type] = s;
      }
    }
    return best;
  }

 private:
  std::vector<std::vector<std::string>> sentence_tokens(std::string_view text) const {
    std::vector<std::vector<std::string>> out;
    for (const std::string& sentence : rouge_lsum_sentences(text)) out.push_back(rouge_tokenize(sentence, options_.use_stemmer));
    return out;
  }

  std::vector<std::string> types_;
  RougeOptions options_;
};

// The plain mean of per-pair scores (precision, recall and F-measure each averaged). rouge-score's
// BootstrapAggregator reports as "mid" the median of 1000 bootstrap resample means, which is
// random and only approximately this mean; this aggregator is deterministic.
class RougeMeanAggregator {
 public:
  void add(const RougeScores& scores) {
    for (const auto& [type, s] : scores) {
      Sum& sum = sums_[type];
      sum.precision += s.precision;
      sum.recall += s.recall;
      sum.fmeasure += s.fmeasure;
      ++sum.count;
    }
  }

  // The mean of each type over the scores added for it (empty when nothing was added).
  RougeScores mean() const {
    RougeScores out;
    for (const auto& [type, sum] : sums_) {
      const auto count = static_cast<double>(sum.count);
      out[type] = RougeScore{sum.precision / count, sum.recall / count, sum.fmeasure / count};
    }
    return out;
  }

 private:
  struct Sum {
    double precision = 0, recall = 0, fmeasure = 0;
    std::size_t count = 0;
  };
  std::map<std::string, Sum> sums_;
};

// Corpus ROUGE as the plain mean over pairs of scorer.score_multi(targets[i], predictions[i])
// (targets[i]: the references of prediction i, one or more). Throws ValueError when the corpus
// is empty or the counts differ (naming both).
inline RougeScores rouge_corpus_mean_multi(const RougeScorer& scorer, const std::vector<std::vector<std::string>>& targets,
                                           const std::vector<std::string>& predictions) {
  if (predictions.empty()) throw ValueError("kiln::metrics::rouge_corpus_mean: no predictions");
  if (targets.size() != predictions.size())
    throw ValueError("kiln::metrics::rouge_corpus_mean: " + std::to_string(predictions.size()) + " predictions but " +
                     std::to_string(targets.size()) + " target lists");
  RougeMeanAggregator aggregator;
  for (std::size_t i = 0; i < predictions.size(); ++i) aggregator.add(scorer.score_multi(targets[i], predictions[i]));
  return aggregator.mean();
}

// Corpus ROUGE with one target per prediction: the plain mean of scorer.score(targets[i], predictions[i]).
inline RougeScores rouge_corpus_mean(const RougeScorer& scorer, const std::vector<std::string>& targets,
                                     const std::vector<std::string>& predictions) {
  if (predictions.empty()) throw ValueError("kiln::metrics::rouge_corpus_mean: no predictions");
  if (targets.size() != predictions.size())
    throw ValueError("kiln::metrics::rouge_corpus_mean: " + std::to_string(predictions.size()) + " predictions but " +
                     std::to_string(targets.size()) + " targets");
  RougeMeanAggregator aggregator;
  for (std::size_t i = 0; i < predictions.size(); ++i) aggregator.add(scorer.score(targets[i], predictions[i]));
  return aggregator.mean();
}

}  // namespace kiln::metrics
