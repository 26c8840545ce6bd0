#!/usr/bin/python3
"""Reference forward pass (numpy, float64 activations) for GGUF llama/qwen2/qwen3.

This is the oracle the C++ engine is compared against, so it favors being
obviously right over being fast: no KV cache (every call recomputes the whole
sequence), weights dequantized by tools/py/gguf.py, activations in float64.
The one deliberate imprecision is --kv-f16 (default on): K (after RoPE) and V
are rounded to fp16 because the engine stores its KV cache in fp16, and
without it tight comparisons would measure the cache format, not the code.

Conventions (as llama.cpp GGUF files store them):
  * 2-D weights have ne = [n_in, n_out]; numpy sees them as [n_out, n_in],
    so y = x @ W.T.
  * llama: "normal" RoPE rotates pairs (2i, 2i+1); the HF->GGUF converter
    permuted Q/K rows so this matches HF's rotate_half.
  * qwen2/qwen3: NeoX RoPE rotates pairs (i, i + n_rot/2).
  * llama3 rope scaling divides each frequency by a factor taken from the
    rope_freqs.weight tensor if present, else computed from the
    {arch}.rope.scaling.* keys.

Usage:
  ref_forward.py MODEL --tokens 1,2,3 [--logits-out f.npy] [--greedy N]
  ref_forward.py MODEL --prompt "Once upon a time" --greedy 20   (SPM vocab)
"""

import argparse
import math
import os
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "..", "py"))
sys.path.insert(0, _HERE)
import gguf  # noqa: E402

ARCHS = ("llama", "qwen2", "qwen3")
NEOX_ARCHS = ("qwen2", "qwen3")


def llama3_rope_factors(n_rot, base, factor, low_freq_factor, high_freq_factor, orig_ctx):
    """Per-frequency divisors for llama3 rope scaling (Meta's formula)."""
    out = np.empty(n_rot // 2, np.float64)
    low_wavelen = orig_ctx / low_freq_factor
    high_wavelen = orig_ctx / high_freq_factor
    for i in range(n_rot // 2):
        freq = base ** (-2.0 * i / n_rot)
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out[i] = 1.0
        elif wavelen > low_wavelen:
            out[i] = factor
        else:
            smooth = (orig_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out[i] = 1.0 / ((1 - smooth) / factor + smooth)
    return out


class Model:
    def __init__(self, path, lazy=False):
        self.path = path
        self.r = gguf.GGUFReader(path)
        kv = self.r.kv
        arch = kv.get("general.architecture")
        if arch not in ARCHS:
            raise ValueError("unsupported architecture %r (want one of %s)" % (arch, ARCHS))
        self.arch = arch

        def hp(key, default=None):
            v = kv.get("%s.%s" % (arch, key), default)
            if v is None:
                raise KeyError("missing %s.%s" % (arch, key))
            return v

        self.n_embd = int(hp("embedding_length"))
        self.n_layer = int(hp("block_count"))
        self.n_ff = int(hp("feed_forward_length"))
        self.n_head = int(hp("attention.head_count"))
        self.n_head_kv = int(hp("attention.head_count_kv", self.n_head))
        self.eps = float(hp("attention.layer_norm_rms_epsilon", 1e-5))
        self.rope_base = float(hp("rope.freq_base", 10000.0))
        self.n_ctx_train = int(hp("context_length", 2048))
        self.head_dim = int(hp("attention.key_length", self.n_embd // self.n_head))
        self.head_dim_v = int(hp("attention.value_length", self.head_dim))
        self.n_rot = int(hp("rope.dimension_count", self.head_dim))
        self.neox = arch in NEOX_ARCHS
        if self.n_head % self.n_head_kv:
            raise ValueError("head_count %d not a multiple of head_count_kv %d"
                             % (self.n_head, self.n_head_kv))

        self.rope_factors = None
        if "rope_freqs.weight" in self.r.tensors:
            self.rope_factors = self.r.tensors["rope_freqs.weight"].to_float().astype(np.float64)
        elif kv.get("%s.rope.scaling.type" % arch) == "llama3":
            self.rope_factors = llama3_rope_factors(
                self.n_rot, self.rope_base,
                float(hp("rope.scaling.factor")),
                float(hp("rope.scaling.low_freq_factor", 1.0)),
                float(hp("rope.scaling.high_freq_factor", 4.0)),
                float(hp("rope.scaling.original_context_length", 8192)))
        elif kv.get("%s.rope.scaling.type" % arch) not in (None, "none"):
            raise ValueError("rope scaling %r not supported by the reference"
                             % kv.get("%s.rope.scaling.type" % arch))

        self.lazy = lazy
        self._cache = {}
        self.vocab_size = self.r.tensors["token_embd.weight"].shape[1]
        self.output_name = "output.weight" if "output.weight" in self.r.tensors else "token_embd.weight"

    def has(self, name):
        return name in self.r.tensors

    def w(self, name):
        """Dequantized tensor, numpy order (float32 holds every ggml value exactly)."""
        if name in self._cache:
            return self._cache[name]
        a = self.r.tensors[name].to_float()
        if not self.lazy:
            self._cache[name] = a
        return a


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def linear(x, m, name):
    w = m.w(name)                                  # [n_out, n_in] float32
    # upcast in row blocks so a 128k-vocab output matrix never exists in float64
    rows = max(1, (1 << 22) // w.shape[1])
    y = np.empty((x.shape[0], w.shape[0]), np.float64)
    for r in range(0, w.shape[0], rows):
        y[:, r:r + rows] = x @ w[r:r + rows].astype(np.float64).T
    bias = name.replace(".weight", ".bias")
    if m.has(bias):
        y = y + m.w(bias)
    return y


def rope(x, pos, m):
    """x: [n_tok, n_heads, head_dim]; rotates the first n_rot dims of each head."""
    n_rot = m.n_rot
    half = n_rot // 2
    inv_freq = m.rope_base ** (-2.0 * np.arange(half, dtype=np.float64) / n_rot)
    if m.rope_factors is not None:
        inv_freq = inv_freq / m.rope_factors[:half]
    ang = np.asarray(pos, np.float64)[:, None] * inv_freq[None, :]   # [n_tok, half]
    cos = np.cos(ang)[:, None, :]
    sin = np.sin(ang)[:, None, :]
    out = x.copy()
    if m.neox:
        a, b = x[..., 0:half], x[..., half:n_rot]
        out[..., 0:half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    return out


def forward(model, tokens, kv_f16=True, positions=None):
    """Logits [n_tokens, vocab] (float32) for a token sequence starting at pos 0.

    model may be a path or a Model.  All positions are returned, causally
    masked, so logits[i] predicts token i+1.
    """
    m = model if isinstance(model, Model) else Model(model)
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    if n == 0:
        return np.zeros((0, m.vocab_size), np.float32)
    if tokens.min() < 0 or tokens.max() >= m.vocab_size:
        raise ValueError("token id out of range [0, %d)" % m.vocab_size)
    pos = np.arange(n) if positions is None else np.asarray(positions)
    hd, hdv = m.head_dim, m.head_dim_v
    group = m.n_head // m.n_head_kv

    x = m.w("token_embd.weight")[tokens].astype(np.float64)   # [n, n_embd]
    mask = np.triu(np.full((n, n), -np.inf), k=1)              # causal
    scale = 1.0 / math.sqrt(hd)

    for il in range(m.n_layer):
        p = "blk.%d." % il
        h = rms_norm(x, m.w(p + "attn_norm.weight"), m.eps)
        q = linear(h, m, p + "attn_q.weight").reshape(n, m.n_head, hd)
        k = linear(h, m, p + "attn_k.weight").reshape(n, m.n_head_kv, hd)
        v = linear(h, m, p + "attn_v.weight").reshape(n, m.n_head_kv, hdv)
        if m.has(p + "attn_q_norm.weight"):     # qwen3: per-head norm before rope
            q = rms_norm(q, m.w(p + "attn_q_norm.weight"), m.eps)
            k = rms_norm(k, m.w(p + "attn_k_norm.weight"), m.eps)
        q = rope(q, pos, m)
        k = rope(k, pos, m)
        if kv_f16:
            k = k.astype(np.float16).astype(np.float64)
            v = v.astype(np.float16).astype(np.float64)
        # GQA: query head j reads KV head j // group
        kh = np.repeat(k.transpose(1, 0, 2), group, axis=0)     # [n_head, n, hd]
        vh = np.repeat(v.transpose(1, 0, 2), group, axis=0)
        qh = q.transpose(1, 0, 2)                                # [n_head, n, hd]
        s = qh @ kh.transpose(0, 2, 1) * scale + mask            # [n_head, n, n]
        s = s - s.max(axis=-1, keepdims=True)
        pr = np.exp(s)
        pr /= pr.sum(axis=-1, keepdims=True)
        o = (pr @ vh).transpose(1, 0, 2).reshape(n, m.n_head * hdv)
        x = x + linear(o, m, p + "attn_output.weight")

        h = rms_norm(x, m.w(p + "ffn_norm.weight"), m.eps)
        g = linear(h, m, p + "ffn_gate.weight")
        u = linear(h, m, p + "ffn_up.weight")
        x = x + linear(g / (1.0 + np.exp(-g)) * u, m, p + "ffn_down.weight")

    x = rms_norm(x, m.w("output_norm.weight"), m.eps)
    return linear(x, m, m.output_name).astype(np.float32)


def greedy(model, tokens, n_new, kv_f16=True, stop_at_eos=True):
    """Greedy continuation; returns only the new token ids."""
    m = model if isinstance(model, Model) else Model(model)
    eos = m.r.kv.get("tokenizer.ggml.eos_token_id")
    seq = list(tokens)
    out = []
    for _ in range(n_new):
        logits = forward(m, seq, kv_f16=kv_f16)
        t = int(np.argmax(logits[-1]))
        out.append(t)
        seq.append(t)
        if stop_at_eos and eos is not None and t == eos:
            break
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", help="comma-separated token ids")
    ap.add_argument("--prompt", help="text, encoded with the model's SentencePiece vocab")
    ap.add_argument("--logits-out", help="save float32 [n_tokens, vocab] logits (.npy)")
    ap.add_argument("--greedy", type=int, default=0, metavar="N",
                    help="greedily continue N tokens and print their ids")
    ap.add_argument("--kv-f16", dest="kv_f16", action="store_true", default=True,
                    help="round K (after RoPE) and V to fp16, like the engine's cache (default)")
    ap.add_argument("--no-kv-f16", dest="kv_f16", action="store_false")
    ap.add_argument("--no-stop-eos", action="store_true", help="keep going past EOS")
    ap.add_argument("--lazy", action="store_true",
                    help="dequantize weights on every use instead of caching (big models)")
    ap.add_argument("--quiet", action="store_true", help="don't print logits")
    a = ap.parse_args(argv)

    m = Model(a.model, lazy=a.lazy)
    tok = None
    if a.prompt is not None:
        from spm_tokenizer import SpmTokenizer
        tok = SpmTokenizer.from_gguf(m.r)
        tokens = tok.encode(a.prompt)
    elif a.tokens:
        tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    else:
        ap.error("give --tokens or --prompt")
    print("tokens:", ",".join(map(str, tokens)))

    logits = forward(m, tokens, kv_f16=a.kv_f16)
    if a.logits_out:
        np.save(a.logits_out, logits)
    if not a.quiet:
        np.set_printoptions(precision=4, suppress=True, linewidth=120)
        for i, row in enumerate(logits):
            top = np.argsort(-row)[:5]
            print("pos %d: argmax %d  top5 %s  logits[:8] %s"
                  % (i, int(top[0]), ",".join("%d:%.3f" % (t, row[t]) for t in top), row[:8]))
    if a.greedy:
        new = greedy(m, tokens, a.greedy, kv_f16=a.kv_f16, stop_at_eos=not a.no_stop_eos)
        print("greedy:", ",".join(map(str, new)))
        if tok is None and m.r.kv.get("tokenizer.ggml.model") == "llama":
            try:
                from spm_tokenizer import SpmTokenizer
                tok = SpmTokenizer.from_gguf(m.r)
            except Exception:
                tok = None
        if tok is not None:
            print("text: %r" % tok.decode(new))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
