#!/usr/bin/env bash
# The pod network of a kind cluster whose node image has no kindnetd: on every node a ptp +
# host-local + portmap conflist for its spec.podCIDR, a route to every other node's pods, and one
# MASQUERADE rule for traffic leaving the pod network. Run from outside (a node's own credentials
# cannot read the other Nodes); safe to run again, as after a node's container restarts (routes
# and iptables rules live in the node's network namespace and go with it).
#
#   KUBECONFIG=... KUBECTL=... e2e/kind/cni.sh [NODE_COUNT]
set -euo pipefail

kubectl="${KUBECTL:-kubectl}"
expected="${1:-1}"
pod_subnet="${POD_SUBNET:-10.244.0.0/16}"
die() { echo "kind/cni.sh: error: $*" >&2; exit 1; }

nodes=""
for _ in $(seq 120); do
  nodes="$("$kubectl" get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')"
  if [[ "$(grep -c . <<<"$nodes")" -ge "$expected" ]] && awk 'NF < 3 {bad=1} END {exit bad}' <<<"$nodes"; then
    break
  fi
  sleep 1
done
awk 'NF < 3 {bad=1} END {exit bad}' <<<"$nodes" || die "nodes without a podCIDR or an address: $nodes"
[[ "$(grep -c . <<<"$nodes")" -ge "$expected" ]] || die "expected $expected nodes, found: $nodes"

while read -r node cidr ip; do
  docker exec "$node" bash -ec "
    mkdir -p /etc/cni/net.d
    cat > /etc/cni/net.d/10-rackscale.conflist <<JSON
{\"cniVersion\": \"0.4.0\", \"name\": \"rackscale\", \"plugins\": [
  {\"type\": \"ptp\", \"ipMasq\": false, \"mtu\": 1500,
   \"ipam\": {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"$cidr\"}]], \"routes\": [{\"dst\": \"0.0.0.0/0\"}]}},
  {\"type\": \"portmap\", \"capabilities\": {\"portMappings\": true}}]}
JSON
    iptables -t nat -C POSTROUTING -s $pod_subnet ! -d $pod_subnet -j MASQUERADE 2>/dev/null \
      || iptables -t nat -A POSTROUTING -s $pod_subnet ! -d $pod_subnet -j MASQUERADE
  " </dev/null || die "configuring the pod network on $node failed"
  while read -r other ocidr oip; do
    [[ "$other" == "$node" ]] || docker exec "$node" ip route replace "$ocidr" via "$oip" </dev/null \
      || die "adding the route to $other's pods on $node failed"
  done <<<"$nodes"
done <<<"$nodes"
echo "kind/cni.sh: pod network on $(grep -c . <<<"$nodes") nodes" >&2
