#!/usr/bin/env bash
# Creates bench/peers/.venv with the Python peers' packages (FastAPI, uvicorn, ONNX Runtime)
# and prints the venv's bin directory. Used by `infercell-bench p3`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
if [[ ! -x "$venv/bin/uvicorn" ]]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "fastapi==0.115.*" "uvicorn==0.34.*" "onnxruntime==1.31.1" "numpy>=2,<3" >&2
fi
echo "$venv/bin"
