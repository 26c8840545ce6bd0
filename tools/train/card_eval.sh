#!/bin/bash
# Every measurement in models/README.md's Results, for one pair of exported files, on this machine:
#   bash tools/train/card_eval.sh DIR        (DIR holds strata-default.gguf and strata-default-q8_0.gguf)
# Writes DIR/card/: leak.{txt,json}, eval_{f16,q8_0}.{txt,json}, ppl_{f16,q8_0}.{txt,json},
# ppl_torch_f16.txt, kv_int8.{txt,json}, char_loss.{txt,json}, samples.txt. Needs build/strata and
# tools/train/work/val.txt (ppl_llama.py's docstring makes it). About 30 min on 2 cores. CARD_TOK: the
# tokenizer of DIR's model, if it is not models/strata-tokenizer.model (loss per character). The
# PyTorch perplexity scores the same first 200 chunks as the int8 KV run, whose exact column it is
# compared with (TORCH_CHUNKS=-1: the whole file, ~14 min); TORCH=0 skips it; ONLY="leak eval" runs
# just those steps.
set -eu
DIR="$(cd "${1:?usage: card_eval.sh DIR}" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
S=${STRATA:-$ROOT/build/strata}
PY=${PY:-/usr/bin/python3}
VAL=$HERE/work/val.txt
OUT=$DIR/card
mkdir -p "$OUT"
F16=$DIR/strata-default.gguf
Q8=$DIR/strata-default-q8_0.gguf
for f in "$S" "$F16" "$Q8" "$VAL"; do [ -e "$f" ] || { echo "missing $f"; exit 1; }; done
ONLY=${ONLY:-leak samples eval ppl kv char torch}
want() { [[ " $ONLY " == *" $1 "* ]]; }
step() { echo "== $(date -u +%H:%M:%S) $*"; }

if want leak; then
    step "task fragments in free generation"
    $PY "$HERE/leak_check.py" "$F16" "$Q8" --strata "$S" --json "$OUT/leak.json" | tee "$OUT/leak.txt"
fi
if want samples; then
    step "samples"
    {
        for args in "-p|It is a truth universally acknowledged|-n|64|--temp|0.7|--seed|7|--repeat-penalty|1.1" \
                    "-p|Elizabeth said to her sister|-n|48|--temp|0" \
                    "-p|In the beginning|-n|48|--temp|0.7|--seed|1|--repeat-penalty|1.1" \
                    "-p|The kernel|-n|48|--temp|0.7|--seed|1|--repeat-penalty|1.1" \
                    "-p|hacker n.|-n|48|--temp|0.7|--seed|1|--repeat-penalty|1.1"; do
            IFS='|' read -r -a a <<< "$args"
            printf '$ strata generate -m models/strata-default.gguf'
            for x in "${a[@]}"; do if [[ $x == *" "* ]]; then printf ' "%s"' "$x"; else printf ' %s' "$x"; fi; done; echo
            "$S" generate -m "$F16" "${a[@]}" 2>/dev/null
            echo
        done
    } | tee "$OUT/samples.txt"
fi
if want eval; then
    for t in f16 q8_0; do
        m=$F16; [ $t = q8_0 ] && m=$Q8
        step "long-range tasks by distance, $t"
        "$S" eval -m "$m" --json "$OUT/eval_$t.json" "$ROOT"/models/eval/*.jsonl 2>"$OUT/eval_$t.err" | tee "$OUT/eval_$t.txt"
    done
fi
if want ppl; then
    for t in f16 q8_0; do
        m=$F16; [ $t = q8_0 ] && m=$Q8
        step "validation perplexity (llama-perplexity's method, -c 512), $t"
        "$S" perplexity -m "$m" -f "$VAL" -c 512 --json "$OUT/ppl_$t.json" 2>&1 | tail -3 | tee "$OUT/ppl_$t.txt"
    done
fi
if want kv; then
    step "KV round-tripped through int8: first 200 chunks"
    "$S" perplexity -m "$F16" -f "$VAL" -c 512 --chunks 200 --kv-roundtrip int8 --json "$OUT/kv_int8.json" 2>&1 \
        | tail -8 | tee "$OUT/kv_int8.txt"
fi
if want char; then
    step "validation loss per character (compares across vocabularies), F16"
    (cd "$HERE" && $PY char_loss.py "$F16" "${CARD_TOK:-$ROOT/models/strata-tokenizer.model}" --json "$OUT/char_loss.json") \
        | tee "$OUT/char_loss.txt"
fi
if want torch && [ "${TORCH:-1}" = 1 ]; then
    step "validation perplexity in PyTorch, F16 weights"
    TC=${TORCH_CHUNKS:-200}
    (cd "$HERE" && $PY ppl_llama.py "$F16" "$VAL" -c 512 $([ "$TC" -ge 0 ] && echo --chunks $TC)) 2>&1 | tail -3 \
        | tee "$OUT/ppl_torch_f16.txt"
fi
step "done: $OUT"
