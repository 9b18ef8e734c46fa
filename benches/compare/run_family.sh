#!/usr/bin/env bash
# Side-by-side: convnet (examples/bench_resnet50 --model NAME) and onnxruntime on torchvision's
# ResNeXt and MobileNetV2 (seeded random weights, the same in both: export_torchvision_onnx.py
# writes the ONNX graph and the .safetensors state_dict), on this machine, in one run,
# alternating the engines round by round. Prints one JSON line per measurement and a table per
# network. Needs: pip install numpy torch torchvision onnx onnxruntime safetensors
#   bash benches/compare/run_family.sh [ITERS] [ROUNDS]
# MODELS="resnext50_32x4d mobilenet_v2" (the default) picks the torchvision networks.
set -euo pipefail
cd "$(dirname "$0")/../.."
iters=${1:-20}
rounds=${2:-3}
dir=${COMPARE_DIR:-target/compare}
models=${MODELS:-resnext50_32x4d mobilenet_v2}
mkdir -p "$dir"
cargo build --release --example bench_resnet50 >/dev/null
for m in $models; do
  [ -f "$dir/$m.onnx" ] || python3 benches/compare/export_torchvision_onnx.py --model "$m" --out "$dir"
  # Same network, same weights: the outputs agree before anything is timed.
  echo -n "$m: "
  target/release/examples/bench_resnet50 --model "$m" --weights "$dir/$m.safetensors" --check "$dir/$m-check" --iters 1 --warmup 0 | grep "^check"
done
out="$dir/family.jsonl"
: > "$out"
for round in $(seq "$rounds"); do
  for m in $models; do
    for cfg in "1 1" "1 2" "8 1" "8 2"; do
      set -- $cfg
      target/release/examples/bench_resnet50 --model "$m" --weights "$dir/$m.safetensors" --batch "$1" --threads "$2" \
        --iters "$iters" --warmup 3 | tail -n 1 | sed 's/^{/{"engine": "convnet", /' | tee -a "$out"
      python3 benches/compare/ort_bench.py "$dir/$m.onnx" --name "torchvision/$m" --batch "$1" --threads "$2" \
        --iters "$iters" --warmup 3 | tee -a "$out"
    done
  done
done
python3 benches/compare/table_family.py "$out"
