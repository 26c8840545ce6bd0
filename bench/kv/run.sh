#!/usr/bin/env bash
# Paged vs virtual (vAttention) KV memory, side by side in one run:
#
#   bench/kv/run.sh [MODEL.gguf] [BUILD_DIR]
#
# MODEL defaults to bench/out/kv/bench-90m-q8_0-ctx16k.gguf, generated when
# missing by tools/synth/make_model.py (--preset bench-90m with a 16K
# context, so depth 8192 plus a prefill chunk lies inside the model's
# context; about a minute; bench/out/ is gitignored). BUILD_DIR defaults to build-bench-kv: the
# benchmark builds apart from the main build, from bench/kv/CMakeLists.txt.
#
# Writes bench/kv/results/: raw/kv_bench.json (everything),
# raw/kv_bench_map_1thread.json (part 3 with one compute thread), results.md,
# results.png and results.svg. About 4 minutes on a 2-core VM once built.
# Environment: THREADS (2, compute threads), JOBS (2, build).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MODEL=${1:-bench/out/kv/bench-90m-q8_0-ctx16k.gguf}
BUILD=${2:-$ROOT/build-bench-kv}
THREADS=${THREADS:-2}
JOBS=${JOBS:-2}
OUT=$ROOT/bench/kv/results
mkdir -p "$OUT/raw"

cmake -S bench/kv -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
nice cmake --build "$BUILD" -j"$JOBS" --target kv_bench >/dev/null

if [ ! -f "$MODEL" ]; then
  echo "== generating $MODEL"
  mkdir -p "$(dirname "$MODEL")"
  /usr/bin/python3 tools/synth/make_model.py --preset bench-90m --ctx 16384 --type q8_0 --seed 1 -o "$MODEL"
fi

CMD="bench/kv/run.sh"
[ $# -ge 1 ] && CMD="$CMD $1"
[ "$THREADS" != 2 ] && CMD="THREADS=$THREADS $CMD"
"$BUILD/kv_bench" --model "$MODEL" --threads "$THREADS" --out "$OUT/raw/kv_bench.json" --command "$CMD"
# Part 3 again with one compute thread: on a 2-core machine this leaves a
# core to the mapper thread, which with 2 compute threads competes with them.
"$BUILD/kv_bench" --model "$MODEL" --threads 1 --parts 3 --out "$OUT/raw/kv_bench_map_1thread.json" --command "$CMD"
/usr/bin/python3 bench/kv/report.py "$OUT/raw/kv_bench.json" "$OUT"
