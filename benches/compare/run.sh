#!/usr/bin/env bash
# Side-by-side: convnet (examples/bench_resnet50) and onnxruntime on the same ResNet50 and the
# same weights, on this machine, in one run. Prints one JSON line per measurement and a
# markdown table. Needs: pip install numpy onnx onnxruntime h5py
#   bash benches/compare/run.sh [ITERS] [ROUNDS]
# KERNELS="avx512 avx2 portable" times convnet once per GEMM micro-kernel (CONVNET_GEMM_KERNEL),
# each beside onnxruntime in the same rounds; the default is the kernel the machine selects.
# The Rust peers run the same ONNX file, each built on first use from its own workspace (a few
# minutes): tract (benches/compare/tract; TRACT=0 leaves it out) and, with CANDLE=1, candle's
# ONNX evaluator (benches/compare/candle; needs protoc: apt-get install protobuf-compiler).
set -euo pipefail
cd "$(dirname "$0")/../.."
iters=${1:-20}
rounds=${2:-3}
dir=${COMPARE_DIR:-target/compare}
mkdir -p "$dir"
[ -f "$dir/resnet50.onnx" ] || python3 benches/compare/export_onnx.py --out "$dir"
cargo build --release --example bench_resnet50 >/dev/null
peers=()
[ "${TRACT:-1}" = 1 ] && peers+=(tract)
[ "${CANDLE:-0}" = 1 ] && peers+=(candle)
for p in "${peers[@]}"; do
  CARGO_TARGET_DIR="$dir/$p-target" cargo build --release --manifest-path "benches/compare/$p/Cargo.toml" >/dev/null
done
peer_bin() { echo "$dir/$1-target/release/$1-bench"; }
# Same network, same weights: the outputs agree before anything is timed.
echo -n "convnet: "; target/release/examples/bench_resnet50 --weights "$dir/resnet50.h5" --check "$dir" --iters 1 --warmup 0 | grep "^check"
for p in "${peers[@]}"; do
  echo -n "$p: "; "$(peer_bin "$p")" "$dir/resnet50.onnx" --check "$dir" --iters 1 --warmup 0 | grep "^check"
done
out="$dir/results.jsonl"
: > "$out"
# Alternate the engines, several rounds, so drift on a noisy machine hits both alike.
for round in $(seq "$rounds"); do
  for cfg in "1 1" "1 2" "8 1" "8 2"; do
    set -- $cfg
    for kernel in ${KERNELS:-selected}; do
      if [ "$kernel" = selected ]; then kernel=""; fi
      CONVNET_GEMM_KERNEL="$kernel" target/release/examples/bench_resnet50 --weights "$dir/resnet50.h5" --batch "$1" --threads "$2" \
        --iters "$iters" --warmup 3 | tail -n 1 | sed 's/^{/{"engine": "convnet", /' | tee -a "$out"
    done
    python3 benches/compare/ort_bench.py "$dir/resnet50.onnx" --batch "$1" --threads "$2" --iters "$iters" --warmup 3 | tee -a "$out"
    for p in "${peers[@]}"; do
      "$(peer_bin "$p")" "$dir/resnet50.onnx" --batch "$1" --threads "$2" --iters "$iters" --warmup 3 | tee -a "$out"
    done
  done
done
python3 benches/compare/table.py "$out"
