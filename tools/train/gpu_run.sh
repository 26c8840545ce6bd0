#!/bin/bash
# One-shot training run on a GPU machine: train for MINUTES of wall time, evaluate, sample, and write
# compact results to OUTDIR (<= 8 files, each < 16 MiB):
#   weights.part{0,1,2}.pt  fp16 weights (finalize_from_gpu.sh turns them into GGUF, on any machine)
#   log.jsonl eval.json eval.txt samples.txt
# Usage (from the repository root or anywhere):  bash tools/train/gpu_run.sh OUTDIR MINUTES
# Needs tools/train/work/tok/{train,val}.bin and strata.model (corpus.py + tokenizer.py --encode-only).
# Env overrides (for CPU tests): EVAL_LIMIT, EVAL_SPLITS, EVAL_PPL_MAX, SHAPE="--n-layers 2 --dim 64 ..." (tiny test shape), TRAIN_ARGS (extra train.py flags),
#   DEVICE (auto|cpu|cuda), WORKERS, TPS (tokens/step), MBT (micro-batch tokens), LR, COMPILE=1,
#   TASK_STYLE (spliced: version 1's recipe, the default; marker: see tasks.py).
#   TOKDIR (token streams + strata.model, relative to tools/train; default work/tok8k, the 8K
#   tokenizer's streams that version 2 was trained on; version 1: TOKDIR=work/tok and SHAPE without
#   --vocab 8192), EVAL_DIR (held-out task sets in the same tokenizer's ids; default models/eval, 8K).
set -u
OUT=${1:?usage: gpu_run.sh OUTDIR MINUTES}
MIN=${2:?usage: gpu_run.sh OUTDIR MINUTES}
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY=${PY:-python3}
DEVICE=${DEVICE:-auto}
NCPU=$(nproc)
WORKERS=${WORKERS:-$(( NCPU > 3 ? NCPU - 2 : 1 ))}
WORK=${WORK:-$HERE/work/gpu-run}
SHAPE=${SHAPE:---n-layers 8 --dim 384 --n-heads 6 --n-kv-heads 2 --ffn-dim 1024 --context 2048 --vocab 8192}
TPS=${TPS:-262144}
MBT=${MBT:-131072}
LR=${LR:-2e-3}
CURR=${CURR:-2048:1}
COMPILE_FLAG=""
[ "${COMPILE:-0}" = 1 ] && COMPILE_FLAG="--compile"
rm -rf "$WORK"; mkdir -p "$WORK"
cd "$HERE"
TOKDIR=${TOKDIR:-work/tok8k}
mkdir -p $TOKDIR
[ -f $TOKDIR/strata.model ] || cp "$ROOT/tools/train/strata-tokenizer-8k.model" $TOKDIR/strata.model
for f in train.bin val.bin test.bin; do [ -f $TOKDIR/$f ] || { echo "missing tools/train/$TOKDIR/$f (carry it)"; exit 1; }; done
T0=$(date +%s)
echo "gpu_run: out=$OUT minutes=$MIN device=$DEVICE workers=$WORKERS tps=$TPS mbt=$MBT lr=$LR curriculum=$CURR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
ls -la $TOKDIR/

# 1. train (the budget counts from train.py's start: data loading, workers, compile included)
$PY train.py --out "$WORK" --tok $TOKDIR --pack-dir "$OUT" --device $DEVICE $SHAPE \
    --time-budget-min $MIN --tokens-per-step $TPS --micro-batch-tokens $MBT --curriculum "$CURR" \
    --task-frac 0.35 --task-style ${TASK_STYLE:-spliced} --lr $LR --min-lr-frac 0.1 --warmup 40 --wd 0.1 \
    --workers $WORKERS --threads 4 --ckpt-every-min 2 --eval-every-min 1 $COMPILE_FLAG ${TRAIN_ARGS:-}
RC=$?
# (every step is in log.jsonl; the console shows steps 1-5, every 10th to 100, then every 50th, and evals)
cp "$WORK/log.jsonl" "$OUT/log.jsonl" 2>/dev/null
echo "train rc=$RC after $(( $(date +%s) - T0 )) s"
[ -f "$WORK/ckpt.pt" ] || { echo "no checkpoint"; exit 1; }

# 2. evaluate on the GPU: val/test perplexity (512 and 2048 windows), task accuracy by distance
timeout 150 $PY eval_tasks.py "$WORK/ckpt.pt" --device $DEVICE --eval-dir "${EVAL_DIR:-$ROOT/models/eval}" --tok $TOKDIR --limit ${EVAL_LIMIT:-16} \
    --splits ${EVAL_SPLITS:-val,test} --ppl-ctx-extra 2048 --ppl-max-tokens ${EVAL_PPL_MAX:-0} --json "$OUT/eval.json" > "$OUT/eval.txt" 2>&1
echo "eval rc=$? after $(( $(date +%s) - T0 )) s"; cat "$OUT/eval.txt"

# 3. samples
timeout 60 $PY sample.py "$WORK/ckpt.pt" --device $DEVICE --tok $TOKDIR/strata.model --n 60 --temp 0.8 --top-k 40 \
    --prompt "It is a truth universally acknowledged" --prompt "In the beginning" \
    --prompt "The kernel" --prompt "hacker n." --prompt "Abdomen, n." > "$OUT/samples.txt" 2>&1
timeout 30 $PY sample.py "$WORK/ckpt.pt" --device $DEVICE --tok $TOKDIR/strata.model --n 40 --temp 0 \
    --prompt "Elizabeth said to her sister" >> "$OUT/samples.txt" 2>&1
echo "samples rc=$? after $(( $(date +%s) - T0 )) s"; head -c 3000 "$OUT/samples.txt"
ls -la "$OUT"
echo "gpu_run done in $(( $(date +%s) - T0 )) s"
