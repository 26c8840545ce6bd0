#!/bin/sh
# Serving benchmark: strata serve under 1/4/16/32 concurrent streaming
# clients, paged vs virtual KV memory, and a shared-system-prompt workload
# with prefix caching on and off. Writes bench/out/serving/*.json and prints
# markdown tables.
#
#   bench/serving/run.sh [MODEL.gguf] [BUILD_DIR]
#
# Without a model, a synthetic llama (dim 512, 4 layers, f16) is generated.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${2:-$ROOT/build}
OUT=$ROOT/bench/out/serving
mkdir -p "$OUT"
MODEL=${1:-$OUT/synth-llama-512x4-f16.gguf}
if [ ! -f "$MODEL" ]; then
  /usr/bin/python3 "$ROOT/tools/synth/make_model.py" --arch llama --dim 512 --layers 4 --heads 8 --kv-heads 2 \
    --head-dim 64 --ffn 1536 --vocab-size 300 --ctx 4096 --type f16 --seed 1 -o "$MODEL"
fi
ID=$(basename "$MODEL" .gguf)
PORT=18080

serve() {  # $@: extra flags
  "$BUILD/strata" serve -m "$MODEL" --port $PORT -c 2048 --parallel 32 --kv-budget 512 "$@" > "$OUT/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "server did not start:"; cat "$OUT/server.log"; exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for kv in paged virtual; do
  serve --kv-memory $kv --no-prefix-cache
  /usr/bin/python3 "$ROOT/bench/serving/load.py" --url http://127.0.0.1:$PORT --model "$ID" --label "$kv" \
    --concurrency 1,4,16,32 --requests 32 --prompt-words 200 --max-tokens 64 --json "$OUT/concurrency-$kv.json"
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^strata_kv_(page_maps|map_seconds)_total' || true
  stop
done
for pc in on off; do
  if [ $pc = on ]; then flag=""; else flag="--no-prefix-cache"; fi
  serve --kv-memory paged $flag
  /usr/bin/python3 "$ROOT/bench/serving/load.py" --url http://127.0.0.1:$PORT --model "$ID" --label "prefix-$pc" \
    --concurrency 8 --requests 32 --shared-prefix-words 250 --prompt-words 20 --max-tokens 16 --json "$OUT/prefix-$pc.json"
  stop
done
