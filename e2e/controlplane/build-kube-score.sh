#!/usr/bin/env bash
# Builds kube-score (the chart linter e2e/test_chart.py runs on `helm template`) from its Go
# module into a per-version cache outside the repo:
#   ${RACKSCALE_CACHE:-$HOME/.cache/rackscale}/bin/kube-score-<version>/kube-score
# A cached binary is not rebuilt. Prints KUBE_SCORE_BIN=<path>.
set -euo pipefail

version=v1.20.0
cache="${RACKSCALE_CACHE:-$HOME/.cache/rackscale}"
dest="$cache/bin/kube-score-$version"

die() { echo "build-kube-score.sh: error: $*" >&2; exit 1; }
log() { echo "build-kube-score.sh: $*" >&2; }

if [[ -x "$dest/kube-score" ]]; then
  log "kube-score $version: cached in $dest"
else
  command -v go >/dev/null || die "go is not on PATH; install Go 1.26 or newer and retry"
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0
  tmp="$dest.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  start=$SECONDS
  log "building kube-score $version (cold: a few minutes)"
  # `go install module@version` builds with the module's own go.sum: the version is the pin.
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w -X main.version=$version" \
    "github.com/zegl/kube-score/cmd/kube-score@$version" || die "go install failed for kube-score"
  rm -rf "$dest"; mv "$tmp" "$dest"
  trap - EXIT
  log "built kube-score $version in $((SECONDS - start))s -> $dest"
fi

printf 'KUBE_SCORE_BIN=%s\n' "$dest/kube-score"
