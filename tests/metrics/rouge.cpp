// Tests of include/kiln/metrics/rouge.hpp: rouge-score's documented example and ROUGE-Lsum examples
// worked by hand (including its double-counting guard and its choice among equally long LCSs),
// tokenization, empty inputs, limits and errors, and agreement to 1e-12 with a separate Python
// implementation of rouge-score's rules (tests/reference/rouge_reference.py, stemming with NLTK)
// on random multi-reference texts.
#include <doctest/doctest.h>

#include <kiln/core/error.hpp>
#include <kiln/io/json.hpp>
#include <kiln/metrics/rouge.hpp>

#include "../support/torch_reference.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

using kiln::metrics::RougeOptions;
using kiln::metrics::RougeScore;
using kiln::metrics::RougeScorer;
using kiln::metrics::rouge_tokenize;

namespace {

void check_score(const RougeScore& s, double precision, double recall, double fmeasure) {
  CHECK(std::abs(s.precision - precision) < 1e-12);
  CHECK(std::abs(s.recall - recall) < 1e-12);
  CHECK(std::abs(s.fmeasure - fmeasure) < 1e-12);
}

}  // namespace

TEST_CASE("rouge-score's documented example, by hand") {
  // target     "The quick brown fox jumps over the lazy dog"  -> 9 tokens
  // prediction "The quick brown dog jumps on the log."        -> 8 tokens
  // rouge1: the x2, quick, brown, jumps, dog overlap: 6; P = 6/8, R = 6/9, F = 2PR/(P+R) = 12/17.
  // rouge2: "the quick", "quick brown" of 7 predicted and 8 target bigrams; P = 2/7, R = 1/4, F = 4/15.
  // rougeL: LCS "the quick brown jumps the" = 5; P = 5/8, R = 5/9, F = 10/17.
  // Stemming changes jumps -> jump on both sides only, so the scores stay.
  for (const bool stem : {false, true}) {
    RougeScorer scorer({"rouge1", "rouge2", "rougeL", "rougeLsum"}, RougeOptions{.use_stemmer = stem});
    const auto s = scorer.score("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log.");
    check_score(s.at("rouge1"), 6.0 / 8, 6.0 / 9, 12.0 / 17);
    check_score(s.at("rouge2"), 2.0 / 7, 1.0 / 4, 4.0 / 15);
    check_score(s.at("rougeL"), 5.0 / 8, 5.0 / 9, 10.0 / 17);
    check_score(s.at("rougeLsum"), 5.0 / 8, 5.0 / 9, 10.0 / 17);  // one line each: the same LCS
  }
}

TEST_CASE("ROUGE-Lsum by hand") {
  RougeScorer scorer({"rougeL", "rougeLsum"});
  // Target lines [the cat sat] [the dog ran], prediction lines [the dog sat] [the cat ran].
  //   target line 1: LCS with "the dog sat" is {the, sat} (positions 0, 2), with "the cat ran"
  //   {the, cat} (0, 1); union {0, 1, 2}: the, cat, sat -> 3 hits (token counts allow them).
  //   target line 2: with "the dog sat" {the, dog}, with "the cat ran" {the, ran}; union: the,
  //   dog, ran -> 3 hits. 6 hits of 6 and 6 tokens: P = R = F = 1.
  // rougeL ignores the lines: LCS of "the cat sat the dog ran" and "the dog sat the cat ran" is
  // "the sat the ran" = 4, so P = R = F = 4/6.
  auto s = scorer.score("the cat sat\nthe dog ran", "the dog sat\nthe cat ran");
  check_score(s.at("rougeLsum"), 1, 1, 1);
  check_score(s.at("rougeL"), 4.0 / 6, 4.0 / 6, 4.0 / 6);

  // Target lines [a b] [a c], prediction [a b c]: counts target a:2 b:1 c:1, prediction a:1 b:1 c:1.
  //   line 1: LCS {a, b} -> a (prediction's a now used up), b: 2 hits.
  //   line 2: LCS {a, c} -> a is not counted again (no a left in the prediction), c: 1 hit.
  // 3 hits: P = 3/3, R = 3/4, F = 2 * 0.75 / 1.75 = 6/7 (summing LCS lengths would give 4 hits).
  s = scorer.score("a b\na c", "a b c");
  check_score(s.at("rougeLsum"), 1, 0.75, 6.0 / 7);

  // Which LCS is read back matters: target [a b], prediction lines [b a] and [b]. rouge-score's
  // backtracking takes "a" from [b a] (on a tie it moves up, not left) and "b" from [b]: union
  // {a, b}, 2 hits of 2 target and 3 prediction tokens: P = 2/3, R = 1, F = 0.8.
  s = scorer.score("a b", "b a\nb");
  check_score(s.at("rougeLsum"), 2.0 / 3, 1, 0.8);

  // Empty lines are dropped, a line of punctuation has no tokens.
  s = scorer.score("\n\nthe cat\n\n", "!!!\nthe cat\n");
  check_score(s.at("rougeLsum"), 1, 1, 1);
}

TEST_CASE("tokenization as rouge-score") {
  CHECK(rouge_tokenize("Hello, World! It's 2024...") == std::vector<std::string>{"hello", "world", "it", "s", "2024"});
  CHECK(rouge_tokenize("caf\xC3\xA9 na\xC3\xAFve") == std::vector<std::string>{"caf", "na", "ve"});
  // İ lower-cases to "i" + a combining dot, the KELVIN SIGN to "k".
  CHECK(rouge_tokenize("B\xC4\xB0R \xE2\x84\xAAm") == std::vector<std::string>{"bi", "r", "km"});
  // Stemming (NLTK's default mode) applies only to tokens longer than 3 characters.
  CHECK(rouge_tokenize("Running cats dies ties was", true) == std::vector<std::string>{"run", "cat", "die", "tie", "was"});
  CHECK(rouge_tokenize("generalizations", true) == std::vector<std::string>{"gener"});
  CHECK(rouge_tokenize("").empty());
}

TEST_CASE("empty inputs score 0") {
  RougeScorer scorer({"rouge1", "rouge2", "rougeL", "rougeLsum"});
  for (const auto& [target, prediction] : std::vector<std::pair<std::string, std::string>>{
           {"", ""}, {"the cat", ""}, {"", "the cat"}, {"!!!", "the cat"}, {"\n\n", "\n"}}) {
    const auto s = scorer.score(target, prediction);
    REQUIRE(s.size() == 4);
    for (const auto& entry : s) check_score(entry.second, 0, 0, 0);
  }
  // A single token has no bigram: rouge2 is 0 while rouge1 is 1.
  const auto s = scorer.score("cat", "cat");
  check_score(s.at("rouge1"), 1, 1, 1);
  check_score(s.at("rouge2"), 0, 0, 0);
}

TEST_CASE("several references: the best F-measure, per type") {
  RougeScorer scorer({"rouge1", "rouge2"});
  // Against "a b c d": rouge1 P = R = 1 (F 1), rouge2 bigrams "a b" "b c" "c d" vs "b a" "a c" "c d"
  //   -> 1 of 3 (F 1/3). Against "a b c": rouge1 P = 3/4, R = 1 (F 6/7), rouge2 "a b" "b c" of
  //   the prediction's "b a" "a c" "c d" -> 0. Against "b a c": rouge1 P = 3/4, R = 1, F = 6/7;
  //   rouge2 "b a", "a c" -> P = 2/3, R = 1, F = 0.8. So rouge1 comes from the first target,
  //   rouge2 from the third.
  const auto s = scorer.score_multi({"a b c d", "a b c", "b a c"}, "b a c d");
  check_score(s.at("rouge1"), 1, 1, 1);
  check_score(s.at("rouge2"), 2.0 / 3, 1, 0.8);
  // Ties keep the first target.
  const auto t = scorer.score_multi({"x y", "y x"}, "x");
  check_score(t.at("rouge1"), 1, 0.5, 2.0 / 3);
  CHECK_THROWS_WITH_AS(scorer.score_multi({}, "x"), doctest::Contains("no targets"), kiln::ValueError);
}

TEST_CASE("corpus mean") {
  RougeScorer scorer({"rouge1"});
  // Pairs: ("a b", "a b") -> P = R = F = 1; ("a b c d", "a") -> P = 1, R = 1/4, F = 0.4.
  const auto mean = kiln::metrics::rouge_corpus_mean(scorer, {"a b", "a b c d"}, {"a b", "a"});
  check_score(mean.at("rouge1"), 1, 0.625, 0.7);
  const auto multi = kiln::metrics::rouge_corpus_mean_multi(scorer, {{"x", "a b"}, {"a b c d"}}, {"a b", "a"});
  check_score(multi.at("rouge1"), 1, 0.625, 0.7);
  CHECK_THROWS_WITH_AS(kiln::metrics::rouge_corpus_mean(scorer, {"a"}, {"a", "b"}),
                       doctest::Contains("2 predictions but 1 targets"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(kiln::metrics::rouge_corpus_mean(scorer, {}, {}), doctest::Contains("no predictions"),
                       kiln::ValueError);
}

TEST_CASE("limits and errors") {
  CHECK_THROWS_WITH_AS(RougeScorer({"rouge0"}), doctest::Contains("positive N"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(RougeScorer({"rouge10"}), doctest::Contains("invalid ROUGE type \"rouge10\""), kiln::ValueError);
  CHECK_THROWS_WITH_AS(RougeScorer({"rougeW"}), doctest::Contains("invalid ROUGE type"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(RougeScorer({}), doctest::Contains("no ROUGE types"), kiln::ValueError);
  CHECK_THROWS_AS(kiln::metrics::rouge_n({"a"}, {"a"}, 0), kiln::ValueError);
  // 30 x 40 tokens need 1200 LCS cells: refused under a limit of 1000, for L and Lsum alike.
  std::string target, prediction;
  for (int i = 0; i < 30; ++i) target += "w" + std::to_string(i % 7) + " ";
  for (int i = 0; i < 40; ++i) prediction += "w" + std::to_string(i % 5) + (i % 10 == 9 ? "\n" : " ");
  for (const char* type : {"rougeL", "rougeLsum"}) {
    RougeScorer limited({type}, RougeOptions{.max_lcs_cells = 1000});
    CHECK_THROWS_WITH_AS(limited.score(target, prediction),
                         doctest::Contains("30 target tokens and 40 prediction tokens needs 30 x 40 table cells, over "
                                           "the limit of 1000"),
                         kiln::ValueError);
    RougeScorer enough({type}, RougeOptions{.max_lcs_cells = 1200});
    CHECK_NOTHROW(enough.score(target, prediction));
  }
  // n-gram types have no such limit.
  CHECK_NOTHROW(RougeScorer({"rouge2"}, RougeOptions{.max_lcs_cells = 1}).score(target, prediction));
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

}  // namespace

TEST_CASE("ROUGE equals a Python implementation of rouge-score's rules on random texts") {
  std::mt19937 gen(99u);
  const auto uniform = [&](unsigned lo, unsigned hi) { return lo + gen() % (hi - lo + 1); };
  // Words that stem (running/runs/ran, connection/connected, ...), case variants, digits, and
  // separators of every kind, including the two non-ASCII characters that lower-case into [a-z0-9].
  static const char* const words[] = {"the",        "The",      "THE",       "cat",        "cats",     "dog",
                                      "dogs",       "running",  "runs",      "ran",        "run",      "connection",
                                      "connected",  "connects", "happiness", "happy",      "generalizations",
                                      "general",    "a",        "an",        "on",         "mat",      "sat",
                                      "sitting",    "2024",     "3rd",       "x1",         "caf\xC3\xA9",
                                      "\xC4\xB0stanbul", "\u212Aelvin", "\xE4\xB8\xAD\xE6\x96\x87", "it's",
                                      "e.g.",       "news",     "skies",     "dying",      "agreed",   "feed"};
  static const char* const separators[] = {" ", " ", " ", " ", "  ", ", ", ". ", "\n", "\n\n", " - ", "!", "\t"};
  const auto text = [&](unsigned max_words) {
    std::string t;
    const unsigned n = uniform(0, max_words);
    for (unsigned k = 0; k < n; ++k) {
      t += words[gen() % (sizeof(words) / sizeof(words[0]))];
      t += separators[gen() % (sizeof(separators) / sizeof(separators[0]))];
    }
    return t;
  };
  struct Item {
    std::vector<std::string> targets;
    std::string prediction;
  };
  std::vector<Item> items;
  for (int i = 0; i < 250; ++i) {
    Item item;
    const unsigned n_targets = uniform(1, 3);
    for (unsigned t = 0; t < n_targets; ++t) item.targets.push_back(text(i % 10 == 0 ? 3 : 40));
    item.prediction = text(i % 10 == 1 ? 3 : 40);
    items.push_back(item);
  }
  const std::vector<std::string> types = {"rouge1", "rouge2", "rouge3", "rougeL", "rougeLsum"};

  kiln::io::Json input = kiln::io::Json::object();
  kiln::io::Json json_types = kiln::io::Json::array();
  for (const auto& t : types) json_types.push_back(t);
  input.set("types", json_types);
  kiln::io::Json json_items = kiln::io::Json::array();
  for (const Item& item : items) {
    kiln::io::Json j = kiln::io::Json::object();
    kiln::io::Json targets = kiln::io::Json::array();
    for (const auto& t : item.targets) targets.push_back(t);
    j.set("targets", targets);
    j.set("prediction", item.prediction);
    json_items.push_back(j);
  }
  input.set("items", json_items);

  const auto dir = fresh_temp_dir("kiln_rouge");
  {
    std::ofstream out(dir / "in.json", std::ios::binary);
    out << kiln::io::to_json(input);
  }
  REQUIRE(kiln::test::run_python_script("nltk", "python3-nltk", "reference/rouge_reference.py",
                                        kiln::test::shell_quote((dir / "in.json").string()) + " " +
                                            kiln::test::shell_quote((dir / "out.json").string())) == 0);
  std::ifstream in(dir / "out.json", std::ios::binary);
  std::stringstream json_text;
  json_text << in.rdbuf();
  const kiln::io::Json result = kiln::io::parse_json(json_text.str(), "rouge_reference.py output");

  for (const bool stem : {false, true}) {
    const std::string name = stem ? "stemmed" : "plain";
    const RougeScorer scorer(types, RougeOptions{.use_stemmer = stem});
    const kiln::io::Json& expected = result.at(name);
    const kiln::io::Json& expected_tokens = result.at(name + "_tokens");
    REQUIRE(expected.size() == items.size());
    int mismatches = 0, nonzero_lsum = 0;
    kiln::metrics::RougeMeanAggregator aggregator;
    std::vector<double> expected_mean(types.size(), 0.0);
    for (std::size_t i = 0; i < items.size(); ++i) {
      const auto tokens = rouge_tokenize(items[i].prediction, stem);
      std::vector<std::string> python_tokens;
      for (const auto& t : expected_tokens.at(i).as_array()) python_tokens.push_back(t.as_string());
      if (tokens != python_tokens && ++mismatches <= 10)
        FAIL_CHECK(name << " item " << i << ": tokens differ for " << kiln::io::to_json(kiln::io::Json(items[i].prediction)));
      const auto ours = scorer.score_multi(items[i].targets, items[i].prediction);
      aggregator.add(ours);
      for (std::size_t k = 0; k < types.size(); ++k) {
        const RougeScore& s = ours.at(types[k]);
        const kiln::io::Json& e = expected.at(i).at(types[k]);
        expected_mean[k] += e.at(2).as_double();
        if (types[k] == "rougeLsum" && s.fmeasure > 0) ++nonzero_lsum;
        if ((std::abs(s.precision - e.at(0).as_double()) > 1e-12 || std::abs(s.recall - e.at(1).as_double()) > 1e-12 ||
             std::abs(s.fmeasure - e.at(2).as_double()) > 1e-12) &&
            ++mismatches <= 10)
          FAIL_CHECK(name << " item " << i << " " << types[k] << ": ours " << s.precision << " " << s.recall << " "
                          << s.fmeasure << ", Python " << kiln::io::to_json(e));
      }
    }
    CHECK(mismatches == 0);
    CHECK(nonzero_lsum > 150);
    const auto mean = aggregator.mean();
    for (std::size_t k = 0; k < types.size(); ++k)
      CHECK(std::abs(mean.at(types[k]).fmeasure - expected_mean[k] / static_cast<double>(items.size())) < 1e-12);
  }
  std::filesystem::remove_all(dir);
}
