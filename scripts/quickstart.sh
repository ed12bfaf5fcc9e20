#!/usr/bin/env bash
# Tally quick start, end to end on one machine: a collector and an agent, usage recorded
# by a "product", delivered as signed reports, and queried by billing.
# Everything stays in ./quickstart-data (removed and recreated on each run).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building tally-collector and tally-agent (a few minutes the first time)"
cargo build -p tally-collector -p tally-agent
C=target/debug/tally-collector
A=target/debug/tally-agent
D=${TALLY_QUICKSTART_DIR:-./quickstart-data}
rm -rf "$D"
mkdir -p "$D"
json() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
port() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
wait_for() { for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "timed out waiting for $1" >&2; exit 1; }

echo "== vendor: init the collector"
admin=$($C --data "$D/collector" --json init | json admin_token)
customer=$($C --data "$D/collector" --json customers add "Example Corp" | json id)
echo "customer: $customer"

echo "== vendor: serve (ports chosen by the OS)"
$C --data "$D/collector" serve --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  > "$D/collector.out" 2> "$D/collector.log" &
cpid=$!
trap 'kill $cpid ${apid:-} 2>/dev/null || true' EXIT
wait_for "$D/collector/ports.json"
grpc=$(port "$D/collector/ports.json" grpc)
http=$(port "$D/collector/ports.json" http)
echo "collector: gRPC $grpc, HTTP $http"

echo "== vendor: issue a license"
lic=$($C --data "$D/collector" --json licenses issue --customer "$customer" \
  --metric api.convert=10000 --metric api.render --expires "$(date -u -d '+1 year' +%Y-%m-%d)" \
  --endpoint "http://$grpc")
file=$(echo "$lic" | json file)
token=$(echo "$lic" | json enrollment_token)

echo "== customer: init and run the agent (1 s windows for the demo)"
$A --data "$D/agent" init --license "$file" --token "$token"
$A --data "$D/agent" run --listen 127.0.0.1:0 --interval 1s > "$D/agent.out" 2> "$D/agent.log" &
apid=$!
wait_for "$D/agent/ports.json"
listen=$(port "$D/agent/ports.json" listen)

echo "== product: record usage"
curl -fsS -X POST "http://$listen/v1/events" -d '{"metric": "api.convert", "quantity": 3}'; echo
curl -fsS -X POST "http://$listen/v1/events" -d '{"events": [{"metric": "api.render"}, {"metric": "api.convert", "idempotency_key": "job-42"}]}'; echo
curl -fsS -X POST "http://$listen/v1/events" -d '{"metric": "api.convert", "idempotency_key": "job-42"}'; echo "   (a retry: acknowledged, not counted again)"
$A --data "$D/agent" record api.render 2 > /dev/null

echo "== customer: flush and wait for delivery"
$A --data "$D/agent" flush > /dev/null
for _ in $(seq 1 100); do
  pending=$($A --data "$D/agent" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["reports"].get("pending", 0))')
  [ "$pending" = 0 ] && break
  sleep 0.1
done
$A --data "$D/agent" reports list
$A --data "$D/agent" reports verify
echo "license status (as the product sees it):"
$A --data "$D/agent" --json license | python3 -c 'import json,sys; l=json.load(sys.stdin); print("  state", l["state"], "- lease until", l["lease_until"])'

echo "== billing: usage and statement"
curl -fsS -H "Authorization: Bearer $admin" "http://$http/v1/usage?granularity=month&format=csv"
curl -fsS -H "Authorization: Bearer $admin" "http://$http/v1/statements/$customer/$(date -u +%Y-%m)"; echo
$C --data "$D/collector" usage --granularity month
echo "Quick start done: api.convert = 4, api.render = 3. Data in $D."
echo "Dashboard: while this collector served, it was at http://$http/ ; to look at this data again,"
echo "  run '$C --data $D/collector serve', open http://127.0.0.1:8080/ and sign in with the admin token $admin"
