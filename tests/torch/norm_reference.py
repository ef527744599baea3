#!/usr/bin/env python3
"""Reference side of tests/ops/norm.cpp, tests/ops/attention.cpp and tests/nn/norm.cpp.

  norm_reference.py IN OUT

IN is a safetensors file written by a kiln test. Its "__metadata__" maps each case name to a
description "op=OP key=value ...", and the case's tensors are stored as "CASE/NAME": the op's
inputs (float32 values), "CASE/seed" (the gradient fed back into the output) and, for batch_norm,
"CASE/running_mean" and "CASE/running_var" before the update. Keys of a description:

  op            layer_norm | rms_norm | group_norm | batch_norm | attention | self_attention
  grads         comma-separated input names to differentiate
  eps, normalized_shape (comma-separated), groups, training (0/1), momentum, causal (0/1),
  scale, heads  the op's arguments

Each case is recomputed in float64 from the same values; OUT gets "CASE/out", "CASE/grad/NAME" for
every name in grads (the gradients of sum(out * seed)) and, for batch_norm, the updated
"CASE/running_mean" and "CASE/running_var", all as F64. Debian has no python3-safetensors, so the
format is read and written here by hand (8-byte little-endian header length, JSON header, data).
"""

import json
import math
import struct
import sys

import torch
import torch.nn.functional as F

DTYPES = {"F64": torch.float64, "F32": torch.float32}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    base = 8 + header_len
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = bytearray(data[base + begin:base + end])
        t = torch.frombuffer(raw, dtype=DTYPES[entry["dtype"]]) if raw else torch.empty(0, dtype=DTYPES[entry["dtype"]])
        tensors[name] = t.reshape(entry["shape"]).to(torch.float64)
    return metadata, tensors


def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
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


def ints(text):
    return [int(v) for v in text.split(",") if v != ""]


def attention(q, k, v, causal, scale):
    scores = q @ k.transpose(-1, -2) * scale
    if causal:
        tq, tk = scores.shape[-2], scores.shape[-1]
        keep = torch.ones(tq, tk, dtype=torch.bool).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, -1) @ v


def self_attention(a, p):
    """nanoGPT's CausalSelfAttention without dropout: c_attn, split q/k/v, heads, c_proj."""
    x = a["x"]
    B, T, E = x.shape
    H = int(p["heads"])
    qkv = F.linear(x, a["c_attn.weight"], a.get("c_attn.bias"))
    q, k, v = qkv.split(E, dim=2)
    q, k, v = (t.view(B, T, H, E // H).transpose(1, 2) for t in (q, k, v))
    y = attention(q, k, v, p.get("causal", "0") == "1", 1.0 / math.sqrt(E // H))
    return F.linear(y.transpose(1, 2).reshape(B, T, E), a["c_proj.weight"], a.get("c_proj.bias"))


def run_case(a, p, extra):
    op = p["op"]
    eps = float(p.get("eps", "1e-5"))
    if op == "layer_norm":
        return F.layer_norm(a["x"], ints(p["normalized_shape"]), a.get("weight"), a.get("bias"), eps)
    if op == "rms_norm":
        dims = list(range(-len(ints(p["normalized_shape"])), 0))
        y = a["x"] * torch.rsqrt(a["x"].pow(2).mean(dim=dims, keepdim=True) + eps)
        return y * a["weight"] if "weight" in a else y
    if op == "group_norm":
        return F.group_norm(a["x"], int(p["groups"]), a.get("weight"), a.get("bias"), eps)
    if op == "batch_norm":
        rm, rv = extra.get("running_mean"), extra.get("running_var")
        y = F.batch_norm(a["x"], rm, rv, a.get("weight"), a.get("bias"), p.get("training", "0") == "1",
                         float(p.get("momentum", "0.1")), eps)
        return y
    if op == "attention":
        D = a["q"].shape[-1]
        scale = float(p["scale"]) if "scale" in p else 1.0 / math.sqrt(D)
        return attention(a["q"], a["k"], a["v"], p.get("causal", "0") == "1", scale)
    if op == "self_attention":
        return self_attention(a, p)
    raise ValueError("unknown op " + op)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: norm_reference.py IN OUT")
    metadata, tensors = read_safetensors(sys.argv[1])
    out = {}
    for case, description in sorted(metadata.items()):
        p = dict(item.split("=", 1) for item in description.split())
        grads = [g for g in p.get("grads", "").split(",") if g]
        a, extra = {}, {}
        prefix = case + "/"
        for name, t in tensors.items():
            if not name.startswith(prefix):
                continue
            key = name[len(prefix):]
            if key in ("seed", "running_mean", "running_var"):
                extra[key] = t.clone()
            else:
                a[key] = t.clone().requires_grad_(key in grads)
        y = run_case(a, p, extra)
        (y * extra["seed"]).sum().backward()
        out[prefix + "out"] = y
        for g in grads:
            out[prefix + "grad/" + g] = a[g].grad if a[g].grad is not None else torch.zeros_like(a[g])
        for key in ("running_mean", "running_var"):
            if key in extra:
                out[prefix + key] = extra[key]
    write_safetensors(sys.argv[2], out)


if __name__ == "__main__":
    main()
