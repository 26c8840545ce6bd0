#!/usr/bin/python3
"""Evaluate a PyTorch checkpoint: perplexity on val/test and long-range task accuracy by distance.

Usage: eval_tasks.py CKPT [--eval-dir work/eval] [--limit 20] [--ppl-ctx 512] [--json out.json]

Task accuracy: an example counts as correct when every answer token is the model's argmax given the
true prefix (what greedy decoding would produce). For "repeat" the mean per-token accuracy over
the passage is reported as well. Results are grouped by the example's bucket (target distance in
tokens between the needed fact and the end of the prompt; see tasks.py).
"""
import argparse
import collections
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import load_checkpoint  # noqa: E402
from tasks import BUCKETS, TASKS  # noqa: E402


@torch.no_grad()
def perplexity(model, stream, ctx, device="cpu", batch=1):
    """Non-overlapping ctx-token windows (each scored on all ctx positions), `batch` windows per forward."""
    starts = list(range(0, len(stream) - ctx - 1, ctx))
    nll, n = 0.0, 0
    for i in range(0, len(starts), batch):
        ss = starts[i:i + batch]
        w = torch.from_numpy(np.stack([stream[s:s + ctx + 1] for s in ss]).astype(np.int64)).to(device)
        _, loss = model(w[:, :-1], w[:, 1:])
        nll += loss.item() * ctx * len(ss)
        n += ctx * len(ss)
    return math.exp(nll / n), n


@torch.no_grad()
def task_accuracy(model, path, limit, device="cpu"):
    by_bucket = collections.defaultdict(lambda: {"n": 0, "correct": 0, "tok_acc": 0.0, "dist": 0})
    for line in open(path, encoding="utf-8"):
        e = json.loads(line)
        b = by_bucket[e["bucket"]]
        if b["n"] >= limit:
            continue
        p, a = e["prompt_ids"], e["answer_ids"]
        if e["task"] == "repeat":
            a = a[:-2] if len(a) > 4 else a  # score the passage, not the closing " ]]"
        ids = torch.tensor(p + a[:-1], dtype=torch.long, device=device)[None]
        logits = model(ids)[0, len(p) - 1:]
        pred = logits.argmax(-1).tolist()
        hits = [int(x == y) for x, y in zip(pred, a)]
        b["n"] += 1
        b["correct"] += int(all(hits))
        b["tok_acc"] += sum(hits) / len(hits)
        b["dist"] += e["distance"]
    out = {}
    for k in sorted(by_bucket):
        b = by_bucket[k]
        out[k] = {"n": b["n"], "acc": b["correct"] / b["n"], "tok_acc": b["tok_acc"] / b["n"],
                  "mean_distance": b["dist"] / b["n"]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--eval-dir", default=os.path.join(HERE, "work", "eval"))
    ap.add_argument("--tok", default=os.path.join(HERE, "work", "tok"))
    ap.add_argument("--limit", type=int, default=20, help="examples per task and bucket")
    ap.add_argument("--ppl-ctx", type=int, default=512)
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (fp32 either way; TF32 matmuls on cuda)")
    ap.add_argument("--ppl-batch", type=int, default=0, help="windows per forward (default 1 on cpu, 64 on cuda)")
    ap.add_argument("--ppl-max-tokens", type=int, default=0, help="only the first N tokens of each split (tests)")
    ap.add_argument("--ppl-ctx-extra", default="", help="more window sizes for perplexity, e.g. 2048")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    model, ck = load_checkpoint(args.ckpt)
    model.to(device)
    model.eval()
    pb = args.ppl_batch or (64 if device.startswith("cuda") else 1)
    res = {"step": ck["state"]["step"], "tokens": ck["state"]["tokens"], "config": ck["config"], "ppl": {}, "tasks": {}}
    t0 = time.time()
    for split in [s for s in args.splits.split(",") if s]:
        stream = np.fromfile(os.path.join(args.tok, split + ".bin"), dtype=np.uint16)
        if args.ppl_max_tokens:
            stream = stream[:args.ppl_max_tokens]
        ppl, n = perplexity(model, stream, args.ppl_ctx, device, pb)
        res["ppl"][split] = {"ppl": ppl, "tokens": n, "ctx": args.ppl_ctx}
        print("%s ppl %.3f over %d tokens (ctx %d)  [%.0fs]" % (split, ppl, n, args.ppl_ctx, time.time() - t0), flush=True)
        for cx in [int(c) for c in args.ppl_ctx_extra.split(",") if c]:
            ppl, n = perplexity(model, stream, cx, device, max(1, pb * args.ppl_ctx // cx))
            res["ppl"]["%s_ctx%d" % (split, cx)] = {"ppl": ppl, "tokens": n, "ctx": cx}
            print("%s ppl %.3f over %d tokens (ctx %d)  [%.0fs]" % (split, ppl, n, cx, time.time() - t0), flush=True)
    for task in [t for t in args.tasks.split(",") if t]:
        r = task_accuracy(model, os.path.join(args.eval_dir, task + ".jsonl"), args.limit, device)
        res["tasks"][task] = r
        print("%-10s " % task + "  ".join("d~%d: %.2f (tok %.2f)" % (v["mean_distance"], v["acc"], v["tok_acc"])
                                            for k, v in r.items()) + "  [%.0fs]" % (time.time() - t0), flush=True)
    if args.json:
        json.dump(res, open(args.json, "w"), indent=1)
    # markdown table
    print("\n| task | " + " | ".join("~%d" % b for b in BUCKETS) + " |")
    print("|---|" + "---:|" * len(BUCKETS))
    for task, r in res["tasks"].items():
        print("| %s | " % task + " | ".join("%.0f%%" % (100 * r[b]["acc"]) if b in r else "-" for b in BUCKETS) + " |")


if __name__ == "__main__":
    main()
