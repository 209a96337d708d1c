#!/usr/bin/env bash
# GPU benchmark, prepared for a machine with a real GPU (NVIDIA, AMD or Intel with a Vulkan
# driver): builds in release, runs open_nsfw (ResNet-50) at batch 1 and 32 on the wgpu engine
# and on ONNX Runtime (CPU), then on onnxruntime-gpu (CUDA) from Python when that installs,
# and prints one table. Record the figures, with the GPU's name, in bench/RESULTS.md.
#
# Usage: bench/gpu.sh [--batch 1,32] [--iters N]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
batch="1,32"
iters=10
while [[ $# -gt 0 ]]; do
    case "$1" in
        --batch) batch="$2"; shift 2 ;;
        --iters) iters="$2"; shift 2 ;;
        *) echo "usage: bench/gpu.sh [--batch 1,32] [--iters N]" >&2; exit 2 ;;
    esac
done
scripts/make-models.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/install-onnxruntime.sh)}"
cargo build --release -p infercell-bench >&2
bin="${CARGO_TARGET_DIR:-$root/target}/release/infercell-bench"
echo "machine: $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
if command -v nvidia-smi >/dev/null; then
    echo "gpu:     $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
fi
echo "commit:  $(git rev-parse --short HEAD)  date: $(date -u +%Y-%m-%d)"
echo
"$bin" gpu --batch "$batch" --iters "$iters"

# onnxruntime-gpu (CUDA), on NVIDIA machines, when the wheel installs and finds CUDA: same
# model, same rows.
if ! command -v nvidia-smi >/dev/null; then
    echo "| onnxruntime-gpu (CUDA) | - | no NVIDIA GPU here | | | |"
    exit 0
fi
venv="$root/bench/.venv-gpu"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" >&2
fi
if "$venv/bin/pip" install --quiet "onnxruntime-gpu[cuda,cudnn]==1.31.1" numpy >&2; then
    "$venv/bin/python" bench/peers/ort_gpu.py samples/moderate-image/open-nsfw.onnx "$batch" "$iters" ||
        echo "| onnxruntime-gpu | - | did not run (see above) | | | |"
else
    echo "| onnxruntime-gpu | - | did not install | | | |"
fi
