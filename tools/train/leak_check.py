#!/usr/bin/python3
"""How often free generation leaks fragments of the synthetic training tasks.

Runs `strata generate` on a GGUF model for every prompt x seed (sampling, so the rate is a
property of the model's distribution, not of one greedy path) and counts the samples that contain
any task phrase. The phrases are the fixed text that tasks.py writes around its facts; plain
corpus text never contains them (checked by --corpus-check on the train split).

    python3 leak_check.py ../../models/strata-default.gguf --strata ../../build/strata
    python3 leak_check.py A.gguf B.gguf --json out.json      # several models, one table
"""
import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

PATTERNS = {
    "code": re.compile(r"The code of [A-Z][a-z]+ [A-Z][a-z]+ is"),
    "memorize": re.compile(r"Memorize: \[\[|Recall: \[\["),
    "mdqa": re.compile(r"Question: What is the capital|Document \d+:|The capital of [A-Z][a-z]+ is"),
    "marker": re.compile(r"### Task"),
}

PROMPTS = [
    "It is a truth universally acknowledged",
    "Elizabeth said to her sister",
    "In the beginning",
    "The kernel",
    "hacker n.",
    "Once upon a time",
    "The driver",
    "Abdomen, n.",
]


def generate(strata, model, prompt, seed, n, temp):
    r = subprocess.run([strata, "generate", "-m", model, "-p", prompt, "-n", str(n), "--temp", str(temp),
                        "--seed", str(seed), "--repeat-penalty", "1.1"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        sys.exit("strata generate failed: " + r.stderr.strip()[-500:])
    return r.stdout


def check(strata, model, seeds, n, temp, show):
    hits = {k: 0 for k in PATTERNS}
    leaked, total, examples = 0, 0, []
    for prompt in PROMPTS:
        for seed in range(1, seeds + 1):
            text = generate(strata, model, prompt, seed, n, temp)
            found = [k for k, p in PATTERNS.items() if p.search(text)]
            for k in found:
                hits[k] += 1
            total += 1
            if found:
                leaked += 1
                if len(examples) < show:
                    examples.append(text.strip().replace("\n", " ")[:200])
            print("\r%s: %d/%d samples, %d leaked" % (os.path.basename(model), total,
                                                       len(PROMPTS) * seeds, leaked),
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {"model": model, "samples": total, "leaked": leaked, "by_pattern": hits, "examples": examples,
            "tokens": n, "temp": temp, "seeds": seeds, "prompts": PROMPTS}


def corpus_check():
    """The phrases must be absent from plain text, or a 'leak' would just be the corpus."""
    path = os.path.join(HERE, "work", "corpus", "train.jsonl")
    counts = {k: 0 for k in PATTERNS}
    with open(path) as f:
        for line in f:
            t = json.loads(line)["text"]
            for k, p in PATTERNS.items():
                counts[k] += len(p.findall(t))
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--strata", default=os.path.join(ROOT, "build", "strata"))
    ap.add_argument("--seeds", type=int, default=10, help="seeds per prompt (%d prompts)" % len(PROMPTS))
    ap.add_argument("--n", type=int, default=64, help="tokens per sample")
    ap.add_argument("--temp", type=float, default=0.7)
    ap.add_argument("--show", type=int, default=3, help="leaked samples to print per model")
    ap.add_argument("--json")
    ap.add_argument("--corpus-check", action="store_true", help="count the phrases in work/corpus/train.jsonl")
    args = ap.parse_args()
    if not os.access(args.strata, os.X_OK):
        sys.exit("no strata binary at %s (build first, or pass --strata)" % args.strata)
    results = []
    if args.corpus_check:
        print("phrases in the plain train split:", corpus_check())
    for m in args.models:
        results.append(check(args.strata, m, args.seeds, args.n, args.temp, args.show))
    print("| model | samples | with a task fragment | code | memorize/recall | mdqa | marker |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        h = r["by_pattern"]
        print("| %s | %d | %d (%.0f%%) | %d | %d | %d | %d |" % (
            os.path.basename(r["model"]), r["samples"], r["leaked"], 100.0 * r["leaked"] / r["samples"],
            h["code"], h["memorize"], h["mdqa"], h["marker"]))
    for r in results:
        for e in r["examples"]:
            print("  %s: %s" % (os.path.basename(r["model"]), e))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
