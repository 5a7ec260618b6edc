#!/usr/bin/env bash
# Builds the Go binaries of the kind path from pinned modules, into a per-version cache outside the
# repo (a directory whose binaries are all present is skipped, so a warm run costs under a second):
#
#   ${RACKSCALE_CACHE:-$HOME/.cache/rackscale}/bin/kind-<version>/kind
#   .../bin/kubernetes-node-<version>/{kubelet,kubeadm,kube-proxy,pause}   (e2e/controlplane/kubernetes)
#   .../bin/coredns-<version>/coredns                                      (e2e/kind/modules/coredns)
#
#   e2e/kind/build.sh [kind|node|coredns|all]   (default: all; `kind` is enough for KIND_NODE_IMAGE=...)
#
# Prints KIND_BIN=..., NODE_BIN_DIR=..., COREDNS_BIN=... for what it built or found.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
controlplane="$(cd "$here/../controlplane" && pwd)"
cache="${RACKSCALE_CACHE:-$HOME/.cache/rackscale}"

die() { echo "kind/build.sh: error: $*" >&2; exit 1; }
log() { echo "kind/build.sh: $*" >&2; }
# shellcheck source=../controlplane/go-modules.sh
source "$controlplane/go-modules.sh"

# build DEST MODULE_DIR LDFLAGS PKG...: into a scratch dir renamed into place when whole.
build() {
  local dest="$1" moddir="$2" ldflags="$3"; shift 3
  local tmp="$dest.tmp.$$" start=$SECONDS
  rm -rf "$tmp"; mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  log "building $(basename "$dest") (cold, on 2 cores: kubelet+kubeadm+kube-proxy ~3 min after the control plane, coredns ~3, kind ~1)"
  (cd "$moddir" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "$@") \
    || die "go build failed for $(basename "$dest") in $moddir; see the compiler output above"
  if [[ "$(basename "$dest")" == kubernetes-node-* ]]; then
    # pause, the sandbox container, is C: compiled from the same k8s.io/kubernetes module.
    local src; src="$(cd "$moddir" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    command -v gcc >/dev/null || die "gcc is needed to build pause from $src (apt-get install gcc libc6-dev)"
    gcc -Os -static -Wall -o "$tmp/pause" -DVERSION="$(pause_version)" "$src" || die "gcc failed on $src"
    strip "$tmp/pause"
  fi
  rm -rf "$dest"; mv "$tmp" "$dest"
  trap - EXIT
  log "built $(basename "$dest") in $((SECONDS - start))s -> $dest"
}

k8s_version="$(pinned "$controlplane/kubernetes/go.mod" k8s.io/kubernetes)"
kind_version="$(pinned "$here/modules/kind/go.mod" sigs.k8s.io/kind)"
coredns_version="$(pinned "$here/modules/coredns/go.mod" github.com/coredns/coredns)"
kind_dir="$cache/bin/kind-$kind_version"
node_dir="$cache/bin/kubernetes-node-$k8s_version"
coredns_dir="$cache/bin/coredns-$coredns_version"

# The pause version kubeadm names for this release, read from the module's own Makefile.
pause_version() {
  local dir; dir="$(cd "$controlplane/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  sed -n -E 's/^TAG[[:space:]]*\?=[[:space:]]*([0-9.]+).*/\1/p' "$dir/build/pause/Makefile" | head -n1
}

what="${1:-all}"
case "$what" in kind|node|coredns|all) ;; *) die "unknown target '$what' (kind, node, coredns or all)" ;; esac

if [[ "$what" == kind || "$what" == all ]]; then
if [[ -x "$kind_dir/kind" ]]; then
  log "kind $kind_version: cached in $kind_dir"
else
  ensure_go
  build "$kind_dir" "$here/modules/kind" "-s -w" sigs.k8s.io/kind
fi
echo "KIND_BIN=$kind_dir/kind"
fi

if [[ "$what" == node || "$what" == all ]]; then

if [[ -x "$node_dir/kubelet" && -x "$node_dir/kubeadm" && -x "$node_dir/kube-proxy" && -x "$node_dir/pause" ]]; then
  log "kubernetes node binaries $k8s_version: cached in $node_dir"
else
  ensure_go
  minor="${k8s_version#v1.}"; minor="${minor%%.*}"
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  build "$node_dir" "$controlplane/kubernetes" "$ld" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kube-proxy
fi
echo "NODE_BIN_DIR=$node_dir"
fi

if [[ "$what" == coredns || "$what" == all ]]; then

if [[ -x "$coredns_dir/coredns" ]]; then
  log "coredns $coredns_version: cached in $coredns_dir"
else
  ensure_go
  build "$coredns_dir" "$here/modules/coredns" "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$coredns_version" .
fi
echo "COREDNS_BIN=$coredns_dir/coredns"
fi
