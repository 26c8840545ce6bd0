#!/usr/bin/python3
"""Validation loss per character, the one loss that compares models with different vocabularies.

Usage: char_loss.py MODEL.gguf TOK.model [MODEL2.gguf TOK2.model ...] [--docs N] [-c 512]

Scores the first N validation documents (all by default) with each model and its own tokenizer:
BOS + ids + EOS, every token after BOS scored once, in consecutive windows of c targets. Prints
nats and bits per character and the per-token perplexity. Perplexity per token does not compare
across vocabularies: a tokenizer with longer pieces has fewer, harder tokens.
"""
import argparse
import json
import math
import os
import sys

import sentencepiece as spm
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import load_gguf  # noqa: E402
from revocab import nats_per_char  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+", help="MODEL.gguf TOK.model, repeated")
    ap.add_argument("--val", default=os.path.join(HERE, "work", "corpus", "val.jsonl"))
    ap.add_argument("--docs", type=int, default=0, help="first N documents (0: all)")
    ap.add_argument("-c", type=int, default=512)
    ap.add_argument("--json")
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give MODEL TOK pairs")
    torch.set_num_threads(os.cpu_count() or 1)
    texts = [json.loads(l)["text"] for l in open(args.val, encoding="utf-8")]
    if args.docs > 0:
        texts = texts[:args.docs]
    chars = sum(len(t) for t in texts)
    print("%d documents, %d characters, windows of %d tokens" % (len(texts), chars, args.c))
    rows = []
    print("| model | vocab | tokens scored | chars/token | nats/char | bits/char | ppl/token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mp, tp in zip(args.pairs[0::2], args.pairs[1::2]):
        sp = spm.SentencePieceProcessor(model_file=tp)
        npc, npt, toks = nats_per_char(load_gguf(mp), sp, texts, args.c)
        r = {"model": mp, "tokenizer": tp, "vocab": sp.get_piece_size(), "tokens": toks,
             "nats_per_char": npc, "bits_per_char": npc / math.log(2), "ppl_per_token": math.exp(npt)}
        rows.append(r)
        print("| %s | %d | %d | %.3f | %.4f | %.4f | %.3f |" % (os.path.basename(mp), r["vocab"], toks, chars / toks,
                                                                npc, r["bits_per_char"], r["ppl_per_token"]), flush=True)
    if args.json:
        json.dump({"documents": len(texts), "chars": chars, "ctx": args.c, "models": rows}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
