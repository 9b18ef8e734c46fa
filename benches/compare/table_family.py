#!/usr/bin/env python3
"""Markdown tables from run_family.sh's JSON lines: per network and (batch, threads), each
engine's median of the per-round medians (the p10-p90 of that round), and the ratios."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    engine = r["engine"].split()[0]
    by.setdefault(r["model"], {}).setdefault((r["batch"], r["threads"]), {}).setdefault(engine, []).append(r)


def pick(runs):
    runs = sorted(runs, key=lambda r: r["median_ms"])
    return runs[len(runs) // 2]


for model, cfgs in by.items():
    kernel = pick(next(iter(cfgs.values()))["convnet"]).get("gemm_kernel", "")
    print(f"\n{model} (convnet GEMM kernel: {kernel}, {len(next(iter(cfgs.values()))['convnet'])} rounds):\n")
    print("| batch | threads | convnet median ms (p10-p90) | onnxruntime median ms (p10-p90) | convnet / ort latency | convnet img/s | ort img/s | convnet / ort throughput | convnet RSS MiB | ort RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (batch, threads), e in sorted(cfgs.items()):
        c, o = pick(e["convnet"]), pick(e["onnxruntime"])
        print(f"| {batch} | {threads} | {c['median_ms']:.2f} ({c['p10_ms']:.2f}-{c['p90_ms']:.2f}) | {o['median_ms']:.2f} ({o['p10_ms']:.2f}-{o['p90_ms']:.2f}) "
              f"| {c['median_ms'] / o['median_ms']:.2f} | {c['images_per_s']:.1f} | {o['images_per_s']:.1f} | {c['images_per_s'] / o['images_per_s']:.2f} "
              f"| {c['peak_rss_mib']:.0f} | {o['peak_rss_mib']:.0f} |")
