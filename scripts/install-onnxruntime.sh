#!/usr/bin/env bash
# Installs ONNX Runtime for the `onnxruntime` inference engine: the `onnxruntime` wheel from
# PyPI, into `.venv-ort/` at the repository root, and prints the absolute path of the shared
# library inside it (`libonnxruntime.so.1.*`) on stdout, and nothing else. The host loads that
# library at run time (`ort` with `load-dynamic`), so nothing is downloaded at build time.
# Pinned to the version that produced the reference outputs in samples/*/expected.json.
#
# Usage: export ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"   (from any directory)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-ort"
version="1.31.1"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('onnxruntime') != '$version')" 2>/dev/null; then
    echo "installing onnxruntime==$version into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "onnxruntime==$version" >&2
fi

capi="$("$venv/bin/python" -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))")"
shopt -s nullglob
libs=("$capi"/libonnxruntime.so.1.*)
if [[ ${#libs[@]} -eq 0 ]]; then
    echo "no libonnxruntime.so.1.* in $capi" >&2
    exit 1
fi
echo "${libs[0]}"
