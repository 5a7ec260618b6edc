#!/usr/bin/env bash
# `make test-kind`: brings the kind cluster up (e2e/kind/up.sh, from nothing if need be), runs the
# kind tests against it, then deletes it (e2e/kind/down.sh) unless KIND_KEEP=1. A cluster that
# cannot come up fails here with up.sh's reason; the tests are never skipped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
env_of() { sed -n "s/^$2=//p" <<<"$1" | tail -n1; }

start=$SECONDS
[[ "${KIND_KEEP:-0}" == 1 ]] || trap 'bash "$here/down.sh" || true' EXIT
out="$(bash "$here/up.sh")" || { echo "test-kind: the kind cluster did not come up (see above)" >&2; exit 1; }
echo "test-kind: cluster up in $((SECONDS - start))s" >&2
docker stats --no-stream --format '{{.Name}}\t{{.MemUsage}}' >&2 || true

tests=$SECONDS
status=0
RACKSCALE_KIND_KUBECONFIG="$(env_of "$out" KIND_KUBECONFIG)" \
RACKSCALE_KIND_KUBECTL="$(env_of "$out" KUBECTL)" \
RACKSCALE_KIND_SHARD_IMAGE="$(env_of "$out" SHARD_IMAGE)" \
  "$python" -m pytest "$root/e2e/kind" -p no:cacheprovider -s "$@" || status=$?
echo "test-kind: tests ran in $((SECONDS - tests))s; total $((SECONDS - start))s" >&2
exit "$status"
