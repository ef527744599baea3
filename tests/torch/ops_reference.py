#!/usr/bin/env python3
"""Reference side of tests/ops/softmax.cpp, tests/ops/index.cpp and tests/ops/loss.cpp.

  ops_reference.py CASES     reads CASES, a text file written by a kiln test, recomputes every
                             case with PyTorch in float64 from the same inputs and compares the
                             outputs and gradients kiln computed (in float32). Prints each
                             mismatch; exit status 0 when everything agrees.

CASES is a stream of whitespace-separated tokens:

  case NAME OP
  param KEY VALUE                          (any number)
  input NAME f|i GRAD NDIM DIMS... VALUES  (f: float, i: int64 index; GRAD 1: differentiate)
  output NDIM DIMS... VALUES               (kiln's outputs, in order)
  seed NDIM DIMS... VALUES                 (one per output: the gradient fed back)
  grad NAME NDIM DIMS... VALUES            (kiln's gradient of sum_k <output_k, seed_k>)
  end
"""

import math
import sys
import warnings

import torch
import torch.nn.functional as F

RTOL = 1e-4
ATOL = 1e-5


class Tokens:
    def __init__(self, text):
        self.items = text.split()
        self.pos = 0

    def next(self):
        if self.pos >= len(self.items):
            raise ValueError("unexpected end of the cases file")
        self.pos += 1
        return self.items[self.pos - 1]

    def done(self):
        return self.pos >= len(self.items)

    def tensor(self, dtype):
        ndim = int(self.next())
        shape = [int(self.next()) for _ in range(ndim)]
        count = math.prod(shape)
        if dtype == torch.int64:
            values = [int(self.next()) for _ in range(count)]
        else:
            values = [float(self.next()) for _ in range(count)]
        return torch.tensor(values, dtype=dtype).reshape(shape)


def reduction(p):
    return p.get("reduction", "mean")


def gaussian_kl(mu, logvar, how):
    terms = -0.5 * (1 + logvar - mu * mu - torch.exp(logvar))
    per_sample = terms.reshape(terms.shape[0], -1).sum(1)
    if how == "sum":
        return per_sample.sum()
    if how == "mean":
        return per_sample.mean()
    return per_sample


def joined(a, p):
    return [a["x%d" % i] for i in range(int(p["count"]))]


OPS = {
    "softmax": lambda a, p: [torch.softmax(a["x"], int(p["axis"]))],
    "log_softmax": lambda a, p: [torch.log_softmax(a["x"], int(p["axis"]))],
    "index_select": lambda a, p: [torch.index_select(a["x"], int(p["axis"]), a["index"])],
    "gather": lambda a, p: [torch.gather(a["x"], int(p["axis"]), a["index"])],
    "embedding": lambda a, p: [F.embedding(a["ids"], a["weight"])],
    "concat": lambda a, p: [torch.cat(joined(a, p), int(p["axis"]))],
    "stack": lambda a, p: [torch.stack(joined(a, p), int(p["axis"]))],
    "split": lambda a, p: list(torch.split(a["x"], int(p["size"]), int(p["axis"]))),
    "chunk": lambda a, p: list(torch.chunk(a["x"], int(p["chunks"]), int(p["axis"]))),
    "mse_loss": lambda a, p: [F.mse_loss(a["input"], a["target"], reduction=reduction(p))],
    "l1_loss": lambda a, p: [F.l1_loss(a["input"], a["target"], reduction=reduction(p))],
    "binary_cross_entropy": lambda a, p: [
        F.binary_cross_entropy(a["input"], a["target"], weight=a.get("weight"), reduction=reduction(p))
    ],
    "binary_cross_entropy_with_logits": lambda a, p: [
        F.binary_cross_entropy_with_logits(a["input"], a["target"], weight=a.get("weight"),
                                           pos_weight=a.get("pos_weight"), reduction=reduction(p))
    ],
    "cross_entropy": lambda a, p: [
        F.cross_entropy(a["input"], a["target"], reduction=reduction(p),
                        ignore_index=int(p.get("ignore_index", -100)),
                        label_smoothing=float(p.get("label_smoothing", 0)))
    ],
    "nll_loss": lambda a, p: [
        F.nll_loss(a["input"], a["target"], reduction=reduction(p), ignore_index=int(p.get("ignore_index", -100)))
    ],
    "gaussian_kl": lambda a, p: [gaussian_kl(a["mu"], a["logvar"], reduction(p))],
    "gaussian_nll_loss": lambda a, p: [
        F.gaussian_nll_loss(a["input"], a["target"], a["var"], full=p.get("full", "0") == "1",
                            eps=float(p.get("eps", 1e-6)), reduction=reduction(p))
    ],
}


def compare(case, what, kiln, torch_value, problems):
    torch_value = torch_value.detach().to(torch.float64)
    if tuple(kiln.shape) != tuple(torch_value.shape):
        problems.append("%s: %s: kiln's shape %s, PyTorch's %s" % (case, what, list(kiln.shape),
                                                                   list(torch_value.shape)))
        return
    both_nan = torch.isnan(kiln) & torch.isnan(torch_value)
    close = (kiln - torch_value).abs() <= ATOL + RTOL * torch_value.abs()
    bad = ~(close | both_nan)
    if bad.any():
        i = int(bad.reshape(-1).nonzero()[0])
        problems.append("%s: %s: %d of %d elements differ; first at flat index %d: kiln %.9g, PyTorch %.9g" %
                        (case, what, int(bad.sum()), bad.numel(), i, float(kiln.reshape(-1)[i]),
                         float(torch_value.reshape(-1)[i])))


def run_case(tokens, problems):
    name = tokens.next()
    op = tokens.next()
    params, inputs, differentiate = {}, {}, []
    outputs, seeds, grads = [], [], {}
    while True:
        tag = tokens.next()
        if tag == "end":
            break
        if tag == "param":
            key = tokens.next()
            params[key] = tokens.next()
        elif tag == "input":
            input_name = tokens.next()
            dtype = torch.int64 if tokens.next() == "i" else torch.float64
            wants_grad = tokens.next() == "1"
            t = tokens.tensor(dtype)
            if wants_grad:
                t.requires_grad_(True)
                differentiate.append(input_name)
            inputs[input_name] = t
        elif tag == "output":
            outputs.append(tokens.tensor(torch.float64))
        elif tag == "seed":
            seeds.append(tokens.tensor(torch.float64))
        elif tag == "grad":
            grad_name = tokens.next()
            grads[grad_name] = tokens.tensor(torch.float64)
        else:
            raise ValueError("case %s: unknown tag %r" % (name, tag))
    if op not in OPS:
        problems.append("%s: unknown op %r" % (name, op))
        return
    results = OPS[op](inputs, params)
    if len(results) != len(outputs):
        problems.append("%s: kiln gave %d outputs, PyTorch %d" % (name, len(outputs), len(results)))
        return
    for k, (mine, theirs) in enumerate(zip(outputs, results)):
        compare(name, "output %d" % k, mine, theirs, problems)
    if not differentiate:
        return
    if len(seeds) != len(results):
        problems.append("%s: %d seeds for %d outputs" % (name, len(seeds), len(results)))
        return
    wrt = [inputs[n] for n in differentiate]
    torch_grads = torch.autograd.grad(results, wrt, seeds, allow_unused=True)
    for n, g, x in zip(differentiate, torch_grads, wrt):
        if n not in grads:
            problems.append("%s: kiln wrote no gradient for %s" % (name, n))
            continue
        compare(name, "gradient of " + n, grads[n], torch.zeros_like(x) if g is None else g, problems)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    warnings.filterwarnings("ignore")  # mse_loss/l1_loss warn about broadcasting, which is tested
    with open(sys.argv[1]) as f:
        tokens = Tokens(f.read())
    problems = []
    count = 0
    while not tokens.done():
        tag = tokens.next()
        if tag != "case":
            raise ValueError("expected 'case', got %r" % tag)
        run_case(tokens, problems)
        count += 1
    for p in problems:
        print("MISMATCH " + p)
    print("ops_reference.py: %d cases, %d mismatches" % (count, len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
