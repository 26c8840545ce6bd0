#!/usr/bin/python3
"""Turns kv_bench's raw JSON into results.md and results.png/svg.

usage: report.py RAW_JSON OUT_DIR
"""
import json
import os
import sys


def ms(s):
    return f"{1e3 * s:.3f}" if s < 0.01 else f"{1e3 * s:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if b else ""


def pct(v):
    return f"{100 * v:.0f}%"


def paired_ratio(r, key):
    """Median over reps of virtual_i / paged_i: the two ran back to back, so
    each pair saw the same machine load."""
    p, v = r["paged"][key]["samples_s"], r["virtual"][key]["samples_s"]
    q = sorted(b / a for a, b in zip(p, v))
    n = len(q)
    return q[n // 2] if n % 2 else 0.5 * (q[n // 2 - 1] + q[n // 2])


ATT_KEYS = {"decode_attention_all_layers": "decode attention (1 token, every layer)",
            "prefill_chunk_attention_one_layer": "prefill chunk attention (256 tokens, one layer)",
            "model_decode_step": "whole-model decode step (Reserve + Forward, 1 token)"}


def attention_table(raw):
    md = ["| what | depth | paged ms (median) | virtual ms (median) | virtual/paged, medians "
          "| virtual/paged, median of paired reps |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, title in ATT_KEYS.items():
        for r in raw["attention"]:
            p, v = r["paged"][key]["median_s"], r["virtual"][key]["median_s"]
            md.append(f"| {title} | {r['depth']} | {ms(p)} | {ms(v)} | {ratio(v, p)} | {paired_ratio(r, key):.2f}x |")
    return md


def capacity_table(raw):
    c = raw["capacity"]
    budget_mib = c["budget_bytes"] >> 20
    md = ["| KV memory | sequences in the budget | budget holding live KV | note |",
          "| --- | ---: | ---: | --- |"]
    p = c["paged_block16"]
    md.append(f"| paged, block 16 | {p['sequences']} | {pct(p['live_fraction'])} | stopped by: {p['stopped_by']} |")
    v = c["virtual_4k"]
    md.append(f"| virtual, {v['page_bytes'] >> 10} KiB pages | {v['sequences']} | {pct(v['live_fraction'])} "
              f"| stopped by: {v['stopped_by']} |")
    h = c["virtual_2m"]
    if "skipped" in h:
        md.append(f"| virtual, 2 MiB pages | ({h['computed_sequences']}) | ({pct(h['computed_live_fraction'])}) "
                  f"| not measured: {h['skipped']}; in parentheses: the count by arithmetic (whole 2 MiB pages per "
                  f"K or V plane per layer) |")
    else:
        md.append(f"| virtual, 2 MiB pages | {h['sequences']} | {pct(h['live_fraction'])} | stopped by: {h['stopped_by']} |")
    for key in sorted(k for k in c if k.startswith("static_")):
        s = c[key]
        md.append(f"| static reservation of {s['reserved_positions']} positions per sequence | {s['sequences']} "
                  f"| {pct(s['live_fraction'])} | budget / ({s['reserved_positions']} x {c['bytes_per_position']} B) |")
    return md, budget_mib


def map_table(raw):
    m = raw["map_ahead"]
    md = ["| scheduler | map_ahead | steps | total s | median step ms | decode step ms, median / mean | page maps "
          "| by the mapper | inline (in Reserve) | map_seconds (all threads) | map_wait_seconds (engine thread) "
          "| wait / run time |",
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(m["runs"]):
        md.append(f"| {i + 1} | {'true (background mapper)' if r['map_ahead'] else 'false (inline, baseline)'} "
                  f"| {r['steps']} | {r['total_s']:.2f} | {ms(r['step_median_s'])} "
                  f"| {ms(r['decode_step_median_s'])} / {ms(r['decode_step_mean_s'])} "
                  f"| {r['page_maps']} | {r['ahead_page_maps']} | {r['page_maps'] - r['ahead_page_maps']} "
                  f"| {1e3 * r['map_seconds']:.1f} ms | {1e3 * r['map_wait_seconds']:.1f} ms "
                  f"| {100 * r['map_wait_seconds'] / r['total_s']:.2f}% |")
    on = [r for r in m["runs"] if r["map_ahead"]]
    off = [r for r in m["runs"] if not r["map_ahead"]]
    w_on = sum(r["map_wait_seconds"] for r in on) / len(on)
    w_off = sum(r["map_wait_seconds"] for r in off) / len(off)
    t_on = sum(r["total_s"] for r in on) / len(on)
    t_off = sum(r["total_s"] for r in off) / len(off)
    md += ["", f"{raw['threads']} compute thread{'s' if raw['threads'] > 1 else ''}: the engine thread waited "
           f"{1e3 * w_off:.1f} ms for page mapping without the mapper and {1e3 * w_on:.1f} ms with it "
           f"({100 * (1 - w_on / w_off):.0f}% off the critical path), out of {t_off:.2f} s vs {t_on:.2f} s of steps. "
           f"Step time with the mapper / without, median over paired steps: all steps "
           f"**{m['paired_step_ratio_median']:.3f}x**, decode-only steps **{m['paired_decode_step_ratio_median']:.3f}x**."]
    return md


def plot(raw, one, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (apt-get install python3-matplotlib): no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 5, figsize=(23, 4.6))
    att = raw["attention"]
    depths = [r["depth"] for r in att]
    titles = {"decode_attention_all_layers": "decode attention (1 token, all layers)",
              "prefill_chunk_attention_one_layer": f"prefill chunk attention ({att[0]['chunk']} tokens, 1 layer)",
              "model_decode_step": "whole-model decode step"}
    for ax, key in zip(axes[:3], titles):
        for kind, marker in (("paged", "o"), ("virtual", "s")):
            ax.plot(depths, [1e3 * r[kind][key]["median_s"] for r in att], marker=marker, label=kind)
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [f"{d // 1024}K" for d in depths])
        ax.set_xlabel("context depth")
        ax.set_ylabel("median ms")
        ax.set_title(titles[key], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
    c = raw["capacity"]
    names, vals = [], []
    names.append("paged\nblock 16")
    vals.append(c["paged_block16"]["sequences"])
    names.append("virtual\n4 KiB")
    vals.append(c["virtual_4k"]["sequences"])
    h = c["virtual_2m"]
    names.append("virtual 2 MiB\n(computed)" if "skipped" in h else "virtual\n2 MiB")
    vals.append(h.get("computed_sequences", h.get("sequences")))
    for key in sorted(k for k in c if k.startswith("static_")):
        names.append(f"static\n{c[key]['reserved_positions']}")
        vals.append(c[key]["sequences"])
    ax = axes[3]
    bars = ax.bar(names, vals, color=["C0", "C1", "C2", "C7", "C7"][:len(vals)])
    ax.bar_label(bars)
    ax.set_ylabel("sequences")
    ax.set_title(f"sequences in {c['budget_bytes'] >> 20} MiB of KV "
                 f"(lengths {c['lengths']['min']}-{c['lengths']['max']})", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax = axes[4]
    groups = [(f"{raw['threads']} thr.", raw["map_ahead"]["runs"])]
    if one is not None:
        groups.append(("1 thr.", one["map_ahead"]["runs"]))
    labels, total, wait = [], [], []
    for name, runs in groups:
        for ahead in (False, True):
            sel = [r for r in runs if r["map_ahead"] == ahead]
            labels.append(f"{name}\n{'mapper' if ahead else 'inline'}")
            total.append(1e3 * sum(r["map_seconds"] for r in sel) / len(sel))
            wait.append(1e3 * sum(r["map_wait_seconds"] for r in sel) / len(sel))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], total, width=0.4, label="map_seconds (all threads)", color="C7")
    ax.bar([x + 0.2 for x in xs], wait, width=0.4, label="map_wait_seconds (engine thread)", color="C3")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("ms per run (mean)")
    ax.set_title("page mapping on / off the critical path (Scheduler, 8 seqs)", fontsize=10)
    ax.set_ylim(0, 1.35 * max(total + wait))
    ax.legend(fontsize=8, loc="upper center")
    m = raw["machine"]
    fig.suptitle(f"Strata paged vs virtual KV, {raw['model']['name'] or 'synthetic'} shape, {raw['threads']} threads; "
                 f"{m.get('cpu', '?')}, {m['nproc']} CPUs, load average {raw['loadavg_start']}; {raw['date']}", fontsize=10)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(os.path.join(out, f"results.{ext}"), dpi=110)


def main():
    raw_path, out = sys.argv[1], sys.argv[2]
    raw = json.load(open(raw_path))
    m, mo = raw["machine"], raw["model"]
    md = ["# Paged vs virtual (vAttention) KV memory", "",
          f"- Date: {raw['date']}",
          f"- Command: `{raw['command']}` (raw numbers: `raw/kv_bench.json`)",
          f"- Machine: {m.get('cpu', '?')}, nproc {m['nproc']}, {m['MemTotal'] / 2**20:.0f} GiB RAM, {m['kernel']}, "
          f"base page {m['page_size']} B, huge pages reserved: {m.get('HugePages_Total', 0)}",
          f"- Load average (1/5/15 min) at start: {raw['loadavg_start']}, at end: {raw['loadavg_end']}. "
          "A shared 2-core VM with other builds running: read the ratios, each measured side by side "
          "(the two memories alternate rep by rep), not the absolute times.",
          f"- Model: synthetic `{os.path.basename(mo['path'])}` (tools/synth/make_model.py --preset bench-90m --ctx 16384 "
          f"--type q8_0 --seed 1): {mo['n_layers']} layers, {mo['n_heads']} query heads, {mo['n_kv_heads']} KV heads, "
          f"head dim {mo['head_dim']}; fp16 KV, {mo['bytes_per_position']} B per position (K+V, all layers). "
          f"{raw['threads']} compute threads.",
          ""]
    md += ["## 1. Attention time by context depth", "",
           "The kernels are called exactly as `ForwardContext::Forward` calls them (the view's block table picks "
           "`AttentionCausalPaged` or `AttentionCausal`). KV filling: " + raw["kv_fill"] + " (so paged blocks are "
           "scattered through the pool as in serving); no prefill forward was run. Decode: one query token at "
           "position = depth, every layer's attention in turn (one step's worth). Prefill chunk: 256 query tokens at "
           "positions [depth, depth+256), one layer per repetition (cycling layers). Model decode step: `Reserve` + "
           "`ForwardContext::Forward` of one token at position = depth. Medians; reps: " +
           ", ".join(f"{k} {raw['attention'][0]['paged'][k]['reps']}" for k in raw["attention"][0]["paged"]) + ".", ""]
    md += attention_table(raw) + [""]
    cap, budget_mib = capacity_table(raw)
    c = raw["capacity"]
    md += [f"## 2. Sequences under a {budget_mib} MiB KV budget", "",
           f"Sequence lengths (prompt + output) uniform in [{c['lengths']['min']}, {c['lengths']['max']}] "
           f"(mt19937_64 seed {c['lengths']['seed']}), max context {c['max_positions']}. Each sequence takes a slot "
           "and `Reserve`s its full length, in order, until a `Reserve` (or `AcquireSlot`) fails. Live KV = sum of "
           "the admitted lengths x bytes per position, as a share of the budget. Virtual runs with the engine's "
           "default `map_ahead=true` and no `PrepareAhead`, so nothing is mapped past need; a static reservation is "
           "what a contiguous per-sequence cache holds (the full context for every sequence); the row for 2048 "
           "is the best case where the reservation equals the longest sequence.", ""]
    md += cap + [""]
    mr = raw["map_ahead"]
    md += ["## 3. Page mapping hidden behind compute", "",
           f"The real `Scheduler` (src/engine/scheduler.cpp: `Reserve` per sequence, then `PrepareAhead` for the "
           f"next step, then `Forward`) over a `VirtualKvCache` (4 KiB pages, fresh), "
           f"{mr['sequences']} requests submitted together, prompts {mr['prompt_tokens']['min']}-{mr['prompt_tokens']['max']} tokens (seeded), {mr['output_tokens']} "
           f"output tokens each (greedy, ignore_eos), step budget {mr['step_tokens']} tokens (chunked prefill "
           "first, then 8 sequences decoding together). `map_seconds`: all page mapping time on any thread; "
           "`map_wait_seconds`: time the engine thread spent inside `Reserve` (the critical path). Both modes "
           "run in one process at once: two Schedulers, each over its own cache, fed the same requests and stepped "
           "in lockstep (who goes first alternates); greedy sampling gives both the same batches, so step i of one "
           "is the same work as step i of the other, and their ratio is immune to the machine's load swings.", ""]
    md += map_table(raw) + [""]
    one_path = os.path.join(os.path.dirname(raw_path), "kv_bench_map_1thread.json")
    one = json.load(open(one_path)) if os.path.exists(one_path) else None
    if one is not None:
        md += ["### The same with 1 compute thread", "",
               f"On this {m['nproc']}-CPU machine, 2 compute threads leave no core for the mapper thread; one "
               f"compute thread leaves it one (load average during this run: {one['loadavg_start']} -> "
               f"{one['loadavg_end']}; raw: `raw/{os.path.basename(one_path)}`).", ""]
        md += map_table(one) + [""]
    notes_path = os.path.join(out, "NOTES.md")
    if os.path.exists(notes_path):
        md += ["## Reading the results", ""] + open(notes_path).read().strip().splitlines() + [""]
    open(os.path.join(out, "results.md"), "w").write("\n".join(md))
    plot(raw, one, out)


if __name__ == "__main__":
    main()
