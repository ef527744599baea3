#!/usr/bin/env python3
"""Reference side of tests/models/gpt.cpp.

  gpt_reference.py OUTDIR

Builds four small transformers in PyTorch from random weights, written here independently of kiln:

  gpt2   Hugging Face GPT-2 (GPT2LMHeadModel's layout: "transformer." prefix, Conv1D weights stored
         [in, out], tied head, the causal-mask buffers h.N.attn.bias) with a config.json
  llama  Hugging Face LLaMA (LlamaForCausalLM's layout: separate q/k/v/o and gate/up/down
         projections, RMSNorm, RoPE in the rotate-half convention, grouped-query attention with
         2 key/value heads for 4 query heads, untied lm_head, a rotary_emb.inv_freq buffer) with
         a config.json
  bert   kiln's own names (Linear weights [out, in]): a bidirectional encoder (no causal mask),
         learned positions, LayerNorm, tanh-GELU MLP, biases, tied head; no config.json
  alibi  kiln's own names: ALiBi with 6 heads (a count that is not a power of two), one key/value
         head (multi-query), parallel blocks, RMSNorm, no biases, untied head

For each CASE, OUTDIR/CASE/model.safetensors holds the weights (F32) and
OUTDIR/CASE/reference.safetensors holds, in F64, "tokens" [2, 24], "logits" [2, 24, vocab], "loss"
(the mean cross-entropy of the logits at positions 0..22 against the tokens at 1..23) and
"grad/NAME" for every weight NAME of the model file: the gradient of that loss, all computed in
float64 from the F32 weights. Debian has no python3-safetensors, so the format is written by hand
(8-byte little-endian header length, JSON header, data).
"""

import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

B, T = 2, 24


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    torch_dtype = {"F32": torch.float32, "F64": torch.float64}[dtype]
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch_dtype).contiguous()
        raw = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)


def f32_leaf(t):
    """The float32 value of t, as a float64 leaf that requires grad."""
    return t.to(torch.float32).to(torch.float64).requires_grad_(True)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def causal_mask(tq, tk):
    return torch.ones(tq, tk, dtype=torch.bool).tril()


# --------------------------------------------------------------------------------------------
# GPT-2 as Hugging Face's modeling_gpt2 computes it (Conv1D: y = x @ W + b, W [in, out])
# --------------------------------------------------------------------------------------------

def gpt2_forward(P, cfg, tokens):
    L, H, C, eps = cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["layer_norm_epsilon"]
    hd = C // H
    b, t = tokens.shape
    p = lambda name: P["transformer." + name]
    conv1d = lambda x, name: torch.addmm(p(name + ".bias"), x.reshape(-1, x.shape[-1]), p(name + ".weight")).reshape(
        *x.shape[:-1], -1)
    x = p("wte.weight")[tokens] + p("wpe.weight")[torch.arange(t)]
    for i in range(L):
        h = F.layer_norm(x, (C,), p(f"h.{i}.ln_1.weight"), p(f"h.{i}.ln_1.bias"), eps)
        q, k, v = conv1d(h, f"h.{i}.attn.c_attn").split(C, dim=2)
        q, k, v = (z.view(b, t, H, hd).transpose(1, 2) for z in (q, k, v))
        att = q @ k.transpose(-1, -2) / math.sqrt(hd)
        att = att.masked_fill(~causal_mask(t, t), float("-inf"))
        y = (torch.softmax(att, -1) @ v).transpose(1, 2).reshape(b, t, C)
        x = x + conv1d(y, f"h.{i}.attn.c_proj")
        h = F.layer_norm(x, (C,), p(f"h.{i}.ln_2.weight"), p(f"h.{i}.ln_2.bias"), eps)
        x = x + conv1d(gelu_new(conv1d(h, f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj")
    x = F.layer_norm(x, (C,), p("ln_f.weight"), p("ln_f.bias"), eps)
    return x @ p("wte.weight").t()


def gpt2_case(gen):
    cfg = {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 32, "n_ctx": 32,
           "vocab_size": 97, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
    C, V, N = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    shapes = {"wte.weight": [V, C], "wpe.weight": [N, C], "ln_f.weight": [C], "ln_f.bias": [C]}
    for i in range(cfg["n_layer"]):
        shapes.update({f"h.{i}.ln_1.weight": [C], f"h.{i}.ln_1.bias": [C],
                       f"h.{i}.attn.c_attn.weight": [C, 3 * C], f"h.{i}.attn.c_attn.bias": [3 * C],
                       f"h.{i}.attn.c_proj.weight": [C, C], f"h.{i}.attn.c_proj.bias": [C],
                       f"h.{i}.ln_2.weight": [C], f"h.{i}.ln_2.bias": [C],
                       f"h.{i}.mlp.c_fc.weight": [C, 4 * C], f"h.{i}.mlp.c_fc.bias": [4 * C],
                       f"h.{i}.mlp.c_proj.weight": [4 * C, C], f"h.{i}.mlp.c_proj.bias": [C]})
    P = {}
    for name, shape in shapes.items():
        base = 1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight" else 0.0
        scale = 0.5 if name in ("wte.weight", "wpe.weight") else 0.1
        P["transformer." + name] = f32_leaf(base + scale * torch.randn(shape, generator=gen, dtype=torch.float64))
    buffers = {f"transformer.h.{i}.attn.bias": causal_mask(N, N).to(torch.float32).view(1, 1, N, N)
               for i in range(cfg["n_layer"])}
    return cfg, P, buffers, lambda tokens: gpt2_forward(P, cfg, tokens)


# --------------------------------------------------------------------------------------------
# LLaMA as Hugging Face's modeling_llama computes it (Linear: y = x @ W.T, W [out, in])
# --------------------------------------------------------------------------------------------

def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def llama_forward(P, cfg, tokens):
    L, H, Hkv, C = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    hd = C // H
    b, t = tokens.shape

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def repeat_kv(x):
        r = H // Hkv
        return x[:, :, None, :, :].expand(b, Hkv, r, t, hd).reshape(b, H, t, hd)

    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    x = P["model.embed_tokens.weight"][tokens]
    for i in range(L):
        m = f"model.layers.{i}."
        h = rms(x, P[m + "input_layernorm.weight"])
        q = (h @ P[m + "self_attn.q_proj.weight"].t()).view(b, t, H, hd).transpose(1, 2)
        k = (h @ P[m + "self_attn.k_proj.weight"].t()).view(b, t, Hkv, hd).transpose(1, 2)
        v = (h @ P[m + "self_attn.v_proj.weight"].t()).view(b, t, Hkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k), repeat_kv(v)
        att = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~causal_mask(t, t), float("-inf"))
        y = (torch.softmax(att, -1) @ v).transpose(1, 2).reshape(b, t, C)
        x = x + y @ P[m + "self_attn.o_proj.weight"].t()
        h = rms(x, P[m + "post_attention_layernorm.weight"])
        gate = h @ P[m + "mlp.gate_proj.weight"].t()
        up = h @ P[m + "mlp.up_proj.weight"].t()
        x = x + (F.silu(gate) * up) @ P[m + "mlp.down_proj.weight"].t()
    x = rms(x, P["model.norm.weight"])
    return x @ P["lm_head.weight"].t()


def llama_case(gen):
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64, "intermediate_size": 96,
           "vocab_size": 97, "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "hidden_act": "silu", "tie_word_embeddings": False, "rope_scaling": None}
    C, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = C // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": [V, C], "model.norm.weight": [C], "lm_head.weight": [V, C]}
    for i in range(cfg["num_hidden_layers"]):
        m = f"model.layers.{i}."
        shapes.update({m + "input_layernorm.weight": [C], m + "post_attention_layernorm.weight": [C],
                       m + "self_attn.q_proj.weight": [C, C], m + "self_attn.k_proj.weight": [kv, C],
                       m + "self_attn.v_proj.weight": [kv, C], m + "self_attn.o_proj.weight": [C, C],
                       m + "mlp.gate_proj.weight": [I, C], m + "mlp.up_proj.weight": [I, C],
                       m + "mlp.down_proj.weight": [C, I]})
    P = {}
    for name, shape in shapes.items():
        base = 1.0 if name.endswith("norm.weight") else 0.0
        scale = 0.5 if name == "model.embed_tokens.weight" else 0.1
        P[name] = f32_leaf(base + scale * torch.randn(shape, generator=gen, dtype=torch.float64))
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    buffers = {"model.layers.0.self_attn.rotary_emb.inv_freq": inv_freq}
    return cfg, P, buffers, lambda tokens: llama_forward(P, cfg, tokens)


# --------------------------------------------------------------------------------------------
# kiln's own layout, written from the architecture's definition
# --------------------------------------------------------------------------------------------

def alibi_slopes(n):
    """The slopes of the ALiBi paper's reference code (ofirpress/attention_with_linear_biases)."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][:n - closest]


def native_forward(P, cfg, tokens):
    L, H, Hkv, C = cfg["n_layer"], cfg["n_head"], cfg["n_kv_head"], cfg["n_embd"]
    hd = C // H
    b, t = tokens.shape

    def norm(x, name):
        if cfg["norm"] == "layernorm":
            return F.layer_norm(x, (C,), P[name + ".weight"], P.get(name + ".bias"), cfg["eps"])
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["eps"]) * P[name + ".weight"]

    def linear(x, name):
        return F.linear(x, P[name + ".weight"], P.get(name + ".bias"))

    bias = torch.zeros(H, t, t, dtype=torch.float64)
    if cfg["position"] == "alibi":
        distance = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).abs().to(torch.float64)
        bias = -torch.tensor(alibi_slopes(H), dtype=torch.float64)[:, None, None] * distance
    if cfg["causal"]:
        bias = bias.masked_fill(~causal_mask(t, t), float("-inf"))

    def attention(h, i):
        qkv = linear(h, f"h.{i}.attn.c_attn")
        q = qkv[..., :H * hd].reshape(b, t, H, hd).transpose(1, 2)
        k = qkv[..., H * hd:(H + Hkv) * hd].reshape(b, t, Hkv, hd).transpose(1, 2)
        v = qkv[..., (H + Hkv) * hd:].reshape(b, t, Hkv, hd).transpose(1, 2)
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        att = q @ k.transpose(-1, -2) / math.sqrt(hd) + bias
        y = (torch.softmax(att, -1) @ v).transpose(1, 2).reshape(b, t, C)
        return linear(y, f"h.{i}.attn.c_proj")

    def mlp(h, i):
        return linear(gelu_new(linear(h, f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj")

    x = P["wte.weight"][tokens]
    if cfg["position"] == "learned":
        x = x + P["wpe.weight"][torch.arange(t)]
    for i in range(L):
        h = norm(x, f"h.{i}.ln_1")
        if cfg["parallel"]:
            x = x + attention(h, i) + mlp(h, i)
        else:
            x = x + attention(h, i)
            x = x + mlp(norm(x, f"h.{i}.ln_2"), i)
    x = norm(x, "ln_f")
    return x @ P["lm_head.weight" if "lm_head.weight" in P else "wte.weight"].t()


def native_case(gen, cfg):
    C, V, N, H, Hkv = cfg["n_embd"], cfg["vocab_size"], cfg["block_size"], cfg["n_head"], cfg["n_kv_head"]
    hd = C // H
    layer_norm = cfg["norm"] == "layernorm"
    shapes = {"wte.weight": [V, C]}
    if cfg["position"] == "learned":
        shapes["wpe.weight"] = [N, C]
    for i in range(cfg["n_layer"]):
        h = f"h.{i}."
        names = [("ln_1", [C])] + ([] if cfg["parallel"] else [("ln_2", [C])])
        for ln, shape in names:
            shapes[h + ln + ".weight"] = shape
            if layer_norm and cfg["bias"]:
                shapes[h + ln + ".bias"] = shape
        for name, out, inp in [("attn.c_attn", (H + 2 * Hkv) * hd, C), ("attn.c_proj", C, C),
                               ("mlp.c_fc", 4 * C, C), ("mlp.c_proj", C, 4 * C)]:
            shapes[h + name + ".weight"] = [out, inp]
            if cfg["bias"]:
                shapes[h + name + ".bias"] = [out]
    shapes["ln_f.weight"] = [C]
    if layer_norm and cfg["bias"]:
        shapes["ln_f.bias"] = [C]
    if not cfg["tie"]:
        shapes["lm_head.weight"] = [V, C]
    P = {}
    for name, shape in shapes.items():
        is_norm = ".ln_" in name or name.startswith("ln_f")
        base = 1.0 if is_norm and name.endswith(".weight") else 0.0
        scale = 0.5 if name in ("wte.weight", "wpe.weight") else 0.1
        P[name] = f32_leaf(base + scale * torch.randn(shape, generator=gen, dtype=torch.float64))
    return cfg, P, {}, lambda tokens: native_forward(P, cfg, tokens)


def run_case(outdir, name, case, gen, write_config):
    cfg, P, buffers, forward = case
    directory = os.path.join(outdir, name)
    os.makedirs(directory, exist_ok=True)
    vocab = cfg.get("vocab_size")
    tokens = torch.randint(0, vocab, (B, T), generator=gen)
    logits = forward(tokens)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    grads = torch.autograd.grad(loss, list(P.values()))
    weights = dict(P)
    weights.update(buffers)
    write_safetensors(os.path.join(directory, "model.safetensors"), weights, "F32", {"format": "pt"})
    if write_config:
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    out = {"tokens": tokens.to(torch.float64), "logits": logits, "loss": loss.reshape(())}
    for (n, _), g in zip(P.items(), grads):
        out["grad/" + n] = g
    write_safetensors(os.path.join(directory, "reference.safetensors"), out, "F64")


def main():
    outdir = sys.argv[1]
    gen = torch.Generator().manual_seed(20240607)
    run_case(outdir, "gpt2", gpt2_case(gen), gen, True)
    run_case(outdir, "llama", llama_case(gen), gen, True)
    bert = {"n_layer": 2, "n_head": 4, "n_kv_head": 4, "n_embd": 64, "vocab_size": 97, "block_size": 32,
            "position": "learned", "causal": False, "norm": "layernorm", "eps": 1e-5, "bias": True, "tie": True,
            "parallel": False}
    run_case(outdir, "bert", native_case(gen, bert), gen, False)
    alibi = {"n_layer": 2, "n_head": 6, "n_kv_head": 1, "n_embd": 48, "vocab_size": 97, "block_size": 32,
             "position": "alibi", "causal": True, "norm": "rmsnorm", "eps": 1e-5, "bias": False, "tie": False,
             "parallel": True}
    run_case(outdir, "alibi", native_case(gen, alibi), gen, False)


if __name__ == "__main__":
    main()
