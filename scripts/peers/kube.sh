#!/usr/bin/env bash
# Builds a real Kubernetes API server, kubectl and etcd from the Go module proxy into target/peers/,
# once (binaries already there are kept):
#   target/peers/kube-<version>/{kube-apiserver,kubectl}   from k8s.io/kubernetes
#   target/peers/etcd-<version>/etcd                       from go.etcd.io/etcd/server/v3
# k8s.io/kubernetes is not meant to be required as a module: its go.mod points every k8s.io/*
# staging module at ./staging. The usual way round is a go.mod that requires it and replaces each
# staging module with its published v0.x release of the same minor; the list of staging modules is
# read from k8s.io/kubernetes's own go.mod, so it stays right when the version changes.
# The tests (crates/meshguard/tests/kubernetes.rs) start these on loopback ports with a static token file.
#
#   bash scripts/peers/kube.sh
#   KUBERNETES_VERSION=v1.36.3 ETCD_VERSION=v3.6.15 bash scripts/peers/kube.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

KVER="${KUBERNETES_VERSION:-$(cat scripts/peers/kubernetes.version)}"
EVER="${ETCD_VERSION:-$(cat scripts/peers/etcd.version)}"
KOUT="$PWD/target/peers/kube-$KVER"
EOUT="$PWD/target/peers/etcd-$EVER"
if [ -x "$KOUT/kube-apiserver" ] && [ -x "$KOUT/kubectl" ] && [ -x "$EOUT/etcd" ]; then
  echo "    $KOUT, $EOUT (cached)"
  exit 0
fi

GO="$(command -v go || true)"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi
if [ -z "$GO" ]; then
  echo "error: the Go toolchain is needed to build the Kubernetes test peers" >&2
  exit 1
fi

ROOT="$PWD/target/peers/go-kube"
export GOPATH="$ROOT/path" GOMODCACHE="$ROOT/mod" GOCACHE="$ROOT/cache"
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local
mkdir -p "$KOUT" "$EOUT"
start=$(date +%s)

if [ ! -x "$EOUT/etcd" ]; then
  W="$ROOT/build-etcd"
  rm -rf "$W" && mkdir -p "$W" && cd "$W"
  printf 'module meshguard.test/etcd-peer\n\ngo 1.26\n' > go.mod
  "$GO" get "go.etcd.io/etcd/server/v3@$EVER"
  "$GO" build -trimpath -ldflags=-s -o "$EOUT/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$EOUT/etcd.tmp" "$EOUT/etcd"
  echo "    built $EOUT/etcd in $(( $(date +%s) - start )) s"
  cd - >/dev/null
fi

if [ ! -x "$KOUT/kube-apiserver" ] || [ ! -x "$KOUT/kubectl" ]; then
  W="$ROOT/build-kube"
  rm -rf "$W" && mkdir -p "$W" && cd "$W"
  minor="v0.${KVER#v1.}"   # v1.37.2 -> v0.37.2
  printf 'module meshguard.test/kube-peer\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n' "$KVER" > go.mod
  # The staging modules, from k8s.io/kubernetes's own replace block ("k8s.io/x => ./staging/...").
  "$GO" mod download -json "k8s.io/kubernetes@$KVER" > kube.json
  modfile="$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$KVER.mod"
  grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$modfile" | awk '{print $1}' | sort -u > staging.txt
  if [ ! -s staging.txt ]; then
    echo "error: no staging replace directives found in $modfile" >&2
    exit 1
  fi
  {
    echo
    echo 'replace ('
    while read -r m; do echo "	$m => $m $minor"; done < staging.txt
    echo ')'
  } >> go.mod
  printf 'package main\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\t_ "k8s.io/kubectl/pkg/cmd"\n)\n\nfunc main() {}\n' > tools.go
  "$GO" mod tidy
  # The version a release build stamps (without it the binaries call themselves v0.0.0-master).
  major="${KVER#v}"; major="${major%%.*}"; minor_n="${KVER#v*.}"; minor_n="${minor_n%%.*}"
  ld="-s -X k8s.io/component-base/version.gitVersion=$KVER -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor_n -X k8s.io/client-go/pkg/version.gitVersion=$KVER"
  "$GO" build -trimpath -ldflags="$ld" -o "$KOUT/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$KOUT/kube-apiserver.tmp" "$KOUT/kube-apiserver"
  echo "    built $KOUT/kube-apiserver after $(( $(date +%s) - start )) s"
  "$GO" build -trimpath -ldflags="$ld" -o "$KOUT/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl
  mv "$KOUT/kubectl.tmp" "$KOUT/kubectl"
  echo "    built $KOUT/kubectl after $(( $(date +%s) - start )) s"
  cd - >/dev/null
fi
"$KOUT/kube-apiserver" --version | sed 's/^/    /'
"$KOUT/kubectl" version --client 2>/dev/null | sed -n 1p | sed 's/^/    /'
"$EOUT/etcd" --version | sed -n 1p | sed 's/^/    /'
# The module and build caches (several GB) are not needed once the binaries exist; CI disks are
# small. A version change downloads them again.
GOFLAGS= "$GO" clean -modcache
rm -rf "$ROOT"
