#!/usr/bin/env bash
# Strata vs llama.cpp on the same GGUF files, side by side in one run.
#
#   bench/engine/run.sh [LLAMA_BENCH]      (default: ../llama.cpp/build/bin/llama-bench)
#
# llama.cpp is never part of this repository: build it yourself outside it
# (any recent checkout; `cmake -B build -DGGML_NATIVE=ON && cmake --build build
# --target llama-bench`). Without it, only Strata's columns are filled.
# Results go to bench/engine/results/: raw JSON, results.md and plots.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
LLAMA_BENCH=${1:-$ROOT/../llama.cpp/build/bin/llama-bench}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
MODELS_DIR=${MODELS_DIR:-$ROOT/bench/out/models}
OUT=$ROOT/bench/engine/results
RAW=$OUT/raw
mkdir -p "$MODELS_DIR" "$RAW"

make -s build >/dev/null

CASES=${CASES:-"bench-90m:f16 bench-90m:q8_0 bench-90m:q4_k qwen2.5-0.5b:f16 qwen2.5-0.5b:q8_0 qwen2.5-0.5b:q4_k"}
for c in $CASES; do
  preset=${c%%:*}; type=${c##*:}
  model=$MODELS_DIR/$preset-$type.gguf
  if [ ! -f "$model" ]; then
    echo "== generating $model"
    /usr/bin/python3 tools/synth/make_model.py --preset "$preset" --type "$type" --seed 1 -o "$model"
  fi
  echo "== strata: $preset $type"
  build/strata bench -m "$model" -p 512 -n 64 -d 0,4096 -t "$THREADS" -r "$REPS" -o "$RAW/strata-$preset-$type.json"
  if [ -x "$LLAMA_BENCH" ]; then
    echo "== llama.cpp: $preset $type"
    "$LLAMA_BENCH" -m "$model" -p 512 -n 64 -d 0,4096 -t "$THREADS" -r "$REPS" -o json > "$RAW/llama-$preset-$type.json"
  fi
done
/usr/bin/python3 bench/engine/report.py "$RAW" "$OUT"
