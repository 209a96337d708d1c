#!/usr/bin/env bash
# Proves the suite does not depend on the machine's speed or load: runs the whole test command
# (scripts/test.sh) RUNS times in a row (default 5), then once more while other processes keep
# every core busy. Stops at the first failure and shows its log; checks after each run that
# the work tree is as it was (the test command never modifies tracked files).
#
# Usage: scripts/test-repeat.sh [RUNS]   (from any directory)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs="${1:-5}"
logs="$(mktemp -d)"
before="$(git status --porcelain)"

run() {
    local name="$1" log="$logs/$1.log" started=$SECONDS
    if ! scripts/test.sh >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "FAILED: $name (log: $log)" >&2
        exit 1
    fi
    if [[ "$(git status --porcelain)" != "$before" ]]; then
        git status --short >&2
        echo "FAILED: $name changed the work tree" >&2
        exit 1
    fi
    local passed
    passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s}')
    echo "$name: ok, $passed tests passed in $((SECONDS - started)) s"
}

for i in $(seq 1 "$runs"); do
    run "run $i of $runs"
done

# Under load: one busy loop per core, for as long as the run takes.
busy=()
for _ in $(seq "$(nproc)"); do
    (while :; do :; done) &
    busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null || true' EXIT
run "run under load ($(nproc) busy cores)"
echo "$((runs + 1)) passed, 0 failed"
