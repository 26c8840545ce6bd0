#!/bin/bash
# After gpu_run.sh: turn its OUTDIR (possibly read-only) into GGUF files, on this (CPU) machine.
#   bash tools/train/finalize_from_gpu.sh DIR [DEST]      (DEST default tools/train/work/gpu-final)
# Writes DEST/{ckpt.pt, strata-default.gguf, strata-default-q8_0.gguf, export_*.log, eval.*, samples.txt,
# log.jsonl}. Both exports run --verify (logits vs tools/ref/ref_forward.py). INSTALL=1 also copies the
# two GGUF files into models/.
set -eu
DIR="$(cd "${1:?usage: finalize_from_gpu.sh DIR [DEST]}" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DEST=${2:-$HERE/work/gpu-final}
mkdir -p "$DEST"; DEST="$(cd "$DEST" && pwd)"
PY=${PY:-/usr/bin/python3}
cd "$HERE"
TOK=${TOK:-$HERE/strata-tokenizer-8k.model}  # version 2's 8192 pieces (versions 1 and 1.1: strata-tokenizer-4k.model)
$PY unpack_weights.py "$DIR" "$DEST/ckpt.pt"
for f in eval.json eval.txt samples.txt log.jsonl; do [ -f "$DIR/$f" ] && cp "$DIR/$f" "$DEST/"; done
$PY export_gguf.py "$DEST/ckpt.pt" "$DEST/strata-default.gguf" --tok "$TOK" --verify 2>&1 | tee "$DEST/export_f16.log"
$PY export_gguf.py "$DEST/ckpt.pt" "$DEST/strata-default-q8_0.gguf" --tok "$TOK" --type q8_0 --verify 2>&1 | tee "$DEST/export_q8.log"
grep -q "argmax agreement" "$DEST/export_f16.log" && grep -q "argmax agreement" "$DEST/export_q8.log"
if [ -f "$DEST/eval.txt" ]; then echo "--- eval (from the GPU run)"; cat "$DEST/eval.txt"; fi
grep '"final"' "$DEST/log.jsonl" 2>/dev/null | tail -1 || true
ls -la "$DEST"
if [ "${INSTALL:-0}" = 1 ]; then
    cp "$DEST/strata-default.gguf" "$DEST/strata-default-q8_0.gguf" "$ROOT/models/"
    echo "installed into $ROOT/models/"
fi
