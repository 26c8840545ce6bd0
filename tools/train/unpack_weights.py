#!/usr/bin/python3
"""Reassemble weights.partK.pt (written by train.py --pack-dir) into a checkpoint that eval_tasks.py,
sample.py and export_gguf.py read (model fp32, config, state; no optimizer state).

Usage: unpack_weights.py DIR OUT_CKPT.pt
"""
import glob
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import Config, Transformer, torch_load  # noqa: E402


def main():
    d, out = sys.argv[1], sys.argv[2]
    parts = sorted(glob.glob(os.path.join(d, "weights.part*.pt")))
    assert parts, "no weights.part*.pt in " + d
    tensors, meta = {}, None
    for p in parts:
        ck = torch_load(p)
        meta = meta or ck
        assert ck["nparts"] == len(parts), "expected %d parts, found %d" % (ck["nparts"], len(parts))
        assert ck["state"]["step"] == meta["state"]["step"], "parts from different steps"
        tensors.update(ck["tensors"])
    sd = {k: v.float() for k, v in tensors.items()}
    m = Transformer(Config(**meta["config"]))
    m.load_state_dict(sd)  # strict: every tensor present
    torch.save({"model": sd, "config": meta["config"], "state": meta["state"], "args": {}}, out)
    print("%s: %d tensors, %d params, step %d, %d tokens" % (out, len(sd), sum(v.numel() for v in sd.values()),
                                                           meta["state"]["step"], meta["state"]["tokens"]))


if __name__ == "__main__":
    main()
