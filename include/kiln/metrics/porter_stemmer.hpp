// kiln/metrics/porter_stemmer.hpp — the Porter (1980) suffix-stripping stemmer in the three modes of NLTK's
// nltk.stem.porter.PorterStemmer (ORIGINAL_ALGORITHM, MARTIN_EXTENSIONS, NLTK_EXTENSIONS); ROUGE stems with it.
// Builds on the standard library only (<string>, <string_view>).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kiln::metrics {

// Which variant of the algorithm to run, named after NLTK's PorterStemmer modes (NLTK 3.8):
//  - original_algorithm: the published algorithm, M. F. Porter, "An algorithm for suffix stripping",
//    Program 14(3), 130–137 (1980), steps 1a–5b exactly as printed (ABLI -> ABLE in step 2).
//  - martin_extensions: the changes in Martin Porter's own implementations: words of one or two
//    letters are returned as they are, BLI -> BLE replaces ABLI -> ABLE, and (m>0) LOGI -> LOG.
//  - nltk_extensions (NLTK's default, and what Google's rouge-score uses through
//    `nltk.stem.porter.PorterStemmer()`): martin_extensions plus a table of irregular forms
//    (skies -> sky, dying -> die, news -> news, ...), IES -> IE and IED -> IE for four-letter words,
//    IED -> I otherwise, Y -> I only after a consonant that is not the first letter, ALLI -> AL
//    tried first, FULLI -> FUL, LOGI -> LOG measured with the L, and *o also true for a two-letter
//    vowel-consonant stem.
enum class PorterMode { original_algorithm, martin_extensions, nltk_extensions };

namespace detail::porter {

inline bool is_vowel_letter(char c) { return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u'; }

// Porter's consonant: a letter other than a, e, i, o, u, and other than a y preceded by a consonant
// (so a y at the start is a consonant). Every other byte (digits, other letters) is a consonant too.
// Walks back over a run of y's, each one flipping the answer of the letter before it.
inline bool is_consonant(std::string_view w, std::size_t i) {
  std::size_t flips = 0;
  while (w[i] == 'y' && i > 0) {
    ++flips;
    --i;
  }
  const bool base = w[i] == 'y' ? true : !is_vowel_letter(w[i]);
  return (flips % 2 == 0) ? base : !base;
}

// m in [C](VC){m}[V]: the number of vowel-to-consonant transitions.
inline int measure(std::string_view s) {
  int m = 0;
  bool previous_vowel = false;
  bool previous_consonant = true;  // of s[i-1]; recomputed incrementally for the y rule
  for (std::size_t i = 0; i < s.size(); ++i) {
    bool consonant;
    if (is_vowel_letter(s[i])) consonant = false;
    else if (s[i] == 'y') consonant = (i == 0) ? true : !previous_consonant;
    else consonant = true;
    if (consonant && previous_vowel) ++m;
    previous_vowel = !consonant;
    previous_consonant = consonant;
  }
  return m;
}

// *v*: the stem contains a vowel.
inline bool contains_vowel(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i)
    if (!is_consonant(s, i)) return true;
  return false;
}

// *d: the word ends with a double consonant.
inline bool ends_double_consonant(std::string_view w) {
  const std::size_t n = w.size();
  return n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1);
}

// *o: the stem ends consonant-vowel-consonant and the last consonant is not w, x or y; in
// nltk_extensions mode also a two-letter stem vowel-consonant.
inline bool ends_cvc(std::string_view w, PorterMode mode) {
  const std::size_t n = w.size();
  if (n >= 3 && is_consonant(w, n - 3) && !is_consonant(w, n - 2) && is_consonant(w, n - 1) && w[n - 1] != 'w' &&
      w[n - 1] != 'x' && w[n - 1] != 'y')
    return true;
  return mode == PorterMode::nltk_extensions && n == 2 && !is_consonant(w, 0) && is_consonant(w, 1);
}

inline bool ends_with(std::string_view w, std::string_view suffix) {
  return w.size() >= suffix.size() && w.substr(w.size() - suffix.size()) == suffix;
}

enum class Condition { none, measure_positive, measure_above_one, ion, logi_with_l };

struct Rule {
  std::string_view suffix;
  std::string_view replacement;
  Condition condition;
};

inline bool holds(Condition c, std::string_view word, std::string_view stem) {
  switch (c) {
    case Condition::none: return true;
    case Condition::measure_positive: return measure(stem) > 0;
    case Condition::measure_above_one: return measure(stem) > 1;
    case Condition::ion: return measure(stem) > 1 && !stem.empty() && (stem.back() == 's' || stem.back() == 't');
    case Condition::logi_with_l: return measure(word.substr(0, word.size() - 3)) > 0;  // the stem plus its 'l'
  }
  return false;
}

// The first rule whose suffix ends the word decides: its replacement when its condition holds,
// else the word unchanged (later rules are not tried), as in the paper and NLTK.
inline std::string apply_rules(const std::string& word, const Rule* rules, std::size_t count) {
  for (std::size_t r = 0; r < count; ++r) {
    if (!ends_with(word, rules[r].suffix)) continue;
    const std::string_view stem = std::string_view(word).substr(0, word.size() - rules[r].suffix.size());
    if (!holds(rules[r].condition, word, stem)) return word;
    return std::string(stem) + std::string(rules[r].replacement);
  }
  return word;
}

// Step 1a: SSES -> SS, IES -> I, SS -> SS, S -> (nltk_extensions: a four-letter ...IES -> ...IE).
inline std::string step1a(const std::string& word, PorterMode mode) {
  if (mode == PorterMode::nltk_extensions && word.size() == 4 && ends_with(word, "ies"))
    return word.substr(0, 1) + "ie";
  static constexpr Rule rules[] = {{"sses", "ss", Condition::none},
                                   {"ies", "i", Condition::none},
                                   {"ss", "ss", Condition::none},
                                   {"s", "", Condition::none}};
  return apply_rules(word, rules, 4);
}

// Step 1b: (m>0) EED -> EE; (*v*) ED -> ; (*v*) ING -> ; after the second or third: AT -> ATE,
// BL -> BLE, IZ -> IZE, (*d and not (*L or *S or *Z)) -> single letter, (m=1 and *o) -> E.
inline std::string step1b(const std::string& word, PorterMode mode) {
  if (mode == PorterMode::nltk_extensions && ends_with(word, "ied"))
    return word.size() == 4 ? word.substr(0, 1) + "ie" : word.substr(0, word.size() - 3) + "i";
  if (ends_with(word, "eed")) {
    const std::string stem = word.substr(0, word.size() - 3);
    return measure(stem) > 0 ? stem + "ee" : word;
  }
  std::string stem;
  bool removed = false;
  for (const std::string_view suffix : {std::string_view("ed"), std::string_view("ing")}) {
    if (ends_with(word, suffix)) {
      stem = word.substr(0, word.size() - suffix.size());
      if (contains_vowel(stem)) {
        removed = true;
        break;
      }
    }
  }
  if (!removed) return word;
  if (ends_with(stem, "at") || ends_with(stem, "bl") || ends_with(stem, "iz")) return stem + "e";
  if (ends_double_consonant(stem)) {
    const char last = stem.back();
    if (last == 'l' || last == 's' || last == 'z') return stem;
    stem.pop_back();
    return stem;
  }
  if (measure(stem) == 1 && ends_cvc(stem, mode)) return stem + "e";
  return stem;
}

// Step 1c: (*v*) Y -> I; nltk_extensions: Y -> I when the letter before is a consonant that is
// not the first letter of the word.
inline std::string step1c(const std::string& word, PorterMode mode) {
  if (!ends_with(word, "y")) return word;
  const std::string stem = word.substr(0, word.size() - 1);
  const bool applies = mode == PorterMode::nltk_extensions ? (stem.size() > 1 && is_consonant(stem, stem.size() - 1))
                                                           : contains_vowel(stem);
  return applies ? stem + "i" : word;
}

// Step 2: the (m>0) double-suffix rules, in the paper's order (first matching suffix decides).
inline std::string step2(const std::string& word, PorterMode mode) {
  if (mode == PorterMode::nltk_extensions && ends_with(word, "alli") &&
      measure(std::string_view(word).substr(0, word.size() - 4)) > 0)
    return step2(word.substr(0, word.size() - 4) + "al", mode);
  constexpr Condition m0 = Condition::measure_positive;
  Rule rules[24];
  std::size_t n = 0;
  for (const Rule& r : {Rule{"ational", "ate", m0}, Rule{"tional", "tion", m0}, Rule{"enci", "ence", m0},
                        Rule{"anci", "ance", m0}, Rule{"izer", "ize", m0}})
    rules[n++] = r;
  rules[n++] = mode == PorterMode::original_algorithm ? Rule{"abli", "able", m0} : Rule{"bli", "ble", m0};
  for (const Rule& r : {Rule{"alli", "al", m0}, Rule{"entli", "ent", m0}, Rule{"eli", "e", m0}, Rule{"ousli", "ous", m0},
                        Rule{"ization", "ize", m0}, Rule{"ation", "ate", m0}, Rule{"ator", "ate", m0},
                        Rule{"alism", "al", m0}, Rule{"iveness", "ive", m0}, Rule{"fulness", "ful", m0},
                        Rule{"ousness", "ous", m0}, Rule{"aliti", "al", m0}, Rule{"iviti", "ive", m0},
                        Rule{"biliti", "ble", m0}})
    rules[n++] = r;
  if (mode == PorterMode::nltk_extensions) {
    rules[n++] = Rule{"fulli", "ful", m0};
    rules[n++] = Rule{"logi", "log", Condition::logi_with_l};
  } else if (mode == PorterMode::martin_extensions) {
    rules[n++] = Rule{"logi", "log", m0};
  }
  return apply_rules(word, rules, n);
}

// Step 3: (m>0) ICATE -> IC, ATIVE -> , ALIZE -> AL, ICITI -> IC, ICAL -> IC, FUL -> , NESS -> .
inline std::string step3(const std::string& word) {
  constexpr Condition m0 = Condition::measure_positive;
  static constexpr Rule rules[] = {{"icate", "ic", m0}, {"ative", "", m0}, {"alize", "al", m0}, {"iciti", "ic", m0},
                                   {"ical", "ic", m0},  {"ful", "", m0},   {"ness", "", m0}};
  return apply_rules(word, rules, sizeof(rules) / sizeof(rules[0]));
}

// Step 4: (m>1) removes AL, ANCE, ENCE, ER, IC, ABLE, IBLE, ANT, EMENT, MENT, ENT,
// (m>1 and (*S or *T)) ION, OU, ISM, ATE, ITI, OUS, IVE, IZE.
inline std::string step4(const std::string& word) {
  constexpr Condition m1 = Condition::measure_above_one;
  static constexpr Rule rules[] = {{"al", "", m1},   {"ance", "", m1},  {"ence", "", m1}, {"er", "", m1},
                                   {"ic", "", m1},   {"able", "", m1},  {"ible", "", m1}, {"ant", "", m1},
                                   {"ement", "", m1}, {"ment", "", m1}, {"ent", "", m1},  {"ion", "", Condition::ion},
                                   {"ou", "", m1},   {"ism", "", m1},   {"ate", "", m1},  {"iti", "", m1},
                                   {"ous", "", m1},  {"ive", "", m1},   {"ize", "", m1}};
  return apply_rules(word, rules, sizeof(rules) / sizeof(rules[0]));
}

// Step 5a: (m>1) E -> ; (m=1 and not *o) E -> . Both conditions are tried.
inline std::string step5a(const std::string& word, PorterMode mode) {
  if (!ends_with(word, "e")) return word;
  const std::string stem = word.substr(0, word.size() - 1);
  const int m = measure(stem);
  if (m > 1 || (m == 1 && !ends_cvc(stem, mode))) return stem;
  return word;
}

// Step 5b: (m>1 and *d and *L) -> single letter; the measure is taken of the word less one l.
inline std::string step5b(const std::string& word) {
  if (ends_with(word, "ll") && measure(std::string_view(word).substr(0, word.size() - 1)) > 1)
    return word.substr(0, word.size() - 1);
  return word;
}

// nltk_extensions' irregular forms: the word, or nullptr when it has no entry.
inline const char* irregular_form(std::string_view word) {
  static constexpr std::string_view table[][2] = {
      {"sky", "sky"},         {"skies", "sky"},     {"dying", "die"},         {"lying", "lie"},
      {"tying", "tie"},       {"news", "news"},     {"innings", "inning"},    {"inning", "inning"},
      {"outings", "outing"},  {"outing", "outing"}, {"cannings", "canning"}, {"canning", "canning"},
      {"howe", "howe"},       {"proceed", "proceed"}, {"exceed", "exceed"},  {"succeed", "succeed"}};
  for (const auto& entry : table)
    if (entry[0] == word) return entry[1].data();
  return nullptr;
}

}  // namespace detail::porter

// The Porter stem of `word` as NLTK 3.8's PorterStemmer(mode).stem(word) computes it: ASCII
// letters are lower-cased first, then steps 1a, 1b, 1c, 2, 3, 4, 5a and 5b run in turn (see
// PorterMode for what each mode changes). Meant for ASCII words; other bytes count as
// consonants one byte at a time (NLTK works on code points and lower-cases all of Unicode, so
// non-ASCII words may stem differently). Linear in the word's length up to a small factor.
inline std::string porter_stem(std::string_view word, PorterMode mode = PorterMode::nltk_extensions) {
  namespace p = detail::porter;
  std::string w(word);
  for (char& c : w)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  if (mode == PorterMode::nltk_extensions)
    if (const char* irregular = p::irregular_form(word)) return irregular;
  if (mode != PorterMode::original_algorithm && word.size() <= 2) return w;
  w = p::step1a(w, mode);
  w = p::step1b(w, mode);
  w = p::step1c(w, mode);
  w = p::step2(w, mode);
  w = p::step3(w);
  w = p::step4(w);
  w = p::step5a(w, mode);
  w = p::step5b(w);
  return w;
}

}  // namespace kiln::metrics
