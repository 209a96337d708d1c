#!/usr/bin/env bash
# The ONNX conformance run, in one command: selects the ONNX backend node tests of the common
# ops from the onnx==1.22.0 wheel, runs every one on every engine through the model registry,
# the graph cache and the compute pool (tests/tests/conformance.rs), prints the per-op table and
# writes it into docs/conformance.md. CI runs the same test (scripts/test.sh) without the rewrite.
#
# Usage: scripts/conformance.sh   (from any directory)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
    ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
    export ORT_DYLIB_PATH
fi
scripts/make-models.sh
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
INFERCELL_CONFORMANCE_REPORT="$report" cargo test -p infercell-tests --locked --test conformance -- --nocapture >&2
cat "$report"

# docs/conformance.md keeps its prose; the table below the marker is replaced.
marker="<!-- table: scripts/conformance.sh writes below this line -->"
doc="docs/conformance.md"
{
    awk -v marker="$marker" '{ print } $0 == marker { exit }' "$doc"
    echo
    echo "Run on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), onnx 1.22.0 node tests, onnxruntime $(basename "$ORT_DYLIB_PATH" | sed 's/libonnxruntime.so.//'), tract-onnx $(cargo tree -p infercell -i tract-onnx --depth 0 2>/dev/null | head -1 | awk '{print $2}')."
    echo
    cat "$report"
} > "$doc.new"
mv "$doc.new" "$doc"
echo "wrote $doc" >&2
