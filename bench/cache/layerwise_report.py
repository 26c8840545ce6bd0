#!/usr/bin/python3
"""Turns layerwise_bench's JSON into layerwise.md and layerwise.{png,svg}.

usage: layerwise_report.py LAYERWISE_JSON OUT_DIR
"""
import json
import os
import sys


def ms(x):
    return f"{1e3 * x:.1f}"


ORDER = ["host", "disk (warm)", "disk (cold)", "redis"]


def tier_order(run):
    return sorted(run["store"], key=lambda t: ORDER.index(t) if t in ORDER else len(ORDER))


def main():
    src, out = sys.argv[1], sys.argv[2]
    d = json.load(open(src))
    m = d["machine"]
    lines = [
        "# KV cache store: layer-wise loading, end to end",
        "",
        f"- Date: {d['date']}",
        f"- Command: `{d['command']}`",
        f"- Machine: {m.get('cpu', '?')}, {m['cores']} cores, {m['kernel']}",
        f"- Load average at start: {d['loadavg_start']}, at end: {d['loadavg_end']} "
        "(shared machine: read the ratios; absolutes are noisy)",
        f"- Model: `{d['model']}`; prompt = {d['prefix_tokens']} shared tokens + S new ones; chunks of "
        f"{d['chunk_tokens']} tokens; the prefix's KV is {d['prefix_kv_bytes'] / 2**20:.1f} MiB (f16, raw chunks); "
        f"{d['threads']} compute threads; medians of {d['reps']} runs.",
        "",
        "Every TTFT is measured by the scheduler (arrival to first token) through the real engine path. "
        "*recompute*: no cache. *ideal*: the prefix already in engine memory (engine prefix cache), only S tokens "
        "computed, nothing moved. *store*: a fresh engine whose store holds the prefix's chunks in one tier; the "
        "prefix is loaded layer by layer while the S tokens compute. *ready*: load start until every chunk's "
        "header and layer 0 were placed (the sequence waits this long before its pass); *all layers*: until every "
        "layer was placed; *pass waited*: time the forward pass spent in BeforeAttention waiting for a layer. "
        "*serial est.* = ideal + all-layers time (what a load-then-compute engine would take); *hidden* = share of "
        "the load time that did not add to TTFT over the ideal.",
        "",
    ]
    for run in d["runs"]:
        s = run["suffix_tokens"]
        lines += [
            f"## S = {s} new tokens",
            "",
            f"recompute TTFT **{ms(run['recompute_ttft'])} ms**, ideal TTFT **{ms(run['ideal_ttft'])} ms**.",
            "",
            "| tier | TTFT ms | vs recompute | ready ms | all layers ms | pass waited ms | serial est. ms | hidden |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in tier_order(run):
            l = run["store"][name]
            lines.append(
                f"| {name} | {ms(l['ttft'])} | {run['recompute_ttft'] / l['ttft']:.1f}x faster | {ms(l['ready_seconds'])} | "
                f"{ms(l['load_seconds'])} | {ms(l['layer_wait_seconds'])} | {ms(l['serial_estimate_ttft'])} | "
                f"{100 * l['hidden_fraction']:.0f}% |")
        below = sum(1 for t in run["store"].values() if t["ttft"] < t["serial_estimate_ttft"])
        lines += ["", f"Measured TTFT below the load-then-compute estimate in {below} of {len(run['store'])} tiers.", ""]
    lines += [
        "## Reading",
        "",
        "- The sequence starts computing once layer 0 of every chunk is in place (*ready*), a fraction of the full "
        "load time; later layers land while earlier layers compute, and the pass rarely waits for them "
        "(*pass waited*).",
        "- On this machine a whole prefix loads in roughly 5-20 ms from any tier, while computing the new tokens "
        "takes ~0.4 ms per token: the overlap can hide at most the compute time, so its gain is clearest with few "
        "new tokens (a full or near-full hit) and lost in run-to-run noise (about +-10% of TTFT) when hundreds of "
        "tokens are computed.",
        "- The large factor is reuse itself: a full hit answers in ~10-15 ms instead of re-prefilling the prompt.",
        "",
    ]
    open(os.path.join(out, "layerwise.md"), "w").write("\n".join(lines) + "\n")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    runs = d["runs"]
    tiers = tier_order(runs[0])
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        names = ["ideal"] + tiers
        ttft = [run["ideal_ttft"]] + [run["store"][t]["ttft"] for t in tiers]
        serial = [run["ideal_ttft"]] + [run["store"][t]["serial_estimate_ttft"] for t in tiers]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [1e3 * v for v in serial], 0.4, label="serial est. (load, then compute)", color="#bbbbbb")
        ax.bar([i + 0.2 for i in x], [1e3 * v for v in ttft], 0.4, label="measured (layer-wise)", color="#3070b0")
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("TTFT ms")
        ax.set_title(f"{d['prefix_tokens']} cached + {run['suffix_tokens']} new tokens\n(recompute {ms(run['recompute_ttft'])} ms)",
                     fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(os.path.join(out, f"layerwise.{ext}"), dpi=110)


if __name__ == "__main__":
    main()
