"""Long-range task sequences for training, made by a pool of worker processes.

tasks.py builds each sequence with SentencePiece decode/encode (~5-7 ms per 2048-token sequence on
one core), too slow for a GPU at ~1M tokens/s if done in the training loop. TaskFeed forks N
workers (before CUDA is initialized) that each make chunks of rows [n, L+1] (uint16) for the
sequence length the trainer currently asks for (a shared value), and put them on a queue. The
trainer takes fresh rows first; if the workers fall behind it reuses rows from a reservoir of
earlier ones (counted in `reused`), so the GPU never waits after the first chunk.
With workers=0 rows are made in the calling process (CPU training).
"""
import multiprocessing as mp
import os
import queue as queue_mod
import random

import numpy as np


_DOC_STARTS = {}


def _doc_starts(stream):
    """Positions of BOS (document starts) in the stream, cached per stream."""
    k = id(stream)
    if k not in _DOC_STARTS:
        _DOC_STARTS[k] = np.flatnonzero(stream == 1)
    return _DOC_STARTS[k]


def make_rows(gen, stream, rng, n, L):
    """n task rows of exactly L+1 tokens: task sequences (tasks.TaskGen.training_ids) packed while at least
    96 tokens are left, then text. The first task of a row may span the whole row (distances up to
    ~0.92 L); later ones are shorter. Style "spliced": EOS + a random window of the stream. Style
    "marker": the start of a whole corpus document (BOS first), so task text is never spliced into
    ordinary text."""
    out = np.empty((n, L + 1), dtype=np.uint16)
    starts = _doc_starts(stream)
    for i in range(n):
        ids = gen.training_ids(L)
        while L + 1 - len(ids) > 96:
            ids += gen.training_ids(L + 1 - len(ids))
        ids = ids[: L + 1]
        m = L + 1 - len(ids)
        if m > 0 and gen.style == "spliced":
            ids.append(2)
            m -= 1
            if m > 0:
                s = rng.randrange(0, len(stream) - m - 1)
                ids.extend(stream[s:s + m].tolist())
        elif m > 0:
            s = -1
            for _ in range(20):
                s = int(starts[rng.randrange(0, len(starts))]) if len(starts) else -1
                if 0 <= s < len(stream) - m:
                    break
            if not (0 <= s < len(stream) - m):
                s = rng.randrange(0, len(stream) - m - 1)
            ids.extend(stream[s:s + m].tolist())
        out[i] = ids
    return out


def _worker(tok_path, stream, seed, shared_L, q, chunk, style):
    import sentencepiece as spm
    from tasks import TaskGen
    try:
        os.nice(5)
    except Exception:
        pass
    sp = spm.SentencePieceProcessor(model_file=tok_path)
    gen = TaskGen(sp, stream, seed, style)
    rng = random.Random(seed + 7)
    while True:
        L = shared_L.value
        if L <= 0:
            return
        rows = make_rows(gen, stream, rng, chunk, L)
        try:
            q.put((L, rows), timeout=60)
        except queue_mod.Full:
            continue


class TaskFeed:
    def __init__(self, tok_path, stream, seed, workers, L0, chunk=8, reservoir=4096, style="spliced"):
        self.stream = stream
        self.workers = workers
        self.fresh = {}      # L -> list of row arrays
        self.res = {}        # L -> reservoir array [R, L+1] and fill count
        self.res_cap = reservoir
        self.rng = np.random.default_rng(seed + 11)
        self.made = 0
        self.reused = 0
        self.procs = []
        self.tok_path, self.seed, self.style = tok_path, seed, style
        if workers > 0:
            ctx = mp.get_context("fork")
            self.L = ctx.Value("i", L0)
            self.q = ctx.Queue(maxsize=max(64, 8 * workers))
            for w in range(workers):
                p = ctx.Process(target=_worker, args=(tok_path, stream, seed * 1000 + w, self.L, self.q, chunk, style),
                                daemon=True)
                p.start()
                self.procs.append(p)
        else:
            self.tok_path, self.seed = tok_path, seed
            self._in_process()

    def _in_process(self):
        import sentencepiece as spm
        from tasks import TaskGen
        self.workers = 0
        self.gen = TaskGen(spm.SentencePieceProcessor(model_file=self.tok_path), self.stream, self.seed,
                           self.style)
        self.prng = random.Random(self.seed + 7)

    def set_L(self, L):
        if self.workers > 0:
            self.L.value = L

    def _drain(self, block_for=None):
        got = 0
        while True:
            try:
                if block_for is not None and got == 0:
                    L, rows = self.q.get(timeout=block_for)
                else:
                    L, rows = self.q.get_nowait()
            except queue_mod.Empty:
                return got
            self.fresh.setdefault(L, []).extend(list(rows))
            got += len(rows)

    def _remember(self, L, rows):
        R = self.res.get(L)
        if R is None:
            R = self.res[L] = [np.empty((self.res_cap, L + 1), dtype=np.uint16), 0, 0]  # array, count, next
        for r in rows:
            R[0][R[2]] = r
            R[2] = (R[2] + 1) % self.res_cap
            R[1] = min(R[1] + 1, self.res_cap)

    def get(self, n, L):
        """[n, L+1] uint16 task rows."""
        if n <= 0:
            return np.empty((0, L + 1), dtype=np.uint16)
        if self.workers == 0:
            rows = make_rows(self.gen, self.stream, self.prng, n, L)
            self.made += n
            return rows
        self._drain()
        fresh = self.fresh.get(L, [])
        R = self.res.get(L)
        while len(fresh) < n and (R is None or R[1] == 0):  # nothing to reuse yet: wait for workers
            if self._drain(block_for=30) == 0:
                print("taskfeed: workers produced nothing for 30 s; generating in-process", flush=True)
                self.close()
                self._in_process()
                return self.get(n, L)
            fresh = self.fresh.get(L, [])
            R = self.res.get(L)
        take = fresh[:n]
        del fresh[:len(take)]
        self.made += len(take)
        out = list(take)
        if len(out) < n:
            idx = self.rng.integers(0, R[1], size=n - len(out))
            out.extend(R[0][idx])
            self.reused += n - len(take)
        self._remember(L, take)
        # drop stale rows of other lengths
        for k in list(self.fresh):
            if k != L and len(self.fresh[k]) > 4 * n:
                del self.fresh[k][: len(self.fresh[k]) - 4 * n]
        return np.stack(out)

    def close(self):
        if self.procs:
            self.L.value = 0
            for p in self.procs:
                p.terminate()
            for p in self.procs:
                p.join(timeout=5)
            self.procs = []
