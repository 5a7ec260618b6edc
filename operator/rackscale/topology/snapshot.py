"""The snapshot: racks of each pool with per-node usage, kept indexed for fast best-fit lookups.

Built once from plain Node, Pod and RackPool objects. Usage is mutable so the placement engine can
reserve and undo; every change goes through `Rack.use`, which keeps the indexes true.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sortedcontainers import SortedList

from rackscale.api.rackpool import (
    DEFAULT_GPU_RESOURCE,
    GPU_MEMORY_LABEL,
    POOL_TAINT_KEY,
    RackPool,
    RackPoolSpec,
)
from rackscale.topology.objects import gpu_request, node_gpus, node_ready, pinned_node, terminated

DEPLOYMENT_LABEL = "rackscale.dev/deployment"
REPLICA_LABEL = "rackscale.dev/replica"
EXCLUSIVE_LABEL = "rackscale.dev/exclusive"
# A pod of a replica with a ComputeDomain names it: a node holds pods of at most one.
COMPUTE_DOMAIN_LABEL = "rackscale.dev/compute-domain"


def compute_domain_name(deployment: str, replica: int) -> str:
    """The ComputeDomain of one replica, in the deployment's namespace: `<name>-<replica>`."""
    return f"{deployment}-{replica}"


def group_compute_domain_name(deployment: str, group: int) -> str:
    """The ComputeDomain shared by the role replicas of one serving group: `<name>-g<group>`."""
    return f"{deployment}-g{group}"


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str

    def tolerated_by(self, tolerations: Iterable[dict[str, Any]]) -> bool:
        for t in tolerations:
            if t.get("effect") and t.get("effect") != self.effect:
                continue
            if t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == self.key):
                return True
            if t.get("key") == self.key and (t.get("value") or "") == self.value:
                return True
        return False


@dataclass(slots=True)
class Node:
    """A node (an NVL72 tray, an HGX server): its GPUs and whether it takes new work."""

    name: str
    labels: dict[str, str]
    allocatable: int
    used: int = 0
    ready: bool = True
    cordoned: bool = False
    taints: tuple[Taint, ...] = ()  # NoSchedule/NoExecute taints, the pool's own excepted
    pool: str | None = None
    rack: Rack | None = None
    domains: Counter[str] = field(default_factory=Counter)  # ComputeDomain -> its pods here
    gpu_memory_mib: int | None = None  # per GPU: the pool's gpuMemoryMiB, else the node's label

    @property
    def free(self) -> int:
        return max(self.allocatable - self.used, 0)

    @property
    def healthy(self) -> bool:
        return self.ready and not self.cordoned and not self.taints

    def schedulable(self, tolerations: tuple[dict[str, Any], ...] = ()) -> bool:
        if not self.ready or self.cordoned:
            return False
        return all(t.tolerated_by(tolerations) for t in self.taints)

    def problem(self) -> str | None:
        if not self.ready:
            return "NotReady"
        if self.cordoned:
            return "cordoned"
        if self.taints:
            return "tainted " + ",".join(f"{t.key}:{t.effect}" for t in self.taints)
        return None


@dataclass(eq=False, slots=True)
class Rack:
    """The nodes under one rack label: one NVLink domain when the pool says `nvlinkDomain: Rack`."""

    name: str
    block: str | None
    pool: Pool
    nodes: list[Node] = field(default_factory=list)
    free: int = 0  # free GPUs on healthy nodes
    used: int = 0  # GPUs held on any node of the rack
    schedulable: int = 0  # allocatable GPUs on healthy nodes
    allocatable: int = 0
    free_histogram: Counter[int] = field(default_factory=Counter)  # healthy nodes by free GPUs
    namespaces: Counter[str] = field(default_factory=Counter)  # GPU pods by namespace
    deployments: Counter[str] = field(default_factory=Counter)  # rackscale pods by deployment
    held_by: tuple[str, int] | None = None  # (deployment, replica) holding it exclusively
    kept_for: str | None = None  # a waiting deployment one pass keeps it for (see `keep`)

    @property
    def key(self) -> tuple[int, str]:
        return (self.free, self.name)

    @property
    def health(self) -> str:
        if self.schedulable == 0:
            return "Unavailable"
        return "Healthy" if self.schedulable >= self.pool.spec.gpus_per_rack else "Degraded"

    @property
    def empty(self) -> bool:
        return self.used == 0 and self.held_by is None

    def slots(self, size: int) -> int:
        """How many groups of `size` GPUs, each on one healthy node, the rack can still take."""
        return sum(n * (free // size) for free, n in self.free_histogram.items())

    def _index(self, add: bool) -> None:
        if self.held_by is not None or self.kept_for is not None:
            return  # out of reach whatever its room: in neither index
        indexes = [self.pool.by_free]
        if self.empty:
            indexes.append(self.pool.empty_by_free)
        for index in indexes:
            (index.add if add else index.remove)(self.key)

    def use(
        self,
        node: Node,
        gpus: int,
        namespace: str | None,
        deployment: str | None,
        domain: str | None = None,
    ) -> None:
        """Add `gpus` (negative to release) held on `node` by a pod, keeping the indexes true;
        `domain`: the pod's ComputeDomain (`namespace/name`), if it has one."""
        self._index(add=False)
        if node.healthy:
            self.free_histogram[node.free] -= 1
            if not self.free_histogram[node.free]:
                del self.free_histogram[node.free]
        before = node.free
        node.used += gpus
        self.used += gpus
        if node.healthy:
            self.free += node.free - before
            self.free_histogram[node.free] += 1
        step = 1 if gpus > 0 else -1
        counters = (
            (self.namespaces, namespace),
            (self.deployments, deployment),
            (node.domains, domain),
        )
        for counter, name in counters:
            if name is not None:
                counter[name] += step
                if counter[name] <= 0:
                    del counter[name]
        self._index(add=True)

    def hold(self, holder: tuple[str, int] | None) -> None:
        self._index(add=False)
        self.held_by = holder
        self._index(add=True)

    def keep(self, deployment: str | None) -> None:
        """Keep the rack for a waiting replica that fits once its GPUs being released are free
        (None: no longer); the placement engine keeps racks for the length of one pass."""
        self._index(add=False)
        self.kept_for = deployment
        self._index(add=True)


class Releasing(NamedTuple):
    """A pod being deleted: it holds its GPUs until it is gone."""

    node: Node
    gpus: int
    namespace: str
    deployment: str | None
    domain: str | None = None


@dataclass(eq=False, slots=True)
class Pool:
    """A RackPool's racks, indexed by free GPUs for best fit."""

    name: str
    spec: RackPoolSpec
    generation: int | None = None
    racks: dict[str, Rack] = field(default_factory=dict)
    # (free GPUs, rack name) of every rack, and of the racks nothing uses: best fit is a bisect.
    by_free: SortedList = field(default_factory=SortedList)
    empty_by_free: SortedList = field(default_factory=SortedList)
    releasing: list[Releasing] = field(default_factory=list)  # pods being deleted
    tainted_nodes: int = 0  # ready, uncordoned nodes kept out by a taint someone may tolerate
    node_gpus: int = 0  # the usual GPUs of one node (most common allocatable, larger on a tie)
    largest_node_gpus: int = 0
    compute_domains: bool = False  # replicas spanning nodes get ComputeDomains (guarantee 13)
    gpu_memory: Counter[int | None] = field(default_factory=Counter)  # nodes by MiB per GPU

    def blocks(self) -> dict[str | None, list[Rack]]:
        grouped: dict[str | None, list[Rack]] = {}
        for rack in self.racks.values():
            grouped.setdefault(rack.block, []).append(rack)
        return grouped

    def measure_nodes(self) -> None:
        """Record the node sizes that cut replicas into pods; they change only with the nodes."""
        counts = Counter(n.allocatable for r in self.racks.values() for n in r.nodes)
        counts.pop(0, None)
        self.node_gpus = _most_common(counts)
        self.largest_node_gpus = max(counts, default=0)
        self.gpu_memory = Counter(n.gpu_memory_mib for r in self.racks.values() for n in r.nodes)


@dataclass(eq=False, slots=True)
class Snapshot:
    """Every pool and node at one moment, with mutable usage."""

    pools: dict[str, Pool]
    nodes: dict[str, Node]
    conflicts: dict[str, list[str]]  # node name -> the pools that all select it
    ordinary_node_gpus: int = 0  # the usual GPUs of a GPU node outside every pool

    def rack_of(self, node_name: str) -> Rack | None:
        node = self.nodes.get(node_name)
        return node.rack if node else None


def _taints(node: dict[str, Any], pool: str | None) -> tuple[Taint, ...]:
    taints = []
    for t in (node.get("spec") or {}).get("taints") or []:
        if t.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if t.get("key") == POOL_TAINT_KEY and (pool is None or t.get("value") == pool):
            continue
        taints.append(Taint(str(t.get("key", "")), str(t.get("value") or ""), str(t["effect"])))
    return tuple(taints)


def _pod_deployment(
    pod: dict[str, Any],
) -> tuple[str | None, tuple[str, int] | None, str | None]:
    """A pod's deployment (`namespace/name`), its exclusive hold and its ComputeDomain."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    namespace = meta.get("namespace") or "default"
    domain = labels.get(COMPUTE_DOMAIN_LABEL)
    domain_key = f"{namespace}/{domain}" if domain else None
    name = labels.get(DEPLOYMENT_LABEL)
    if not name:
        return None, None, domain_key
    key = f"{namespace}/{name}"
    holder = None
    if labels.get(EXCLUSIVE_LABEL) == "true":
        holder = (key, int(labels.get(REPLICA_LABEL, "0")))
    return key, holder, domain_key


def build_snapshot(
    nodes: Iterable[dict[str, Any]],
    pods: Iterable[dict[str, Any]],
    pools: Iterable[RackPool],
    *,
    compute_domains: bool = False,
) -> Snapshot:
    """Racks from node labels, usage from every non-terminated GPU pod, rackscale's or not.

    A pod being deleted (`deletionTimestamp` set) still holds its GPUs; it is also listed in its
    pool's `releasing`, so that a pass can keep the room it leaves for a waiting replica.
    `compute_domains`: the API server serves NVIDIA's ComputeDomains, so the pools that want
    them (`RackPoolSpec.wants_compute_domains`) use them."""
    pool_list = sorted(pools, key=lambda p: p.name)
    by_name: dict[str, Node] = {}
    conflicts: dict[str, list[str]] = {}
    built = {
        p.name: Pool(
            p.name,
            p.spec,
            generation=(p.metadata or {}).get("generation"),
            compute_domains=compute_domains and p.spec.wants_compute_domains,
        )
        for p in pool_list
    }
    ordinary: Counter[int] = Counter()
    # A node or pod listed twice (say, in two cluster files) is one object: the later listing wins.
    unique_nodes = {str(n["metadata"]["name"]): n for n in nodes}
    for _, raw in sorted(unique_nodes.items()):
        meta = raw["metadata"]
        labels = dict(meta.get("labels") or {})
        matching = [
            p
            for p in pool_list
            if p.spec.rack_label in labels and p.spec.node_selector.matches(labels)
        ]
        if len(matching) > 1:
            conflicts[meta["name"]] = [p.name for p in matching]
        pool = matching[0] if len(matching) == 1 else None
        resource = pool.spec.gpu_resource if pool else DEFAULT_GPU_RESOURCE
        gpus = node_gpus(raw, resource)
        node = Node(
            name=meta["name"],
            labels=labels,
            allocatable=gpus,
            ready=node_ready(raw),
            cordoned=bool((raw.get("spec") or {}).get("unschedulable")),
            taints=_taints(raw, pool.name if pool else None),
            pool=pool.name if pool else None,
            gpu_memory_mib=gpu_memory(labels, pool.spec if pool else None),
        )
        by_name[node.name] = node
        if pool is None:
            if gpus and not matching:
                ordinary[gpus] += 1
            continue
        target = built[pool.name]
        block = labels.get(pool.spec.block_label) if pool.spec.block_label else None
        rack_name = (
            f"{block}/{labels[pool.spec.rack_label]}" if block else labels[pool.spec.rack_label]
        )
        rack = target.racks.get(rack_name)
        if rack is None:
            rack = target.racks[rack_name] = Rack(rack_name, block, target)
        rack.nodes.append(node)
        node.rack = rack
        rack.allocatable += node.allocatable
        if node.healthy:
            rack.schedulable += node.allocatable
            rack.free += node.allocatable
            rack.free_histogram[node.allocatable] += 1
        elif node.ready and not node.cordoned:
            target.tainted_nodes += 1

    for target in built.values():
        target.racks = dict(sorted(target.racks.items()))
        target.measure_nodes()
        for rack in target.racks.values():
            rack._index(add=True)

    unique_pods: dict[tuple[str, str] | int, dict[str, Any]] = {}
    for number, pod in enumerate(pods):
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta["name"]) if meta.get("name") else number
        unique_pods[key] = pod
    for pod in unique_pods.values():
        node_name = pinned_node(pod)
        pinned = by_name.get(node_name) if node_name else None
        if pinned is None or terminated(pod):
            continue
        node = pinned
        resource = built[node.pool].spec.gpu_resource if node.pool else DEFAULT_GPU_RESOURCE
        gpus = gpu_request(pod, resource)
        if not gpus:
            continue
        if node.rack is None:
            node.used += gpus
            continue
        deployment, holder, domain = _pod_deployment(pod)
        meta = pod.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        node.rack.use(node, gpus, namespace, deployment, domain)
        if meta.get("deletionTimestamp"):
            node.rack.pool.releasing.append(Releasing(node, gpus, namespace, deployment, domain))
        if holder and node.rack.held_by is None:
            node.rack.hold(holder)

    return Snapshot(built, by_name, conflicts, ordinary_node_gpus=_most_common(ordinary))


def gpu_memory(labels: dict[str, str], spec: RackPoolSpec | None) -> int | None:
    """MiB per GPU: the pool's `gpuMemoryMiB`, else GPU Feature Discovery's label; None unknown."""
    if spec is not None and spec.gpu_memory_mib:
        return spec.gpu_memory_mib
    value = labels.get(GPU_MEMORY_LABEL, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _most_common(sizes: Counter[int]) -> int:
    """The most common node size, the larger on a tie; 0 when there is none."""
    return max(sizes.items(), key=lambda item: (item[1], item[0]), default=(0, 0))[0]
