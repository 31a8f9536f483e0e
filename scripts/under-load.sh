#!/usr/bin/env bash
# The whole test suite, PASSES times in a row, beside a CPU hog on every core. Stops at the first failing pass.
#
#   scripts/under-load.sh [PASSES] [pytest args...]      (PASSES defaults to 3)
#
# The hog is `stress-ng --cpu 0` (one busy worker per core) when stress-ng is installed, else one
# `yes >/dev/null` per core. Each pass's output goes to $LOGS/pass<N>.log (LOGS defaults to a fresh folder
# under /tmp); the summary line of every pass and its wall time are printed here.
set -euo pipefail
cd "$(dirname "$0")/.."

passes=${1:-3}
shift || true
logs=${LOGS:-$(mktemp -d /tmp/flux-tui-under-load.XXXX)}
mkdir -p "$logs"
pytest=${PYTEST:-.venv/bin/pytest}

hogs=()
stop_hogs() { ((${#hogs[@]})) && kill "${hogs[@]}" 2>/dev/null; wait 2>/dev/null || true; }
trap stop_hogs EXIT
if command -v stress-ng >/dev/null; then
    stress-ng --cpu 0 --quiet &
    hogs+=($!)
else
    for _ in $(seq "$(nproc)"); do yes >/dev/null & hogs+=($!); done
fi
echo "under-load: hog on $(nproc) cores (${hogs[*]}), $passes passes, logs in $logs"

for n in $(seq "$passes"); do
    start=$(date +%s)
    set +e
    "$pytest" -q -p no:cacheprovider --basetemp="$logs/tmp$n" "$@" >"$logs/pass$n.log" 2>&1
    rc=$?
    set -e
    echo "pass $n: rc=$rc in $(($(date +%s) - start)) s: $(tail -n 1 "$logs/pass$n.log")"
    rm -rf "$logs/tmp$n"
    if ((rc != 0)); then
        grep -E '^(FAILED|ERROR)' "$logs/pass$n.log" || true
        exit "$rc"
    fi
done
echo "under-load: $passes passes in a row"
