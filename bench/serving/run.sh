#!/bin/sh
# Serving benchmark, side by side in one run on the same model and workload:
# strata serve (paged and virtual KV memory) and llama-server under 1/4/16/32
# concurrent streaming clients; then a shared-system-prompt workload with
# strata's prefix caching on and off (and llama-server's own prompt cache).
# Writes bench/serving/results/ (raw JSON, results.md, plots).
#
#   bench/serving/run.sh [MODEL.gguf] [BUILD_DIR] [LLAMA_SERVER]
#
# MODEL defaults to the bundled trained model; LLAMA_SERVER to
# ../llama.cpp/build/bin/llama-server (skipped when absent; build it outside
# this repository: cmake -DLLAMA_BUILD_SERVER=ON, target llama-server).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=${1:-$ROOT/models/strata-default.gguf}
BUILD=${2:-$ROOT/build}
LLAMA_SERVER=${3:-$ROOT/../llama.cpp/build/bin/llama-server}
OUT=$ROOT/bench/serving/results
RAW=$OUT/raw
mkdir -p "$RAW"
ID=$(basename "$MODEL" .gguf)
SPORT=18080
# llama-server gets its own port: the connections it closed sit in TIME_WAIT
# on its port, and that blocks the next bind there.
LPORT=18081
THREADS=${THREADS:-2}
CTX=2048
PAR=32
CONC=${CONC:-1,4,16,32}
REQS=${REQS:-32}
load() { /usr/bin/python3 "$ROOT/bench/serving/load.py" --url "http://127.0.0.1:$PORT" --model "$ID" "$@"; }

start() {  # $@: the server command line
  "$@" > "$RAW/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && break
    sleep 0.2
  done
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null || { echo "server did not start:"; cat "$RAW/server.log"; exit 1; }
  # One request first: page faults on the weights are not part of the run.
  load --concurrency 1 --requests 1 --prompt-words 20 --max-tokens 4 > /dev/null
}
stop() {
  kill "$PID" 2>/dev/null || true
  # llama-server can take its time over SIGTERM; the next server needs the port.
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}
strata() { PORT=$SPORT; start "$BUILD/strata" serve -m "$MODEL" --port $PORT -t "$THREADS" -c $CTX --parallel $PAR "$@"; }
llama() {
  # -c is the total over all slots in llama-server; -np slots of CTX each.
  PORT=$LPORT
  start "$LLAMA_SERVER" -m "$MODEL" --port $PORT -t "$THREADS" -c $((CTX * PAR)) -np $PAR -a "$ID" "$@"
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "model: $ID ($(du -h "$MODEL" | cut -f1)), threads $THREADS, context $CTX per sequence, $PAR slots"
  if [ -x "$LLAMA_SERVER" ]; then echo "llama-server: $("$LLAMA_SERVER" --version 2>&1 | grep -m1 version)"; fi
} > "$RAW/machine.txt"
cat "$RAW/machine.txt"

# Concurrency: ~200-word prompts, 64 output tokens, greedy, ignore_eos.
WORK="--concurrency $CONC --requests $REQS --prompt-words 200 --max-tokens 64"
for kv in paged virtual; do
  strata --kv-memory $kv --no-prefix-cache
  load --label "strata-$kv" $WORK --json "$RAW/concurrency-strata-$kv.json"
  curl -s "http://127.0.0.1:$PORT/metrics" > "$RAW/metrics-strata-$kv.txt"
  stop
done
if [ -x "$LLAMA_SERVER" ]; then
  llama
  load --label "llama-server" $WORK --json "$RAW/concurrency-llama-server.json"
  stop
fi

# Shared system prompt: ~250 shared words, ~20 unique, 16 output tokens, 8 clients.
SHARED="--concurrency 8 --requests 32 --shared-prefix-words 250 --prompt-words 20 --max-tokens 16"
strata --kv-memory paged
load --label "strata prefix cache on" $SHARED --json "$RAW/prefix-strata-on.json"
stop
strata --kv-memory paged --no-prefix-cache
load --label "strata prefix cache off" $SHARED --json "$RAW/prefix-strata-off.json"
stop
if [ -x "$LLAMA_SERVER" ]; then
  llama
  load --label "llama-server (prompt cache per slot)" $SHARED --json "$RAW/prefix-llama-server.json"
  stop
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RAW/machine.txt"
/usr/bin/python3 "$ROOT/bench/serving/report.py" "$RAW" "$OUT"
