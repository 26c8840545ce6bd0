"""Llama-architecture decoder in PyTorch, laid out exactly as llama.cpp's "llama" arch.

RMSNorm (eps 1e-5), RoPE theta 10000 on ADJACENT pairs (2i, 2i+1) like Meta's original
llama code and ggml's normal rope mode, so Q/K weights export to GGUF without permutation.
Grouped-query attention, SwiGLU FFN, untied output head.
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

# torch >= 2.0: fused scaled_dot_product_attention (flash/memory-efficient kernels on CUDA).
# torch 1.13 (Debian) falls back to the explicit masked softmax below; both compute the same thing.
_HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def torch_load(path, map_location="cpu"):
    """torch.load of our own checkpoints (dicts of tensors and plain values) on torch 1.13 and >= 2.6."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except TypeError:
        return torch.load(path, map_location=map_location)


@dataclass
class Config:
    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    ffn_dim: int = 688
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    context_length: int = 2048

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim, n_pos, theta, device=None):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv[None, :]  # [T, hd/2]
    return torch.cos(ang).float().to(device), torch.sin(ang).float().to(device)


def apply_rope(x, cos, sin):
    # x: [B, H, T, hd]; rotate adjacent pairs (x[2i], x[2i+1]) by angle pos * theta^(-2i/hd)
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    c = cos[: x.shape[2]]
    s = sin[: x.shape[2]]
    r0 = x0 * c - x1 * s
    r1 = x0 * s + x1 * c
    return torch.stack((r0, r1), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.wq = nn.Linear(c.dim, c.n_heads * hd, bias=False)
        self.wk = nn.Linear(c.dim, c.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(c.dim, c.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(c.n_heads * hd, c.dim, bias=False)
        self.use_sdpa = True

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        c = self.c
        hd = c.head_dim
        q = self.wq(x).view(B, T, c.n_heads, hd).transpose(1, 2)
        k = self.wk(x).view(B, T, c.n_kv_heads, hd).transpose(1, 2)
        v = self.wv(x).view(B, T, c.n_kv_heads, hd).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        g = c.n_heads // c.n_kv_heads
        if _HAS_SDPA and self.use_sdpa:
            # fused attention (flash on CUDA); K/V repeated to the query heads: head h reads kv head h // g
            q, k = q.type_as(v), k.type_as(v)  # RoPE tables are fp32; keep one dtype under autocast
            if g > 1:
                k = k.repeat_interleave(g, dim=1)
                v = v.repeat_interleave(g, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o = o.transpose(1, 2).reshape(B, T, c.n_heads * hd)
            return self.wo(o)
        # group query heads onto their kv head: [B, Hkv, g*T, hd] avoids materializing repeated K/V
        qg = q.reshape(B, c.n_kv_heads, g * T, hd)
        att = torch.matmul(qg, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))  # [B, Hkv, g*T, T]
        att = att.view(B, c.n_kv_heads, g, T, T) + mask[:T, :T]
        att = F.softmax(att.float(), dim=-1).type_as(q).view(B, c.n_kv_heads, g * T, T)
        o = torch.matmul(att, v).view(B, c.n_heads, T, hd).transpose(1, 2).reshape(B, T, c.n_heads * hd)
        return self.wo(o)


class FeedForward(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.w1 = nn.Linear(c.dim, c.ffn_dim, bias=False)  # gate
        self.w3 = nn.Linear(c.dim, c.ffn_dim, bias=False)  # up
        self.w2 = nn.Linear(c.ffn_dim, c.dim, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.attention = Attention(c)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.feed_forward = FeedForward(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.n_layers)])
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        cos, sin = rope_tables(c.head_dim, c.context_length, c.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        mask = torch.full((c.context_length, c.context_length), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)
        self.apply(self._init)
        for n, p in self.named_parameters():
            if n.endswith("wo.weight") or n.endswith("w2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens, targets=None):
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin, self.mask)
        logits = self.output(self.norm(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def set_sdpa(self, on):
        for layer in self.layers:
            layer.attention.use_sdpa = on

    def n_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel()
        return n


def load_checkpoint(path, map_location="cpu"):
    ck = torch_load(path, map_location=map_location)
    c = Config(**ck["config"])
    m = Transformer(c)
    m.load_state_dict(ck["model"])
    return m, ck


def load_gguf(path):
    """A Transformer from a GGUF written by export_gguf.py (F16/Q8_0/F32 weights, dequantized to fp32).
    Lets a new training run warm-start from the shipped model (train.py --init-gguf)."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "py"))
    import gguf
    from export_gguf import tensor_map
    r = gguf.GGUFReader(path)
    kv = r.kv
    c = Config(vocab_size=int(kv["llama.vocab_size"]) if "llama.vocab_size" in kv else len(kv["tokenizer.ggml.tokens"]),
               dim=int(kv["llama.embedding_length"]), n_layers=int(kv["llama.block_count"]),
               n_heads=int(kv["llama.attention.head_count"]), n_kv_heads=int(kv["llama.attention.head_count_kv"]),
               ffn_dim=int(kv["llama.feed_forward_length"]), norm_eps=round(float(kv["llama.attention.layer_norm_rms_epsilon"]), 9),
               rope_theta=float(kv["llama.rope.freq_base"]), context_length=int(kv["llama.context_length"]))
    m = Transformer(c)
    sd = {key: torch.from_numpy(r.tensors[name].to_float().copy()) for name, key in tensor_map(None, c.n_layers)}
    m.load_state_dict(sd)
    return m
