// kiln/data/tokenizer.hpp — tokenizers for the GPT family: CharTokenizer (one token per code point)
// and ByteLevelBPE (GPT-2's byte-level BPE: its pre-tokenizer written by hand, encode/decode,
// vocab.json + merges.txt reading and writing, and a trainer). Builds on data/unicode.hpp,
// io/json.hpp and io/safetensors.hpp (FileError, read_file_bytes, write_file_atomic).
#pragma once

#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>
#include <kiln/data/unicode.hpp>
#include <kiln/io/json.hpp>
#include <kiln/io/safetensors.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <sys/stat.h>

namespace kiln::data {

namespace detail {

// The content of the regular file `path`, refusing files larger than `max_bytes` before reading
// them. Throws io::FileError naming the file.
inline std::string read_bounded_file(const std::string& path, std::size_t max_bytes, const char* op) {
  struct ::stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) > max_bytes)
    throw io::FileError(std::string("kiln::data::") + op + ": '" + path + "' has " + std::to_string(st.st_size) +
                        " bytes, more than the limit of " + std::to_string(max_bytes));
  std::string bytes = io::read_file_bytes(path);
  if (bytes.size() > max_bytes)
    throw io::FileError(std::string("kiln::data::") + op + ": '" + path + "' has more than " +
                        std::to_string(max_bytes) + " bytes");
  return bytes;
}

}  // namespace detail

// =============================================================================================
// CharTokenizer
// =============================================================================================

// One token per Unicode code point. The vocabulary built from a text is sorted(set(text)) by code
// point, and a token id is the index in that list: the definition of the char-GPT corpus
// (shared/reference/quality/fortunes_corpus.py) and of nanoGPT's shakespeare_char/prepare.py.
class CharTokenizer {
 public:
  CharTokenizer() = default;

  // A tokenizer whose token i is vocabulary[i]. The code points must be distinct Unicode scalar
  // values (any order); throws ValueError otherwise.
  explicit CharTokenizer(std::vector<char32_t> vocabulary) : vocabulary_(std::move(vocabulary)) {
    sorted_.reserve(vocabulary_.size());
    for (std::size_t i = 0; i < vocabulary_.size(); ++i) {
      if (!is_scalar_value(vocabulary_[i]))
        throw_value_error("data::CharTokenizer", "vocabulary entry " + std::to_string(i) + " (" +
                                                     code_point_name(vocabulary_[i]) + ") is not a Unicode scalar value");
      sorted_.emplace_back(vocabulary_[i], static_cast<index_t>(i));
    }
    std::sort(sorted_.begin(), sorted_.end());
    for (std::size_t i = 1; i < sorted_.size(); ++i)
      if (sorted_[i].first == sorted_[i - 1].first)
        throw_value_error("data::CharTokenizer", "the vocabulary lists " + describe_code_point(sorted_[i].first) +
                                                     " twice (ids " + std::to_string(sorted_[i - 1].second) + " and " +
                                                     std::to_string(sorted_[i].second) + ")");
    ascii_.fill(-1);
    for (const auto& [cp, id] : sorted_)
      if (cp < 0x80) ascii_[cp] = id;
  }

  // The tokenizer of `text` (valid UTF-8): its distinct code points sorted by value. Throws
  // ValueError naming the byte offset of invalid UTF-8.
  static CharTokenizer from_text(std::string_view text) {
    std::vector<bool> seen_ascii(128, false);
    std::vector<char32_t> others;
    std::size_t pos = 0;
    while (pos < text.size()) {
      const unsigned char c = static_cast<unsigned char>(text[pos]);
      if (c < 0x80) {
        seen_ascii[c] = true;
        ++pos;
        continue;
      }
      const Utf8Step step = decode_utf8_step(text, pos);
      if (!step.valid)
        throw_value_error("data::CharTokenizer::from_text", "invalid UTF-8 at byte " + std::to_string(pos));
      others.push_back(step.code_point);
      pos += step.length;
    }
    std::sort(others.begin(), others.end());
    others.erase(std::unique(others.begin(), others.end()), others.end());
    std::vector<char32_t> vocabulary;
    for (char32_t c = 0; c < 128; ++c)
      if (seen_ascii[c]) vocabulary.push_back(c);
    vocabulary.insert(vocabulary.end(), others.begin(), others.end());
    return CharTokenizer(std::move(vocabulary));
  }

  index_t vocab_size() const { return static_cast<index_t>(vocabulary_.size()); }
  const std::vector<char32_t>& vocabulary() const { return vocabulary_; }

  // The id of `cp`, or -1 when it is not in the vocabulary.
  index_t find(char32_t cp) const {
    if (cp < 0x80) return ascii_[cp];
    const auto it = std::lower_bound(sorted_.begin(), sorted_.end(), std::pair<char32_t, index_t>(cp, -1));
    return it != sorted_.end() && it->first == cp ? it->second : -1;
  }

  // The ids of the code points of `text`. Throws ValueError for invalid UTF-8 (naming the byte
  // offset) and for a character outside the vocabulary (naming it, its code point position and
  // its byte offset).
  std::vector<index_t> encode(std::string_view text) const {
    std::vector<index_t> ids;
    ids.reserve(text.size());
    std::size_t pos = 0, position = 0;
    while (pos < text.size()) {
      const Utf8Step step = decode_utf8_step(text, pos);
      if (!step.valid)
        throw_value_error("data::CharTokenizer::encode", "invalid UTF-8 at byte " + std::to_string(pos));
      const index_t id = find(step.code_point);
      if (id < 0)
        throw_value_error("data::CharTokenizer::encode",
                          "character " + describe_code_point(step.code_point) + " at position " +
                              std::to_string(position) + " (byte " + std::to_string(pos) +
                              ") is not in the vocabulary of " + std::to_string(vocabulary_.size()) + " characters");
      ids.push_back(id);
      pos += step.length;
      ++position;
    }
    return ids;
  }

  // The UTF-8 text of `ids`; throws ValueError naming an id outside [0, vocab_size) and its
  // position.
  std::string decode(std::span<const index_t> ids) const {
    std::string out;
    out.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size())
        throw_value_error("data::CharTokenizer::decode", "token id " + std::to_string(ids[i]) + " at position " +
                                                             std::to_string(i) + " is outside the vocabulary [0, " +
                                                             std::to_string(vocab_size()) + ")");
      append_utf8(out, vocabulary_[static_cast<std::size_t>(ids[i])]);
    }
    return out;
  }

  // {"type": "char", "vocabulary": ["\n", " ", "!", ...]}: token i is the one-character string
  // at index i.
  io::Json to_json() const {
    io::Json vocabulary = io::Json::array();
    for (char32_t c : vocabulary_) vocabulary.push_back(io::Json(encode_utf8(c)));
    io::Json out = io::Json::object();
    out.set("type", "char");
    out.set("vocabulary", std::move(vocabulary));
    return out;
  }

  // Reads to_json's form; throws io::FormatError naming `source` and the offending entry.
  static CharTokenizer from_json(const io::Json& json, std::string_view source = "tokenizer JSON") {
    const auto fail = [&](std::size_t offset, const std::string& what) {
      throw io::FormatError("kiln::data::CharTokenizer: " + std::string(source) + ": byte " + std::to_string(offset) +
                            ": " + what);
    };
    if (!json.is_object()) fail(json.source_offset(), "expected an object");
    const io::Json* type = json.find("type");
    if (!type || !type->is_string() || type->as_string() != "char")
      fail(json.source_offset(), "expected \"type\": \"char\"");
    const io::Json* vocabulary = json.find("vocabulary");
    if (!vocabulary || !vocabulary->is_array()) fail(json.source_offset(), "expected a \"vocabulary\" array");
    std::vector<char32_t> code_points;
    for (std::size_t i = 0; i < vocabulary->size(); ++i) {
      const io::Json& entry = vocabulary->at(i);
      if (!entry.is_string()) fail(entry.source_offset(), "vocabulary entry " + std::to_string(i) + " is not a string");
      const std::string& s = entry.as_string();
      const Utf8Step step = s.empty() ? Utf8Step{} : decode_utf8_step(s, 0);
      if (!step.valid || step.length != s.size())
        fail(entry.source_offset(), "vocabulary entry " + std::to_string(i) + " is not exactly one character");
      code_points.push_back(step.code_point);
    }
    try {
      return CharTokenizer(std::move(code_points));
    } catch (const ValueError& e) {
      throw io::FormatError("kiln::data::CharTokenizer: " + std::string(source) + ": byte " +
                            std::to_string(vocabulary->source_offset()) + ": " + e.what());
    }
  }

  // Writes to_json() to `path` atomically.
  void save(const std::string& path) const { io::write_file_atomic(path, io::to_json(to_json(), 1) + "\n"); }

  // Reads a file written by save().
  static CharTokenizer load(const std::string& path) {
    const std::string text = detail::read_bounded_file(path, std::size_t(64) << 20, "CharTokenizer::load");
    return from_json(io::parse_json(text, path), path);
  }

 private:
  std::vector<char32_t> vocabulary_;
  std::vector<std::pair<char32_t, index_t>> sorted_;
  std::array<index_t, 128> ascii_{};
};

// =============================================================================================
// GPT-2's byte-to-character map and pre-tokenizer
// =============================================================================================

// GPT-2's bytes_to_unicode (openai/gpt-2 src/encoder.py): the printable bytes '!'..'~',
// 0xA1..0xAC and 0xAE..0xFF stand for themselves; the 68 others, in increasing order, become
// U+0100, U+0101, ... (so ' ' is U+0120 'Ġ' and '\n' is U+010A 'Ċ'). vocab.json and merges.txt
// spell tokens with these characters.
constexpr std::array<char32_t, 256> gpt2_byte_to_char() {
  std::array<char32_t, 256> map{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    map[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return map;
}

// The bytes in the order of bytes_to_unicode's list `bs`: the printable ones first, then the
// others. GPT-2's vocab gives byte bs[i] the id i; ByteLevelBPE::train does the same.
constexpr std::array<std::uint8_t, 256> gpt2_byte_order() {
  std::array<std::uint8_t, 256> order{};
  std::size_t k = 0;
  const auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  for (int b = 0; b < 256; ++b)
    if (printable(b)) order[k++] = static_cast<std::uint8_t>(b);
  for (int b = 0; b < 256; ++b)
    if (!printable(b)) order[k++] = static_cast<std::uint8_t>(b);
  return order;
}

// The byte a GPT-2 vocabulary character stands for, or -1 for any other code point.
constexpr int gpt2_char_to_byte(char32_t c) {
  if (c < 256) {
    const bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    if (printable) return static_cast<int>(c);
  }
  if (c < 256 || c >= 256 + 68) return -1;
  constexpr std::array<char32_t, 256> map = gpt2_byte_to_char();
  for (int b = 0; b < 256; ++b)
    if (map[static_cast<std::size_t>(b)] == c) return b;
  return -1;
}

// `bytes` spelled with GPT-2's byte characters, as UTF-8 (b" the" -> "Ġthe").
inline std::string gpt2_bytes_to_text(std::string_view bytes) {
  static constexpr std::array<char32_t, 256> map = gpt2_byte_to_char();
  std::string out;
  for (char c : bytes) append_utf8(out, map[static_cast<unsigned char>(c)]);
  return out;
}

namespace detail {

// What GPT-2's pattern sees in one code point. An invalid UTF-8 byte sequence (one maximal
// subpart) counts as one character of class `other`: it is neither \s, \p{L} nor \p{N}.
enum class CharClass : unsigned char { letter, number, space, other };

struct ClassifiedChar {
  char32_t code_point;  // U+FFFD for an invalid sequence
  std::uint32_t length;  // bytes
  CharClass cls;
};

inline ClassifiedChar classify_at(std::string_view text, std::size_t pos) {
  const unsigned char c = static_cast<unsigned char>(text[pos]);
  if (c < 0x80) {
    const char32_t cp = c;
    const CharClass cls = is_letter(cp) ? CharClass::letter
                          : is_number(cp) ? CharClass::number
                          : is_whitespace(cp) ? CharClass::space
                                              : CharClass::other;
    return ClassifiedChar{cp, 1, cls};
  }
  const Utf8Step step = decode_utf8_step(text, pos);
  if (!step.valid) return ClassifiedChar{replacement_character, step.length, CharClass::other};
  const char32_t cp = step.code_point;
  const CharClass cls = is_letter(cp) ? CharClass::letter
                        : is_number(cp) ? CharClass::number
                        : is_whitespace(cp) ? CharClass::space
                                            : CharClass::other;
  return ClassifiedChar{cp, step.length, cls};
}

// The end of the run of characters of class `cls` starting at `pos`.
inline std::size_t class_run_end(std::string_view text, std::size_t pos, CharClass cls) {
  while (pos < text.size()) {
    const ClassifiedChar ch = classify_at(text, pos);
    if (ch.cls != cls) break;
    pos += ch.length;
  }
  return pos;
}

}  // namespace detail

// The end (byte offset) of the GPT-2 pre-token that starts at byte `pos` < text.size(): the
// match that Python's `regex` module finds there for GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (openai/gpt-2 src/encoder.py), alternatives tried in order:
//   1. an ASCII apostrophe and s, t, re, ve, m, ll or d (lower case only);
//   2-4. an optional U+0020 then a maximal run of letters, of numbers, or of other characters
//        (neither \s, \p{L} nor \p{N});
//   5. a maximal whitespace run that reaches the end of the text, or, when a non-space follows,
//      the run minus its last character (so that character can start the next pre-token), when
//      the run has at least two characters;
//   6. otherwise the whitespace run (one character).
// Every character belongs to exactly one class, so the pre-tokens tile the text. Works on bytes:
// each invalid UTF-8 sequence is one character of the `other` class.
inline std::size_t gpt2_pretoken_end(std::string_view text, std::size_t pos) {
  using detail::CharClass;
  const std::size_t n = text.size();
  const detail::ClassifiedChar first = detail::classify_at(text, pos);
  if (first.code_point == '\'' && pos + 1 < n) {
    const char a = text[pos + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
    if (pos + 2 < n) {
      const char b = text[pos + 2];
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return pos + 3;
    }
  }
  if (first.code_point == ' ' && pos + 1 < n) {
    const detail::ClassifiedChar next = detail::classify_at(text, pos + 1);
    if (next.cls != CharClass::space) return detail::class_run_end(text, pos + 1, next.cls);
  }
  if (first.cls != CharClass::space) return detail::class_run_end(text, pos, first.cls);
  // A whitespace run: find its end and the start of its last character.
  std::size_t last_start = pos, end = pos;
  while (end < n) {
    const detail::ClassifiedChar ch = detail::classify_at(text, end);
    if (ch.cls != CharClass::space) break;
    last_start = end;
    end += ch.length;
  }
  if (end == n) return n;
  if (last_start > pos) return last_start;
  return end;
}

// The GPT-2 pre-tokens of `text` (views into it), as regex.findall(pattern, text) returns them.
inline std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = gpt2_pretoken_end(text, pos);
    pieces.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return pieces;
}

// =============================================================================================
// ByteLevelBPE
// =============================================================================================

// Bounds on what ByteLevelBPE reads and builds; a file or token beyond them is refused with an
// error rather than read.
struct BpeLimits {
  std::size_t max_file_bytes = std::size_t(64) << 20;  // vocab.json or merges.txt
  std::size_t max_vocab_size = std::size_t(1) << 22;  // tokens (ids must be below this too)
  std::size_t max_merges = std::size_t(1) << 22;
  std::size_t max_token_bytes = 1024;  // bytes a token stands for
};

// Options of ByteLevelBPE::train.
struct BpeTrainOptions {
  // A pair is merged only when it occurs at least this often; training stops earlier than
  // vocab_size when no pair does.
  std::int64_t min_pair_count = 2;
  // Appended to the vocabulary after the merges (their ids follow the merged tokens); their
  // occurrences in the training text are cut out before counting.
  std::vector<std::string> special_tokens;
};

// Whether encode() treats the registered special tokens (e.g. "<|endoftext|>") as such.
enum class SpecialTokens : unsigned char {
  as_text,  // special token strings are ordinary text (GPT-2's encoder without its pattern tweak)
  allowed,  // every registered special token in the text becomes its id
};

// GPT-2's byte-level BPE (openai/gpt-2 src/encoder.py, class Encoder), on bytes:
//   encode: the text is cut into pre-tokens (gpt2_pretoken_end); each pre-token's bytes start as
//     one token per byte and are merged by rank: repeatedly take the adjacent pair with the
//     lowest rank in merges.txt and merge all its occurrences left to right, until no adjacent
//     pair has a rank (encoder.py's bpe()); results are cached per pre-token.
//   decode: the concatenated bytes of the tokens (encoder.py decodes these with
//     errors="replace": decode_lossy).
// Because it works on bytes, any byte string (invalid UTF-8 included) encodes and decodes back
// exactly. A vocabulary must hold the 256 single-byte tokens; every merge's parts and result
// must be tokens of it. Token ids need not be contiguous. encode is safe to call from several
// threads (the cache is guarded by a mutex).
class ByteLevelBPE {
 public:
  using Id = std::int32_t;

  // The 256 byte tokens (ids in GPT-2's byte order, gpt2_byte_order) and no merges.
  ByteLevelBPE() : cache_(std::make_unique<Cache>()) {
    constexpr std::array<std::uint8_t, 256> order = gpt2_byte_order();
    for (std::size_t i = 0; i < 256; ++i) add_token(static_cast<Id>(i), std::string(1, static_cast<char>(order[i])));
    finish_byte_ids("ByteLevelBPE");
  }
  ByteLevelBPE(const ByteLevelBPE& other)
      : id_to_bytes_(other.id_to_bytes_),
        present_(other.present_),
        bytes_to_id_(other.bytes_to_id_),
        byte_id_(other.byte_id_),
        merges_(other.merges_),
        merge_of_(other.merge_of_),
        specials_(other.specials_),
        token_count_(other.token_count_),
        cache_(std::make_unique<Cache>()) {}
  ByteLevelBPE(ByteLevelBPE&&) noexcept = default;
  ByteLevelBPE& operator=(const ByteLevelBPE& other) {
    if (this != &other) *this = ByteLevelBPE(other);
    return *this;
  }
  ByteLevelBPE& operator=(ByteLevelBPE&&) noexcept = default;
  ~ByteLevelBPE() = default;

  // Reads GPT-2's vocab.json (an object: token spelled in GPT-2's byte characters -> id) and
  // merges.txt (a first line starting with "#version" is skipped; then one merge per line, the
  // two tokens separated by one space; empty lines and a trailing '\r' are ignored; the line
  // number is the rank order). "<|endoftext|>", when in the vocabulary, is registered as a
  // special token. Every malformed input throws io::FormatError (or io::JsonError) naming the
  // file and the byte offset or line; io::FileError when a file cannot be read or is larger than
  // limits.max_file_bytes.
  static ByteLevelBPE load(const std::string& vocab_json_path, const std::string& merges_txt_path,
                           const BpeLimits& limits = {}) {
    const std::string vocab = detail::read_bounded_file(vocab_json_path, limits.max_file_bytes, "ByteLevelBPE::load");
    const std::string merges = detail::read_bounded_file(merges_txt_path, limits.max_file_bytes, "ByteLevelBPE::load");
    return from_text(vocab, merges, vocab_json_path, merges_txt_path, limits);
  }

  // load() from the files' contents; the sources name them in messages.
  static ByteLevelBPE from_text(std::string_view vocab_json, std::string_view merges_txt,
                                std::string_view vocab_source = "vocab.json",
                                std::string_view merges_source = "merges.txt", const BpeLimits& limits = {}) {
    ByteLevelBPE bpe(Empty{});
    bpe.read_vocab(vocab_json, vocab_source, limits);
    bpe.read_merges(merges_txt, merges_source, limits);
    if (bpe.find_token_bytes("<|endoftext|>") >= 0) bpe.add_special_token("<|endoftext|>");
    return bpe;
  }

  // Trains a vocabulary of (at most) `vocab_size` tokens on `text`: the 256 byte tokens (ids
  // 0..255 in GPT-2's byte order), one token per merge, then options.special_tokens.
  //   1. The text (bytes) is cut at occurrences of the special tokens and into GPT-2 pre-tokens;
  //      equal pre-tokens are counted once with their frequency (merges never cross pre-tokens).
  //   2. Each step merges the adjacent pair with the highest count, counting every adjacent
  //      position in every pre-token times its frequency (overlapping pairs such as the two
  //      "aa" in "aaa" both count). Ties go to the pair whose (left bytes, right bytes) is
  //      smallest in lexicographic byte order, so the result does not depend on hashing or on
  //      the order of the text. The pair is merged left to right in every pre-token that holds
  //      it (as encode does). A result that is already a token (e.g. "abc" from "ab"+"c" and
  //      later "a"+"bc") keeps its id and adds no token.
  //   3. Training stops at vocab_size tokens or when no pair occurs options.min_pair_count times.
  // Pair counts are kept incrementally (only the pre-tokens that hold the merged pair are
  // revisited) and candidates sit in a max-heap with lazy updates.
  static ByteLevelBPE train(std::string_view text, index_t vocab_size, const BpeTrainOptions& options = {});

  // Registers `token` (UTF-8 text, at most max_token_bytes) as a special token: encode with
  // SpecialTokens::allowed maps its occurrences to its id. It takes the id of the equal token
  // when the vocabulary has one, else the next id after the largest. Returns the id.
  index_t add_special_token(const std::string& token) {
    if (token.empty() || token.size() > BpeLimits{}.max_token_bytes)
      throw_value_error("data::ByteLevelBPE::add_special_token",
                        "a special token must have 1 to " + std::to_string(BpeLimits{}.max_token_bytes) + " bytes");
    Id id = find_token_bytes(token);
    if (id < 0) {
      id = static_cast<Id>(id_to_bytes_.size());
      add_token(id, token);
    }
    for (const auto& [text, existing] : specials_)
      if (text == token) return existing;
    specials_.emplace_back(token, id);
    return id;
  }

  // The registered special tokens and their ids.
  const std::vector<std::pair<std::string, Id>>& special_tokens() const { return specials_; }

  // The token ids of `text` (any bytes). With SpecialTokens::allowed, the text is first cut at
  // the registered special tokens (leftmost occurrence first, the longest when several start at
  // the same byte), each becoming its id; the pieces between are encoded as usual.
  std::vector<index_t> encode(std::string_view text, SpecialTokens special = SpecialTokens::as_text) const {
    std::vector<index_t> ids;
    if (special == SpecialTokens::as_text || specials_.empty()) {
      encode_ordinary(text, ids);
      return ids;
    }
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t best_at = std::string_view::npos, best_length = 0;
      Id best_id = -1;
      for (const auto& [token, id] : specials_) {
        const std::size_t at = text.find(token, pos);
        if (at == std::string_view::npos) continue;
        if (at < best_at || (at == best_at && token.size() > best_length)) {
          best_at = at;
          best_length = token.size();
          best_id = id;
        }
      }
      if (best_at == std::string_view::npos) {
        encode_ordinary(text.substr(pos), ids);
        break;
      }
      encode_ordinary(text.substr(pos, best_at - pos), ids);
      ids.push_back(best_id);
      pos = best_at + best_length;
    }
    return ids;
  }

  // The bytes of the tokens, concatenated. Throws ValueError naming an unknown id and its
  // position.
  std::string decode(std::span<const index_t> ids) const {
    std::string out;
    for (std::size_t i = 0; i < ids.size(); ++i) out += token_bytes_checked(ids[i], i);
    return out;
  }

  // decode() as valid UTF-8: each invalid sequence becomes U+FFFD, as encoder.py's
  // bytearray(...).decode("utf-8", errors="replace").
  std::string decode_lossy(std::span<const index_t> ids) const { return replace_invalid_utf8(decode(ids)); }

  // Number of tokens (ids in use); ids lie in [0, id_bound()).
  index_t vocab_size() const { return token_count_; }
  index_t id_bound() const { return static_cast<index_t>(id_to_bytes_.size()); }
  bool has_id(index_t id) const {
    return id >= 0 && id < id_bound() && present_[static_cast<std::size_t>(id)];
  }
  // The bytes token `id` stands for; throws ValueError for an unknown id.
  const std::string& token_bytes(index_t id) const { return token_bytes_checked(id, std::string_view::npos); }
  // Token `id` spelled as in vocab.json (b" the" -> "Ġthe").
  std::string token_text(index_t id) const { return gpt2_bytes_to_text(token_bytes(id)); }
  // The id of the token standing for `bytes`, or -1.
  index_t find_token(std::string_view bytes) const { return find_token_bytes(bytes); }
  // The merges in rank order, as (left id, right id).
  const std::vector<std::pair<Id, Id>>& merges() const { return merges_; }

  // vocab.json: every token (spelled in GPT-2's byte characters) -> id, in id order.
  std::string vocab_json() const {
    io::Json vocab = io::Json::object();
    io::Json::Object& members = vocab.as_object();
    members.reserve(static_cast<std::size_t>(token_count_));
    for (std::size_t id = 0; id < id_to_bytes_.size(); ++id)
      if (present_[id]) members.emplace_back(gpt2_bytes_to_text(id_to_bytes_[id]), io::Json(static_cast<index_t>(id)));
    return io::to_json(vocab) + "\n";
  }

  // merges.txt: "#version: 0.2" then "left right" per merge in rank order, each line ending in
  // '\n' (encoder.py drops the text after the last '\n').
  std::string merges_txt() const {
    std::string out = "#version: 0.2\n";
    for (const auto& [left, right] : merges_) {
      out += gpt2_bytes_to_text(id_to_bytes_[static_cast<std::size_t>(left)]);
      out += ' ';
      out += gpt2_bytes_to_text(id_to_bytes_[static_cast<std::size_t>(right)]);
      out += '\n';
    }
    return out;
  }

  // Writes vocab_json() and merges_txt() (atomically, each).
  void save(const std::string& vocab_json_path, const std::string& merges_txt_path) const {
    io::write_file_atomic(vocab_json_path, vocab_json());
    io::write_file_atomic(merges_txt_path, merges_txt());
  }

  // The ids of one pre-token's bytes after all merges (no cache): encoder.py's bpe().
  std::vector<Id> bpe(std::string_view piece) const {
    std::vector<Id> out;
    merge_piece(piece, out);
    return out;
  }

 private:
  struct Empty {};
  explicit ByteLevelBPE(Empty) : cache_(std::make_unique<Cache>()) {}

  struct MergeInfo {
    Id rank;
    Id result;
  };
  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<Id>> pieces;
  };
  static constexpr std::size_t max_cached_piece_bytes = 64;
  static constexpr std::size_t max_cache_entries = std::size_t(1) << 18;

  std::vector<std::string> id_to_bytes_;
  std::vector<bool> present_;
  std::unordered_map<std::string, Id> bytes_to_id_;
  std::array<Id, 256> byte_id_{};
  std::vector<std::pair<Id, Id>> merges_;
  std::unordered_map<std::uint64_t, MergeInfo> merge_of_;
  std::vector<std::pair<std::string, Id>> specials_;
  index_t token_count_ = 0;
  std::unique_ptr<Cache> cache_;

  static std::uint64_t pair_key(Id left, Id right) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
  }

  Id find_token_bytes(std::string_view bytes) const {
    const auto it = bytes_to_id_.find(std::string(bytes));
    return it == bytes_to_id_.end() ? -1 : it->second;
  }

  void add_token(Id id, std::string bytes) {
    const std::size_t slot = static_cast<std::size_t>(id);
    if (slot >= id_to_bytes_.size()) {
      id_to_bytes_.resize(slot + 1);
      present_.resize(slot + 1, false);
    }
    bytes_to_id_.emplace(bytes, id);
    id_to_bytes_[slot] = std::move(bytes);
    present_[slot] = true;
    ++token_count_;
  }

  void finish_byte_ids(std::string_view source) {
    for (int b = 0; b < 256; ++b) {
      const Id id = find_token_bytes(std::string(1, static_cast<char>(b)));
      if (id < 0)
        throw io::FormatError("kiln::data::ByteLevelBPE: " + std::string(source) + ": the vocabulary has no token for byte " +
                              std::to_string(b) + " (\"" + gpt2_bytes_to_text(std::string(1, static_cast<char>(b))) +
                              "\"); a byte-level vocabulary needs all 256");
      byte_id_[static_cast<std::size_t>(b)] = id;
    }
  }

  const std::string& token_bytes_checked(index_t id, std::size_t position) const {
    if (!has_id(id))
      throw_value_error("data::ByteLevelBPE::decode",
                        "token id " + std::to_string(id) +
                            (position == std::string_view::npos ? std::string() : " at position " + std::to_string(position)) +
                            " is not in the vocabulary");
    return id_to_bytes_[static_cast<std::size_t>(id)];
  }

  void read_vocab(std::string_view text, std::string_view source, const BpeLimits& limits) {
    const auto fail = [&](std::size_t offset, const std::string& what) {
      throw io::FormatError("kiln::data::ByteLevelBPE: " + std::string(source) + ": byte " + std::to_string(offset) +
                            ": " + what);
    };
    if (text.size() > limits.max_file_bytes)
      fail(0, "the text has " + std::to_string(text.size()) + " bytes, more than the limit of " +
                  std::to_string(limits.max_file_bytes));
    const io::Json vocab = io::parse_json(text, source);
    if (!vocab.is_object()) fail(vocab.source_offset(), "expected an object mapping tokens to ids");
    if (vocab.size() > limits.max_vocab_size)
      fail(vocab.source_offset(), "the vocabulary has " + std::to_string(vocab.size()) + " tokens, more than the limit of " +
                                      std::to_string(limits.max_vocab_size));
    for (const auto& [key, value] : vocab.as_object()) {
      const std::string quoted = "token \"" + key + "\"";
      if (!value.is_integer() || value.as_int64() < 0 ||
          static_cast<std::uint64_t>(value.as_int64()) >= limits.max_vocab_size)
        fail(value.source_offset(), quoted + ": the id must be an integer in [0, " + std::to_string(limits.max_vocab_size) + ")");
      std::string bytes;
      std::size_t pos = 0;
      while (pos < key.size()) {
        const Utf8Step step = decode_utf8_step(key, pos);
        const int b = step.valid ? gpt2_char_to_byte(step.code_point) : -1;
        if (b < 0)
          fail(value.source_offset(), quoted + " contains " + code_point_name(step.code_point) +
                                          ", which is not one of GPT-2's 256 byte characters");
        bytes += static_cast<char>(b);
        pos += step.length;
      }
      if (bytes.empty()) fail(value.source_offset(), "the empty string is not a token");
      if (bytes.size() > limits.max_token_bytes)
        fail(value.source_offset(), quoted + " stands for " + std::to_string(bytes.size()) +
                                        " bytes, more than the limit of " + std::to_string(limits.max_token_bytes));
      const Id id = static_cast<Id>(value.as_int64());
      if (has_id(id))
        fail(value.source_offset(), quoted + " has the id " + std::to_string(id) + " of token \"" +
                                        gpt2_bytes_to_text(id_to_bytes_[static_cast<std::size_t>(id)]) + "\"");
      add_token(id, std::move(bytes));
    }
    finish_byte_ids(source);
  }

  void read_merges(std::string_view text, std::string_view source, const BpeLimits& limits) {
    const auto fail = [&](std::size_t line, const std::string& what) {
      throw io::FormatError("kiln::data::ByteLevelBPE: " + std::string(source) + ": line " + std::to_string(line) + ": " +
                            what);
    };
    if (text.size() > limits.max_file_bytes)
      fail(1, "the text has " + std::to_string(text.size()) + " bytes, more than the limit of " +
                  std::to_string(limits.max_file_bytes));
    std::unordered_map<std::uint64_t, std::size_t> line_of;
    std::size_t pos = 0, line = 0;
    while (pos < text.size()) {
      std::size_t end = text.find('\n', pos);
      if (end == std::string_view::npos) end = text.size();
      std::string_view content = text.substr(pos, end - pos);
      pos = end + 1;
      ++line;
      if (!content.empty() && content.back() == '\r') content.remove_suffix(1);
      if (line == 1 && content.starts_with("#version")) continue;
      if (content.empty()) continue;
      const std::size_t space = content.find(' ');
      if (space == std::string_view::npos || space == 0 || space + 1 == content.size() ||
          content.find(' ', space + 1) != std::string_view::npos)
        fail(line, "expected two tokens separated by one space, found \"" + std::string(content.substr(0, 200)) + "\"");
      if (merges_.size() >= limits.max_merges)
        fail(line, "more merges than the limit of " + std::to_string(limits.max_merges));
      Id parts[2];
      std::string joined;
      for (int k = 0; k < 2; ++k) {
        const std::string_view part = k == 0 ? content.substr(0, space) : content.substr(space + 1);
        std::string bytes;
        std::size_t p = 0;
        while (p < part.size()) {
          const Utf8Step step = decode_utf8_step(part, p);
          const int b = step.valid ? gpt2_char_to_byte(step.code_point) : -1;
          if (b < 0)
            fail(line, "token \"" + std::string(part.substr(0, 200)) + "\" contains " + code_point_name(step.code_point) +
                           ", which is not one of GPT-2's 256 byte characters");
          bytes += static_cast<char>(b);
          p += step.length;
        }
        parts[k] = find_token_bytes(bytes);
        if (parts[k] < 0) fail(line, "token \"" + std::string(part.substr(0, 200)) + "\" is not in the vocabulary");
        joined += bytes;
      }
      const Id result = find_token_bytes(joined);
      if (result < 0)
        fail(line, "the merge's result \"" + gpt2_bytes_to_text(joined).substr(0, 200) + "\" is not in the vocabulary");
      const std::uint64_t key = pair_key(parts[0], parts[1]);
      const auto [it, inserted] = line_of.emplace(key, line);
      if (!inserted) fail(line, "the merge \"" + std::string(content) + "\" repeats line " + std::to_string(it->second));
      merge_of_.emplace(key, MergeInfo{static_cast<Id>(merges_.size()), result});
      merges_.emplace_back(parts[0], parts[1]);
    }
  }

  // encoder.py's bpe() on the bytes of one pre-token, appended to `out`. A linked list of
  // symbols and a min-heap of candidate pairs keyed by (rank, position): all entries of the
  // lowest rank are taken together and applied left to right (skipping those that an earlier
  // merge of the batch consumed), then the pairs the merges created are pushed. That is
  // exactly "merge every occurrence of the lowest-ranked pair, left to right, repeat", in
  // O(n log n) for a pre-token of n bytes.
  void merge_piece(std::string_view piece, std::vector<Id>& out) const {
    const std::size_t n = piece.size();
    if (n == 0) return;
    if (n == 1 || merges_.empty()) {
      for (char c : piece) out.push_back(byte_id_[static_cast<unsigned char>(c)]);
      return;
    }
    std::vector<Id> symbol(n);
    std::vector<std::int64_t> prev(n), next(n);
    for (std::size_t i = 0; i < n; ++i) {
      symbol[i] = byte_id_[static_cast<unsigned char>(piece[i])];
      prev[i] = static_cast<std::int64_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<std::int64_t>(i + 1) : -1;
    }
    struct Candidate {
      Id rank;
      std::int64_t position;
      Id left, right;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : position > o.position; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    const auto push_pair = [&](std::int64_t left_position) {
      if (left_position < 0) return;
      const std::int64_t right_position = next[static_cast<std::size_t>(left_position)];
      if (right_position < 0) return;
      const Id left = symbol[static_cast<std::size_t>(left_position)];
      const Id right = symbol[static_cast<std::size_t>(right_position)];
      const auto it = merge_of_.find(pair_key(left, right));
      if (it != merge_of_.end()) heap.push(Candidate{it->second.rank, left_position, left, right});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push_pair(static_cast<std::int64_t>(i));
    std::vector<std::int64_t> merged;
    while (!heap.empty()) {
      const Id rank = heap.top().rank;
      const Id result = merge_of_.find(pair_key(heap.top().left, heap.top().right))->second.result;
      merged.clear();
      while (!heap.empty() && heap.top().rank == rank) {
        const Candidate c = heap.top();
        heap.pop();
        const std::size_t p = static_cast<std::size_t>(c.position);
        if (symbol[p] != c.left || next[p] < 0) continue;
        const std::size_t q = static_cast<std::size_t>(next[p]);
        if (symbol[q] != c.right) continue;
        symbol[p] = result;
        symbol[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0) prev[static_cast<std::size_t>(next[q])] = static_cast<std::int64_t>(p);
        merged.push_back(static_cast<std::int64_t>(p));
      }
      for (const std::int64_t p : merged) {
        if (symbol[static_cast<std::size_t>(p)] < 0) continue;
        push_pair(prev[static_cast<std::size_t>(p)]);
        push_pair(p);
      }
    }
    for (std::int64_t p = 0; p >= 0; p = next[static_cast<std::size_t>(p)]) out.push_back(symbol[static_cast<std::size_t>(p)]);
  }

  void encode_ordinary(std::string_view text, std::vector<index_t>& ids) const {
    std::vector<Id> merged;
    std::size_t pos = 0;
    while (pos < text.size()) {
      const std::size_t end = gpt2_pretoken_end(text, pos);
      const std::string_view piece = text.substr(pos, end - pos);
      pos = end;
      if (piece.size() == 1) {
        ids.push_back(byte_id_[static_cast<unsigned char>(piece[0])]);
        continue;
      }
      if (piece.size() <= max_cached_piece_bytes) {
        {
          std::lock_guard<std::mutex> lock(cache_->mutex);
          const auto it = cache_->pieces.find(std::string(piece));
          if (it != cache_->pieces.end()) {
            ids.insert(ids.end(), it->second.begin(), it->second.end());
            continue;
          }
        }
        merged.clear();
        merge_piece(piece, merged);
        ids.insert(ids.end(), merged.begin(), merged.end());
        std::lock_guard<std::mutex> lock(cache_->mutex);
        if (cache_->pieces.size() >= max_cache_entries) cache_->pieces.clear();
        cache_->pieces.emplace(std::string(piece), merged);
      } else {
        merged.clear();
        merge_piece(piece, merged);
        ids.insert(ids.end(), merged.begin(), merged.end());
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------

inline ByteLevelBPE ByteLevelBPE::train(std::string_view text, index_t vocab_size, const BpeTrainOptions& options) {
  const index_t n_special = static_cast<index_t>(options.special_tokens.size());
  if (vocab_size < 256 + n_special)
    throw_value_error("data::ByteLevelBPE::train", "vocab_size " + std::to_string(vocab_size) +
                                                       " is below the 256 byte tokens plus " +
                                                       std::to_string(n_special) + " special token(s)");
  if (static_cast<std::uint64_t>(vocab_size) > BpeLimits{}.max_vocab_size)
    throw_value_error("data::ByteLevelBPE::train", "vocab_size " + std::to_string(vocab_size) + " is above the limit of " +
                                                       std::to_string(BpeLimits{}.max_vocab_size));
  for (const std::string& s : options.special_tokens)
    if (s.empty()) throw_value_error("data::ByteLevelBPE::train", "a special token is empty");

  ByteLevelBPE bpe;  // the 256 byte tokens
  const index_t target_tokens = vocab_size - n_special;

  // 1. Distinct pre-tokens and their frequencies.
  std::unordered_map<std::string_view, std::int64_t> frequency;
  const auto count_pieces = [&](std::string_view segment) {
    std::size_t pos = 0;
    while (pos < segment.size()) {
      const std::size_t end = gpt2_pretoken_end(segment, pos);
      ++frequency[segment.substr(pos, end - pos)];
      pos = end;
    }
  };
  {
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t cut = text.size(), cut_length = 0;
      for (const std::string& s : options.special_tokens) {
        const std::size_t at = text.find(s, pos);
        if (at != std::string_view::npos && (at < cut || (at == cut && s.size() > cut_length))) {
          cut = at;
          cut_length = s.size();
        }
      }
      count_pieces(text.substr(pos, cut - pos));
      pos = cut + cut_length;
    }
  }
  std::vector<std::pair<std::string_view, std::int64_t>> pieces(frequency.begin(), frequency.end());
  std::sort(pieces.begin(), pieces.end());  // a fixed order, independent of hashing
  frequency.clear();

  struct Word {
    std::vector<Id> symbols;
    std::int64_t count;
    std::uint32_t visited;  // the merge step that last rewrote this word
  };
  std::vector<Word> words;
  words.reserve(pieces.size());
  for (const auto& [piece, count] : pieces) {
    Word w{{}, count, 0};
    w.symbols.reserve(piece.size());
    for (char c : piece) w.symbols.push_back(bpe.byte_id_[static_cast<unsigned char>(c)]);
    words.push_back(std::move(w));
  }

  // 2. Pair counts and where each pair occurs.
  std::unordered_map<std::uint64_t, std::int64_t> pair_count;
  std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> where;
  for (std::size_t w = 0; w < words.size(); ++w) {
    const std::vector<Id>& s = words[w].symbols;
    for (std::size_t i = 0; i + 1 < s.size(); ++i) {
      const std::uint64_t key = pair_key(s[i], s[i + 1]);
      pair_count[key] += words[w].count;
      std::vector<std::uint32_t>& list = where[key];
      if (list.empty() || list.back() != w) list.push_back(static_cast<std::uint32_t>(w));
    }
  }

  // Heap order: higher count first; ties: smaller (left bytes, right bytes) first.
  struct Candidate {
    std::int64_t count;
    std::uint64_t key;
  };
  const auto comes_after = [&bpe](const Candidate& a, const Candidate& b) {
    if (a.count != b.count) return a.count < b.count;
    const std::string& al = bpe.id_to_bytes_[static_cast<std::size_t>(a.key >> 32)];
    const std::string& bl = bpe.id_to_bytes_[static_cast<std::size_t>(b.key >> 32)];
    if (al != bl) return al > bl;
    return bpe.id_to_bytes_[static_cast<std::size_t>(a.key & 0xFFFFFFFFu)] >
           bpe.id_to_bytes_[static_cast<std::size_t>(b.key & 0xFFFFFFFFu)];
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(comes_after)> heap(comes_after);
  for (const auto& [key, count] : pair_count) heap.push(Candidate{count, key});

  std::uint32_t step = 0;
  std::vector<std::uint64_t> increased;
  std::vector<Id> rewritten;
  const std::int64_t min_count = std::max<std::int64_t>(options.min_pair_count, 1);
  while (bpe.token_count_ < target_tokens && !heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    const auto found = pair_count.find(top.key);
    const std::int64_t current = found == pair_count.end() ? 0 : found->second;
    if (current != top.count) {  // stale entry: requeue with the current count
      if (current > 0) heap.push(Candidate{current, top.key});
      continue;
    }
    if (current < min_count) break;
    ++step;
    const Id left = static_cast<Id>(top.key >> 32), right = static_cast<Id>(top.key & 0xFFFFFFFFu);
    const std::string joined =
        bpe.id_to_bytes_[static_cast<std::size_t>(left)] + bpe.id_to_bytes_[static_cast<std::size_t>(right)];
    Id result = bpe.find_token_bytes(joined);
    if (result < 0) {
      result = static_cast<Id>(bpe.id_to_bytes_.size());
      bpe.add_token(result, joined);
    }
    // A pair merged before can come back when a later merge re-creates one of its parts with
    // the same bytes; it is applied again but not listed twice.
    if (bpe.merge_of_.emplace(top.key, MergeInfo{static_cast<Id>(bpe.merges_.size()), result}).second)
      bpe.merges_.emplace_back(left, right);

    increased.clear();
    std::vector<std::uint32_t> holders = std::move(where[top.key]);
    where.erase(top.key);
    for (const std::uint32_t w : holders) {
      Word& word = words[w];
      if (word.visited == step) continue;
      word.visited = step;
      const std::vector<Id>& s = word.symbols;
      rewritten.clear();
      bool changed = false;
      for (std::size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
          rewritten.push_back(result);
          i += 2;
          changed = true;
        } else {
          rewritten.push_back(s[i]);
          ++i;
        }
      }
      if (!changed) continue;
      for (std::size_t i = 0; i + 1 < s.size(); ++i) {
        const auto it = pair_count.find(pair_key(s[i], s[i + 1]));
        it->second -= word.count;
        if (it->second == 0) pair_count.erase(it);
      }
      for (std::size_t i = 0; i + 1 < rewritten.size(); ++i) {
        const std::uint64_t key = pair_key(rewritten[i], rewritten[i + 1]);
        pair_count[key] += word.count;
        if (rewritten[i] == result || rewritten[i + 1] == result) {
          increased.push_back(key);
          std::vector<std::uint32_t>& list = where[key];
          if (list.empty() || list.back() != w) list.push_back(w);
        }
      }
      word.symbols.swap(rewritten);
    }
    std::sort(increased.begin(), increased.end());
    increased.erase(std::unique(increased.begin(), increased.end()), increased.end());
    for (const std::uint64_t key : increased) {
      const auto it = pair_count.find(key);
      if (it != pair_count.end() && it->second > 0) heap.push(Candidate{it->second, key});
    }
  }
  for (const std::string& s : options.special_tokens) bpe.add_special_token(s);
  return bpe;
}

}  // namespace kiln::data
