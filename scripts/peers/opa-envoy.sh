#!/usr/bin/env bash
# Builds the real OPA-Envoy plugin (github.com/open-policy-agent/opa-envoy-plugin) from the Go
# module proxy into target/peers/opa-envoy-<version>, once: a binary already there is kept.
# Everything Go writes (module cache, build cache, GOPATH) stays under target/peers/go, so a
# fresh CI machine needs only the Go toolchain. The tests (crates/meshguard/tests/custom_ext_authz.rs)
# run that binary as the external authorizer of Istio CUSTOM policies.
#
#   bash scripts/peers/opa-envoy.sh            # build (or keep) the default version
#   OPA_ENVOY_VERSION=v0.61.0-envoy bash ...   # another tag
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION="${OPA_ENVOY_VERSION:-$(cat scripts/peers/opa-envoy.version)}"
OUT="$PWD/target/peers/opa-envoy-$VERSION"
if [ -x "$OUT" ]; then
  echo "    $OUT (cached)"
  exit 0
fi

GO="$(command -v go || true)"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi
if [ -z "$GO" ]; then
  echo "error: the Go toolchain is needed to build the OPA-Envoy test peer" >&2
  exit 1
fi

ROOT="$PWD/target/peers/go"
export GOPATH="$ROOT/path" GOMODCACHE="$ROOT/mod" GOCACHE="$ROOT/cache"
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local
WORK="$ROOT/build-$VERSION"
rm -rf "$WORK"
mkdir -p "$WORK" "$(dirname "$OUT")"
cd "$WORK"
printf 'module meshguard.test/opa-envoy-peer\n\ngo 1.22\n' > go.mod
start=$(date +%s)
"$GO" get "github.com/open-policy-agent/opa-envoy-plugin@$VERSION"
"$GO" build -trimpath -o "$OUT.tmp" github.com/open-policy-agent/opa-envoy-plugin/cmd/opa-envoy-plugin
mv "$OUT.tmp" "$OUT"
echo "    built $OUT in $(( $(date +%s) - start )) s ($("$GO" version))"
# The module and build caches (about 800 MB) are not needed once the binary exists; CI disks
# are small. A version change downloads them again.
cd /
"$GO" clean -modcache
rm -rf "$ROOT"
