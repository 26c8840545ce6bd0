#!/bin/bash
# Plain-text anneal on this (CPU) machine: continue a trained model on corpus text only, at a low LR,
# so free generation stops producing fragments of the synthetic long-range tasks, then export GGUF.
#   bash tools/train/anneal.sh IN.gguf DEST [TOKENS]       (TOKENS default 0.1e6)
# Writes DEST/{ckpt.pt, log.jsonl, strata-default.gguf, strata-default-q8_0.gguf, export_*.log}.
# Resumable: rerun the same command after a stop (touch DEST/STOP, SIGTERM, reboot) and it goes on
# from DEST/ckpt.pt. INSTALL=1 also copies both GGUF files into models/.
# The shipped model (version 2) is gpu_run.sh's output annealed with exactly the defaults here:
# 0.1M tokens, one row of 2048 per step (50 steps), plain text only, LR 1e-4 cosine to 1e-5,
# attention and embeddings frozen, unlikelihood weight 1 on 8 rows per step. Version 1.1 was version 1
# annealed the same way but with 8 rows of 512 per step for 0.5M tokens
# (TOKDIR=work/tok TOK=<the 4K tokenizer> CURR=512:1 TPS=4096 bash anneal.sh IN DEST 0.5e6).
# Needs tools/train/work/tok8k/{train,val}.bin (corpus.py + tokenizer.py --encode-only, README).
set -eu
IN="$(realpath "${1:?usage: anneal.sh IN.gguf DEST [TOKENS]}")"
DEST=${2:?usage: anneal.sh IN.gguf DEST [TOKENS]}
TOKENS=${3:-0.1e6}
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
mkdir -p "$DEST"; DEST="$(cd "$DEST" && pwd)"
PY=${PY:-/usr/bin/python3}
TOK=${TOK:-$HERE/strata-tokenizer-8k.model}  # version 2's 8192 pieces (versions 1 and 1.1: strata-tokenizer-4k.model)
cd "$HERE"
TOKDIR=${TOKDIR:-work/tok8k}  # token streams + strata.model (version 1.1: work/tok, with TOK= the 4K tokenizer)
for f in train.bin val.bin; do [ -f $TOKDIR/$f ] || { echo "missing tools/train/$TOKDIR/$f: run corpus.py and tokenizer.py --encode-only (README)"; exit 1; }; done
[ -f $TOKDIR/strata.model ] || cp "$TOK" $TOKDIR/strata.model
# the streams' tokenizer must be the one the export writes into the GGUF, or the model reads wrong ids
cmp -s "$TOK" $TOKDIR/strata.model || { echo "$TOKDIR/strata.model differs from TOK=$TOK: set TOK to the streams' tokenizer"; exit 1; }

# Why the fragments appear: spliced task rows start with BOS and state their first fact 8-40 tokens
# later, so version 1 learned that text shortly after BOS is often followed by a task phrase
# (P("The code of" | BOS + a few tokens of text) ~1e-2, against ~1e-5 mid-window), and every
# generation starts with BOS + a short prompt. So: plain text only (--task-frac 0), plus an
# unlikelihood term on exactly that case (train.py's Unlikelihood: BOS + 4-96 tokens + a task phrase).
# Only the MLPs, their norms and the output head learn (TRAIN_ONLY), since reading distant context is
# attention's work, and the LR is low: Adam's fresh state moves every weight by ~LR per step, which at
# 5e-4 is large next to version 1's converged weights.
# Measured on the way (leak_check.py, 160 samples; kv_recall at ~1900 tokens, 4-8 examples), each
# against version 1's 96% of samples with a fragment and 100% recall:
#   plain text, all parameters, LR 5e-4, length 512:        leak 32% after 62 steps, recall 25%
#   plain text, attention frozen, LR 5e-4:                   leak 69% after 78 steps, recall 100%
#   + unlikelihood, LR 5e-4:                                 leak 0% after ~70 steps, recall 25%
#   + marker-style task rows (25%), unlikelihood 0.3, 512:   leak 19%, recall 38%
#   same at length 2048, unlikelihood 1:                     leak 14% ("### Task" itself leaks), recall 25%
#   plain text + unlikelihood, attention frozen, LR 1e-4:    leak 1% after ~75 steps, recall 100%  <- 1.1
# The same recipe on version 2's GPU output (8K; 80 samples, all 16 kv_recall examples at ~1900, which
# were 16 of 16 before): at length 512, 0.5M tokens: leak 1%, recall 13/16 (answer NLL 0.13 -> 0.88);
# 0.2M tokens: 1%, 13/16; at length 2048, 0.1M tokens, 2 rows per step (25 steps): 2% (Q8_0 9%), 15/16
# (NLL 0.47); the same with 1 row per step (50 steps, so twice the unlikelihood rows): 1% (Q8_0 0%),
# 15/16 (NLL 0.58)  <- version 2. Training at 512 only lets the MLPs drift at the positions the
# anneal never sees.
OMP_WAIT_POLICY=PASSIVE $PY train.py --out "$DEST" --init-gguf "$IN" --tok $TOKDIR --task-frac ${TASK_FRAC:-0} \
    --curriculum "${CURR:-2048:1}" --tokens-per-step ${TPS:-2048} --total-tokens "$TOKENS" \
    --lr ${LR:-1e-4} --min-lr-frac 0.1 --warmup 5 --wd 0.1 --threads $(nproc) \
    --ckpt-every-min 8 --eval-every-min 10 --seed ${SEED:-11} \
    --train-only "${TRAIN_ONLY:-feed_forward|ffn_norm|^norm|^output}" \
    --ul-weight ${UL:-1} --ul-rows 8 --ul-context 96
# a stop (STOP file, signal) also ends train.py normally: export only a finished run
if ! $PY -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if "\"final\"" in l]; sys.exit(0 if r and r[-1]["tokens"] >= float(sys.argv[2]) else 1)' \
        "$DEST/log.jsonl" "$TOKENS"; then
    echo "anneal stopped before $TOKENS tokens; rerun the same command to continue (remove $DEST/STOP first)"
    exit 0
fi

$PY export_gguf.py "$DEST/ckpt.pt" "$DEST/strata-default.gguf" --tok "$TOK" --verify 2>&1 | tee "$DEST/export_f16.log"
$PY export_gguf.py "$DEST/ckpt.pt" "$DEST/strata-default-q8_0.gguf" --tok "$TOK" --type q8_0 --verify 2>&1 | tee "$DEST/export_q8.log"
grep -q "argmax agreement" "$DEST/export_f16.log" && grep -q "argmax agreement" "$DEST/export_q8.log"
if [ "${INSTALL:-0}" = 1 ]; then
    cp "$DEST/strata-default.gguf" "$DEST/strata-default-q8_0.gguf" "$ROOT/models/"
    echo "installed into $ROOT/models/"
fi
