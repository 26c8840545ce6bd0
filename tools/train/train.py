#!/usr/bin/python3
"""Train Strata's default model (Llama architecture) on CPU, resumably.

Progress p in [0, 1] drives everything (LR cosine, sequence-length curriculum): p is
tokens_seen / --total-tokens, or, with --time-budget-min, training seconds / budget (useful on a
shared machine whose speed you cannot predict). The checkpoint (OUT/ckpt.pt, written atomically
every --ckpt-every-min and on SIGTERM/SIGINT or when OUT/STOP exists) holds model, optimizer,
progress counters and RNG state; rerunning the same command resumes. To continue a finished run
for longer, rerun with a larger --total-tokens / --time-budget-min (the cosine stretches).

Batches: every step has --tokens-per-step tokens; sequence length L follows --curriculum
("256:0.4,512:0.7,1024:0.9,2048:1" = L=256 until p=0.4, ...). A --task-frac share of the
sequences are long-range tasks from tasks.py (filler from the train stream); the rest are random
windows of the train token stream (documents are BOS ... EOS).
"""
import argparse
import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import Config, Transformer  # noqa: E402
from tasks import TaskGen, load_stream  # noqa: E402


def parse_curriculum(s):
    out = []
    for part in s.split(","):
        L, until = part.split(":")
        out.append((int(L), float(until)))
    return out


def seq_len_at(curr, p):
    for L, until in curr:
        if p < until:
            return L
    return curr[-1][0]


def lr_at(args, step, p):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(1.0, p)
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


class Batcher:
    def __init__(self, stream, gen, task_frac, seed):
        self.stream = stream
        self.gen = gen
        self.task_frac = task_frac
        self.rng = random.Random(seed)

    def window(self, n):
        s = self.rng.randrange(0, len(self.stream) - n - 1)
        return self.stream[s:s + n].astype(np.int64).tolist()

    def row(self, L):
        if self.rng.random() < self.task_frac:
            ids = self.gen.training_ids(L)[: L + 1]
            if len(ids) < L + 1:
                ids += [2] + self.window(L - len(ids))
            return ids
        return self.window(L + 1)

    def batch(self, B, L):
        rows = torch.tensor([self.row(L) for _ in range(B)], dtype=torch.long)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


@torch.no_grad()
def val_loss(model, val_stream, L=512, n=16):
    model.eval()
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(n):
        s = int(rng.integers(0, len(val_stream) - L - 1))
        w = torch.from_numpy(val_stream[s:s + L + 1].astype(np.int64))[None]
        _, loss = model(w[:, :-1], w[:, 1:])
        losses.append(loss.item())
    model.train()
    return float(np.mean(losses))


def save(path, model, opt, state, args, cfg):
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                "args": vars(args), "config": cfg.to_dict()}, tmp)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "work", "run"))
    ap.add_argument("--tok", default=os.path.join(HERE, "work", "tok"))
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=8)
    ap.add_argument("--n-kv-heads", type=int, default=4)
    ap.add_argument("--ffn-dim", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--total-tokens", type=float, default=0)
    ap.add_argument("--time-budget-min", type=float, default=0)
    ap.add_argument("--tokens-per-step", type=int, default=4096)
    ap.add_argument("--curriculum", default="256:0.4,512:0.7,1024:0.9,2048:1")
    ap.add_argument("--task-frac", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-every-min", type=float, default=5)
    ap.add_argument("--eval-every-min", type=float, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-gguf", help="start a new run from these weights (e.g. models/strata-default.gguf); "
                    "shape flags are taken from the file")
    args = ap.parse_args()
    assert args.total_tokens > 0 or args.time_budget_min > 0, "give --total-tokens or --time-budget-min"
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    log = open(os.path.join(args.out, "log.jsonl"), "a")

    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.tok, "strata.model"))
    train_stream = load_stream(os.path.join(args.tok, "train.bin"))
    val_stream = load_stream(os.path.join(args.tok, "val.bin"))

    cfg = Config(vocab_size=args.vocab, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                 n_kv_heads=args.n_kv_heads, ffn_dim=args.ffn_dim, context_length=args.context)
    torch.manual_seed(args.seed)
    model = Transformer(cfg)
    if args.init_gguf and not os.path.exists(ckpt_path):
        from model import load_gguf
        model = load_gguf(args.init_gguf)
        cfg = model.c
        print("initialized from", args.init_gguf, flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    state = {"step": 0, "tokens": 0, "train_sec": 0.0, "tokens_by_len": {}}
    seed = args.seed
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu")
        cfg = Config(**ck["config"])
        model = Transformer(cfg)
        model.load_state_dict(ck["model"])
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        seed = args.seed + state["step"]  # fresh data order after a resume
        print("resumed at step %d, %d tokens" % (state["step"], state["tokens"]), flush=True)
    print("config", cfg.to_dict(), "params %d (non-embedding %d)" % (model.n_params(False), model.n_params()), flush=True)

    gen = TaskGen(sp, train_stream, seed + 1)
    batcher = Batcher(train_stream, gen, args.task_frac, seed + 2)
    curr = parse_curriculum(args.curriculum)

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def progress():
        if args.total_tokens > 0:
            return state["tokens"] / args.total_tokens
        return state["train_sec"] / (args.time_budget_min * 60)

    last_ckpt = time.time()
    last_eval = time.time() if state["step"] > 0 else 0
    model.train()
    while progress() < 1.0 and not stop["flag"]:
        t0 = time.time()
        p = progress()
        L = seq_len_at(curr, p)
        B = max(1, args.tokens_per_step // L)
        lr = lr_at(args, state["step"], p)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batcher.batch(B, L)
        _, loss = model(x, y)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.time() - t0
        state["step"] += 1
        state["tokens"] += B * L
        state["train_sec"] += dt
        state["tokens_by_len"][str(L)] = state["tokens_by_len"].get(str(L), 0) + B * L
        rec = {"step": state["step"], "L": L, "B": B, "loss": round(loss.item(), 4), "lr": round(lr, 6),
               "gnorm": round(float(gn), 3), "tok_s": round(B * L / dt, 1), "tokens": state["tokens"],
               "train_min": round(state["train_sec"] / 60, 2), "p": round(progress(), 4)}
        if time.time() - last_eval > args.eval_every_min * 60:
            rec["val_loss"] = round(val_loss(model, val_stream), 4)
            last_eval = time.time()
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if state["step"] % 10 == 0 or "val_loss" in rec:
            print(json.dumps(rec), flush=True)
        if time.time() - last_ckpt > args.ckpt_every_min * 60 or os.path.exists(os.path.join(args.out, "STOP")):
            save(ckpt_path, model, opt, state, args, cfg)
            last_ckpt = time.time()
            if os.path.exists(os.path.join(args.out, "STOP")):
                break
    save(ckpt_path, model, opt, state, args, cfg)
    vl = val_loss(model, val_stream)
    rec = {"final": True, "step": state["step"], "tokens": state["tokens"], "val_loss": vl,
           "train_min": state["train_sec"] / 60, "tokens_by_len": state["tokens_by_len"]}
    log.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
