#!/usr/bin/env bash
# Tally quick start: builds the collector, creates a data directory, issues a license,
# serves, and asks the billing API for usage. Everything stays in ./quickstart-data.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p tally-collector
C=target/debug/tally-collector
D=${TALLY_QUICKSTART_DIR:-./quickstart-data}
rm -rf "$D"

echo "== init"
admin=$($C --data "$D" --json init | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_token"])')
echo "== customers add"
customer=$($C --data "$D" --json customers add "Example Corp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "customer: $customer"
echo "== licenses issue"
$C --data "$D" licenses issue --customer "$customer" --metric api.convert=10000 --metric api.render \
  --expires "$(date -u -d '+1 year' +%Y-%m-%d)"
echo "== serve (ports chosen by the OS)"
$C --data "$D" serve --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 > "$D/serve.out" 2> "$D/serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$D/ports.json" ] && break; sleep 0.1; done
http=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$D/ports.json")
cat "$D/serve.out"
echo "== GET /v1/licenses"
curl -fsS -H "Authorization: Bearer $admin" "http://$http/v1/licenses"; echo
echo "== GET /v1/usage?granularity=day"
curl -fsS -H "Authorization: Bearer $admin" "http://$http/v1/usage?granularity=day"; echo
echo "== GET /v1/statements/$customer/$(date -u +%Y-%m)"
curl -fsS -H "Authorization: Bearer $admin" "http://$http/v1/statements/$customer/$(date -u +%Y-%m)"; echo
echo "== tally-collector usage"
$C --data "$D" usage --granularity month
echo "Quick start done. Data in $D."
