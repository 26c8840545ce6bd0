#!/usr/bin/env bash
# End-to-end time to first token with the KV cache store's layer-wise
# loading (issue 5: "loads hits layer by layer while the forward pass runs"):
#
#   bench/cache/layerwise.sh
#
# Builds bench/cache/layerwise_bench in build-bench-cache (not the main
# build), runs it on the bundled model (host, disk cold/warm and a private
# redis-server) and writes bench/cache/results/layerwise.{json,md,png,svg}.
# Environment: REPS (5), THREADS (2), JOBS (2, build), SUFFIXES (1,64,256).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
REPS=${REPS:-5}
THREADS=${THREADS:-2}
JOBS=${JOBS:-2}
SUFFIXES=${SUFFIXES:-1,64,256}
BUILD=$ROOT/build-bench-cache
OUT=$ROOT/bench/cache/results
mkdir -p "$OUT"
cmake -S bench/cache -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
nice cmake --build "$BUILD" -j"$JOBS" --target layerwise_bench >/dev/null
CMD="bench/cache/layerwise.sh"
[ "$REPS" != 5 ] && CMD="REPS=$REPS $CMD"
"$BUILD/layerwise_bench" --model models/strata-default.gguf --disk-dir "$BUILD/layerwise-disk" \
  --out "$OUT/layerwise.json" --reps "$REPS" --threads "$THREADS" --suffixes "$SUFFIXES" --command "$CMD"
/usr/bin/python3 bench/cache/layerwise_report.py "$OUT/layerwise.json" "$OUT"
echo "wrote $OUT/layerwise.md"
