#!/usr/bin/env python3
"""Groups `bench_resnet50 --profile` output (the seed's Keras ResNet50, batch 1) by layer kind
and stage, as a markdown table with each group's share and effective GFLOP/s (the direct
convolution's 2 * multiply-adds over the time, whatever algorithm computed it).

    cargo run --release --example bench_resnet50 -- --threads 1 --iters 20 --profile \
        | python3 benches/compare/profile_table.py
"""
import re
import sys

STAGES = {2: (56, 64, 64, 256, 64), 3: (28, 128, 128, 512, 256), 4: (14, 256, 256, 1024, 512), 5: (7, 512, 512, 2048, 1024)}
KIND = {"1": "branch1 (1x1 projection shortcut)", "2a": "branch2a (1x1 reduce)", "2b": "branch2b (3x3)", "2c": "branch2c (1x1 expand + residual)"}


def flops(name):
    """2 * multiply-adds of one layer (None for layers without a GEMM worth counting)."""
    if name == "conv1":
        return 2 * 112 * 112 * 7 * 7 * 3 * 64
    if name == "fc1000":
        return 2 * 2048 * 1000
    m = re.match(r"res(\d)([a-f])/res\d[a-f]_branch(1|2[abc])$", name)
    if not m:
        return None
    stage, block, branch = int(m.group(1)), m.group(2), m.group(3)
    hw, f1, f2, f3, cin_a = STAGES[stage]
    cin = cin_a if block == "a" else f3
    pixels = hw * hw
    return 2 * pixels * {"1": cin * f3, "2a": cin * f1, "2b": 9 * f1 * f2, "2c": f2 * f3}[branch]


def group(name):
    m = re.match(r"res(\d)[a-f]/res\d[a-f]_branch(1|2[abc])$", name)
    return f"stage {m.group(1)} {KIND[m.group(2)]}" if m else name


groups = {}
for line in sys.stdin:
    m = re.match(r"^\s+(\S+)\s+([0-9.]+)\s+[0-9.]+%$", line)
    if not m:
        continue
    name, ms = m.group(1), float(m.group(2))
    g = groups.setdefault(group(name), [0, 0.0, 0])
    g[0] += 1
    g[1] += ms
    g[2] += flops(name) or 0

total_ms = sum(g[1] for g in groups.values())
total_flop = sum(g[2] for g in groups.values())
print("| layers | calls | ms | share | effective GFLOP/s |")
print("|---|---|---|---|---|")
for name, (calls, ms, flop) in groups.items():
    rate = f"{flop / ms / 1e6:.0f}" if flop else "-"
    print(f"| {name} | {calls} | {ms:.2f} | {100 * ms / total_ms:.1f}% | {rate} |")
print(f"| **total** | {sum(g[0] for g in groups.values())} | **{total_ms:.2f}** | 100% | {total_flop / total_ms / 1e6:.0f} |")
