#!/usr/bin/env bash
# Builds helm (for the chart tests) from the wrapper module in helm/, into a per-version cache
# outside the repo: ${RACKSCALE_CACHE:-$HOME/.cache/rackscale}/bin/helm-<version>/helm
# A cached binary is not rebuilt, so a warm run costs well under a second. Prints HELM_BIN=<path>.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${RACKSCALE_CACHE:-$HOME/.cache/rackscale}"
module=helm.sh/helm/v4

die() { echo "build-helm.sh: error: $*" >&2; exit 1; }
log() { echo "build-helm.sh: $*" >&2; }

# The version is whatever the wrapper's go.mod requires: there is no second copy to drift.
version="$(sed -n -E "s#^[[:space:]]*(require[[:space:]]+)?${module//./\\.}[[:space:]]+(v[^[:space:]]+).*#\\2#p" \
  "$here/helm/go.mod" | head -n1)"
[[ -n "$version" ]] || die "$here/helm/go.mod does not require $module"
dest="$cache/bin/helm-$version"

if [[ -x "$dest/helm" ]]; then
  log "helm $version: cached in $dest"
else
  command -v go >/dev/null || die "go is not on PATH; install Go 1.26 or newer and retry"
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0
  # The committed go.sum is the pin; a build must never rewrite it.
  export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"
  # Without the stamp `helm version` reports only the major.minor compiled into the source.
  ldflags="-s -w -X $module/internal/version.version=$version -X $module/internal/version.gitTreeState=clean"
  tmp="$dest.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  start=$SECONDS
  log "building helm $version (cold, on 2 cores: a few minutes)"
  if ! (cd "$here/helm" && go build -trimpath -ldflags "$ldflags" -o "$tmp/helm" "$module/cmd/helm"); then
    die "go build failed for helm in $here/helm; see the compiler output above"
  fi
  # Renamed into place only when whole, so an interrupted build is never taken as cached.
  rm -rf "$dest"; mv "$tmp" "$dest"
  trap - EXIT
  log "built helm $version in $((SECONDS - start))s -> $dest"
fi

printf 'HELM_BIN=%s\n' "$dest/helm"
