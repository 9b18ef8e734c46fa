#!/usr/bin/env bash
# Side-by-side training throughput: convnet (examples/bench_train) and PyTorch
# (benches/compare/torch_train.py, channels-last and NCHW) on the same networks, batch, SGD with
# momentum and thread count, alternating, in one run. Prints one JSON line per measurement and a
# markdown table of medians. Needs: pip install torch torchvision
#   bash benches/compare/train.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
dir=${COMPARE_DIR:-target/compare}
mkdir -p "$dir"
out="$dir/train_results.jsonl"
: > "$out"
cargo build --release --example bench_train >/dev/null
for round in $(seq "$rounds"); do
  for cfg in "resnet20 128 1 6" "resnet20 128 2 6" "resnet50 16 1 3" "resnet50 16 2 3"; do
    set -- $cfg
    target/release/examples/bench_train --model "$1" --batch "$2" --threads "$3" --steps "$4" --warmup 1 2>/dev/null \
      | tail -n 1 | sed 's/^{/{"engine": "convnet", /' | tee -a "$out"
    for fmt in channels_last nchw; do
      python3 benches/compare/torch_train.py --model "$1" --batch "$2" --threads "$3" --steps "$4" --warmup 1 --memory-format "$fmt" | tee -a "$out"
    done
  done
done
python3 - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
key = lambda r: (r["model"], r["batch"], r["threads"])
engines = sorted({(r["engine"], r.get("memory_format", "")) for r in rows})
print("| model | batch | threads | " + " | ".join(f"{e} {f}".strip() + " images/s" for e, f in engines) + " | convnet / PyTorch channels-last |")
print("|---|---:|---:|" + "---:|" * (len(engines) + 1))
for k in sorted({key(r) for r in rows}):
    med = {}
    for e in engines:
        v = [r["images_per_s"] for r in rows if key(r) == k and (r["engine"], r.get("memory_format", "")) == e]
        med[e] = statistics.median(v) if v else float("nan")
    ours = [m for (e, f), m in med.items() if e == "convnet"][0]
    torch_cl = [m for (e, f), m in med.items() if f == "channels_last"][0]
    print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(f"{med[e]:.1f}" for e in engines) + f" | {ours / torch_cl:.2f}x |")
EOF
