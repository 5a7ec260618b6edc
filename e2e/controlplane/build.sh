#!/usr/bin/env bash
# Builds the local control plane binaries (kube-apiserver, kube-scheduler, kube-controller-manager,
# kubectl, etcd, kwok) from the wrapper modules here, into a per-version cache outside the repo:
#   ${RACKSCALE_CACHE:-$HOME/.cache/rackscale}/bin/<component>-<version>/
# A component whose binaries are all present is skipped, so a warm run costs well under a second.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${RACKSCALE_CACHE:-$HOME/.cache/rackscale}"

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }
# pinned and ensure_go, shared with the kind build.
# shellcheck source=go-modules.sh
source "$here/go-modules.sh"

k8s_version="$(pinned "$here/kubernetes/go.mod" k8s.io/kubernetes)"
etcd_version="$(pinned "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
kwok_version="$(pinned "$here/kwok/go.mod" sigs.k8s.io/kwok)"

k8s_dir="$cache/bin/kubernetes-$k8s_version"
etcd_dir="$cache/bin/etcd-$etcd_version"
kwok_dir="$cache/bin/kwok-$kwok_version"

have_all() {
  local dir="$1"; shift
  local b
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

# build DIR MODULE_DIR LDFLAGS PKG... : builds into a scratch dir, then renames it into place, so an
# interrupted build never leaves a half-filled directory that a later run would take as warm.
build() {
  local dest="$1" moddir="$2" ldflags="$3"; shift 3
  local tmp="$dest.tmp.$$" start
  rm -rf "$tmp"; mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  start=$SECONDS
  log "building $(basename "$dest") (cold, on 2 cores: kubernetes ~8 min, etcd ~1, kwok ~2)"
  if ! (cd "$moddir" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "$@"); then
    die "go build failed for $(basename "$dest") in $moddir; see the compiler output above"
  fi
  rm -rf "$dest"; mv "$tmp" "$dest"
  trap - EXIT
  log "built $(basename "$dest") in $((SECONDS - start))s -> $dest"
}

if have_all "$k8s_dir" kube-apiserver kube-scheduler kube-controller-manager kubectl; then
  log "kubernetes $k8s_version: cached in $k8s_dir"
else
  ensure_go
  minor="${k8s_version#v1.}"; minor="${minor%%.*}"
  ld="-s -w"
  # kubectl reports its client version from client-go, the servers from component-base.
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  build "$k8s_dir" "$here/kubernetes" "$ld" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
fi

if have_all "$etcd_dir" etcd; then
  log "etcd $etcd_version: cached in $etcd_dir"
else
  ensure_go
  build "$etcd_dir" "$here/etcd" "-s -w" .
fi

if have_all "$kwok_dir" kwok; then
  log "kwok $kwok_version: cached in $kwok_dir"
else
  ensure_go
  build "$kwok_dir" "$here/kwok" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${kwok_version#v}" \
    sigs.k8s.io/kwok/cmd/kwok
fi

printf 'KUBE_BIN_DIR=%s\nETCD_BIN_DIR=%s\nKWOK_BIN_DIR=%s\n' "$k8s_dir" "$etcd_dir" "$kwok_dir"
