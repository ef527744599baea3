// Tests of include/kiln/metrics/porter_stemmer.hpp: the examples of Porter's paper worked through the
// steps by hand, the differences between the three modes, and exact agreement with NLTK 3.8's
// PorterStemmer in every mode on several thousand words (words of the repository's own text plus
// generated stems carrying every suffix the rules know).
#include <doctest/doctest.h>

#include <kiln/metrics/porter_stemmer.hpp>

#include "../support/torch_reference.hpp"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

using kiln::metrics::porter_stem;
using kiln::metrics::PorterMode;

TEST_CASE("Porter's examples, worked through the steps (original algorithm)") {
  const auto stem = [](const char* w) { return porter_stem(w, PorterMode::original_algorithm); };
  // Step 1a.
  CHECK(stem("caresses") == "caress");  // SSES -> SS
  CHECK(stem("ponies") == "poni");      // IES -> I
  CHECK(stem("ties") == "ti");          // IES -> I
  CHECK(stem("caress") == "caress");    // SS -> SS
  CHECK(stem("cats") == "cat");         // S ->
  // Step 1b.
  CHECK(stem("feed") == "feed");          // EED with m("f") = 0: unchanged, and ED is not tried
  CHECK(stem("agreed") == "agre");        // (m>0) EED -> EE gives agree; 5a: m("agre") = 1, not *o: drop e
  CHECK(stem("plastered") == "plaster");  // (*v*) ED ->
  CHECK(stem("bled") == "bled");          // "bl" has no vowel
  CHECK(stem("motoring") == "motor");     // (*v*) ING ->
  CHECK(stem("sing") == "sing");          // "s" has no vowel
  CHECK(stem("sized") == "size");         // siz -> IZ -> IZE; 5a: m("siz") = 1 and *o: keep e
  CHECK(stem("hopping") == "hop");        // *d, not L/S/Z -> single letter
  CHECK(stem("tanned") == "tan");
  CHECK(stem("falling") == "fall");  // *d but L: stays
  CHECK(stem("hissing") == "hiss");  // *d but S: stays
  CHECK(stem("fizzed") == "fizz");   // *d but Z: stays
  CHECK(stem("failing") == "fail");  // m = 1 but "fail" ends vowel-vowel-consonant: not *o
  CHECK(stem("filing") == "file");   // m("fil") = 1 and *o -> E
  // Step 1c.
  CHECK(stem("happy") == "happi");  // (*v*) Y -> I
  CHECK(stem("sky") == "sky");      // "sk" has no vowel
  // Step 2 (and what later steps make of it).
  CHECK(stem("relational") == "relat");  // ATIONAL -> ATE (relate); 4: m("rel") = 1 keeps ATE; 5a: m("relat") = 2 drops e
  CHECK(stem("conditional") == "condit");  // TIONAL -> TION; 4: (m>1 and *T) ION ->
  CHECK(stem("rational") == "ration");     // ATIONAL with m("r") = 0: no step-2 change; 4: m("ration") = 2, AL ->
  CHECK(stem("valenci") == "valenc");      // ENCI -> ENCE; 4: m("val") = 1 keeps ENCE; 5a: m("valenc") = 2 drops e
  CHECK(stem("conformabli") == "conform");  // ABLI -> ABLE; 4: m("conform") = 2, ABLE ->
  CHECK(stem("vietnamization") == "vietnam");  // IZATION -> IZE; 4: IZE ->
  CHECK(stem("callousness") == "callous");     // OUSNESS -> OUS; 4: m("call") = 1 keeps OUS
  CHECK(stem("sensibiliti") == "sensibl");     // BILITI -> BLE; 4: m("sens") = 1 keeps IBLE; 5a: drops e
  // Step 3.
  CHECK(stem("triplicate") == "triplic");  // ICATE -> IC; 4: m("tripl") = 1 keeps IC
  CHECK(stem("formative") == "form");      // ATIVE ->
  CHECK(stem("hopeful") == "hope");        // FUL -> ; 5a: m("hop") = 1 and *o keeps e
  CHECK(stem("goodness") == "good");       // NESS ->
  // Step 4.
  CHECK(stem("revival") == "reviv");
  CHECK(stem("allowance") == "allow");
  CHECK(stem("airliner") == "airlin");
  CHECK(stem("adjustable") == "adjust");
  CHECK(stem("replacement") == "replac");  // EMENT comes before MENT and ENT
  CHECK(stem("adoption") == "adopt");      // (m>1 and *T) ION
  CHECK(stem("bowdlerize") == "bowdler");
  // Step 5.
  CHECK(stem("probate") == "probat");  // (m>1) E ->
  CHECK(stem("rate") == "rate");       // m("rat") = 1 and *o
  CHECK(stem("cease") == "ceas");      // m("ceas") = 1, not *o
  CHECK(stem("controll") == "control");  // (m>1 and *d and *L)
  CHECK(stem("roll") == "roll");         // m("rol") = 1
  CHECK(stem("generalizations") == "gener");  // S; IZATION -> IZE; ALIZE -> AL; (m>1) AL ->
}

TEST_CASE("The modes differ where NLTK says they do") {
  const auto original = [](const char* w) { return porter_stem(w, PorterMode::original_algorithm); };
  const auto martin = [](const char* w) { return porter_stem(w, PorterMode::martin_extensions); };
  const auto nltk = [](const char* w) { return porter_stem(w, PorterMode::nltk_extensions); };
  // Words of one or two letters are returned as they are, except by the original algorithm.
  CHECK(original("is") == "i");
  CHECK(original("s").empty());
  CHECK(martin("is") == "is");
  CHECK(nltk("is") == "is");
  // Irregular forms (nltk only).
  CHECK(original("skies") == "ski");
  CHECK(nltk("skies") == "sky");
  CHECK(nltk("dying") == "die");
  CHECK(original("dying") == "dy");
  CHECK(nltk("news") == "news");
  CHECK(martin("news") == "new");
  // IES -> IE and IED -> IE in four-letter words, IED -> I in longer ones.
  CHECK(nltk("ties") == "tie");
  CHECK(martin("ties") == "ti");
  CHECK(nltk("died") == "die");
  CHECK(original("died") == "di");
  CHECK(nltk("spied") == "spi");
  // Y -> I only after a consonant that is not the first letter.
  CHECK(original("enjoy") == "enjoi");
  CHECK(nltk("enjoy") == "enjoy");
  // LOGI -> LOG.
  CHECK(original("geology") == "geologi");
  CHECK(nltk("geology") == "geolog");
  // BLI -> BLE instead of ABLI -> ABLE.
  CHECK(original("possibli") == "possibli");
  CHECK(martin("possibli") == "possibl");
  // Upper case is folded first.
  CHECK(nltk("Caresses") == "caress");
  CHECK(porter_stem("") == "");
}

namespace {

// Every distinct word of letters in the text of the repository's headers and top-level documents.
std::set<std::string> repository_words() {
  std::set<std::string> words;
  const std::filesystem::path root(KILN_SOURCE_DIR);
  std::vector<std::filesystem::path> files = {root / "README.md", root / "CHANGELOG.md"};
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root / "include" / "kiln"))
    if (entry.is_regular_file() && entry.path().extension() == ".hpp") files.push_back(entry.path());
  for (const auto& file : files) {
    std::ifstream in(file);
    std::string word;
    char c;
    while (in.get(c)) {
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        word += c;
      } else {
        if (word.size() >= 1 && word.size() <= 30) words.insert(word);
        word.clear();
      }
    }
  }
  return words;
}

// Random stems with every suffix that a rule tests for, singly and in pairs, so that each rule is
// met with stems of every measure and with y's in every position.
std::set<std::string> generated_words(int count) {
  static const char* const suffixes[] = {
      "",      "s",     "sses",   "ies",    "ss",     "eed",   "ed",    "ing",     "ied",     "at",      "ated",
      "bled",  "izing", "y",      "ational", "tional", "enci", "anci",  "izer",    "abli",    "bli",     "alli",
      "entli", "eli",   "ousli",  "ization", "ation", "ator",  "alism", "iveness", "fulness", "ousness", "aliti",
      "iviti", "biliti", "fulli", "logi",   "icate",  "ative", "alize", "iciti",   "ical",    "ful",     "ness",
      "al",    "ance",  "ence",   "er",     "ic",     "able",  "ible",  "ant",     "ement",   "ment",    "ent",
      "sion",  "tion",  "ion",    "ou",     "ism",    "ate",   "iti",   "ous",     "ive",     "ize",     "e",
      "ll",    "lled",  "yed",    "ying",   "ies",    "ly",    "ness",  "ings"};
  static const char letters[] = "aaeeiioouuyybcdfgghlllmnnprrssstttvwxz";
  std::mt19937 gen(20240601u);
  std::set<std::string> words;
  const std::size_t n_suffixes = sizeof(suffixes) / sizeof(suffixes[0]);
  while (static_cast<int>(words.size()) < count) {
    std::string w;
    const unsigned length = 1 + gen() % 6;
    for (unsigned i = 0; i < length; ++i) w += letters[gen() % (sizeof(letters) - 1)];
    if (gen() % 4 == 0) w += w.back();  // a double letter before the suffix
    w += suffixes[gen() % n_suffixes];
    if (gen() % 3 == 0) w += suffixes[gen() % n_suffixes];
    words.insert(w);
  }
  return words;
}

std::filesystem::path fresh_temp_dir(const std::string& stem) {
  static int counter = 0;
  auto dir = std::filesystem::temp_directory_path() /
             (stem + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

TEST_CASE("porter_stem equals NLTK's PorterStemmer in every mode on thousands of words") {
  std::set<std::string> words = repository_words();
  const std::size_t from_repository = words.size();
  for (const std::string& w : generated_words(4000)) words.insert(w);
  for (const char* w : {"caresses", "ponies", "sky", "skies", "dying", "lying", "tying", "news", "innings", "outings",
                        "cannings", "howe", "proceed", "exceed", "succeed", "a", "y", "yy", "ys", "by", "syzygy",
                        "toy", "ivy", "oats", "trees", "orrery", "oaten", "Ponies", "NEWS", "abc123ing", "2nd"})
    words.insert(w);
  MESSAGE(words.size() << " words, " << from_repository << " of them from the repository's text");
  REQUIRE(words.size() >= 4000);

  const auto dir = fresh_temp_dir("kiln_porter");
  {
    std::ofstream out(dir / "words.txt");
    for (const std::string& w : words) out << w << '\n';
  }
  REQUIRE(kiln::test::run_python_script("nltk", "python3-nltk", "reference/porter_nltk.py",
                                        kiln::test::shell_quote((dir / "words.txt").string()) + " " +
                                            kiln::test::shell_quote((dir / "stems.txt").string())) == 0);
  std::ifstream in(dir / "stems.txt");
  std::string line;
  std::size_t compared = 0, mismatches = 0;
  const PorterMode modes[] = {PorterMode::original_algorithm, PorterMode::martin_extensions,
                              PorterMode::nltk_extensions};
  while (std::getline(in, line)) {
    std::vector<std::string> fields;
    std::size_t start = 0;
    while (true) {
      const std::size_t tab = line.find('\t', start);
      fields.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
      if (tab == std::string::npos) break;
      start = tab + 1;
    }
    REQUIRE(fields.size() == 4);
    for (int m = 0; m < 3; ++m) {
      const std::string ours = porter_stem(fields[0], modes[m]);
      if (ours != fields[1 + m] && ++mismatches <= 20)
        FAIL_CHECK("mode " << m << ": porter_stem(\"" << fields[0] << "\") = \"" << ours << "\", NLTK: \""
                           << fields[1 + m] << "\"");
    }
    ++compared;
  }
  CHECK(compared == words.size());
  CHECK(mismatches == 0);
  std::filesystem::remove_all(dir);
}
