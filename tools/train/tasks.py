#!/usr/bin/python3
"""Long-range tasks mixed into training and held out for evaluation.

Three synthetic tasks force the model to read distant context. Each is plain text, so the
same jsonl drives the PyTorch evaluator (eval_tasks.py) and Strata's C++ harness:

  kv_recall  "The code of Mara Quinn is 4821." facts early, corpus filler (with distractor
             facts), then "The code of Mara Quinn is" -> " 4821".
  repeat     "Memorize: [[ <passage> ]]" early, filler, then "Recall: [[" -> the passage verbatim.
  mdqa       "Document k:" blocks of corpus text, one of which states "The capital of Velora is
             Tarnek."; at the end "Question: What is the capital of Velora?\nAnswer:" -> " Tarnek".

Filler comes from the train token stream for training and from the val stream for eval sets.

Eval sets (python3 tasks.py --make-eval): work/eval/<task>.jsonl, one example per line:
  {"task", "bucket", "distance", "prompt", "answer", "prompt_ids", "answer_ids"}
prompt_ids start with BOS (1); "distance" is the number of tokens from the needed fact to the
end of the prompt. Buckets (target distance in tokens): 128, 256, 512, 1024, 1900.
An example is correct when every answer token is the argmax given the true prefix (equivalent to
greedy decoding reproducing the answer); for "repeat" the per-token accuracy is reported too.
"""
import argparse
import json
import os
import random

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKETS = [128, 256, 512, 1024, 1900]
TASKS = ["kv_recall", "repeat", "mdqa"]
# Two ways to put tasks into training rows (--task-style):
# - "spliced" (the shipped model, version 1): a task sequence is corpus filler with the facts and the
#   question inserted, BOS first and no marker; rows are filled up with EOS + a random text window.
#   Eval prompts look the same. The model learns that task text may follow any text, so free
#   generation shows task fragments until a plain-text anneal (anneal.sh) removes them.
# - "marker": every task example is its own document, BOS + this marker line + task + answer + EOS,
#   and rows are filled up with whole corpus documents, so task text is recognizable from its first
#   tokens and never appears inside ordinary prose. Eval prompts start with BOS + the same marker.
TASK_MARKER = "### Task\n"
TASK_STYLES = ("spliced", "marker")

FIRST = ("Mara Tobin Elsa Rowan Ivo Nadia Oren Petra Silas Talia Umar Vera Wendel Yara Zane Aldo "
         "Bryn Cato Dara Emil Fenna Gideon Hana Ilse Jonas Kira Lars Mina Nico Odile Pavel Quinn "
         "Rhea Soren Tove Ulla Viggo Wren Xavi Yusuf Anja Bram Clio Dmitri Edda Faye Greta Hugo").split()
LAST = ("Quinn Harlow Varga Okafor Lindqvist Moreau Castell Brandt Ferris Novak Ostrow Petrov "
        "Rinaldi Sato Tamm Ulrich Vance Whitlock Yilmaz Zeller Abbott Becker Collins Dalton Ellery "
        "Fontaine Garrick Holm Ingram Jansen Keller Lowry Marsh Nolan Orme Pryce Rourke Stroud").split()
SYL_A = "ve ka lo ma ri ta no su be da fe go hi ju mi pa ra se to zu".split()
SYL_B = "lor rin tak nek vel dor sil mar bek zan tor ven lis gar mon".split()


def load_stream(path):
    return np.fromfile(path, dtype=np.uint16)


class TaskGen:
    """Makes task texts of roughly a target token length, with filler from a token stream."""

    def __init__(self, sp, stream, seed=0, style="spliced"):
        if style not in TASK_STYLES:
            raise ValueError("task style must be one of %s, not %r" % (TASK_STYLES, style))
        self.sp = sp
        self.stream = stream
        self.rng = random.Random(seed)
        self.style = style
        self.prefix = TASK_MARKER if style == "marker" else ""

    # -- pieces ------------------------------------------------------------------------
    def filler(self, ntok):
        if ntok <= 0:
            return ""
        r = self.rng
        for _ in range(10):
            s = r.randrange(0, len(self.stream) - ntok - 1)
            ids = self.stream[s:s + ntok].tolist()
            if 1 not in ids and 2 not in ids:  # stay inside one document
                break
        return self.sp.decode([i for i in ids if i > 2]).strip()

    def name(self):
        return "%s %s" % (self.rng.choice(FIRST), self.rng.choice(LAST))

    def code(self):
        return "%04d" % self.rng.randrange(0, 10000)

    def word(self, nsyl=2):
        r = self.rng
        w = "".join(r.choice(SYL_A) for _ in range(nsyl - 1)) + r.choice(SYL_B)
        return w.capitalize()

    # -- tasks: return (text_before_answer, answer, char position of the needed fact) ---
    def kv_recall(self, distance, n_distract=3):
        names = []  # a list, not a set: set order depends on PYTHONHASHSEED (eval sets must be reproducible)
        while len(names) < n_distract + 1:
            nm = self.name()
            if nm not in names:
                names.append(nm)
        codes = [self.code() for _ in names]
        target = 0
        parts = [self.filler(self.rng.randrange(8, 40))]
        fact_pos = len(" ".join(parts)) + 1
        parts.append("The code of %s is %s." % (names[0], codes[0]))
        # distractors spread through the filler
        nseg = n_distract + 1
        seg = max(1, distance // nseg)
        for i in range(1, n_distract + 1):
            parts.append(self.filler(seg - 12))
            parts.append("The code of %s is %s." % (names[i], codes[i]))
        parts.append(self.filler(seg - 20))
        parts.append("The code of %s is" % names[target])
        return " ".join(p for p in parts if p), " " + codes[target], fact_pos

    def repeat(self, distance, plen=None):
        plen = plen or self.rng.randrange(24, 48)
        passage = self.filler(plen)
        parts = [self.filler(self.rng.randrange(8, 40))]
        fact_pos = len(" ".join(parts)) + 1
        parts.append("Memorize: [[ %s ]]" % passage)
        parts.append(self.filler(max(0, distance - plen - 8)))
        parts.append("Recall: [[")
        return " ".join(p for p in parts if p), " " + passage + " ]]", fact_pos

    def mdqa(self, distance, n_docs=None, target=None):
        r = self.rng
        n_docs = n_docs or r.randrange(3, 7)
        countries = []
        while len(countries) < n_docs:
            c = self.word(r.randrange(2, 4))
            if c not in countries:
                countries.append(c)
        cities = [self.word(2) for _ in countries]
        doc_len = max(16, distance // n_docs)
        # the answer document is far from the question: the first one for long distances
        target = r.randrange(0, n_docs) if target is None else target
        text = ""
        fact_pos = 0
        for k in range(n_docs):
            a = self.filler(r.randrange(4, max(5, doc_len // 2)))
            b = self.filler(max(4, doc_len - len(a) // 4 - 20))
            head = "Document %d:\n%s " % (k + 1, a)
            if k == target:
                fact_pos = len(text) + len(head)
            text += head + "The capital of %s is %s. %s\n\n" % (countries[k], cities[k], b)
        text += "Question: What is the capital of %s?\nAnswer:" % countries[target]
        return text, " " + cities[target], fact_pos

    def make(self, task, distance, for_eval=False):
        """(prefix + text before the answer, answer, char position of the needed fact)."""
        if task == "mdqa" and for_eval:
            text, ans, pos = self.mdqa(distance, target=0)  # answer in the first document: distance ~ bucket
        else:
            text, ans, pos = getattr(self, task)(distance)
        return self.prefix + text, ans, pos + len(self.prefix)

    # -- training sequences ---------------------------------------------------------------
    def training_ids(self, L):
        """Token ids (BOS first, about L long) of one random task sequence with answers."""
        task = self.rng.choice(TASKS)
        # distances spread over the whole window (the eval buckets go from 128 to 1900 tokens);
        # shorter examples are followed by more tasks, then text (taskfeed.make_rows)
        target = self.rng.randint(max(16, L // 32), max(32, int(L * 0.92)))
        if task == "mdqa":
            # several docs; distance to the answer varies with the target doc's index
            text, ans, _ = self.mdqa(target)
            text = self.prefix + text
        else:
            text, ans, _ = self.make(task, target)
        if self.style == "spliced":
            return [1] + self.sp.encode(text + ans)
        # one document: BOS, marker, task, answer, EOS
        return [1] + self.sp.encode(text + ans) + [2]


def make_eval(sp, stream, out_dir, n_per_bucket, seed, style="spliced"):
    os.makedirs(out_dir, exist_ok=True)
    gen = TaskGen(sp, stream, seed, style)
    for task in TASKS:
        path = os.path.join(out_dir, task + ".jsonl")
        n_written = 0
        with open(path, "w", encoding="utf-8") as f:
            for b in BUCKETS:
                made = 0
                tries = 0
                while made < n_per_bucket and tries < n_per_bucket * 50:
                    tries += 1
                    prompt, answer, fact_pos = gen.make(task, b, for_eval=True)
                    pids = [1] + sp.encode(prompt)
                    full = [1] + sp.encode(prompt + answer)
                    if full[:len(pids)] != pids:
                        continue
                    aids = full[len(pids):]
                    if task != "repeat":
                        aids = [t for t in aids]
                    dist = len(pids) - (1 + len(sp.encode(prompt[:fact_pos]))) if fact_pos else len(pids)
                    if len(pids) + len(aids) > 2048:
                        continue
                    f.write(json.dumps({"task": task, "bucket": b, "distance": dist, "prompt": prompt,
                                        "answer": answer, "prompt_ids": pids, "answer_ids": aids}) + "\n")
                    made += 1
                    n_written += 1
        print("%s: %d examples -> %s" % (task, n_written, path))


def main():
    import sentencepiece as spm
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-eval", action="store_true")
    ap.add_argument("--tok", default=os.path.join(HERE, "work", "tok"))
    ap.add_argument("--out", default=os.path.join(HERE, "work", "eval"))
    ap.add_argument("--n", type=int, default=50, help="examples per task and bucket")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--task-style", choices=TASK_STYLES, default="spliced",
                    help="spliced: the shipped model's (models/eval); marker: tasks as marked documents")
    args = ap.parse_args()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.tok, "strata.model"))
    if args.make_eval:
        make_eval(sp, load_stream(os.path.join(args.tok, "val.bin")), args.out, args.n, args.seed, args.task_style)
    else:
        gen = TaskGen(sp, load_stream(os.path.join(args.tok, "train.bin")), 0, args.task_style)
        for t in TASKS:
            p, a, fp = gen.make(t, 200)
            print("=== %s (fact at char %d)\n%s%s\n" % (t, fp, p, a))


if __name__ == "__main__":
    main()
