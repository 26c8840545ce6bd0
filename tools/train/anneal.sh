#!/bin/bash
# Plain-text anneal on this (CPU) machine: continue a trained model on corpus text only, at a low LR,
# so free generation stops producing fragments of the synthetic long-range tasks, then export GGUF.
#   bash tools/train/anneal.sh IN.gguf DEST [TOKENS]       (TOKENS default 1.5e6)
# Writes DEST/{ckpt.pt, log.jsonl, strata-default.gguf, strata-default-q8_0.gguf, export_*.log}.
# Resumable: rerun the same command after a stop (touch DEST/STOP, SIGTERM, reboot) and it goes on
# from DEST/ckpt.pt. INSTALL=1 also copies both GGUF files into models/.
# Version 1.1 of the shipped model is version 1 (gpu_run.sh) annealed with exactly the defaults here:
# 1.5M tokens, 4096 per step, length 512 for the first 80% and 2048 after, LR 5e-4 cosine to 5e-5.
# Needs tools/train/work/tok/{train,val}.bin (corpus.py + tokenizer.py --encode-only).
set -eu
IN="$(realpath "${1:?usage: anneal.sh IN.gguf DEST [TOKENS]}")"
DEST=${2:?usage: anneal.sh IN.gguf DEST [TOKENS]}
TOKENS=${3:-1.5e6}
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
mkdir -p "$DEST"; DEST="$(cd "$DEST" && pwd)"
PY=${PY:-/usr/bin/python3}
TOK=$ROOT/models/strata-tokenizer.model
cd "$HERE"
for f in train.bin val.bin; do [ -f work/tok/$f ] || { echo "missing tools/train/work/tok/$f: run corpus.py and tokenizer.py --encode-only (README)"; exit 1; }; done
[ -f work/tok/strata.model ] || cp "$TOK" work/tok/strata.model

# --task-frac 0: plain text only. The long-range skills live in attention that plain text also uses
# (copying from context), so they are measured after, not trained here.
OMP_WAIT_POLICY=PASSIVE $PY train.py --out "$DEST" --init-gguf "$IN" --task-frac 0 \
    --curriculum "${CURR:-512:0.8,2048:1}" --tokens-per-step ${TPS:-4096} --total-tokens "$TOKENS" \
    --lr ${LR:-5e-4} --min-lr-frac 0.1 --warmup 10 --wd 0.1 --threads $(nproc) \
    --ckpt-every-min 8 --eval-every-min 10 --seed ${SEED:-11}
# a stop (STOP file, signal) also ends train.py normally: export only a finished run
if ! $PY -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if "\"final\"" in l]; sys.exit(0 if r and r[-1]["tokens"] >= float(sys.argv[2]) else 1)' \
        "$DEST/log.jsonl" "$TOKENS"; then
    echo "anneal stopped before $TOKENS tokens; rerun the same command to continue (remove $DEST/STOP first)"
    exit 0
fi

$PY export_gguf.py "$DEST/ckpt.pt" "$DEST/strata-default.gguf" --tok "$TOK" --verify 2>&1 | tee "$DEST/export_f16.log"
$PY export_gguf.py "$DEST/ckpt.pt" "$DEST/strata-default-q8_0.gguf" --tok "$TOK" --type q8_0 --verify 2>&1 | tee "$DEST/export_q8.log"
grep -q "argmax agreement" "$DEST/export_f16.log" && grep -q "argmax agreement" "$DEST/export_q8.log"
if [ "${INSTALL:-0}" = 1 ]; then
    cp "$DEST/strata-default.gguf" "$DEST/strata-default-q8_0.gguf" "$ROOT/models/"
    echo "installed into $ROOT/models/"
fi
