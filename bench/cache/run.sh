#!/usr/bin/env bash
# KV cache store tier bandwidth vs the physical limits of this machine
# (issue 5, "Tier bandwidth"), side by side in one run:
#
#   bench/cache/run.sh
#
# Builds bench/cache/tier_bench in its own directory (build-bench-cache, not
# the main build), starts a private redis-server, and writes
# bench/cache/results/: raw.json (everything), results.json (the summary),
# results.md, tier_bandwidth.{png,svg}, ttft.{png,svg}.
#
# Environment: REPS (5), THREADS (2, prefill threads), JOBS (2, build),
# DISK_DIR (the disk tier's directory; default build-bench-cache/disk, i.e.
# the repository's filesystem), QWEN_MODEL (optional GGUF of Qwen2.5-0.5B
# shape, e.g. from tools/synth/make_model.py --preset qwen2.5-0.5b: adds its
# prefill time and real KV; without it that shape uses synthetic KV).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
REPS=${REPS:-5}
THREADS=${THREADS:-2}
JOBS=${JOBS:-2}
BUILD=$ROOT/build-bench-cache
DISK_DIR=${DISK_DIR:-$BUILD/disk}
OUT=$ROOT/bench/cache/results
mkdir -p "$OUT" "$DISK_DIR"

cmake -S bench/cache -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
nice cmake --build "$BUILD" -j"$JOBS" --target tier_bench >/dev/null

CMD="bench/cache/run.sh"
[ "$REPS" != 5 ] && CMD="REPS=$REPS $CMD"
ARGS=(--model models/strata-default.gguf --disk-dir "$DISK_DIR" --out "$OUT/raw.json" --reps "$REPS" --threads "$THREADS")
if [ -n "${QWEN_MODEL:-}" ]; then
  if [ ! -f "$QWEN_MODEL" ]; then
    echo "== generating $QWEN_MODEL"
    /usr/bin/python3 tools/synth/make_model.py --preset qwen2.5-0.5b --type q8_0 --seed 1 -o "$QWEN_MODEL"
  fi
  ARGS+=(--qwen-model "$QWEN_MODEL")
  CMD="QWEN_MODEL=$QWEN_MODEL $CMD"
fi
"$BUILD/tier_bench" "${ARGS[@]}" --command "$CMD"
/usr/bin/python3 bench/cache/report.py "$OUT/raw.json" "$OUT"
