#!/usr/bin/python3
"""Move a trained model to a new SentencePiece vocabulary (vocabulary transfer), keeping its body.

Usage: revocab.py IN.{gguf,pt} OLD.model NEW.model OUT.gguf [--eval-docs 40]

Every transformer layer is kept as it is; only the token embedding and the output head are rebuilt
for the new pieces:
  - a piece that the old vocabulary also has keeps its old rows;
  - any other piece is split into old pieces (fewest pieces, byte pieces for what no piece covers);
    its embedding is the mean of theirs (as in fast vocabulary transfer), and its output row is the
    row of its first old piece: predicting "▁there" starts where predicting "▁the" did, and the
    fine-tune that follows (train.py --init-gguf OUT.gguf --tok <new streams>) sorts out the rest.
Writes OUT.gguf in F32 (the fine-tune's starting point) and prints both models' validation loss in
nats per character on the same documents, the only loss that compares across vocabularies.
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
from model import Config, Transformer, load_checkpoint, load_gguf  # noqa: E402


def load_any(path):
    if path.endswith(".gguf"):
        return load_gguf(path)
    return load_checkpoint(path)[0]


def split_into_old(piece, old_ids, max_len):
    """The fewest old pieces that spell `piece` (a string that may contain U+2581), as old ids;
    characters that no old piece covers become their UTF-8 byte pieces (<0xNN> = id 3 + byte)."""
    n = len(piece)
    best = [None] * (n + 1)  # best[i] = (count, ids) for piece[:i]
    best[0] = (0, [])
    for i in range(n):
        if best[i] is None:
            continue
        c, ids = best[i]
        for j in range(i + 1, min(n, i + max_len) + 1):
            t = old_ids.get(piece[i:j])
            if t is not None and (best[j] is None or best[j][0] > c + 1):
                best[j] = (c + 1, ids + [t])
        bytes_ = [3 + b for b in piece[i].encode("utf-8")]
        if best[i + 1] is None or best[i + 1][0] > c + len(bytes_):
            best[i + 1] = (c + len(bytes_), ids + bytes_)
    return best[n][1]


def transfer(model, old_sp, new_sp):
    c = model.c
    old_ids = {}
    for i in range(old_sp.get_piece_size()):
        if not (old_sp.is_control(i) or old_sp.is_unknown(i) or old_sp.is_byte(i)):
            old_ids[old_sp.id_to_piece(i)] = i
    max_len = max(len(p) for p in old_ids)
    emb_old = model.tok_embeddings.weight.data
    out_old = model.output.weight.data
    V = new_sp.get_piece_size()
    emb = torch.empty(V, c.dim)
    out = torch.empty(V, c.dim)
    kept = split = 0
    for i in range(V):
        p = new_sp.id_to_piece(i)
        if new_sp.is_control(i) or new_sp.is_unknown(i) or new_sp.is_byte(i):
            # same convention in both: unk 0, bos 1, eos 2, <0xNN> at 3 + NN
            j = {"<unk>": 0, "<s>": 1, "</s>": 2}.get(p)
            if j is None:
                j = 3 + int(p[3:5], 16)
            assert old_sp.id_to_piece(j) == p, (p, old_sp.id_to_piece(j))
            ids = [j]
        elif p in old_ids:
            ids = [old_ids[p]]
        else:
            ids = split_into_old(p, old_ids, max_len)
        if len(ids) == 1:
            kept += 1
        else:
            split += 1
        emb[i] = emb_old[ids].mean(0)
        out[i] = out_old[ids[0]]
    nc = Config(**dict(c.to_dict(), vocab_size=V))
    m = Transformer(nc)
    sd = model.state_dict()
    sd["tok_embeddings.weight"] = emb
    sd["output.weight"] = out
    m.load_state_dict(sd)
    return m, kept, split


@torch.no_grad()
def nats_per_char(model, sp, texts, ctx=512):
    """Next-token NLL summed over each document (BOS + ids + EOS, every token after BOS scored once,
    in consecutive windows of ctx targets that see only their own window), per character and per token."""
    model.eval()
    nll, chars, toks = 0.0, 0, 0
    for t in texts:
        ids = [1] + sp.encode(t) + [2]
        for s in range(0, len(ids) - 1, ctx):
            w = torch.tensor(ids[s:s + ctx + 1])[None]
            logits = model(w[:, :-1])
            nll += torch.nn.functional.cross_entropy(logits[0].float(), w[0, 1:], reduction="sum").item()
            toks += w.shape[1] - 1
        chars += len(t)
    return nll / chars, nll / toks, toks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("old_tok")
    ap.add_argument("new_tok")
    ap.add_argument("out")
    ap.add_argument("--val", default=os.path.join(HERE, "work", "corpus", "val.jsonl"))
    ap.add_argument("--eval-docs", type=int, default=40, help="validation documents to score (0: none)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    old_sp = spm.SentencePieceProcessor(model_file=args.old_tok)
    new_sp = spm.SentencePieceProcessor(model_file=args.new_tok)
    old = load_any(args.inp)
    new, kept, split = transfer(old, old_sp, new_sp)
    print("vocabulary %d -> %d: %d pieces kept their rows, %d built from old pieces"
          % (old_sp.get_piece_size(), new_sp.get_piece_size(), kept, split), flush=True)

    from export_gguf import export  # noqa: E402
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        ck = os.path.join(d, "ckpt.pt")
        torch.save({"model": new.state_dict(), "config": new.c.to_dict(),
                    "state": {"step": 0, "tokens": 0, "train_sec": 0.0, "tokens_by_len": {}}}, ck)
        import gguf  # noqa: E402 (export_gguf put tools/py on the path)
        export(ck, args.out, gguf.F32, args.new_tok, "strata-default",
               "vocabulary transfer of %s to %s (tools/train/revocab.py)" % (os.path.basename(args.inp),
                                                                            os.path.basename(args.new_tok)))
    print("wrote", args.out, flush=True)

    if args.eval_docs > 0:
        texts = [json.loads(l)["text"] for l in open(args.val, encoding="utf-8")][:args.eval_docs]
        for name, m, sp in (("old", old, old_sp), ("new", new, new_sp)):
            npc, npt, toks = nats_per_char(m, sp, texts)
            print("%s: %.4f nats/char, %d tokens, per-token ppl %.3f" % (name, npc, toks, math.exp(npt)),
                  flush=True)


if __name__ == "__main__":
    main()
