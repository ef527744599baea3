// Tests of include/kiln/metrics/bleu.hpp: corpus and sentence BLEU worked by hand for every smoothing,
// the 13a tokenizer's rules case by case and against Python's regex engine running sacreBLEU's
// expressions on random lines, lower-casing against Python's str.lower, and corpus BLEU against
// NLTK's corpus_bleu on random corpora with one to four references per segment.
#include <doctest/doctest.h>

#include <kiln/core/error.hpp>
#include <kiln/io/json.hpp>
#include <kiln/metrics/bleu.hpp>

#include "../support/torch_reference.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

using kiln::metrics::BleuOptions;
using kiln::metrics::BleuSmoothing;
using kiln::metrics::BleuTokenizer;
using kiln::metrics::corpus_bleu;
using kiln::metrics::sentence_bleu;
using kiln::metrics::tokenize_13a;

TEST_CASE("13a tokenizer, rule by rule") {
  // Punctuation and symbols are split off; a period or comma is split unless between digits.
  CHECK(tokenize_13a("Hello, world.") == "Hello , world .");
  CHECK(tokenize_13a("(a)[b]{c}<d>") == "( a ) [ b ] { c } < d >");
  CHECK(tokenize_13a("a+b=c; x:y? z@w/v|u~t^s_r`q\\p") == "a + b = c ; x : y ? z @ w / v | u ~ t ^ s _ r ` q \\ p");
  CHECK(tokenize_13a("!\"#$%&*") == "! \" # $ % & *");
  CHECK(tokenize_13a("3.14 and 1,000") == "3.14 and 1,000");
  CHECK(tokenize_13a("1.5.") == "1.5 .");
  CHECK(tokenize_13a("$5,000.00!") == "$ 5,000.00 !");
  CHECK(tokenize_13a("e.g.") == "e . g .");
  CHECK(tokenize_13a("x...y") == "x . . . y");
  CHECK(tokenize_13a(".5 and 5.") == ". 5 and 5 .");  // the padding space before ".5" is a non-digit
  // A dash is split after a digit only; apostrophes are never split.
  CHECK(tokenize_13a("2-3 a-b well-known 4-x") == "2 - 3 a-b well-known 4 - x");
  CHECK(tokenize_13a("It's Jane's") == "It's Jane's");
  // Escapes and markup: entities are decoded, <skipped> removed, a hyphen at a line break joins.
  CHECK(tokenize_13a("&quot;Hi&quot; &amp; bye &lt;3 &gt;") == "\" Hi \" & bye < 3 >");
  CHECK(tokenize_13a("&amp;lt;") == "<");  // "&amp;" -> "&" first, then "&lt;" -> "<"
  CHECK(tokenize_13a("<skipped>word") == "word");
  CHECK(tokenize_13a("end-\nline two\nthree") == "endline two three");
  // Whitespace runs of every kind collapse; the result has no leading or trailing space.
  CHECK(tokenize_13a("  a\t\tb \xC2\xA0 c\xE2\x80\x83" "d\x1C" "e  ") == "a b c d e");
  CHECK(tokenize_13a("") == "");
  // UTF-8 passes through; a period after a non-ASCII letter is split like after any non-digit.
  CHECK(tokenize_13a("caf\xC3\xA9. \xE4\xB8\xAD,\xE6\x96\x87") == "caf\xC3\xA9 . \xE4\xB8\xAD , \xE6\x96\x87");
}

TEST_CASE("whitespace split and lower-casing follow Python") {
  using kiln::metrics::lowercase_utf8;
  using kiln::metrics::split_whitespace;
  CHECK(split_whitespace(" a  b\u2028c\u3000") == std::vector<std::string>{"a", "b", "c"});
  CHECK(split_whitespace("\u200b") == std::vector<std::string>{"\u200b"});  // ZERO WIDTH SPACE is not whitespace
  CHECK(kiln::metrics::rstrip_whitespace("ab \n\u00a0") == "ab");
  CHECK(lowercase_utf8("ÀÉÎ Ÿ ĲĹ İ ΩΣ Д Ё K") == "àéî ÿ ĳĺ i\u0307 ωσ д ё k");
  CHECK(lowercase_utf8("\xFF\xC3") == "\xFF\xC3");                // invalid UTF-8 is kept
  CHECK(lowercase_utf8("Ա Ａ") == "Ա Ａ");                           // outside the covered scripts: unchanged
}

TEST_CASE("corpus BLEU by hand") {
  // Segment 1, hypothesis "the cat sat on the mat" (6 tokens), references
  //   "the cat is on the mat" (6) and "there is a cat on the mat" (7); closest length 6.
  //   1-grams: the x2 (both refs allow 2 in R1), cat, on, mat match; sat not    -> 5 / 6
  //   2-grams: "the cat", "on the", "the mat" match; "cat sat", "sat on" not    -> 3 / 5
  //   3-grams: only "on the mat"                                                 -> 1 / 4
  //   4-grams: none                                                              -> 0 / 3
  // Segment 2, hypothesis "the dog ran to the park", one reference "the dog ran to a park" (the
  // second stream's empty line is dropped); lengths 6 and 6.
  //   1-grams: the (clipped to 1), dog, ran, to, park -> 5 / 6; 2-grams: "the dog", "dog ran",
  //   "ran to" -> 3 / 5; 3-grams: "the dog ran", "dog ran to" -> 2 / 4; 4-grams: "the dog ran to" -> 1 / 3
  // Corpus: counts 10 6 3 1, totals 12 10 8 6, sys_len = ref_len = 12 so BP = 1, and
  //   BLEU = 100 (10/12 * 6/10 * 3/8 * 1/6)^(1/4) = 100 (1/32)^(1/4) = 100 * 2^(-5/4).
  const std::vector<std::string> hyps = {"the cat sat on the mat", "the dog ran to the park"};
  const std::vector<std::vector<std::string>> refs = {{"the cat is on the mat", "the dog ran to a park"},
                                                      {"there is a cat on the mat", ""}};
  for (const auto smoothing : {BleuSmoothing::exp, BleuSmoothing::none, BleuSmoothing::floor}) {
    BleuOptions o;
    o.smoothing = smoothing;
    const auto s = corpus_bleu(hyps, refs, o);
    CHECK(s.score == doctest::Approx(100 * std::pow(2.0, -1.25)).epsilon(1e-12));
    CHECK(std::abs(s.score - 42.044820762685724) < 1e-9);
    CHECK(s.counts == std::vector<std::size_t>{10, 6, 3, 1});
    CHECK(s.totals == std::vector<std::size_t>{12, 10, 8, 6});
    CHECK(s.sys_len == 12);
    CHECK(s.ref_len == 12);
    CHECK(s.bp == 1.0);
    CHECK(s.ratio == 1.0);
    CHECK(std::abs(s.precisions[0] - 100.0 * 10 / 12) < 1e-12);
    CHECK(std::abs(s.precisions[3] - 100.0 / 6) < 1e-12);
  }
  // The 13a tokenizer does not change these (no punctuation); lower-casing does not either.
  BleuOptions lower;
  lower.lowercase = true;
  CHECK(std::abs(corpus_bleu(hyps, refs, lower).score - 42.044820762685724) < 1e-9);
}

TEST_CASE("every smoothing by hand on an order without matches") {
  // Hypothesis "a b c d", reference "a b x d": 1-grams a b d -> 3/4, 2-grams "a b" -> 1/3,
  // 3-grams 0/2, 4-grams 0/1; BP = 1.
  const std::vector<std::string> hyp = {"a b c d"};
  const std::vector<std::vector<std::string>> refs = {{"a b x d"}};
  BleuOptions o;
  o.tokenizer = BleuTokenizer::none;
  // exp: the first order without a match gets 100 / (2 * 2) = 25, the second 100 / (4 * 1) = 25;
  //   (75 * 100/3 * 25 * 25)^(1/4) = (1250^2)^(1/4) = sqrt(1250).
  o.smoothing = BleuSmoothing::exp;
  auto s = corpus_bleu(hyp, refs, o);
  CHECK(std::abs(s.score - std::sqrt(1250.0)) < 1e-9);
  CHECK(std::abs(s.precisions[2] - 25.0) < 1e-12);
  CHECK(std::abs(s.precisions[3] - 25.0) < 1e-12);
  // floor 0.1: 100 * 0.1 / 2 = 5 and 100 * 0.1 / 1 = 10; (75 * 100/3 * 5 * 10)^(1/4) = 125000^(1/4).
  o.smoothing = BleuSmoothing::floor;
  CHECK(std::abs(corpus_bleu(hyp, refs, o).score - std::pow(125000.0, 0.25)) < 1e-9);
  // floor 0.5: 25 and 50 -> (2500 * 25 * 50)^(1/4) = 3125000^(1/4).
  o.smooth_value = 0.5;
  CHECK(std::abs(corpus_bleu(hyp, refs, o).score - std::pow(3125000.0, 0.25)) < 1e-9);
  // add-k 1: 75, 100 * 2/4 = 50, 100 * 1/3, 100 * 1/2 = 50; (75 * 50 * 100/3 * 50)^(1/4) = 6250000^(1/4) = 50.
  o.smoothing = BleuSmoothing::add_k;
  o.smooth_value.reset();
  s = corpus_bleu(hyp, refs, o);
  CHECK(std::abs(s.score - 50.0) < 1e-9);
  CHECK(s.counts == std::vector<std::size_t>{3, 1, 0, 0});  // raw counts, before adding k
  // none: a zero precision makes the score 0.
  o.smoothing = BleuSmoothing::none;
  s = corpus_bleu(hyp, refs, o);
  CHECK(s.score == 0.0);
  CHECK(s.precisions[2] == 0.0);
}

TEST_CASE("brevity penalty, closest reference length and effective order") {
  // sentence_bleu("the cat", ["the cat sat on the mat"]): totals 2 1 0 0, so with effective order
  // only orders 1 and 2 count, both 100%; BP = exp(1 - 6/2) = e^-2.
  auto s = sentence_bleu("the cat", {"the cat sat on the mat"});
  CHECK(std::abs(s.score - 100 * std::exp(-2.0)) < 1e-9);
  CHECK(std::abs(s.bp - std::exp(-2.0)) < 1e-15);
  CHECK(std::abs(s.ratio - 2.0 / 6.0) < 1e-15);
  // Without effective order (corpus_bleu's default) the empty third order makes it 0.
  CHECK(corpus_bleu({"the cat"}, {{"the cat sat on the mat"}}).score == 0.0);
  // Reference lengths 3 and 5 around a hypothesis of 4: both 1 away, the shorter (3) is used,
  // so BP = 1. With lengths 2 and 6 the shorter 2 again: still no penalty.
  CHECK(corpus_bleu({"a b c d"}, {{"a b c"}, {"a b c d e"}}).ref_len == 3);
  CHECK(corpus_bleu({"a b c d"}, {{"a b c d e f"}, {"a b"}}).ref_len == 2);
  CHECK(corpus_bleu({"a b c d"}, {{"a b c d e f"}, {"a b c d e f g h"}}).ref_len == 6);
  // An empty hypothesis scores 0 with BP 0.
  s = corpus_bleu({""}, {{"a b"}});
  CHECK(s.score == 0.0);
  CHECK(s.bp == 0.0);
  // Identical texts score 100.
  CHECK(std::abs(sentence_bleu("The quick brown fox.", {"The quick brown fox."}).score - 100.0) < 1e-9);
}

TEST_CASE("options: lowercase, tokenizer, trailing whitespace") {
  CHECK(sentence_bleu("THE CAT", {"the cat"}).score == 0.0);
  BleuOptions lower{.lowercase = true, .effective_order = true};
  CHECK(std::abs(sentence_bleu("THE CAT", {"the cat"}, lower).score - 100.0) < 1e-9);
  // 13a splits "cat." into "cat ."; the whitespace tokenizer does not.
  CHECK(std::abs(sentence_bleu("the cat.", {"the cat ."}).score - 100.0) < 1e-9);
  BleuOptions none{.tokenizer = BleuTokenizer::none, .effective_order = true};
  CHECK(sentence_bleu("the cat.", {"the cat ."}, none).score < 100.0);
  // Trailing whitespace is stripped before 13a runs, so "abc-\n" keeps its dash (while
  // tokenize_13a itself joins "-\n").
  CHECK(tokenize_13a("abc-\n") == "abc");
  CHECK(sentence_bleu("abc-\n", {"abc-"}).counts[0] == 1);
  CHECK(kiln::metrics::bleu_smoothing_from_name("add-k") == BleuSmoothing::add_k);
  CHECK(kiln::metrics::bleu_tokenizer_from_name("13a") == BleuTokenizer::v13a);
}

TEST_CASE("clear errors") {
  CHECK_THROWS_WITH_AS(corpus_bleu({"a", "b", "c"}, {{"a", "b", "c"}, {"a", "b"}}),
                       doctest::Contains("3 hypotheses but reference stream 1 has 2 lines"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(corpus_bleu({"a"}, {}), doctest::Contains("no reference streams"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(corpus_bleu({}, {{}}), doctest::Contains("no hypotheses"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(corpus_bleu({"a", "b"}, {{"a", ""}, {"x", ""}}),
                       doctest::Contains("every reference of segment 1 is empty"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(sentence_bleu("a", {}), doctest::Contains("no references"), kiln::ValueError);
  CHECK_THROWS_AS(kiln::metrics::bleu_smoothing_from_name("add_k"), kiln::ValueError);
  CHECK_THROWS_AS(kiln::metrics::bleu_tokenizer_from_name("intl"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(corpus_bleu({"a"}, {{"a"}}, BleuOptions{.max_ngram_order = 0}),
                       doctest::Contains("max_ngram_order"), kiln::ValueError);
}

namespace {

std::filesystem::path fresh_temp_dir(const std::string& stem) {
  static int counter = 0;
  auto dir = std::filesystem::temp_directory_path() /
             (stem + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::string join(const std::vector<std::string>& tokens) {
  std::string out;
  for (const std::string& t : tokens) out += (out.empty() ? "" : " ") + t;
  return out;
}

struct RandomCorpus {
  std::vector<std::vector<std::string>> hypotheses;               // tokens
  std::vector<std::vector<std::vector<std::string>>> references;  // references[i]: those of hypothesis i
};

}  // namespace

TEST_CASE("corpus BLEU equals NLTK's corpus_bleu; 13a equals sacreBLEU's regular expressions") {
  std::mt19937 gen(1234u);
  const auto uniform = [&](unsigned lo, unsigned hi) { return lo + gen() % (hi - lo + 1); };
  static const char* const vocabulary[] = {"the", "a", "cat", "dog", "sat", "on", "mat", "ran", "big", "red"};
  const auto sentence = [&](unsigned lo, unsigned hi, unsigned vocab) {
    std::vector<std::string> tokens(uniform(lo, hi));
    for (auto& t : tokens) t = vocabulary[gen() % vocab];
    return tokens;
  };
  // Hypotheses have at least 4 tokens: NLTK counts max(1, n-grams) per segment as the
  // denominator, sacreBLEU the n-grams themselves, and they agree only when every order is present.
  std::vector<RandomCorpus> corpora;
  for (int c = 0; c < 24; ++c) {
    RandomCorpus corpus;
    const unsigned segments = uniform(1, 40);
    const unsigned vocab = c % 3 == 0 ? 4 : 10;  // a small vocabulary gives 4-gram matches
    for (unsigned i = 0; i < segments; ++i) {
      corpus.hypotheses.push_back(sentence(4, 16, vocab));
      std::vector<std::vector<std::string>> refs(uniform(1, 4));
      for (auto& r : refs) r = sentence(1, 18, vocab);
      corpus.references.push_back(refs);
    }
    corpora.push_back(std::move(corpus));
  }
  // Random lines for the tokenizer: pieces that every rule reacts to.
  static const char* const pieces[] = {"a",  "Z",  "word", "0",   "7",   "42",     "3.5",   ".",      ",",     "-",
                                       "'",  " ",  "  ",   "\t",  "\n",  "-\n",    "\r",    "&quot;", "&amp;", "&lt;",
                                       "&gt;", "&", "<skipped>", "<", ">", "(", ")", "[", "]", "{", "}", "/", "\\",
                                       "!",  "?",  ":",    ";",   "\"",  "$",      "%",     "#",      "@",     "^",
                                       "_",  "`",  "|",    "~",   "*",   "+",      "=",     "\xC3\xA9", "\xE4\xB8\xAD",
                                       "\xC2\xA0", "\xE2\x80\x83", "\x1C", "\xF0\x9F\x98\x80", "..", ".,", ",5", "5,", "1-"};
  std::vector<std::string> lines = {"", "Hello, world.", "&amp;lt;", "x-\n-\ny"};
  for (int i = 0; i < 3000; ++i) {
    std::string line;
    const unsigned n = uniform(0, 30);
    for (unsigned k = 0; k < n; ++k) line += pieces[gen() % (sizeof(pieces) / sizeof(pieces[0]))];
    lines.push_back(line);
  }

  kiln::io::Json input = kiln::io::Json::object();
  kiln::io::Json json_corpora = kiln::io::Json::array();
  for (const RandomCorpus& corpus : corpora) {
    kiln::io::Json j = kiln::io::Json::object();
    kiln::io::Json hyps = kiln::io::Json::array();
    for (const auto& h : corpus.hypotheses) {
      kiln::io::Json tokens = kiln::io::Json::array();
      for (const auto& t : h) tokens.push_back(t);
      hyps.push_back(tokens);
    }
    kiln::io::Json refs = kiln::io::Json::array();
    for (const auto& segment : corpus.references) {
      kiln::io::Json list = kiln::io::Json::array();
      for (const auto& r : segment) {
        kiln::io::Json tokens = kiln::io::Json::array();
        for (const auto& t : r) tokens.push_back(t);
        list.push_back(tokens);
      }
      refs.push_back(list);
    }
    j.set("hypotheses", hyps);
    j.set("references", refs);
    json_corpora.push_back(j);
  }
  input.set("corpora", json_corpora);
  kiln::io::Json json_lines = kiln::io::Json::array();
  for (const auto& l : lines) json_lines.push_back(l);
  input.set("tokenize_13a", json_lines);

  const auto dir = fresh_temp_dir("kiln_bleu");
  {
    std::ofstream out(dir / "in.json", std::ios::binary);
    out << kiln::io::to_json(input);
  }
  REQUIRE(kiln::test::run_python_script("nltk", "python3-nltk", "reference/bleu_reference.py",
                                        kiln::test::shell_quote((dir / "in.json").string()) + " " +
                                            kiln::test::shell_quote((dir / "out.json").string())) == 0);
  std::ifstream in(dir / "out.json", std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  const kiln::io::Json result = kiln::io::parse_json(text.str(), "bleu_reference.py output");

  // BLEU: the corpus as sacreBLEU input (whitespace tokens, 4 reference streams with empty lines
  // where a segment has fewer references), against NLTK on the same token lists.
  int unsmoothed_compared = 0;
  for (std::size_t c = 0; c < corpora.size(); ++c) {
    const RandomCorpus& corpus = corpora[c];
    std::vector<std::string> hyps;
    std::vector<std::vector<std::string>> streams(4, std::vector<std::string>(corpus.hypotheses.size()));
    for (std::size_t i = 0; i < corpus.hypotheses.size(); ++i) {
      hyps.push_back(join(corpus.hypotheses[i]));
      for (std::size_t r = 0; r < corpus.references[i].size(); ++r) streams[r][i] = join(corpus.references[i][r]);
    }
    const kiln::io::Json& expected = result.at("corpora").at(c);
    for (const char* name : {"none", "floor", "add-k", "exp"}) {
      BleuOptions o;
      o.tokenizer = BleuTokenizer::none;
      o.smoothing = kiln::metrics::bleu_smoothing_from_name(name);
      const auto ours = corpus_bleu(hyps, streams, o);
      const bool all_orders_match = std::all_of(ours.counts.begin(), ours.counts.end(), [](std::size_t k) { return k > 0; });
      if (std::string(name) == "none") {
        if (!all_orders_match) continue;  // NLTK floors a zero precision at DBL_MIN instead of scoring 0
        ++unsmoothed_compared;
      }
      INFO("corpus " << c << ", smoothing " << name << ", " << hyps.size() << " segments");
      CHECK(std::abs(ours.score / 100 - expected.at(name).as_double()) < 1e-12);
    }
  }
  CHECK(unsmoothed_compared >= 8);

  // 13a: every random line.
  const kiln::io::Json& tokenized = result.at("tokenize_13a");
  REQUIRE(tokenized.size() == lines.size());
  int mismatches = 0;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string ours = tokenize_13a(lines[i]);
    if (ours != tokenized.at(i).as_string() && ++mismatches <= 10)
      FAIL_CHECK("line " << i << ": " << kiln::io::to_json(kiln::io::Json(lines[i])) << " -> "
                         << kiln::io::to_json(kiln::io::Json(ours)) << ", sacreBLEU's regexes give "
                         << kiln::io::to_json(tokenized.at(i)));
  }
  CHECK(mismatches == 0);

  // Lower case of every code point in the blocks lowercase_utf8 covers, against str.lower.
  const kiln::io::Json& lower = result.at("lower");
  std::vector<std::uint32_t> code_points;
  for (std::uint32_t cp = 0; cp < 0x180; ++cp) code_points.push_back(cp);
  for (std::uint32_t cp = 0x370; cp < 0x530; ++cp) code_points.push_back(cp);
  for (std::uint32_t cp : {0x2126u, 0x212Au, 0x212Bu}) code_points.push_back(cp);
  REQUIRE(lower.size() == code_points.size());
  mismatches = 0;
  for (std::size_t i = 0; i < code_points.size(); ++i) {
    std::string encoded;
    kiln::data::append_utf8(encoded, static_cast<char32_t>(code_points[i]));
    if (kiln::metrics::lowercase_utf8(encoded) != lower.at(i).as_string() && ++mismatches <= 10)
      FAIL_CHECK("lowercase_utf8 of code point " << code_points[i] << " differs from Python's str.lower");
  }
  CHECK(mismatches == 0);
  std::filesystem::remove_all(dir);
}
