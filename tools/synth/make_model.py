#!/usr/bin/python3
"""Writes a GGUF model with seeded random weights (llama / qwen2 / qwen3).

The weights are random but scaled so a forward pass is well conditioned:
every linear layer has std 1/sqrt(n_in) (about 0.02 at dim 2048), norms sit
near 1, and the output/embedding matrix is scaled so logits have a std of a
few units, which keeps greedy decoding sensitive to numerical mistakes instead
of collapsing onto one token.

Each tensor's values depend only on (seed, tensor name, shape), never on the
output type, so `--type f32` and `--type q4_k` of the same configuration are
the same model quantized two ways.  Tensors are generated, quantized and
written one at a time, so the 1B preset needs about one tensor of memory.

See tools/synth/README.md for usage.
"""

import argparse
import os
import sys
import time
import zlib

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "..", "py"))
import gguf  # noqa: E402

PRESETS = {
    "tiny": dict(arch="llama", dim=64, layers=2, heads=4, kv_heads=2, ffn=128,
                 vocab_size=259, ctx=512, rope_theta=10000.0, tied=False),
    "bench-90m": dict(arch="llama", dim=1024, layers=8, heads=8, kv_heads=2, head_dim=128,
                      ffn=2816, vocab_size=32000, ctx=4096, rope_theta=10000.0, tied=False),
    "qwen2.5-0.5b": dict(arch="qwen2", dim=896, layers=24, heads=14, kv_heads=2, head_dim=64,
                         ffn=4864, vocab_size=151936, tied=True, rope_theta=1e6, ctx=32768),
    "llama-3.2-1b": dict(arch="llama", dim=2048, layers=16, heads=32, kv_heads=8, head_dim=64,
                         ffn=8192, vocab_size=128256, tied=True, rope_theta=500000.0,
                         ctx=131072, llama3_rope_scaling=True, rope_scaling_factor=32.0,
                         rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                         rope_orig_ctx=8192),
    "smollm2-135m": dict(arch="llama", dim=576, layers=30, heads=9, kv_heads=3, head_dim=64,
                         ffn=1536, vocab_size=49152, tied=True, rope_theta=100000.0, ctx=8192),
}

DEFAULTS = dict(arch="llama", dim=256, layers=2, heads=8, kv_heads=None, head_dim=None,
                ffn=None, vocab_size=259, ctx=2048, rope_theta=10000.0, tied=False,
                qkv_bias=None, llama3_rope_scaling=False, rope_scaling_factor=8.0,
                rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_orig_ctx=8192,
                eps=1e-5)

TYPES = {"f32": gguf.F32, "f16": gguf.F16, "bf16": gguf.BF16, "q8_0": gguf.Q8_0,
         "q4_0": gguf.Q4_0, "q4_k": gguf.Q4_K, "q5_k": gguf.Q5_K, "q6_k": gguf.Q6_K,
         "q4_k_m": gguf.Q4_K}

# llama.cpp's general.file_type (llama_ftype) values
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k": 14, "q4_k_m": 15,
             "q5_k": 16, "q6_k": 18, "bf16": 32}

# Where a row length is not a multiple of 256, k-quants cannot be used; fall
# back to a 32-block type of similar size (llama.cpp would pick Q5_0/Q5_1).
KQUANT_FALLBACK = {gguf.Q4_K: gguf.Q4_0, gguf.Q5_K: gguf.Q8_0, gguf.Q6_K: gguf.Q8_0}


# q/k std multiplier.  Random nets amplify weight error through depth; a
# larger gain makes attention sharper and quantized variants diverge faster
# (measured: 1.5 roughly doubles the q8_0-vs-f32 logit error of 1.0).
QK_GAIN = 1.0

SPACE = "\u2581"


# ---------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------

def byte_vocab(vocab_size):
    """llama-style SPM vocab: <unk>, <s>, </s>, 256 byte tokens, then filler.

    Filler (when vocab_size > 259) is single printable characters and then
    letter n-grams with and without the word-start mark, scored so shorter
    pieces rank higher; every multi-char piece is reachable by merging two
    pieces already present, so an SPM encoder can actually produce them.
    """
    if vocab_size < 259:
        raise SystemExit("--vocab-size must be >= 259 (3 specials + 256 bytes)")
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * 259
    seen = set(tokens)

    def add(t):
        if len(tokens) < vocab_size and t not in seen:
            seen.add(t)
            tokens.append(t)
            types.append(1)
            scores.append(-float(len(tokens)))

    letters = "etaoinshrdlcumwfgypbvkjxqz"
    for ch in [SPACE] + [chr(c) for c in range(33, 127)]:
        add(ch)
    frontier = [SPACE + c for c in letters] + [a + b for a in letters for b in letters]
    for t in frontier:
        add(t)
    # grow longer pieces from existing ones until the requested size is met
    level = frontier
    while len(tokens) < vocab_size:
        nxt = []
        for t in level:
            for c in letters:
                nxt.append(t + c)
                add(t + c)
                if len(tokens) >= vocab_size:
                    break
            if len(tokens) >= vocab_size:
                break
        level = nxt
    kv = [
        ("tokenizer.ggml.model", "llama", gguf.STRING, None),
        ("tokenizer.ggml.tokens", tokens, gguf.ARRAY, gguf.STRING),
        ("tokenizer.ggml.scores", np.array(scores, np.float32), gguf.ARRAY, gguf.FLOAT32),
        ("tokenizer.ggml.token_type", np.array(types, np.int32), gguf.ARRAY, gguf.INT32),
        ("tokenizer.ggml.bos_token_id", 1, gguf.UINT32, None),
        ("tokenizer.ggml.eos_token_id", 2, gguf.UINT32, None),
        ("tokenizer.ggml.unknown_token_id", 0, gguf.UINT32, None),
        ("tokenizer.ggml.add_bos_token", True, gguf.BOOL, None),
        ("tokenizer.ggml.add_eos_token", False, gguf.BOOL, None),
    ]
    return kv, len(tokens)


def vocab_from_gguf(path):
    r = gguf.GGUFReader(path)
    kv = []
    for k, v in r.kv.items():
        if k.startswith("tokenizer."):
            vt, et = r.kv_types[k]
            kv.append((k, v, vt, et))
    if "tokenizer.ggml.tokens" not in r.kv:
        raise SystemExit("%s has no tokenizer.ggml.tokens" % path)
    return kv, len(r.kv["tokenizer.ggml.tokens"])


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------

def use_more_bits(i_layer, n_layer):
    """llama.cpp's Q4_K_M rule for which attn_v/ffn_down layers get Q6_K."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or \
        (i_layer - n_layer // 8) % 3 == 2


def tensor_seed(seed, name):
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


CHUNK = 1 << 22   # elements generated per step; fixed so values don't depend on it


def gen_values(seed, name, shape, kind, std=1.0, mean=0.0):
    """Yields float32 chunks (whole rows) of a tensor, C order [ne1, ne0]."""
    rng = tensor_seed(seed, name)
    ne0 = shape[0]
    rows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    rows_per = max(1, CHUNK // ne0)
    for r0 in range(0, rows, rows_per):
        nr = min(rows_per, rows - r0)
        a = rng.standard_normal((nr, ne0), dtype=np.float32)
        if kind == "normal":
            a *= np.float32(std)
            a += np.float32(mean)
        yield a


def make_tensor_producer(seed, name, shape, ggml_type, std, mean):
    nbytes = gguf.type_size(ggml_type, int(np.prod(shape, dtype=np.int64)))

    def produce():
        out = np.empty(nbytes, np.uint8)
        pos = 0
        for chunk in gen_values(seed, name, shape, "normal", std, mean):
            q = gguf.quantize_array(chunk, ggml_type)
            out[pos:pos + q.size] = q
            pos += q.size
        assert pos == nbytes
        return out
    return produce


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description="write a random-weight GGUF model")
    ap.add_argument("-o", "--out", required=True, help="output .gguf path")
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--arch", choices=["llama", "qwen2", "qwen3"])
    ap.add_argument("--dim", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--head-dim", type=int)
    ap.add_argument("--ffn", type=int)
    ap.add_argument("--vocab", help="GGUF whose tokenizer.* metadata (and vocab size) to copy")
    ap.add_argument("--vocab-size", type=int, help="synthetic byte-level vocab size (>= 259)")
    ap.add_argument("--ctx", type=int)
    ap.add_argument("--rope-theta", type=float)
    ap.add_argument("--eps", type=float)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--tied", dest="tied", action="store_true", default=None,
                   help="no output.weight; the output reuses token_embd")
    g.add_argument("--untied", dest="tied", action="store_false")
    b = ap.add_mutually_exclusive_group()
    b.add_argument("--qkv-bias", dest="qkv_bias", action="store_true", default=None,
                   help="add attn_{q,k,v}.bias (default on for qwen2 only)")
    b.add_argument("--no-qkv-bias", dest="qkv_bias", action="store_false")
    ap.add_argument("--type", default="f32", choices=sorted(TYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama3-rope-scaling", action="store_true", default=None)
    ap.add_argument("--rope-scaling-factor", type=float)
    ap.add_argument("--no-rope-freqs-tensor", action="store_true",
                    help="llama3 scaling as metadata only, without rope_freqs.weight")
    ap.add_argument("--logit-std", type=float, default=3.0,
                    help="target std of output logits (scales output/embedding)")
    ap.add_argument("--name", help="general.name")
    ap.add_argument("--progress", action="store_true", default=None,
                    help="per-tensor progress on stderr (default: on above 20M params)")
    a = ap.parse_args(argv)

    cfg = dict(DEFAULTS)
    if a.preset:
        cfg.update(PRESETS[a.preset])
    for k in ("arch", "dim", "layers", "heads", "kv_heads", "head_dim", "ffn", "vocab_size",
              "ctx", "rope_theta", "tied", "qkv_bias", "llama3_rope_scaling", "eps"):
        v = getattr(a, k)
        if v is not None:
            cfg[k] = v
    if a.rope_scaling_factor is not None:
        cfg["rope_scaling_factor"] = a.rope_scaling_factor
    if cfg["kv_heads"] is None:
        cfg["kv_heads"] = cfg["heads"]
    if cfg["head_dim"] is None:
        cfg["head_dim"] = cfg["dim"] // cfg["heads"]
    if cfg["ffn"] is None:
        cfg["ffn"] = 4 * cfg["dim"]
    if cfg["qkv_bias"] is None:
        cfg["qkv_bias"] = cfg["arch"] == "qwen2"
    if cfg["heads"] % cfg["kv_heads"]:
        ap.error("--heads must be a multiple of --kv-heads")
    if cfg["head_dim"] % 2:
        ap.error("--head-dim must be even (RoPE rotates pairs)")
    return a, cfg


def pick_type(name, shape, base, qtype_name, n_layer, tied, warn):
    """ggml type for one 2-D weight, with Q4_K_M's mix and block fallbacks."""
    t = base
    if qtype_name == "q4_k_m":
        if name == "output.weight" or (name == "token_embd.weight" and tied):
            t = gguf.Q6_K
        elif name.endswith("attn_v.weight") or name.endswith("ffn_down.weight"):
            il = int(name.split(".")[1])
            if use_more_bits(il, n_layer):
                t = gguf.Q6_K
    blk = gguf.GGML_BLOCK[t][0]
    if shape[0] % blk:
        fb = KQUANT_FALLBACK.get(t, gguf.F16)
        if shape[0] % gguf.GGML_BLOCK[fb][0]:
            fb = gguf.F16
        warn("%s -> %s (ne0 not a multiple of %d)"
             % (gguf.GGML_TYPE_NAMES[t], gguf.GGML_TYPE_NAMES[fb], blk), name)
        t = fb
    return t


def main(argv):
    a, cfg = parse_args(argv)
    arch = cfg["arch"]
    dim, n_layer, n_head, n_kv = cfg["dim"], cfg["layers"], cfg["heads"], cfg["kv_heads"]
    hd, ffn, tied = cfg["head_dim"], cfg["ffn"], cfg["tied"]

    if a.vocab:
        vocab_kv, n_vocab = vocab_from_gguf(a.vocab)
    else:
        vocab_kv, n_vocab = byte_vocab(cfg["vocab_size"])

    fallbacks = {}   # message -> tensor names, reported once at the end

    def warn(msg, name):
        fallbacks.setdefault(msg, []).append(name)

    w = gguf.GGUFWriter(a.out)
    w.add_string("general.architecture", arch)
    w.add_string("general.name", a.name or ("synth-" + (a.preset or arch)))
    w.add_u32("general.file_type", FILE_TYPE[a.type])
    w.add_u32("general.quantization_version", 2)
    w.add_u32(arch + ".context_length", cfg["ctx"])
    w.add_u32(arch + ".embedding_length", dim)
    w.add_u32(arch + ".block_count", n_layer)
    w.add_u32(arch + ".feed_forward_length", ffn)
    w.add_u32(arch + ".attention.head_count", n_head)
    w.add_u32(arch + ".attention.head_count_kv", n_kv)
    w.add_u32(arch + ".attention.key_length", hd)
    w.add_u32(arch + ".attention.value_length", hd)
    w.add_f32(arch + ".attention.layer_norm_rms_epsilon", cfg["eps"])
    w.add_f32(arch + ".rope.freq_base", cfg["rope_theta"])
    w.add_u32(arch + ".rope.dimension_count", hd)
    w.add_u32(arch + ".vocab_size", n_vocab)
    rope_factors = None
    if cfg["llama3_rope_scaling"]:
        w.add_string(arch + ".rope.scaling.type", "llama3")
        w.add_f32(arch + ".rope.scaling.factor", cfg["rope_scaling_factor"])
        w.add_f32(arch + ".rope.scaling.low_freq_factor", cfg["rope_low_freq_factor"])
        w.add_f32(arch + ".rope.scaling.high_freq_factor", cfg["rope_high_freq_factor"])
        w.add_u32(arch + ".rope.scaling.original_context_length", cfg["rope_orig_ctx"])
        sys.path.insert(0, os.path.join(_HERE, "..", "ref"))
        from ref_forward import llama3_rope_factors
        rope_factors = llama3_rope_factors(hd, cfg["rope_theta"], cfg["rope_scaling_factor"],
                                           cfg["rope_low_freq_factor"],
                                           cfg["rope_high_freq_factor"],
                                           cfg["rope_orig_ctx"]).astype(np.float32)
    for k, v, vt, et in vocab_kv:
        w.add_value(k, v, vt, et)

    base = TYPES[a.type]
    n_params = 0

    def add_weight(name, shape, std, mean=0.0, two_d=True):
        nonlocal n_params
        n_params += int(np.prod(shape))
        t = pick_type(name, shape, base, a.type, n_layer, tied, warn) if two_d else gguf.F32
        w.add_tensor(name, make_tensor_producer(a.seed, name, shape, t, std, mean), t, shape)

    # std choices: see module docstring.  Embeddings share the output's scale
    # so tied and untied models behave alike.
    emb_std = a.logit_std / np.sqrt(dim)
    add_weight("token_embd.weight", [dim, n_vocab], emb_std)
    if rope_factors is not None and not a.no_rope_freqs_tensor:
        w.add_tensor("rope_freqs.weight", rope_factors, gguf.F32, [hd // 2])
    add_weight("output_norm.weight", [dim], 0.05, 1.0, two_d=False)
    if not tied:
        add_weight("output.weight", [dim, n_vocab], emb_std)
    for il in range(n_layer):
        p = "blk.%d." % il
        add_weight(p + "attn_norm.weight", [dim], 0.05, 1.0, two_d=False)
        add_weight(p + "attn_q.weight", [dim, n_head * hd], QK_GAIN / np.sqrt(dim))
        add_weight(p + "attn_k.weight", [dim, n_kv * hd], QK_GAIN / np.sqrt(dim))
        add_weight(p + "attn_v.weight", [dim, n_kv * hd], 1.0 / np.sqrt(dim))
        if cfg["qkv_bias"]:
            add_weight(p + "attn_q.bias", [n_head * hd], 0.1, two_d=False)
            add_weight(p + "attn_k.bias", [n_kv * hd], 0.1, two_d=False)
            add_weight(p + "attn_v.bias", [n_kv * hd], 0.1, two_d=False)
        if arch == "qwen3":
            add_weight(p + "attn_q_norm.weight", [hd], 0.05, 1.0, two_d=False)
            add_weight(p + "attn_k_norm.weight", [hd], 0.05, 1.0, two_d=False)
        add_weight(p + "attn_output.weight", [n_head * hd, dim], 1.0 / np.sqrt(n_head * hd))
        add_weight(p + "ffn_norm.weight", [dim], 0.05, 1.0, two_d=False)
        add_weight(p + "ffn_gate.weight", [dim, ffn], 1.0 / np.sqrt(dim))
        add_weight(p + "ffn_up.weight", [dim, ffn], 1.0 / np.sqrt(dim))
        add_weight(p + "ffn_down.weight", [ffn, dim], 1.0 / np.sqrt(ffn))

    show = a.progress if a.progress is not None else n_params > 20_000_000
    t0 = time.time()

    def progress(i, n, name):
        if show:
            t = w._tensors[i]
            print("[%4d/%d] %-28s %-5s %-16s %7.1fs"
                  % (i + 1, n, name, gguf.GGML_TYPE_NAMES[t.ggml_type], t.shape,
                     time.time() - t0), file=sys.stderr, flush=True)

    w.write(progress=progress)
    for msg, names in fallbacks.items():
        print("make_model: %d tensor(s) %s, e.g. %s" % (len(names), msg, names[0]),
              file=sys.stderr)
    size = os.path.getsize(a.out)
    print("wrote %s: %s %s, %.1fM params, vocab %d, %.1f MiB, %.1fs"
          % (a.out, arch, a.type, n_params / 1e6, n_vocab, size / 2 ** 20, time.time() - t0),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
