#!/usr/bin/env python3
"""Reference side of tests/metrics/rouge.cpp: ROUGE scores by the rules of Google's rouge-score.

  rouge_reference.py IN_JSON OUT_JSON

IN_JSON:  {"types": ["rouge1", ...], "items": [{"targets": [text, ...], "prediction": text}, ...]}
OUT_JSON: {"plain": [...], "stemmed": [...]} where each list has, per item, an object mapping each
          type to [precision, recall, fmeasure] of score_multi(targets, prediction), and
          "plain_tokens" / "stemmed_tokens": the tokens of each item's prediction.

rouge-score itself is not packaged by Debian, so this is a separate Python implementation of its
rules (rouge_score/tokenize.py, rouge_scorer.py, scoring.py), written with Python's own str.lower,
regular expressions and collections.Counter, and NLTK's PorterStemmer() in its default mode
(NLTK_EXTENSIONS), which is the stemmer rouge-score's DefaultTokenizer constructs.
"""
import collections
import json
import re
import sys

from nltk.stem.porter import PorterStemmer

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_TOKEN = re.compile(r"^[a-z0-9]+$")


def tokenize(text, stemmer):
    pieces = _SPACES.split(_NON_ALNUM.sub(" ", text.lower()))
    if stemmer is not None:
        pieces = [stemmer.stem(p) if len(p) > 3 else p for p in pieces]
    return [p for p in pieces if _TOKEN.match(p)]


def fmeasure(p, r):
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def ngram_score(target, prediction, n):
    t = collections.Counter(tuple(target[i:i + n]) for i in range(len(target) - n + 1))
    p = collections.Counter(tuple(prediction[i:i + n]) for i in range(len(prediction) - n + 1))
    overlap = sum(min(count, p[g]) for g, count in t.items())
    precision = overlap / max(sum(p.values()), 1)
    recall = overlap / max(sum(t.values()), 1)
    return (precision, recall, fmeasure(precision, recall))


def lcs_table(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    return table


def lcs_score(target, prediction):
    if not target or not prediction:
        return (0.0, 0.0, 0.0)
    length = lcs_table(target, prediction)[-1][-1]
    precision, recall = length / len(prediction), length / len(target)
    return (precision, recall, fmeasure(precision, recall))


def lcs_indices(ref, can):
    """Indices into ref of the LCS that rouge-score's _backtrack_norec reads out."""
    table = lcs_table(ref, can)
    i, j, picked = len(ref), len(can), []
    while i > 0 and j > 0:
        if ref[i - 1] == can[j - 1]:
            picked.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return picked[::-1]


def summary_lcs_score(target_sents, prediction_sents):
    if not target_sents or not prediction_sents:
        return (0.0, 0.0, 0.0)
    m = sum(len(s) for s in target_sents)
    n = sum(len(s) for s in prediction_sents)
    if m == 0 or n == 0:
        return (0.0, 0.0, 0.0)
    left_t = collections.Counter(t for s in target_sents for t in s)
    left_p = collections.Counter(t for s in prediction_sents for t in s)
    hits = 0
    for r in target_sents:
        union = set()
        for c in prediction_sents:
            union.update(lcs_indices(r, c))
        for k in sorted(union):
            token = r[k]
            if left_p[token] > 0 and left_t[token] > 0:
                hits += 1
                left_p[token] -= 1
                left_t[token] -= 1
    precision, recall = hits / n, hits / m
    return (precision, recall, fmeasure(precision, recall))


def score(target, prediction, types, stemmer):
    out = {}
    t_tokens, p_tokens = tokenize(target, stemmer), tokenize(prediction, stemmer)
    for kind in types:
        if kind == "rougeL":
            out[kind] = lcs_score(t_tokens, p_tokens)
        elif kind == "rougeLsum":
            lines = lambda text: [tokenize(s, stemmer) for s in text.split("\n") if len(s)]
            out[kind] = summary_lcs_score(lines(target), lines(prediction))
        else:
            out[kind] = ngram_score(t_tokens, p_tokens, int(kind[5:]))
    return out


def score_multi(targets, prediction, types, stemmer):
    all_scores = [score(t, prediction, types, stemmer) for t in targets]
    best = {}
    for kind in types:
        best_index = 0
        for i, s in enumerate(all_scores):
            if s[kind][2] > all_scores[best_index][kind][2]:
                best_index = i
        best[kind] = list(all_scores[best_index][kind])
    return best


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    types = data["types"]
    out = {}
    for name, stemmer in (("plain", None), ("stemmed", PorterStemmer())):
        out[name] = [score_multi(item["targets"], item["prediction"], types, stemmer) for item in data["items"]]
        out[name + "_tokens"] = [tokenize(item["prediction"], stemmer) for item in data["items"]]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
