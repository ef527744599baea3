#!/usr/bin/env python3
"""Reference side of the RealNVP test in tests/models/flow.cpp: W5's flow (BENCH.md, written here
from its description: affine couplings on 784-d vectors, masks by flat-index parity alternating
per layer, s/t nets 784-h-h-784 with ReLU and tanh on s, standard normal prior) on dequantised,
logit-transformed pixels, computed by PyTorch. Smaller than W5 (4 couplings, h = 64) so that the
test is quick; the code path is the same.

  realnvp_reference.py OUT_DIR

writes
  OUT_DIR/weights.safetensors     the state_dict (PyTorch's names, masks included), F64
  OUT_DIR/reference.safetensors   x [16,784] (dequantised pixels in [0,1)); for float64 and
                                  float32: logp.<dtype> (log p(x) per example, the logit
                                  transform's log-determinant included), loss.<dtype> (mean NLL)
                                  and grad.<dtype>.<name> per parameter; train.x.<s> for s < 10,
                                  the batches of ten Adam steps (lr 1e-3) in float32, train.loss
                                  [10] and final.<name>, the parameters after them
"""
import math
import os
import sys

import torch
import torch.nn as nn

from safetensors_f64 import write_safetensors

ALPHA, D, H, N = 0.05, 784, 64, 4


def mlp():
    return nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(), nn.Linear(H, D))


class Coupling(nn.Module):
    def __init__(self, parity):
        super().__init__()
        self.register_buffer("mask", ((torch.arange(D) + parity) % 2).float())
        self.s_net, self.t_net = mlp(), mlp()

    def forward(self, x):
        m = self.mask
        xm = x * m
        s = torch.tanh(self.s_net(xm)) * (1 - m)
        t = self.t_net(xm) * (1 - m)
        return xm + (1 - m) * (x * torch.exp(s) + t), s.sum(dim=1)


class RealNVP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Coupling(k % 2) for k in range(N)])

    def log_prob(self, x):
        """log p(x) for x in [0,1)^D: the logit transform y = logit(alpha + (1 - 2 alpha) x), its
        log-determinant, the couplings' and the prior's."""
        s = ALPHA + (1 - 2 * ALPHA) * x
        y = torch.log(s) - torch.log1p(-s)
        logdet = (math.log1p(-2 * ALPHA) - torch.log(s) - torch.log1p(-s)).sum(dim=1)
        for layer in self.layers:
            y, ld = layer(y)
            logdet = logdet + ld
        return (-0.5 * (y * y + math.log(2 * math.pi))).sum(dim=1) + logdet


def batch(gen, n=16):
    return (torch.randint(0, 256, (n, D), generator=gen).double() + torch.rand(n, D, generator=gen, dtype=torch.float64)) / 256


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = RealNVP()
    write_safetensors(os.path.join(out, "weights.safetensors"), dict(model.state_dict()))
    gen = torch.Generator().manual_seed(1)
    x = batch(gen)
    ref = {"x": x}
    for dtype, name in ((torch.float64, "float64"), (torch.float32, "float32")):
        m = RealNVP().to(dtype)
        m.load_state_dict(model.state_dict())
        logp = m.log_prob(x.to(dtype))
        loss = -logp.mean()
        loss.backward()
        ref["logp." + name] = logp
        ref["loss." + name] = loss.reshape(1)
        for n, p in m.named_parameters():
            ref[f"grad.{name}.{n}"] = p.grad
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for s in range(10):
        xs = batch(gen).float()
        ref[f"train.x.{s}"] = xs
        opt.zero_grad()
        loss = -model.log_prob(xs).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    ref["train.loss"] = torch.tensor(losses, dtype=torch.float64)
    for n, p in model.named_parameters():
        ref["final." + n] = p
    write_safetensors(os.path.join(out, "reference.safetensors"), ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
