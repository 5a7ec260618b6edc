#!/usr/bin/env bash
# Builds the krew release archive dist/kubectl-rackscale-<version>.tar.gz (the launcher beside
# this script and the rackscale wheel) and writes its sha256 into rackscale.yaml.
# Run from the repository root: bash plugins/krew/build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
version="$("$python" -c 'import rackscale; print(rackscale.__version__)')"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work" "$root"
cp "$here/kubectl-rackscale" "$work/"
mkdir -p "$root/dist"
archive="$root/dist/kubectl-rackscale-$version.tar.gz"
# Fixed times, owners and order: the same commit gives the same archive, and the same sha256.
tar -C "$work" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - \
  kubectl-rackscale "rackscale-$version-py3-none-any.whl" | gzip -n > "$archive"
sum="$(sha256sum "$archive" | cut -d' ' -f1)"
sed -i -E "s/^( *sha256: ).*/\\1$sum/; s/^( *version: ).*/\\1v$version/" "$here/rackscale.yaml"
echo "built $archive (sha256 $sum); plugins/krew/rackscale.yaml updated"
