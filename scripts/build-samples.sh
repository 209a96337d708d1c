#!/usr/bin/env bash
# Builds the guest components: samples/ (what users start from) and tests/guests/ (fixtures
# the host's tests use), each its own cargo workspace, for wasm32-wasip2. That target makes
# rustc emit a component directly, so no cargo-component or wasm-tools is needed. The host
# never builds guests itself (no nested cargo in a build.rs): run this first.
#
# Usage: scripts/build-samples.sh    (from any directory; extra cargo flags are not taken)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="wasm32-wasip2"
workspaces=("samples" "tests/guests")

if ! rustup target list --installed | grep -qx "$target"; then
    echo "installing the $target rustup target" >&2
    rustup target add "$target"
fi

for workspace in "${workspaces[@]}"; do
    echo "building $workspace for $target" >&2
    # An explicit --target-dir keeps the components where the tests and manifests expect them,
    # even when CARGO_TARGET_DIR points elsewhere (CI caches the host build that way).
    # Run from the workspace so its .cargo/config.toml (WebAssembly SIMD for samples/) applies.
    (cd "$root/$workspace" && cargo build --release --target "$target" --manifest-path "$root/$workspace/Cargo.toml" \
        --target-dir "$root/$workspace/target")
done

echo "components:"
for workspace in "${workspaces[@]}"; do
    for wasm in "$root/$workspace/target/$target/release/"*.wasm; do
        [[ -e "$wasm" ]] || continue
        printf '  %-60s %9d bytes\n' "${wasm#"$root"/}" "$(wc -c <"$wasm")"
    done
done
