#!/usr/bin/python3
"""Perplexity of a text file with llama-perplexity's method, in PyTorch (fp32), to check `strata perplexity`.

Usage: ppl_llama.py MODEL TEXT [-c 512] [--chunks N] [--tok models/strata-tokenizer.model]
  MODEL: a training checkpoint (.pt) or a GGUF written by export_gguf.py (F16/Q8_0 weights are
  dequantized to fp32, so the Q8_0 file is evaluated with exactly its rounded weights).

Method (llama.cpp's perplexity, as src/engine/perplexity.cpp implements it): the text is encoded with
BOS in front, cut into floor(n_tokens / n_ctx) chunks of n_ctx tokens; each chunk's first token is
replaced by BOS and the chunk is evaluated from an empty context; only the second half is scored
(logits at positions n_ctx/2 .. n_ctx-2 predict tokens n_ctx/2+1 .. n_ctx-1), so every scored token
sees at least n_ctx/2 tokens of context. eval_tasks.py instead scores every position of
non-overlapping windows, which gives a higher number (the first tokens of each window see little).

  python3 ppl_llama.py work/gpu-final/ckpt.pt work/val.txt -c 512
  python3 ppl_llama.py ../../models/strata-default-q8_0.gguf work/val.txt -c 512
Make the text from a split with:
  python3 -c "import json,sys; sys.stdout.write('\\n\\n'.join(json.loads(l)['text'] for l in open('work/corpus/val.jsonl')))" > work/val.txt
"""
import argparse
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import load_checkpoint, load_gguf  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("-c", "--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=-1, help="score at most this many chunks (-1: all)")
    ap.add_argument("--tok", default=os.path.join(HERE, "..", "..", "models", "strata-tokenizer.model"))
    ap.add_argument("--batch", type=int, default=8, help="chunks per forward")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ids-out", help="write the token ids (with BOS) here, one line, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=args.tok)
    text = open(args.text, encoding="utf-8").read()
    toks = [sp.bos_id()] + sp.encode(text)
    if args.ids_out:
        with open(args.ids_out, "w") as f:
            f.write(",".join(map(str, toks)) + "\n")
    model = load_gguf(args.model) if args.model.endswith(".gguf") else load_checkpoint(args.model)[0]
    model.eval()
    n_ctx = args.ctx
    n_chunks = len(toks) // n_ctx
    if args.chunks > 0:
        n_chunks = min(n_chunks, args.chunks)
    first = n_ctx // 2
    nll_sum, nll_sq, count = 0.0, 0.0, 0
    t0 = time.time()
    with torch.no_grad():
        for c0 in range(0, n_chunks, args.batch):
            cs = range(c0, min(n_chunks, c0 + args.batch))
            x = torch.tensor([toks[c * n_ctx:(c + 1) * n_ctx] for c in cs], dtype=torch.long)
            x[:, 0] = sp.bos_id()
            logits = model(x).float()  # (B, n_ctx, vocab)
            lp = torch.log_softmax(logits[:, first:n_ctx - 1].double(), dim=-1)
            tgt = x[:, first + 1:n_ctx]
            nll = -lp.gather(-1, tgt[..., None])[..., 0]
            nll_sum += nll.sum().item()
            nll_sq += (nll * nll).sum().item()
            count += nll.numel()
            print("\r[%d/%d] ppl %.4f  %.0fs" % (cs[-1] + 1, n_chunks, math.exp(nll_sum / count), time.time() - t0),
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    mean = nll_sum / count
    ppl = math.exp(mean)
    var = max(0.0, nll_sq / count - mean * mean)
    print("tokens: %d, chunks: %d of %d tokens, scored tokens: %d" % (len(toks), n_chunks, n_ctx, count))
    print("Final estimate: PPL = %.4f +/- %.5f" % (ppl, ppl * math.sqrt(var / max(1, count - 1))))


if __name__ == "__main__":
    main()
