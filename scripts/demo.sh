#!/usr/bin/env bash
# The main job on the embedded default, end to end: build the server and the samples, start a
# server on a temporary data directory (SQLite + blobs), create a tenant, deploy the samples,
# invoke them, and show what each call used. Leaves nothing running.
#
# Usage: scripts/demo.sh   (from any directory)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "== building the server and the samples (first time: a few minutes)"
build_log="$(mktemp)"
if ! { scripts/build-samples.sh && cargo build -p infercell; } >"$build_log" 2>&1; then
    cat "$build_log"
    exit 1
fi
rm -f "$build_log"
bin="${CARGO_TARGET_DIR:-$root/target}/debug/infercell"

data="$(mktemp -d)"
log="$data/server.log"
"$bin" serve --listen 127.0.0.1:0 --data-dir "$data/data" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
    grep -q '^listening on ' "$log" && break
    sleep 0.1
done
export INFERCELL_URL
INFERCELL_URL="$(sed -n 's/^listening on //p' "$log")"
echo "== server on $INFERCELL_URL, data in $data/data"
sed -n 's/^admin key created: /   admin key file: /p' "$log"

echo "== infercell tenant create demo"
tenant_key="$(INFERCELL_KEY="$(cat "$data/data/admin.key")" "$bin" tenant create demo --plan free --json |
    sed -n 's/.*"api_key": "\([^"]*\)".*/\1/p')"
export INFERCELL_KEY="$tenant_key"

echo "== infercell deploy samples/echo samples/hello"
"$bin" deploy samples/echo
"$bin" deploy samples/hello

echo "== infercell model push digits samples/digits/digits.onnx; infercell deploy samples/digits"
"$bin" model push digits samples/digits/digits.onnx
"$bin" deploy samples/digits

echo "== infercell functions list"
"$bin" functions list

echo "== infercell devices"
"$bin" devices
if "$bin" devices --json | grep -q '"kind": "gpu"'; then
    echo "== infercell model check samples/digits/digits.onnx --device gpu (where each node would run)"
    "$bin" model check samples/digits/digits.onnx --device gpu 2>/dev/null
fi

echo "== infercell invoke demo/echo --data 'hello, sandbox'"
"$bin" invoke demo/echo --data 'hello, sandbox'
echo "== infercell invoke 'demo/hello?name=Ada'"
"$bin" invoke 'demo/hello?name=Ada'

echo "== infercell invoke demo/digits --data '{\"pixels\": [...an 8x8 image of a 0...]}'"
"$bin" invoke demo/digits --data '{"pixels": [0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}'

echo "== the same model over the Open Inference Protocol: POST /v2/models/digits/infer"
curl -s -H "Authorization: Bearer $INFERCELL_KEY" "$INFERCELL_URL/v2/models/digits/infer" -d '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0,0,0.3125,0.8125,0.5625,0.0625,0,0,0,0,0.8125,0.9375,0.625,0.9375,0.3125,0,0,0.1875,0.9375,0.125,0,0.6875,0.5,0,0,0.25,0.75,0,0,0.5,0.5,0,0,0.3125,0.5,0,0,0.5625,0.5,0,0,0.25,0.6875,0,0.0625,0.75,0.4375,0,0,0.125,0.875,0.3125,0.625,0.75,0,0,0,0,0.375,0.8125,0.625,0,0,0]}]}'
echo

echo "== usage of one call (infercell-usage header)"
curl -s -o /dev/null -D - -H "Authorization: Bearer $INFERCELL_KEY" --data 'metered' "$INFERCELL_URL/fn/demo/echo" |
    grep -i '^infercell-usage' | tr -d '\r'

echo "== /metrics (invocations), with a platform key of role metrics made for a scraper"
metrics_key="$(curl -s -H "Authorization: Bearer $(cat "$data/data/admin.key")" "$INFERCELL_URL/v1/keys" \
    -d '{"role": "metrics", "name": "prometheus"}' | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')"
curl -s -H "Authorization: Bearer $metrics_key" "$INFERCELL_URL/metrics" | grep '^infercell_invocations_total' | grep -v ' 0$'

echo "== infercell usage"
"$bin" usage
echo "== infercell billing"
"$bin" billing
