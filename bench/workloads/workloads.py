#!/usr/bin/python3
"""Multi-round QA and long-document QA against `strata serve` (issue 5,
"Benchmarks"), with the KV cache store off, host RAM only, disk only, Redis
only and all tiers, side by side in one run.

For every (model, configuration, workload) the driver starts a fresh
`strata serve` (fresh disk directory, flushed private Redis), replays the
same deterministic request schedule over streaming /v1/completions and
records per request: TTFT (send -> first streamed text), end-to-end latency,
usage.prompt_tokens, prompt_tokens_details.cached_tokens (engine memory +
store) and .store_cached_tokens (loaded from the store), and the generated
text (greedy; compared with the cache-off run to check that store-loaded KV
gives the same answers).

Standard library + numpy/matplotlib (report only).

  bench/workloads/workloads.py run --model models/strata-default.gguf --out raw.json ...
  bench/workloads/workloads.py report results/raw-*.json --out-dir results
"""
import argparse
import http.client
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = ["off", "host", "disk", "redis", "all"]
CONFIG_LABEL = {"off": "cache off (engine prefix cache only)", "host": "host RAM tier", "disk": "disk tier",
                "redis": "Redis tier", "all": "host -> disk -> Redis"}


# ---------------------------------------------------------------- text

def load_text_source():
    """Real English text (Jane Austen, the training corpus) when this checkout
    has it (tools/train/work is not committed), else deterministic generated
    text. Returns (name, list of paragraphs-as-word-lists)."""
    path = os.path.join(ROOT, "tools/train/work/corpus/austen.tsv")
    if os.path.exists(path):
        words = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t", 1)
                if len(parts) == 2:
                    words.extend(parts[1].split())
        return "tools/train/work/corpus/austen.tsv (Jane Austen)", words
    rng = random.Random(7)
    vocab = ("the of and to a in that was her it his she he be had with for as not you at but is on all by "
             "which have so my been this were could would said from very no they an one their there what much "
             "more must any will such than mrs elinor marianne sister mother house family letter day time "
             "never every thing think little great own should might well know only good before after").split()
    return "generated (seeded word list)", [rng.choice(vocab) for _ in range(400000)]


class Text:
    def __init__(self, words):
        self.words = words
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.words):
            self.pos = 0
        s = " ".join(self.words[self.pos:self.pos + n])
        self.pos += n
        return s


QUESTIONS = [
    "Who is the main character of this passage and what does she want?",
    "Summarize the passage above in one sentence.",
    "What happens to the family after the death of the father?",
    "Which places are named in the text, and where are they?",
    "What does the letter say, and who wrote it?",
    "How does the elder sister feel about the proposal?",
    "What is the relation between the two families?",
    "What will happen next, judging by the last paragraph?",
]


# ---------------------------------------------------------------- HTTP

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def complete(port, model, prompt, max_tokens, timeout=900):
    """One streaming completion. Returns a dict of timings and usage."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError("HTTP %d: %s" % (resp.status, resp.read()[:300]))
    first = None
    text = []
    usage = {}
    buf = b""
    done = False
    while not done:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: "):
                continue
            data = event[6:]
            if data == b"[DONE]":
                done = True
                break
            j = json.loads(data)
            if j.get("error"):
                raise RuntimeError("stream error: %s" % json.dumps(j["error"])[:300])
            if j.get("usage"):
                usage = j["usage"]
            if j.get("choices"):
                t = j["choices"][0].get("text") or ""
                if t and first is None:
                    first = time.perf_counter()
                text.append(t)
    end = time.perf_counter()
    conn.close()
    det = usage.get("prompt_tokens_details") or {}
    return {"t_send": t0, "ttft": (first or end) - t0, "latency": end - t0, "t_end": end,
            "prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0),
            "cached_tokens": det.get("cached_tokens", 0), "store_cached_tokens": det.get("store_cached_tokens", 0),
            "text": "".join(text)}


def http_get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    data = r.read().decode("utf-8", "replace")
    conn.close()
    return r.status, data


def prompt_tokens_of(port, model, text):
    return complete(port, model, text, 1)["prompt_tokens"]


# ---------------------------------------------------------------- processes

class Redis:
    def __init__(self, maxmemory):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="strata-wl-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory", maxmemory, "--maxmemory-policy", "allkeys-lru", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                self.cmd("PING")
                break
            except OSError:
                time.sleep(0.05)
        self.version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()

    def cmd(self, *args):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        msg = "*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)
        s.sendall(msg.encode())
        out = s.recv(65536).decode("utf-8", "replace")
        s.close()
        return out

    def used_memory(self):
        for line in self.cmd("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    def __init__(self, args, store_flags, log_path):
        self.port = free_port()
        cmd = ["nice", "-n", str(args.nice), os.path.join(args.build, "strata"), "serve", "-m", args.model,
               "--port", str(self.port), "-c", str(args.ctx), "--parallel", str(args.parallel),
               "--kv-budget", str(args.kv_budget)] + (["-t", str(args.threads)] if args.threads else []) + store_flags
        self.cmd = cmd
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: %s (see %s)" % (" ".join(cmd), log_path))
            try:
                if http_get(self.port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() - t0 > 120:
                raise RuntimeError("server did not start: " + log_path)
            time.sleep(0.1)

    def metrics(self):
        keep = {}
        try:
            for line in http_get(self.port, "/metrics")[1].splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                name, _, val = line.rpartition(" ")
                if any(k in name for k in ("store", "prefix", "kv_", "preempt")):
                    try:
                        keep[name] = float(val)
                    except ValueError:
                        pass
        except OSError:
            pass
        return keep

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- workloads

def poisson_times(n, rate, seed):
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate) if rate > 0 else 0.0
    return out


def run_schedule(port, model, jobs, max_tokens):
    """jobs: list of dicts with 'at' (seconds after start), 'prompt' (str or
    callable(results) -> str), 'after' (index of a job that must finish
    first, or None), 'key'. Each job runs in its own thread; open loop except
    for the 'after' dependency (a user's next round needs the previous answer)."""
    results = [None] * len(jobs)
    done = [threading.Event() for _ in jobs]
    start = time.perf_counter() + 0.2

    def worker(i):
        job = jobs[i]
        try:
            if job["after"] is not None:
                done[job["after"]].wait()
            delay = start + job["at"] - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            prompt = job["prompt"](results) if callable(job["prompt"]) else job["prompt"]
            r = complete(port, model, prompt, max_tokens)
            r["key"] = job["key"]
            r["t_send"] -= start
            r["t_end"] -= start
            results[i] = r
        except Exception as e:  # noqa: BLE001 - recorded
            results[i] = {"key": job["key"], "error": str(e)}
        finally:
            done[i].set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def multi_round_jobs(a, system_prompt, user_texts):
    """U users x R rounds; job order is round-major (user 0 round 0, user 1
    round 0, ...) with Poisson arrivals at a.mr_rate; round r of a user waits
    for its round r-1 (its answer is part of the next prompt)."""
    n = a.users * a.rounds
    times = poisson_times(n, a.mr_rate, a.seed)
    jobs = []
    index = {}
    for r in range(a.rounds):
        for u in range(a.users):
            i = len(jobs)
            index[(u, r)] = i

            def make(results, u=u, r=r):
                hist = [system_prompt]
                for k in range(r):
                    prev = results[index[(u, k)]]
                    hist.append("\n\nUser: " + user_texts[u][k] + "\nAssistant:" + (prev or {}).get("text", ""))
                hist.append("\n\nUser: " + user_texts[u][r] + "\nAssistant:")
                return "".join(hist)
            jobs.append({"at": times[i], "prompt": make, "after": index[(u, r - 1)] if r else None,
                         "key": "u%d-r%d" % (u, r), "round": r})
    return jobs


def long_doc_jobs(a, docs):
    """D documents x Q questions, interleaved (doc 0..D-1 with question 0,
    then doc 0..D-1 with question 1, ...), Poisson arrivals at a.ld_rate."""
    n = a.docs * a.questions
    times = poisson_times(n, a.ld_rate, a.seed + 1)
    jobs = []
    for q in range(a.questions):
        for d in range(a.docs):
            i = len(jobs)
            prompt = docs[d] + "\n\nQuestion: " + QUESTIONS[q % len(QUESTIONS)] + "\nAnswer:"
            jobs.append({"at": times[i], "prompt": prompt, "after": None, "key": "d%d-q%d" % (d, q), "round": q})
    return jobs


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(results):
    ok = [r for r in results if r and "error" not in r]
    errs = [r for r in results if not r or "error" in r]
    if not ok:
        return {"requests": 0, "errors": len(errs), "first_error": errs[0].get("error") if errs else None}
    wall = max(r["t_end"] for r in ok) - min(r["t_send"] for r in ok)
    ptoks = sum(r["prompt_tokens"] for r in ok)
    cached = sum(r["cached_tokens"] for r in ok)
    store = sum(r["store_cached_tokens"] for r in ok)
    rep = [r for r in ok if r.get("round", 0) > 0]
    return {
        "requests": len(ok), "errors": len(errs), "first_error": errs[0].get("error") if errs else None,
        "wall_s": wall, "requests_per_s": len(ok) / wall, "prompt_tokens_per_s": ptoks / wall,
        "output_tokens_per_s": sum(r["completion_tokens"] for r in ok) / wall,
        "prompt_tokens": ptoks, "mean_prompt_tokens": ptoks / len(ok),
        "cached_tokens": cached, "store_cached_tokens": store,
        "cached_ratio": cached / ptoks if ptoks else 0, "store_cached_ratio": store / ptoks if ptoks else 0,
        "ttft_p50_ms": 1000 * pct([r["ttft"] for r in ok], 50), "ttft_p99_ms": 1000 * pct([r["ttft"] for r in ok], 99),
        "ttft_mean_ms": 1000 * sum(r["ttft"] for r in ok) / len(ok),
        "ttft_p50_ms_repeat": 1000 * pct([r["ttft"] for r in rep], 50) if rep else None,
        "latency_p50_ms": 1000 * pct([r["latency"] for r in ok], 50),
    }


def store_flags(cfg, a, disk_dir, redis_port):
    host = ["--kv-store-host-bytes", a.host_bytes]
    disk = ["--kv-store-disk", disk_dir, "--kv-store-disk-bytes", a.disk_bytes]
    redis = ["--kv-store-redis", "127.0.0.1:%d" % redis_port]
    return {"off": [], "host": host, "disk": disk, "redis": redis, "all": host + disk + redis}[cfg]


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cmd_run(a):
    model_id = os.path.splitext(os.path.basename(a.model))[0]
    src_name, words = load_text_source()
    os.makedirs(a.work, exist_ok=True)
    redis = Redis(a.redis_maxmemory)
    out = {"model": a.model, "model_id": model_id, "text_source": src_name, "params": {k: v for k, v in vars(a).items() if k != "func"},
           "loadavg_start": loadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "redis": redis.version, "runs": []}
    try:
        # Calibrate words -> tokens on a cache-off server so the prompts have the sizes asked for.
        srv = Server(a, [], os.path.join(a.work, "server-calibrate.log"))
        try:
            sample = Text(words).take(a.calib_words)
            tpw = prompt_tokens_of(srv.port, model_id, sample) / float(a.calib_words)
        finally:
            srv.stop()
        out["tokens_per_word"] = tpw
        text = Text(words)
        system_prompt = "You are a helpful assistant who answers questions about the novels below.\n\n" + \
            text.take(int(a.system_tokens / tpw))
        user_texts = [[text.take(int(a.question_tokens / tpw)) + " " + QUESTIONS[(u + r) % len(QUESTIONS)]
                       for r in range(a.rounds)] for u in range(a.users)]
        docs = ["Document %d.\n\n" % d + text.take(int(a.doc_tokens / tpw)) for d in range(a.docs)]
        workloads = [w for w in a.workloads.split(",") if w]
        for cfg in [c for c in a.configs.split(",") if c]:
            for wl in workloads:
                disk_dir = tempfile.mkdtemp(prefix="strata-wl-disk-", dir=a.work)
                redis.cmd("FLUSHALL")
                flags = store_flags(cfg, a, disk_dir, redis.port)
                srv = Server(a, flags, os.path.join(a.work, "server-%s-%s-%s.log" % (model_id, cfg, wl)))
                try:
                    jobs = multi_round_jobs(a, system_prompt, user_texts) if wl == "multi_round" else long_doc_jobs(a, docs)
                    la0 = loadavg()
                    t0 = time.time()
                    res = run_schedule(srv.port, model_id, jobs, a.max_tokens)
                    for j, r in zip(jobs, res):
                        if r:
                            r["round"] = j["round"]
                    s = summarize(res)
                    s.update({"config": cfg, "workload": wl, "server_cmd": " ".join(srv.cmd[3:]),
                              "loadavg_before": la0, "loadavg_after": loadavg(), "elapsed_s": time.time() - t0,
                              "metrics": srv.metrics()})
                    if cfg in ("redis", "all"):
                        s["redis_used_memory"] = redis.used_memory()
                    s["disk_dir_bytes"] = sum(os.path.getsize(os.path.join(dp, f))
                                              for dp, _, fs in os.walk(disk_dir) for f in fs)
                    s["per_request"] = [{k: v for k, v in r.items()} for r in res if r]
                finally:
                    srv.stop()
                    shutil.rmtree(disk_dir, ignore_errors=True)
                out["runs"].append(s)
                print("%-8s %-12s %-5s req=%d err=%d req/s=%.2f ptok/s=%.0f ttft p50=%.0f p99=%.0f ms cached=%.2f store=%.2f" % (
                    model_id[:8], wl, cfg, s["requests"], s["errors"], s.get("requests_per_s", 0),
                    s.get("prompt_tokens_per_s", 0), s.get("ttft_p50_ms", 0), s.get("ttft_p99_ms", 0),
                    s.get("cached_ratio", 0), s.get("store_cached_ratio", 0)), flush=True)
                if s.get("first_error"):
                    print("  first error: " + s["first_error"], file=sys.stderr, flush=True)
    finally:
        redis.stop()
    # Greedy answers vs cache off (same prompts only when every earlier answer matched too).
    base = {}
    for s in out["runs"]:
        if s["config"] == "off":
            base[s["workload"]] = {r["key"]: r.get("text") for r in s["per_request"]}
    for s in out["runs"]:
        b = base.get(s["workload"])
        if b is None:
            continue
        same = sum(1 for r in s["per_request"] if "text" in r and b.get(r["key"]) == r["text"])
        s["answers_equal_to_off"] = same
    out["loadavg_end"] = loadavg()
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


# ---------------------------------------------------------------- report

def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1048576
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem, 1),
            "kernel": platform.platform()}


def cmd_report(a):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(a.out_dir, exist_ok=True)
    raws = []
    for p in a.raw:
        with open(p) as f:
            raws.append(json.load(f))
    mach = machine()
    summary = {"machine": mach, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "command": a.command, "models": []}
    md = ["# Multi-round QA and long-document QA: strata serve with the KV cache store", "",
          "- Date: %s" % summary["date"],
          "- Command: `%s`" % a.command,
          "- Machine: %s, %d cores, %.1f GiB RAM, %s" % (mach["cpu"], mach["cores"], mach["ram_gib"], mach["kernel"]),
          "- Shared, noisy machine (other engineers compile): load average (1/5/15 min) per model run below, "
          "and before/after every configuration in results.json. Read the ratios; absolute numbers move with the load.",
          ""]
    for raw in raws:
        p = raw["params"]
        runs = raw["runs"]
        m = {"model": raw["model"], "text_source": raw["text_source"], "tokens_per_word": raw.get("tokens_per_word"),
             "loadavg_start": raw["loadavg_start"], "loadavg_end": raw["loadavg_end"], "redis": raw["redis"],
             "params": {k: v for k, v in p.items() if k not in ("raw",)}, "runs": []}
        md += ["## %s" % raw["model_id"], "",
               "- Model file: `%s`; prompt text: %s (%.2f tokens/word)" % (raw["model"], raw["text_source"],
                                                                        raw.get("tokens_per_word", 0)),
               "- Server: `strata serve -c %d --parallel %d --kv-budget %s` (MiB of engine KV memory; paged KV, "
               "engine prefix caching on as by default), store chunk 256 tokens (default), raw f16 chunks; "
               "host tier %s, disk tier %s (in %s), Redis %s maxmemory %s allkeys-lru, private, flushed per run"
               % (p["ctx"], p["parallel"], p["kv_budget"], p["host_bytes"], p["disk_bytes"], p["work"],
                  raw["redis"].split(" ")[2] if raw["redis"] else "?", p["redis_maxmemory"]),
               "- Load average at start: %s, at end: %s" % (raw["loadavg_start"], raw["loadavg_end"]),
               "- Multi-round QA: %d users x %d rounds, system prompt ~%d tokens, ~%d-token user turns, answers of "
               "%d tokens (ignore_eos, greedy), Poisson arrivals at %.2f req/s (round r+1 of a user waits for its "
               "answer r)" % (p["users"], p["rounds"], p["system_tokens"], p["question_tokens"], p["max_tokens"],
                              p["mr_rate"]),
               "- Long-document QA: %d documents x ~%d tokens, %d questions each, interleaved (all documents with "
               "question 0, then question 1, ...), Poisson arrivals at %.2f req/s, answers of %d tokens"
               % (p["docs"], p["doc_tokens"], p["questions"], p["ld_rate"], p["max_tokens"]), ""]
        for wl in ("multi_round", "long_doc"):
            rs = [r for r in runs if r["workload"] == wl]
            if not rs:
                continue
            off = next((r for r in rs if r["config"] == "off"), None)
            md += ["### %s" % ("Multi-round QA" if wl == "multi_round" else "Long-document QA"), "",
                   "| configuration | req | err | TTFT p50 ms | TTFT p99 ms | TTFT p50 ms, rounds/questions > 0 | "
                   "req/s | prompt tok/s | cached / prompt tokens | from store | throughput vs off | "
                   "TTFT p50 vs off | answers = off |",
                   "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in rs:
                row = {k: v for k, v in r.items() if k != "per_request"}
                if off and r.get("requests"):
                    row["throughput_vs_off"] = r["prompt_tokens_per_s"] / off["prompt_tokens_per_s"]
                    row["req_per_s_vs_off"] = r["requests_per_s"] / off["requests_per_s"]
                    row["ttft_p50_speedup_vs_off"] = off["ttft_p50_ms"] / r["ttft_p50_ms"]
                m["runs"].append(row)
                if not r.get("requests"):
                    md.append("| %s | 0 | %d | - | - | - | - | - | - | - | - | - | - |" % (CONFIG_LABEL[r["config"]], r["errors"]))
                    continue
                rep = r.get("ttft_p50_ms_repeat")
                md.append("| %s | %d | %d | %.0f | %.0f | %s | %.2f | %.0f | %.1f%% | %.1f%% | %s | %s | %s |" % (
                    CONFIG_LABEL[r["config"]], r["requests"], r["errors"], r["ttft_p50_ms"], r["ttft_p99_ms"],
                    "%.0f" % rep if rep is not None else "-", r["requests_per_s"], r["prompt_tokens_per_s"],
                    100 * r["cached_ratio"], 100 * r["store_cached_ratio"],
                    "%.2fx" % row["throughput_vs_off"] if "throughput_vs_off" in row else "-",
                    "%.2fx" % row["ttft_p50_speedup_vs_off"] if "ttft_p50_speedup_vs_off" in row else "-",
                    "%d/%d" % (r.get("answers_equal_to_off", 0), r["requests"])))
            md.append("")
        summary["models"].append(m)

    # Plots: TTFT p50/p99 and prompt throughput per configuration, one panel per (model, workload).
    panels = [(raw["model_id"], wl, [r for r in raw["runs"] if r["workload"] == wl and r.get("requests")])
              for raw in raws for wl in ("multi_round", "long_doc")]
    panels = [pn for pn in panels if pn[2]]
    for kind in ("ttft", "throughput"):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
        for ax, (mid, wl, rs) in zip(axes[0], panels):
            x = np.arange(len(rs))
            names = [r["config"] for r in rs]
            if kind == "ttft":
                ax.bar(x - 0.2, [r["ttft_p50_ms"] for r in rs], 0.4, label="p50")
                ax.bar(x + 0.2, [r["ttft_p99_ms"] for r in rs], 0.4, label="p99")
                ax.set_ylabel("TTFT (ms)")
                ax.legend(fontsize=8)
            else:
                off = next((r for r in rs if r["config"] == "off"), None)
                vals = [r["prompt_tokens_per_s"] for r in rs]
                bars = ax.bar(x, vals, 0.6, color="tab:green")
                ax.set_ylabel("prompt tokens / s")
                if off:
                    for b, r in zip(bars, rs):
                        ax.annotate("%.2fx" % (r["prompt_tokens_per_s"] / off["prompt_tokens_per_s"]),
                                    (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
            ax.set_xticks(x)
            ax.set_xticklabels(names)
            ax.set_title("%s\n%s" % (mid, "multi-round QA" if wl == "multi_round" else "long-document QA"), fontsize=9)
        fig.suptitle("strata serve, KV cache store tiers (%s, %d cores; %s)" % (mach["cpu"], mach["cores"], summary["date"]),
                     fontsize=9)
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(os.path.join(a.out_dir, "%s.%s" % (kind, ext)), dpi=110)
        plt.close(fig)

    if a.notes and os.path.exists(a.notes):
        with open(a.notes) as f:
            md += ["## Notes", "", f.read().strip(), ""]
    with open(os.path.join(a.out_dir, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(a.out_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n".join(md))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--build", default=os.path.join(ROOT, "build"))
    r.add_argument("--out", required=True)
    r.add_argument("--work", default=os.path.join(ROOT, "bench/out/workloads"))
    r.add_argument("--configs", default=",".join(CONFIGS))
    r.add_argument("--workloads", default="multi_round,long_doc")
    r.add_argument("--ctx", type=int, default=2048)
    r.add_argument("--parallel", type=int, default=4)
    r.add_argument("--kv-budget", default="12", help="engine KV memory, MiB")
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--nice", type=int, default=5, help="nice level of strata serve")
    r.add_argument("--host-bytes", default="1G")
    r.add_argument("--disk-bytes", default="2G")
    r.add_argument("--redis-maxmemory", default="1gb")
    r.add_argument("--users", type=int, default=6)
    r.add_argument("--rounds", type=int, default=4)
    r.add_argument("--system-tokens", type=int, default=1000)
    r.add_argument("--question-tokens", type=int, default=60)
    r.add_argument("--max-tokens", type=int, default=24)
    r.add_argument("--mr-rate", type=float, default=2.0, help="multi-round QA arrivals, requests/s")
    r.add_argument("--docs", type=int, default=8)
    r.add_argument("--doc-tokens", type=int, default=1500)
    r.add_argument("--questions", type=int, default=3)
    r.add_argument("--ld-rate", type=float, default=2.0, help="long-document QA arrivals, requests/s")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--calib-words", type=int, default=400, help="words of the tokens-per-word calibration prompt")
    r.set_defaults(func=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("raw", nargs="+")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--command", default="bench/workloads/run.sh")
    p.add_argument("--notes", default="")
    p.set_defaults(func=cmd_report)
    a = ap.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
