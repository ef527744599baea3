#!/usr/bin/env python3
"""Reference side of tests/data/tokenizer.cpp: GPT-2's byte-level BPE as openai/gpt-2's
src/encoder.py defines it, written out here with the `regex` module, plus a naive BPE trainer.

  gpt2_bpe_reference.py IN_JSON OUT_JSON

IN_JSON may hold any of these tasks; OUT_JSON answers each one present:
  "classes": FILE      FILE has lines "L|N|S first last" (hex code points): the ranges where the C++
                       tables say \\p{L}, \\p{N}, \\s. Answer "class_mismatches": code points where
                       `regex` disagrees although the code point is assigned both in `regex`'s
                       Unicode data and in unicodedata's (must be empty), and "class_skew": the
                       disagreements at code points unassigned in one of the two versions
                       (allowed: the two Unicode versions differ).
  "lower": FILE        FILE has lines "cp lower" (hex) for every code point the C++ to_lower
                       changes. Answer "lower_mismatches": code points where str.lower (when one
                       code point long) says otherwise.
  "replace": [hex]     byte strings; answer "replace": [bytes.decode("utf-8", "replace")].
  "pretokenize": [s]   answer "pretokenize": [regex.findall(GPT-2 pattern, s)].
  "bpe": [{"vocab": F, "merges": F, "texts": [s]}]
                       answer "bpe": [[ids of s] per text] per vocabulary, by encoder.py's
                       algorithm (bytes_to_unicode, bpe by lowest rank, merges.txt read as
                       split("\\n")[1:-1]).
  "train": {"text": s, "vocab_size": n, "min_pair_count": m}
                       answer "train": [[left hex, right hex], ...], the merges of a naive
                       trainer: pre-tokens by the pattern, all adjacent pairs recounted after
                       every merge, the highest count first, ties to the smallest
                       (left bytes, right bytes), merged left to right.
"""
import json
import sys
import unicodedata
from collections import Counter

import regex

PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in chars]))


BYTE_TO_CHAR = bytes_to_unicode()


class Gpt2Encoder:
    def __init__(self, vocab_path, merges_path):
        with open(vocab_path, encoding="utf-8") as f:
            self.encoder = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            lines = f.read().split("\n")[1:-1]
        merges = [tuple(line.split()) for line in lines]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}

    def bpe(self, token):
        word = list(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text):
        ids = []
        for piece in PATTERN.findall(text):
            mapped = "".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids


def naive_train(text, vocab_size, min_pair_count):
    words = Counter(tuple(bytes([b]) for b in piece.encode("utf-8")) for piece in PATTERN.findall(text))
    words = [(list(w), c) for w, c in words.items()]
    tokens = {bytes([b]) for b in range(256)}
    merges = []
    while len(tokens) < vocab_size:
        counts = Counter()
        for w, c in words:
            for i in range(len(w) - 1):
                counts[(w[i], w[i + 1])] += c
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p[0], p[1]))
        if counts[best] < max(min_pair_count, 1):
            break
        merges.append(best)
        tokens.add(best[0] + best[1])
        for k, (w, c) in enumerate(words):
            out = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == best[0] and w[i + 1] == best[1]:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = (out, c)
    return [[a.hex(), b.hex()] for a, b in merges]


def check_classes(path):
    table = {"L": set(), "N": set(), "S": set()}
    with open(path) as f:
        for line in f:
            kind, first, last = line.split()
            table[kind].update(range(int(first, 16), int(last, 16) + 1))
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)

    def members(expression):
        out = set()
        for m in regex.finditer(expression, everything):
            out.update(range(ord(m.group()[0]), ord(m.group()[-1]) + 1))
        return out

    truth = {"L": members(r"\p{L}+"), "N": members(r"\p{N}+"), "S": members(r"\s+")}
    unassigned_in_regex = members(r"\p{Cn}+")
    mismatches, skew = [], []
    for kind in ("L", "N", "S"):
        for cp in sorted(table[kind] ^ truth[kind]):
            if cp in unassigned_in_regex or unicodedata.category(chr(cp)) == "Cn":
                skew.append(cp)
            else:
                mismatches.append([kind, cp])
    return mismatches, sorted(set(skew))


def check_lower(path):
    claimed = {}
    with open(path) as f:
        for line in f:
            cp, lower = line.split()
            claimed[int(cp, 16)] = int(lower, 16)
    mismatches = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        lower = chr(cp).lower()
        expected = ord(lower) if len(lower) == 1 else cp
        if claimed.get(cp, cp) != expected:
            mismatches.append(cp)
    return mismatches


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        task = json.load(f)
    out = {"unicode_version": unicodedata.unidata_version, "regex_version": regex.__version__}
    if "classes" in task:
        out["class_mismatches"], out["class_skew"] = check_classes(task["classes"])
    if "lower" in task:
        out["lower_mismatches"] = check_lower(task["lower"])
    if "replace" in task:
        out["replace"] = [bytes.fromhex(h).decode("utf-8", errors="replace") for h in task["replace"]]
    if "pretokenize" in task:
        out["pretokenize"] = [PATTERN.findall(s) for s in task["pretokenize"]]
    if "bpe" in task:
        out["bpe"] = []
        for spec in task["bpe"]:
            encoder = Gpt2Encoder(spec["vocab"], spec["merges"])
            out["bpe"].append([encoder.encode(s) for s in spec["texts"]])
    if "train" in task:
        t = task["train"]
        out["train"] = naive_train(t["text"], t["vocab_size"], t["min_pair_count"])
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
