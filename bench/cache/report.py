#!/usr/bin/python3
"""Turns tier_bench's raw.json into results.json (summary), results.md and plots.

usage: report.py RAW_JSON OUT_DIR
"""
import json
import os
import sys


def gbs(t):
    return t["gbs_median"] if t else None


def f(v, nd=2):
    return "" if v is None else f"{v:.{nd}f}"


def pct(v):
    return "" if v is None else f"{100 * v:.0f}%"


ENCODINGS = ["raw", "lz4", "zstd", "int8", "int8+zstd"]
VARIANTS = ["io_uring", "pread", "io_uring+O_DIRECT", "pread+O_DIRECT"]


def ordered(d, order=ENCODINGS):
    return sorted(d.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def main():
    raw_path, out = sys.argv[1], sys.argv[2]
    raw = json.load(open(raw_path))
    m = raw["machine"]
    seq = raw["sequential"]
    seq_read = max(gbs(seq["read_buffered_cold"]), gbs(seq["read_direct"]))
    summary = {"date": raw["date"], "command": raw["command"], "machine": m,
               "loadavg_start": raw["loadavg_start"], "loadavg_end": raw["loadavg_end"],
               "sequential_gbs": {k: gbs(seq[k]) for k in
                                  ("write_direct_fsync", "read_direct", "read_buffered_cold", "read_buffered_warm")},
               "shapes": {}}
    md = ["# KV cache store: tier bandwidth vs this machine's limits", "",
          f"- Date: {raw['date']}",
          f"- Command: `{raw['command']}`",
          f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.0f} GiB RAM, {m['kernel']}",
          f"- Disk tier directory's filesystem: `{m['disk_tier_fs']}`; block devices: `{m['block_devices']}`",
          f"- Load average (1/5/15 min) at start: {raw['loadavg_start']}, at end: {raw['loadavg_end']} "
          f"(shared machine: other builds ran meanwhile; read the ratios, absolutes are noisy)",
          f"- Redis: {raw.get('redis_server', '').strip()} (private, `--save '' --appendonly no`, 127.0.0.1 TCP)",
          f"- Chunks of {raw['chunk_tokens']} tokens, f16 KV; medians of {raw['reps']} repetitions; "
          f"GB = 1e9 bytes. Loads = Get + ChunkReader::Open (header, tokens verified) + DecodeLayer of every layer "
          f"(section checksums verified) into contiguous KV memory, all chunks' Gets in flight at once.",
          "- These numbers are the store path measured directly (tiers + chunk reader), not end-to-end TTFT; "
          "the engine path (scheduler + layer-wise loading) is measured by bench/cache/layerwise.sh (layerwise.md).",
          ""]
    md += ["## Sequential I/O on the disk tier's filesystem (the physical limit)", "",
           "| what | GB/s |", "| --- | ---: |",
           f"| write, O_DIRECT 4 MiB blocks, fsync ({seq['file_bytes'] >> 20} MiB file) | {f(gbs(seq['write_direct_fsync']))} |",
           f"| read, O_DIRECT 4 MiB blocks | {f(gbs(seq['read_direct']))} |",
           f"| read, buffered, file's pages dropped (fadvise DONTNEED) | {f(gbs(seq['read_buffered_cold']))} |",
           f"| read, buffered, warm page cache | {f(gbs(seq['read_buffered_warm']))} |", ""]

    plot_bw = {}
    plot_ttft = {}
    shape_names = sorted(raw["shapes"], key=lambda n: (n.startswith("qwen"), n))
    for name in shape_names:
        s = raw["shapes"][name]
        chunk_mib = s["chunk_kv_bytes"] / 2**20
        sm = summary["shapes"][name] = {"chunk_kv_bytes": s["chunk_kv_bytes"], "chunks": s["chunks"],
                                        "kv_source": s["kv_source"]}
        host = s["host"]
        memcpy = gbs(host["memcpy"])
        md += [f"## {name}: {s['n_layers']} layers x {s['n_kv_heads']} KV heads x head dim {s['head_dim']}, "
               f"{chunk_mib:.2f} MiB of KV per chunk, {s['chunks']} chunks", "",
               f"KV source: {s['kv_source']}" + (" (seeded random weights from tools/synth/make_model.py "
                                                 "--preset qwen2.5-0.5b; weights q8_0, KV f16)" if "qwen" in s["kv_source"] else "") + ".", "",
               "### Host tier vs memcpy", "",
               f"memcpy of the same bytes into the same KV rows (per layer, per chunk): **{f(memcpy)} GB/s**; "
               f"one {s['chunks'] * chunk_mib:.0f} MiB memcpy call: {f(gbs(host['memcpy_one_call']))} GB/s.", "",
               "| encoding | size / raw f16 | load GB/s (of KV) | load / memcpy | Put GB/s (stored bytes) | encode GB/s (of KV) |",
               "| --- | ---: | ---: | ---: | ---: | ---: |"]
        sm["memcpy_gbs"] = memcpy
        sm["host"] = {}
        for e, j in ordered(host["encodings"]):
            sm["host"][e] = {"load_gbs": gbs(j["load"]), "load_vs_memcpy": j["load_vs_memcpy"],
                             "size_ratio": j["ratio_to_kv"], "encode_gbs": gbs(j["encode"])}
            md.append(f"| {e} | {f(j['ratio_to_kv'], 3)} | {f(gbs(j['load']))} | {pct(j['load_vs_memcpy'])} | "
                      f"{f(gbs(j['put']))} | {f(gbs(j['encode']))} |")
        md += ["", "### Disk tier vs sequential I/O of the same disk", "",
               f"Cold = each chunk file's pages dropped with posix_fadvise(DONTNEED) before the load. "
               f"Fetch = Get only (read + tier checksum); load = fetch + open + decode. Put = all chunks put, "
               f"then Flush (each write fsynced, renamed, directory fsynced). Sequential read limit used for ratios: "
               f"{f(seq_read)} GB/s; write limit: {f(gbs(seq['write_direct_fsync']))} GB/s.", "",
               "| encoding | I/O | Put+fsync GB/s (file bytes) | / seq write | fetch cold GB/s (file bytes) | / seq read | "
               "fetch warm GB/s | / page-cache read | load cold GB/s (KV) | load warm GB/s (KV) | warm / memcpy |",
               "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        sm["disk"] = {}
        for e, variants in ordered(s["disk"]):
            for v, j in ordered(variants, VARIANTS):
                io = v + ("" if j["o_direct_in_use"] or "O_DIRECT" not in v else " (fell back: no O_DIRECT)")
                sm["disk"][f"{e}/{v}"] = {"put_fsync_gbs": gbs(j["put_fsync"]), "put_vs_seq_write": j["put_vs_seq_write"],
                                          "fetch_cold_gbs": gbs(j["fetch_cold"]),
                                          "fetch_cold_vs_seq_read": j["fetch_cold_vs_seq_read"],
                                          "fetch_warm_gbs": gbs(j["fetch_warm"]),
                                          "load_cold_gbs": gbs(j["load_cold"]), "load_warm_gbs": gbs(j["load_warm"])}
                md.append(f"| {e} | {io} | {f(gbs(j['put_fsync']))} | {pct(j['put_vs_seq_write'])} | "
                          f"{f(gbs(j['fetch_cold']))} | {pct(j['fetch_cold_vs_seq_read'])} | {f(gbs(j['fetch_warm']))} | "
                          f"{pct(gbs(j['fetch_warm']) / gbs(seq['read_buffered_warm']))} | {f(gbs(j['load_cold']))} | "
                          f"{f(gbs(j['load_warm']))} | {pct(gbs(j['load_warm']) / memcpy)} |")
        if "redis" in s:
            md += ["", "### Redis tier vs redis-benchmark (same server, same value sizes)", "",
                   "Tier sequential = one Get/Put at a time (vs `redis-benchmark -c 1 -P 1`); tier x4 = all chunks in "
                   "flight on the tier's 4 connections (vs `-c 4 -P 1`). GB/s of value bytes.", "",
                   "| encoding | value MiB | tier GET | rb GET -c1 | ratio | tier SET | rb SET -c1 | ratio | "
                   "tier GET x4 | rb GET -c4 | ratio | tier SET x4 | rb SET -c4 | ratio | load GB/s (KV) |",
                   "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            sm["redis"] = {}
            for e, j in ordered(s["redis"]):
                rb1 = j.get("redis_benchmark_c1", {})
                rb4 = j.get("redis_benchmark_c4", {})
                g = lambda rb, op: rb.get(op, {}).get("gbs")
                sm["redis"][e] = {"get_gbs": gbs(j["get_seq"]), "set_gbs": gbs(j["put_seq"]),
                                  "get4_gbs": gbs(j["get_4"]), "set4_gbs": gbs(j["put_4"]), "load_gbs": gbs(j["load"]),
                                  "rb_get_c1_gbs": g(rb1, "get"), "rb_set_c1_gbs": g(rb1, "set"),
                                  "rb_get_c4_gbs": g(rb4, "get"), "rb_set_c4_gbs": g(rb4, "set"),
                                  "redis_benchmark_commands": [rb1.get("command"), rb4.get("command")]}
                r = lambda k: pct(j.get(k)) if j.get(k) is not None else ""
                md.append(f"| {e} | {j['value_bytes'] / 2**20:.2f} | {f(gbs(j['get_seq']))} | {f(g(rb1, 'get'))} | "
                          f"{r('get_seq_vs_rb_c1')} | {f(gbs(j['put_seq']))} | {f(g(rb1, 'set'))} | {r('put_seq_vs_rb_c1')} | "
                          f"{f(gbs(j['get_4']))} | {f(g(rb4, 'get'))} | {r('get_4_vs_rb_c4')} | {f(gbs(j['put_4']))} | "
                          f"{f(g(rb4, 'set'))} | {r('put_4_vs_rb_c4')} | {f(gbs(j['load']))} |")
            cmd = s["redis"]["raw"].get("redis_benchmark_c1", {}).get("command")
            if cmd:
                md += ["", f"redis-benchmark command (raw values): `{cmd}` (and `-c 4`)."]
        t = s["ttft"]
        md += ["", f"### Time to first token on a full hit: {t['prompt_tokens']} tokens, {t['chunks']} chunks, "
               f"{t['kv_bytes'] / 2**20:.1f} MiB of KV", ""]
        pure = t["transfer_seconds_at_memcpy"]
        md.append(f"Pure transfer time of the KV bytes: {pure * 1e3:.2f} ms at memcpy bandwidth, "
                  f"{t['transfer_seconds_at_seq_read'] * 1e3:.2f} ms at the disk's sequential read bandwidth.")
        if "prefill" in t:
            md.append(f"Prefill (recompute) of the prompt: **{t['prefill']['seconds_median'] * 1e3:.0f} ms** "
                      f"({t['prefill_tokens_per_second']:.0f} tok/s, {raw['threads']} threads); a hit still computes "
                      f"the last token: {t['last_token_forward']['seconds_median'] * 1e3:.1f} ms.")
        else:
            md.append("No model of this shape was run (synthetic KV), so no prefill time: loads only.")
        md += ["", "| tier / encoding | load ms | load / pure transfer (memcpy) | speedup vs prefill | TTFT on hit (est.) ms | TTFT speedup |",
               "| --- | ---: | ---: | ---: | ---: | ---: |"]
        sm["ttft"] = {"prompt_tokens": t["prompt_tokens"], "kv_bytes": t["kv_bytes"], "transfer_ms_at_memcpy": pure * 1e3,
                      "prefill_ms": t["prefill"]["seconds_median"] * 1e3 if "prefill" in t else None, "loads": {}}
        keep = ["host/raw", "host/lz4", "host/zstd", "host/int8",
                "disk warm/raw/io_uring", "disk cold/raw/io_uring", "disk cold/raw/pread", "disk cold/raw/io_uring+O_DIRECT",
                "disk cold/lz4/io_uring", "disk cold/zstd/io_uring", "disk cold/int8/io_uring",
                "redis/raw", "redis/lz4", "redis/zstd", "redis/int8"]
        for k in keep:
            l = t["loads"].get(k)
            if not l:
                continue
            sm["ttft"]["loads"][k] = {"load_ms": l["load_seconds"] * 1e3, "load_vs_transfer": l["load_vs_memcpy_transfer"],
                                      "speedup_vs_prefill": l.get("speedup_vs_prefill"), "ttft_speedup": l.get("ttft_speedup")}
            md.append(f"| {k} | {l['load_seconds'] * 1e3:.2f} | {l['load_vs_memcpy_transfer']:.1f}x | "
                      f"{f(l.get('speedup_vs_prefill'), 1)}{'x' if 'speedup_vs_prefill' in l else ''} | "
                      f"{f(l['ttft_hit_estimate_seconds'] * 1e3 if 'ttft_hit_estimate_seconds' in l else None, 1)} | "
                      f"{f(l.get('ttft_speedup'), 1)}{'x' if 'ttft_speedup' in l else ''} |")
        md.append("")
        plot_bw[name] = {
            "memcpy": memcpy,
            "host raw": gbs(host["encodings"]["raw"]["load"]),
            "host lz4": gbs(host["encodings"]["lz4"]["load"]),
            "host zstd": gbs(host["encodings"]["zstd"]["load"]),
            "host int8": gbs(host["encodings"]["int8"]["load"]),
            "disk seq read": seq_read,
            "disk fetch cold": gbs(s["disk"]["raw"]["io_uring"]["fetch_cold"]),
            "disk fetch warm": gbs(s["disk"]["raw"]["io_uring"]["fetch_warm"]),
            "page-cache read": gbs(seq["read_buffered_warm"]),
            "disk load cold": gbs(s["disk"]["raw"]["io_uring"]["load_cold"]),
            "disk load warm": gbs(s["disk"]["raw"]["io_uring"]["load_warm"]),
        }
        if "redis" in s:
            plot_bw[name]["redis-benchmark GET -c1"] = s["redis"]["raw"].get("redis_benchmark_c1", {}).get("get", {}).get("gbs")
            plot_bw[name]["redis tier GET"] = gbs(s["redis"]["raw"]["get_seq"])
            plot_bw[name]["redis load"] = gbs(s["redis"]["raw"]["load"])
        plot_ttft[name] = {"pure transfer": pure * 1e3}
        if "prefill" in t:
            plot_ttft[name]["prefill (recompute)"] = t["prefill"]["seconds_median"] * 1e3
        for k in ("host/raw", "disk warm/raw/io_uring", "disk cold/raw/io_uring", "disk cold/zstd/io_uring", "redis/raw"):
            if k in t["loads"]:
                plot_ttft[name][k] = t["loads"][k]["load_seconds"] * 1e3

    os.makedirs(out, exist_ok=True)
    json.dump(summary, open(os.path.join(out, "results.json"), "w"), indent=1)
    open(os.path.join(out, "results.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(md))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plots)")
        return

    def bars(data, ylabel, title, fname, log):
        shapes = list(data)
        labels = list(dict.fromkeys(k for s in shapes for k in data[s]))
        fig, ax = plt.subplots(figsize=(max(9, len(labels) * 0.9), 5))
        w = 0.8 / len(shapes)
        for i, s in enumerate(shapes):
            xs = [j + (i - (len(shapes) - 1) / 2) * w for j in range(len(labels))]
            vals = [data[s].get(k) or 0 for k in labels]
            b = ax.bar(xs, vals, w, label=s)
            for x, v in zip(xs, vals):
                if v:
                    ax.text(x, v, f"{v:.2g}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(os.path.join(out, f"{fname}.{ext}"), dpi=110)
        plt.close(fig)

    bars(plot_bw, "GB/s (log)", f"KV chunk tiers vs physical limits (256-token chunks, f16)\n{m['cpu']}, load avg {raw['loadavg_start']}",
         "tier_bandwidth", True)
    bars(plot_ttft, "ms (log)", "Full prefix hit: loading the KV vs recomputing it (2048-token prompt)", "ttft", True)


if __name__ == "__main__":
    main()
