#!/usr/bin/env python3
"""Reference side of tests/io/tensorboard.cpp: reads a TensorBoard event file with plain Python.

  tensorboard_check.py EVENT_FILE OUT_JSON

Reads every TFRecord (uint64 length, masked CRC-32C of the length, data, masked CRC-32C of the
data), checks both CRCs with a bitwise CRC-32C written here (no table, so it shares nothing
with kiln's), and that the file ends exactly after the last record. Decodes each record as a
tensorflow Event protobuf with its own varint and field decoder:
  Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; Image image = 4; }
  Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
Each image's PNG is decoded too: signature, chunk CRC-32s (zlib.crc32), IHDR, the inflated IDAT
stream (zlib.decompress checks the zlib header and Adler-32) with its row filters undone.

Writes OUT_JSON: a list with one object per record, in file order:
  {"wall_time": float, "step": int, "file_version": str (when present),
   "values": [{"tag": str, "simple_value": float} or
              {"tag": str, "image": {"height", "width", "colorspace",
                                     "png": {"width", "height", "channels", "pixels_hex"}}}],
   "unknown_fields": [[message, field number, wire type], ...]}
Exit status 0 when every record could be read; 1 with a message on stderr otherwise.
"""

import json
import struct
import sys
import zlib


def fail(message):
    print("tensorboard_check: " + message, file=sys.stderr)
    sys.exit(1)


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_varint(data, at, where):
    value = 0
    shift = 0
    while True:
        if at >= len(data):
            fail(f"{where}: varint runs past the end at byte {at}")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at
        if shift >= 70:
            fail(f"{where}: varint longer than 10 bytes at byte {at}")


def signed64(value):
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(data, where):
    """Yields (field number, wire type, value): an int for varints, bytes otherwise."""
    at = 0
    while at < len(data):
        key, at = read_varint(data, at, where)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = read_varint(data, at, where)
        elif wire == 1:
            value = data[at:at + 8]
            at += 8
        elif wire == 2:
            length, at = read_varint(data, at, where)
            value = data[at:at + length]
            at += length
        elif wire == 5:
            value = data[at:at + 4]
            at += 4
        else:
            fail(f"{where}: field {number} has wire type {wire}")
        if at > len(data):
            fail(f"{where}: field {number} runs past the end of its message")
        yield number, wire, value


def expect_wire(where, number, wire, wanted):
    if wire != wanted:
        fail(f"{where}: field {number} has wire type {wire}, expected {wanted}")


def decode_png(png, where):
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"{where}: bad PNG signature {png[:8].hex()}")
    at = 8
    chunks = []
    while at < len(png):
        (length,) = struct.unpack(">I", png[at:at + 4])
        kind = png[at + 4:at + 8]
        body = png[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length:at + 12 + length])
        if crc != zlib.crc32(kind + body):
            fail(f"{where}: PNG chunk {kind!r} has a bad CRC")
        chunks.append((kind, body))
        at += 12 + length
    kinds = [k for k, _ in chunks]
    if kinds[0] != b"IHDR" or kinds[-1] != b"IEND" or any(k != b"IDAT" for k in kinds[1:-1]):
        fail(f"{where}: PNG chunk sequence {kinds}")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    channels = {0: 1, 2: 3, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace != 0:
        fail(f"{where}: PNG depth {depth}, colour type {colour}, interlace {interlace}")
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels
    if len(raw) != height * (stride + 1):
        fail(f"{where}: PNG inflates to {len(raw)} bytes, expected {height * (stride + 1)}")
    pixels = bytearray()
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 0:
                predicted = 0
            elif kind == 1:
                predicted = a
            elif kind == 2:
                predicted = b
            elif kind == 3:
                predicted = (a + b) // 2
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predicted = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                fail(f"{where}: PNG row {y} has filter type {kind}")
            row[i] = (row[i] + predicted) & 0xFF
        pixels += row
        previous = row
    return {"width": width, "height": height, "channels": channels, "pixels_hex": bytes(pixels).hex()}


def decode_image(data, where, unknown):
    image = {"height": 0, "width": 0, "colorspace": 0}
    png = None
    for number, wire, value in fields(data, where):
        if number in (1, 2, 3):
            expect_wire(where, number, wire, 0)
            image[{1: "height", 2: "width", 3: "colorspace"}[number]] = struct.unpack("<i", struct.pack("<I", value & 0xFFFFFFFF))[0]
        elif number == 4:
            expect_wire(where, number, wire, 2)
            png = decode_png(value, where)
        else:
            unknown.append(["Image", number, wire])
    if png is not None:
        image["png"] = png
    return image


def decode_value(data, where, unknown):
    value = {}
    for number, wire, field in fields(data, where):
        if number == 1:
            expect_wire(where, number, wire, 2)
            value["tag"] = field.decode("utf-8")
        elif number == 2:
            expect_wire(where, number, wire, 5)
            value["simple_value"] = struct.unpack("<f", field)[0]
        elif number == 4:
            expect_wire(where, number, wire, 2)
            value["image"] = decode_image(field, where + " image", unknown)
        else:
            unknown.append(["Value", number, wire])
    return value


def decode_event(data, where):
    event = {"wall_time": 0.0, "step": 0, "values": [], "unknown_fields": []}
    unknown = event["unknown_fields"]
    for number, wire, field in fields(data, where):
        if number == 1:
            expect_wire(where, number, wire, 1)
            event["wall_time"] = struct.unpack("<d", field)[0]
        elif number == 2:
            expect_wire(where, number, wire, 0)
            event["step"] = signed64(field)
        elif number == 3:
            expect_wire(where, number, wire, 2)
            event["file_version"] = field.decode("utf-8")
        elif number == 5:
            expect_wire(where, number, wire, 2)
            for n, w, v in fields(field, where + " summary"):
                if n == 1 and w == 2:
                    event["values"].append(decode_value(v, where + " value", unknown))
                else:
                    unknown.append(["Summary", n, w])
        else:
            unknown.append(["Event", number, wire])
    return event


def main():
    if len(sys.argv) != 3:
        fail("usage: tensorboard_check.py EVENT_FILE OUT_JSON")
    data = open(sys.argv[1], "rb").read()
    records = []
    at = 0
    while at < len(data):
        where = f"record {len(records)} at byte {at}"
        if len(data) - at < 12:
            fail(f"{where}: {len(data) - at} bytes left, too few for a record header")
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[at + 8:at + 12])
        if length_crc != masked(crc32c(header)):
            fail(f"{where}: length CRC {length_crc:08x}, expected {masked(crc32c(header)):08x}")
        body = data[at + 12:at + 12 + length]
        if len(body) != length or len(data) < at + 16 + length:
            fail(f"{where}: record of {length} bytes runs past the end of the file")
        (data_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        if data_crc != masked(crc32c(body)):
            fail(f"{where}: data CRC {data_crc:08x}, expected {masked(crc32c(body)):08x}")
        records.append(decode_event(body, where))
        at += 16 + length
    with open(sys.argv[2], "w") as out:
        json.dump(records, out)


if __name__ == "__main__":
    main()
