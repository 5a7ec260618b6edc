#!/usr/bin/env bash
# Deletes the kind cluster and everything the kind path started: its node containers, the `kind`
# network, a leftover image-assembly container, and the Docker engine when e2e/kind/docker.sh
# started it. The images stay (the next `make kind-up` is warm). Then checks that nothing is left.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${RACKSCALE_CACHE:-$HOME/.cache/rackscale}"
name="${KIND_CLUSTER:-rackscale}"
die() { echo "kind/down.sh: error: $*" >&2; exit 1; }
log() { echo "kind/down.sh: $*" >&2; }

if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
  kind="$(ls "$cache"/bin/kind-*/kind 2>/dev/null | tail -n1 || true)"
  if [[ -n "$kind" ]] && "$kind" get clusters 2>/dev/null | grep -qx "$name"; then
    "$kind" delete cluster --name "$name" >&2
  fi
  # Containers kind made for this cluster, should its own delete have missed one.
  leftovers="$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name"; docker ps -aq --filter name=rackscale-kind-assemble)"
  [[ -z "$leftovers" ]] || docker rm -f $leftovers >/dev/null
  if docker network inspect kind >/dev/null 2>&1 && [[ -z "$(docker network inspect -f '{{range .Containers}}x{{end}}' kind)" ]]; then
    docker network rm kind >/dev/null
  fi
  rm -rf "$cache/kind/cluster-$name"
  left="$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name")"
  [[ -z "$left" ]] || die "containers of cluster $name are still there: $left"
  docker network inspect kind >/dev/null 2>&1 && die "the kind network is still there (another cluster on it?)"
fi
bash "$here/docker.sh" stop
log "cluster $name deleted; no container or network of it is left"
