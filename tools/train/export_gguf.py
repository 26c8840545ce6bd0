#!/usr/bin/python3
"""Export a train.py checkpoint to GGUF (llama.cpp "llama" conventions), F16 or Q8_0.

Usage: export_gguf.py CKPT OUT.gguf [--type f16|q8_0] [--tok work/tok/strata.model] [--verify]

model.py applies RoPE to adjacent pairs (2i, 2i+1), which is ggml's normal rope mode, so Q/K rows
are written as they are (no HF rotate_half permutation). Linear weights [out, in] in PyTorch are
ggml tensors with ne = [in, out]; norms stay F32. --verify runs tools/ref/ref_forward.py on the
written file and compares its logits with the PyTorch model's (weights rounded the same way).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools", "py"))
import gguf  # noqa: E402
from model import load_checkpoint, torch_load  # noqa: E402

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def tokenizer_kv(w, sp_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    toks, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        toks.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            t = UNKNOWN
        elif sp.is_control(i):
            t = CONTROL
        elif sp.is_byte(i):
            t = BYTE
        elif sp.is_unused(i):
            t = UNUSED
        else:
            t = NORMAL
        types.append(t)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", toks, gguf.STRING)
    w.add_array("tokenizer.ggml.scores", scores, gguf.FLOAT32)
    w.add_array("tokenizer.ggml.token_type", types, gguf.INT32)
    w.add_u32("tokenizer.ggml.bos_token_id", sp.bos_id())
    w.add_u32("tokenizer.ggml.eos_token_id", sp.eos_id())
    w.add_u32("tokenizer.ggml.unknown_token_id", sp.unk_id())
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)
    w.add_bool("tokenizer.ggml.add_space_prefix", True)
    return sp.get_piece_size()


def tensor_map(sd, n_layers):
    """(gguf name, pytorch state_dict key) in llama.cpp order."""
    out = [("token_embd.weight", "tok_embeddings.weight")]
    for i in range(n_layers):
        p = "layers.%d." % i
        out += [("blk.%d.attn_norm.weight" % i, p + "attention_norm.weight"),
                ("blk.%d.attn_q.weight" % i, p + "attention.wq.weight"),
                ("blk.%d.attn_k.weight" % i, p + "attention.wk.weight"),
                ("blk.%d.attn_v.weight" % i, p + "attention.wv.weight"),
                ("blk.%d.attn_output.weight" % i, p + "attention.wo.weight"),
                ("blk.%d.ffn_norm.weight" % i, p + "ffn_norm.weight"),
                ("blk.%d.ffn_gate.weight" % i, p + "feed_forward.w1.weight"),
                ("blk.%d.ffn_up.weight" % i, p + "feed_forward.w3.weight"),
                ("blk.%d.ffn_down.weight" % i, p + "feed_forward.w2.weight")]
    out += [("output_norm.weight", "norm.weight"), ("output.weight", "output.weight")]
    return out


def export(ckpt, out_path, qtype, sp_path, name, description):
    model, ck = load_checkpoint(ckpt)
    c = model.c
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(out_path)
    w.add_string("general.architecture", "llama")
    w.add_string("general.name", name)
    w.add_string("general.description", description)
    w.add_u32("general.file_type", {gguf.F32: 0, gguf.F16: 1, gguf.Q8_0: 7}[qtype])
    w.add_u32("general.quantization_version", 2)
    w.add_u32("llama.context_length", c.context_length)
    w.add_u32("llama.embedding_length", c.dim)
    w.add_u32("llama.block_count", c.n_layers)
    w.add_u32("llama.feed_forward_length", c.ffn_dim)
    w.add_u32("llama.attention.head_count", c.n_heads)
    w.add_u32("llama.attention.head_count_kv", c.n_kv_heads)
    w.add_f32("llama.attention.layer_norm_rms_epsilon", c.norm_eps)
    w.add_f32("llama.rope.freq_base", c.rope_theta)
    w.add_u32("llama.rope.dimension_count", c.head_dim)
    w.add_u32("llama.vocab_size", c.vocab_size)
    n_vocab = tokenizer_kv(w, sp_path)
    assert n_vocab == c.vocab_size, (n_vocab, c.vocab_size)
    rounded = {}
    for gname, key in tensor_map(sd, c.n_layers):
        a = np.ascontiguousarray(sd[key], dtype=np.float32)
        shape = list(reversed(a.shape))  # ggml order: ne0 = input dim
        t = gguf.F32 if a.ndim == 1 else qtype
        data = gguf.quantize_array(a, t)
        w.add_tensor(gname, data, t, shape)
        if t == gguf.F32:
            rounded[key] = a
        else:
            rounded[key] = gguf.dequantize(data, t, a.size).reshape(a.shape).astype(np.float32)
    w.write()
    return model, rounded, ck


def verify(model, rounded, out_path, tokens):
    model.load_state_dict({k: torch.from_numpy(v) for k, v in rounded.items()}, strict=False)
    model.eval()
    with torch.no_grad():
        pt = model(torch.tensor([tokens]))[0].numpy()
    with tempfile.TemporaryDirectory() as td:
        f = os.path.join(td, "logits.npy")
        subprocess.check_call([sys.executable, os.path.join(ROOT, "tools", "ref", "ref_forward.py"), out_path,
                               "--tokens", ",".join(map(str, tokens)), "--logits-out", f, "--quiet"])
        ref = np.load(f)
    diff = np.abs(pt - ref).max()
    agree = float((pt.argmax(-1) == ref.argmax(-1)).mean())
    scale = np.abs(ref).max()
    print("verify: %d tokens, max |logit diff| %.4g (max |logit| %.3g), argmax agreement %.3f"
          % (len(tokens), diff, scale, agree))
    return diff, agree


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--type", default="f16", choices=["f16", "q8_0", "f32"])
    ap.add_argument("--tok", default=os.path.join(HERE, "work", "tok", "strata.model"))
    ap.add_argument("--name", default="strata-default")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--verify-text", default="It is a truth universally acknowledged, that a single man in "
                    "possession of a good fortune, must be in want of a wife. The code of Mara Quinn is 4821.")
    args = ap.parse_args()
    qtype = {"f16": gguf.F16, "q8_0": gguf.Q8_0, "f32": gguf.F32}[args.type]
    ck = torch_load(args.ckpt, map_location="cpu")
    st = ck["state"]
    desc = ("Strata's own small Llama-architecture model, trained from scratch by tools/train on Debian-packaged "
            "text (see models/README.md). step %d, %d tokens seen." % (st["step"], st["tokens"]))
    del ck
    model, rounded, _ = export(args.ckpt, args.out, qtype, args.tok, args.name, desc)
    print("wrote %s (%.2f MB)" % (args.out, os.path.getsize(args.out) / 1e6))
    if args.verify:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=args.tok)
        verify(model, rounded, args.out, [1] + sp.encode(args.verify_text))


if __name__ == "__main__":
    main()
