#!/usr/bin/env bash
# Requests/s through a real Envoy 1.40 (--concurrency 1, HTTP/1.1 keep-alive load from wrk, a
# direct-response route) whose ext_authz filter calls (a) a no-op Check server and (b) `meshguard
# serve`, measured in the same run, interleaved, median of RUNS. Two requests: one allowed by
# an ALLOW rule (a DENY policy is checked first), one carrying a valid RS256 JWT that a
# RequestAuthentication verifies and an ALLOW rule on requestPrincipals admits.
#   bash scripts/bench-envoy.sh [SECONDS] [RUNS]
# Envoy comes from target/envoy-venv (scripts/test.sh installs it) or ENVOY_BIN; wrk from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
RUNS=${2:-3}
ENVOY=${ENVOY_BIN:-target/envoy-venv/lib/python3.11/site-packages/envoy/_bin/envoy}
if [ ! -x "$ENVOY" ]; then
  echo "Envoy not found at $ENVOY: run scripts/test.sh once (it installs target/envoy-venv) or set ENVOY_BIN" >&2
  exit 1
fi
if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian)" >&2
  (apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; })
fi
cargo build --release -q -p meshguard -p meshguard-server --examples --bins
BIN=target/release
W=target/bench-envoy
mkdir -p "$W"
# The token of examples/requests/api-with-token.yaml (Istio's published demo key, which
# examples/policies/jwt-auth.yaml holds as an inline JWKS).
TOKEN=$(grep -o 'Bearer [^"]*' examples/requests/api-with-token.yaml | cut -d' ' -f2)
JWKS=$(grep -m1 "jwks:" examples/policies/jwt-auth.yaml | sed 's/^ *//')
cat > "$W/policies.yaml" <<YAML
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: bench}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-reads, namespace: bench}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: bench}
spec:
  selector: {matchLabels: {app: jwt}}
  jwtRules:
  - issuer: https://auth.company.com
    audiences: [api.company.com]
    $JWKS
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-users, namespace: bench}
spec:
  selector: {matchLabels: {app: jwt}}
  rules:
  - from: [{source: {requestPrincipals: ["https://auth.company.com/user-1"]}}]
YAML
MG_PORT=9491 NOOP_PORT=9492 LISTEN=9493 ADMIN=9494
$BIN/meshguard serve --policies "$W/policies.yaml" --grpc-listen 127.0.0.1:$MG_PORT --http-listen off \
  --admin-listen off --decision-log off --log-level warn 2>"$W/meshguard.log" &
MG=$!
$BIN/examples/noop_check 127.0.0.1:$NOOP_PORT 2>/dev/null &
NOOP=$!
ENV_PID=
trap 'kill $MG $NOOP $ENV_PID 2>/dev/null || true' EXIT

envoy_config() { # $1: ext_authz port
  cat <<YAML
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $ADMIN}}}
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: $LISTEN}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          normalize_path: true
          merge_slashes: true
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {prefix: /jwt}
                direct_response: {status: 200, body: {inline_string: ok}}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: {context_extensions: {namespace: bench, labels: app=jwt}}
              - match: {prefix: /}
                direct_response: {status: 200, body: {inline_string: ok}}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: {context_extensions: {namespace: bench, labels: app=web}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 2s}
              transport_api_version: V3
              failure_mode_allow: false
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: authz
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: authz
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $1}}}}]}]
YAML
}

start_envoy() { # $1: ext_authz port
  envoy_config "$1" > "$W/envoy.yaml"
  "$ENVOY" -c "$W/envoy.yaml" --concurrency 1 --log-level error --base-id 73 >"$W/envoy.log" 2>&1 &
  ENV_PID=$!
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "Envoy did not start; see $W/envoy.log" >&2
  exit 1
}
stop_envoy() { kill "$ENV_PID" 2>/dev/null || true; wait "$ENV_PID" 2>/dev/null || true; ENV_PID=; }

rps() { # $1: path, rest: extra wrk args
  local path=$1; shift
  wrk -t1 -c16 -d"${SECS}s" "$@" "http://127.0.0.1:$LISTEN$path" | awk '/Requests\/sec/ {printf "%d", $2}'
}
expect_200() { # a denied request is cheaper: measure only what is allowed
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "$@")
  [ "$code" = 200 ] || { echo "expected 200, got $code for $*" >&2; exit 1; }
}

declare -A R
for run in $(seq "$RUNS"); do
  for target in noop meshguard; do
    port=$NOOP_PORT; [ $target = meshguard ] && port=$MG_PORT
    start_envoy "$port"
    expect_200 "127.0.0.1:$LISTEN/api/items"
    expect_200 -H "authorization: Bearer $TOKEN" "127.0.0.1:$LISTEN/jwt/items"
    if [ $target = meshguard ]; then
      code=$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$LISTEN/jwt/items")
      [ "$code" = 403 ] || { echo "meshguard should deny /jwt without a token (got $code)" >&2; exit 1; }
    fi
    R[$target-allow-$run]=$(rps /api/items)
    R[$target-jwt-$run]=$(rps /jwt/items -H "authorization: Bearer $TOKEN")
    echo "run $run $target: allowed ${R[$target-allow-$run]} req/s, with JWT ${R[$target-jwt-$run]} req/s"
    stop_envoy
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for c in allow jwt; do
  n=(); m=()
  for run in $(seq "$RUNS"); do n+=("${R[noop-$c-$run]}"); m+=("${R[meshguard-$c-$run]}"); done
  N=$(median "${n[@]}"); M=$(median "${m[@]}")
  echo "$c: noop $N req/s, meshguard $M req/s, ratio $(awk "BEGIN{printf \"%.2f\", $M/$N}") (median of $RUNS)"
done
