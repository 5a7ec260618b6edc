"""Hypothesis strategies: small random clusters of racks and HGX nodes, and deployments to place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from rackscale.api import InferenceDeployment, RackPool
from tests.factory import BLOCK, CLIQUE, PRODUCT, node

GB200 = "NVIDIA-GB200"
H200 = "NVIDIA-H200"
L40S = "NVIDIA-L40S"
HGX_RACK = "rackscale.dev/rack"
POOL_TAINT = "rackscale.dev/pool"
MAINTENANCE = "maintenance"
GPU = "nvidia.com/gpu"
GPU_MEMORY = "nvidia.com/gpu.memory"
# MiB per GPU as GPU Feature Discovery labels it: none (unknown), A100 40 GB, H100 80 GB, GB200.
MEMORIES = [None, None, 40960, 81559, 189471]
PRECISIONS = ["fp4", "nvfp4", "fp6", "fp8", "int4", "int8", "bf16", "fp16", "fp32"]
# Deployments live in the first two; foreign pods also in a third, so tenancy has rivals.
NAMESPACES = ("llm", "batch")
FOREIGN_NAMESPACES = ("llm", "batch", "other")
# None twice as often as each kind: most deployments tolerate nothing.
TOLERATIONS: list[list[dict[str, str]]] = [
    [],
    [],
    [{"key": MAINTENANCE, "operator": "Exists"}],
    [{"key": MAINTENANCE, "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
    [{"operator": "Exists"}],
]


@dataclass(frozen=True)
class Cluster:
    """What `build_snapshot` reads: raw Node and Pod dicts and RackPool models."""

    nodes: tuple[dict[str, Any], ...]
    pods: tuple[dict[str, Any], ...]
    pools: tuple[RackPool, ...]


def pod(
    name: str,
    node_name: str | None,
    gpus: int,
    *,
    namespace: str = "other",
    phase: str = "Running",
    pin: str = "nodeName",
    field: str = "limits",
) -> dict[str, Any]:
    """A GPU pod bound by `nodeName`, pinned by a one-node affinity, or not placed at all."""
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {field: {GPU: str(gpus)}}}],
    }
    if node_name and pin == "nodeName":
        spec["nodeName"] = node_name
    elif node_name:
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}
        required = {"nodeSelectorTerms": [term]}
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {}},
        "spec": spec,
        "status": {"phase": phase},
    }


def _taint(key: str, effect: str, value: str = "true") -> dict[str, str]:
    return {"key": key, "value": value, "effect": effect}


@st.composite
def health(draw: st.DrawFn, pool: str | None) -> dict[str, Any]:
    """Keyword arguments for `factory.node`: mostly healthy, sometimes not, sometimes harmless."""
    kind = draw(st.integers(0, 19))  # shrinks towards healthy
    if kind == 9 and pool:  # the pool's own taint keeps ordinary work out, not rackscale
        return {"taints": [_taint(POOL_TAINT, "NoSchedule", pool)]}
    unusual: dict[int, dict[str, Any]] = {
        4: {"ready": False},
        5: {"cordoned": True},
        6: {"taints": [_taint(MAINTENANCE, "NoSchedule")]},
        7: {"taints": [_taint(MAINTENANCE, "NoExecute")]},
        8: {"taints": [_taint(MAINTENANCE, "PreferNoSchedule")]},  # a preference only: healthy
    }
    return unusual.get(kind, {})


@st.composite
def foreign_pods(draw: st.DrawFn, node_name: str, gpus: int) -> list[dict[str, Any]]:
    """Pods someone else runs on the node; the live ones never exceed its GPUs."""
    pods = []
    room = gpus
    busy = draw(st.integers(0, 3)) == 3  # most nodes run nothing else
    for i in range(draw(st.integers(1, 2)) if busy else 0):
        kind = draw(st.sampled_from(["running", "running", "pinned", "done", "unbound"]))
        namespace = draw(st.sampled_from(FOREIGN_NAMESPACES))
        field = draw(st.sampled_from(["limits", "requests"]))
        name = f"{node_name}-foreign-{i}"
        if kind in ("done", "unbound"):  # hold nothing on the node
            amount = draw(st.integers(1, max(gpus, 1)))
            phase = "Succeeded" if kind == "done" else "Pending"
            target = node_name if kind == "done" else None
            pods.append(pod(name, target, amount, namespace=namespace, phase=phase, field=field))
            continue
        if room == 0:
            continue
        amount = draw(st.integers(1, room))
        room -= amount
        pin = "nodeName" if kind == "running" else "affinity"
        phase = "Running" if kind == "running" else "Pending"
        pods.append(
            pod(name, node_name, amount, namespace=namespace, phase=phase, pin=pin, field=field)
        )
    return pods


@st.composite
def clusters(
    draw: st.DrawFn, max_racks: int = 4, max_trays: int = 6, min_blocks: int = 0
) -> Cluster:
    """An NVL72-style pool (maybe in blocks), maybe an HGX pool and ordinary GPU nodes."""
    nodes: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []

    blocks = draw(st.integers(min_blocks, 2))
    racks = draw(st.integers(2, max_racks))
    for r in range(racks):
        trays = draw(st.integers(2, max_trays))
        gpus = draw(st.sampled_from([4, 8, 2]))
        labels = {PRODUCT: GB200}
        memory = draw(st.sampled_from(MEMORIES))
        if memory:
            labels[GPU_MEMORY] = str(memory)
        if blocks and draw(st.integers(0, 5)) == 5:  # a rack not yet given its block label
            labels[CLIQUE] = f"u{r}"
        elif blocks:  # racks are numbered inside each block: r0 of b0 and r0 of b1 are two racks
            labels[BLOCK] = f"b{r % blocks}"
            labels[CLIQUE] = f"r{r // blocks}"
        else:
            labels[CLIQUE] = f"r{r}"
        for t in range(trays):
            name = f"gb-{r}-{t}"
            nodes.append(node(name, gpus, labels, **draw(health("gb200"))))
            pods.extend(draw(foreign_pods(name, gpus)))
    spec: dict[str, Any] = {
        "gpusPerRack": draw(st.sampled_from([8, 16, 24])),
        "tenancy": draw(st.sampled_from(["Shared", "Shared", "Exclusive"])),
    }
    if blocks:
        spec["blockLabel"] = BLOCK
    if draw(st.integers(0, 5)) == 5:  # the pool says, whatever the labels say
        spec["gpuMemoryMiB"] = draw(st.sampled_from(MEMORIES[2:]))
    pools = [_pool("gb200", GB200, spec)]

    hgx = draw(st.integers(0, 3))
    for i in range(hgx):
        name = f"hgx-{i}"
        labels = {PRODUCT: H200, HGX_RACK: f"h{i % 2}", GPU_MEMORY: "143771"}
        nodes.append(node(name, 8, labels, **draw(health("hgx"))))
        pods.extend(draw(foreign_pods(name, 8)))
    if hgx:
        hgx_spec = {
            "rackLabel": HGX_RACK,
            "nvlinkDomain": "Node",
            "gpusPerRack": 16,
            "tenancy": draw(st.sampled_from(["Shared", "Exclusive"])),
        }
        pools.append(_pool("hgx", H200, hgx_spec))

    for i in range(draw(st.integers(0, 2))):  # ordinary GPU nodes outside every pool
        nodes.append(node(f"l40s-{i}", 4, {PRODUCT: L40S}))
    return Cluster(tuple(nodes), tuple(pods), tuple(pools))


def _pool(name: str, product: str, spec: dict[str, Any]) -> RackPool:
    spec = {"nodeSelector": {"matchLabels": {PRODUCT: product}}, **spec}
    return RackPool.model_validate({"metadata": {"name": name}, "spec": spec})


def _divisors(n: int, most: int) -> list[int]:
    return [d for d in range(1, min(n, most) + 1) if n % d == 0]


@st.composite
def deployments(
    draw: st.DrawFn, pools: tuple[str, ...], index: int = 0, spanning: bool = False
) -> InferenceDeployment:
    """One InferenceDeployment that passes validation, aimed at one of `pools` (or none).

    `spanning`: a Block or Any scope in a pool, pipeline stages or data-parallel groups inside a
    stage, and mostly small TP/EP groups and pods, so the replica may span racks and be cut
    between or inside its stages.
    """
    tensor = draw(st.sampled_from([2, 4] if spanning else [1, 2, 4, 8]))
    # Stages, or data-parallel groups inside a stage, let a replica span racks.
    pipeline = draw(st.sampled_from([1, 2, 3, 4] if spanning else [1, 2, 2, 3, 4]))
    data = draw(st.sampled_from([1, 2, 4] if spanning else [1, 2]))
    gpus = tensor * pipeline * data
    if spanning and draw(st.integers(0, 3)):  # mostly groups no larger than a TP group or two
        expert = draw(st.sampled_from(_divisors(gpus, 2 * tensor)))
        per_pod = draw(st.none() | st.sampled_from(_divisors(tensor, 4)))
    else:
        expert = draw(st.sampled_from(_divisors(gpus, gpus)))
        per_pod = draw(st.none() | st.sampled_from(_divisors(gpus, 8)))
    # Mostly a pool; sometimes none at all (device-plugin mode from the start).
    pool: str | None = None
    if pools and draw(st.integers(0, 7)) > 0:
        pool = draw(st.sampled_from(pools))
    if spanning and pools:
        pool = pools[0]
    placement: dict[str, Any] = {
        "replicaScope": draw(
            st.sampled_from(["Block", "Any"] if spanning else ["Rack", "Node", "Block", "Any"])
        ),
        "spread": draw(st.sampled_from(["Spread", "Pack"])),
        "fallback": draw(st.sampled_from(["Never", "DevicePlugin"])),
    }
    if pool:
        placement["rackPool"] = pool
        placement["exclusive"] = draw(st.integers(0, 3)) == 3
    spec: dict[str, Any] = {
        "replicas": draw(st.integers(1, 3)),
        "parallelism": {"tensor": tensor, "pipeline": pipeline, "data": data, "expert": expert},
        "placement": placement,
    }
    if per_pod:
        spec["gpusPerPod"] = per_pod
    if draw(st.integers(0, 2)) == 2:  # a model of known size: it must fit the GPUs' memory
        model: dict[str, Any] = {
            "name": "model",
            "parametersBillions": draw(st.sampled_from([1, 8, 70, 405, 671, 1000])),
            "precision": draw(st.sampled_from(PRECISIONS)),
        }
        if kv := draw(st.sampled_from([None, 0, 40, 250.5])):
            model["kvCacheGiB"] = kv
        spec["model"] = model
    tolerations = draw(st.sampled_from(TOLERATIONS))
    if tolerations:
        spec["template"] = {
            "spec": {"containers": [{"name": "server"}], "tolerations": tolerations}
        }
    meta = {"name": f"dep-{index}", "namespace": draw(st.sampled_from(NAMESPACES))}
    return InferenceDeployment.model_validate({"metadata": meta, "spec": spec})


@st.composite
def workloads(
    draw: st.DrawFn, max_racks: int = 4, max_deployments: int = 4, spanning: bool = False
) -> tuple[Cluster, list[InferenceDeployment]]:
    """A cluster and a sequence of deployments to place on it in order.

    `spanning`: small racks and replicas with pipeline stages, most of which must span racks.
    """
    if spanning:
        cluster = draw(clusters(max_racks + 1, max_trays=3, min_blocks=1))
    else:
        cluster = draw(clusters(max_racks))
    names = tuple(p.name for p in cluster.pools)
    count = draw(st.integers(1, max_deployments))
    return cluster, [draw(deployments(names, i, spanning)) for i in range(count)]


@st.composite
def split_workloads(draw: st.DrawFn) -> tuple[Cluster, list[InferenceDeployment]]:
    """Healthy small racks, partly used, and replicas larger than a rack whose TP and EP groups
    are small: most must span racks, many cut inside a pipeline stage."""
    nodes: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    blocks = draw(st.integers(0, 2))
    for r in range(draw(st.integers(2, 6))):
        gpus = draw(st.sampled_from([2, 4]))
        labels = {PRODUCT: GB200}
        if blocks:
            labels[BLOCK], labels[CLIQUE] = f"b{r % blocks}", f"r{r // blocks}"
        else:
            labels[CLIQUE] = f"r{r}"
        for t in range(draw(st.integers(1, 4))):
            name = f"gb-{r}-{t}"
            nodes.append(node(name, gpus, labels))
            if used := draw(st.integers(0, gpus)) * (draw(st.integers(0, 2)) == 2):
                pods.append(pod(f"{name}-foreign", name, used))
    spec: dict[str, Any] = {"gpusPerRack": 16}
    if blocks:
        spec["blockLabel"] = BLOCK
    cluster = Cluster(tuple(nodes), tuple(pods), (_pool("gb200", GB200, spec),))
    deps = []
    for i in range(draw(st.integers(1, 3))):
        tensor = draw(st.sampled_from([1, 2, 4]))
        pipeline = draw(st.sampled_from([1, 2, 3]))
        data = draw(st.sampled_from([1, 2, 3, 4]))
        gpus = tensor * pipeline * data
        spec = {
            "replicas": draw(st.integers(1, 2)),
            "parallelism": {
                "tensor": tensor,
                "pipeline": pipeline,
                "data": data,
                "expert": draw(st.sampled_from(_divisors(gpus, 2 * tensor))),
            },
            "placement": {
                "rackPool": "gb200",
                "replicaScope": draw(st.sampled_from(["Any", "Block"] if blocks else ["Any"])),
                "spread": draw(st.sampled_from(["Spread", "Pack"])),
                "fallback": "Never",
            },
        }
        if per_pod := draw(st.none() | st.sampled_from(_divisors(tensor, 2))):
            spec["gpusPerPod"] = per_pod
        meta = {"name": f"dep-{i}", "namespace": "llm"}
        deps.append(InferenceDeployment.model_validate({"metadata": meta, "spec": spec}))
    return cluster, deps


ROLE_NAMES = ("prefill", "decode", "encode")


@st.composite
def role_deployments(
    draw: st.DrawFn, pools: tuple[str, ...], index: int = 0
) -> InferenceDeployment:
    """A disaggregated InferenceDeployment (spec.roles) that passes validation, in one of
    `pools`: one to three roles of small replicas, colocated or not."""
    roles = []
    for name in ROLE_NAMES[: draw(st.integers(1, 3))]:
        tensor = draw(st.sampled_from([1, 2, 4]))
        data = draw(st.sampled_from([1, 1, 2]))
        gpus = tensor * data
        role: dict[str, Any] = {
            "name": name,
            "replicas": draw(st.integers(1, 2)),
            "parallelism": {
                "tensor": tensor,
                "data": data,
                "expert": draw(st.sampled_from(_divisors(gpus, gpus))),
            },
            "template": {"spec": {"containers": [{"name": "server"}]}},
        }
        if per_pod := draw(st.none() | st.sampled_from(_divisors(gpus, 4))):
            role["gpusPerPod"] = per_pod
        if tolerations := draw(st.sampled_from(TOLERATIONS)):
            role["template"]["spec"]["tolerations"] = tolerations
        roles.append(role)
    placement: dict[str, Any] = {
        "rackPool": draw(st.sampled_from(pools)),
        "replicaScope": draw(st.sampled_from(["Rack", "Rack", "Node", "Any"])),
        "spread": draw(st.sampled_from(["Spread", "Pack"])),
        "fallback": draw(st.sampled_from(["Never", "DevicePlugin"])),
    }
    if colocate := draw(st.sampled_from([None, "Rack", "Block", "None"])):
        placement["colocate"] = colocate
    spec: dict[str, Any] = {"replicas": draw(st.integers(1, 3)), "roles": roles}
    spec["placement"] = placement
    if draw(st.integers(0, 3)) == 3:
        spec["model"] = {"name": "m", "parametersBillions": 70, "precision": "fp8"}
    meta = {"name": f"grp-{index}", "namespace": draw(st.sampled_from(NAMESPACES))}
    return InferenceDeployment.model_validate({"metadata": meta, "spec": spec})


@st.composite
def group_workloads(
    draw: st.DrawFn, max_deployments: int = 3
) -> tuple[Cluster, list[InferenceDeployment], bool]:
    """A cluster, disaggregated deployments to place in order, and whether ComputeDomains are
    served."""
    cluster = draw(clusters(4))
    names = tuple(p.name for p in cluster.pools)
    count = draw(st.integers(1, max_deployments))
    deps = [draw(role_deployments(names, i)) for i in range(count)]
    return cluster, deps, draw(st.booleans())
