#!/usr/bin/python3
"""Train Strata's SentencePiece BPE tokenizer (byte fallback) on the train split.

Conventions match llama's tokenizer.model so the GGUF is a plain "llama" tokenizer:
unk=0 <unk>, bos=1 <s>, eos=2 </s>, 256 byte pieces <0x00>..<0xFF>, identity normalization
(no NFKC, whitespace kept as-is), add_dummy_prefix (add_space_prefix) on, digits split
into single digits (helps numeric recall tasks).

Usage: tokenizer.py [--vocab 4096] [--corpus work/corpus] [--out work/tok]
"""
import argparse
import json
import os
import random

import numpy as np
import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--corpus", default=os.path.join(HERE, "work", "corpus"))
    ap.add_argument("--out", default=os.path.join(HERE, "work", "tok"))
    ap.add_argument("--encode-only", action="store_true", help="skip training, just write the .bin streams")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.encode_only:
        train(args)
    encode_splits(args)


def encode_splits(args):
    """work/tok/{train,val,test}.bin: uint16 stream, each document as BOS ids... EOS."""
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.out, "strata.model"))
    for split in ("train", "val", "test"):
        texts = [json.loads(l)["text"] for l in open(os.path.join(args.corpus, split + ".jsonl"), encoding="utf-8")]
        out = []
        for ids in sp.encode(texts):
            out.append(1)
            out.extend(ids)
            out.append(2)
        np.array(out, dtype=np.uint16).tofile(os.path.join(args.out, split + ".bin"))
        chars = sum(len(t) for t in texts)
        print("%s: %d docs, %d chars, %d tokens (%.2f chars/token)" % (split, len(texts), chars, len(out), chars / len(out)))


def train(args):
    lines = []
    for l in open(os.path.join(args.corpus, "train.jsonl"), encoding="utf-8"):
        for para in json.loads(l)["text"].split("\n"):
            if para.strip():
                lines.append(para)
    random.Random(0).shuffle(lines)
    txt = os.path.join(args.out, "spm_train.txt")
    with open(txt, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=txt, model_prefix=os.path.join(args.out, "strata"), model_type="bpe",
        vocab_size=args.vocab, byte_fallback=True, character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        max_sentence_length=16384, input_sentence_size=400000, shuffle_input_sentence=True,
        num_threads=2, minloglevel=1)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.out, "strata.model"))
    s = "The code of Alice Brown is 4821. It is a truth universally acknowledged."
    print(sp.encode(s, out_type=str))


if __name__ == "__main__":
    main()
