#!/usr/bin/env python3
"""Reference side of the W6 UNet test in tests/models/diffusion.cpp: the ε-prediction loss of the
small DDPM UNet (W6 of BENCH.md, written here from its description) and every parameter gradient,
computed by PyTorch.

  unet_reference.py OUT_DIR

writes, for dtype in (float64, float32):
  OUT_DIR/<dtype>/weights.safetensors    the UNet's state_dict (PyTorch's names), F64 values of
                                         the weights in that dtype (GroupNorm affine parameters
                                         randomised away from 1 and 0)
  OUT_DIR/<dtype>/reference.safetensors  x0 [6,1,28,28], t [6] (as F64), eps, x_t, the
                                         prediction, the loss, and grad.<name> per parameter
The forward process is x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the linear schedule
beta = linspace(1e-4, 0.02, 1000) computed in float64; the time embedding is computed in float64
and then rounded to the model's dtype (as kiln does).
"""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from safetensors_f64 import write_safetensors


def sinusoidal(t, dim=128):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    a = t.to(torch.float64)[:, None] * freqs[None]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim=128):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.tp = nn.Linear(tdim, cout)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, te):
        h = self.c1(F.silu(self.n1(x))) + self.tp(te)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.temb = nn.Sequential(nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 128))
        self.cin = nn.Conv2d(1, 32, 3, padding=1)
        self.rb1 = ResBlock(32, 32)
        self.down = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.rb2, self.rb3 = ResBlock(64, 64), ResBlock(64, 64)
        self.up = nn.ConvTranspose2d(64, 32, 4, 2, 1)
        self.rb4 = ResBlock(64, 32)
        self.nout, self.cout = nn.GroupNorm(8, 32), nn.Conv2d(32, 1, 3, padding=1)

    def forward(self, x, t):
        te = self.temb(sinusoidal(t).to(x.dtype))
        h1 = self.rb1(self.cin(x), te)
        h = self.down(h1)
        h = self.rb3(self.rb2(h, te), te)
        h = torch.cat([self.up(h), h1], dim=1)
        h = self.rb4(h, te)
        return self.cout(F.silu(self.nout(h)))


def main():
    out_dir = sys.argv[1]
    torch.manual_seed(0)
    base = UNet().double()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if ".n1." in name or ".n2." in name or name.startswith("nout."):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, dim=0)
    x0 = torch.rand(6, 1, 28, 28, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 7, 250, 600, 900, 999])
    eps = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    for dtype, name in ((torch.float64, "float64"), (torch.float32, "float32")):
        model = UNet().to(dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in base.state_dict().items()})
        x0d, epsd = x0.to(dtype), eps.to(dtype)
        # x_t from float64 coefficients rounded to the dtype, as kiln's q_sample does.
        c0 = abar[t].sqrt().to(dtype)[:, None, None, None]
        c1 = (1 - abar[t]).sqrt().to(dtype)[:, None, None, None]
        xt = c0 * x0d + c1 * epsd
        pred = model(xt, t)
        loss = F.mse_loss(pred, epsd)
        loss.backward()
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        write_safetensors(os.path.join(d, "weights.safetensors"), dict(model.state_dict()))
        ref = {"x0": x0d, "t": t.to(torch.float64), "eps": epsd, "xt": xt, "pred": pred, "loss": loss.reshape(1)}
        for n, p in model.named_parameters():
            ref["grad." + n] = p.grad
        write_safetensors(os.path.join(d, "reference.safetensors"), ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
