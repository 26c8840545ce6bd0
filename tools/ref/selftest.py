#!/usr/bin/python3
"""Self-test of the Python oracle: gguf.py, ref_forward.py, spm_tokenizer.py
and tools/synth/make_model.py.  Exits non-zero on any failure.

The stories260K check runs when ../shared/models/stories260K.gguf (relative
to the repository root) or $STRATA_MODELS_DIR/stories260K.gguf exists, and is
skipped with a message otherwise, so a fresh clone still passes.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "py"))
sys.path.insert(0, HERE)
import gguf  # noqa: E402
import ref_forward as rf  # noqa: E402
from spm_tokenizer import SpmTokenizer  # noqa: E402

MAKE_MODEL = os.path.join(ROOT, "tools", "synth", "make_model.py")
STORIES_PROMPT_IDS = [1, 403, 407, 261, 378]
STORIES_EXPECTED = ", there was a little girl named Lily. She loved to play outside in the park."

FAILS = []


def check(cond, msg):
    print(("ok    " if cond else "FAIL  ") + msg)
    if not cond:
        FAILS.append(msg)


def find_stories():
    cands = []
    if os.environ.get("STRATA_MODELS_DIR"):
        cands.append(os.path.join(os.environ["STRATA_MODELS_DIR"], "stories260K.gguf"))
    cands.append(os.path.join(ROOT, "..", "shared", "models", "stories260K.gguf"))
    cands.append(os.path.join(ROOT, "shared", "models", "stories260K.gguf"))
    for c in cands:
        if os.path.exists(c):
            return c
    return None


def make(out, *args):
    cmd = [sys.executable, MAKE_MODEL, "-o", out] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        print(r.stderr)
    check(r.returncode == 0, "make_model %s" % " ".join(args))
    return out


def test_gguf_module():
    import test_gguf
    rc = test_gguf.main()
    check(rc == 0, "tools/py/test_gguf.py")


def test_stories():
    path = find_stories()
    if path is None:
        print("skip  stories260K.gguf not found (set STRATA_MODELS_DIR)")
        return
    m = rf.Model(path)
    tok = SpmTokenizer.from_gguf(m.r)
    ids = tok.encode("Once upon a time")
    check(ids == STORIES_PROMPT_IDS, "stories260K: encode 'Once upon a time' -> %s" % ids)
    new = rf.greedy(m, ids, 24)
    text = tok.decode(new)
    check(text.startswith(STORIES_EXPECTED[:70]), "stories260K greedy: %r" % text)
    s = "The cat sat on the mat. It was happy!"
    check(tok.decode(tok.encode(s)[1:], strip_leading_space=True) == s, "spm encode/decode round trip")
    s = "naïve 日本"      # exercises byte fallback
    check(tok.decode(tok.encode(s)[1:], strip_leading_space=True) == s, "spm byte fallback round trip")
    # kv-f16 should barely matter on a real model
    l1 = rf.forward(m, ids + new[:10])
    l2 = rf.forward(m, ids + new[:10], kv_f16=False)
    check(np.abs(l1 - l2).max() < 0.05, "stories260K kv_f16 effect %.4g" % np.abs(l1 - l2).max())


def test_causal_and_incremental(m, name):
    toks = list(range(3, 3 + 24))
    full = rf.forward(m, toks)
    ok = True
    for k in (1, 7, 24):
        pre = rf.forward(m, toks[:k])
        ok &= np.allclose(pre, full[:k], rtol=1e-5, atol=1e-5)
    check(ok, "%s: prefix logits equal (causal mask)" % name)
    check(np.isfinite(full).all(), "%s: logits finite" % name)
    std = float(full.std())
    check(1.0 < std < 10.0, "%s: logit std %.2f in (1, 10)" % (name, std))
    return full


def test_rope_conventions(path):
    """Normal RoPE on converter-permuted Q/K == NeoX RoPE on the HF layout."""
    a = rf.Model(path)
    b = rf.Model(path)
    b.neox = True
    hd = a.head_dim
    for il in range(a.n_layer):
        for nm, nh in (("attn_q", a.n_head), ("attn_k", a.n_head_kv)):
            wname = "blk.%d.%s.weight" % (il, nm)
            wq = a.w(wname)                               # [nh*hd, dim], interleaved
            hf = wq.reshape(nh, hd // 2, 2, -1).swapaxes(1, 2).reshape(nh * hd, -1)
            b._cache[wname] = np.ascontiguousarray(hf)
    toks = [5, 9, 200, 17, 33, 2, 101, 64]
    la, lb = rf.forward(a, toks), rf.forward(b, toks)
    check(np.allclose(la, lb, rtol=1e-4, atol=1e-4),
          "rope: normal(permuted) == neox(HF layout), max diff %.3g" % np.abs(la - lb).max())


def rms_err(a, ref):
    return float(np.sqrt(np.mean((a - ref) ** 2)) / ref.std())


def test_synth(td):
    common = ["--dim", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "256"]
    f32 = make(os.path.join(td, "l-f32.gguf"), "--arch", "llama", "--type", "f32", *common)
    f32b = make(os.path.join(td, "l-f32b.gguf"), "--arch", "llama", "--type", "f32", *common)
    with open(f32, "rb") as x, open(f32b, "rb") as y:
        check(x.read() == y.read(), "synth: same seed -> identical file")
    ref = test_causal_and_incremental(rf.Model(f32), "llama f32")
    test_rope_conventions(f32)

    # quantized variants of the same weights stay close to f32
    # Bounds are RMS logit error in units of the logit std, ~3x what was
    # measured; a wrong block layout decodes to noise and scores ~1.4.
    tol = {"f16": 0.005, "bf16": 0.04, "q8_0": 0.1, "q6_k": 0.3, "q4_0": 0.9}
    for t, tl in tol.items():
        p = make(os.path.join(td, "l-%s.gguf" % t), "--arch", "llama", "--type", t, *common)
        lg = rf.forward(rf.Model(p), list(range(3, 27)))
        err = rms_err(lg, ref)
        check(err < tl, "llama %s vs f32: rms err %.3g std-units (< %g)" % (t, err, tl))
    # k-quants need ne0 % 256 == 0
    kc = ["--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "512"]
    kref = rf.forward(rf.Model(make(os.path.join(td, "k-f32.gguf"), "--type", "f32", *kc)),
                      list(range(3, 27)))
    for t, tl in {"q6_k": 0.3, "q5_k": 0.6, "q4_k": 0.9, "q4_k_m": 0.9}.items():
        p = make(os.path.join(td, "k-%s.gguf" % t), "--type", t, *kc)
        r = gguf.GGUFReader(p)
        types = {x.ggml_type for x in r.tensors.values() if len(x.shape) == 2}
        check(gguf.Q4_0 not in types and gguf.Q8_0 not in types, "%s: no fallback types" % t)
        lg = rf.forward(rf.Model(p), list(range(3, 27)))
        err = rms_err(lg, kref)
        check(err < tl, "llama %s vs f32: rms err %.3g std-units (< %g)" % (t, err, tl))

    # tied: no output.weight, output uses token_embd
    p = make(os.path.join(td, "tied.gguf"), "--tied", *common)
    m = rf.Model(p)
    check("output.weight" not in m.r.tensors and m.output_name == "token_embd.weight", "tied model")
    test_causal_and_incremental(m, "llama tied")

    # qwen2 (bias, neox) and qwen3 (q/k norm, wide heads)
    p = make(os.path.join(td, "qwen2.gguf"), "--arch", "qwen2", "--type", "q8_0", *common)
    m = rf.Model(p)
    check(m.neox and m.has("blk.0.attn_q.bias"), "qwen2 has qkv bias and neox rope")
    test_causal_and_incremental(m, "qwen2")
    p = make(os.path.join(td, "qwen3.gguf"), "--arch", "qwen3", "--head-dim", "64", *common)
    m = rf.Model(p)
    check(m.neox and m.has("blk.0.attn_q_norm.weight") and not m.has("blk.0.attn_q.bias")
          and m.r.tensors["blk.0.attn_q.weight"].shape == [128, 256], "qwen3 layout")
    test_causal_and_incremental(m, "qwen3")

    # llama3 rope scaling: tensor and metadata paths agree, and differ from none
    l3 = ["--llama3-rope-scaling", "--rope-scaling-factor", "32", "--rope-theta", "500000"]
    pa = make(os.path.join(td, "l3a.gguf"), *common, *l3)
    pb = make(os.path.join(td, "l3b.gguf"), *common, *l3, "--no-rope-freqs-tensor")
    pc = make(os.path.join(td, "l3c.gguf"), *common, "--rope-theta", "500000")
    toks = list(range(3, 40))
    la, lb, lc = (rf.forward(rf.Model(p), toks) for p in (pa, pb, pc))
    check(np.allclose(la, lb, atol=1e-4), "llama3 rope: rope_freqs tensor == metadata")
    check(np.abs(la - lc).max() > 1e-3, "llama3 rope: scaling changes logits")

    # vocab copied from another GGUF
    st = find_stories()
    if st:
        p = make(os.path.join(td, "v.gguf"), "--vocab", st, *common)
        r = gguf.GGUFReader(p)
        check(r.kv["tokenizer.ggml.tokens"] == gguf.GGUFReader(st).kv["tokenizer.ggml.tokens"]
              and r.tensors["token_embd.weight"].shape == [128, 512], "--vocab copies tokenizer")


def main():
    test_gguf_module()
    test_stories()
    with tempfile.TemporaryDirectory() as td:
        test_synth(td)
    if FAILS:
        print("\n%d check(s) failed:" % len(FAILS))
        for f in FAILS:
            print("  " + f)
        return 1
    print("\nselftest: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
