#!/usr/bin/env python3
"""PyTorch reference for kiln's optimizer, schedule and clipping tests (tests/optim/*.cpp).

Usage: optim_reference.py DIR

DIR/cases.json is a list of cases written by the C++ test; tensors travel in "tensor list" files:
  int32 count, then per tensor: int32 name length, name (UTF-8), int32 ndim, int32 dims[ndim],
  float32 data (row-major), all little-endian.

Case kinds:
  {"kind": "optimizer", "name": N, "optimizer": "Adam", "groups": [{"params": [0, 1], "lr": ...}, ...],
   "steps": S}
      N.in holds "param.<i>" (initial values) and "grad.<step>.<i>" (absent: grad is None that step).
      N.out gets "param.<step>.<i>" after every step and "state.<i>.<name>" at the end.
  {"kind": "schedule", "name": N, "scheduler": "StepLR", "kwargs": {...}, "base_lr": b, "steps": S,
   "warmup": null | {"steps": W, "start_factor": f}}
      N.txt gets the S + 1 learning rates (after construction, then after each step) as repr() text,
      one per line: exact float64 values. With "warmup" the schedule is
      SequentialLR([LinearLR(start_factor, 1.0, W), inner], milestones=[W]).
  {"kind": "clip", "name": N, "max_norm": m, "norm_type": p}   (p may be "inf")
      N.in holds "grad.<i>"; N.out gets "grad.<i>" after clipping and "total_norm" of shape [1].
"""
import json
import math
import struct
import sys
import warnings

import torch


def read_tensor_list(path):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    (count,) = take("<i")
    tensors = {}
    for _ in range(count):
        (name_len,) = take("<i")
        name = data[pos:pos + name_len].decode("utf-8")
        pos += name_len
        (ndim,) = take("<i")
        dims = list(take("<%di" % ndim)) if ndim else []
        numel = 1
        for d in dims:
            numel *= d
        values = take("<%df" % numel) if numel else ()
        tensors[name] = torch.tensor(values, dtype=torch.float32).reshape(dims)
    return tensors


def write_tensor_list(path, tensors):
    out = [struct.pack("<i", len(tensors))]
    for name, t in tensors:
        t = t.detach().to(torch.float32).contiguous()
        encoded = name.encode("utf-8")
        out.append(struct.pack("<i", len(encoded)))
        out.append(encoded)
        out.append(struct.pack("<i", t.dim()))
        if t.dim():
            out.append(struct.pack("<%di" % t.dim(), *t.shape))
        flat = t.reshape(-1).tolist()
        if flat:
            out.append(struct.pack("<%df" % len(flat), *flat))
    with open(path, "wb") as f:
        f.write(b"".join(out))


def run_optimizer(directory, case):
    name = case["name"]
    tensors = read_tensor_list("%s/%s.in" % (directory, name))
    count = sum(1 for key in tensors if key.startswith("param."))
    params = [tensors["param.%d" % i].clone().requires_grad_(True) for i in range(count)]
    groups = []
    for group in case["groups"]:
        g = dict(group)
        g["params"] = [params[i] for i in group["params"]]
        groups.append(g)
    optimizer = getattr(torch.optim, case["optimizer"])(groups)
    results = []
    for step in range(case["steps"]):
        for i, p in enumerate(params):
            key = "grad.%d.%d" % (step, i)
            p.grad = tensors[key].clone() if key in tensors else None
        optimizer.step()
        for i, p in enumerate(params):
            results.append(("param.%d.%d" % (step, i), p.detach().clone()))
    for i, p in enumerate(params):
        for key, value in sorted(optimizer.state[p].items()):
            if key != "step" and torch.is_tensor(value):
                results.append(("state.%d.%s" % (i, key), value))
    write_tensor_list("%s/%s.out" % (directory, name), results)


def run_schedule(directory, case):
    base_lr = case["base_lr"]
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=base_lr)
    inner = getattr(torch.optim.lr_scheduler, case["scheduler"])(optimizer, **case["kwargs"])
    scheduler = inner
    warmup = case.get("warmup")
    if warmup:
        # LinearLR must be made after the inner scheduler, which records initial_lr first.
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=warmup["start_factor"], end_factor=1.0,
                                                   total_iters=warmup["steps"])
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, inner], milestones=[warmup["steps"]])
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(case["steps"]):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    with open("%s/%s.txt" % (directory, case["name"]), "w") as f:
        for lr in lrs:
            f.write(repr(float(lr)) + "\n")


def run_clip(directory, case):
    name = case["name"]
    tensors = read_tensor_list("%s/%s.in" % (directory, name))
    count = sum(1 for key in tensors if key.startswith("grad."))
    params = []
    for i in range(count):
        p = torch.zeros_like(tensors["grad.%d" % i], requires_grad=True)
        p.grad = tensors["grad.%d" % i].clone()
        params.append(p)
    norm_type = case["norm_type"]
    norm_type = math.inf if norm_type == "inf" else float(norm_type)
    total = torch.nn.utils.clip_grad_norm_(params, case["max_norm"], norm_type)
    results = [("grad.%d" % i, p.grad) for i, p in enumerate(params)]
    results.append(("total_norm", total.reshape(1)))
    write_tensor_list("%s/%s.out" % (directory, name), results)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: optim_reference.py DIR")
    directory = sys.argv[1]
    torch.set_num_threads(1)
    # SequentialLR calls scheduler.step(0) at its milestone, which PyTorch 1.13 reports as deprecated.
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.optim.lr_scheduler")
    with open("%s/cases.json" % directory) as f:
        cases = json.load(f)
    for case in cases:
        kind = case["kind"]
        if kind == "optimizer":
            run_optimizer(directory, case)
        elif kind == "schedule":
            run_schedule(directory, case)
        elif kind == "clip":
            run_clip(directory, case)
        else:
            sys.exit("optim_reference.py: unknown case kind %r" % kind)


if __name__ == "__main__":
    main()
