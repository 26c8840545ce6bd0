#!/usr/bin/python3
"""Merges strata bench and llama-bench JSON into a markdown table and a plot.

usage: report.py RAW_DIR OUT_DIR
"""
import glob
import json
import os
import platform
import subprocess
import sys


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = open("/proc/cpuinfo").read()
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    except OSError:
        isa = []
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {' '.join(isa)}, {platform.platform()}"


def test_name(r):
    n_prompt, n_gen, depth = r["n_prompt"], r["n_gen"], r.get("n_depth", r.get("depth", 0))
    name = f"pp{n_prompt}" if n_prompt > 0 else f"tg{n_gen}"
    return name + (f" @ d{depth}" if depth else "")


def main():
    raw, out = sys.argv[1], sys.argv[2]
    rows = {}  # (model, test) -> dict
    bandwidth = None
    for path in sorted(glob.glob(os.path.join(raw, "strata-*.json"))):
        model = os.path.basename(path)[len("strata-"):-len(".json")]
        data = json.load(open(path))
        bandwidth = data.get("read_bandwidth_gbs") or bandwidth
        for r in data["results"]:
            key = (model, test_name(r))
            row = rows.setdefault(key, {})
            row["strata"] = r["tokens_per_second"]
            row["strata_sd"] = r["stddev"]
            if r.get("bytes_per_token"):
                row["gbs"] = r["bytes_per_token"] * r["tokens_per_second"] / 1e9
    for path in sorted(glob.glob(os.path.join(raw, "llama-*.json"))):
        model = os.path.basename(path)[len("llama-"):-len(".json")]
        try:
            data = json.load(open(path))
        except json.JSONDecodeError:
            continue
        for r in data:
            key = (model, test_name(r))
            rows.setdefault(key, {})["llama"] = r["avg_ts"]
            rows[key]["llama_sd"] = r["stddev_ts"]

    lines = ["| model | test | Strata t/s | llama.cpp t/s | Strata / llama.cpp | Strata GB/s | % of bandwidth |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    behind = []
    for (model, test), r in sorted(rows.items()):
        s, l = r.get("strata"), r.get("llama")
        ratio = f"{s / l:.2f}x" if s and l else ""
        if s and l and s < l:
            behind.append(f"{model} {test}: {s / l:.2f}x")
        gbs = f"{r['gbs']:.1f}" if "gbs" in r else ""
        pct = f"{100 * r['gbs'] / bandwidth:.0f}%" if "gbs" in r and bandwidth else ""
        fmt = lambda v, sd: f"{v:.1f} ± {sd:.1f}" if v else ""
        lines.append(f"| {model} | {test} | {fmt(s, r.get('strata_sd', 0))} | {fmt(l, r.get('llama_sd', 0))} | "
                     f"{ratio} | {gbs} | {pct} |")
    md = ["# Strata vs llama.cpp", "", f"Machine: {machine()}", ""]
    if bandwidth:
        md.append(f"Measured read bandwidth (strata bench, same threads): {bandwidth:.1f} GB/s")
        md.append("")
    md += lines
    md += ["", "Cells where Strata is behind llama.cpp: " + ("; ".join(behind) if behind else "none"), ""]
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "results.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(md))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: apt-get install python3-matplotlib for the plot)")
        return
    keys = sorted(rows)
    labels = [f"{m}\n{t}" for m, t in keys]
    s = [rows[k].get("strata", 0) for k in keys]
    l = [rows[k].get("llama", 0) for k in keys]
    fig, ax = plt.subplots(figsize=(max(8, len(keys) * 0.9), 5))
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], s, 0.4, label="Strata")
    ax.bar([i + 0.2 for i in x], l, 0.4, label="llama.cpp")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("tokens / s")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Strata vs llama.cpp (same GGUF, same threads)")
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(os.path.join(out, f"results.{ext}"), dpi=110)


if __name__ == "__main__":
    main()
