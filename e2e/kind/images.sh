#!/usr/bin/env bash
# Builds, with no registry, every image the kind cluster needs, each cached under a tag that
# names its version and recipe (a warm run only checks that the tags exist):
#
#   rackscale-kind/base:<recipe>          Debian bookworm with systemd, containerd and runc, and
#                                         kind's node files (from the kind module the build pins)
#   rackscale-kind/node:<k8s>-<recipe>    base + kubelet, kubeadm and the images kubeadm runs
#   rackscale-kind/python:<recipe>        Debian bookworm with Python 3.11 (base of the three below)
#   rackscale:<version>                   the operator, from operator/Dockerfile
#   rackscale-kind/device-plugin:<recipe> the fake-GPU device plugin (e2e/kind/device-plugin)
#   rackscale-kind/shard:<recipe>         the shard test server (e2e/kind/shard)
#
#   e2e/kind/images.sh [base|node|python|operator|plugin|shard|all]...   (default: all)
#
# Prints NODE_IMAGE=..., OPERATOR_IMAGE=..., PLUGIN_IMAGE=..., SHARD_IMAGE=... on stdout.
# Binaries come from e2e/controlplane/build.sh and e2e/kind/build.sh (cached by version).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${RACKSCALE_CACHE:-$HOME/.cache/rackscale}"
work="$cache/kind/work"
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed, FROM a local image works

die() { echo "images.sh: error: $*" >&2; exit 1; }
log() { echo "images.sh: $*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# A short digest of the files a recipe reads, so that editing one rebuilds that image.
recipe() { cat "$@" | sha256sum | cut -c1-12; }
# Bumped by hand when a step below changes what it builds (the tags then change, so it rebuilds).
BASE_RECIPE=1
NODE_RECIPE=1
PYTHON_RECIPE=1
# shellcheck source=../controlplane/go-modules.sh
source "$root/e2e/controlplane/go-modules.sh"
kind_version="$(pinned "$here/modules/kind/go.mod" sigs.k8s.io/kind)"
k8s_version="$(pinned "$root/e2e/controlplane/kubernetes/go.mod" k8s.io/kubernetes)"

kind_dir() {
  (cd "$here/modules/kind" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local go list -m -f '{{.Dir}}' sigs.k8s.io/kind 2>/dev/null) \
    || (cd "$here/modules/kind" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local go mod download sigs.k8s.io/kind \
      && go list -m -f '{{.Dir}}' sigs.k8s.io/kind) \
    || die "cannot download the kind module pinned in $here/modules/kind/go.mod"
}

debootstrap_into() { # DIR PACKAGES
  local dir="$1" packages="$2"
  command -v debootstrap >/dev/null || die "debootstrap is missing (e2e/kind/docker.sh installs it)"
  rm -rf "$dir"; mkdir -p "$dir"
  # The host's own mirror when it names one; debootstrap's default otherwise.
  local mirror="${DEBIAN_MIRROR:-$(sed -n -E 's#^URIs: (http[^ ]*/debian)$#\1#p; s#^deb (http[^ ]*/debian) bookworm .*#\1#p' \
    /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -n1)}"
  debootstrap --variant=minbase --include="$packages" bookworm "$dir" ${mirror:+"$mirror"} >"$dir.log" 2>&1 \
    || { tail -n 20 "$dir.log" >&2; die "debootstrap failed; its log is $dir.log"; }
}

import_rootfs() { # DIR TAG CHANGES...
  local dir="$1" tag="$2"; shift 2
  local changes=() c
  for c in "$@"; do changes+=(--change "$c"); done
  tar -C "$dir" --numeric-owner -c . | docker import "${changes[@]}" - "$tag" >/dev/null \
    || die "docker import of $dir as $tag failed"
}

# --- base: the node's operating system, with kind's node files ---------------------------------
base_packages=systemd,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins,socat
base_tag() { echo "rackscale-kind/base:bookworm-kind-$kind_version-r$BASE_RECIPE"; }

build_base() {
  local tag; tag="$(base_tag)"
  if have_image "$tag"; then log "base: cached ($tag)"; echo "$tag"; return; fi
  local start=$SECONDS dir="$work/base" files
  files="$(kind_dir)/images/base/files"
  log "base: debootstrap bookworm with systemd, containerd, runc (cold: 2-3 min)"
  debootstrap_into "$dir" "$base_packages"
  # kind's node files, as its images/base/Dockerfile copies them.
  install -m 0755 "$files"/usr/local/bin/* "$dir/usr/local/bin/"
  mkdir -p "$dir/kind" "$dir/LICENSES"; cp -r "$files/kind/." "$dir/kind/"; chmod 755 "$dir/kind" "$dir/kind/bin" "$dir"/kind/bin/*
  cp "$files"/etc/crictl.yaml "$dir/etc/"
  mkdir -p "$dir/etc/containerd" "$dir/etc/default" "$dir/etc/sysctl.d" "$dir/etc/systemd/system/kubelet.service.d"
  cp "$files"/etc/containerd/* "$dir/etc/containerd/"
  cp "$files"/etc/default/* "$dir/etc/default/"
  cp "$files"/etc/sysctl.d/* "$dir/etc/sysctl.d/"
  cp "$files"/etc/systemd/system/*.service "$files"/etc/systemd/system/*.slice "$dir/etc/systemd/system/"
  cp "$files"/etc/systemd/system/kubelet.service.d/* "$dir/etc/systemd/system/kubelet.service.d/"
  # Debian's containerd 1.6 and runc, where kind's own build puts them in /usr/local.
  sed -i 's#^ExecStart=/usr/local/bin/containerd#ExecStart=/usr/bin/containerd#' "$dir/etc/systemd/system/containerd.service"
  # runc cannot set a negative oom_score_adj where the capability bounding set lacks
  # CAP_SYS_RESOURCE ("can't get final child's PID from pipe: EOF"); the fuse-overlayfs proxy
  # is only for rootless nodes, whose snapshotter this image does not ship.
  sed -i -e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' \
    -e '/^\[proxy_plugins/,/^$/d' "$dir/etc/containerd/config.toml"
  mkdir -p "$dir/opt/cni"; ln -sfn /usr/lib/cni "$dir/opt/cni/bin"
  # On cgroup v1 kind starts kubeadm as soon as it reads "detected cgroup v1", racing systemd's
  # boot ("failed to reload systemd"); reworded, kind waits for the multi-user target instead.
  sed -i "s#log_info 'detected cgroup v1'#log_info 'found cgroup v1'#" "$dir/usr/local/bin/entrypoint"
  chroot "$dir" /bin/bash -euc '
    ctr oci spec | jq ".hooks.createContainer[.hooks.createContainer | length] |= . + {\"path\": \"/kind/bin/mount-product-files.sh\"}" \
      | jq "del(.process.rlimits)" > /etc/containerd/cri-base.json
    find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
    rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
    echo ReadKMsg=no >> /etc/systemd/journald.conf
    ln -sf /usr/lib/systemd/systemd /sbin/init
    systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
    systemctl mask systemd-binfmt.service >/dev/null 2>&1
    mkdir -p /etc/kubernetes/manifests
    apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/*
  '
  import_rootfs "$dir" "$tag.rootfs"
  # `docker import` cannot set STOPSIGNAL: one classic build adds what kind's Dockerfile sets.
  printf 'FROM %s\nENV container=docker\nSTOPSIGNAL SIGRTMIN+3\nENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]\n' \
    "$tag.rootfs" | docker build -q -t "$tag" - >/dev/null || die "docker build of $tag failed"
  docker rmi "$tag.rootfs" >/dev/null
  rm -rf "$dir" "$dir.log"
  log "base: built $tag in $((SECONDS - start))s"
  echo "$tag"
}

# --- python: the base of the operator, device-plugin and shard images ---------------------------
python_tag() { echo "rackscale-kind/python:3.11-bookworm-r$PYTHON_RECIPE"; }

build_python() {
  local tag; tag="$(python_tag)"
  if have_image "$tag"; then log "python: cached ($tag)"; echo "$tag"; return; fi
  local start=$SECONDS dir="$work/python"
  log "python: debootstrap bookworm with python3 and its venv module (cold: 1-2 min)"
  debootstrap_into "$dir" python3,python3-venv,python-is-python3,ca-certificates
  chroot "$dir" /bin/sh -ec 'apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/*'
  # The host's trust store: behind a TLS-inspecting proxy, pip in the image builds reaches the
  # package index exactly as the host does.
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  import_rootfs "$dir" "$tag" 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV LANG=C.UTF-8' 'CMD ["python3"]'
  rm -rf "$dir" "$dir.log"
  log "python: built $tag in $((SECONDS - start))s"
  echo "$tag"
}

# --- node: base + kubelet, kubeadm, kubectl and the images kubeadm runs, preloaded --------------
node_tag() { echo "rackscale-kind/node:$k8s_version-r$NODE_RECIPE"; }

# env_of SCRIPT KEY: one KEY=value line of what a build script prints.
env_of() { sed -n "s/^$2=//p" <<<"$1" | tail -n1; }

# image_from_files TAG ENTRYPOINT_JSON SRC:DEST...: a scratch image holding static binaries.
image_from_files() {
  local tag="$1" entrypoint="$2"; shift 2
  local dir="$work/img" pair
  rm -rf "$dir"; mkdir -p "$dir/tmp" "$dir/etc"; chmod 1777 "$dir/tmp"
  for pair in "$@"; do
    mkdir -p "$dir/$(dirname "${pair#*:}")"
    cp -a "${pair%%:*}" "$dir/${pair#*:}"
  done
  # No /etc/passwd in these images; components that look names up get nobody.
  printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' > "$dir/etc/passwd"
  import_rootfs "$dir" "$tag" 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "ENTRYPOINT $entrypoint"
  rm -rf "$dir"
}

build_node() {
  local tag; tag="$(node_tag)"
  if have_image "$tag"; then log "node: cached ($tag)"; echo "$tag"; return; fi
  local start=$SECONDS base out kube etcd node coredns
  base="$(build_base)"
  local etcd_pin; etcd_pin="$(pinned "$root/e2e/controlplane/etcd/go.mod" go.etcd.io/etcd/server/v3)"
  kube="$cache/bin/kubernetes-$k8s_version"; etcd="$cache/bin/etcd-$etcd_pin"
  if [[ ! -x "$kube/kube-apiserver" || ! -x "$etcd/etcd" ]]; then
    out="$(bash "$root/e2e/controlplane/build.sh")"
    kube="$(env_of "$out" KUBE_BIN_DIR)"; etcd="$(env_of "$out" ETCD_BIN_DIR)"
  fi
  out="$(bash "$here/build.sh" node)"; node="$(env_of "$out" NODE_BIN_DIR)"
  out="$(bash "$here/build.sh" coredns)"; coredns="$(env_of "$out" COREDNS_BIN)"
  log "node: images for kubeadm $k8s_version, then the node image"
  local refs ref name images=() etcd_version coredns_version
  etcd_version="$("$etcd/etcd" --version | sed -n 's/^etcd Version: //p')"
  coredns_version="$(basename "$(dirname "$coredns")")"; coredns_version="${coredns_version#coredns-}"
  # kubeadm names its images; etcd and CoreDNS are the versions this project builds, which the
  # cluster config (e2e/kind/up.sh) gives kubeadm as their tags.
  refs="$("$node/kubeadm" config images list --kubernetes-version "$k8s_version" 2>/dev/null)" \
    || die "kubeadm config images list failed"
  for ref in $refs; do
    name="${ref%:*}"
    case "$name" in
      */kube-apiserver|*/kube-controller-manager|*/kube-scheduler)
        image_from_files "$ref" '[]' "$kube/$(basename "$name"):usr/local/bin/$(basename "$name")" ;;
      */kube-proxy)
        build_kube_proxy "$ref" "$base" "$node/kube-proxy" ;;
      */etcd)
        ref="$name:$etcd_version-0"
        image_from_files "$ref" '[]' "$etcd/etcd:usr/local/bin/etcd" ;;
      */coredns)
        ref="$name:$coredns_version"
        image_from_files "$ref" '["/coredns"]' "$coredns:coredns" ;;
      */pause)
        pause_ref="$ref"
        image_from_files "$ref" '["/pause"]' "$node/pause:pause" ;;
      *) die "kubeadm names an image this script does not know how to make: $ref" ;;
    esac
    images+=("$ref")
  done
  [[ -n "${pause_ref:-}" ]] || die "kubeadm named no pause image"

  local box=rackscale-kind-assemble
  docker rm -f "$box" >/dev/null 2>&1 || true
  docker run -d --name "$box" --entrypoint sleep "$base" infinity >/dev/null
  trap 'docker rm -f rackscale-kind-assemble >/dev/null 2>&1 || true' EXIT
  docker cp "$node/kubelet" "$box:/usr/bin/kubelet" >&2
  docker cp "$node/kubeadm" "$box:/usr/bin/kubeadm" >&2
  docker cp "$kube/kubectl" "$box:/usr/bin/kubectl" >&2
  docker exec "$box" bash -ec "
    echo '$k8s_version' > /kind/version
    sed -i 's#sandbox_image = .*#sandbox_image = \"$pause_ref\"#' /etc/containerd/config.toml
    mkdir -p /kind/manifests
    (containerd >/tmp/containerd.log 2>&1 &)
    for _ in \$(seq 60); do ctr version >/dev/null 2>&1 && exit 0; sleep 0.5; done
    cat /tmp/containerd.log; exit 1
  " || die "containerd did not start in the image being assembled"
  for ref in "${images[@]}"; do
    docker save "$ref" | docker exec -i "$box" ctr -n k8s.io images import --all-platforms --no-unpack --digests - >/dev/null \
      || die "importing $ref into the node image failed"
    docker exec "$box" ctr -n k8s.io images label "$ref" io.cri-containerd.pinned=pinned >/dev/null
    docker rmi "$ref" >/dev/null
  done
  # The box's PID 1 (sleep) reaps nothing: containerd is gone once it is a zombie.
  docker exec "$box" bash -ec 'pkill -x containerd
    while pid="$(pgrep -x containerd)" && [[ "$(ps -o stat= -p "$pid")" != Z* ]]; do sleep 0.2; done
    rm -f /tmp/containerd.log'
  docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
    --change "LABEL rackscale.dev/kubeadm-tags=\"$etcd_version-0 $coredns_version\"" \
    "$box" "$tag" >/dev/null
  docker rm -f "$box" >/dev/null; trap - EXIT
  log "node: built $tag in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}'))"
  echo "$tag"
}

# kube-proxy in iptables mode needs iptables (nft backend), conntrack and their libraries: taken
# from the node's own base image, so that they match the node's kernel interface exactly.
build_kube_proxy() {
  local ref="$1" base="$2" binary="$3" dir="$work/kube-proxy"
  rm -rf "$dir"; mkdir -p "$dir/usr/local/bin" "$dir/tmp"; chmod 1777 "$dir/tmp"
  docker run --rm --entrypoint /bin/bash "$base" -ec '
    files=(/usr/sbin/xtables-nft-multi /usr/sbin/conntrack /usr/lib/x86_64-linux-gnu/xtables /etc/ethertypes)
    libs=$(for f in /usr/sbin/xtables-nft-multi /usr/sbin/conntrack /usr/lib/x86_64-linux-gnu/xtables/*.so; do
      ldd "$f" | awk "/=> \\// {print \$3} /^\\t\\/lib/ {print \$1}"; done | sort -u)
    tar -chf - "${files[@]}" $libs /lib64/ld-linux-x86-64.so.2 2>/dev/null
  ' | tar -C "$dir" -xf - || die "copying iptables out of $base failed"
  local t
  for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-nft-multi "$dir/usr/sbin/$t"
  done
  cp "$binary" "$dir/usr/local/bin/kube-proxy"
  import_rootfs "$dir" "$ref" 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'ENTRYPOINT ["/usr/local/bin/kube-proxy"]'
  rm -rf "$dir"
}

# --- the images the tests run ---------------------------------------------------------------
# operator: operator/Dockerfile on the local Python base. The classic builder ignores
# operator/Dockerfile.dockerignore, so the context is staged from that file's allow-list.
build_operator() {
  local sources tag context
  mapfile -t sources < <(sed -n 's#^!\(.*\)#\1#p' "$root/operator/Dockerfile.dockerignore" | sed 's#/$##')
  tag="rackscale:kind-$( (cd "$root" && find "${sources[@]}" -type f ! -name '*.pyc' -print0 | sort -z \
    | xargs -0 cat; cat operator/Dockerfile) | sha256sum | cut -c1-12)"
  if have_image "$tag"; then log "operator: cached ($tag)"; echo "$tag"; return; fi
  local start=$SECONDS python; python="$(build_python)"
  context="$work/operator-context"; rm -rf "$context"; mkdir -p "$context"
  (cd "$root" && tar -c --exclude=__pycache__ --exclude='*.pyc' "${sources[@]}" operator/Dockerfile) | tar -C "$context" -x
  docker build -q --build-arg "BASE_IMAGE=$python" -f "$context/operator/Dockerfile" -t "$tag" "$context" >/dev/null \
    || die "docker build of operator/Dockerfile failed (run it without -q to see why)"
  rm -rf "$context"
  log "operator: built $tag in $((SECONDS - start))s"
  echo "$tag"
}

# build_dir NAME DIR: one of the test images in e2e/kind/<dir>, tagged by its files' digest.
build_dir() {
  local name="$1" dir="$here/$2" tag
  tag="rackscale-kind/$name:$(recipe "$dir"/*)"
  if have_image "$tag"; then log "$name: cached ($tag)"; echo "$tag"; return; fi
  local start=$SECONDS python; python="$(build_python)"
  docker build -q --build-arg "BASE=$python" -t "$tag" "$dir" >/dev/null \
    || die "docker build of $dir failed (run it without -q to see why)"
  log "$name: built $tag in $((SECONDS - start))s"
  echo "$tag"
}

steps=("${@:-all}")
[[ "${steps[*]}" == all ]] && steps=(node operator plugin shard)
for what in "${steps[@]}"; do
case "$what" in
  base) build_base >/dev/null ;;
  python) build_python >/dev/null ;;
  node) t="$(build_node)"; echo "NODE_IMAGE=$t" ;;
  operator) t="$(build_operator)"; echo "OPERATOR_IMAGE=$t" ;;
  plugin) t="$(build_dir device-plugin device-plugin)"; echo "PLUGIN_IMAGE=$t" ;;
  shard) t="$(build_dir shard shard)"; echo "SHARD_IMAGE=$t" ;;
  *) die "unknown step '$what'" ;;
esac
done
