#!/usr/bin/env bash
# Multi-round QA and long-document QA against `strata serve` with the KV
# cache store off, host RAM only, disk only, Redis only and all tiers, side by
# side in one run (issue 5, "Benchmarks"):
#
#   bench/workloads/run.sh
#
# Builds build/strata if missing or stale (nice, -j$JOBS), starts a private
# redis-server per model run (free port, --save '' --appendonly no,
# --maxmemory 1gb allkeys-lru), a fresh `strata serve` per configuration and
# workload, and writes bench/workloads/results/: raw-<model>.json (every
# request), results.json (summary), results.md, ttft.{png,svg},
# throughput.{png,svg}.
#
# Environment:
#   JOBS (2)      build parallelism
#   QWEN (1)      also run the synthetic Qwen2.5-0.5B-shape model (small sizes;
#                 generated with tools/synth/make_model.py if missing); 0: skip
#   QWEN_MODEL    its path (bench/out/models/qwen2.5-0.5b-q8_0.gguf)
#   DISK_DIR      where the disk tier and server logs live (bench/out/workloads,
#                 i.e. the repository's filesystem)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
JOBS=${JOBS:-2}
QWEN=${QWEN:-1}
QWEN_MODEL=${QWEN_MODEL:-bench/out/models/qwen2.5-0.5b-q8_0.gguf}
WORK=${DISK_DIR:-$ROOT/bench/out/workloads}
OUT=$ROOT/bench/workloads/results
PY=/usr/bin/python3
mkdir -p "$OUT" "$WORK"

CMD="bench/workloads/run.sh"
[ "$QWEN" != 1 ] && CMD="QWEN=$QWEN $CMD"

echo "== build/strata"
nice cmake --build build --target strata -j"$JOBS" > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }

RAWS=()
echo "== models/strata-default.gguf ($(date -u +%H:%M:%S))"
# Engine KV: 4 KiB/token (8 layers x 2 KV heads x 64 x K,V x f16); --kv-budget 12 MiB = 3072 tokens,
# i.e. two ~1.5k-token prompts. Working sets: long-doc 6 x 1500 = 9k tokens (35 MiB); multi-round
# 1k shared + 5 users x up to ~0.8k private tokens (8.6k tokens, 34 MiB).
nice $PY bench/workloads/workloads.py run --model models/strata-default.gguf --out "$OUT/raw-strata-default.json" \
  --work "$WORK" --parallel 4 --kv-budget 12 \
  --users 5 --rounds 4 --system-tokens 1000 --question-tokens 180 --max-tokens 24 --mr-rate 4 \
  --docs 6 --doc-tokens 1500 --questions 3 --ld-rate 4
RAWS+=("$OUT/raw-strata-default.json")

if [ "$QWEN" = 1 ]; then
  if [ ! -f "$QWEN_MODEL" ]; then
    echo "== generating $QWEN_MODEL"
    mkdir -p "$(dirname "$QWEN_MODEL")"
    nice $PY tools/synth/make_model.py --preset qwen2.5-0.5b --type q8_0 --seed 1 -o "$QWEN_MODEL"
  fi
  echo "== $QWEN_MODEL ($(date -u +%H:%M:%S))"
  # Qwen2.5-0.5B shape: 24 layers x 2 KV heads x 64 x K,V x f16 = 12 KiB/token; --kv-budget 10 MiB =
  # 853 tokens, one ~650-token document or history at a time. Prefill is ~100x slower than the
  # trained model on 2 cores, so the sizes are small.
  nice $PY bench/workloads/workloads.py run --model "$QWEN_MODEL" --out "$OUT/raw-qwen.json" \
    --work "$WORK" --parallel 2 --kv-budget 10 \
    --users 3 --rounds 2 --system-tokens 400 --question-tokens 100 --max-tokens 8 --mr-rate 2 \
    --docs 3 --doc-tokens 600 --questions 2 --ld-rate 2 --calib-words 100
  RAWS+=("$OUT/raw-qwen.json")
fi

$PY bench/workloads/workloads.py report "${RAWS[@]}" --out-dir "$OUT" --command "$CMD" \
  --notes bench/workloads/NOTES.md
