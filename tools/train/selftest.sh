#!/bin/bash
# Smoke test of the training tools on a tiny model, run by ctest (train_tools_selftest) when
# /usr/bin/python3 has torch and sentencepiece; exits 77 (ctest: skipped) when it does not.
#   bash tools/train/selftest.sh [path/to/strata]
# Checks, on the repository's own Markdown as text: train.py with task rows, its resume, export to
# F16 and Q8_0 with --verify (logits against the numpy reference), Strata loading the result,
# revocab.py to the 8K tokenizer, and a fine-tune from that GGUF with --train-only and the
# unlikelihood term, ending at the requested token count, and train.py refusing streams of another tokenizer.
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY=${PY:-/usr/bin/python3}
STRATA=${1:-}
[ -z "$STRATA" ] || STRATA="$(realpath "$STRATA")"
if ! $PY -c "import torch, sentencepiece, numpy" 2>/dev/null; then
    echo "SKIP: $PY lacks torch/sentencepiece/numpy (apt-get install python3-torch python3-sentencepiece)"
    exit 77
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$HERE"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

# token streams: every Markdown file but one for train, that one for val (BOS ids EOS per file)
mkdir -p "$T/tok"
cp strata-tokenizer-4k.model "$T/tok/strata.model"
$PY - "$ROOT" "$T/tok" <<'EOF'
import glob, os, sys
import numpy as np, sentencepiece as spm
root, out = sys.argv[1], sys.argv[2]
sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "strata.model"))
files = sorted(f for f in glob.glob(os.path.join(root, "**", "*.md"), recursive=True)
               if not any(p in os.path.relpath(f, root).split(os.sep) for p in ("node_modules", "work", "build")))
docs = [[1] + sp.encode(open(f, encoding="utf-8", errors="replace").read()) + [2] for f in files]
val = max(range(len(docs)), key=lambda i: len(docs[i]) if len(docs[i]) < 20000 else 0)
np.array(docs[val], dtype=np.uint16).tofile(os.path.join(out, "val.bin"))
train = [t for i, d in enumerate(docs) if i != val for t in d]
np.array(train, dtype=np.uint16).tofile(os.path.join(out, "train.bin"))
print("selftest corpus: %d files, train %d tokens, val %d" % (len(docs), len(train), len(docs[val])))
EOF

tiny="--tok $T/tok --n-layers 2 --dim 64 --n-heads 2 --n-kv-heads 1 --ffn-dim 128 --context 512 \
      --tokens-per-step 1024 --curriculum 256:1 --task-frac 0.3 --threads 1 --warmup 2 --seed 3"
$PY train.py --out "$T/run" $tiny --total-tokens 2048 > "$T/train1.log"
$PY train.py --out "$T/run" $tiny --total-tokens 4096 > "$T/train2.log"
grep -q "resumed at step 2" "$T/train2.log" || { echo "FAIL: the second run did not resume"; cat "$T/train2.log"; exit 1; }
$PY -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if "\"final\"" in l][-1]; assert r["tokens"] == 4096 and not r["stopped"] and r["task_rows_fresh"] > 0, r' "$T/run/log.jsonl"

for t in f16 q8_0; do
    $PY export_gguf.py "$T/run/ckpt.pt" "$T/m-$t.gguf" --type $t --tok "$T/tok/strata.model" --verify > "$T/export-$t.log" 2>&1 \
        || { cat "$T/export-$t.log"; exit 1; }
    grep -q "argmax agreement" "$T/export-$t.log" || { echo "FAIL: export $t has no logit check"; cat "$T/export-$t.log"; exit 1; }
    if [ -n "$STRATA" ]; then
        "$STRATA" generate -m "$T/m-$t.gguf" -p "The kernel" -n 8 --temp 0 > "$T/gen-$t.txt" 2>&1 \
            || { echo "FAIL: strata cannot run the $t export"; cat "$T/gen-$t.txt"; exit 1; }
    fi
done

# vocabulary transfer, then a frozen-attention fine-tune with the unlikelihood term
$PY revocab.py "$T/m-f16.gguf" strata-tokenizer-4k.model strata-tokenizer-8k.model "$T/v8.gguf" --eval-docs 0 > "$T/revocab.log"
grep -q "vocabulary 4096 -> 8192" "$T/revocab.log" || { cat "$T/revocab.log"; exit 1; }
mkdir -p "$T/tok8"
cp strata-tokenizer-8k.model "$T/tok8/strata.model"
$PY - "$T/tok" "$T/tok8" <<'EOF'
import os, sys
import numpy as np, sentencepiece as spm
a = spm.SentencePieceProcessor(model_file=os.path.join(sys.argv[1], "strata.model"))
b = spm.SentencePieceProcessor(model_file=os.path.join(sys.argv[2], "strata.model"))
for split in ("train", "val"):  # re-encode: decode the 4K stream document by document
    ids = np.fromfile(os.path.join(sys.argv[1], split + ".bin"), dtype=np.uint16).tolist()
    out, doc = [], []
    for t in ids:
        if t == 2:
            out += [1] + b.encode(a.decode(doc)) + [2]
            doc = []
        elif t != 1:
            doc.append(t)
    np.array(out, dtype=np.uint16).tofile(os.path.join(sys.argv[2], split + ".bin"))
EOF
$PY train.py --out "$T/ft" --init-gguf "$T/v8.gguf" --tok "$T/tok8" --vocab 8192 --task-frac 0 --curriculum 256:1 \
    --tokens-per-step 1024 --total-tokens 2048 --threads 1 --warmup 1 --lr 1e-4 \
    --train-only "tok_embeddings|feed_forward|ffn_norm|^norm|^output" --ul-weight 1 --ul-rows 2 --ul-context 16 > "$T/ft.log"
grep -q "initialized from" "$T/ft.log" && grep -q "parameters frozen" "$T/ft.log" && grep -q "ul_phrase_p" "$T/ft.log" \
    || { echo "FAIL: fine-tune"; cat "$T/ft.log"; exit 1; }
# the 8K model on 4K streams must be refused, not trained on the wrong pieces
if $PY train.py --out "$T/mismatch" --init-gguf "$T/v8.gguf" --tok "$T/tok" --task-frac 0 --curriculum 256:1 \
    --tokens-per-step 1024 --total-tokens 1024 --threads 1 > "$T/mismatch.log" 2>&1; then
    echo "FAIL: train.py trained an 8K model on 4K streams"; cat "$T/mismatch.log"; exit 1
fi
grep -q "has 4096 pieces but the model's vocabulary is 8192" "$T/mismatch.log" || { cat "$T/mismatch.log"; exit 1; }
$PY export_gguf.py "$T/ft/ckpt.pt" "$T/ft.gguf" --tok strata-tokenizer-8k.model --verify > "$T/export-ft.log" 2>&1 \
    || { cat "$T/export-ft.log"; exit 1; }
if [ -n "$STRATA" ]; then
    "$STRATA" generate -m "$T/ft.gguf" -p "The kernel" -n 8 --temp 0 > "$T/gen-ft.txt" 2>&1 \
        || { echo "FAIL: strata cannot run the 8K export"; cat "$T/gen-ft.txt"; exit 1; }
fi
echo "PASS: train (tasks, resume), export f16/q8_0 --verify, revocab 4K->8K, fine-tune (--train-only, --ul-weight), tokenizer/vocabulary mismatch refused"
