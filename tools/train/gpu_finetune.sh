#!/bin/bash
# Short fine-tune from the shipped weights (models/strata-default.gguf) with task sequences as their own
# documents (BOS, "### Task" marker line, task, answer, EOS; see tasks.py), so free generation stops
# leaking task fragments. Same outputs as gpu_run.sh (finalize_from_gpu.sh works unchanged):
#   weights.part{0,1,2}.pt log.jsonl eval.json eval.txt samples.txt   (<= 8 files, each < 16 MiB)
# Usage (repository root):  bash tools/train/gpu_finetune.sh OUTDIR MINUTES
# Carried (ignored) files: tools/train/work/tok/{train_ft.bin.xz,val.bin,test.bin}. train_ft.bin.xz is the
# first ~13M tokens of train.bin (cut at a document start), xz-compressed to fit the 64 MiB carry limit;
# it is unpacked to work/tok/train_ft.bin here. Make it with:  python3 gpu_finetune_data.py
# Env overrides (CPU tests): DEVICE, WORKERS, TPS, MBT, LR, WARMUP, TASK_FRAC, INIT, EVAL_LIMIT, EVAL_SPLITS,
#   EVAL_PPL_MAX, NSAMP (sample length), TRAIN_ARGS.
set -u
OUT=${1:?usage: gpu_finetune.sh OUTDIR MINUTES}
MIN=${2:?usage: gpu_finetune.sh OUTDIR MINUTES}
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY=${PY:-python3}
DEVICE=${DEVICE:-auto}
NCPU=$(nproc)
WORKERS=${WORKERS:-$(( NCPU > 3 ? NCPU - 2 : 1 ))}
WORK=${WORK:-$HERE/work/gpu-ft}
INIT=${INIT:-$ROOT/models/strata-default.gguf}
TPS=${TPS:-262144}
MBT=${MBT:-131072}
LR=${LR:-5e-4}
WARMUP=${WARMUP:-15}
TASK_FRAC=${TASK_FRAC:-0.3}
NSAMP=${NSAMP:-80}
rm -rf "$WORK"; mkdir -p "$WORK"
cd "$HERE"
mkdir -p work/tok
T0=$(date +%s)
[ -f work/tok/strata.model ] || cp "$ROOT/models/strata-tokenizer.model" work/tok/strata.model
if [ ! -f work/tok/train_ft.bin ]; then
    [ -f work/tok/train_ft.bin.xz ] || { echo "missing tools/train/work/tok/train_ft.bin.xz (carry it)"; exit 1; }
    $PY -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" \
        work/tok/train_ft.bin.xz work/tok/train_ft.bin.tmp && mv work/tok/train_ft.bin.tmp work/tok/train_ft.bin || exit 1
fi
for f in val.bin test.bin; do [ -f work/tok/$f ] || { echo "missing tools/train/work/tok/$f (carry it)"; exit 1; }; done
[ -f "$INIT" ] || { echo "missing $INIT"; exit 1; }
echo "gpu_finetune: out=$OUT minutes=$MIN device=$DEVICE workers=$WORKERS tps=$TPS mbt=$MBT lr=$LR warmup=$WARMUP task_frac=$TASK_FRAC init=$INIT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
ls -la work/tok/
echo "data ready after $(( $(date +%s) - T0 )) s"

# 1. fine-tune (shape from the GGUF; budget counts from train.py's start)
$PY train.py --out "$WORK" --pack-dir "$OUT" --device $DEVICE --init-gguf "$INIT" --train-file train_ft.bin \
    --time-budget-min $MIN --tokens-per-step $TPS --micro-batch-tokens $MBT --curriculum 2048:1 \
    --task-frac $TASK_FRAC --lr $LR --min-lr-frac 0.1 --warmup $WARMUP --wd 0.1 \
    --workers $WORKERS --threads 4 --ckpt-every-min 1 --eval-every-min 1 ${TRAIN_ARGS:-}
RC=$?
cp "$WORK/log.jsonl" "$OUT/log.jsonl" 2>/dev/null
echo "train rc=$RC after $(( $(date +%s) - T0 )) s"
[ -f "$WORK/ckpt.pt" ] || { echo "no checkpoint"; exit 1; }

# 2. evaluate: val/test perplexity (512 and 2048 windows), task accuracy by distance on models/eval (marker sets)
timeout 120 $PY eval_tasks.py "$WORK/ckpt.pt" --device $DEVICE --eval-dir "$ROOT/models/eval" --limit ${EVAL_LIMIT:-16} \
    --splits ${EVAL_SPLITS:-val,test} --ppl-ctx-extra 2048 --ppl-max-tokens ${EVAL_PPL_MAX:-0} --json "$OUT/eval.json" > "$OUT/eval.txt" 2>&1
echo "eval rc=$? after $(( $(date +%s) - T0 )) s"; cat "$OUT/eval.txt"

# 3. samples: free-running (temperature 0.8, several seeds) to show whether task text still leaks
: > "$OUT/samples.txt"
for SEED in 1 2 3; do
    echo "##### seed $SEED temp 0.8" >> "$OUT/samples.txt"
    timeout 40 $PY sample.py "$WORK/ckpt.pt" --device $DEVICE --tok work/tok/strata.model --n $NSAMP --temp 0.8 --top-k 40 \
        --seed $SEED --prompt "It is a truth universally acknowledged" --prompt "In the beginning" \
        --prompt "The kernel" --prompt "hacker n." --prompt "Abdomen, n." --prompt "Once upon a time" >> "$OUT/samples.txt" 2>&1
done
echo "##### greedy" >> "$OUT/samples.txt"
timeout 30 $PY sample.py "$WORK/ckpt.pt" --device $DEVICE --tok work/tok/strata.model --n 40 --temp 0 \
    --prompt "Elizabeth said to her sister" >> "$OUT/samples.txt" 2>&1
echo "samples rc=$? after $(( $(date +%s) - T0 )) s"; head -c 4000 "$OUT/samples.txt"
echo "leak check (lines with task phrases in samples):"
grep -c -E "The code of|Memorize:|Recall: \[\[|### Task|Question: What is the capital" "$OUT/samples.txt"
ls -la "$OUT"
echo "gpu_finetune done in $(( $(date +%s) - T0 )) s"
