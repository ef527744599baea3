#!/usr/bin/env python3
"""Reference side of tests/ops/conv.cpp, tests/ops/pool.cpp and tests/nn/conv.cpp.

  conv_reference.py IN OUT

IN is a safetensors file written by a kiln test. Its "__metadata__" maps each case name to a
description "op=OP inputs=a,b,c key=value ...", and the file holds the case's inputs as
"CASE.a", "CASE.b", ... plus "CASE.seed", the gradient fed back into the case's output. For every
case this script recomputes the output y with PyTorch in float64 from the same (float32) values
and the gradients of L = sum(y * seed) with respect to every input, and writes OUT, a safetensors
file (F64) holding "CASE.y" and "CASE.grad.a", ... The kiln test compares them with its own.

Ops (parameters are comma-separated pairs "h,w" or single numbers):
  conv2d               x, w[, b]  stride padding dilation groups
  conv_transpose2d     x, w[, b]  stride padding output_padding groups dilation
  max_pool2d           x          kernel stride padding dilation ceil_mode
  avg_pool2d           x          kernel stride padding ceil_mode count_include_pad divisor_override
  adaptive_avg_pool2d  x          size
  upsample_nearest2d   x          scale | size
  upsample_bilinear2d  x          scale | size, align_corners
  r1_penalty           x, w1, b1, w2, b2, r  act: y = [sum(grad_x(sum(D(x) * r))^2)] for the
                       discriminator D = conv2d(act(conv2d(x, w1, b1, 2, 1)), w2, b2, 2, 1) with act
                       leaky_relu (slope 0.2) or tanh (so its gradients are second derivatives)
  init_conv2d          (no inputs) in out kernel groups: writes "CASE.weight" and "CASE.bias" of a
  init_conv_transpose2d  freshly made torch.nn.Conv2d / ConvTranspose2d (torch.manual_seed(seed))

Debian has no python3-safetensors, so the format is read and written here by hand.
"""

import json
import struct
import sys

import torch
import torch.nn.functional as F

DTYPES = {"F64": torch.float64, "F32": torch.float32}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length].decode("utf-8"))
    base = 8 + length
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = bytearray(data[base + begin:base + end])
        dtype = DTYPES[entry["dtype"]]
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(entry["shape"]).to(torch.float64)
    return metadata, tensors


def write_safetensors(path, tensors):
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float64).contiguous()
        raw = t.numpy().tobytes()
        header[name] = {"dtype": "F64", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)


def pair(text):
    parts = [int(v) for v in text.split(",")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def flag(text):
    return text in ("1", "true")


def discriminator(x, w1, b1, w2, b2, act):
    h = F.conv2d(x, w1, b1, 2, 1)
    h = F.leaky_relu(h, 0.2) if act == "leaky_relu" else torch.tanh(h)
    return F.conv2d(h, w2, b2, 2, 1)


def run_op(op, p, a):
    if op == "conv2d":
        return F.conv2d(a["x"], a["w"], a.get("b"), pair(p["stride"]), pair(p["padding"]), pair(p["dilation"]),
                        int(p["groups"]))
    if op == "conv_transpose2d":
        return F.conv_transpose2d(a["x"], a["w"], a.get("b"), pair(p["stride"]), pair(p["padding"]),
                                  pair(p["output_padding"]), int(p["groups"]), pair(p["dilation"]))
    if op == "max_pool2d":
        return F.max_pool2d(a["x"], pair(p["kernel"]), pair(p["stride"]), pair(p["padding"]), pair(p["dilation"]),
                            flag(p["ceil_mode"]))
    if op == "avg_pool2d":
        divisor = int(p["divisor_override"])
        return F.avg_pool2d(a["x"], pair(p["kernel"]), pair(p["stride"]), pair(p["padding"]), flag(p["ceil_mode"]),
                            flag(p["count_include_pad"]), divisor if divisor > 0 else None)
    if op == "adaptive_avg_pool2d":
        return F.adaptive_avg_pool2d(a["x"], pair(p["size"]))
    if op in ("upsample_nearest2d", "upsample_bilinear2d"):
        mode = "nearest" if op == "upsample_nearest2d" else "bilinear"
        align = flag(p["align_corners"]) if mode == "bilinear" else None
        if "scale" in p:
            scale = pair(p["scale"])
            return F.interpolate(a["x"], scale_factor=(float(scale[0]), float(scale[1])), mode=mode,
                                 align_corners=align)
        return F.interpolate(a["x"], size=pair(p["size"]), mode=mode, align_corners=align)
    if op == "r1_penalty":
        x = a["x"]
        score = (discriminator(x, a["w1"], a["b1"], a["w2"], a["b2"], p["act"]) * a["r"]).sum()
        (gx,) = torch.autograd.grad(score, [x], create_graph=True)
        return (gx * gx).sum().reshape(1)
    raise ValueError("unknown op " + op)


def init_module(p, transposed):
    torch.manual_seed(int(p["seed"]))
    cls = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    m = cls(int(p["in"]), int(p["out"]), pair(p["kernel"]), groups=int(p["groups"]))
    return {"weight": m.weight.detach(), "bias": m.bias.detach()}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: conv_reference.py IN OUT")
    metadata, tensors = read_safetensors(sys.argv[1])
    out = {}
    for case, description in sorted(metadata.items()):
        fields = dict(item.split("=", 1) for item in description.split())
        op = fields.pop("op")
        if op in ("init_conv2d", "init_conv_transpose2d"):
            for name, t in init_module(fields, op == "init_conv_transpose2d").items():
                out[case + "." + name] = t
            continue
        names = [n for n in fields.pop("inputs", "").split(",") if n]
        args = {n: tensors[case + "." + n].clone().requires_grad_(True) for n in names}
        y = run_op(op, fields, args)
        seed = tensors[case + ".seed"]
        if seed.shape != y.shape:
            sys.exit(f"{case}: kiln's output has shape {list(seed.shape)}, PyTorch's {list(y.shape)}")
        grads = torch.autograd.grad((y * seed).sum(), [args[n] for n in names], allow_unused=True)
        out[case + ".y"] = y
        for n, g in zip(names, grads):
            out[case + ".grad." + n] = g if g is not None else torch.zeros_like(args[n])
    write_safetensors(sys.argv[2], out)


if __name__ == "__main__":
    main()
