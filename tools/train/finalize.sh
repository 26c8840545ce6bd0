#!/bin/sh
# Evaluate a checkpoint, export F16 + Q8_0 GGUF into models/, write samples.
# Usage: tools/train/finalize.sh [CKPT] [TASK_LIMIT]
set -e
cd "$(dirname "$0")"
CKPT=${1:-work/run/ckpt.pt}
LIMIT=${2:-16}
PY=/usr/bin/python3
OUT=work/final
mkdir -p $OUT
cp "$CKPT" $OUT/ckpt.pt
$PY export_gguf.py $OUT/ckpt.pt ../../models/strata-default.gguf --verify > $OUT/export_f16.log 2>&1
$PY export_gguf.py $OUT/ckpt.pt ../../models/strata-default-q8_0.gguf --type q8_0 --verify > $OUT/export_q8.log 2>&1
$PY sample.py $OUT/ckpt.pt --n 60 --temp 0.8 --top-k 40 \
    --prompt "It is a truth universally acknowledged" \
    --prompt "In the beginning" \
    --prompt "The kernel" \
    --prompt "hacker n." > $OUT/samples.txt 2>&1
$PY sample.py $OUT/ckpt.pt --n 40 --temp 0 \
    --prompt "Elizabeth said to her sister" >> $OUT/samples.txt 2>&1
$PY eval_tasks.py $OUT/ckpt.pt --limit $LIMIT --splits ${SPLITS:-val,test} --json $OUT/eval.json > $OUT/eval.txt 2>&1
echo done
