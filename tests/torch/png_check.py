#!/usr/bin/env python3
"""Reference side of tests/io/png.cpp: decodes a PNG written by kiln with Python's zlib only.

  png_check.py PNG RAW WIDTH HEIGHT CHANNELS [PNG RAW WIDTH HEIGHT CHANNELS ...]

For each group: checks the signature, that the chunks are IHDR, one or more consecutive IDAT,
IEND (with nothing after it), every chunk's CRC-32 (zlib.crc32 over type and data), the IHDR
fields (size, bit depth 8, colour type of CHANNELS, methods 0, no interlace), inflates the
concatenated IDAT data with zlib.decompress (which checks the zlib header and the Adler-32),
undoes the row filters (None, Sub, Up, Average, Paeth) and compares the pixels with the bytes of
RAW. Prints the filter types used, one line per group. Exit status 0 when everything matches.
"""

import struct
import sys
import zlib

COLOUR_TYPES = {1: 0, 3: 2, 4: 6}


def fail(message):
    print("png_check: " + message, file=sys.stderr)
    sys.exit(1)


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def unfilter(data, width, height, channels, name):
    stride = width * channels
    if len(data) != height * (stride + 1):
        fail(f"{name}: inflated {len(data)} bytes, expected {height * (stride + 1)}")
    out = bytearray()
    previous = bytearray(stride)
    types = []
    for y in range(height):
        at = y * (stride + 1)
        kind = data[at]
        types.append(kind)
        row = bytearray(data[at + 1:at + 1 + stride])
        for i in range(stride):
            a = row[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            elif kind == 4:
                pred = paeth(a, b, c)
            else:
                fail(f"{name}: row {y} has filter type {kind}")
            row[i] = (row[i] + pred) & 0xFF
        out += row
        previous = row
    return bytes(out), types


def check(png_path, raw_path, width, height, channels):
    png = open(png_path, "rb").read()
    raw = open(raw_path, "rb").read()
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"{png_path}: bad signature {png[:8].hex()}")
    at = 8
    chunks = []
    while at < len(png):
        if len(png) - at < 12:
            fail(f"{png_path}: truncated chunk at offset {at}")
        (length,) = struct.unpack(">I", png[at:at + 4])
        kind = png[at + 4:at + 8]
        body = png[at + 8:at + 8 + length]
        if len(body) != length or len(png) < at + 12 + length:
            fail(f"{png_path}: chunk {kind!r} at offset {at} runs past the end")
        (crc,) = struct.unpack(">I", png[at + 8 + length:at + 12 + length])
        if crc != zlib.crc32(kind + body):
            fail(f"{png_path}: chunk {kind!r} at offset {at}: CRC {crc:08x}, expected {zlib.crc32(kind + body):08x}")
        chunks.append((kind, body))
        at += 12 + length
        if kind == b"IEND":
            break
    if at != len(png):
        fail(f"{png_path}: {len(png) - at} bytes after IEND")
    kinds = [k for k, _ in chunks]
    if len(kinds) < 3 or kinds[0] != b"IHDR" or kinds[-1] != b"IEND" or any(k != b"IDAT" for k in kinds[1:-1]):
        fail(f"{png_path}: chunk sequence {kinds}")
    if chunks[-1][1]:
        fail(f"{png_path}: IEND has data")
    ihdr = chunks[0][1]
    if len(ihdr) != 13:
        fail(f"{png_path}: IHDR has {len(ihdr)} bytes")
    w, h, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", ihdr)
    expected = (width, height, 8, COLOUR_TYPES[channels], 0, 0, 0)
    if (w, h, depth, colour, compression, filtering, interlace) != expected:
        fail(f"{png_path}: IHDR {(w, h, depth, colour, compression, filtering, interlace)}, expected {expected}")
    stream = b"".join(body for _, body in chunks[1:-1])
    try:
        data = zlib.decompress(stream)
    except zlib.error as e:
        fail(f"{png_path}: zlib: {e}")
    pixels, types = unfilter(data, width, height, channels, png_path)
    if pixels != raw:
        first = next(i for i in range(min(len(pixels), len(raw))) if pixels[i] != raw[i]) if len(pixels) == len(raw) else -1
        fail(f"{png_path}: pixels differ (first at byte {first}; {len(pixels)} decoded, {len(raw)} expected)")
    print("filters " + " ".join(str(t) for t in sorted(set(types))) + f" idat {len(chunks) - 2}")


def main():
    args = sys.argv[1:]
    if not args or len(args) % 5:
        fail("usage: png_check.py PNG RAW WIDTH HEIGHT CHANNELS [...]")
    for i in range(0, len(args), 5):
        check(args[i], args[i + 1], int(args[i + 2]), int(args[i + 3]), int(args[i + 4]))


if __name__ == "__main__":
    main()
