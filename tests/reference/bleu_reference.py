#!/usr/bin/env python3
"""Reference side of tests/metrics/bleu.cpp.

  bleu_reference.py IN_JSON OUT_JSON

IN_JSON: {"corpora": [{"hypotheses": [[token, ...], ...],
                       "references": [[[token, ...], ...], ...]}, ...],   # references[i]: those of hypothesis i
          "tokenize_13a": [line, ...]}
OUT_JSON: {"corpora": [{"none": s, "floor": s, "add-k": s, "exp": s}, ...],
           "tokenize_13a": [tokenized line, ...],
           "lower": [chr(cp).lower() for cp in LOWER_CODE_POINTS]}

BLEU comes from NLTK's nltk.translate.bleu_score.corpus_bleu (weights 1/4 each) with the
smoothing function that equals each of sacreBLEU's methods: none = no smoothing, floor = method1
(epsilon 0.1), add-k = method2 (+1 to the matches and totals of orders 2..4), exp = method3
(NIST geometric sequence). Scores are on NLTK's 0..1 scale.

The 13a tokenization is applied with Python's own `re` engine and the regular expressions of
mteval-v13a as sacreBLEU writes them (tokenizer_13a.py, tokenizer_re.py), so the C++ scanner is
checked against a regex engine rather than against a second hand-written scanner.
"""
import json
import re
import sys
import warnings

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

# Code points whose lower case the C++ lowercase_utf8 claims to match (see bleu.hpp).
# Basic Latin, Latin-1 Supplement, Latin Extended-A, Greek and Coptic, Cyrillic (+ Supplement), 3 signs.
LOWER_CODE_POINTS = list(range(0, 0x180)) + list(range(0x370, 0x530)) + [0x2126, 0x212A, 0x212B]

_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period or comma after a non-digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period or comma before a non-digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]


def tokenize_13a(line):
    for old, new in (("<skipped>", ""), ("-\n", ""), ("\n", " "), ("&quot;", '"'), ("&amp;", "&"),
                     ("&lt;", "<"), ("&gt;", ">")):
        line = line.replace(old, new)
    line = " " + line + " "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    warnings.simplefilter("ignore")  # NLTK warns about orders without matches when unsmoothed
    smoothing = SmoothingFunction(epsilon=0.1)
    methods = {"none": None, "floor": smoothing.method1, "add-k": smoothing.method2, "exp": smoothing.method3}
    corpora = []
    for corpus in data["corpora"]:
        scores = {}
        for name, method in methods.items():
            scores[name] = float(corpus_bleu(corpus["references"], corpus["hypotheses"], smoothing_function=method))
        corpora.append(scores)
    out = {"corpora": corpora,
           "tokenize_13a": [tokenize_13a(line) for line in data["tokenize_13a"]],
           "lower": [chr(cp).lower() for cp in LOWER_CODE_POINTS]}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
