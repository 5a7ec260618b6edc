#!/usr/bin/env bash
# Makes the worker nodes of a cluster (kind) look like GB200 rack trays: GPU Feature Discovery
# labels, an NVLink clique per rack, a block per group of racks, and nvidia.com/gpu capacity
# advertised through the node status subresource (no device plugin needed: nothing runs on a GPU).
#
#   KUBECONFIG=... e2e/kind/fake-gpus.sh
#
# Settings (environment): RACKS (2), BLOCKS (2), GPUS_PER_NODE (4), PRODUCT (NVIDIA-GB200),
# GPU_MEMORY_MIB (189471), POOL_TAINT (unset; a pool name adds rackscale.dev/pool=<it>:NoSchedule),
# KUBECTL (kubectl). The kubelet resets extended resources when it restarts: run this again then.
set -euo pipefail

RACKS="${RACKS:-2}"
BLOCKS="${BLOCKS:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
PRODUCT="${PRODUCT:-NVIDIA-GB200}"
GPU_MEMORY_MIB="${GPU_MEMORY_MIB:-189471}"
POOL_TAINT="${POOL_TAINT:-}"
KUBECTL="${KUBECTL:-kubectl}"

die() { echo "fake-gpus.sh: error: $*" >&2; exit 1; }

command -v "$KUBECTL" >/dev/null || die "$KUBECTL not found; set KUBECTL to a kubectl binary"
"$KUBECTL" version >/dev/null 2>&1 || die "no API server answers for the current kubeconfig (KUBECONFIG=${KUBECONFIG:-unset})"

mapfile -t workers < <("$KUBECTL" get nodes -l '!node-role.kubernetes.io/control-plane' \
  -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort)
n="${#workers[@]}"
(( n > 0 )) || die "the cluster has no worker nodes; create it with e2e/kind/kind-config.yaml"
(( RACKS >= 1 && RACKS <= n )) || die "RACKS=$RACKS must be between 1 and the number of workers ($n)"
(( BLOCKS >= 1 && BLOCKS <= RACKS )) || die "BLOCKS=$BLOCKS must be between 1 and RACKS ($RACKS)"

# A stable clique id per rack, shaped like the <cluster uuid>.<clique id> that GFD publishes.
clique() {
  local h
  h="$(printf 'rackscale/%s' "$1" | sha1sum | cut -c1-32)"
  echo "${h:0:8}-${h:8:4}-${h:12:4}-${h:16:4}-${h:20:12}.1"
}

for i in "${!workers[@]}"; do
  node="${workers[$i]}"
  rack_index=$(( i * RACKS / n ))
  rack="$(printf 'r%02d' "$rack_index")"
  block="b$(( rack_index * BLOCKS / RACKS ))"
  "$KUBECTL" label node "$node" --overwrite \
    nvidia.com/gpu.present=true \
    "nvidia.com/gpu.product=$PRODUCT" \
    "nvidia.com/gpu.count=$GPUS_PER_NODE" \
    "nvidia.com/gpu.memory=$GPU_MEMORY_MIB" \
    "nvidia.com/gpu.clique=$(clique "$rack")" \
    "topology.rackscale.dev/block=$block" \
    "topology.rackscale.dev/rack=$rack" >/dev/null
  # "add" replaces an existing member too, so this is safe to run again.
  "$KUBECTL" patch node "$node" --subresource=status --type=json -p "[
    {\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$GPUS_PER_NODE\"},
    {\"op\": \"add\", \"path\": \"/status/allocatable/nvidia.com~1gpu\", \"value\": \"$GPUS_PER_NODE\"}
  ]" >/dev/null
  if [[ -n "$POOL_TAINT" ]]; then
    "$KUBECTL" taint node "$node" --overwrite "rackscale.dev/pool=$POOL_TAINT:NoSchedule" >/dev/null
  fi
  echo "$node: rack $rack, block $block, $GPUS_PER_NODE x $PRODUCT"
done
