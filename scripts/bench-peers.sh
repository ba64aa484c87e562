#!/usr/bin/env bash
# Side by side with what users run today (issue 18, part 1, direct): four ext_authz v3 gRPC
# servers on loopback, driven by the same client in the same run:
#   noop       a Check server that allows everything (examples/noop_check): the floor
#   opa-envoy  the real OPA-Envoy plugin (scripts/peers/opa-envoy.sh) with the seed's Rego
#              (examples/extauth/opa-envoy.yaml: RS256 JWT with role admin, POST /post, a JSON
#              body matching a schema)
#   mg-rego    meshguard serve running the same Rego as the opaEnvoy AuthConfig orders-opa
#   mg-istio   meshguard serve with the same intent as Istio policies (RequestAuthentication +
#              AuthorizationPolicy: claim role=admin, POST, /post; Istio has no body schema)
# Client: examples/bench_check, one HTTP/2 connection, closed loop at 64 streams (throughput),
# then paced at half of each server's own maximum (latency). CPU seconds per 100k decisions and
# peak RSS of the server come from /proc. Every request must be allowed by every server (a
# denial aborts the run). Prints a Markdown table.
#   bash scripts/bench-peers.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
W=target/bench-peers
mkdir -p "$W"
bash scripts/peers/opa-envoy.sh >/dev/null
OPA=target/peers/opa-envoy-$(tr -d '[:space:]' < scripts/peers/opa-envoy.version)
cargo build --release -q -p meshguard -p meshguard-server --examples --bins
BIN=target/release

# The seed's policy and data for OPA; the same intent as Istio resources for meshguard.
python3 - "$W" <<'PY'
import json, re, sys
w = sys.argv[1]
text = open("examples/extauth/opa-envoy.yaml").read()
def block(key):
    m = re.search(r"\n  " + re.escape(key) + r": \|\n((?:    .*\n|\n)+)", text)
    return "\n".join(l[4:] for l in m.group(1).splitlines()) + "\n"
open(f"{w}/policy.rego", "w").write(block("policy.rego"))
data = json.loads(block("data.json"))
full_jwks = json.dumps(data["jwks"])
# OPA 0.61 refuses a JWKS holding an Ed25519 key (see tests/custom_ext_authz.rs).
data["jwks"]["keys"] = [k for k in data["jwks"]["keys"] if k["kty"] != "OKP"]
json.dump(data, open(f"{w}/data.json", "w"))
open(f"{w}/istio.yaml", "w").write(f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: production}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwtRules:
  - issuer: https://issuer.test
    audiences: [api.test]
    jwks: '{full_jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admins-post, namespace: production}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{methods: [POST], paths: [/post]}}}}]
    when: [{{key: 'request.auth.claims[role]', values: [admin]}}]
""")
tok = json.load(open("crates/meshguard-authn/tests/data/tokens.json"))["tokens"]["RS256"]
open(f"{w}/token", "w").write(tok)
PY
cat > "$W/opa.yaml" <<YAML
plugins:
  envoy_ext_authz_grpc:
    addr: 127.0.0.1:9501
    path: envoy/authz/allow
decision_logs:
  console: false
YAML
TOKEN=$(cat "$W/token")
export BENCH_METHOD=POST BENCH_PATH=/post BENCH_BODY='{"item": "book", "quantity": 2}'

PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
$BIN/examples/noop_check 127.0.0.1:9500 2>/dev/null & PIDS+=($!); NOOP=$!
"$OPA" run --server --addr 127.0.0.1:9511 --diagnostic-addr 127.0.0.1:9512 --log-level error \
  --config-file "$W/opa.yaml" "$W/policy.rego" "$W/data.json" >/dev/null 2>"$W/opa.log" & PIDS+=($!); OPAPID=$!
$BIN/meshguard serve --policies examples/extauth --default-allow --grpc-listen 127.0.0.1:9502 \
  --http-listen off --admin-listen 127.0.0.1:9503 --decision-log off --log-level warn 2>"$W/mg-rego.log" & PIDS+=($!); MGREGO=$!
$BIN/meshguard serve --policies "$W/istio.yaml" --grpc-listen 127.0.0.1:9504 \
  --http-listen off --admin-listen 127.0.0.1:9505 --decision-log off --log-level warn 2>"$W/mg-istio.log" & PIDS+=($!); MGISTIO=$!
sleep 3

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
field() { echo "$1" | sed "s/.*\"$2\":\([0-9]*\).*/\1/"; }
TCK=$(getconf CLK_TCK)

declare -A RPS LATS CPUS RSS
for s in noop opa-envoy mg-rego mg-istio; do
  case $s in
    noop) ADDR=127.0.0.1:9500; PID=$NOOP; CID= ;;
    opa-envoy) ADDR=127.0.0.1:9501; PID=$OPAPID; CID= ;;
    mg-rego) ADDR=127.0.0.1:9502; PID=$MGREGO; CID=gloo-system.orders-opa ;;
    mg-istio) ADDR=127.0.0.1:9504; PID=$MGISTIO; CID= ;;
  esac
  if [ -n "$CID" ]; then export BENCH_CONFIG_ID=$CID; else unset BENCH_CONFIG_ID; fi
  C0=$(cpu_ticks "$PID")
  OUT=$($BIN/examples/bench_check "$ADDR" closed 64 "$SECS" "$TOKEN")
  C1=$(cpu_ticks "$PID")
  N=$(field "$OUT" requests); R=$(field "$OUT" rps); D=$(field "$OUT" denied); E=$(field "$OUT" errors)
  if [ "$D" != 0 ] || [ "$E" != 0 ]; then echo "error: $s denied $D and failed $E requests: $OUT" >&2; exit 1; fi
  RPS[$s]=$R
  HALF=$((R / 2))
  LAT=$($BIN/examples/bench_check "$ADDR" paced "$HALF" "$SECS" "$TOKEN")
  CPUS[$s]=$(awk "BEGIN{printf \"%.2f\", ($C1-$C0)/$TCK/$N*100000}")
  LATS[$s]="$(field "$LAT" p50_us) / $(field "$LAT" p99_us)"
  RSS[$s]=$(( $(rss_kib "$PID") / 1024 ))
  echo "$s: $OUT; paced at $HALF: $LAT" >&2
done
echo "| server | req/s (64 streams) | x OPA-Envoy | x no-op | p50 / p99 at half its max (us) | CPU s per 100k | peak RSS (MiB) |"
echo "|---|---|---|---|---|---|---|"
for s in noop opa-envoy mg-rego mg-istio; do
  XO=$(awk "BEGIN{printf \"%.2f\", ${RPS[$s]}/${RPS[opa-envoy]}}")
  XN=$(awk "BEGIN{printf \"%.2f\", ${RPS[$s]}/${RPS[noop]}}")
  echo "| $s | ${RPS[$s]} | $XO | $XN | ${LATS[$s]} | ${CPUS[$s]} | ${RSS[$s]} |"
done
echo
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%d); ${SECS}s per measurement; OPA-Envoy $(tr -d '[:space:]' < scripts/peers/opa-envoy.version)"
