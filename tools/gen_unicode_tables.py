#!/usr/bin/env python3
"""Generates the Unicode tables of include/kiln/data/unicode.hpp from Python's unicodedata.

  python3 tools/gen_unicode_tables.py            rewrites the generated part of unicode.hpp
  python3 tools/gen_unicode_tables.py --check    exits 1 when the committed tables differ

The header keeps hand-written code around one generated block, between the lines
"// BEGIN GENERATED UNICODE TABLES" and "// END GENERATED UNICODE TABLES"; only that block is
rewritten. The tables, each a sorted list of disjoint inclusive code point ranges:

  letter_ranges      \\p{L}: General_Category Lu, Ll, Lt, Lm or Lo
  number_ranges      \\p{N}: General_Category Nd, Nl or No
  whitespace_ranges  \\s of the `regex` module on str patterns: the White_Space property of
                     PropList.txt (unicodedata has no property API; the list is written out below
                     and checked against str.isspace, which adds the four separators U+001C..U+001F)
  lowercase_ranges   str.lower for every code point whose lower case is ONE code point (U+0130
                     LATIN CAPITAL LETTER I WITH DOT ABOVE, whose full lower case has two, is left
                     out), as runs {first, last, delta, stride}: the code points first,
                     first + stride, ... <= last map to cp + delta.

The tables follow unicodedata.unidata_version (written into the header as
unicode_tables_version). The `regex` module may carry a newer Unicode version: the two then
differ only on code points that are unassigned (Cn) in the older one, which
tests/data/tokenizer.cpp checks.
"""
import sys
import unicodedata
from pathlib import Path

HEADER = Path(__file__).resolve().parent.parent / "include" / "kiln" / "data" / "unicode.hpp"
BEGIN = "// BEGIN GENERATED UNICODE TABLES"
END = "// END GENERATED UNICODE TABLES"
MAX_CODE_POINT = 0x10FFFF

# PropList.txt, property White_Space (unchanged since Unicode 6.3, which removed U+180E).
WHITE_SPACE = [(0x0009, 0x000D), (0x0020, 0x0020), (0x0085, 0x0085), (0x00A0, 0x00A0), (0x1680, 0x1680),
               (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]


def ranges_of(predicate):
    out = []
    start = None
    for cp in range(MAX_CODE_POINT + 2):
        inside = cp <= MAX_CODE_POINT and predicate(cp)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def category_ranges(categories):
    return ranges_of(lambda cp: unicodedata.category(chr(cp)) in categories)


def lowercase_runs():
    mapping = {}
    for cp in range(MAX_CODE_POINT + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        lower = chr(cp).lower()
        if len(lower) == 1 and ord(lower) != cp:
            mapping[cp] = ord(lower) - cp
    runs = []
    cps = sorted(mapping)
    i = 0
    while i < len(cps):
        first = cps[i]
        delta = mapping[first]
        # Prefer the longer of a stride-1 and a stride-2 run starting here.
        best = (first, 1)
        for stride in (1, 2):
            last = first
            while mapping.get(last + stride) == delta and (stride == 1 or (last + 1) not in mapping):
                last += stride
            if (last - first) // stride > (best[0] - first) // best[1]:
                best = (last, stride)
        last, stride = best
        if last == first:
            stride = 1
        runs.append((first, last, delta, stride))
        covered = set(range(first, last + 1, stride))
        while i < len(cps) and cps[i] in covered:
            i += 1
    # Check the runs reproduce the mapping exactly.
    rebuilt = {}
    for first, last, delta, stride in runs:
        for cp in range(first, last + 1, stride):
            assert cp not in rebuilt
            rebuilt[cp] = delta
    assert rebuilt == mapping
    return runs


def check_white_space():
    listed = {cp for a, b in WHITE_SPACE for cp in range(a, b + 1)}
    isspace = {cp for cp in range(MAX_CODE_POINT + 1) if chr(cp).isspace()}
    assert listed <= isspace and isspace - listed == {0x1C, 0x1D, 0x1E, 0x1F}, sorted(isspace ^ listed)


def format_ranges(name, comment, ranges):
    lines = [f"// {comment} ({len(ranges)} ranges)",
             f"inline constexpr CodePointRange {name}[] = {{"]
    row = []
    for a, b in ranges:
        row.append(f"{{0x{a:X}, 0x{b:X}}}")
        if len(row) == 6:
            lines.append("    " + ", ".join(row) + ",")
            row = []
    if row:
        lines.append("    " + ", ".join(row) + ",")
    lines.append("};")
    return lines


def format_runs(runs):
    lines = [f"// str.lower as runs {{first, last, delta, stride}} ({len(runs)} runs)",
             "inline constexpr LowercaseRun lowercase_runs[] = {"]
    row = []
    for first, last, delta, stride in runs:
        row.append(f"{{0x{first:X}, 0x{last:X}, {delta}, {stride}}}")
        if len(row) == 4:
            lines.append("    " + ", ".join(row) + ",")
            row = []
    if row:
        lines.append("    " + ", ".join(row) + ",")
    lines.append("};")
    return lines


def generated_block():
    check_white_space()
    lines = [BEGIN,
             f"// Generated by tools/gen_unicode_tables.py from Python {sys.version_info[0]}.{sys.version_info[1]}'s "
             f"unicodedata (Unicode {unicodedata.unidata_version}); do not edit.",
             f'inline constexpr const char* unicode_tables_version = "{unicodedata.unidata_version}";', ""]
    lines += format_ranges("letter_ranges", "\\p{L}: General_Category Lu, Ll, Lt, Lm, Lo",
                           category_ranges({"Lu", "Ll", "Lt", "Lm", "Lo"}))
    lines.append("")
    lines += format_ranges("number_ranges", "\\p{N}: General_Category Nd, Nl, No", category_ranges({"Nd", "Nl", "No"}))
    lines.append("")
    lines += format_ranges("whitespace_ranges", "\\s: the White_Space property", WHITE_SPACE)
    lines.append("")
    lines += format_runs(lowercase_runs())
    lines.append(END)
    return "\n".join(lines) + "\n"


def main():
    text = HEADER.read_text(encoding="utf-8")
    begin = text.index(BEGIN)
    end = text.index(END) + len(END) + 1
    updated = text[:begin] + generated_block() + text[end:]
    if "--check" in sys.argv:
        if updated != text:
            print(f"{HEADER}: the generated Unicode tables are out of date; run {sys.argv[0]}", file=sys.stderr)
            return 1
        print(f"{HEADER}: tables up to date (Unicode {unicodedata.unidata_version})")
        return 0
    if updated != text:
        HEADER.write_text(updated, encoding="utf-8")
    print(f"wrote the tables of {HEADER} (Unicode {unicodedata.unidata_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
