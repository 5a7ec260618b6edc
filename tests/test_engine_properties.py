"""Property tests: on random clusters, every plan keeps the placement guarantees (design, 4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from fractions import Fraction
from itertools import combinations, pairwise
from math import ceil, gcd, lcm
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rackscale.api import InferenceDeployment, RackPool, RackPoolSpec
from rackscale.placement import (
    Decision,
    DeploymentPlan,
    Placeable,
    PodPlan,
    ReplicaPlan,
    place,
    place_pass,
    place_replica,
)
from rackscale.placement.reasons import Kept, NoRackWithRoom, Note, Reason
from rackscale.topology import Snapshot, build_snapshot
from tests.factory import BLOCK, CLIQUE, PRODUCT, node
from tests.strategies import (
    GB200,
    GPU,
    GPU_MEMORY,
    H200,
    HGX_RACK,
    POOL_TAINT,
    Cluster,
    pod,
    split_workloads,
    workloads,
)

DEPLOYMENT_LABEL = "rackscale.dev/deployment"
REPLICA = "rackscale.dev/replica"
EXCLUSIVE_LABEL = "rackscale.dev/exclusive"

SETTINGS = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """Kubernetes' rule for one toleration against one taint."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and (toleration.get("value") or "") == (
        taint.get("value") or ""
    )


class World:
    """The cluster as its raw objects describe it, plus the pods planned so far.

    Everything here is read from node labels, pod specs and pool specs, never from the engine,
    so that it can judge the engine's plans.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.pools = {p.name: p.spec for p in cluster.pools}
        self.raw = {n["metadata"]["name"]: n for n in cluster.nodes}
        self.allocatable = {
            name: int(n["status"]["allocatable"].get(GPU, 0)) for name, n in self.raw.items()
        }
        self.used: Counter[str] = Counter()
        self.pool_of: dict[str, str] = {}
        self.rack_of: dict[str, str] = {}
        self.rack_nodes: dict[str, list[str]] = {}
        self.rack_pool: dict[str, str] = {}
        self.rack_block: dict[str, str | None] = {}
        self.namespaces: dict[str, Counter[str]] = {}
        self.owners: dict[str, set[Any]] = {}  # rack -> who has GPU pods there
        self.held: dict[str, tuple[str, int]] = {}  # rack -> exclusive replica holding it
        self.kept: set[str] = set()  # racks a pass keeps for a waiting replica
        for name, raw in sorted(self.raw.items()):
            labels = raw["metadata"]["labels"]
            pools = [
                p
                for p, spec in self.pools.items()
                if spec.rack_label in labels
                and all(labels.get(k) == v for k, v in spec.node_selector.match_labels.items())
            ]
            if len(pools) != 1:
                continue
            spec = self.pools[pools[0]]
            block = labels.get(spec.block_label) if spec.block_label else None
            rack = f"{block}/{labels[spec.rack_label]}" if block else labels[spec.rack_label]
            rack = f"{pools[0]}:{rack}"
            self.pool_of[name] = pools[0]
            self.rack_of[name] = rack
            self.rack_nodes.setdefault(rack, []).append(name)
            self.rack_pool[rack] = pools[0]
            self.rack_block[rack] = block
            self.namespaces[rack] = Counter()
            self.owners[rack] = set()
        for p in cluster.pods:
            spec = p["spec"]
            target = spec.get("nodeName") or _affinity_node(spec)
            if target is None or target not in self.raw:
                continue
            if p["status"]["phase"] in ("Succeeded", "Failed"):
                continue
            gpus = sum(
                int(
                    (c["resources"].get("requests") or c["resources"].get("limits") or {}).get(
                        GPU, 0
                    )
                )
                for c in spec["containers"]
            )
            if not gpus:
                continue
            meta = p["metadata"]
            labels = meta.get("labels") or {}
            owner: Any = ("pod", meta["name"])
            if DEPLOYMENT_LABEL in labels:  # a replica rackscale placed before
                owner = (f"{meta['namespace']}/{labels[DEPLOYMENT_LABEL]}", int(labels[REPLICA]))
            self._add(target, gpus, meta["namespace"], owner)
            if labels.get(EXCLUSIVE_LABEL) == "true" and target in self.rack_of:
                self.held[self.rack_of[target]] = owner

    def _add(self, node_name: str, gpus: int, namespace: str, owner: Any) -> None:
        self.used[node_name] += gpus
        rack = self.rack_of.get(node_name)
        if rack:
            self.namespaces[rack][namespace] += 1
            self.owners[rack].add(owner)

    def free(self, node_name: str) -> int:
        return self.allocatable[node_name] - self.used[node_name]

    def rack_used(self, rack: str) -> int:
        return sum(self.used[n] for n in self.rack_nodes[rack])

    def rack_name(self, rack: str) -> str:
        """The rack as plans name it: `<block>/<rack>`, or the rack label's value."""
        return rack.split(":", 1)[1]

    def healthy(self, node_name: str, tolerations: list[dict[str, Any]]) -> bool:
        raw = self.raw[node_name]
        # A node without a Ready condition (a hand-written file) counts as Ready.
        ready = all(
            c["status"] == "True"
            for c in raw["status"].get("conditions", [])
            if c["type"] == "Ready"
        )
        if not ready or raw["spec"].get("unschedulable"):
            return False
        pool = self.pool_of.get(node_name)
        for taint in raw["spec"].get("taints") or []:
            if taint["effect"] not in ("NoSchedule", "NoExecute"):
                continue
            if taint["key"] == POOL_TAINT and taint.get("value") == pool:
                continue
            if not any(_tolerates(t, taint) for t in tolerations):
                return False
        return True

    # What a deployment needs, from its spec and the pool's nodes.

    def pod_gpus(self, dep: InferenceDeployment) -> int:
        """gpusPerPod, else the GPUs of the pool's usual node (the larger on a tie) shared out."""
        gpus = dep.spec.parallelism.gpus
        if dep.spec.gpus_per_pod:
            return dep.spec.gpus_per_pod
        pool = dep.spec.placement.rack_pool
        sizes = Counter(
            self.allocatable[n]
            for n, p in self.pool_of.items()
            if p == pool and self.allocatable[n]
        )
        common = max(sizes.items(), key=lambda i: (i[1], i[0]))[0] if sizes else 0
        return gcd(gpus, common) if common else gpus

    def shape(self, dep: InferenceDeployment, pod_gpus: int) -> tuple[int, int, int]:
        """(slot, unit, part): GPUs that must share a node; GPUs no rack boundary may cut (whole
        TP and EP groups and pods); whole pipeline stages made of units."""
        par = dep.spec.parallelism
        domain = lcm(par.tensor, par.expert, pod_gpus)
        pool = self.pools[dep.spec.placement.rack_pool or ""]
        slot = domain if pool.nvlink_domain == "Node" else pod_gpus
        return slot, domain, lcm(par.tensor * par.data, domain)

    def gpu_memory(self, node_name: str) -> int | None:
        """MiB per GPU: the pool's gpuMemoryMiB, else the node's nvidia.com/gpu.memory label."""
        spec = self.pools.get(self.pool_of.get(node_name, ""))
        if spec is not None and spec.gpu_memory_mib:
            return spec.gpu_memory_mib
        label = self.raw[node_name]["metadata"]["labels"].get(GPU_MEMORY)
        return int(label) if label else None

    def fits_memory(self, dep: InferenceDeployment, node_name: str) -> bool:
        need = memory_need(dep)
        mib = self.gpu_memory(node_name)
        return need is None or mib is None or mib * dep.spec.parallelism.gpus >= need[0]

    def eligible(self, dep: InferenceDeployment, rack: str) -> bool:
        """Whether the rack may take any of the replica: not held, right tenant, empty if asked."""
        if rack in self.held or rack in self.kept:
            return False
        pool = self.pools[self.rack_pool[rack]]
        if pool.tenancy == "Exclusive" and set(self.namespaces[rack]) - {dep.namespace}:
            return False
        return not (dep.spec.placement.exclusive and self.rack_used(rack))

    def racks_named(self, pool: str | None, names: Iterable[str]) -> set[str]:
        """The racks of `pool` that plans call `names`."""
        wanted = set(names)
        return {r for r, p in self.rack_pool.items() if p == pool and self.rack_name(r) in wanted}

    def fewest_racks(
        self, dep: InferenceDeployment, pod_gpus: int, only: set[str] | None = None
    ) -> int | None:
        """The fewest racks (of `only`, if given) that can hold a replica now (None: none can),
        by brute force."""
        placement = dep.spec.placement
        pool_name = placement.rack_pool
        if pool_name not in self.pools:
            return None
        if placement.replica_scope == "Block" and not self.pools[pool_name].block_label:
            return None
        gpus = dep.spec.parallelism.gpus
        tolerations = (dep.spec.template.get("spec") or {}).get("tolerations") or []
        slot, unit, _part = self.shape(dep, pod_gpus)
        mine = [r for r in sorted(self.rack_nodes) if self.rack_pool[r] == pool_name]
        racks = [r for r in mine if self.eligible(dep, r) and (only is None or r in only)]
        usable = {
            r: [n for n in self.rack_nodes[r] if self.usable(dep, n, tolerations)] for r in racks
        }
        if placement.replica_scope == "Node":
            fits = any(self.free(n) >= gpus for r in racks for n in usable[r])
            return 1 if fits else None
        slots = {r: sum(self.free(n) // slot for n in usable[r]) for r in racks}
        if any(s * slot >= gpus for s in slots.values()):
            return 1
        if placement.replica_scope == "Rack":
            return None
        return self.fewest_combined(dep, racks, slots, slot, unit)

    def fewest_combined(
        self,
        dep: InferenceDeployment,
        racks: list[str],
        slots: dict[str, int],
        slot: int,
        unit: int,
    ) -> int | None:
        """The fewest racks, two or more, whose free slots together hold the replica's whole
        units (None: no such racks), by brute force."""
        units = dep.spec.parallelism.gpus // unit
        capacity = {r: slots[r] // (unit // slot) for r in racks}
        for count in range(2, units + 1):
            for group in self.groups(dep, racks):
                for chosen in combinations(group, count):
                    if sum(capacity[r] for r in chosen) >= units:
                        return count
        return None

    def groups(self, dep: InferenceDeployment, racks: list[str]) -> list[list[str]]:
        """The sets of racks a multi-rack replica may combine: one block, or the whole pool."""
        groups: dict[Any, list[str]] = {}
        for r in racks:
            key = self.rack_block[r] if dep.spec.placement.replica_scope == "Block" else ""
            if key is not None:  # a rack without the block label is in no block
                groups.setdefault(key, []).append(r)
        return list(groups.values())

    def whole_stages_fit(self, dep: InferenceDeployment, pod_gpus: int, count: int) -> bool:
        """Whether `count` racks of one group can hold the replica as whole pipeline stages."""
        gpus = dep.spec.parallelism.gpus
        tolerations = (dep.spec.template.get("spec") or {}).get("tolerations") or []
        slot, _unit, part = self.shape(dep, pod_gpus)
        racks = [
            r
            for r in sorted(self.rack_nodes)
            if self.rack_pool[r] == dep.spec.placement.rack_pool and self.eligible(dep, r)
        ]
        stages = {
            r: sum(
                self.free(n) // slot for n in self.rack_nodes[r] if self.usable(dep, n, tolerations)
            )
            // (part // slot)
            for r in racks
        }
        return any(
            sum(stages[r] for r in chosen) >= gpus // part
            for group in self.groups(dep, racks)
            for chosen in combinations(group, count)
        )

    def usable(self, dep: InferenceDeployment, node_name: str, tolerations: list[Any]) -> bool:
        return self.healthy(node_name, tolerations) and self.fits_memory(dep, node_name)

    def best_fit(self, dep: InferenceDeployment, pod_gpus: int) -> int | None:
        """Guarantee 9: the least free GPUs of a rack that can hold the replica alone, among
        those without a replica of the same deployment first when it asks to spread."""
        placement = dep.spec.placement
        gpus = dep.spec.parallelism.gpus
        slot, _unit, _part = self.shape(dep, pod_gpus)
        fits = []
        for r in sorted(self.rack_nodes):
            if self.rack_pool[r] != placement.rack_pool or not self.eligible(dep, r):
                continue
            usable = [n for n in self.rack_nodes[r] if self.usable(dep, n, [])]
            if placement.replica_scope == "Node":
                room = any(self.free(n) >= gpus for n in usable)
            else:
                room = sum(self.free(n) // slot for n in usable) * slot >= gpus
            if room:
                fits.append(r)
        if placement.spread == "Spread":
            fresh = [r for r in fits if not any(o[0] == dep.key for o in self.owners[r])]
            fits = fresh or fits
        return min((self.rack_free(r, dep) for r in fits), default=None)

    def rack_free(self, rack: str, dep: InferenceDeployment) -> int:
        """Free GPUs on the rack's healthy nodes large enough for `dep`: what best fit compares."""
        return sum(self.free(n) for n in self.rack_nodes[rack] if self.usable(dep, n, []))

    def apply(self, dep: InferenceDeployment, plan: ReplicaPlan) -> None:
        owner = (dep.key, plan.replica)
        for p in plan.pods:
            if p.node is not None:
                self._add(p.node, p.gpus, dep.namespace, owner)
        if dep.spec.placement.exclusive and plan.mode == "Rack":
            for p in plan.pods:
                self.held[self.rack_of[str(p.node)]] = owner


BYTES = {"fp4": 0.5, "nvfp4": 0.5, "int4": 0.5, "fp6": 0.75, "fp8": 1, "int8": 1}
BYTES |= {"bf16": 2, "fp16": 2, "fp32": 4}


def memory_need(dep: InferenceDeployment) -> tuple[int, int] | None:
    """(MiB the replica needs, MiB each of its GPUs must hold), by hand: weights at the
    precision's bytes, KV cache, 2 GiB of runtime overhead per GPU."""
    model = dep.spec.model
    if model is None or model.parameters_billions is None or model.precision is None:
        return None
    gpus = dep.spec.parallelism.gpus
    weights = Fraction(str(model.parameters_billions)) * 10**9 * Fraction(BYTES[model.precision])
    total = ceil(weights / 2**20) + ceil(Fraction(str(model.kv_cache_gib or 0)) * 1024)
    total += 2048 * gpus
    return total, ceil(Fraction(total, gpus))


def _affinity_node(spec: dict[str, Any]) -> str | None:
    terms = (
        spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    for term in terms:
        for field in term.get("matchFields", []):
            return str(field["values"][0])
    return None


def check_reason(world: World, dep: InferenceDeployment, why: Reason) -> None:
    """Guarantee 11: a refusal for want of one rack accounts for every rack of the pool."""
    assert why.explained, why
    if why.code != "no-rack-with-room":
        return
    assert isinstance(why.details, NoRackWithRoom)
    assert why.details.gpus == dep.spec.parallelism.gpus
    counted = len(why.details.problems)
    racks = sum(p == dep.spec.placement.rack_pool for p in world.rack_pool.values())
    assert counted == racks, f"{why.text!r} counts {counted} of {racks} racks"


def check_decision(world: World, dep: InferenceDeployment, decision: Decision) -> None:
    """Every guarantee one replica's decision must keep, judged against the world before it."""
    plan = decision.plan
    if plan is None:
        check_refusal(world, dep, decision)
        return
    check_shards(dep, decision, plan)
    if plan.mode == "DevicePlugin":
        check_fallback(world, dep, decision, plan)
        return
    check_rack_plan(world, dep, plan)


def check_refusal(world: World, dep: InferenceDeployment, decision: Decision) -> None:
    """A gang refused: nothing placed, only when the user said Never, and no racks could hold it."""
    placement = dep.spec.placement
    assert placement.rack_pool is not None
    assert placement.fallback == "Never"
    assert decision.why is not None
    check_reason(world, dep, decision.why)
    fewest = world.fewest_racks(dep, world.pod_gpus(dep))
    assert fewest is None, f"refused ({decision.reason}) but {fewest} rack(s) could hold it"


def check_shards(dep: InferenceDeployment, decision: Decision, plan: ReplicaPlan) -> None:
    """A replica is placed whole, as equal shards holding consecutive ranks."""
    pods = plan.pods
    assert plan.replica == decision.replica
    assert sum(p.gpus for p in pods) == dep.spec.parallelism.gpus, "a replica is placed whole"
    assert [p.shard for p in pods] == list(range(len(pods)))
    assert len({p.gpus for p in pods}) == 1
    assert [p.first_rank for p in pods] == [i * pods[0].gpus for i in range(len(pods))]
    if dep.spec.gpus_per_pod:
        assert pods[0].gpus == dep.spec.gpus_per_pod


def check_fallback(
    world: World, dep: InferenceDeployment, decision: Decision, plan: ReplicaPlan
) -> None:
    """Left to kube-scheduler: no node chosen, and for a pool's replica only when no racks fit."""
    placement = dep.spec.placement
    assert all(p.node is None for p in plan.pods)
    assert plan.racks == ()
    if placement.rack_pool is not None:
        assert placement.fallback == "DevicePlugin"
        assert decision.why is not None
        assert decision.why.notes[-1] == Note("fallback")
        check_reason(world, dep, decision.why)
        fewest = world.fewest_racks(dep, world.pod_gpus(dep))
        assert fewest is None, f"fell back ({decision.reason}) but {fewest} rack(s) fit"


def check_rack_plan(world: World, dep: InferenceDeployment, plan: ReplicaPlan) -> None:
    """A replica placed on racks of its pool, then counted into the world."""
    spec = dep.spec
    pool_name = spec.placement.rack_pool
    assert pool_name is not None
    pool = world.pools[pool_name]
    tolerations = (spec.template.get("spec") or {}).get("tolerations") or []
    pods = plan.pods
    nodes = [str(p.node) for p in pods]
    for n in nodes:
        assert world.pool_of.get(n) == pool_name, f"{n} is not a node of {pool_name}"
        assert world.healthy(n, tolerations), f"unhealthy node {n} got a pod"  # guarantee 7
    racks = sorted({world.rack_of[n] for n in nodes})
    assert sorted(plan.racks) == sorted(world.rack_name(r) for r in racks)
    assert len(plan.racks) == len(set(plan.racks))

    check_domains(world, dep, pool, pods)
    check_scope(world, dep, nodes, racks)
    check_racks_free(world, dep, pool, racks)
    # Guarantee 9: best fit, after spreading.
    if len(racks) == 1 and not tolerations:
        best = world.best_fit(dep, pods[0].gpus)
        assert world.rack_free(racks[0], dep) == best, f"{racks[0]} not the best fit ({best} free)"
    check_fewest_racks(world, dep, pods, racks)
    check_memory(world, dep, pods)

    world.apply(dep, plan)
    # Guarantee 1, counting foreign pods and every plan so far.
    for n in set(nodes):
        assert world.used[n] <= world.allocatable[n], f"{n}: {world.used[n]} GPUs"


def check_domains(
    world: World, dep: InferenceDeployment, pool: RackPoolSpec, pods: tuple[PodPlan, ...]
) -> None:
    """Guarantee 3: TP and EP groups stay in one NVLink domain."""
    par = dep.spec.parallelism
    domain_of_rank = []
    for p in pods:
        domain = p.node if pool.nvlink_domain == "Node" else world.rack_of[str(p.node)]
        domain_of_rank.extend([domain] * p.gpus)
    for size, what in ((par.tensor, "tensor"), (par.expert, "expert")):
        for start in range(0, par.gpus, size):
            group = set(domain_of_rank[start : start + size])
            assert len(group) == 1, f"{what} group at rank {start} spans {group}"


def check_scope(world: World, dep: InferenceDeployment, nodes: list[str], racks: list[str]) -> None:
    """Guarantee 4: one unit of replicaScope."""
    scope = dep.spec.placement.replica_scope
    if scope == "Node":
        assert len(set(nodes)) == 1
    elif scope == "Rack":
        assert len(racks) == 1
    elif scope == "Block" and len(racks) > 1:  # racks without a block label are in no block
        blocks = {world.rack_block[r] for r in racks}
        assert len(blocks) == 1
        assert None not in blocks


def check_racks_free(
    world: World, dep: InferenceDeployment, pool: RackPoolSpec, racks: list[str]
) -> None:
    """Guarantees 5 and 6: no rack another replica holds, nor one of another tenant."""
    for r in racks:
        # Guarantee 5, and nobody else on a rack an exclusive replica holds.
        assert r not in world.held, f"{r} is held by {world.held[r]}"
        if dep.spec.placement.exclusive:
            assert world.rack_used(r) == 0, f"exclusive replica on {r}, already in use"
        # Guarantee 6.
        if pool.tenancy == "Exclusive":
            assert set(world.namespaces[r]) <= {dep.namespace}, f"{r}: {world.namespaces[r]}"


def check_fewest_racks(
    world: World, dep: InferenceDeployment, pods: tuple[PodPlan, ...], racks: list[str]
) -> None:
    """Guarantee 12: fewest racks, cut only between whole TP/EP groups and pods, whole pipeline
    stages per rack whenever as few racks can hold them."""
    fewest = world.fewest_racks(dep, pods[0].gpus)
    assert len(racks) == fewest, f"used {len(racks)} racks where {fewest} suffice"
    if len(racks) <= 1:
        return
    assert dep.spec.placement.replica_scope in ("Block", "Any")
    _slot, unit, part = world.shape(dep, pods[0].gpus)
    share = Counter(world.rack_of[str(p.node)] for p in pods for _ in range(p.gpus))
    assert all(s % unit == 0 for s in share.values()), f"shares {share}, unit {unit}"
    # Each rack holds one run of consecutive ranks.
    rank_racks = [world.rack_of[str(p.node)] for p in pods for _ in range(p.gpus)]
    runs = 1 + sum(a != b for a, b in pairwise(rank_racks))
    assert runs == len(racks), f"ranks leave and re-enter racks: {rank_racks}"
    if world.whole_stages_fit(dep, pods[0].gpus, len(racks)):
        assert all(s % part == 0 for s in share.values()), f"shares {share}, stages {part}"


def check_memory(world: World, dep: InferenceDeployment, pods: tuple[PodPlan, ...]) -> None:
    """Guarantee 14: every GPU holds its share of the model, so their sum holds all of it."""
    need = memory_need(dep)
    if need is None:
        return
    memory = [world.gpu_memory(str(p.node)) for p in pods]
    for p, mib in zip(pods, memory, strict=True):
        assert mib is None or mib >= need[1], f"{p.node}: {mib} MiB per GPU, needs {need[1]}"
    if None not in memory:
        total = sum(p.gpus * int(mib or 0) for p, mib in zip(pods, memory, strict=True))
        assert total >= need[0], f"{total} MiB of GPU memory for a replica needing {need[0]}"


def check_plans(
    cluster: Cluster, deployments: list[InferenceDeployment], plans: list[DeploymentPlan]
) -> World:
    world = World(cluster)
    assert [p.deployment for p in plans] == [d.key for d in deployments]
    for dep, plan in zip(deployments, plans, strict=True):
        assert [d.replica for d in plan.decisions] == list(range(dep.spec.replicas))
        for decision in plan.decisions:
            check_decision(world, dep, decision)
    return world


def outcome(plans: list[DeploymentPlan]) -> list[Any]:
    return [(p.deployment, [(d.replica, d.plan, d.reason) for d in p.decisions]) for p in plans]


def usage(snapshot: Snapshot) -> dict[str, Any]:
    """Per-node and per-rack usage, and the pools' best-fit indexes."""
    racks = {
        (pool.name, rack.name): (
            rack.free,
            rack.used,
            rack.held_by,
            +rack.namespaces,
            +rack.deployments,
            +rack.free_histogram,
        )
        for pool in snapshot.pools.values()
        for rack in pool.racks.values()
    }
    indexes = {p.name: (list(p.by_free), list(p.empty_by_free)) for p in snapshot.pools.values()}
    return {
        "nodes": {n: node.used for n, node in snapshot.nodes.items()},
        "racks": racks,
        **indexes,
    }


# Hand-written edge cases, run on every test run before the generated ones.


def _rack(name: str, trays: int, gpus: int = 4, block: str | None = None, **kw: Any) -> list[Any]:
    labels = {PRODUCT: GB200, CLIQUE: name}
    if block:
        labels[BLOCK] = block
    return [node(f"{block or 'x'}-{name}-{t}", gpus, labels, **kw) for t in range(trays)]


def _pool(**spec: Any) -> RackPool:
    spec.setdefault("nodeSelector", {"matchLabels": {PRODUCT: GB200}})
    spec.setdefault("gpusPerRack", 16)
    return RackPool.model_validate({"metadata": {"name": "gb200"}, "spec": spec})


def _dep(name: str = "dep-0", namespace: str = "llm", replicas: int = 1, **kw: Any) -> Any:
    par = {k: kw.pop(k) for k in ("tensor", "pipeline", "data", "expert") if k in kw}
    spec: dict[str, Any] = {"replicas": replicas, "parallelism": par}
    if "gpusPerPod" in kw:
        spec["gpusPerPod"] = kw.pop("gpusPerPod")
    spec["placement"] = {"rackPool": "gb200", "fallback": "Never", **kw}
    return InferenceDeployment.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    )


# Two blocks that both number their racks r0, r1; a pipeline replica must span two racks.
BLOCKS = Cluster(
    tuple(_rack("r0", 3, block="b0") + _rack("r1", 2, block="b0") + _rack("r0", 4, block="b1")),
    (),
    (_pool(blockLabel=BLOCK),),
)
# An HGX pool: a TP group of 16 cannot fit an 8-GPU node, a TP 8 pipeline 2 spans two nodes.
HGX = Cluster(
    tuple(node(f"hgx-{i}", 8, {PRODUCT: H200, HGX_RACK: "h0"}) for i in range(3)),
    (),
    (
        RackPool.model_validate(
            {
                "metadata": {"name": "gb200"},
                "spec": {
                    "nodeSelector": {"matchLabels": {PRODUCT: H200}},
                    "rackLabel": HGX_RACK,
                    "nvlinkDomain": "Node",
                    "gpusPerRack": 24,
                },
            }
        ),
    ),
)
# Three small racks of one block: what an exclusive replica leaves free on its rack stays unused.
SMALL = Cluster(
    tuple(n for i in range(3) for n in _rack(f"r{i}", 2, block="b0")),
    (),
    (_pool(blockLabel=BLOCK, gpusPerRack=8),),
)
# Two racks not yet given a block label, beside one that has it: they share no known block.
UNLABELLED = Cluster(
    tuple(_rack("u0", 2) + _rack("u1", 2) + _rack("r0", 1, block="b0")),
    (),
    (_pool(blockLabel=BLOCK, gpusPerRack=8),),
)
# A foreign pod in another namespace and an unhealthy tray; the pool is single-tenant.
BUSY = Cluster(
    tuple(_rack("r0", 2) + _rack("r1", 2) + _rack("r2", 2, ready=False)),
    (pod("other-0", "x-r0-0", 1, namespace="other"),),
    (_pool(tenancy="Exclusive", gpusPerRack=8),),
)


@SETTINGS
@given(workloads())
@example(
    (BLOCKS, [_dep(tensor=4, pipeline=4, replicaScope="Block"), _dep("dep-1", tensor=4, data=2)])
)
@example((BLOCKS, [_dep(tensor=2, pipeline=3, data=2, replicaScope="Any", replicas=2)]))
@example((BLOCKS, [_dep(tensor=4, pipeline=2, replicaScope="Block", exclusive=True, replicas=3)]))
@example((HGX, [_dep(tensor=16, replicaScope="Any"), _dep("dep-1", tensor=8, pipeline=2)]))
@example((HGX, [_dep(tensor=4, expert=8, pipeline=2, gpusPerPod=2, replicaScope="Any")]))
@example((BUSY, [_dep(tensor=4, exclusive=True, replicas=2), _dep("dep-1", tensor=2)]))
@example(
    (
        SMALL,
        [_dep(tensor=4, exclusive=True), _dep("dep-1", tensor=4, pipeline=3, replicaScope="Block")],
    )
)
@example((BUSY, [_dep(tensor=2, namespace="batch", replicas=3, spread="Pack")]))
@example((SMALL, [_dep(tensor=4, replicas=4), _dep("dep-1", tensor=2, replicas=3, spread="Pack")]))
def test_every_plan_keeps_the_guarantees(
    workload: tuple[Cluster, list[InferenceDeployment]],
) -> None:
    """Guarantees 1-7, 9, 11 and 12 on every decision; no refusal of a replica that fits."""
    cluster, deployments = workload
    snapshot = build_snapshot(cluster.nodes, cluster.pods, cluster.pools)
    plans = place(snapshot, deployments)
    world = check_plans(cluster, deployments, plans)
    # What the snapshot holds now is exactly the cluster plus the planned pods: a refused
    # replica left nothing behind.
    for name, n in snapshot.nodes.items():
        assert n.used == world.used[name], name


@SETTINGS
@given(workloads(spanning=True, max_deployments=3))
@example((BLOCKS, [_dep(tensor=4, pipeline=3, replicaScope="Any", replicas=2)]))
@example((UNLABELLED, [_dep(tensor=4, pipeline=4, replicaScope="Block", replicas=2)]))
def test_replicas_that_span_racks_keep_the_guarantees(
    workload: tuple[Cluster, list[InferenceDeployment]],
) -> None:
    """Guarantee 12 in depth: replicas with stages on small racks, most of which must span."""
    cluster, deployments = workload
    plans = place(build_snapshot(cluster.nodes, cluster.pods, cluster.pools), deployments)
    check_plans(cluster, deployments, plans)


@settings(SETTINGS, max_examples=150)
@given(split_workloads())
def test_replicas_cut_inside_their_stages_keep_the_guarantees(
    workload: tuple[Cluster, list[InferenceDeployment]],
) -> None:
    """Guarantee 12 for cuts between whole TP/EP groups: replicas larger than a rack with small
    groups, on partly used racks. Fewest racks by brute force, shares of whole units, whole
    stages whenever as few racks hold them, ranks in contract order, nothing else broken."""
    cluster, deployments = workload
    plans = place(build_snapshot(cluster.nodes, cluster.pods, cluster.pools), deployments)
    check_plans(cluster, deployments, plans)


@settings(SETTINGS, max_examples=60)
@given(workloads())
def test_same_inputs_give_the_same_plan(
    workload: tuple[Cluster, list[InferenceDeployment]],
) -> None:
    """Guarantee 8: fresh snapshots of the same objects, in any list order, plan alike."""
    cluster, deployments = workload
    first = place(build_snapshot(cluster.nodes, cluster.pods, cluster.pools), deployments)
    again = place(build_snapshot(cluster.nodes, cluster.pods, cluster.pools), deployments)
    assert outcome(first) == outcome(again)
    shuffled = build_snapshot(cluster.nodes[::-1], cluster.pods[::-1], cluster.pools[::-1])
    assert outcome(place(shuffled, deployments)) == outcome(first)


def as_pods(deployments: list[InferenceDeployment], plans: list[DeploymentPlan]) -> list[Any]:
    """The pods of every rack-mode replica, as the operator creates them: pinned and labelled."""
    out = []
    for dep, plan in zip(deployments, plans, strict=True):
        for replica in plan.replicas:
            if replica.mode != "Rack":
                continue
            labels = {DEPLOYMENT_LABEL: dep.name, REPLICA: str(replica.replica)}
            if dep.spec.placement.exclusive:
                labels[EXCLUSIVE_LABEL] = "true"
            for p in replica.pods:
                name = f"{dep.name}-{replica.replica}-{p.shard}"
                made = pod(
                    name, p.node, p.gpus, namespace=dep.namespace, phase="Pending", pin="affinity"
                )
                made["metadata"]["labels"] = dict(labels)
                out.append(made)
    return out


def seen(snapshot: Snapshot) -> dict[str, Any]:
    """What decisions read: per-node usage, holders, and who is on each rack."""
    return {
        "nodes": {n: node.used for n, node in snapshot.nodes.items()},
        "racks": {
            (pool.name, rack.name): (rack.held_by, set(rack.namespaces), set(rack.deployments))
            for pool in snapshot.pools.values()
            for rack in pool.racks.values()
        },
    }


@settings(SETTINGS, max_examples=60)
@given(workloads(max_deployments=6))
def test_a_snapshot_rebuilt_from_planned_pods_decides_alike(
    workload: tuple[Cluster, list[InferenceDeployment]],
) -> None:
    """After a restart the operator rebuilds its snapshot from the pods it created: it must see
    what its ledger saw and decide the next deployments the same way."""
    cluster, deployments = workload
    half = len(deployments) // 2
    earlier, later = deployments[:half], deployments[half:]
    kept = build_snapshot(cluster.nodes, cluster.pods, cluster.pools)
    plans = place(kept, earlier)
    restarted = Cluster(cluster.nodes, cluster.pods + tuple(as_pods(earlier, plans)), cluster.pools)
    rebuilt = build_snapshot(restarted.nodes, restarted.pods, restarted.pools)
    assert seen(rebuilt) == seen(kept)
    after_restart = place(rebuilt, later)
    assert outcome(after_restart) == outcome(place(kept, later))
    check_plans(restarted, later, after_restart)


@settings(SETTINGS, max_examples=60)
@given(workloads())
def test_undo_restores_the_snapshot(workload: tuple[Cluster, list[InferenceDeployment]]) -> None:
    """Undoing every plan gives back the usage the cluster had, and planning again agrees."""
    cluster, deployments = workload
    snapshot = build_snapshot(cluster.nodes, cluster.pods, cluster.pools)
    before = usage(snapshot)
    plans = place(snapshot, deployments)
    for plan in reversed(plans):
        plan.undo()
        plan.undo()  # a second undo gives back nothing more
    assert usage(snapshot) == before
    assert outcome(place(snapshot, deployments)) == outcome(plans)


@SETTINGS
@given(workloads(max_deployments=6), st.randoms(use_true_random=False))
def test_a_pass_keeps_the_guarantees_and_places_at_least_what_largest_first_does(
    workload: tuple[Cluster, list[InferenceDeployment]], rng: Any
) -> None:
    """An operator pass over waiting replicas given in any order: each is decided once; every
    decision keeps the guarantees in the order made; a replica the pass refused is still
    refused at its end (the pass left no room it could use); it places at least the GPUs that
    largest first does, and when that places everything, it is the order taken."""
    cluster, deployments = workload
    waiting = [Placeable(d, i) for d in deployments for i in range(d.spec.replicas)]
    rng.shuffle(waiting)
    snapshot = build_snapshot(cluster.nodes, cluster.pods, cluster.pools)
    world = World(cluster)
    done = place_pass(snapshot, waiting)
    assert sorted(waiting, key=id) == sorted((w for w, _ in done), key=id)
    for want, decision in done:
        assert decision.replica == want.number
        check_decision(world, want.deployment, decision)
    for want, decision in done:
        if decision.plan is None:
            again = place_replica(snapshot, want.deployment, want.number)
            assert again.plan is None, f"{want.deployment.key}/{want.number} fits after the pass"

    fresh = build_snapshot(cluster.nodes, cluster.pods, cluster.pools)
    largest_first = [
        (w, place_replica(fresh, w.deployment, w.number))
        for w in sorted(waiting, key=lambda w: -w.deployment.spec.gpus_per_replica)
    ]
    assert in_pools(done) >= in_pools(largest_first)
    if all(d.plan is not None and d.reason is None for _, d in largest_first):
        assert [w for w, _ in done] == [w for w, _ in largest_first]


@settings(SETTINGS, max_examples=60)
@given(workloads(max_deployments=6))
def test_a_pass_decides_alike_on_the_same_inputs(
    workload: tuple[Cluster, list[InferenceDeployment]],
) -> None:
    """Guarantee 8 for a pass, other orders tried included: fresh snapshots of the same objects,
    in any list order, give the same decisions."""
    cluster, deployments = workload
    waiting = [Placeable(d, i) for d in deployments for i in range(d.spec.replicas)]

    def decided(snapshot: Snapshot) -> list[Any]:
        done = place_pass(snapshot, waiting)
        return [(w.deployment.key, w.number, d.plan, d.reason, d.kept) for w, d in done]

    first = decided(build_snapshot(cluster.nodes, cluster.pods, cluster.pools))
    assert decided(build_snapshot(cluster.nodes, cluster.pods, cluster.pools)) == first
    shuffled = build_snapshot(cluster.nodes[::-1], cluster.pods[::-1], cluster.pools[::-1])
    assert decided(shuffled) == first


def in_pools(decisions: list[tuple[Placeable, Decision]]) -> int:
    return sum(
        sum(p.gpus for p in d.plan.pods)
        for _, d in decisions
        if d.plan is not None and d.plan.mode == "Rack"
    )


@settings(SETTINGS, max_examples=200)
@given(workloads(max_deployments=6), st.data())
def test_racks_being_released_are_kept_for_the_first_waiting_replica_they_would_hold(
    workload: tuple[Cluster, list[InferenceDeployment]], data: st.DataObject
) -> None:
    """The first deployments are placed, then some of their pods and of the others are being
    deleted. In a pass over the rest, a replica refused now is kept the racks it would take
    once those GPUs are free, exactly when it would fit then; the replicas after it are refused
    those racks, and every decision keeps the guarantees with them out of reach."""
    cluster, deployments = workload
    half = len(deployments) // 2
    earlier, rest = deployments[:half], deployments[half:]
    first = place(build_snapshot(cluster.nodes, cluster.pods, cluster.pools), earlier)
    pods = cluster.pods + tuple(as_pods(earlier, first))
    going = data.draw(st.lists(st.booleans(), min_size=len(pods), max_size=len(pods)))
    check_release_pass(cluster, pods, going, rest)


def check_release_pass(
    cluster: Cluster,
    pods: tuple[dict[str, Any], ...],
    going: list[bool],
    deployments: list[InferenceDeployment],
) -> None:
    marked = tuple(
        {**p, "metadata": {**p["metadata"], "deletionTimestamp": "2026-11-28T10:00:00Z"}}
        if gone
        else p
        for p, gone in zip(pods, going, strict=True)
    )
    remaining = tuple(p for p, gone in zip(pods, going, strict=True) if not gone)
    now = World(Cluster(cluster.nodes, marked, cluster.pools))  # they still hold their GPUs
    later = World(Cluster(cluster.nodes, remaining, cluster.pools))
    later.held.update(now.held)  # an exclusive replica holds its rack until its pods are gone
    snapshot = build_snapshot(cluster.nodes, marked, cluster.pools)
    waiting = [Placeable(d, i) for d in deployments for i in range(d.spec.replicas)]
    for want, decision in place_pass(snapshot, waiting):
        dep = want.deployment
        pool = dep.spec.placement.rack_pool
        check_decision(now, dep, decision)
        if decision.plan is not None:
            later.apply(dep, decision.plan)
            continue
        kept = now.racks_named(pool, decision.kept)
        assert len(kept) == len(decision.kept), decision.kept
        if pool in now.pools:
            fits_later = later.fewest_racks(dep, later.pod_gpus(dep))
            assert bool(kept) == (fits_later is not None), (decision.reason, fits_later)
        if kept:
            assert later.fewest_racks(dep, later.pod_gpus(dep), only=kept) is not None
            assert decision.why is not None
            assert Note("kept", Kept(decision.kept)) in decision.why.notes
        now.kept |= kept
        later.kept |= kept
    assert all(r.kept_for is None for p in snapshot.pools.values() for r in p.racks.values())
