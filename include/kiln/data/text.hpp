// kiln/data/text.hpp — text data for the GPT family: clean_text (whitespace, control characters,
// lower-casing, duplicate lines), the Debian fortunes corpus and its 90/10 split, TokenDataset
// (random and sequential [B, T] windows of a token sequence) and seeded token-sequence augmentation
// (masking, deletion, adjacent swaps). Builds on data/unicode.hpp, core/tensor.hpp with the CPU
// backend (batches live on the CPU), core/philox.hpp and io/safetensors.hpp (FileError, read_file_bytes).
#pragma once

#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/backend/cpu/backend.hpp>  // Backend<cpu>: Tensor storage
#include <kiln/core/tensor.hpp>
#include <kiln/data/unicode.hpp>
#include <kiln/io/safetensors.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace kiln::data {

// =============================================================================================
// clean_text
// =============================================================================================

struct CleanTextOptions {
  bool lowercase = false;          // to_lower on every code point (data/unicode.hpp: str.lower, 1:1)
  bool keep_tabs = false;          // '\t' stays a tab; otherwise it is whitespace like the others
  bool collapse_spaces = true;     // a run of spaces becomes one space
  bool trim_lines = true;          // spaces (and kept tabs) at both ends of every line are removed
  bool keep_newlines = true;       // false: line breaks are whitespace too and the result is one line
  index_t max_blank_lines = -1;    // longer runs of empty lines are cut to this many; -1: no limit
  bool deduplicate_lines = false;  // a non-empty line equal to an earlier one is dropped
};

// Normalizes `text` (UTF-8) by these rules, in this order:
//  1. Invalid UTF-8 sequences become U+FFFD (as bytes.decode("utf-8", errors="replace")).
//  2. The text is cut into lines at the boundaries of Python's str.splitlines: "\r\n", '\n',
//     '\r', '\v', '\f', U+001C, U+001D, U+001E, U+0085, U+2028, U+2029. (With keep_newlines =
//     false each boundary becomes one space instead and the text is one line.)
//  3. In each line: '\t' stays when keep_tabs, else becomes ' '; every other White_Space
//     character (the \s of data/unicode.hpp: U+00A0, U+3000, ...) becomes ' '; every other
//     control character (General_Category Cc: U+0000..U+001F, U+007F..U+009F, e.g. backspace
//     and bell) is removed; with `lowercase` the rest is lower-cased. Format characters (Cf,
//     e.g. U+200B, U+FEFF) are kept. Then runs of ' ' collapse to one (collapse_spaces) and
//     the line is trimmed of ' ' and '\t' at both ends (trim_lines).
//  4. With deduplicate_lines, a non-empty line equal to an earlier kept line is dropped (the
//     first is kept; empty lines are never dropped by this rule).
//  5. Runs of empty lines longer than max_blank_lines (>= 0) are shortened to that length.
//  6. The lines are joined with '\n'; the result ends with '\n' when the text ended with a line
//     boundary (and keep_newlines) and at least one line remains.
inline std::string clean_text(std::string_view text, const CleanTextOptions& options = {}) {
  std::vector<std::string> lines;
  std::string line;
  bool ended_with_break = false;
  const auto finish_line = [&](std::string& l) {
    std::string out;
    out.reserve(l.size());
    for (char c : l) {
      if (c == ' ' && options.collapse_spaces && !out.empty() && out.back() == ' ') continue;
      out += c;
    }
    if (options.trim_lines) {
      std::size_t b = 0, e = out.size();
      while (b < e && (out[b] == ' ' || out[b] == '\t')) ++b;
      while (e > b && (out[e - 1] == ' ' || out[e - 1] == '\t')) --e;
      out = out.substr(b, e - b);
    }
    lines.push_back(std::move(out));
    l.clear();
  };
  std::size_t pos = 0;
  while (pos < text.size()) {
    const Utf8Step step = decode_utf8_step(text, pos);
    const char32_t cp = step.code_point;  // U+FFFD when invalid
    pos += step.length;
    ended_with_break = false;
    const bool is_break = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || (cp >= 0x1C && cp <= 0x1E) ||
                          cp == 0x85 || cp == 0x2028 || cp == 0x2029;
    if (is_break) {
      if (cp == '\r' && pos < text.size() && text[pos] == '\n') ++pos;
      if (options.keep_newlines) {
        finish_line(line);
        ended_with_break = true;
      } else {
        line += ' ';
      }
      continue;
    }
    if (cp == '\t') {
      line += options.keep_tabs ? '\t' : ' ';
    } else if (is_whitespace(cp)) {
      line += ' ';
    } else if (is_control(cp)) {
      // removed
    } else {
      append_utf8(line, options.lowercase ? to_lower(cp) : cp);
    }
  }
  if (!line.empty() || (!ended_with_break && !text.empty())) finish_line(line);
  if (options.deduplicate_lines) {
    std::unordered_set<std::string> seen;
    std::vector<std::string> kept;
    for (std::string& l : lines)
      if (l.empty() || seen.insert(l).second) kept.push_back(std::move(l));
    lines.swap(kept);
  }
  if (options.max_blank_lines >= 0) {
    std::vector<std::string> kept;
    index_t blank_run = 0;
    for (std::string& l : lines) {
      blank_run = l.empty() ? blank_run + 1 : 0;
      if (blank_run <= options.max_blank_lines) kept.push_back(std::move(l));
    }
    lines.swap(kept);
  }
  std::string out;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (i) out += '\n';
    out += lines[i];
  }
  if (ended_with_break && options.keep_newlines && !lines.empty()) out += '\n';
  return out;
}

// =============================================================================================
// The fortunes corpus
// =============================================================================================

// The corpus of kiln's char-GPT quality run (shared/reference/quality/fortunes_corpus.py): the
// plain-text files of Debian 12's `fortunes` package (1:1.99.1-7.3) in byte-wise sorted order,
// without the `*.dat` indexes, the `*.u8` links and the files of `fortunes-min`.
inline constexpr std::array<std::string_view, 40> fortunes_files = {
    "art",       "ascii-art", "computers", "cookie",   "debian",        "definitions", "disclaimer", "drugs",
    "education", "ethnic",    "food",      "goedel",   "humorists",     "kids",        "knghtbrd",   "law",
    "linux",     "linuxcookie", "love",    "magic",    "medicine",      "men-women",   "miscellaneous", "news",
    "paradoxum", "people",    "perl",      "pets",     "platitudes",    "politics",    "pratchett",  "science",
    "songs-poems", "sports",  "startrek",  "tao",      "translate-me",  "wisdom",      "work",       "zippy"};
inline constexpr std::string_view fortunes_default_dir = "/usr/share/games/fortunes";
// The definition's figures for the package version above.
inline constexpr std::string_view fortunes_corpus_sha256 = "2fc106f17c1d1059a2883c69171a75c17df0d426ae6c3de824cca88b787dcc8b";
inline constexpr std::size_t fortunes_corpus_bytes = 2478275;
inline constexpr std::size_t fortunes_corpus_characters = 2478228;

// The fortunes corpus: the raw bytes of the 40 fortunes_files in `dir`, concatenated in that
// order with nothing between them (fortunes_corpus.py's corpus_bytes). Throws io::FileError
// naming a file that cannot be read (install Debian's `fortunes` package), and ValueError naming
// the file and byte offset when the text is not valid UTF-8 (the definition decodes it).
inline std::string load_fortunes_corpus(const std::string& dir = std::string(fortunes_default_dir)) {
  std::string corpus;
  corpus.reserve(fortunes_corpus_bytes);
  for (const std::string_view name : fortunes_files) {
    const std::string path = dir + "/" + std::string(name);
    std::string bytes;
    try {
      bytes = io::read_file_bytes(path);
    } catch (const io::FileError& e) {
      throw io::FileError(std::string(e.what()) + " (the fortunes corpus needs Debian's `fortunes` package)");
    }
    const std::size_t bad = find_invalid_utf8(bytes);
    if (bad != std::string_view::npos)
      throw_value_error("data::load_fortunes_corpus", path + ": invalid UTF-8 at byte " + std::to_string(bad));
    corpus += bytes;
  }
  return corpus;
}

// The split point of a sequence of n items: (numerator * n) / denominator, rounded down
// (fortunes_corpus.py's split_point for 9/10). Throws ValueError unless 0 <= numerator <=
// denominator and denominator > 0.
inline index_t split_point(index_t n, index_t numerator = 9, index_t denominator = 10) {
  if (denominator <= 0 || numerator < 0 || numerator > denominator || n < 0)
    throw_value_error("data::split_point", "need n >= 0 and 0 <= numerator <= denominator, denominator > 0; got n = " +
                                               std::to_string(n) + ", " + std::to_string(numerator) + "/" +
                                               std::to_string(denominator));
  // numerator * n may overflow 64 bits for huge n: split n = q * denominator + r.
  const index_t q = n / denominator, r = n % denominator;
  return q * numerator + (r * numerator) / denominator;
}

struct TextSplit {
  std::string train;
  std::string validation;
};

// Cuts valid UTF-8 `text` after split_point(code points) code points: train = the first
// n_train characters, validation = the rest (fortunes_corpus.py: corpus[:n_train], corpus[n_train:]).
inline TextSplit split_text(std::string_view text, index_t numerator = 9, index_t denominator = 10) {
  const std::size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) throw_value_error("data::split_text", "invalid UTF-8 at byte " + std::to_string(bad));
  const index_t n_train = split_point(static_cast<index_t>(count_code_points(text)), numerator, denominator);
  std::size_t pos = 0;
  for (index_t i = 0; i < n_train; ++i) pos += decode_utf8_step(text, pos).length;
  return TextSplit{std::string(text.substr(0, pos)), std::string(text.substr(pos))};
}

// The first split_point(n) tokens and the rest.
inline std::pair<std::vector<index_t>, std::vector<index_t>> split_tokens(std::span<const index_t> tokens,
                                                                          index_t numerator = 9,
                                                                          index_t denominator = 10) {
  const std::size_t n_train =
      static_cast<std::size_t>(split_point(static_cast<index_t>(tokens.size()), numerator, denominator));
  return {std::vector<index_t>(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(n_train)),
          std::vector<index_t>(tokens.begin() + static_cast<std::ptrdiff_t>(n_train), tokens.end())};
}

// =============================================================================================
// TokenDataset
// =============================================================================================

// Inputs x and targets y of a language-model batch, both [B, T]: y[b, t] = x[b, t + 1] within the
// window that the row was cut from.
struct TokenBatch {
  Tensor<index_t> x;
  Tensor<index_t> y;
};

// A token sequence cut into windows of block_size + 1 tokens for next-token prediction: a
// window starting at s gives x = tokens[s, s + T) and y = tokens[s + 1, s + T + 1).
class TokenDataset {
 public:
  // Throws ValueError unless block_size >= 1 and the sequence has at least block_size + 1 tokens.
  TokenDataset(std::vector<index_t> tokens, index_t block_size) : tokens_(std::move(tokens)), block_size_(block_size) {
    if (block_size_ < 1) throw_value_error("data::TokenDataset", "block_size must be >= 1, got " + std::to_string(block_size_));
    if (static_cast<index_t>(tokens_.size()) < block_size_ + 1)
      throw_value_error("data::TokenDataset", "a block of " + std::to_string(block_size_) + " needs at least " +
                                                  std::to_string(block_size_ + 1) + " tokens, the sequence has " +
                                                  std::to_string(tokens_.size()));
  }

  index_t size() const { return static_cast<index_t>(tokens_.size()); }
  index_t block_size() const { return block_size_; }
  const std::vector<index_t>& tokens() const { return tokens_; }

  // Number of possible random window starts: 0 .. size() - block_size() - 1.
  index_t num_windows() const { return size() - block_size_; }

  // B windows with starts drawn uniformly from [0, num_windows()), as nanoGPT's get_batch
  // (torch.randint(len(data) - block_size, (B,))). Reserves B Philox blocks of `rng`; start b
  // is bounded_from_block(rng.block(first + b), rng.key(), num_windows()) (core/philox.hpp), so
  // the batch depends only on the seed and offset.
  TokenBatch batch(index_t batch_size, Rng& rng) const {
    if (batch_size < 1) throw_value_error("data::TokenDataset::batch", "batch_size must be >= 1, got " + std::to_string(batch_size));
    std::vector<index_t> starts(static_cast<std::size_t>(batch_size));
    const std::uint64_t first = rng.reserve(static_cast<std::uint64_t>(batch_size));
    for (index_t b = 0; b < batch_size; ++b)
      starts[static_cast<std::size_t>(b)] = static_cast<index_t>(
          bounded_from_block(rng.block(first + static_cast<std::uint64_t>(b)), rng.key(),
                             static_cast<std::uint64_t>(num_windows())));
    return windows(starts);
  }

  // The windows starting at `starts` (each in [0, num_windows())), in that order.
  TokenBatch windows(std::span<const index_t> starts) const {
    const index_t B = static_cast<index_t>(starts.size()), T = block_size_;
    TokenBatch out{Tensor<index_t>::uninitialized(Shape{B, T}), Tensor<index_t>::uninitialized(Shape{B, T})};
    index_t* x = out.x.data();
    index_t* y = out.y.data();
    for (index_t b = 0; b < B; ++b) {
      const index_t s = starts[static_cast<std::size_t>(b)];
      if (s < 0 || s >= num_windows())
        throw_value_error("data::TokenDataset::windows", "window start " + std::to_string(s) + " (row " +
                                                             std::to_string(b) + ") is outside [0, " +
                                                             std::to_string(num_windows()) + ")");
      std::copy_n(tokens_.data() + s, T, x + b * T);
      std::copy_n(tokens_.data() + s + 1, T, y + b * T);
    }
    return out;
  }

  // Evaluation windows: starts 0, T, 2T, ... while a whole window (T + 1 tokens) fits, so the
  // targets of all windows together cover tokens 1 .. num_sequential_windows() * T, each once.
  index_t num_sequential_windows() const { return (size() - 1) / block_size_; }

  // Sequential windows first_window, first_window + 1, ... (at most batch_size; fewer at the end).
  TokenBatch sequential_batch(index_t first_window, index_t batch_size) const {
    const index_t count = num_sequential_windows();
    if (first_window < 0 || first_window >= count || batch_size < 1)
      throw_value_error("data::TokenDataset::sequential_batch",
                        "window " + std::to_string(first_window) + " with batch_size " + std::to_string(batch_size) +
                            " is outside the " + std::to_string(count) + " sequential windows");
    const index_t B = std::min(batch_size, count - first_window);
    std::vector<index_t> starts(static_cast<std::size_t>(B));
    for (index_t b = 0; b < B; ++b) starts[static_cast<std::size_t>(b)] = (first_window + b) * block_size_;
    return windows(starts);
  }

 private:
  std::vector<index_t> tokens_;
  index_t block_size_;
};

// A train and a validation dataset from split_tokens(tokens, numerator, denominator).
inline std::pair<TokenDataset, TokenDataset> split_token_dataset(std::span<const index_t> tokens, index_t block_size,
                                                                 index_t numerator = 9, index_t denominator = 10) {
  auto [train, validation] = split_tokens(tokens, numerator, denominator);
  return {TokenDataset(std::move(train), block_size), TokenDataset(std::move(validation), block_size)};
}

// =============================================================================================
// Token-sequence augmentation
// =============================================================================================
//
// Each function reserves ceil(n / 4) Philox blocks of `rng` for a sequence of n tokens (whatever
// p is) and draws decision i from word i % 4 of block first + i / 4 as a Bernoulli(p) by
// core/philox.hpp's bernoulli_from_word, so the result depends only on the seed, the offset and n.

namespace detail {

inline std::vector<bool> token_decisions(std::size_t n, double p, Rng& rng, const char* op) {
  if (!(p >= 0.0 && p <= 1.0)) throw_value_error(op, "the probability must be in [0, 1], got " + std::to_string(p));
  const std::uint64_t first = rng.reserve(Rng::blocks_for(n, 4));
  const std::uint64_t threshold = bernoulli_threshold(p);
  std::vector<bool> fire(n);
  for (std::size_t i = 0; i < n; ++i) {
    const PhiloxBlock block = rng.block(first + i / 4);
    fire[i] = bernoulli_from_word(block[static_cast<int>(i % 4)], threshold);
  }
  return fire;
}

}  // namespace detail

// Each token replaced by mask_id with probability p.
inline std::vector<index_t> mask_tokens(std::span<const index_t> tokens, index_t mask_id, double p, Rng& rng) {
  const std::vector<bool> fire = detail::token_decisions(tokens.size(), p, rng, "data::mask_tokens");
  std::vector<index_t> out(tokens.begin(), tokens.end());
  for (std::size_t i = 0; i < out.size(); ++i)
    if (fire[i]) out[i] = mask_id;
  return out;
}

// Each token dropped with probability p (the result may be empty).
inline std::vector<index_t> delete_tokens(std::span<const index_t> tokens, double p, Rng& rng) {
  const std::vector<bool> fire = detail::token_decisions(tokens.size(), p, rng, "data::delete_tokens");
  std::vector<index_t> out;
  out.reserve(tokens.size());
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (!fire[i]) out.push_back(tokens[i]);
  return out;
}

// Adjacent swaps, left to right: at position i (with i + 1 < n), when decision i fires the
// tokens i and i + 1 trade places and the scan goes on at i + 2 (so a token moves at most one
// place); otherwise it goes on at i + 1.
inline std::vector<index_t> swap_adjacent_tokens(std::span<const index_t> tokens, double p, Rng& rng) {
  const std::vector<bool> fire = detail::token_decisions(tokens.size(), p, rng, "data::swap_adjacent_tokens");
  std::vector<index_t> out(tokens.begin(), tokens.end());
  for (std::size_t i = 0; i + 1 < out.size();) {
    if (fire[i]) {
      std::swap(out[i], out[i + 1]);
      i += 2;
    } else {
      ++i;
    }
  }
  return out;
}

}  // namespace kiln::data
