#!/usr/bin/env python3
"""Reference side of tests/metrics/porter_stemmer.cpp: stems a word list with NLTK's PorterStemmer.

  porter_nltk.py WORDS_FILE OUT_FILE

WORDS_FILE holds one ASCII word a line. OUT_FILE gets one line a word, tab-separated:
  word, stem in ORIGINAL_ALGORITHM mode, stem in MARTIN_EXTENSIONS mode, stem in NLTK_EXTENSIONS mode
(NLTK_EXTENSIONS is NLTK's default, the mode of `PorterStemmer()` that rouge-score uses).
"""
import sys

from nltk.stem.porter import PorterStemmer


def main():
    words_path, out_path = sys.argv[1], sys.argv[2]
    with open(words_path, encoding="ascii") as f:
        words = [line.rstrip("\n") for line in f if line.rstrip("\n")]
    stemmers = [PorterStemmer(mode) for mode in (PorterStemmer.ORIGINAL_ALGORITHM,
                                                 PorterStemmer.MARTIN_EXTENSIONS,
                                                 PorterStemmer.NLTK_EXTENSIONS)]
    with open(out_path, "w", encoding="ascii") as out:
        for word in words:
            out.write("\t".join([word] + [s.stem(word) for s in stemmers]) + "\n")


if __name__ == "__main__":
    main()
