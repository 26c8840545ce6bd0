#!/usr/bin/python3
"""Train Strata's default model (Llama architecture) on CPU or one CUDA GPU, resumably.

GPU path (--device cuda or auto): bf16 autocast, fused AdamW, TF32, scaled_dot_product_attention
(flash), optional --compile (falls back to eager if the first compiled step fails), gradient
accumulation (--micro-batch-tokens), task sequences from a pool of --workers processes (taskfeed.py).
--time-budget-min counts wall clock from process start, so data loading, worker start-up and
compilation are inside the budget; the run stops before it would overrun.

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
import time
_T_IMPORT = time.time()  # the wall-clock budget starts here, before torch is imported

import argparse  # noqa: E402
import contextlib
import json
import math
import os
import random
import signal
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import Config, Transformer, torch_load  # noqa: E402
from taskfeed import TaskFeed  # noqa: E402
from tasks import load_stream  # noqa: E402


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
    """Batches [B, L+1] of int64: a task_frac share of rows from the TaskFeed, the rest random windows
    of the train stream (vectorized numpy gather)."""

    def __init__(self, stream, feed, task_frac, seed):
        self.stream = stream
        self.feed = feed
        self.task_frac = task_frac
        self.rng = np.random.default_rng(seed)

    def batch(self, B, L):
        nt = int(self.rng.binomial(B, self.task_frac)) if self.task_frac > 0 else 0
        starts = self.rng.integers(0, len(self.stream) - L - 2, size=B - nt)
        text = self.stream[starts[:, None] + np.arange(L + 1)[None, :]]
        rows = np.concatenate([self.feed.get(nt, L), text]) if nt else text
        rows = rows[self.rng.permutation(B)]
        return torch.from_numpy(rows.astype(np.int64))


@torch.no_grad()
def val_loss(model, val_stream, L=512, n=32, device="cpu", amp=contextlib.nullcontext):
    model.eval()
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(val_stream) - L - 1, size=n)
    w = torch.from_numpy(val_stream[starts[:, None] + np.arange(L + 1)[None, :]].astype(np.int64)).to(device)
    losses = []
    for i in range(0, n, 8):
        with amp():
            _, loss = model(w[i:i + 8, :-1], w[i:i + 8, 1:])
        losses.append(loss.item())
    model.train()
    return float(np.mean(losses))


# The fixed openings of the spliced tasks' inserted text (tasks.py). Plain corpus text never contains
# them (leak_check.py --corpus-check), so after any text their probability should be ~0.
UL_PHRASES = ("The code of", "Memorize: [[", "Recall: [[", "Question: What is the capital of")


class Unlikelihood:
    """Unlikelihood loss (Welleck et al. 2019) against task fragments in plain text. Spliced task rows
    start with BOS, and their first fact comes 8-40 tokens later, so the model learned that text shortly
    after BOS is often followed by a task phrase: P(phrase | BOS + 8-40 tokens of text) is ~1e-2 on
    version 1 against ~1e-5 in the middle of a text window, and every generation starts with BOS + a
    short prompt. Rows are BOS + a random piece of the train stream (4 to --ul-context tokens) + a task
    phrase; the loss is -log(1 - P(phrase | BOS + piece)), P the product of the phrase's token
    probabilities, so the gradient is large only where the model would write the phrase."""

    def __init__(self, tok_path, stream, rows, context, seed):
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=tok_path)
        # encoded after a word, as inside filler text ("x The code of" -> [x, The, code, of])
        self.phrases = [sp.encode("x " + ph)[1:] for ph in UL_PHRASES]
        self.stream, self.rows, self.context = stream, rows, context
        self.rng = np.random.default_rng(seed)

    def loss(self, model, device, amp):
        n = max(len(ph) for ph in self.phrases)
        T = 1 + self.context + n
        x = np.zeros((self.rows, T), dtype=np.int64)  # zeros after the phrase: causal, never read
        tgt = np.full((self.rows, T - 1), -1, dtype=np.int64)
        for r in range(self.rows):
            ph = self.phrases[self.rng.integers(len(self.phrases))]
            m = int(self.rng.integers(4, self.context + 1))
            s = int(self.rng.integers(0, len(self.stream) - m - 1))
            piece = self.stream[s:s + m]
            piece = piece[piece > 2]  # no BOS/EOS inside
            k = 1 + len(piece)
            x[r, 0] = 1
            x[r, 1:k] = piece
            x[r, k:k + len(ph)] = ph
            tgt[r, k - 1:k - 1 + len(ph)] = ph  # the phrase's tokens, predicted from positions k-1 ..
        xt = torch.from_numpy(x).to(device)
        tt = torch.from_numpy(tgt).to(device)
        with amp():
            logits = model(xt[:, :-1])
        logp = torch.log_softmax(logits.float(), dim=-1)
        mask = tt >= 0
        tok_lp = torch.gather(logp, 2, tt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        seq_lp = tok_lp.sum(dim=1).clamp(max=-1e-6)  # log P(phrase | window) < 0
        ul = -torch.log1p(-torch.exp(seq_lp))
        return ul.mean(), float(torch.exp(seq_lp).mean())


def save(path, model, opt, state, args, cfg):
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                "args": vars(args), "config": cfg.to_dict()}, tmp)
    os.replace(tmp, path)


def pack_weights(model, cfg, state, out_dir, nparts=3):
    """Compact weights for transfer: 2-D tensors fp16 (what the F16 GGUF stores anyway), 1-D fp32,
    split into nparts files weights.partK.pt of similar size. finalize_from_gpu.sh reassembles."""
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    packed, worst = {}, 0.0
    for k, v in sd.items():
        if not torch.isfinite(v).all():
            raise RuntimeError("non-finite values in " + k)
        worst = max(worst, float(v.abs().max()))
        packed[k] = v.half() if v.dim() >= 2 else v
    if worst > 6e4:
        raise RuntimeError("weights exceed the fp16 range: max |w| %g" % worst)
    keys = list(packed)
    total = sum(packed[k].numel() * packed[k].element_size() for k in keys)
    parts, cur, size = [], [], 0
    for k in keys:
        cur.append(k)
        size += packed[k].numel() * packed[k].element_size()
        if size >= total * (len(parts) + 1) / nparts and len(parts) < nparts - 1:
            parts.append(cur)
            cur = []
    parts.append(cur)
    for i, ks in enumerate(parts):
        path = os.path.join(out_dir, "weights.part%d.pt" % i)
        torch.save({"part": i, "nparts": len(parts), "config": cfg.to_dict(), "state": state,
                    "tensors": {k: packed[k] for k in ks}}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return worst


def main():
    T_START = _T_IMPORT
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
    ap.add_argument("--time-budget-min", type=float, default=0,
                    help="wall-clock budget, counted from process start (data loading, worker start-up and "
                         "compilation included); the LR cosine follows it and the run stops before it ends")
    ap.add_argument("--tokens-per-step", type=int, default=4096)
    ap.add_argument("--micro-batch-tokens", type=int, default=0,
                    help="gradient accumulation: at most this many tokens per forward (0 = whole step)")
    ap.add_argument("--curriculum", default="256:0.4,512:0.7,1024:0.9,2048:1")
    ap.add_argument("--task-frac", type=float, default=0.3)
    ap.add_argument("--task-style", choices=("spliced", "marker"), default="spliced",
                    help="how task rows are built (tasks.py): spliced = the shipped model's recipe")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="task-generating worker processes (0: in-process)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--amp", default="auto", help="auto (bf16 on cuda, off on cpu) | bf16 | off")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (falls back to eager on error)")
    ap.add_argument("--no-sdpa", action="store_true", help="explicit attention instead of scaled_dot_product_attention")
    ap.add_argument("--ckpt-every-min", type=float, default=5)
    ap.add_argument("--eval-every-min", type=float, default=10)
    ap.add_argument("--pack-dir", help="also write compact fp16 weights (weights.partK.pt) here at every "
                    "checkpoint and at the end")
    ap.add_argument("--train-file", default="train.bin", help="train token stream inside --tok (e.g. a smaller "
                    "train_small.bin for a fine-tune whose carried files must stay small)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ul-weight", type=float, default=0.0,
                    help="weight of the unlikelihood loss against task fragments in plain text (0: off)")
    ap.add_argument("--ul-rows", type=int, default=8, help="unlikelihood rows per step")
    ap.add_argument("--ul-context", type=int, default=64, help="at most this many text tokens between BOS and the phrase")
    ap.add_argument("--train-only", help="regular expression: train only the parameters whose names match "
                    "(e.g. 'feed_forward|ffn_norm|^norm|^output' leaves attention and embeddings as they are)")
    ap.add_argument("--init-gguf", help="start a new run from these weights (e.g. models/strata-default.gguf); "
                    "shape flags are taken from the file")
    args = ap.parse_args()
    assert args.total_tokens > 0 or args.time_budget_min > 0, "give --total-tokens or --time-budget-min"
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    log = open(os.path.join(args.out, "log.jsonl"), "a")

    def say(rec):
        rec = dict(rec, wall_s=round(time.time() - T_START, 1))
        print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()

    train_stream = load_stream(os.path.join(args.tok, args.train_file))
    val_stream = load_stream(os.path.join(args.tok, "val.bin"))
    tok_path = os.path.join(args.tok, "strata.model")

    cfg = Config(vocab_size=args.vocab, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                 n_kv_heads=args.n_kv_heads, ffn_dim=args.ffn_dim, context_length=args.context)
    state = {"step": 0, "tokens": 0, "train_sec": 0.0, "tokens_by_len": {}}
    seed = args.seed
    ck = None
    if os.path.exists(ckpt_path):
        ck = torch_load(ckpt_path)
        cfg = Config(**ck["config"])
        state = ck["state"]
        seed = args.seed + state["step"]  # fresh data order after a resume
    sec0 = state["train_sec"]  # wall seconds of earlier runs (resume)
    curr = parse_curriculum(args.curriculum)

    def progress():
        if args.total_tokens > 0:
            return state["tokens"] / args.total_tokens
        return (sec0 + time.time() - T_START) / (args.time_budget_min * 60)

    # fork the task workers before CUDA is initialized
    workers = args.workers if args.task_frac > 0 else 0
    feed = TaskFeed(tok_path, train_stream, seed + 1, workers, seq_len_at(curr, progress()),
                    style=args.task_style)
    batcher = Batcher(train_stream, feed, args.task_frac, seed + 2)

    torch.manual_seed(args.seed)
    model = Transformer(cfg)
    if ck is not None:
        model.load_state_dict(ck["model"])
        print("resumed at step %d, %d tokens" % (state["step"], state["tokens"]), flush=True)
    elif args.init_gguf:
        from model import load_gguf
        model = load_gguf(args.init_gguf)
        cfg = model.c
        print("initialized from", args.init_gguf, flush=True)
    # Streams of another tokenizer would train without any error on the wrong pieces (a 4K stream's
    # ids are all valid in an 8K model): refuse a --tok whose tokenizer is not the model's size.
    import sentencepiece as spm
    n_pieces = spm.SentencePieceProcessor(model_file=tok_path).get_piece_size()
    if n_pieces != cfg.vocab_size:
        feed.close()
        sys.exit("%s has %d pieces but the model's vocabulary is %d: pass --tok with the model's token "
                 "streams (work/tok8k for version 2, work/tok for versions 0-1.1) or a matching --vocab"
                 % (tok_path, n_pieces, cfg.vocab_size))
    if args.no_sdpa:
        model.set_sdpa(False)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    amp_on = (args.amp == "bf16") or (args.amp == "auto" and cuda)

    def amp():
        if amp_on:
            return torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    if args.train_only:
        import re
        keep = re.compile(args.train_only)
        for n, p in model.named_parameters():
            p.requires_grad_(bool(keep.search(n)))
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        print("--train-only %r: %d of %d parameters frozen" % (args.train_only, frozen, model.n_params(False)),
              flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 and p.requires_grad]
    groups = [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}]
    opt = None
    if cuda:
        try:
            opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
        except Exception as e:  # older torch
            print("fused AdamW unavailable (%s); using the default" % e, flush=True)
    if opt is None:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    if ck is not None:
        opt.load_state_dict(ck["opt"])
        del ck
    from model import _HAS_SDPA
    print("config", cfg.to_dict(), "params %d (non-embedding %d)" % (model.n_params(False), model.n_params()),
          "device %s amp %s sdpa %s workers %d" % (device, "bf16" if amp_on else "off",
                                                   _HAS_SDPA and not args.no_sdpa, workers), flush=True)
    if cuda:
        print("gpu", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)

    fwd = model
    if args.compile:
        try:
            fwd = torch.compile(model)
        except Exception as e:
            print("torch.compile failed (%s); eager" % e, flush=True)
            fwd = model

    ul = Unlikelihood(tok_path, train_stream, args.ul_rows, args.ul_context, seed + 3) if args.ul_weight > 0 else None
    ul_p = {"p": 0.0}
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def step_once(x_cpu, L, mb):
        """One optimizer step over x_cpu [B, L+1] in micro-batches of mb rows; returns (loss, gnorm) tensors."""
        B = x_cpu.shape[0]
        x_all = x_cpu.pin_memory().to(device, non_blocking=True) if cuda else x_cpu
        tot = None
        for i in range(0, B, mb):
            xb = x_all[i:i + mb]
            with amp():
                _, loss = fwd(xb[:, :-1], xb[:, 1:])
            (loss * (xb.shape[0] / B)).backward()
            tot = loss.detach() * (xb.shape[0] / B) if tot is None else tot + loss.detach() * (xb.shape[0] / B)
        if ul is not None:
            ul_loss, ul_p["p"] = ul.loss(fwd, device, amp)
            (args.ul_weight * ul_loss).backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return tot, gn

    last_ckpt = time.time()
    last_eval = time.time()
    model.train()
    t_prev = time.time()
    step_dt = 0.0
    first_step = True
    L = seq_len_at(curr, progress())
    feed.set_L(L)
    B = max(1, args.tokens_per_step // L)
    x_next = batcher.batch(B, L)
    budget_s = args.time_budget_min * 60
    while not stop["flag"]:
        p = progress()
        if p >= 1.0:
            break
        # time budget: stop when the next step would overrun (leave ~1 step for the final save)
        if args.time_budget_min > 0 and (sec0 + time.time() - T_START) + 2.0 * step_dt + 2.0 > budget_s:
            break
        x = x_next
        L = x.shape[1] - 1
        B = x.shape[0]
        mb = B if args.micro_batch_tokens <= 0 else max(1, min(B, args.micro_batch_tokens // L))
        lr = lr_at(args, state["step"], p)
        for g in opt.param_groups:
            g["lr"] = lr
        try:
            loss, gn = step_once(x, L, mb)
        except Exception as e:
            if fwd is model or not first_step:
                raise
            print("compiled step failed (%s: %s); falling back to eager" % (type(e).__name__, str(e)[:300]), flush=True)
            fwd = model
            opt.zero_grad(set_to_none=True)
            loss, gn = step_once(x, L, mb)
        # next batch on the CPU while the GPU works
        Ln = seq_len_at(curr, progress())
        if Ln != L:
            feed.set_L(Ln)
        x_next = batcher.batch(max(1, args.tokens_per_step // Ln), Ln)
        loss_v, gn_v = loss.item(), float(gn)
        now = time.time()
        step_dt = now - t_prev
        t_prev = now
        state["step"] += 1
        state["tokens"] += B * L
        state["train_sec"] = sec0 + now - T_START
        state["tokens_by_len"][str(L)] = state["tokens_by_len"].get(str(L), 0) + B * L
        if first_step:
            print("first step done at %.1f s after start (%.1f s for the step incl. compile/warm-up)"
                  % (now - T_START, step_dt), flush=True)
            first_step = False
        rec = {"step": state["step"], "L": L, "B": B, "loss": round(loss_v, 4), "lr": round(lr, 6),
               "gnorm": round(gn_v, 3), "tok_s": round(B * L / max(step_dt, 1e-9), 1), "tokens": state["tokens"],
               "train_min": round(state["train_sec"] / 60, 2), "p": round(progress(), 4)}
        if ul is not None:
            rec["ul_phrase_p"] = round(ul_p["p"], 5)  # mean P(phrase | BOS + piece) before this step
        if workers:
            rec["task_rows_fresh"] = feed.made
            rec["task_rows_reused"] = feed.reused
        if time.time() - last_eval > args.eval_every_min * 60:
            rec["val_loss"] = round(val_loss(model, val_stream, device=device, amp=amp), 4)
            last_eval = time.time()
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if state["step"] <= 5 or state["step"] % (10 if state["step"] <= 100 else 50) == 0 or "val_loss" in rec:
            print(json.dumps(rec), flush=True)
        if time.time() - last_ckpt > args.ckpt_every_min * 60 or os.path.exists(os.path.join(args.out, "STOP")):
            save(ckpt_path, model, opt, state, args, cfg)
            if args.pack_dir:
                pack_weights(model, cfg, state, args.pack_dir)
            last_ckpt = time.time()
            if os.path.exists(os.path.join(args.out, "STOP")):
                break
    feed.close()
    state["train_sec"] = sec0 + time.time() - T_START
    save(ckpt_path, model, opt, state, args, cfg)
    worst = None
    if args.pack_dir:
        worst = pack_weights(model, cfg, state, args.pack_dir)
    vl = val_loss(model, val_stream, device=device, amp=amp)
    rec = {"final": True, "step": state["step"], "tokens": state["tokens"], "val_loss": vl,
           "stopped": bool(stop["flag"] or os.path.exists(os.path.join(args.out, "STOP"))),
           "train_min": state["train_sec"] / 60, "tokens_by_len": state["tokens_by_len"],
           "task_rows_fresh": feed.made, "task_rows_reused": feed.reused, "max_abs_weight": worst,
           "mean_tok_s": state["tokens"] / max(1e-9, time.time() - T_START)}
    say(rec)


if __name__ == "__main__":
    main()
