#!/usr/bin/env bash
# Creates bench/peers/.venv with the Python peers' packages (FastAPI, uvicorn, ONNX Runtime)
# and prints the venv's bin directory. Used by `infercell-bench p3`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
# uvicorn[standard] (httptools, uvloop) is what a production deployment runs. Plain uvicorn
# parses with h11, which sends a response's head and body as two writes without TCP_NODELAY:
# every call then waits ~40 ms for a delayed ACK, and the peer looks 20x slower than it is.
if ! "$venv/bin/python" -c "import httptools, uvloop, fastapi, onnxruntime" 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "fastapi==0.115.*" "uvicorn[standard]==0.34.*" "onnxruntime==1.31.1" "numpy>=2,<3" >&2
fi
echo "$venv/bin"
