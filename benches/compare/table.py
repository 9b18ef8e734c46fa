#!/usr/bin/env python3
"""Markdown table from run.sh's JSON lines: per (batch, threads), each engine's median of the
per-round medians, the spread (p10-p90 of the round with the median), and the ratio.
Effective GFLOP/s: the direct convolutions' 2 * multiply-adds over the time (Winograd does fewer)."""
import json
import statistics
import sys

GFLOP = 7.72  # the seed's ResNet50: 2 * multiply-adds per image (3.86 G), summed over its 53 convolutions and fc1000

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
kernels = []
for r in rows:
    engine = r["engine"].split()[0]  # convnet, onnxruntime, tract
    if engine == "convnet":
        # One convnet engine per GEMM micro-kernel (run.sh's KERNELS).
        engine = "convnet/" + r.get("gemm_kernel", "selected")
        if engine not in kernels:
            kernels.append(engine)
    by.setdefault((r["batch"], r["threads"]), {}).setdefault(engine, []).append(r)


def pick(runs):
    runs = sorted(runs, key=lambda r: r["median_ms"])
    return runs[len(runs) // 2]


for kernel in kernels:
    if len(kernels) > 1:
        print(f"\n{kernel.split('/', 1)[1]} kernel:\n")
    print("| batch | threads | convnet median ms (p10-p90) | onnxruntime median ms (p10-p90) | convnet / ort latency | convnet img/s | ort img/s | convnet effective GFLOP/s | convnet RSS MiB | ort RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (batch, threads), e in sorted(by.items()):
        if kernel not in e:
            continue
        c, o = pick(e[kernel]), pick(e["onnxruntime"])
        print(f"| {batch} | {threads} | {c['median_ms']:.1f} ({c['p10_ms']:.1f}-{c['p90_ms']:.1f}) | {o['median_ms']:.1f} ({o['p10_ms']:.1f}-{o['p90_ms']:.1f}) "
              f"| {c['median_ms'] / o['median_ms']:.2f} | {c['images_per_s']:.1f} | {o['images_per_s']:.1f} | {GFLOP * batch / c['median_ms'] * 1000:.0f} "
              f"| {c['peak_rss_mib']:.0f} | {o['peak_rss_mib']:.0f} |")

for peer in ("tract", "candle-onnx"):
    rows = [(k, e) for k, e in sorted(by.items()) if peer in e]
    if not rows:
        continue
    print()
    print(f"| batch | threads | convnet median ms | {peer} median ms (p10-p90) | {peer} / convnet latency | {peer} img/s | {peer} RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for (batch, threads), e in rows:
        c, t = pick(e[kernels[0]]), pick(e[peer])
        print(f"| {batch} | {threads} | {c['median_ms']:.1f} | {t['median_ms']:.1f} ({t['p10_ms']:.1f}-{t['p90_ms']:.1f}) "
              f"| {t['median_ms'] / c['median_ms']:.2f} | {t['images_per_s']:.1f} | {t['peak_rss_mib']:.0f} |")
