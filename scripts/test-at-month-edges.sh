#!/usr/bin/env bash
# Runs the date-sensitive test binaries (billing API, store conformance on SQLite and on
# PostgreSQL, period close, usage alerts and their webhook, the web UI) with the wall clock
# of the whole process tree (the test binary and every collector, agent, PostgreSQL server
# and Chromium it starts) set to the first minutes of a month, then to the last minutes of
# a month, under libfaketime. A test that depends on the date it runs on fails here on
# every run, not only on some days of the month. CI runs it after the normal suite.
#
#   scripts/test-at-month-edges.sh [first|last]...     (default: both)
#
# Each binary starts at its edge (00:00:30 on the 1st of next month; 23:57:00 on the last
# day of this month, so its run crosses midnight into the next month). Only the wall clock
# moves (FAKETIME_DONT_FAKE_MONOTONIC=1): timers and timeouts run in real time. PostgreSQL
# tests start their own server inside the faked tree (a server outside it would keep the
# real time). Needs what the suite needs; libfaketime and Chromium are installed before
# the clock moves (apt refuses package lists dated in the future).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

edges=("$@")
[ ${#edges[@]} -gt 0 ] || edges=(first last)
for e in "${edges[@]}"; do
  case "$e" in first|last) ;; *) echo "error: unknown edge $e (first or last)" >&2; exit 2 ;; esac
done

lib=$(./scripts/test-deps.sh libfaketime)
./scripts/test-deps.sh chromium >/dev/null

# The date-sensitive test binaries (test target names are unique in the workspace).
targets="billing_api store_conformance store_conformance_pg period_close webhook web_ui"
mapfile -t bins < <(
  cargo test --workspace --no-run --message-format=json 2>/dev/null | TARGETS="$targets" python3 -c '
import json, os, sys
want = set(os.environ["TARGETS"].split())
found = {}
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") in want and "test" in t["kind"]:
        found[t["name"]] = m["executable"]
if want - set(found):
    sys.exit("test binaries not found: %s" % " ".join(sorted(want - set(found))))
print("\n".join(found[n] for n in sorted(found)))
')
[ ${#bins[@]} -eq 6 ] || { echo "error: expected 6 test binaries, found ${#bins[@]}" >&2; exit 1; }

# Unix time of the start of next month (UTC).
next_month=$(date -u -d "$(date -u +%Y-%m-01) +1 month" +%s)
started=$(date +%s)
failed=0
for edge in "${edges[@]}"; do
  for bin in "${bins[@]}"; do
    case "$edge" in
      first) at=$((next_month + 30)) ;;
      last) at=$((next_month - 180)) ;;
    esac
    offset=$((at - $(date -u +%s)))
    name=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
    echo "== $name with the clock at $(date -u -d "@$at" '+%Y-%m-%d %H:%M:%S') UTC (FAKETIME=$(printf "%+d" "$offset"))"
    t0=$(date +%s)
    # A relative offset (not an absolute "@" time): every process of the tree, whenever
    # it starts, reads the same faked clock.
    # The idle sign-out test measures elapsed time in Chromium against its own timers, which
    # libfaketime's shifted wall clock throws off (it signs out while typing there only);
    # it has nothing to do with the date and runs in the suite itself.
    skip=()
    [[ "$name" == web_ui ]] && skip=(--skip the_ui_signs_out_after_the_idle_time)
    if env -u TALLY_TEST_PG_URL LD_PRELOAD="$lib" FAKETIME="$(printf '%+d' "$offset")" \
        FAKETIME_DONT_FAKE_MONOTONIC=1 TZ=UTC "$bin" --test-threads 2 "${skip[@]}" 2>&1 | sed "s/^/[$edge $name] /"; then
      echo "== $name at the $edge minutes of a month: passed in $(( $(date +%s) - t0 )) s"
    else
      echo "== $name at the $edge minutes of a month: FAILED"
      failed=1
    fi
  done
done
echo "month-edge runs: $(( $(date +%s) - started )) s"
exit $failed
