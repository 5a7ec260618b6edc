"""The snapshot: racks of each pool with per-node usage, kept indexed for fast best-fit lookups.

Built from typed Nodes, Pods and RackPools. Usage is mutable: pods are added and taken out as the
watch shows them (`add_pod`, `remove_pod`), and the placement engine reserves and undoes; every
change goes through `Rack.use`, which keeps the indexes true. A pass places inside
`Snapshot.trial()`: an overlay of the snapshot, dropped whole when the pass ends (Kueue's
per-cycle snapshot over its shared tree), so no reservation of a pass outlives it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sortedcontainers import SortedList

from rackscale.api.labels import (
    COMPUTE_DOMAIN_LABEL,
    DEPLOYMENT_LABEL,
    EXCLUSIVE_LABEL,
    GPU_MEMORY_LABEL,
    POOL_TAINT_KEY,
    REPLICA_LABEL,
)
from rackscale.api.rackpool import DEFAULT_GPU_RESOURCE, RackPool, RackPoolSpec
from rackscale.topology.objects import NodeInfo, PodInfo


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
    labels: Mapping[str, str]
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
    holders: Counter[tuple[str, int]] = field(default_factory=Counter)  # exclusive pods here
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
        if self.pool.trial is not None:
            self.pool.trial.append(_Used(self, node, gpus, namespace, deployment, domain))
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
        if self.pool.trial is not None:
            self.pool.trial.append(_Held(self, self.held_by))
        self._index(add=False)
        self.held_by = holder
        self._index(add=True)

    def keep(self, deployment: str | None) -> None:
        """Keep the rack for a waiting replica that fits once its GPUs being released are free
        (None: no longer); the placement engine keeps racks for the length of one pass."""
        if self.pool.trial is not None:
            self.pool.trial.append(_Kept(self, self.kept_for))
        self._index(add=False)
        self.kept_for = deployment
        self._index(add=True)


class _Used(NamedTuple):
    rack: Rack
    node: Node
    gpus: int
    namespace: str | None
    deployment: str | None
    domain: str | None

    def revert(self) -> None:
        self.rack.use(self.node, -self.gpus, self.namespace, self.deployment, self.domain)


class _Held(NamedTuple):
    rack: Rack
    before: tuple[str, int] | None

    def revert(self) -> None:
        self.rack.hold(self.before)


class _Kept(NamedTuple):
    rack: Rack
    before: str | None

    def revert(self) -> None:
        self.rack.keep(self.before)


Change = _Used | _Held | _Kept  # what a trial changed, in order, to be dropped on its end


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
    releasing: dict[tuple[str, str], Releasing] = field(default_factory=dict)  # pods going
    tainted_nodes: int = 0  # ready, uncordoned nodes kept out by a taint someone may tolerate
    node_gpus: int = 0  # the usual GPUs of one node (most common allocatable, larger on a tie)
    largest_node_gpus: int = 0
    compute_domains: bool = False  # replicas spanning nodes get ComputeDomains (guarantee 13)
    gpu_memory: Counter[int | None] = field(default_factory=Counter)  # nodes by MiB per GPU
    trial: list[Change] | None = None  # while a trial is open: its changes (`Snapshot.trial`)

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

    @contextmanager
    def trial(self) -> Iterator[Snapshot]:
        """An overlay for one pass: what is reserved, held or kept on racks inside it counts
        while it is open and is dropped on leaving it, however it is left (an exception
        included), so nothing a pass tried needs undoing and none of it outlives the pass.
        Pods the watch adds or removes must wait for it to close (a pass does not yield)."""
        changes: list[Change] = []
        before = {name: pool.trial for name, pool in self.pools.items()}
        for pool in self.pools.values():
            pool.trial = changes
        try:
            yield self
        finally:
            for name, pool in self.pools.items():
                pool.trial = before.get(name)
            for change in reversed(changes):
                change.revert()

    def rack_of(self, node_name: str) -> Rack | None:
        node = self.nodes.get(node_name)
        return node.rack if node else None

    def add_pod(self, pod: PodInfo) -> Usage | None:
        """Count what `pod` holds (None: nothing, e.g. it is done or on no known node)."""
        node = self.nodes.get(pod.pinned) if pod.pinned else None
        if node is None or pod.terminated:
            return None
        pool = self.pools.get(node.pool) if node.pool else None
        gpus = pod.gpus(pool.spec.gpu_resource if pool else DEFAULT_GPU_RESOURCE)
        if not gpus:
            return None
        deployment, holder, domain = _pod_deployment(pod)
        usage = Usage(node, gpus, pod.namespace, deployment, domain, holder, pod.deleting)
        rack = node.rack
        if rack is None:
            node.used += gpus
            return usage
        rack.use(node, gpus, pod.namespace, deployment, domain)
        if pod.deleting:
            rack.pool.releasing[pod.key] = Releasing(node, gpus, pod.namespace, deployment, domain)
        if holder:
            rack.holders[holder] += 1
            if rack.held_by is None:
                rack.hold(holder)
        return usage

    def remove_pod(self, key: tuple[str, str], usage: Usage) -> None:
        """Take out exactly what `add_pod` counted for the pod `key`."""
        node, rack = usage.node, usage.node.rack
        if rack is None:
            node.used -= usage.gpus
            return
        rack.use(node, -usage.gpus, usage.namespace, usage.deployment, usage.domain)
        rack.pool.releasing.pop(key, None)
        holder = usage.holder
        if holder:
            rack.holders[holder] -= 1
            if rack.holders[holder] <= 0:
                del rack.holders[holder]
            if rack.held_by == holder and holder not in rack.holders:
                rack.hold(min(rack.holders) if rack.holders else None)


def _taints(node: NodeInfo, pool: str | None) -> tuple[Taint, ...]:
    taints = []
    for key, value, effect in node.taints:
        if effect not in ("NoSchedule", "NoExecute"):
            continue
        if key == POOL_TAINT_KEY and (pool is None or value == pool):
            continue
        taints.append(Taint(key, value, effect))
    return tuple(taints)


def _pod_deployment(pod: PodInfo) -> tuple[str | None, tuple[str, int] | None, str | None]:
    """A pod's deployment (`namespace/name`), its exclusive hold and its ComputeDomain."""
    labels = pod.labels
    domain = labels.get(COMPUTE_DOMAIN_LABEL)
    domain_key = f"{pod.namespace}/{domain}" if domain else None
    name = labels.get(DEPLOYMENT_LABEL)
    if not name:
        return None, None, domain_key
    key = f"{pod.namespace}/{name}"
    holder = None
    if labels.get(EXCLUSIVE_LABEL) == "true":
        replica = labels.get(REPLICA_LABEL, "0")
        holder = (key, int(replica) if replica.isdigit() else 0)
    return key, holder, domain_key


@dataclass(frozen=True, slots=True)
class Usage:
    """What one pod adds to the snapshot, so that it can be taken out again exactly."""

    node: Node
    gpus: int
    namespace: str
    deployment: str | None
    domain: str | None
    holder: tuple[str, int] | None
    releasing: bool


def build_snapshot(
    nodes: Iterable[NodeInfo | Mapping[str, Any]],
    pods: Iterable[PodInfo | Mapping[str, Any]],
    pools: Iterable[RackPool],
    *,
    compute_domains: bool = False,
) -> Snapshot:
    """Racks from node labels, usage from every non-terminated GPU pod, rackscale's or not.

    Nodes and pods are typed slim objects, or API bodies (cluster files) read into them. A pod
    being deleted still holds its GPUs; it is also listed in its pool's `releasing`, so that a
    pass can keep the room it leaves for a waiting replica. `compute_domains`: the API server
    serves NVIDIA's ComputeDomains, so the pools that want them use them."""
    snapshot = build_racks(nodes, pools, compute_domains=compute_domains)
    # A pod listed twice (say, in two cluster files) is one object: the later listing wins.
    unique: dict[tuple[str, str] | int, PodInfo] = {}
    for number, pod in enumerate(map(PodInfo.of, pods)):
        unique[pod.key if pod.name else number] = pod
    for pod in unique.values():
        snapshot.add_pod(pod)
    return snapshot


def build_racks(
    nodes: Iterable[NodeInfo | Mapping[str, Any]],
    pools: Iterable[RackPool],
    *,
    compute_domains: bool = False,
) -> Snapshot:
    """The racks of every pool from node labels, with nothing in use yet."""
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
    # A node listed twice is one object: the later listing wins.
    unique = {n.name: n for n in map(NodeInfo.of, nodes)}
    for _, info in sorted(unique.items()):
        matching = [
            p
            for p in pool_list
            if p.spec.rack_label in info.labels and p.spec.node_selector.matches(info.labels)
        ]
        if len(matching) > 1:
            conflicts[info.name] = [p.name for p in matching]
        pool = matching[0] if len(matching) == 1 else None
        node = _node(info, pool)
        by_name[node.name] = node
        if pool is None:
            if node.allocatable and not matching:
                ordinary[node.allocatable] += 1
            continue
        _join(built[pool.name], node)
    for target in built.values():
        target.racks = dict(sorted(target.racks.items()))
        target.measure_nodes()
        for rack in target.racks.values():
            rack._index(add=True)
    return Snapshot(built, by_name, conflicts, ordinary_node_gpus=_most_common(ordinary))


def _node(info: NodeInfo, pool: RackPool | None) -> Node:
    labels = info.labels  # shared with the cache's node: one copy
    return Node(
        name=info.name,
        labels=labels,
        allocatable=info.gpus(pool.spec.gpu_resource if pool else DEFAULT_GPU_RESOURCE),
        ready=info.ready,
        cordoned=info.unschedulable,
        taints=_taints(info, pool.name if pool else None),
        pool=pool.name if pool else None,
        gpu_memory_mib=gpu_memory(labels, pool.spec if pool else None),
    )


def _join(pool: Pool, node: Node) -> None:
    """Put `node` in its rack of `pool` (making the rack when it is the first)."""
    spec, labels = pool.spec, node.labels
    block = labels.get(spec.block_label) if spec.block_label else None
    name = f"{block}/{labels[spec.rack_label]}" if block else labels[spec.rack_label]
    rack = pool.racks.get(name)
    if rack is None:
        rack = pool.racks[name] = Rack(name, block, pool)
    rack.nodes.append(node)
    node.rack = rack
    rack.allocatable += node.allocatable
    if node.healthy:
        rack.schedulable += node.allocatable
        rack.free += node.allocatable
        rack.free_histogram[node.allocatable] += 1
    elif node.ready and not node.cordoned:
        pool.tainted_nodes += 1


def gpu_memory(labels: Mapping[str, str], spec: RackPoolSpec | None) -> int | None:
    """MiB per GPU: the pool's `gpuMemoryMiB`, else GPU Feature Discovery's label; None unknown."""
    if spec is not None and spec.gpu_memory_mib:
        return spec.gpu_memory_mib
    value = labels.get(GPU_MEMORY_LABEL, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _most_common(sizes: Counter[int]) -> int:
    """The most common node size, the larger on a tie; 0 when there is none."""
    return max(sizes.items(), key=lambda item: (item[1], item[0]), default=(0, 0))[0]
