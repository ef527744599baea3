#!/usr/bin/env python3
"""Reference side of tests/io/safetensors.cpp: safetensors files written and read with PyTorch.

Debian has no python3-safetensors, so the format is handled here by hand (struct, json,
torch.frombuffer), laid out the way the reference implementation lays it out.

  write --out F --expect G     writes F, a file with tensors of every float dtype (F32, F64,
                               F16, BF16; fixed seed, special values) plus I64/I32/U8 tensors and
                               metadata, and G, a JSON file with the exact values kiln must read.
  check --in F --expect G ...  loads F (written by kiln) and checks it against G, a JSON file
                               written by kiln with the source values: the header must be exactly
                               what the reference implementation writes, and each tensor must
                               equal PyTorch's own conversion of the source values to its dtype.
                               The pair may be repeated. Exit status 0 when everything matches.
"""

import argparse
import json
import math
import struct
import sys

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
# Order of the reference implementation's Dtype enum: tensors with later dtypes come first.
RANK = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
        "F32", "F64", "I64", "U64"]
FLOATS = ("F64", "F32", "F16", "BF16")


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: move the same 16 bits as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def header_and_data(tensors, metadata):
    """The header bytes (padded) and the data, as the reference implementation writes them."""
    order = sorted(tensors.items(), key=lambda item: (-RANK.index(NAMES[item[1].dtype]), item[0]))
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, t in order:
        raw = tensor_bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return text, data


def hex_values(t):
    if NAMES[t.dtype] in FLOATS:
        return [float.hex(v) for v in t.to(torch.float64).flatten().tolist()]
    return [int(v) for v in t.flatten().tolist()]


def command_write(args):
    assert sys.byteorder == "little"
    torch.manual_seed(0)
    specials = [1.0 / 3.0, -0.0, 0.0, float("inf"), float("-inf"), float("nan"), 1.0, -2.5]
    f16_specials = specials + [65504.0, -65504.0, 2.0 ** -14, 2.0 ** -24, -3 * 2.0 ** -24, 1e-6]
    bf16_specials = specials + [3.3895313892515355e38, 2.0 ** -126, 2.0 ** -133, -1e-40]
    tensors = {
        "f32.matrix": torch.randn(3, 4),
        "f64.cube": torch.randn(2, 3, 2, dtype=torch.float64),
        "f16.values": torch.tensor(f16_specials + (torch.randn(10) * 100).tolist(),
                                   dtype=torch.float16).reshape(4, 6),
        "bf16.values": torch.tensor(bf16_specials + (torch.randn(4) * 1e5).tolist(),
                                    dtype=torch.bfloat16).reshape(2, 8),
        "f32.scalar": torch.tensor(2.5),
        "f32.empty": torch.zeros(0, 3),
        "index.i64": torch.tensor([-3, 0, 7, 2 ** 40], dtype=torch.int64),
        "count.i32": torch.tensor([[1, -2], [2 ** 31 - 1, -2 ** 31]], dtype=torch.int32),
        "bytes.u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
    }
    metadata = {"format": "pt", "note": "written by safetensors_io.py, \"quoted\", caf\u00e9 \u2713"}
    header, data = header_and_data(tensors, metadata)
    with open(args.out, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        f.write(data)
    expect = {
        "metadata": metadata,
        "tensors": [{"name": name, "dtype": NAMES[t.dtype], "shape": list(t.shape),
                     "values": hex_values(t)} for name, t in tensors.items()],
    }
    with open(args.expect, "w", encoding="utf-8") as f:
        json.dump(expect, f, ensure_ascii=False, indent=1)
    print(f"wrote {args.out} ({8 + len(header) + len(data)} bytes) and {args.expect}")
    return 0


def same_values(got, want):
    """Bit-for-bit equal, except that any NaN matches any NaN."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    g = got.flatten().to(torch.float64)
    w = want.flatten().to(torch.float64)
    for a, b in zip(g.tolist(), w.tolist()):
        if math.isnan(a) or math.isnan(b):
            if not (math.isnan(a) and math.isnan(b)):
                return False
        elif a != b or math.copysign(1.0, a) != math.copysign(1.0, b):
            return False
    return True


def check_one(path, expect_path):
    with open(expect_path, encoding="utf-8") as f:
        expect = json.load(f)
    with open(path, "rb") as f:
        blob = f.read()
    problems = []
    (n,) = struct.unpack("<Q", blob[:8])
    header_bytes = blob[8:8 + n]
    if n % 8 != 0:
        problems.append(f"header length {n} is not a multiple of 8")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            problems.append(f"duplicate keys in {keys}")
        return dict(pairs)

    header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=no_duplicates)

    # Rebuild what the reference implementation writes for the same tensors and compare.
    tensors = {}
    for entry in expect["tensors"]:
        name, dtype = entry["name"], entry["dtype"]
        if name not in header:
            problems.append(f"tensor {name!r} is missing from the header")
            continue
        info = header[name]
        begin, end = info["data_offsets"]
        if end > begin:
            t = torch.frombuffer(bytearray(blob[8 + n + begin:8 + n + end]), dtype=DTYPES[info["dtype"]])
            t = t.reshape(info["shape"])
        else:
            t = torch.zeros(info["shape"], dtype=DTYPES[info["dtype"]])
        tensors[name] = t
        if info["dtype"] != dtype or list(info["shape"]) != entry["shape"]:
            problems.append(f"{name}: header says {info['dtype']} {info['shape']}, "
                            f"expected {dtype} {entry['shape']}")
            continue
        source = torch.tensor([float.fromhex(v) for v in entry["source"]], dtype=torch.float64)
        if entry["source_type"] == "float32":
            source = source.to(torch.float32)  # exact: the values are floats
        want = source.to(DTYPES[dtype]).reshape(entry["shape"])
        if not same_values(t, want):
            bad = [(i, a, b) for i, (a, b) in enumerate(zip(t.flatten().tolist(), want.flatten().tolist()))
                   if not (a == b or (math.isnan(a) and math.isnan(b)))][:5]
            problems.append(f"{name}: values differ from PyTorch's conversion to {dtype}, "
                            f"first (index, kiln, torch): {bad}")
    metadata = expect.get("metadata") or None
    if header.get("__metadata__") != metadata:
        problems.append(f"metadata {header.get('__metadata__')!r}, expected {metadata!r}")
    if len(header) != len(expect["tensors"]) + (1 if metadata else 0):
        problems.append(f"header has {len(header)} entries: {list(header)}")
    reference_header, reference_data = header_and_data(tensors, metadata)
    if header_bytes != reference_header:
        problems.append(f"header bytes differ from the reference layout:\n  kiln: {header_bytes!r}\n"
                        f"  ref:  {reference_header!r}")
    if blob[8 + n:] != reference_data:
        problems.append("data buffer differs from the reference layout")
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    if not problems:
        print(f"{path}: {len(expect['tensors'])} tensors match PyTorch")
    return not problems


def command_check(args):
    if len(args.inputs) != len(args.expects):
        print("check: give one --expect per --in", file=sys.stderr)
        return 2
    ok = True
    for path, expect_path in zip(args.inputs, args.expects):
        ok = check_one(path, expect_path) and ok
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("--out", required=True)
    w.add_argument("--expect", required=True)
    c = sub.add_parser("check")
    c.add_argument("--in", dest="inputs", action="append", required=True)
    c.add_argument("--expect", dest="expects", action="append", required=True)
    args = parser.parse_args()
    return command_write(args) if args.command == "write" else command_check(args)


if __name__ == "__main__":
    sys.exit(main())
