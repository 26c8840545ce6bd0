#!/usr/bin/python3
"""Load generator for an OpenAI-compatible /v1/completions endpoint (strata
serve, llama-server, vLLM): N concurrent streaming clients, each sending
requests back to back; reports throughput and TTFT/TPOT p50/p99.

Standard library only. Writes JSON (--json) and prints a markdown row per
concurrency level.

  bench/serving/load.py --url http://127.0.0.1:8080 --model strata-default \
      --concurrency 1,4,16,32 --requests 64 --prompt-words 200 --max-tokens 64
"""
import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse


def one_request(url, model, prompt, max_tokens, api_key):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}})
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError("HTTP %d: %s" % (resp.status, resp.read()[:200]))
    first = None
    tokens = 0
    chunks = 0
    cached = 0
    buf = b""
    while True:
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
                break
            j = json.loads(data)
            if j["choices"] and j["choices"][0].get("text"):
                chunks += 1
            if j.get("usage"):
                tokens = j["usage"]["completion_tokens"]
                cached = j["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
            elif j["choices"] and j["choices"][0].get("text") and first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    conn.close()
    if tokens == 0:
        tokens = chunks  # a server that sends no usage: one token per text chunk
    ttft = (first or end) - t0
    tpot = (end - (first or end)) / max(tokens - 1, 1)
    return ttft, tpot, tokens, cached, end - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def run_level(args, conc, prompts):
    results, errors = [], []
    lock = threading.Lock()
    todo = list(range(args.requests))

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            try:
                r = one_request(args.url, args.model, prompts[i % len(prompts)], args.max_tokens, args.api_key)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(r[2] for r in results)
    return {
        "concurrency": conc, "requests": len(results), "errors": len(errors), "wall_s": wall,
        "output_tok_per_s": toks / wall if wall > 0 else 0,
        "ttft_p50_ms": 1000 * pct([r[0] for r in results], 50), "ttft_p99_ms": 1000 * pct([r[0] for r in results], 99),
        "tpot_p50_ms": 1000 * pct([r[1] for r in results], 50), "tpot_p99_ms": 1000 * pct([r[1] for r in results], 99),
        "cached_prompt_tokens": sum(r[3] for r in results),
        "first_error": errors[0] if errors else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="strata")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--prompt-words", type=int, default=100)
    ap.add_argument("--shared-prefix-words", type=int, default=0, help="words every prompt starts with (system prompt)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rng = random.Random(1)
    words = "the of and a to in is was that for on with as by at from his her it an were are which this be or".split()
    prefix = " ".join(rng.choice(words) for _ in range(args.shared_prefix_words))

    def prompts_for(level):
        # New prompts for every level: a server that caches prompts per slot
        # (llama-server) must not be served the previous level's prompts.
        r = random.Random(1000 + level)
        return [(prefix + " " + " ".join(r.choice(words) for _ in range(args.prompt_words))).strip()
                for _ in range(max(args.requests, 1))]
    rows = []
    print("| label | clients | requests | errors | out tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | cached prompt tok |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for conc in [int(c) for c in args.concurrency.split(",")]:
        r = run_level(args, conc, prompts_for(conc))
        r["label"] = args.label
        rows.append(r)
        if r["first_error"]:
            print("first error: " + r["first_error"], file=sys.stderr)
        print("| %s | %d | %d | %d | %.1f | %.0f | %.0f | %.1f | %.1f | %d |" % (
            args.label, conc, r["requests"], r["errors"], r["output_tok_per_s"], r["ttft_p50_ms"], r["ttft_p99_ms"],
            r["tpot_p50_ms"], r["tpot_p99_ms"], r["cached_prompt_tokens"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
