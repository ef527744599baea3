#!/usr/bin/env python3
"""Reference side of the MLP test in tests/nn/module.cpp: a 3-layer MLP in PyTorch (float64).

  nn_linear.py IN OUT

IN is a text file written by the test, one tensor per line:
    <name> <ndim> <d0> ... <d(ndim-1)> <values in row-major order>
holding the input "x", the output projection "r" and the state dict of
    nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))
under PyTorch's own names ("0.weight", "0.bias", "2.weight", ...). The state dict is loaded
strictly, so kiln's names must be exactly PyTorch's.

OUT gets, in the same format: "y" = mlp(x), "x.grad" and "<parameter>.grad" for every
parameter, the gradients of L = sum(y * r); plus one line "keys <name> <name> ..." with the
state dict's keys in PyTorch's order.
"""

import sys

import torch
from torch import nn


def read_tensors(path):
    tensors = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            name, ndim = parts[0], int(parts[1])
            shape = [int(d) for d in parts[2:2 + ndim]]
            values = [float(v) for v in parts[2 + ndim:]]
            tensors[name] = torch.tensor(values, dtype=torch.float64).reshape(shape)
    return tensors


def write_tensor(f, name, t):
    t = t.detach().to(torch.float64).contiguous()
    dims = " ".join(str(d) for d in t.shape)
    values = " ".join(repr(float(v)) for v in t.reshape(-1).tolist())
    f.write(f"{name} {t.dim()} {dims} {values}\n")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: nn_linear.py IN OUT")
    tensors = read_tensors(sys.argv[1])
    mlp = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    state = {k: v for k, v in tensors.items() if k not in ("x", "r")}
    mlp.load_state_dict(state, strict=True)
    x = tensors["x"].clone().requires_grad_(True)
    y = mlp(x)
    (y * tensors["r"]).sum().backward()
    with open(sys.argv[2], "w") as f:
        f.write("keys " + " ".join(mlp.state_dict().keys()) + "\n")
        write_tensor(f, "y", y)
        write_tensor(f, "x.grad", x.grad)
        for name, p in mlp.named_parameters():
            write_tensor(f, name + ".grad", p.grad)


if __name__ == "__main__":
    main()
