#!/usr/bin/env bash
# Builds in release and runs every benchmark beside its baseline; prints the tables that go
# into bench/RESULTS.md (with `uname -m`, the CPU model, `nproc` and the commit). Any
# benchmark also takes `--json FILE`; `infercell-bench compare OLD NEW` compares two such files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/build-samples.sh >/dev/null 2>&1
cargo build --release -p infercell -p infercell-bench
bin="${CARGO_TARGET_DIR:-$root/target}/release/infercell-bench"
echo "machine: $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "commit:  $(git rev-parse --short HEAD)  date: $(date -u +%Y-%m-%d)"
"$bin" invoke "$@"
"$bin" http                    # 16 connections: latency-bound
"$bin" http --connections 64  # saturated: throughput
"$bin" fairness
"$bin" isolation
"$bin" overhead                # monitoring and tracing (off) per call
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/install-onnxruntime.sh)}"
"$bin" nn
"$bin" p3
