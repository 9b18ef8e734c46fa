#!/usr/bin/env python3
"""Times onnxruntime on an exported network and prints one JSON line in bench_resnet50's format.

Usage: python ort_bench.py MODEL.onnx --batch N --threads T --iters K --warmup W [--name NAME]
(NAME: the JSON line's "model", default resnet50-keras.)
"""
import argparse
import json
import resource
import time

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--iters", type=int, default=20)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--name", default="resnet50-keras")
a = ap.parse_args()

opts = ort.SessionOptions()
opts.intra_op_num_threads = a.threads
opts.inter_op_num_threads = 1
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).normal(0, 50, (a.batch, 224, 224, 3)).astype(np.float32)
for _ in range(a.warmup):
    sess.run(None, {"input": x})
times = []
for _ in range(a.iters):
    t = time.perf_counter()
    sess.run(None, {"input": x})
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
q = lambda p: times[min(len(times) - 1, int(round(p * (len(times) - 1))))]
med = float(np.median(times))
print(json.dumps({"model": a.name, "engine": f"onnxruntime {ort.__version__}", "batch": a.batch, "threads": a.threads,
                  "iters": a.iters, "median_ms": round(med, 2), "p10_ms": round(q(0.1), 2), "p90_ms": round(q(0.9), 2),
                  "images_per_s": round(a.batch * 1000 / med, 2),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
