// kiln/metrics/bleu.hpp — corpus and sentence BLEU exactly as sacreBLEU 2.x computes them: the "13a"
// (mteval-v13a) tokenizer, n-gram counts clipped by the most frequent use in any reference, the
// closest reference length for the brevity penalty, and the none / floor / add-k / exp smoothings.
// Builds on core/error.hpp, data/unicode.hpp (UTF-8 encoding) and the standard library.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/data/unicode.hpp>  // append_utf8

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kiln::metrics {

namespace detail::text {

// The code point that starts at s[i] and its length in bytes; a byte that does not start a valid
// UTF-8 sequence comes back as itself with code_point = 0xFFFFFFFF and length 1.
struct Utf8Char {
  std::uint32_t code_point;
  std::size_t length;
};

inline Utf8Char decode_utf8(std::string_view s, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) return {b0, 1};
  std::size_t length;
  std::uint32_t cp, min_cp;
  if ((b0 & 0xE0) == 0xC0) length = 2, cp = b0 & 0x1Fu, min_cp = 0x80;
  else if ((b0 & 0xF0) == 0xE0) length = 3, cp = b0 & 0x0Fu, min_cp = 0x800;
  else if ((b0 & 0xF8) == 0xF0) length = 4, cp = b0 & 0x07u, min_cp = 0x10000;
  else return {0xFFFFFFFFu, 1};
  if (i + length > s.size()) return {0xFFFFFFFFu, 1};
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return {0xFFFFFFFFu, 1};
    cp = (cp << 6) | (byte(i + k) & 0x3Fu);
  }
  if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {0xFFFFFFFFu, 1};
  return {cp, length};
}

// Python's str.isspace(), which str.split() and str.strip() use: the 29 code points below.
inline bool is_python_whitespace(std::uint32_t cp) {
  if (cp <= 0x20) return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

// One code point lower-cased as Python's str.lower() does, for the scripts listed at
// lowercase_utf8(); other code points are returned unchanged.
inline void append_lowercase(std::string& out, std::uint32_t cp) {
  const auto between = [cp](std::uint32_t lo, std::uint32_t hi) { return cp >= lo && cp <= hi; };
  const bool even = cp % 2 == 0;
  std::uint32_t lower = cp;
  if (cp < 0x80) {
    if (between('A', 'Z')) lower = cp + 32;
  } else if (cp < 0x100) {  // Latin-1 Supplement
    if (between(0xC0, 0xDE) && cp != 0xD7) lower = cp + 32;
  } else if (cp < 0x180) {  // Latin Extended-A
    if (cp == 0x130) {  // İ becomes i followed by U+0307 COMBINING DOT ABOVE
      out += "i\xCC\x87";
      return;
    }
    if (cp == 0x178) lower = 0xFF;
    else if ((between(0x100, 0x12F) || between(0x132, 0x137) || between(0x14A, 0x177)) && even) lower = cp + 1;
    else if ((between(0x139, 0x148) || between(0x179, 0x17E)) && !even) lower = cp + 1;
  } else if (between(0x370, 0x3FF)) {  // Greek and Coptic
    if (cp == 0x370 || cp == 0x372 || cp == 0x376 || cp == 0x3F7 || cp == 0x3FA) lower = cp + 1;
    else if (cp == 0x37F) lower = 0x3F3;
    else if (cp == 0x386) lower = 0x3AC;
    else if (between(0x388, 0x38A)) lower = cp + 37;
    else if (cp == 0x38C) lower = 0x3CC;
    else if (between(0x38E, 0x38F)) lower = cp + 63;
    else if (between(0x391, 0x3A1) || between(0x3A3, 0x3AB)) lower = cp + 32;  // Σ -> σ, never final ς
    else if (cp == 0x3CF) lower = 0x3D7;
    else if (between(0x3D8, 0x3EF) && even) lower = cp + 1;
    else if (cp == 0x3F4) lower = 0x3B8;
    else if (cp == 0x3F9) lower = 0x3F2;
    else if (between(0x3FD, 0x3FF)) lower = cp - 130;
  } else if (between(0x400, 0x52F)) {  // Cyrillic and Cyrillic Supplement
    if (between(0x400, 0x40F)) lower = cp + 80;
    else if (between(0x410, 0x42F)) lower = cp + 32;
    else if ((between(0x460, 0x481) || between(0x48A, 0x4BF) || between(0x4D0, 0x52F)) && even) lower = cp + 1;
    else if (cp == 0x4C0) lower = 0x4CF;
    else if (between(0x4C1, 0x4CE) && !even) lower = cp + 1;
  } else if (cp == 0x2126) {  // OHM SIGN -> ω
    lower = 0x3C9;
  } else if (cp == 0x212A) {  // KELVIN SIGN -> k
    lower = 'k';
  } else if (cp == 0x212B) {  // ANGSTROM SIGN -> å
    lower = 0xE5;
  }
  data::append_utf8(out, static_cast<char32_t>(lower));
}

// Appends s with every occurrence of `from` (found left to right, not overlapping) replaced by
// `to`, as Python's str.replace.
inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  std::size_t start = 0;
  while (true) {
    const std::size_t hit = s.find(from, start);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(start, hit - start));
    out.append(to);
    start = hit + from.size();
  }
  out.append(s.substr(start));
  return out;
}

inline bool is_ascii_digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace detail::text

// `text` split at runs of whitespace, as Python's str.split() with no argument: the whitespace is
// the 29 code points of str.isspace() (ASCII \t \n \v \f \r, \x1c–\x1f and space, U+0085, U+00A0,
// U+1680, U+2000–U+200A, U+2028, U+2029, U+202F, U+205F, U+3000); no empty pieces. UTF-8 in and out.
inline std::vector<std::string> split_whitespace(std::string_view text) {
  std::vector<std::string> pieces;
  std::string current;
  for (std::size_t i = 0; i < text.size();) {
    const auto c = detail::text::decode_utf8(text, i);
    if (detail::text::is_python_whitespace(c.code_point)) {
      if (!current.empty()) pieces.push_back(std::move(current));
      current.clear();
    } else {
      current.append(text.substr(i, c.length));
    }
    i += c.length;
  }
  if (!current.empty()) pieces.push_back(std::move(current));
  return pieces;
}

// `text` without its trailing whitespace (Python's str.rstrip(), same whitespace as split_whitespace).
inline std::string_view rstrip_whitespace(std::string_view text) {
  std::size_t end = 0;
  for (std::size_t i = 0; i < text.size();) {
    const auto c = detail::text::decode_utf8(text, i);
    i += c.length;
    if (!detail::text::is_python_whitespace(c.code_point)) end = i;
  }
  return text.substr(0, end);
}

// `text` (UTF-8) lower-cased as Python's str.lower() does, for Basic Latin, Latin-1 Supplement,
// Latin Extended-A (İ becomes "i̇", two code points, as in Python), Greek and Coptic, Cyrillic and
// Cyrillic Supplement, and the OHM, KELVIN and ANGSTROM signs. Two differences from Python: other
// scripts are left as they are, and a capital sigma always becomes σ (Python writes ς at the end
// of a word). Bytes that are not valid UTF-8 are kept.
inline std::string lowercase_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const auto c = detail::text::decode_utf8(text, i);
    if (c.code_point == 0xFFFFFFFFu) out += text[i];
    else detail::text::append_lowercase(out, c.code_point);
    i += c.length;
  }
  return out;
}

// sacreBLEU's default tokenizer "13a" (sacrebleu/tokenizers/tokenizer_13a.py with the regular
// expressions of tokenizer_re.py), the tokenization of mteval-v13a.pl used by WMT, written as
// scans instead of regular expressions. In order:
//  1. remove "<skipped>"; remove "-\n" (a hyphen at a line break); "\n" -> " ";
//     "&quot;" -> '"', "&amp;" -> '&', "&lt;" -> '<', "&gt;" -> '>' (each over the whole line in turn);
//  2. pad the line with a space on each side;
//  3. put spaces around each of  { | } ~ [ \ ] ^ _ ` space ! " # $ % & ( ) * + : ; < = > ? @ /
//     (regex ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> " \1 ");
//  4. a period or comma after a non-digit: ([^0-9])([\.,]) -> "\1 \2 ";
//  5. a period or comma before a non-digit: ([\.,])([^0-9]) -> " \1 \2";
//  6. a dash after a digit: ([0-9])(-) -> "\1 \2 ";
//     (4–6 each scan left to right over the whole line, matches not overlapping, like re.sub)
//  7. split at whitespace (Python's str.split(), see split_whitespace) and join with single spaces.
// So "Hello, world." becomes "Hello , world .", "3.14" and "1,000" stay whole, "2-3" becomes
// "2 - 3" but "a-b" stays. Linear in the length of the line.
inline std::string tokenize_13a(std::string_view line) {
  using detail::text::is_ascii_digit;
  using detail::text::replace_all;
  std::string s = replace_all(line, "<skipped>", "");
  s = replace_all(s, "-\n", "");
  s = replace_all(s, "\n", " ");
  s = replace_all(s, "&quot;", "\"");
  s = replace_all(s, "&amp;", "&");
  s = replace_all(s, "&lt;", "<");
  s = replace_all(s, "&gt;", ">");
  s = " " + s + " ";

  std::string padded;  // step 3
  padded.reserve(s.size() * 2);
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    const bool split = (u >= 0x7B && u <= 0x7E) || (u >= 0x5B && u <= 0x60) || (u >= 0x20 && u <= 0x26) ||
                       (u >= 0x28 && u <= 0x2B) || (u >= 0x3A && u <= 0x40) || u == 0x2F;
    if (split) {
      padded += ' ';
      padded += c;
      padded += ' ';
    } else {
      padded += c;
    }
  }
  const auto is_period_or_comma = [](char c) { return c == '.' || c == ','; };
  std::string after_non_digit;  // step 4
  after_non_digit.reserve(padded.size() * 2);
  for (std::size_t i = 0; i < padded.size();) {
    if (i + 1 < padded.size() && !is_ascii_digit(padded[i]) && is_period_or_comma(padded[i + 1])) {
      after_non_digit += padded[i];
      after_non_digit += ' ';
      after_non_digit += padded[i + 1];
      after_non_digit += ' ';
      i += 2;
    } else {
      after_non_digit += padded[i++];
    }
  }
  std::string before_non_digit;  // step 5
  before_non_digit.reserve(after_non_digit.size() * 2);
  for (std::size_t i = 0; i < after_non_digit.size();) {
    if (i + 1 < after_non_digit.size() && is_period_or_comma(after_non_digit[i]) &&
        !is_ascii_digit(after_non_digit[i + 1])) {
      before_non_digit += ' ';
      before_non_digit += after_non_digit[i];
      before_non_digit += ' ';
      before_non_digit += after_non_digit[i + 1];
      i += 2;
    } else {
      before_non_digit += after_non_digit[i++];
    }
  }
  std::string dashes;  // step 6
  dashes.reserve(before_non_digit.size() * 2);
  for (std::size_t i = 0; i < before_non_digit.size();) {
    if (i + 1 < before_non_digit.size() && is_ascii_digit(before_non_digit[i]) && before_non_digit[i + 1] == '-') {
      dashes += before_non_digit[i];
      dashes += " - ";
      i += 2;
    } else {
      dashes += before_non_digit[i++];
    }
  }
  std::string out;  // step 7
  for (const std::string& token : split_whitespace(dashes)) {
    if (!out.empty()) out += ' ';
    out += token;
  }
  return out;
}

// sacreBLEU's smoothing methods (Chen & Cherry, "A Systematic Comparison of Smoothing Techniques
// for Sentence-Level BLEU", WMT 2014), for an n-gram order with no match:
//  - none:  precision 0, so BLEU is 0;
//  - floor: precision smooth_value / total (method 1; smooth_value defaults to 0.1);
//  - add_k: for n > 1, smooth_value (default 1) is added to the matches and the total of every
//           order, matched or not (method 2);
//  - exp:   the k-th order without a match gets precision 1 / (2^k total) (method 3, mteval-v13a's
//           NIST smoothing; sacreBLEU's default).
enum class BleuSmoothing { none, floor, add_k, exp };

// The tokenizer applied to hypotheses and references before counting: v13a (sacreBLEU's "13a",
// its default) or none (the text is only split at whitespace, sacreBLEU's "none").
enum class BleuTokenizer { none, v13a };

// "none", "floor", "add-k", "exp" (sacreBLEU's names); throws ValueError for another name.
inline BleuSmoothing bleu_smoothing_from_name(std::string_view name) {
  if (name == "none") return BleuSmoothing::none;
  if (name == "floor") return BleuSmoothing::floor;
  if (name == "add-k") return BleuSmoothing::add_k;
  if (name == "exp") return BleuSmoothing::exp;
  throw ValueError("kiln::metrics::bleu: unknown smoothing method \"" + std::string(name) +
                   "\" (expected none, floor, add-k or exp)");
}

// "13a" or "none" (sacreBLEU's names); throws ValueError for another name.
inline BleuTokenizer bleu_tokenizer_from_name(std::string_view name) {
  if (name == "13a") return BleuTokenizer::v13a;
  if (name == "none") return BleuTokenizer::none;
  throw ValueError("kiln::metrics::bleu: unknown tokenizer \"" + std::string(name) + "\" (expected 13a or none)");
}

// The options of sacrebleu.metrics.BLEU, with its defaults.
struct BleuOptions {
  BleuSmoothing smoothing = BleuSmoothing::exp;
  // For floor and add_k; unset means sacreBLEU's default (floor 0.1, add-k 1).
  std::optional<double> smooth_value = std::nullopt;
  bool lowercase = false;  // lower-case before tokenizing (see lowercase_utf8 for its coverage)
  BleuTokenizer tokenizer = BleuTokenizer::v13a;
  int max_ngram_order = 4;  // 1 to 32
  // Average only over the orders the hypotheses have n-grams of (orders up to the first whose
  // hypothesis n-gram total is zero), as sacreBLEU's effective_order; sentence_bleu turns it on.
  bool effective_order = false;
};

// sacreBLEU's sufficient statistics: lengths and, for n = 1..max order, the clipped matches
// (counts[n-1]) and the hypothesis n-grams (totals[n-1]). Corpus statistics are sums of segment ones.
struct BleuStatistics {
  std::size_t sys_len = 0;  // hypothesis tokens
  std::size_t ref_len = 0;  // closest reference length, summed over segments
  std::vector<std::size_t> counts;
  std::vector<std::size_t> totals;

  BleuStatistics& operator+=(const BleuStatistics& other) {
    if (counts.size() < other.counts.size()) {
      counts.resize(other.counts.size(), 0);
      totals.resize(other.totals.size(), 0);
    }
    sys_len += other.sys_len;
    ref_len += other.ref_len;
    for (std::size_t n = 0; n < other.counts.size(); ++n) {
      counts[n] += other.counts[n];
      totals[n] += other.totals[n];
    }
    return *this;
  }
};

// A BLEU score with what it was computed from, as sacreBLEU's BLEUScore.
struct BleuScore {
  double score = 0;                // 0 to 100
  std::vector<double> precisions;  // per order, in percent, after smoothing (0 for orders not reached)
  double bp = 0;                   // brevity penalty
  double ratio = 0;                // sys_len / ref_len (0 when ref_len is 0)
  std::size_t sys_len = 0;
  std::size_t ref_len = 0;
  // Clipped matches and hypothesis n-grams per order, as counted (sacreBLEU's object shows these
  // with add-k's smooth_value already added for n > 1; these are the raw counts).
  std::vector<std::size_t> counts;
  std::vector<std::size_t> totals;
};

namespace detail::bleu {

inline void check_options(const BleuOptions& o, const char* op) {
  if (o.max_ngram_order < 1 || o.max_ngram_order > 32)
    throw ValueError(std::string("kiln::metrics::") + op + ": max_ngram_order must be in [1, 32], got " +
                     std::to_string(o.max_ngram_order));
  if (o.smooth_value && !(*o.smooth_value >= 0 && std::isfinite(*o.smooth_value)))
    throw ValueError(std::string("kiln::metrics::") + op + ": smooth_value must be finite and >= 0, got " +
                     std::to_string(*o.smooth_value));
}

// sacreBLEU's my_log: log(x), and -9999999999 for 0.
inline double floored_log(double x) { return x == 0.0 ? -9999999999.0 : std::log(x); }

// The tokens of one segment after sacreBLEU's _preprocess_segment: lower-case (if asked), strip
// trailing whitespace, tokenize, then split at whitespace.
inline std::vector<std::string> preprocess(std::string_view segment, const BleuOptions& o) {
  std::string lowered;
  if (o.lowercase) {
    lowered = lowercase_utf8(segment);
    segment = lowered;
  }
  segment = rstrip_whitespace(segment);
  if (o.tokenizer == BleuTokenizer::v13a) return split_whitespace(tokenize_13a(segment));
  return split_whitespace(segment);
}

// Every n-gram of 1..max_order token ids, keyed by the ids' bytes (the order is the key's length / 4).
inline std::unordered_map<std::string, std::size_t> count_ngrams(const std::vector<std::uint32_t>& ids, int max_order) {
  std::unordered_map<std::string, std::size_t> counts;
  for (std::size_t n = 1; n <= static_cast<std::size_t>(max_order) && n <= ids.size(); ++n)
    for (std::size_t i = 0; i + n <= ids.size(); ++i)
      ++counts[std::string(reinterpret_cast<const char*>(ids.data() + i), n * sizeof(std::uint32_t))];
  return counts;
}

}  // namespace detail::bleu

// The statistics of one segment, as sacreBLEU's _extract_reference_info and
// _compute_segment_statistics: each hypothesis n-gram (n = 1..max_ngram_order) counts as matched
// at most as often as it occurs in the reference that holds it most often, and ref_len is the
// reference length closest to the hypothesis length (the shorter of two equally close ones).
// Tokens are compared as byte strings. Throws ValueError when there is no reference.
inline BleuStatistics bleu_segment_statistics(const std::vector<std::string>& hypothesis_tokens,
                                              const std::vector<std::vector<std::string>>& reference_tokens,
                                              int max_ngram_order = 4) {
  if (reference_tokens.empty())
    throw ValueError("kiln::metrics::bleu_segment_statistics: a segment needs at least one reference");
  if (max_ngram_order < 1 || max_ngram_order > 32)
    throw ValueError("kiln::metrics::bleu_segment_statistics: max_ngram_order must be in [1, 32], got " +
                     std::to_string(max_ngram_order));
  std::unordered_map<std::string_view, std::uint32_t> vocabulary;
  const auto to_ids = [&](const std::vector<std::string>& tokens) {
    std::vector<std::uint32_t> ids;
    ids.reserve(tokens.size());
    for (const std::string& t : tokens)
      ids.push_back(vocabulary.emplace(t, static_cast<std::uint32_t>(vocabulary.size())).first->second);
    return ids;
  };
  const std::vector<std::uint32_t> hypothesis = to_ids(hypothesis_tokens);
  std::unordered_map<std::string, std::size_t> reference_max;
  std::size_t closest_len = 0, closest_diff = 0;
  bool first = true;
  for (const std::vector<std::string>& reference : reference_tokens) {
    for (const auto& [ngram, count] : detail::bleu::count_ngrams(to_ids(reference), max_ngram_order)) {
      std::size_t& best = reference_max[ngram];
      best = std::max(best, count);
    }
    const std::size_t len = reference.size();
    const std::size_t diff = len > hypothesis.size() ? len - hypothesis.size() : hypothesis.size() - len;
    if (first || diff < closest_diff || (diff == closest_diff && len < closest_len)) {
      closest_diff = diff;
      closest_len = len;
      first = false;
    }
  }
  BleuStatistics stats;
  stats.sys_len = hypothesis.size();
  stats.ref_len = closest_len;
  stats.counts.assign(static_cast<std::size_t>(max_ngram_order), 0);
  stats.totals.assign(static_cast<std::size_t>(max_ngram_order), 0);
  for (const auto& [ngram, count] : detail::bleu::count_ngrams(hypothesis, max_ngram_order)) {
    const std::size_t n = ngram.size() / sizeof(std::uint32_t);
    stats.totals[n - 1] += count;
    const auto in_reference = reference_max.find(ngram);
    if (in_reference != reference_max.end()) stats.counts[n - 1] += std::min(count, in_reference->second);
  }
  return stats;
}

// BLEU from sufficient statistics, as sacreBLEU's BLEU.compute_bleu: brevity penalty
// exp(1 - ref_len / sys_len) when sys_len < ref_len (0 when sys_len is 0), else 1; precisions
// 100 * counts / totals in percent, smoothed as options.smoothing says; score
// bp * exp(sum of log precisions / order), where a zero precision contributes log = -9999999999
// (so the score is 0), and where the order is max_ngram_order, or with effective_order the
// orders before the first with no hypothesis n-grams. When nothing matches at all the score and
// every precision are 0.
inline BleuScore compute_bleu(const BleuStatistics& stats, const BleuOptions& options = {}) {
  detail::bleu::check_options(options, "compute_bleu");
  const auto order = static_cast<std::size_t>(options.max_ngram_order);
  if (stats.counts.size() != order || stats.totals.size() != order)
    throw ValueError("kiln::metrics::compute_bleu: statistics for " + std::to_string(stats.counts.size()) +
                     " n-gram orders but max_ngram_order is " + std::to_string(order));
  const double smooth_value = options.smooth_value ? *options.smooth_value
                              : options.smoothing == BleuSmoothing::floor ? 0.1
                                                                           : 1.0;
  BleuScore result;
  result.counts = stats.counts;
  result.totals = stats.totals;
  result.sys_len = stats.sys_len;
  result.ref_len = stats.ref_len;
  result.ratio = stats.ref_len ? static_cast<double>(stats.sys_len) / static_cast<double>(stats.ref_len) : 0.0;
  if (stats.sys_len < stats.ref_len)
    result.bp = stats.sys_len > 0
                    ? std::exp(1.0 - static_cast<double>(stats.ref_len) / static_cast<double>(stats.sys_len))
                    : 0.0;
  else
    result.bp = 1.0;
  result.precisions.assign(order, 0.0);
  if (std::all_of(stats.counts.begin(), stats.counts.end(), [](std::size_t c) { return c == 0; })) return result;

  double mteval_divisor = 1.0;
  std::size_t used_orders = order;
  for (std::size_t n = 1; n <= order; ++n) {
    double correct = static_cast<double>(stats.counts[n - 1]);
    double total = static_cast<double>(stats.totals[n - 1]);
    if (options.smoothing == BleuSmoothing::add_k && n > 1) {
      correct += smooth_value;
      total += smooth_value;
    }
    if (total == 0) break;
    if (options.effective_order) used_orders = n;
    if (correct == 0) {
      if (options.smoothing == BleuSmoothing::exp) {
        mteval_divisor *= 2;
        result.precisions[n - 1] = 100.0 / (mteval_divisor * total);
      } else if (options.smoothing == BleuSmoothing::floor) {
        result.precisions[n - 1] = 100.0 * smooth_value / total;
      }
    } else {
      result.precisions[n - 1] = 100.0 * correct / total;
    }
  }
  double log_sum = 0;
  for (std::size_t n = 0; n < used_orders; ++n) log_sum += detail::bleu::floored_log(result.precisions[n]);
  result.score = result.bp * std::exp(log_sum / static_cast<double>(used_orders));
  return result;
}

// Corpus BLEU as sacrebleu.corpus_bleu(hypotheses, reference_streams, ...) with the same options:
// reference_streams[r][i] is the r-th reference of hypothesis i (every stream has one line per
// hypothesis). Each segment is lower-cased if asked, stripped of trailing whitespace and
// tokenized (13a by default); empty reference lines are dropped, so segments may have different
// numbers of references (as sacreBLEU does). The segments' statistics are summed and scored by
// compute_bleu. Throws ValueError when there are no hypotheses or no reference streams, when a
// stream's line count differs from the number of hypotheses (naming both), or when every
// reference of a segment is empty. Time and memory are linear in the total text length (times
// max_ngram_order).
inline BleuScore corpus_bleu(const std::vector<std::string>& hypotheses,
                             const std::vector<std::vector<std::string>>& reference_streams,
                             const BleuOptions& options = {}) {
  detail::bleu::check_options(options, "corpus_bleu");
  if (hypotheses.empty()) throw ValueError("kiln::metrics::corpus_bleu: no hypotheses");
  if (reference_streams.empty()) throw ValueError("kiln::metrics::corpus_bleu: no reference streams");
  for (std::size_t r = 0; r < reference_streams.size(); ++r)
    if (reference_streams[r].size() != hypotheses.size())
      throw ValueError("kiln::metrics::corpus_bleu: " + std::to_string(hypotheses.size()) +
                       " hypotheses but reference stream " + std::to_string(r) + " has " +
                       std::to_string(reference_streams[r].size()) + " lines");
  BleuStatistics total;
  total.counts.assign(static_cast<std::size_t>(options.max_ngram_order), 0);
  total.totals.assign(static_cast<std::size_t>(options.max_ngram_order), 0);
  std::vector<std::vector<std::string>> references;
  for (std::size_t i = 0; i < hypotheses.size(); ++i) {
    references.clear();
    for (const auto& stream : reference_streams)
      if (!stream[i].empty()) references.push_back(detail::bleu::preprocess(stream[i], options));
    if (references.empty())
      throw ValueError("kiln::metrics::corpus_bleu: every reference of segment " + std::to_string(i) +
                       " is empty (empty reference lines are dropped, as in sacreBLEU)");
    total += bleu_segment_statistics(detail::bleu::preprocess(hypotheses[i], options), references,
                                     options.max_ngram_order);
  }
  return compute_bleu(total, options);
}

// The defaults of sacrebleu.sentence_bleu: BleuOptions' defaults with effective_order on.
inline BleuOptions sentence_bleu_options() {
  BleuOptions options;
  options.effective_order = true;
  return options;
}

// Sentence BLEU as sacrebleu.sentence_bleu(hypothesis, references): corpus BLEU of one segment
// against each of `references`, with sacreBLEU's sentence defaults (sentence_bleu_options(): exp
// smoothing and effective_order on, so a hypothesis of two tokens is scored on unigrams and
// bigrams). When passing other options keep effective_order = true to match sacreBLEU. Throws
// ValueError when `references` is empty or every reference is empty.
inline BleuScore sentence_bleu(std::string_view hypothesis, const std::vector<std::string>& references,
                               const BleuOptions& options = sentence_bleu_options()) {
  if (references.empty()) throw ValueError("kiln::metrics::sentence_bleu: no references");
  std::vector<std::vector<std::string>> streams;
  streams.reserve(references.size());
  for (const std::string& r : references) streams.push_back({r});
  return corpus_bleu({std::string(hypothesis)}, streams, options);
}

}  // namespace kiln::metrics
