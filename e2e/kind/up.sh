#!/usr/bin/env bash
# Brings up the kind cluster of the kind tests, from nothing if need be, and prints its kubeconfig:
#   1. a Docker engine (e2e/kind/docker.sh installs Debian's docker.io when none answers);
#   2. kind, and a node image for the pinned Kubernetes version built here (e2e/kind/images.sh),
#      or KIND_NODE_IMAGE=<published image> for users with a registry;
#   3. one control plane and four workers (kind-config.yaml: two racks in two blocks), a CNI
#      (ptp + host-local per node podCIDR, routes between nodes) when the local image is used;
#   4. the images of the operator, the fake-GPU device plugin and the shard server loaded into
#      the nodes; the device plugin's DaemonSet; the operator from charts/rackscale with helm.
# A cluster that is already up is kept (each step checks before it acts).
#
# Settings (environment): KIND_NODE_IMAGE, KIND_CLUSTER (rackscale), GPUS_PER_NODE (4).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${RACKSCALE_CACHE:-$HOME/.cache/rackscale}"
name="${KIND_CLUSTER:-rackscale}"
state="$cache/kind/cluster-$name"
kubeconfig="$state/kubeconfig"
gpus="${GPUS_PER_NODE:-4}"
pod_subnet=10.244.0.0/16
mkdir -p "$state"

die() { echo "kind/up.sh: error: $*" >&2; exit 1; }
log() { echo "kind/up.sh: $*" >&2; }
step() { # step NAME COMMAND...: runs one step and says how long it took
  local what="$1" start=$SECONDS; shift
  "$@"
  log "$what: $((SECONDS - start))s"
}
env_of() { sed -n "s/^$2=//p" <<<"$1" | tail -n1; }

step docker bash "$here/docker.sh"
out="$(bash "$here/build.sh" kind)"; kind="$(env_of "$out" KIND_BIN)"
out="$(bash "$root/e2e/controlplane/build.sh")"; kubectl_bin="$(env_of "$out" KUBE_BIN_DIR)/kubectl"
out="$(bash "$root/e2e/controlplane/build-helm.sh")"; helm="$(env_of "$out" HELM_BIN)"
[[ -x "$helm" ]] || die "build-helm.sh printed no HELM_BIN"
k() { "$kubectl_bin" --kubeconfig "$kubeconfig" "$@"; }

images_start=$SECONDS
if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
  node_image="$KIND_NODE_IMAGE"
  log "node image: $node_image (KIND_NODE_IMAGE)"
else
  out="$(bash "$here/images.sh" node)"; node_image="$(env_of "$out" NODE_IMAGE)"
fi
out="$(bash "$here/images.sh" operator plugin shard)"
operator_image="$(env_of "$out" OPERATOR_IMAGE)"
plugin_image="$(env_of "$out" PLUGIN_IMAGE)"
shard_image="$(env_of "$out" SHARD_IMAGE)"
log "images: $((SECONDS - images_start))s"

config="$state/kind-config.yaml"
cp "$here/kind-config.yaml" "$config"
if [[ -z "${KIND_NODE_IMAGE:-}" ]]; then
  # The locally built node image has no kindnetd (it is not on the module proxy) and runs the
  # etcd and CoreDNS this project builds, whose versions kubeadm is given as image tags.
  tags="$(docker image inspect -f '{{index .Config.Labels "rackscale.dev/kubeadm-tags"}}' "$node_image")"
  [[ -n "$tags" ]] || die "$node_image carries no rackscale.dev/kubeadm-tags label; rebuild it with e2e/kind/images.sh"
  etcd_tag="${tags%% *}"; coredns_tag="${tags##* }"
  cat >> "$config" <<YAML
networking:
  disableDefaultCNI: true
  podSubnet: $pod_subnet
kubeadmConfigPatches:
  - |
    kind: ClusterConfiguration
    etcd:
      local:
        imageTag: "$etcd_tag"
    dns:
      imageTag: "$coredns_tag"
YAML
fi
# kubelet 1.36 refuses cgroup v1 unless told; harmless on cgroup v2.
if [[ ! -f /sys/fs/cgroup/cgroup.controllers ]]; then
  grep -q '^kubeadmConfigPatches:' "$config" || echo 'kubeadmConfigPatches:' >> "$config"
  cat >> "$config" <<'YAML'
  - |
    kind: KubeletConfiguration
    failCgroupV1: false
YAML
fi

create() {
  if "$kind" get clusters 2>/dev/null | grep -qx "$name"; then
    log "cluster $name exists; keeping it"
    "$kind" get kubeconfig --name "$name" > "$kubeconfig"
    return
  fi
  "$kind" create cluster --name "$name" --image "$node_image" --config "$config" \
    --kubeconfig "$kubeconfig" --wait 0s \
    || die "kind create cluster failed (see above); \`make kind-down\` removes what is left"
}
step "cluster create" create

cni() { KUBECONFIG="$kubeconfig" KUBECTL="$kubectl_bin" POD_SUBNET="$pod_subnet" bash "$here/cni.sh" "$(grep -c "role:" "$here/kind-config.yaml")"; }
[[ -n "${KIND_NODE_IMAGE:-}" ]] || step cni cni

ready() {
  k wait --for=condition=Ready nodes --all --timeout=300s >/dev/null \
    || { k get nodes -o wide >&2; die "nodes not Ready within 5 min"; }
  k -n kube-system rollout status deployment/coredns --timeout=300s >/dev/null \
    || { k -n kube-system get pods -o wide >&2; die "CoreDNS did not become ready"; }
}
step "nodes Ready" ready

# Each image saved once, then imported into every node that runs it at the same time: the
# operator's into the control plane (where it runs), the others into every worker.
load() {
  local node workers targets image file pids=()
  workers="$(k get nodes -l '!node-role.kubernetes.io/control-plane' -o name | sed 's#^node/##')"
  for image in "$operator_image" "$plugin_image" "$shard_image"; do
    file="$state/image.tar"
    pids=()
    targets="$workers"
    [[ "$image" == "$operator_image" ]] \
      && targets="$(k get nodes -l node-role.kubernetes.io/control-plane -o name | sed 's#^node/##')"
    for node in $targets; do
      # containerd names a one-part repository docker.io/library/<it>, others docker.io/<it>.
      if docker exec "$node" ctr -n k8s.io images ls -q 2>/dev/null \
        | grep -qxE "docker\.io/(library/)?${image//./\\.}"; then continue; fi
      [[ -f "$file" ]] || docker save -o "$file" "$image"
      docker exec -i "$node" ctr -n k8s.io images import --digests --snapshotter=overlayfs - <"$file" >/dev/null &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || die "loading $image into a node failed"; done
    rm -f "$file"
  done
}
step "images loaded" load

plugin() {
  sed -e "s#image: IMAGE#image: $plugin_image#" -e "s#value: \"GPUS\"#value: \"$gpus\"#" \
    "$here/device-plugin/daemonset.yaml" | k apply -f - >/dev/null
  k -n kube-system rollout status daemonset/rackscale-fake-gpu --timeout=180s >/dev/null \
    || { k -n kube-system logs -l app.kubernetes.io/name=rackscale-fake-gpu --tail=20 >&2 || true
         die "the fake-GPU device plugin did not start"; }
  local missing
  for _ in $(seq 60); do
    missing="$(k get nodes -l '!node-role.kubernetes.io/control-plane' \
      -o jsonpath='{range .items[*]}{.metadata.name}={.status.allocatable.nvidia\.com/gpu} {.metadata.labels.nvidia\.com/gpu\.clique}{"\n"}{end}' \
      | awk -v n="$gpus" '{split($1, a, "="); if (a[2] != n || $2 == "") print a[1]}')"
    [[ -z "$missing" ]] && return
    sleep 1
  done
  die "nodes without $gpus nvidia.com/gpu or a clique label from the device plugin: $missing"
}
step "device plugin" plugin

# The operator runs on the control-plane node: the tests stop GPU workers, and an operator on
# one of them would stop with it.
operator() {
  local repo="${operator_image%:*}" tag="${operator_image##*:}"
  "$helm" --kubeconfig "$kubeconfig" upgrade --install rackscale "$root/charts/rackscale" \
    --namespace rackscale-system --create-namespace \
    --set "image.repository=$repo" --set "image.tag=$tag" --set image.pullPolicy=Never \
    --set-string 'nodeSelector.node-role\.kubernetes\.io/control-plane=' \
    --set 'tolerations[0].key=node-role.kubernetes.io/control-plane' \
    --set 'tolerations[0].operator=Exists' --set 'tolerations[0].effect=NoSchedule' \
    --wait --timeout 180s >/dev/null \
    || { k -n rackscale-system get pods -o wide >&2; k -n rackscale-system logs deploy/rackscale --tail=30 >&2 || true
         die "helm install charts/rackscale did not become ready"; }
}
step "operator (helm)" operator

printf 'KIND_KUBECONFIG=%s\nKIND_BIN=%s\nKUBECTL=%s\nSHARD_IMAGE=%s\nOPERATOR_IMAGE=%s\n' \
  "$kubeconfig" "$kind" "$kubectl_bin" "$shard_image" "$operator_image"
