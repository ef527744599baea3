// Tests of include/kiln/data/text.hpp: clean_text rule by rule; the fortunes corpus against the
// figures of its definition (byte count, code points, 113 distinct characters, SHA-256 computed
// here, 90/10 split); TokenDataset windows, reproducibility, uniform starts and sequential
// evaluation windows; token augmentation by hand and by frequency.
#include <doctest/doctest.h>

#include <kiln/core/error.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/data/text.hpp>
#include <kiln/data/tokenizer.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

namespace {

using kiln::index_t;
using kiln::Rng;
using kiln::data::clean_text;
using kiln::data::CleanTextOptions;

// SHA-256 (FIPS 180-4) as lower-case hex.
std::string sha256_hex(const std::string& message) {
  static const std::uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  std::uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::string padded = message;
  padded += static_cast<char>(0x80);
  while (padded.size() % 64 != 56) padded += '\0';
  const std::uint64_t bits = static_cast<std::uint64_t>(message.size()) * 8;
  for (int i = 7; i >= 0; --i) padded += static_cast<char>((bits >> (8 * i)) & 0xFF);
  const auto rotr = [](std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  for (std::size_t block = 0; block < padded.size(); block += 64) {
    std::uint32_t w[64];
    for (int t = 0; t < 16; ++t) {
      w[t] = 0;
      for (int b = 0; b < 4; ++b) w[t] = (w[t] << 8) | static_cast<unsigned char>(padded[block + 4 * t + b]);
    }
    for (int t = 16; t < 64; ++t) {
      const std::uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const std::uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 64; ++t) {
      const std::uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[t] + w[t];
      const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
  }
  std::string out;
  char buf[9];
  for (std::uint32_t v : h) {
    std::snprintf(buf, sizeof buf, "%08x", v);
    out += buf;
  }
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

std::vector<index_t> values_of(const kiln::Tensor<index_t>& t) {
  return std::vector<index_t>(t.data(), t.data() + t.numel());
}

}  // namespace

TEST_CASE("clean_text, rule by rule") {
  // Whitespace runs collapse, lines are trimmed, a final newline stays.
  CHECK(clean_text("  Hello\t\tWorld  \n") == "Hello World\n");
  CHECK(clean_text("a\nb") == "a\nb");
  CHECK(clean_text("") == "");
  CHECK(clean_text("\n\n") == "\n\n");
  // Every str.splitlines boundary ends a line; "\r\n" is one boundary.
  CHECK(clean_text("a\r\nb\rc\vd\fe\x1C" "f\xC2\x85g\xE2\x80\xA8h\xE2\x80\xA9i") == "a\nb\nc\nd\ne\nf\ng\nh\ni");
  // Other White_Space characters become spaces; other control characters go; Cf stays.
  CHECK(clean_text("a\xC2\xA0\xE3\x80\x80" "b\xE2\x80\x83" "c") == "a b c");
  CHECK(clean_text("be\x07ll\x08s \x7F\xC2\x80x\x1F" "y") == "bells xy");
  CHECK(clean_text("a\xE2\x80\x8B" "b") == "a\xE2\x80\x8B" "b");
  CHECK(clean_text("a \x07 b") == "a b");  // removal before collapsing
  // Invalid UTF-8 becomes U+FFFD.
  CHECK(clean_text("a\xFF" "b\xE2\x82") == "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");

  CleanTextOptions tabs;
  tabs.keep_tabs = true;
  CHECK(clean_text("\ta\t\tb  c \t", tabs) == "a\t\tb c");
  CleanTextOptions raw;
  raw.collapse_spaces = false;
  raw.trim_lines = false;
  CHECK(clean_text(" a  b\t\n", raw) == " a  b \n");
  CleanTextOptions lower;
  lower.lowercase = true;
  CHECK(clean_text("\xC3\x80\xC3\x89\xC3\x8E \xCE\xA3\xCE\x91\xCE\xA3 \xD0\x96 ABC", lower) ==
        "\xC3\xA0\xC3\xA9\xC3\xAE \xCF\x83\xCE\xB1\xCF\x83 \xD0\xB6 abc");
  CleanTextOptions dedupe;
  dedupe.deduplicate_lines = true;
  CHECK(clean_text("x\ny\n\nx\n y \n\nz\n", dedupe) == "x\ny\n\n\nz\n");  // equal after cleaning; blanks kept
  CleanTextOptions blank;
  blank.max_blank_lines = 1;
  CHECK(clean_text("a\n\n\n\nb\n \n\t\nc", blank) == "a\n\nb\n\nc");
  blank.max_blank_lines = 0;
  CHECK(clean_text("a\n\n\n\nb\n", blank) == "a\nb\n");
  dedupe.max_blank_lines = 1;
  CHECK(clean_text("x\ny\n\nx\n y \n\nz\n", dedupe) == "x\ny\n\nz\n");
  CleanTextOptions one_line;
  one_line.keep_newlines = false;
  CHECK(clean_text("a\nb\r\n  c\n", one_line) == "a b c");
}

TEST_CASE("the fortunes corpus matches its definition") {
  // Known answers of the hash first (FIPS 180-4 examples).
  REQUIRE(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  REQUIRE(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  REQUIRE(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

  const std::string corpus = kiln::data::load_fortunes_corpus();
  CHECK(corpus.size() == 2478275);
  CHECK(kiln::data::count_code_points(corpus) == 2478228);
  CHECK(sha256_hex(corpus) == std::string(kiln::data::fortunes_corpus_sha256));
  const auto tok = kiln::data::CharTokenizer::from_text(corpus);
  CHECK(tok.vocab_size() == 113);
  CHECK(tok.vocabulary().front() == U'\x07');  // bell and backspace of the "overstriking" files
  CHECK(tok.find(U'\x08') == 1);
  CHECK(tok.find(U'\t') == 2);
  CHECK(tok.find(U'\n') == 3);
  CHECK(tok.vocabulary().back() == U'\u00FC');  // sorted(set(text))[-1] == 'ü'
  const std::vector<index_t> ids = tok.encode(corpus);
  CHECK(ids.size() == 2478228);
  CHECK(tok.decode(ids) == corpus);

  const kiln::data::TextSplit split = kiln::data::split_text(corpus);
  CHECK(kiln::data::count_code_points(split.train) == 2230405);
  CHECK(kiln::data::count_code_points(split.validation) == 247823);
  CHECK(split.train + split.validation == corpus);
  const auto [train_ids, validation_ids] = kiln::data::split_tokens(ids);
  CHECK(train_ids.size() == 2230405);
  CHECK(tok.decode(train_ids) == split.train);
  CHECK(tok.decode(validation_ids) == split.validation);

  CHECK(error_of([] { kiln::data::load_fortunes_corpus("/nonexistent/fortunes"); }).find("/nonexistent/fortunes/art") !=
        std::string::npos);
}

TEST_CASE("split points") {
  using kiln::data::split_point;
  CHECK(split_point(2478228) == 2230405);
  CHECK(split_point(10) == 9);
  CHECK(split_point(19) == 17);  // floor(171 / 10)
  CHECK(split_point(7, 1, 2) == 3);
  CHECK(split_point(0) == 0);
  CHECK(split_point(index_t(1) << 62, 9, 10) == ((index_t(1) << 62) / 10) * 9 + ((index_t(1) << 62) % 10) * 9 / 10);
  CHECK_THROWS_AS(split_point(10, 11, 10), kiln::ValueError);
  CHECK_THROWS_AS(split_point(10, 1, 0), kiln::ValueError);
  CHECK(kiln::data::split_text("a\xC3\xA9" "b\xE4\xB8\xAD", 1, 2).train == "a\xC3\xA9");
  CHECK_THROWS_AS(kiln::data::split_text("a\xFF"), kiln::ValueError);
}

TEST_CASE("TokenDataset: random windows, reproducibility, uniform starts") {
  std::vector<index_t> tokens(50);
  std::iota(tokens.begin(), tokens.end(), 100);  // token at position i is 100 + i
  const kiln::data::TokenDataset data(tokens, 8);
  CHECK(data.num_windows() == 42);
  Rng rng(123);
  const auto [x, y] = data.batch(6, rng);
  CHECK(rng.offset() == 6);
  REQUIRE(x.shape() == kiln::Shape{6, 8});
  REQUIRE(y.shape() == kiln::Shape{6, 8});
  const std::vector<index_t> xs = values_of(x), ys = values_of(y);
  for (index_t b = 0; b < 6; ++b) {
    const index_t start = xs[static_cast<std::size_t>(b * 8)] - 100;
    CHECK(start >= 0);
    CHECK(start < 42);
    for (index_t t = 0; t < 8; ++t) {
      CHECK(xs[static_cast<std::size_t>(b * 8 + t)] == 100 + start + t);
      CHECK(ys[static_cast<std::size_t>(b * 8 + t)] == 100 + start + t + 1);
    }
  }
  // The same seed and offset give the same batch; the next draw differs.
  Rng again(123);
  CHECK(values_of(data.batch(6, again).x) == xs);
  CHECK(values_of(data.batch(6, again).x) != xs);

  // Starts are uniform over [0, num_windows): 60,000 draws over 6 starts, each 10,000 +- 4.5 sd.
  const kiln::data::TokenDataset small(std::vector<index_t>{0, 1, 2, 3, 4, 5, 6, 7}, 2);
  REQUIRE(small.num_windows() == 6);
  std::array<int, 6> counts{};
  Rng draws(9);
  for (int i = 0; i < 100; ++i) {
    const std::vector<index_t> starts = values_of(small.batch(600, draws).x);
    for (std::size_t r = 0; r < 600; ++r) {
      REQUIRE(starts[2 * r] < 6);
      ++counts[static_cast<std::size_t>(starts[2 * r])];
    }
  }
  for (int c : counts) CHECK(std::abs(c - 10000) < 4.5 * std::sqrt(60000.0 * (1.0 / 6) * (5.0 / 6)));

  CHECK(error_of([] { kiln::data::TokenDataset(std::vector<index_t>{1, 2, 3}, 3); }).find("needs at least 4 tokens") !=
        std::string::npos);
  CHECK_THROWS_AS(kiln::data::TokenDataset(std::vector<index_t>{1, 2, 3}, 0), kiln::ValueError);
  CHECK(error_of([&] { data.windows(std::vector<index_t>{0, 42}); }).find("window start 42 (row 1)") != std::string::npos);
}

TEST_CASE("TokenDataset: sequential evaluation windows and the train/validation split") {
  std::vector<index_t> tokens(23);
  std::iota(tokens.begin(), tokens.end(), 0);
  const kiln::data::TokenDataset data(tokens, 5);
  CHECK(data.num_sequential_windows() == 4);  // starts 0, 5, 10, 15: targets 1..20
  const auto [x, y] = data.sequential_batch(0, 3);
  CHECK(values_of(x) == std::vector<index_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14});
  CHECK(values_of(y) == std::vector<index_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15});
  const auto last = data.sequential_batch(3, 8);
  CHECK(last.x.shape() == kiln::Shape{1, 5});
  CHECK(values_of(last.y) == std::vector<index_t>{16, 17, 18, 19, 20});
  CHECK_THROWS_AS(data.sequential_batch(4, 1), kiln::ValueError);
  const kiln::data::TokenDataset exact(std::vector<index_t>(11, 7), 5);
  CHECK(exact.num_sequential_windows() == 2);

  std::vector<index_t> many(100);
  std::iota(many.begin(), many.end(), 0);
  const auto [train, validation] = kiln::data::split_token_dataset(many, 4);
  CHECK(train.size() == 90);
  CHECK(validation.size() == 10);
  CHECK(validation.tokens().front() == 90);
}

TEST_CASE("token augmentation: masking, deletion, adjacent swaps") {
  std::vector<index_t> tokens(100000);
  std::iota(tokens.begin(), tokens.end(), 0);
  const index_t mask = -7;
  Rng rng(5);
  const std::vector<index_t> masked = kiln::data::mask_tokens(tokens, mask, 0.3, rng);
  CHECK(rng.offset() == 25000);  // ceil(n / 4) blocks
  std::size_t n_masked = 0;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (masked[i] == mask) ++n_masked;
    else CHECK(masked[i] == tokens[i]);
  }
  // Binomial(100000, 0.3): sd = 145.
  CHECK(std::abs(static_cast<double>(n_masked) - 30000.0) < 4.5 * 145.0);

  // Decision i is the same draw in every function: deletion drops exactly the masked positions.
  Rng same(5);
  const std::vector<index_t> kept = kiln::data::delete_tokens(tokens, 0.3, same);
  std::vector<index_t> expected;
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (masked[i] != mask) expected.push_back(tokens[i]);
  CHECK(kept == expected);
  // And decision i is word i % 4 of block i / 4, as a Bernoulli(0.5) sees it.
  Rng words(5);
  const std::vector<index_t> half = kiln::data::mask_tokens(std::vector<index_t>(8, 1), 0, 0.5, words);
  for (std::size_t i = 0; i < 8; ++i)
    CHECK((half[i] == 0) == (Rng(5).block(i / 4)[static_cast<int>(i % 4)] < 0x80000000u));

  Rng always(1);
  CHECK(kiln::data::swap_adjacent_tokens(std::vector<index_t>{0, 1, 2, 3, 4, 5, 6, 7, 8}, 1.0, always) ==
        std::vector<index_t>{1, 0, 3, 2, 5, 4, 7, 6, 8});
  CHECK(kiln::data::mask_tokens(std::vector<index_t>{1, 2, 3}, 9, 0.0, always) == std::vector<index_t>{1, 2, 3});
  CHECK(kiln::data::delete_tokens(std::vector<index_t>{1, 2, 3}, 1.0, always).empty());
  Rng some(8);
  const std::vector<index_t> swapped = kiln::data::swap_adjacent_tokens(tokens, 0.2, some);
  std::size_t moved = 0;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const index_t d = swapped[i] - tokens[i];
    CHECK((d == 0 || d == 1 || d == -1));
    if (d == 1) {
      CHECK(swapped[i + 1] == tokens[i]);  // a swap moves both tokens of the pair
      ++moved;
    }
  }
  // A pair starts at a scan position with probability 0.2, and scanning skips 2 after a swap:
  // the expected number of swaps is n * 0.2 / 1.2.
  CHECK(std::abs(static_cast<double>(moved) - 100000.0 * 0.2 / 1.2) < 600.0);
  CHECK_THROWS_AS(kiln::data::mask_tokens(tokens, 0, 1.5, some), kiln::ValueError);
  CHECK_THROWS_AS(kiln::data::delete_tokens(tokens, -0.1, some), kiln::ValueError);
}
