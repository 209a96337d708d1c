#!/usr/bin/env bash
# The whole test suite, as CI runs it: build the guest components, check formatting and
# lints, build the server binary (the end-to-end tests start it), run every test. ONNX Runtime
# is installed first (into .venv-ort/, from PyPI) unless ORT_DYLIB_PATH already names it, so the
# tests run against both inference engines; scripts/make-models.sh fetches the models that are
# not committed (open_nsfw for samples/moderate-image, pinned by sha256); scripts/setup-clients.sh
# installs the Python OIP clients (tritonclient, kserve) the /v2 tests run unmodified.
#
# Usage: scripts/test.sh   (from any directory)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
    ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
    export ORT_DYLIB_PATH
fi
scripts/make-models.sh
scripts/setup-clients.sh >/dev/null
scripts/build-samples.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
cargo build -p infercell --locked
cargo test --workspace --all-features --locked
