#!/usr/bin/python3
"""Turns bench/serving/run.sh's raw JSON into results.md and plots.

usage: report.py RAW_DIR OUT_DIR
"""
import json
import os
import re
import sys

SERVERS = [("strata-paged", "Strata, paged KV"), ("strata-virtual", "Strata, virtual KV (vAttention)"),
           ("llama-server", "llama-server")]


def load(path):
    return json.load(open(path)) if os.path.exists(path) else None


def metric(text, name):
    m = re.search(r"^" + re.escape(name) + r" ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def row(label, r):
    return (f"| {label} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['output_tok_per_s']:.1f} | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['tpot_p50_ms']:.1f} | {r['tpot_p99_ms']:.1f} |")


def main():
    raw, out = sys.argv[1], sys.argv[2]
    machine = open(os.path.join(raw, "machine.txt")).read().strip().splitlines()
    conc = {k: load(os.path.join(raw, f"concurrency-{k}.json")) for k, _ in SERVERS}
    md = ["# Serving: Strata vs llama-server, paged vs virtual KV, prefix caching", ""]
    md += [f"- {line}" for line in machine]
    md += ["- Command: `bench/serving/run.sh` (from the repository root; see its header for arguments)",
           "- Client: `bench/serving/load.py`, streaming `/v1/completions`, greedy, `ignore_eos`; each client sends "
           "its requests back to back. TTFT is measured to the first text chunk; TPOT is (end - first) / (tokens - 1).",
           "- All servers ran one after another in the same run, on the same model and prompts; compare them "
           "within this file only.", ""]
    md += ["## Concurrent clients (~200-word prompts, 64 output tokens)", "",
           "| server | clients | requests | errors | out tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, label in SERVERS:
        for r in conc[k] or []:
            md.append(row(label, r))
    if conc["strata-paged"] and conc["llama-server"]:
        md += ["", "Throughput ratio, Strata (paged) / llama-server, by clients: " + ", ".join(
            f"{a['concurrency']}: {a['output_tok_per_s'] / b['output_tok_per_s']:.2f}x"
            for a, b in zip(conc["strata-paged"], conc["llama-server"]) if b["output_tok_per_s"] > 0)]
    mv = os.path.join(raw, "metrics-strata-virtual.txt")
    if os.path.exists(mv):
        t = open(mv).read()
        maps, ahead = metric(t, "strata_kv_page_maps_total"), metric(t, "strata_kv_ahead_page_maps_total")
        ms, wait = metric(t, "strata_kv_map_seconds_total"), metric(t, "strata_kv_map_wait_seconds_total")
        if maps is not None:
            md += ["", f"Virtual KV memory over the whole concurrency run: {maps:.0f} pages mapped"
                   + (f", {ahead:.0f} of them by the background mapper during forward passes" if ahead is not None else "")
                   + f"; {ms:.3f} s mapping in all"
                   + (f", {wait:.3f} s of it on the engine thread (Reserve)" if wait is not None else "") + "."]
    md += ["", "## Shared system prompt (~250 shared words + ~20 unique, 16 output tokens, 8 clients, 32 requests)", "",
           "| server | out tok/s | TTFT p50 ms | TTFT p99 ms | cached prompt tokens |", "|---|---:|---:|---:|---:|"]
    for name in ["strata-on", "strata-off", "llama-server"]:
        for r in load(os.path.join(raw, f"prefix-{name}.json")) or []:
            md.append(f"| {r['label']} | {r['output_tok_per_s']:.1f} | {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | "
                      f"{r['cached_prompt_tokens']} |")
    md.append("")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for k, label in SERVERS:
            rows = conc[k]
            if not rows:
                continue
            x = [r["concurrency"] for r in rows]
            axes[0].plot(x, [r["output_tok_per_s"] for r in rows], marker="o", label=label)
            axes[1].plot(x, [r["ttft_p50_ms"] for r in rows], marker="o", label=label)
            axes[2].plot(x, [r["tpot_p50_ms"] for r in rows], marker="o", label=label)
        for ax, title in zip(axes, ["output tokens/s", "TTFT p50 (ms)", "TPOT p50 (ms)"]):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(os.path.join(out, f"results.{ext}"))
        md += ["![throughput, TTFT and TPOT by clients](results.png)", ""]
    except ImportError:
        md += ["(plots need python3-matplotlib)", ""]
    open(os.path.join(out, "results.md"), "w").write("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
