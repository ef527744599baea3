// Tests of include/kiln/data/unicode.hpp and include/kiln/data/tokenizer.hpp: UTF-8 decoding by
// hand and against Python's errors="replace"; the Unicode tables against Python's `regex` module
// and str.lower; CharTokenizer round trips, errors and files; GPT-2's pre-tokenizer by hand and
// against regex.findall on random strings; ByteLevelBPE against tests/reference/gpt2_bpe_reference.py
// (encoder.py's algorithm) token for token, byte-exact round trips of arbitrary bytes, loader
// errors, special tokens, and the trainer worked by hand and against a naive trainer.
#include <doctest/doctest.h>

#include <kiln/core/error.hpp>
#include <kiln/data/tokenizer.hpp>
#include <kiln/data/unicode.hpp>
#include <kiln/io/json.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using kiln::index_t;
using kiln::data::ByteLevelBPE;
using kiln::data::CharTokenizer;

// A fresh temporary directory, removed with its content at the end of the scope.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("kiln_test_tokenizer_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string utf8(char32_t cp) { return kiln::data::encode_utf8(cp); }

std::string hex(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string unhex(const std::string& h) {
  std::string out;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2) out += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::vector<std::string> pieces_of(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : kiln::data::gpt2_pretokenize(text)) out.emplace_back(p);
  return out;
}

// Random text from pools chosen to hit every branch of GPT-2's pattern: ASCII, contractions,
// whitespace of every kind and in runs, letters and digits of many scripts, marks, emoji and any
// scalar value (except those in `avoid`: code points the two Unicode versions disagree on).
std::string random_text(std::mt19937_64& rng, std::size_t max_items, const std::set<char32_t>& avoid) {
  static const std::vector<std::pair<char32_t, char32_t>> ranges = {
      {0x20, 0x7E}, {0x20, 0x20}, {'0', '9'},   {'a', 'z'},     {'A', 'Z'},     {0x09, 0x0D},   {0x1C, 0x1F},
      {0x85, 0x85}, {0xA0, 0xA0}, {0x1680, 0x1680}, {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F},
      {0x205F, 0x205F}, {0x3000, 0x3000}, {0x80, 0x24F}, {0x300, 0x36F}, {0x370, 0x3FF}, {0x400, 0x4FF},
      {0x600, 0x6FF}, {0x900, 0x97F}, {0x3040, 0x30FF}, {0x4E00, 0x4EFF}, {0xAC00, 0xACFF}, {0x1F300, 0x1F64F},
      {0x1F3FB, 0x1F3FF}, {0x200B, 0x200D}, {0xFE0F, 0xFE0F}, {0x2150, 0x218F}, {0x2460, 0x24FF},
      {0xFF10, 0xFF5A}, {0x10000, 0x10FFFF}, {0x100, 0xFFFF}};
  static const std::vector<std::string> words = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'Re", "'x",
                                                 "  ", "   ", "\n\n", " \n", "\r\n", " '", "don't", " 12", "3.5"};
  std::uniform_int_distribution<std::size_t> items(0, max_items);
  std::string out;
  const std::size_t n = items(rng);
  for (std::size_t i = 0; i < n; ++i) {
    if (rng() % 6 == 0) {
      out += words[rng() % words.size()];
      continue;
    }
    const auto& [lo, hi] = ranges[rng() % ranges.size()];
    char32_t cp;
    do {
      cp = lo + static_cast<char32_t>(rng() % (hi - lo + 1));
    } while (!kiln::data::is_scalar_value(cp) || avoid.count(cp));
    out += utf8(cp);
  }
  return out;
}

// A random byte string: valid UTF-8 pieces, ASCII, and stray or truncated sequences.
std::string random_bytes(std::mt19937_64& rng, std::size_t max_length) {
  std::string out;
  const std::size_t n = rng() % (max_length + 1);
  while (out.size() < n) {
    switch (rng() % 4) {
      case 0: out += static_cast<char>(rng() % 256); break;
      case 1: out += static_cast<char>(0x20 + rng() % 95); break;
      case 2: {
        char32_t cp = static_cast<char32_t>(0x80 + rng() % 0x10000);
        if (!kiln::data::is_scalar_value(cp)) cp = U'?';
        const std::string s = utf8(cp);
        out += rng() % 3 == 0 ? s.substr(0, 1 + rng() % s.size()) : s;
        break;
      }
      default: out += rng() % 2 ? " " : "\n"; break;
    }
  }
  return out;
}

// A small corpus of mixed scripts for training test vocabularies.
std::string training_text() {
  std::mt19937_64 rng(7);
  static const std::vector<std::string> syllables = {"the", "an", "ing", "er", "on", "qu", "ick", "br", "own", "fox",
                                                      "caf\xC3\xA9", "\xC3\xBC" "ber", "na\xC3\xAF" "ve",
                                                      "\xD0\xBF\xD1\x80\xD0\xB8", "\xE4\xB8\xAD\xE6\x96\x87",
                                                      "\xF0\x9F\x98\x80", "1", "23", "456"};
  static const std::vector<std::string> glue = {" ", " ", " ", ", ", ". ", "\n", "\n\n", "  ", "'s ", "'ll ", "!"};
  std::string text;
  while (text.size() < 30000) {
    const std::size_t k = 1 + rng() % 3;
    for (std::size_t i = 0; i < k; ++i) text += syllables[rng() % syllables.size()];
    text += glue[rng() % glue.size()];
  }
  return text;
}

// The first lines of `text` that fit in `max_bytes` (cut after a '\n', so UTF-8 stays whole).
std::string leading_lines(const std::string& text, std::size_t max_bytes) {
  const std::size_t cut = text.rfind('\n', max_bytes);
  return text.substr(0, cut == std::string::npos ? 0 : cut + 1);
}

std::vector<index_t> to_index(const kiln::io::Json& array) {
  std::vector<index_t> out;
  for (const auto& v : array.as_array()) out.push_back(v.as_int64());
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// UTF-8 and the Unicode tables
// ---------------------------------------------------------------------------------------------

TEST_CASE("UTF-8 decoding: well-formed sequences and maximal subparts") {
  using kiln::data::decode_utf8_step;
  const auto step = [](std::string_view s) { return decode_utf8_step(s, 0); };
  CHECK(step("A").code_point == 'A');
  CHECK(step("\xC3\xA9").code_point == 0xE9);
  CHECK(step("\xC3\xA9").length == 2);
  CHECK(step("\xE2\x82\xAC").code_point == 0x20AC);
  CHECK(step("\xF4\x8F\xBF\xBF").code_point == 0x10FFFF);
  CHECK(step("\xF0\x9F\x98\x80").code_point == 0x1F600);
  // Invalid: the lead byte and the continuation bytes still allowed after it form one subpart.
  CHECK(!step("\xE2\x82").valid);
  CHECK(step("\xE2\x82").length == 2);  // truncated 3-byte sequence
  CHECK(step("\xE2\x82" "A").length == 2);
  CHECK(step("\xF0\x80\x80").length == 1);  // F0 needs 90..BF next: overlong
  CHECK(step("\xE0\x80\x80").length == 1);  // E0 needs A0..BF next: overlong
  CHECK(step("\xED\xA0\x80").length == 1);  // a surrogate
  CHECK(step("\xF4\x90\x80\x80").length == 1);  // above U+10FFFF
  CHECK(step("\xC0\x80").length == 1);
  CHECK(step("\x80").length == 1);
  CHECK(step("\xFF").length == 1);
  CHECK(step("\xF0\x9F\x98").length == 3);
  CHECK(kiln::data::replace_invalid_utf8("a\xF0\x9F\x98" "b\xE0\x80\x80") ==
        "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(kiln::data::find_invalid_utf8("ok\xC3\xA9\xC3") == 4);
  CHECK(kiln::data::count_code_points("a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80") == 4);
  // Every scalar value encodes and decodes back; surrogates and values above U+10FFFF are refused.
  std::string all;
  for (char32_t cp = 0; cp <= 0x10FFFF; ++cp)
    if (kiln::data::is_scalar_value(cp)) kiln::data::append_utf8(all, cp);
  const std::u32string decoded = kiln::data::decode_utf8(all);
  REQUIRE(decoded.size() == 0x110000 - 0x800);
  bool all_back = true;
  char32_t expect = 0;
  for (char32_t cp : decoded) {
    if (expect == 0xD800) expect = 0xE000;
    all_back = all_back && cp == expect++;
  }
  CHECK(all_back);
  CHECK_THROWS_AS(kiln::data::append_utf8(all, 0xD800), kiln::ValueError);
  CHECK_THROWS_AS(kiln::data::append_utf8(all, 0x110000), kiln::ValueError);
  CHECK(error_of([] { kiln::data::decode_utf8("abc\xFF", "notes.txt"); }).find("notes.txt: invalid UTF-8 at byte 3") !=
        std::string::npos);
}

TEST_CASE("character classes and lower case, by hand") {
  using namespace kiln::data;
  for (char32_t c : {U'a', U'Z', U'\u00E9', U'\u0416', U'\u4E2D', U'\u3042', U'\uAC00', U'\u02B0', U'\U00010400'})
    CHECK(is_letter(c));
  for (char32_t c : {U'1', U'_', U' ', U'\u0301', U'\U0001F600', U'\u00B2', U'\u200D'}) CHECK(!is_letter(c));
  for (char32_t c : {U'7', U'\u0663', U'\u00BD', U'\u00B2', U'\u216B', U'\u2460', U'\uFF19'}) CHECK(is_number(c));
  for (char32_t c : {U'a', U'.', U'\u00B0'}) CHECK(!is_number(c));
  for (char32_t c : {U' ', U'\t', U'\n', U'\v', U'\f', U'\r', U'\u0085', U'\u00A0', U'\u2003', U'\u2028', U'\u3000'})
    CHECK(is_whitespace(c));
  for (char32_t c : {U'\x1c', U'\x1f', U'\u200B', U'\uFEFF', U'\u180E', U'x'}) CHECK(!is_whitespace(c));
  CHECK(to_lower(U'A') == U'a');
  CHECK(to_lower(U'\u00C4') == U'\u00E4');
  CHECK(to_lower(U'\u0100') == U'\u0101');  // Latin Extended-A: stride-2 pairs
  CHECK(to_lower(U'\u0101') == U'\u0101');
  CHECK(to_lower(U'\u03A3') == U'\u03C3');  // no final-sigma rule
  CHECK(to_lower(U'\u0416') == U'\u0436');
  CHECK(to_lower(U'\u0130') == U'\u0130');  // full lower case has two code points: left as is
  CHECK(to_lower(U'\u2126') == U'\u03C9');  // OHM SIGN
  CHECK(to_lower(U'\u212A') == U'k');       // KELVIN SIGN
  CHECK(to_lower(U'\u1E9E') == U'\u00DF');
  CHECK(to_lower(U'\U00010400') == U'\U00010428');
  CHECK(lowercase_utf8("\xC3\x84" "Bc \xCE\xA3\xFF") == "\xC3\xA4" "bc \xCF\x83\xFF");
}

// ---------------------------------------------------------------------------------------------
// CharTokenizer
// ---------------------------------------------------------------------------------------------

TEST_CASE("CharTokenizer: sorted distinct code points, round trips, errors, files") {
  const std::string text = "hello w\xC3\xB6rld \xE4\xB8\xAD\n";
  const CharTokenizer tok = CharTokenizer::from_text(text);
  // sorted(set(text)) by code point: '\n' ' ' d e h l o r w U+00F6 U+4E2D
  const std::vector<char32_t> expected = {U'\n', U' ', U'd', U'e', U'h', U'l', U'o', U'r', U'w', U'\u00F6', U'\u4E2D'};
  CHECK(tok.vocabulary() == expected);
  CHECK(tok.vocab_size() == 11);
  const std::vector<index_t> ids = tok.encode(text);
  CHECK(ids == std::vector<index_t>{4, 3, 5, 5, 6, 1, 8, 9, 7, 5, 2, 1, 10, 0});
  CHECK(tok.decode(ids) == text);
  CHECK(tok.find(U'z') == -1);

  const std::string unknown = error_of([&] { tok.encode("held Zoo"); });
  CHECK(unknown.find("'Z' (U+005A) at position 5 (byte 5)") != std::string::npos);
  CHECK(error_of([&] { tok.encode("h\xC3\xB6\xE2\x82\xAC"); }).find("'\xE2\x82\xAC' (U+20AC) at position 2 (byte 3)") !=
        std::string::npos);
  CHECK(error_of([&] { tok.encode("he\xFF"); }).find("invalid UTF-8 at byte 2") != std::string::npos);
  CHECK(error_of([&] { tok.decode(std::vector<index_t>{1, 11}); }).find("token id 11 at position 1") != std::string::npos);
  CHECK(error_of([&] { tok.decode(std::vector<index_t>{-1}); }).find("token id -1 at position 0") != std::string::npos);
  CHECK(error_of([] { CharTokenizer(std::vector<char32_t>{U'a', U'b', U'a'}); }).find("twice (ids 0 and 2)") !=
        std::string::npos);
  CHECK_THROWS_AS(CharTokenizer(std::vector<char32_t>{0xD800}), kiln::ValueError);
  CHECK_THROWS_AS(CharTokenizer::from_text("ab\xC3"), kiln::ValueError);

  // Any order of distinct code points is a vocabulary; ids follow it.
  const CharTokenizer custom(std::vector<char32_t>{U'b', U'\u00E9', U'a'});
  CHECK(custom.encode("ab\xC3\xA9") == std::vector<index_t>{2, 0, 1});

  TempDir dir;
  tok.save(dir.file("chars.json"));
  const CharTokenizer back = CharTokenizer::load(dir.file("chars.json"));
  CHECK(back.vocabulary() == tok.vocabulary());
  CHECK(back.encode(text) == ids);
  const kiln::io::Json json = kiln::io::parse_json(read_file(dir.file("chars.json")));
  CHECK(json.at("type").as_string() == "char");
  CHECK(json.at("vocabulary").at(9).as_string() == "\xC3\xB6");

  write_file(dir.file("bad.json"), "{\"type\": \"char\", \"vocabulary\": [\"a\", \"bc\"]}");
  const std::string bad = error_of([&] { CharTokenizer::load(dir.file("bad.json")); });
  CHECK(bad.find(dir.file("bad.json")) != std::string::npos);
  CHECK(bad.find("vocabulary entry 1 is not exactly one character") != std::string::npos);
  write_file(dir.file("dup.json"), "{\"type\": \"char\", \"vocabulary\": [\"a\", \"a\"]}");
  CHECK(error_of([&] { CharTokenizer::load(dir.file("dup.json")); }).find("twice") != std::string::npos);
  write_file(dir.file("type.json"), "{\"type\": \"bpe\", \"vocabulary\": []}");
  CHECK(error_of([&] { CharTokenizer::load(dir.file("type.json")); }).find("\"type\": \"char\"") != std::string::npos);
  CHECK_THROWS_AS(CharTokenizer::load(dir.file("missing.json")), kiln::io::FileError);
}

// ---------------------------------------------------------------------------------------------
// GPT-2 pre-tokenizer
// ---------------------------------------------------------------------------------------------

TEST_CASE("GPT-2 pre-tokenizer, case by case") {
  using V = std::vector<std::string>;
  CHECK(pieces_of("Hello world") == V{"Hello", " world"});
  CHECK(pieces_of("I'm don't 'S they're") == V{"I", "'m", " don", "'t", " '", "S", " they", "'re"});
  CHECK(pieces_of("'sam 'llama '") == V{"'s", "am", " '", "llama", " '"});
  CHECK(pieces_of("a  b") == V{"a", " ", " b"});
  // A whitespace run gives up its last character to the next pre-token unless it ends the text.
  CHECK(pieces_of("a   \n\nb  ") == V{"a", "   \n", "\n", "b", "  "});
  CHECK(pieces_of("\t\ta") == V{"\t", "\t", "a"});
  CHECK(pieces_of(" \n") == V{" \n"});
  CHECK(pieces_of("x \ny") == V{"x", " ", "\n", "y"});
  CHECK(pieces_of("123abc 456 3.14 $100") == V{"123", "abc", " 456", " 3", ".", "14", " $", "100"});
  CHECK(pieces_of("...!? ...") == V{"...!?", " ..."});
  CHECK(pieces_of("caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87") == V{"caf\xC3\xA9", " \xE4\xB8\xAD\xE6\x96\x87"});
  CHECK(pieces_of("\xF0\x9F\x98\x80\xF0\x9F\x98\x80 ok") == V{"\xF0\x9F\x98\x80\xF0\x9F\x98\x80", " ok"});
  CHECK(pieces_of("\xC2\xBD\xE2\x85\xAB") == V{"\xC2\xBD\xE2\x85\xAB"});  // No and Nl are \p{N}
  CHECK(pieces_of("a\xC2\xA0" "b") == V{"a", "\xC2\xA0", "b"});  // NBSP is \s but not ' '
  // Invalid bytes are characters of the `other` class.
  CHECK(pieces_of("x \xFF\xFE y\xC3") == V{"x", " \xFF\xFE", " y", "\xC3"});
  CHECK(pieces_of("").empty());
}

// ---------------------------------------------------------------------------------------------
// ByteLevelBPE
// ---------------------------------------------------------------------------------------------

TEST_CASE("ByteLevelBPE: byte characters as encoder.py's bytes_to_unicode") {
  constexpr auto map = kiln::data::gpt2_byte_to_char();
  CHECK(map['!'] == U'!');
  CHECK(map[' '] == U'\u0120');  // 'Ġ'
  CHECK(map['\n'] == U'\u010A');  // 'Ċ'
  CHECK(map[0] == U'\u0100');
  CHECK(map[0x7F] == U'\u0121');
  CHECK(map[0xAD] == U'\u0143');
  std::set<char32_t> distinct(map.begin(), map.end());
  CHECK(distinct.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(kiln::data::gpt2_char_to_byte(map[static_cast<std::size_t>(b)]) == b);
  CHECK(kiln::data::gpt2_char_to_byte(U' ') == -1);
  CHECK(kiln::data::gpt2_char_to_byte(U'\u0144') == -1);
  CHECK(kiln::data::gpt2_bytes_to_text(" the\n") == "\xC4\xA0the\xC4\x8A");
  const ByteLevelBPE bytes_only;
  CHECK(bytes_only.vocab_size() == 256);
  CHECK(bytes_only.find_token("!") == 0);
  CHECK(bytes_only.find_token(std::string(1, '\0')) == 188);  // GPT-2's id of byte 0
  CHECK(bytes_only.encode("hi\xFF") ==
        std::vector<index_t>{bytes_only.find_token("h"), bytes_only.find_token("i"), bytes_only.find_token("\xFF")});
}

TEST_CASE("ByteLevelBPE trainer, worked by hand") {
  const auto merges_as_bytes = [](const ByteLevelBPE& bpe) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& [l, r] : bpe.merges()) out.emplace_back(bpe.token_bytes(l), bpe.token_bytes(r));
    return out;
  };
  using M = std::vector<std::pair<std::string, std::string>>;
  // "aaabdaaabac" is one pre-token. Pair counts: aa 4 (both pairs of each "aaa"), ab 2, others 1:
  // merge a+a -> "aa a b d aa a b a c"; now (aa, a) 2 and (a, b) 2 tie, and ("a", "b") <
  // ("aa", "a") bytewise: merge a+b -> "aa ab d aa ab a c"; (aa, ab) 2 -> "aaab d aaab a c";
  // every pair left occurs once (< min_pair_count 2): stop.
  const ByteLevelBPE w = ByteLevelBPE::train("aaabdaaabac", 1000);
  CHECK(merges_as_bytes(w) == M{{"a", "a"}, {"a", "b"}, {"aa", "ab"}});
  CHECK(w.vocab_size() == 259);
  CHECK(w.find_token("aaab") == 258);
  const std::vector<index_t> ids = w.encode("aaabdaaabac");
  std::vector<std::string> tokens;
  for (index_t id : ids) tokens.push_back(w.token_bytes(id));
  CHECK(tokens == std::vector<std::string>{"aaab", "d", "aaab", "a", "c"});
  // vocab_size bounds the merges; min_pair_count 1 merges pairs seen once.
  CHECK(merges_as_bytes(ByteLevelBPE::train("aaabdaaabac", 257)) == M{{"a", "a"}});
  {
    kiln::data::BpeTrainOptions once;
    once.min_pair_count = 1;
    CHECK(ByteLevelBPE::train("aaabdaaabac", 1000, once).merges().size() == 7);  // down to one token
  }
  // Ties across pre-tokens: "xy", " xy", " yz", " yz": (x,y) 2, (' ',x) 1, (' ',y) 2, (y,z) 2.
  // The smallest of the tied pairs by bytes is (' ', 'y'); then (" y", z) 2 ties (x, y) 2 and
  // " y" < "x"; then (x, y); then only (' ', "xy") 1 is left.
  CHECK(merges_as_bytes(ByteLevelBPE::train("xy xy yz yz", 1000)) == M{{" ", "y"}, {" y", "z"}, {"x", "y"}});
  // Special tokens are cut out of the training text and appended to the vocabulary.
  kiln::data::BpeTrainOptions special;
  special.special_tokens = {"<|endoftext|>"};
  const ByteLevelBPE s = ByteLevelBPE::train("ab<|endoftext|>ab<|endoftext|>", 1000, special);
  CHECK(merges_as_bytes(s) == M{{"a", "b"}});
  CHECK(s.vocab_size() == 258);
  CHECK(s.find_token("<|endoftext|>") == 257);
  CHECK_THROWS_AS(ByteLevelBPE::train("abc", 256, special), kiln::ValueError);
  CHECK_THROWS_AS(ByteLevelBPE::train("abc", 100), kiln::ValueError);
}

TEST_CASE("ByteLevelBPE: lowest rank first, every occurrence left to right") {
  // A hand-written vocabulary whose ranks are out of creation order: rank 0 merges ("ab", "a"),
  // rank 1 merges ("a", "b"). encoder.py merges ALL occurrences of (a, b) in "abab" before it
  // looks at pairs again, so "ab ab" results, not "aba b".
  TempDir dir;
  kiln::io::Json vocab = kiln::io::Json::object();
  const ByteLevelBPE bytes_only;
  for (index_t id = 0; id < 256; ++id) vocab.set(bytes_only.token_text(id), id);
  vocab.set("ab", 300);  // ids need not be contiguous
  vocab.set("aba", 301);
  vocab.set("aa", 302);
  write_file(dir.file("vocab.json"), kiln::io::to_json(vocab));
  write_file(dir.file("merges.txt"), "#version: 0.2\nab a\na b\na a\n");
  const ByteLevelBPE bpe = ByteLevelBPE::load(dir.file("vocab.json"), dir.file("merges.txt"));
  CHECK(bpe.vocab_size() == 259);
  CHECK(bpe.encode("abab") == std::vector<index_t>{300, 300});
  CHECK(bpe.encode("aba") == std::vector<index_t>{301});  // "ab a" then rank 0
  CHECK(bpe.encode("aaa") == std::vector<index_t>{302, bpe.find_token("a")});  // left to right
  CHECK(bpe.encode("aaaa") == std::vector<index_t>{302, 302});
  CHECK(bpe.decode(std::vector<index_t>{300, 301, 302}) == "abab" "aaa");
  CHECK(bpe.token_text(300) == "ab");
  // Long pre-tokens take O(n log n): 200,000 a's become 100,000 "aa".
  const std::vector<index_t> long_ids = bpe.encode(std::string(200000, 'a'));
  CHECK(long_ids.size() == 100000);
  CHECK(long_ids.back() == 302);
}

TEST_CASE("ByteLevelBPE: any bytes round-trip exactly; lossy decode replaces as Python") {
  const ByteLevelBPE bpe = ByteLevelBPE::train(training_text(), 600);
  std::mt19937_64 rng(11);
  for (int i = 0; i < 300; ++i) {
    const std::string bytes = random_bytes(rng, 120);
    const std::vector<index_t> ids = bpe.encode(bytes);
    REQUIRE(bpe.decode(ids) == bytes);
    CHECK(bpe.decode_lossy(ids) == kiln::data::replace_invalid_utf8(bytes));
  }
  // Decoding arbitrary ids gives their bytes, even when they do not form UTF-8.
  std::vector<index_t> ids;
  std::string expected;
  for (int i = 0; i < 200; ++i) {
    const index_t id = static_cast<index_t>(rng() % static_cast<std::uint64_t>(bpe.vocab_size()));
    ids.push_back(id);
    expected += bpe.token_bytes(id);
  }
  CHECK(bpe.decode(ids) == expected);
  CHECK(error_of([&] { bpe.decode(std::vector<index_t>{5, 600}); }).find("token id 600 at position 1") !=
        std::string::npos);
  // The cache does not change results: a second pass and a copy agree.
  const std::string text = leading_lines(training_text(), 3000);
  const std::vector<index_t> first = bpe.encode(text);
  CHECK(bpe.encode(text) == first);
  const ByteLevelBPE copy = bpe;
  CHECK(copy.encode(text) == first);
}

TEST_CASE("ByteLevelBPE: files, special tokens and loader errors") {
  TempDir dir;
  kiln::data::BpeTrainOptions options;
  options.special_tokens = {"<|endoftext|>"};
  const ByteLevelBPE trained = ByteLevelBPE::train(training_text(), 500, options);
  CHECK(trained.vocab_size() == 500);
  trained.save(dir.file("vocab.json"), dir.file("merges.txt"));
  const std::string merges_text = read_file(dir.file("merges.txt"));
  CHECK(merges_text.starts_with("#version: 0.2\n"));
  CHECK(merges_text.back() == '\n');
  const ByteLevelBPE bpe = ByteLevelBPE::load(dir.file("vocab.json"), dir.file("merges.txt"));
  CHECK(bpe.vocab_size() == 500);
  CHECK(bpe.merges() == trained.merges());
  const std::string sample = leading_lines(training_text(), 2000);
  CHECK(bpe.encode(sample) == trained.encode(sample));

  // Special tokens: loaded "<|endoftext|>" is registered; recognised only when allowed.
  REQUIRE(bpe.special_tokens().size() == 1);
  const index_t eot = bpe.special_tokens()[0].second;
  CHECK(eot == 499);
  const std::string text = "the fox<|endoftext|>caf\xC3\xA9";
  std::vector<index_t> expected = bpe.encode("the fox");
  expected.push_back(eot);
  for (index_t id : bpe.encode("caf\xC3\xA9")) expected.push_back(id);
  CHECK(bpe.encode(text, kiln::data::SpecialTokens::allowed) == expected);
  const std::vector<index_t> plain = bpe.encode(text);
  CHECK(std::find(plain.begin(), plain.end(), eot) == plain.end());
  CHECK(bpe.decode(plain) == text);
  CHECK(bpe.decode(expected) == text);
  ByteLevelBPE extended = bpe;
  const index_t sep = extended.add_special_token("<sep>");
  CHECK(sep == 500);
  CHECK(extended.vocab_size() == 501);
  CHECK(extended.encode("a<sep><|endoftext|>", kiln::data::SpecialTokens::allowed) ==
        std::vector<index_t>{extended.find_token("a"), 500, eot});

  // CRLF line ends and a missing final newline are accepted.
  std::string crlf;
  for (char c : merges_text) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  crlf.resize(crlf.size() - 2);
  write_file(dir.file("crlf.txt"), crlf);
  CHECK(ByteLevelBPE::load(dir.file("vocab.json"), dir.file("crlf.txt")).merges() == trained.merges());

  // Malformed files: errors name the file and the byte offset or line.
  const std::string vocab_text = read_file(dir.file("vocab.json"));
  const auto load_error = [&](const std::string& vocab, const std::string& merges,
                              const kiln::data::BpeLimits& limits = {}) {
    write_file(dir.file("v.json"), vocab);
    write_file(dir.file("m.txt"), merges);
    return error_of([&] { ByteLevelBPE::load(dir.file("v.json"), dir.file("m.txt"), limits); });
  };
  const std::string vfile = dir.file("v.json"), mfile = dir.file("m.txt");
  CHECK(load_error("{\"a\": 1,", merges_text).find(vfile + ": byte 8") != std::string::npos);
  CHECK(load_error("[1, 2]", merges_text).find("expected an object") != std::string::npos);
  CHECK(load_error("{\"!\": \"0\"}", merges_text).find("token \"!\": the id must be an integer") != std::string::npos);
  CHECK(load_error("{\"!\": -1}", merges_text).find("the id must be an integer in [0,") != std::string::npos);
  CHECK(load_error("{\"!\": 0, \"\\\"\": 0}", merges_text).find("token \"\"\" has the id 0 of token \"!\"") !=
        std::string::npos);
  CHECK(load_error("{\"a\xE2\x82\xAC\": 0}", merges_text).find("contains U+20AC, which is not one of GPT-2's 256") !=
        std::string::npos);
  CHECK(load_error("{\"!\": 0}", merges_text).find("the vocabulary has no token for byte 0 (\"\xC4\x80\")") !=
        std::string::npos);
  CHECK(load_error(vocab_text, "#version: 0.2\nth\n").find(mfile + ": line 2: expected two tokens") != std::string::npos);
  CHECK(load_error(vocab_text, "#version: 0.2\na  b\n").find("line 2: expected two tokens") != std::string::npos);
  CHECK(load_error(vocab_text, "#version: 0.2\nzzzzzz q\n").find("line 2: token \"zzzzzz\" is not in the vocabulary") !=
        std::string::npos);
  CHECK(load_error(vocab_text, "#version: 0.2\nq \xE2\x82\xAC\n").find("line 2: token \"\xE2\x82\xAC\" contains U+20AC") !=
        std::string::npos);
  CHECK(load_error(vocab_text, "#version: 0.2\nq z\n").find("line 2: the merge's result \"qz\" is not in the vocabulary") !=
        std::string::npos);
  const std::string first_merge = merges_text.substr(14, merges_text.find('\n', 14) - 14);
  CHECK(load_error(vocab_text, "#version: 0.2\n" + first_merge + "\n\n" + first_merge + "\n")
            .find("line 4: the merge \"" + first_merge + "\" repeats line 2") != std::string::npos);
  kiln::data::BpeLimits small;
  small.max_file_bytes = 100;
  CHECK(load_error(vocab_text, merges_text, small).find("more than the limit of 100") != std::string::npos);
  small = {};
  small.max_token_bytes = 2;
  CHECK(load_error(vocab_text, merges_text, small).find("more than the limit of 2") != std::string::npos);
  small = {};
  small.max_vocab_size = 300;
  CHECK(load_error(vocab_text, merges_text, small).find("tokens, more than the limit of 300") != std::string::npos);
  small = {};
  small.max_merges = 3;
  CHECK(load_error(vocab_text, merges_text, small).find("line 5: more merges than the limit of 3") != std::string::npos);
  CHECK_THROWS_AS(ByteLevelBPE::load(dir.file("none.json"), dir.file("merges.txt")), kiln::io::FileError);
}

// ---------------------------------------------------------------------------------------------
// Agreement with Python: the regex module, str.lower, bytes.decode and encoder.py's algorithm
// ---------------------------------------------------------------------------------------------

TEST_CASE("Unicode tables, pre-tokenizer, encoder and trainer agree with Python") {
  TempDir dir;
  // 1. The tables against `regex` and str.lower; lossy decoding against bytes.decode.
  {
    std::ofstream classes(dir.file("classes.txt"));
    const auto emit = [&](const char* kind, bool (*member)(char32_t)) {
      char32_t start = 0;
      bool inside = false;
      for (char32_t cp = 0; cp <= 0x110000; ++cp) {
        const bool m = cp <= 0x10FFFF && member(cp);
        if (m && !inside) start = cp;
        if (!m && inside) classes << kind << ' ' << std::hex << static_cast<std::uint32_t>(start) << ' ' << static_cast<std::uint32_t>(cp - 1) << std::dec << '\n';
        inside = m;
      }
    };
    emit("L", [](char32_t c) { return kiln::data::is_letter(c); });
    emit("N", [](char32_t c) { return kiln::data::is_number(c); });
    emit("S", [](char32_t c) { return kiln::data::is_whitespace(c); });
    std::ofstream lower(dir.file("lower.txt"));
    for (char32_t cp = 0; cp <= 0x10FFFF; ++cp)
      if (kiln::data::to_lower(cp) != cp) lower << std::hex << static_cast<std::uint32_t>(cp) << ' '
              << static_cast<std::uint32_t>(kiln::data::to_lower(cp)) << std::dec << '\n';
  }
  std::mt19937_64 rng(2024);
  std::vector<std::string> byte_strings;
  for (int i = 0; i < 200; ++i) byte_strings.push_back(random_bytes(rng, 40));
  {
    kiln::io::Json task = kiln::io::Json::object();
    task.set("classes", dir.file("classes.txt"));
    task.set("lower", dir.file("lower.txt"));
    kiln::io::Json replace = kiln::io::Json::array();
    for (const std::string& b : byte_strings) replace.push_back(hex(b));
    task.set("replace", std::move(replace));
    write_file(dir.file("task1.json"), kiln::io::to_json(task));
  }
  REQUIRE(kiln::test::run_python_script("regex", "python3-regex", "reference/gpt2_bpe_reference.py",
                                        kiln::test::shell_quote(dir.file("task1.json")) + " " +
                                            kiln::test::shell_quote(dir.file("out1.json"))) == 0);
  const kiln::io::Json out1 = kiln::io::parse_json(read_file(dir.file("out1.json")), "out1.json");
  MESSAGE("Python unicodedata " << out1.at("unicode_version").as_string() << ", regex "
                                << out1.at("regex_version").as_string() << ", kiln tables "
                                << std::string(kiln::data::unicode_tables::unicode_tables_version));
  CHECK(out1.at("class_mismatches").size() == 0);
  if (out1.at("class_mismatches").size() > 0) MESSAGE("first mismatch: " << kiln::io::to_json(out1.at("class_mismatches").at(0)));
  CHECK(out1.at("lower_mismatches").size() == 0);
  for (std::size_t i = 0; i < byte_strings.size(); ++i)
    CHECK(kiln::data::replace_invalid_utf8(byte_strings[i]) == out1.at("replace").at(i).as_string());
  // Code points that only one of the two Unicode versions has assigned are left out of the
  // random strings below (the versions legitimately disagree on them).
  std::set<char32_t> skew;
  for (const auto& cp : out1.at("class_skew").as_array()) skew.insert(static_cast<char32_t>(cp.as_int64()));
  MESSAGE(skew.size() << " code points are assigned in only one of the two Unicode versions");

  // 2. Pre-tokenizer against regex.findall; BPE encoding against encoder.py's algorithm with a
  //    vocabulary trained here and the hand-written one of the rank-order test; the trainer
  //    against a naive trainer.
  std::vector<std::string> texts = {
      "Hello world", "I'm don't 'S they're we've you'll he'd", "  leading and trailing  ", "a\n\nb\n\n\n", "tabs\t\tand\r\n",
      "caf\xC3\xA9 na\xC3\xAF" "ve \xC3\xBC" "ber", "\xE4\xB8\xAD\xE6\x96\x87\xE5\xAD\x97 \xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4",
      "emoji \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9",
      "digits 0123456789 \xD9\xA3\xD9\xA4 \xC2\xBD \xE2\x85\xAB \xEF\xBC\x91", "mixed \xD0\x9F\xD1\x80\xD0\xB8" "abc123\xCE\xB1\xCE\xB2",
      "   ", " ", "\n", "x  \n  y", "\xE3\x80\x80\xE2\x80\x83spaces\xC2\xA0", "'s's''s '' 's", "\x1C\x1F\x07\x08 ctrl",
      "..., ?! -- (a) [b]", "http://example.com/a_b?c=1&d=2",
      "abab aaaa ababab abababa baab aaa"};
  for (int i = 0; i < 400; ++i) texts.push_back(random_text(rng, 40, skew));
  std::vector<std::string> long_texts = {leading_lines(training_text(), 4000)};
  for (int i = 0; i < 20; ++i) long_texts.push_back(random_text(rng, 400, skew));

  kiln::data::BpeTrainOptions options;
  const std::string corpus = training_text();
  const ByteLevelBPE trained = ByteLevelBPE::train(corpus, 700, options);
  trained.save(dir.file("vocab.json"), dir.file("merges.txt"));
  kiln::io::Json vocab2 = kiln::io::Json::object();
  for (index_t id = 0; id < 256; ++id) vocab2.set(trained.token_text(id), id);
  vocab2.set("ab", 300);
  vocab2.set("aba", 301);
  vocab2.set("aa", 302);
  write_file(dir.file("vocab2.json"), kiln::io::to_json(vocab2));
  write_file(dir.file("merges2.txt"), "#version: 0.2\nab a\na b\na a\n");
  const ByteLevelBPE hand = ByteLevelBPE::load(dir.file("vocab2.json"), dir.file("merges2.txt"));
  const std::string train_text = leading_lines(corpus, 12000);
  const ByteLevelBPE small = ByteLevelBPE::train(train_text, 256 + 150);
  {
    kiln::io::Json task = kiln::io::Json::object();
    kiln::io::Json pre = kiln::io::Json::array();
    for (const std::string& t : texts) pre.push_back(t);
    task.set("pretokenize", std::move(pre));
    kiln::io::Json all_texts = kiln::io::Json::array();
    for (const std::string& t : texts) all_texts.push_back(t);
    for (const std::string& t : long_texts) all_texts.push_back(t);
    kiln::io::Json bpe = kiln::io::Json::array();
    for (const char* name : {"", "2"}) {
      kiln::io::Json spec = kiln::io::Json::object();
      spec.set("vocab", dir.file(std::string("vocab") + name + ".json"));
      spec.set("merges", dir.file(std::string("merges") + name + ".txt"));
      spec.set("texts", all_texts);
      bpe.push_back(std::move(spec));
    }
    task.set("bpe", std::move(bpe));
    kiln::io::Json train = kiln::io::Json::object();
    train.set("text", train_text);
    train.set("vocab_size", 256 + 150);
    train.set("min_pair_count", 2);
    task.set("train", std::move(train));
    write_file(dir.file("task2.json"), kiln::io::to_json(task));
  }
  REQUIRE(kiln::test::run_python_script("regex", "python3-regex", "reference/gpt2_bpe_reference.py",
                                        kiln::test::shell_quote(dir.file("task2.json")) + " " +
                                            kiln::test::shell_quote(dir.file("out2.json"))) == 0);
  const kiln::io::Json out2 = kiln::io::parse_json(read_file(dir.file("out2.json")), "out2.json");
  int pretoken_mismatches = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    std::vector<std::string> expected;
    for (const auto& p : out2.at("pretokenize").at(i).as_array()) expected.push_back(p.as_string());
    if (pieces_of(texts[i]) != expected && ++pretoken_mismatches <= 5) CHECK_MESSAGE(false, "pre-tokens of " << hex(texts[i]));
  }
  CHECK(pretoken_mismatches == 0);
  std::size_t total = 0;
  int encode_mismatches = 0;
  for (std::size_t v = 0; v < 2; ++v) {
    const ByteLevelBPE& model = v == 0 ? trained : hand;
    for (std::size_t i = 0; i < texts.size() + long_texts.size(); ++i) {
      const std::string& t = i < texts.size() ? texts[i] : long_texts[i - texts.size()];
      const std::vector<index_t> expected = to_index(out2.at("bpe").at(v).at(i));
      total += expected.size();
      if (model.encode(t) != expected && ++encode_mismatches <= 5)
        CHECK_MESSAGE(false, "vocabulary " << v << ", text " << hex(t));
    }
  }
  CHECK(encode_mismatches == 0);
  CHECK(total > 20000);
  std::vector<std::pair<std::string, std::string>> naive;
  for (const auto& m : out2.at("train").as_array()) naive.emplace_back(unhex(m.at(0).as_string()), unhex(m.at(1).as_string()));
  std::vector<std::pair<std::string, std::string>> ours;
  for (const auto& [l, r] : small.merges()) ours.emplace_back(small.token_bytes(l), small.token_bytes(r));
  CHECK(naive.size() == 150);
  CHECK(ours == naive);
}
