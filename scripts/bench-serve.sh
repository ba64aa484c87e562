#!/usr/bin/env bash
# Load benchmark for `meshguard serve` (gRPC ext_authz), beside a no-op Check server on the same
# stack, measured in the same run. Writes a summary to stdout.
#   bash scripts/bench-serve.sh [SECONDS] [extauth]
# With `extauth`, meshguard also loads examples/extauth and every request names the
# gloo-system.api-keys AuthConfig (context extension config_id) with a valid API key: the
# AuthConfig chain runs before the Istio policies (closed loop only).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
cargo build --release -q -p meshguard -p meshguard-server --examples --bins
BIN=target/release
TOKEN=$(grep -o 'Bearer [^"]*' examples/requests/api-with-token.yaml | cut -d' ' -f2)
POLICIES=()
if [ "${2:-}" = extauth ]; then
  POLICIES=(--policies examples/policies --policies examples/extauth)
  export BENCH_CONFIG_ID=gloo-system.api-keys
  export BENCH_HEADER="api-key: N2YwMDIxZTEtNGUzNS1jNzgzLTRkYjAtYjE2YzRkZGVmNjcy"
fi
$BIN/meshguard serve "${POLICIES[@]}" --grpc-listen 127.0.0.1:9391 --http-listen off --admin-listen 127.0.0.1:9393 --decision-log off --log-level warn 2>/dev/null &
MG=$!
$BIN/examples/noop_check 127.0.0.1:9291 2>/dev/null &
NOOP=$!
trap 'kill $MG $NOOP 2>/dev/null || true' EXIT
sleep 1
run() { $BIN/examples/bench_check "$@"; }
echo "== closed loop, 64 concurrent streams, ${SECS}s each"
NOOP_OUT=$(run 127.0.0.1:9291 closed 64 "$SECS" "$TOKEN"); echo "noop:      $NOOP_OUT"
MG_OUT=$(run 127.0.0.1:9391 closed 64 "$SECS" "$TOKEN"); echo "meshguard: $MG_OUT"
NOOP_RPS=$(echo "$NOOP_OUT" | sed 's/.*"rps":\([0-9]*\).*/\1/')
MG_RPS=$(echo "$MG_OUT" | sed 's/.*"rps":\([0-9]*\).*/\1/')
HALF=$((MG_RPS / 2))
echo "ratio meshguard/noop throughput: $(awk "BEGIN{printf \"%.2f\", $MG_RPS/$NOOP_RPS}")"
if [ "${2:-}" = extauth ]; then
  curl -s 127.0.0.1:9393/metrics | grep -E '^meshguard_decisions_total' || true
  exit 0
fi
echo "== paced at half of meshguard's throughput (${HALF} rps), ${SECS}s"
echo "noop:      $(run 127.0.0.1:9291 paced "$HALF" "$SECS" "$TOKEN")"
echo "meshguard: $(run 127.0.0.1:9391 paced "$HALF" "$SECS" "$TOKEN")"
echo "== paced at 2000 rps (light load), ${SECS}s"
echo "noop:      $(run 127.0.0.1:9291 paced 2000 "$SECS" "$TOKEN")"
echo "meshguard: $(run 127.0.0.1:9391 paced 2000 "$SECS" "$TOKEN")"
curl -s 127.0.0.1:9393/metrics | grep -E '^meshguard_decisions_total' || true
