#!/usr/bin/python3
"""Generate text from a train.py checkpoint (greedy or temperature sampling).

Usage: sample.py CKPT --prompt "It is a truth" [--n 60] [--temp 0.8] [--top-k 40] [--seed 0]
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import load_checkpoint  # noqa: E402


@torch.no_grad()
def generate(model, ids, n, temp, top_k, gen):
    ids = list(ids)
    for _ in range(n):
        logits = model(torch.tensor([ids[-model.c.context_length:]], device=model.output.weight.device))[0, -1].float().cpu()
        if temp <= 0:
            t = int(logits.argmax())
        else:
            logits = logits / temp
            if top_k:
                v, _ = torch.topk(logits, top_k)
                logits[logits < v[-1]] = -float("inf")
            t = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        if t == 2:
            break
        ids.append(t)
    return ids


def main():
    import sentencepiece as spm
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--prompt", action="append", required=True)
    ap.add_argument("--tok", default=os.path.join(HERE, "work", "tok", "strata.model"))
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--temp", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sp = spm.SentencePieceProcessor(model_file=args.tok)
    model, _ = load_checkpoint(args.ckpt)
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev)
    model.eval()
    gen = torch.Generator().manual_seed(args.seed)
    for p in args.prompt:
        ids = [1] + sp.encode(p)
        out = generate(model, ids, args.n, args.temp, args.top_k, gen)
        print("PROMPT: %s\nOUTPUT: %s\n" % (p, sp.decode(out[len(ids):])))


if __name__ == "__main__":
    main()
