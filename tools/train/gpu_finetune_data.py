#!/usr/bin/python3
"""Make work/tok/train_ft.bin.xz for gpu_finetune.sh: the first ~13M tokens of work/tok/train.bin, cut at a
document start (BOS), xz-compressed (~0.8 bytes/token, ~10 MB) so the carried files fit the 64 MiB limit."""
import lzma
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
n_max = int(float(sys.argv[1])) if len(sys.argv) > 1 else 13_000_000
tok = os.path.join(HERE, "work", "tok")
t = np.fromfile(os.path.join(tok, "train.bin"), dtype=np.uint16)
n = int(np.flatnonzero(t[:n_max + 1] == 1)[-1])
with open(os.path.join(tok, "train_ft.bin.xz"), "wb") as f:
    f.write(lzma.compress(t[:n].tobytes(), preset=6))
print("train_ft.bin.xz: %d tokens, %d bytes" % (n, os.path.getsize(os.path.join(tok, "train_ft.bin.xz"))))
