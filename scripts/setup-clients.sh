#!/usr/bin/env bash
# Installs the Python clients of the Open Inference Protocol that the /v2 tests run unmodified
# (tritonclient[http] and kserve, pinned in tests/clients/requirements.txt) into .venv-clients/
# at the repository root, and prints the venv's python on stdout.
#
# Usage: scripts/setup-clients.sh   (from any directory)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-clients"
requirements="$root/tests/clients/requirements.txt"
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$requirements" "$stamp"; then
    echo "installing the Python OIP clients into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
    cp "$requirements" "$stamp"
fi
echo "$venv/bin/python"
