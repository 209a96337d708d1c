#!/usr/bin/env bash
# The rollback drill (docs/runbook.md, "Releases"): a release build of the server under a
# steady load on one function, (a) every release change an operator makes (set, rollback,
# canary, promote) counting failed requests (goal: 0), (b) a canary that fails every call at
# 10%, timing its automatic rollback (goal: within two intervals) and counting failures
# (goal: no more than the canary's share of that time). Prints the figures that go into
# bench/RESULTS.md. Arguments go to `infercell-bench drill` (--connections C, --interval S).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/build-samples.sh >/dev/null
cargo build --release -p infercell -p infercell-bench
bin="${CARGO_TARGET_DIR:-$root/target}/release/infercell-bench"
echo "machine: $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "commit:  $(git rev-parse --short HEAD)  date: $(date -u +%Y-%m-%d)"
"$bin" drill "$@"
