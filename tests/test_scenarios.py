"""Scenario tests: situations a platform team meets, and the plan or reason they should see."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from rackscale.api import InferenceDeployment, RackPool
from rackscale.placement import (
    DeploymentPlan,
    Placeable,
    ReplicaPlan,
    place,
    place_pass,
    place_replica,
)
from rackscale.placement.reasons import (
    BlockRoom,
    InPool,
    Kept,
    NoNodeWithRoom,
    NoRacksWithRoom,
    NoRackWithRoom,
    Note,
    PodTooLarge,
    Problem,
    Reason,
)
from rackscale.topology import build_snapshot
from tests.factory import BLOCK, CLIQUE, PRODUCT, deployment, gpu_pod, node, nvl72, pool

RACK = 72
EXCLUSIVE_LABELS = {"rackscale.dev/deployment": "kimi", "rackscale.dev/replica": "0"}


def plan(
    nodes: list[dict[str, Any]],
    deployments: list[InferenceDeployment],
    *,
    pods: list[dict[str, Any]] | None = None,
    pools: list[RackPool] | None = None,
) -> list[DeploymentPlan]:
    snapshot = build_snapshot(nodes, pods or [], pools or [pool()])
    return place(snapshot, deployments)


def only(plans: list[DeploymentPlan]) -> ReplicaPlan:
    """The one replica of the last deployment, which must have been placed."""
    replicas = plans[-1].replicas
    assert len(replicas) == 1, plans[-1].reason
    return replicas[0]


def why(plan: DeploymentPlan, replica: int = 0) -> Reason | None:
    """Why the replica is not in its pool (None: it is)."""
    return next(d.why for d in plan.decisions if d.replica == replica)


def room(gpus: int, *problems: Problem) -> Reason:
    return Reason("no-rack-with-room", NoRackWithRoom(gpus, problems))


def rack_of(name: str) -> str:
    """`gb200-0003-07` -> `clique-0003`: the rack `nvl72` put the node in."""
    return "clique-" + name.split("-")[1]


def fill(rack: int, trays: int, *, namespace: str = "other", gpus: int = 4) -> list[dict[str, Any]]:
    """Foreign pods taking `gpus` GPUs on each of the first `trays` trays of a rack."""
    return [
        gpu_pod(f"busy-{rack}-{t}", f"gb200-{rack:04d}-{t:02d}", gpus, namespace=namespace)
        for t in range(trays)
    ]


def gpus_by_rack(replica: ReplicaPlan) -> dict[str, int]:
    out: Counter[str] = Counter()
    for p in replica.pods:
        out[rack_of(str(p.node))] += p.gpus
    return dict(out)


def small_job(i: int, gpus: int) -> InferenceDeployment:
    if gpus == 4:
        return deployment(f"small-{i}", tensor=4, fallback="Never")
    return deployment(f"small-{i}", tensor=8, gpusPerPod=4, fallback="Never")


def whole_rack_job(name: str) -> InferenceDeployment:
    return deployment(name, tensor=4, pipeline=18, gpusPerPod=4, fallback="Never")


DEDICATED = {"key": "dedicated", "value": "inference", "effect": "NoSchedule"}


def tolerant(name: str, parallelism: dict[str, int], **placement: Any) -> InferenceDeployment:
    """A deployment whose pods tolerate the `dedicated` taint."""
    spec = {
        "parallelism": parallelism,
        "placement": {"rackPool": "gb200", "fallback": "Never", **placement},
        "template": {
            "spec": {
                "containers": [{"name": "server"}],
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            }
        },
    }
    return InferenceDeployment.model_validate(
        {"metadata": {"name": name, "namespace": "llm"}, "spec": spec}
    )


def first_fit_whole_racks(free: list[int], jobs: list[int]) -> int:
    """A naive scheduler: each job into the first rack (by name) with room. Racks left whole."""
    free = list(free)
    for gpus in jobs:
        index = next(i for i, f in enumerate(free) if f >= gpus)
        free[index] -= gpus
    return sum(f == RACK for f in free)


# Fragmentation


SMALL_JOBS = [4, 8, 4, 4, 8, 8, 4, 4, 8]  # 52 GPUs


def test_small_jobs_fill_used_racks_first_and_leave_empty_racks_whole() -> None:
    # Racks 1 and 3 are partly used (36 and 16 GPUs free); 0 and 2 are empty.
    pods = fill(1, 9) + fill(3, 14)
    jobs = [small_job(i, g) for i, g in enumerate(SMALL_JOBS)]
    big = [whole_rack_job("big-a"), whole_rack_job("big-b")]
    plans = plan(nvl72(4), jobs + big, pods=pods)

    small_racks = {rack_of(str(p.node)) for d in plans[:-2] for r in d.replicas for p in r.pods}
    assert small_racks == {"clique-0001", "clique-0003"}
    assert {only(plans[-2:-1]).racks, only(plans[-1:]).racks} == {
        ("clique-0000",),
        ("clique-0002",),
    }
    # A scheduler that takes the first rack with room breaks an empty rack at once.
    assert first_fit_whole_racks([72, 36, 72, 16], SMALL_JOBS) == 1


def test_a_stream_of_small_jobs_on_empty_racks_leaves_a_whole_rack_for_a_big_one() -> None:
    sizes = [4, 8, 8, 4, 4, 8, 4, 8, 8, 8, 4, 4, 4, 8] * 2 + [8, 8, 4, 4, 8]
    assert sum(sizes) == 200  # under three racks' worth
    jobs = [small_job(i, g) for i, g in enumerate(sizes)]
    plans = plan(nvl72(4), [*jobs, whole_rack_job("big")])

    assert all(d.mode == "Rack" for d in plans[:-1])
    used = {rack_of(str(p.node)) for d in plans[:-1] for r in d.replicas for p in r.pods}
    assert len(used) == 3  # ceil(200 / 72): no rack more than needed was broken
    big = only(plans)
    assert big.racks not in {(r,) for r in used}
    assert sum(p.gpus for p in big.pods) == RACK
    assert first_fit_whole_racks([RACK] * 4, sizes) <= 1


def test_best_fit_takes_the_rack_with_least_free_gpus() -> None:
    pods = fill(0, 10) + fill(1, 16) + fill(2, 12)  # 32, 8 and 24 free; rack 3 empty
    plans = plan(nvl72(4), [deployment("dense", tensor=4, pipeline=2, gpusPerPod=4)], pods=pods)
    assert only(plans).racks == ("clique-0001",)
    plans = plan(nvl72(4), [deployment("mid", tensor=8, data=2, gpusPerPod=4)], pods=pods)
    assert only(plans).racks == ("clique-0002",)


# Unhealthy nodes and racks


def test_degraded_rack_is_used_on_its_healthy_nodes_only() -> None:
    labels = {PRODUCT: "NVIDIA-GB200", CLIQUE: "clique-a"}
    taint = {"key": "nvidia.com/gpu-fault", "value": "xid79", "effect": "NoSchedule"}
    nodes = [
        node("a-00", 4, labels, ready=False),
        node("a-01", 4, labels, cordoned=True),
        node("a-02", 4, labels, taints=[taint]),
        node("a-03", 4, labels, taints=[{**taint, "effect": "NoExecute"}]),
        node("a-04", 4, labels, taints=[{**taint, "effect": "PreferNoSchedule"}]),
        node(
            "a-05",
            4,
            labels,
            taints=[{"key": "rackscale.dev/pool", "value": "gb200", "effect": "NoSchedule"}],
        ),
        node("a-06", 4, labels),
    ]
    nodes[-1]["status"]["conditions"] = []  # hand-written: no Ready condition means Ready
    dep = deployment("dense", tensor=4, replicas=4, fallback="Never", spread="Pack")
    plans = plan(nodes, [dep])
    assert sorted(str(p.node) for r in plans[0].replicas for p in r.pods) == [
        "a-04",
        "a-05",
        "a-06",
    ]
    assert (
        plans[0].reason
        == "replica 3: no rack holds 4 free GPUs in one NVLink domain: 1 rack is Degraded"
    )


def test_unavailable_rack_is_never_used() -> None:
    nodes = nvl72(2)
    for n in nodes:
        if n["metadata"]["name"].startswith("gb200-0000"):
            n["status"]["conditions"][0]["status"] = "Unknown"
    dep = deployment("dense", tensor=8, gpusPerPod=4, replicas=10, fallback="Never")
    plans = plan(nodes, [dep])
    assert {r.racks for r in plans[0].replicas} == {("clique-0001",)}
    assert len(plans[0].replicas) == 9
    assert why(plans[0], 9) == room(8, Problem("unavailable"), Problem("too-few", 0))


def test_a_toleration_opens_tainted_nodes() -> None:
    labels = {PRODUCT: "NVIDIA-GB200", CLIQUE: "clique-a"}
    nodes = [node(f"a-{i}", 4, labels, taints=[DEDICATED]) for i in range(2)]
    tolerant_dep = tolerant("tolerant", {"tensor": 8})
    plain = deployment("plain", tensor=4, fallback="Never")
    plans = plan(nodes, [plain, tolerant_dep])
    assert plans[0].mode == "Unplaced"
    assert sorted(str(p.node) for p in only(plans).pods) == ["a-0", "a-1"]


# Foreign GPU pods


def test_foreign_gpu_pods_are_counted_whatever_their_form() -> None:
    nodes = nvl72(1, trays=4)
    names = [n["metadata"]["name"] for n in nodes]
    pinned = gpu_pod("pinned", names[1], 4)
    del pinned["spec"]["nodeName"]
    pinned["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": [names[1]]}
                        ]
                    }
                ]
            }
        }
    }
    pinned["status"]["phase"] = "Pending"
    init = gpu_pod("init", names[2], 0)
    init["spec"]["initContainers"] = [
        {"name": "warm", "resources": {"requests": {"nvidia.com/gpu": "4"}}}
    ]
    done = gpu_pod("done", names[3], 4)
    done["status"]["phase"] = "Succeeded"
    pods = [gpu_pod("running", names[0], 2), pinned, init, done]

    dep = deployment("dense", tensor=4, replicas=2, fallback="Never", spread="Pack")
    plans = plan(nodes, [dep], pods=pods, pools=[pool(gpusPerRack=16)])
    # Only the node whose pod finished is free: 2 + 4 + 4 GPUs are held by others.
    assert [p.node for r in plans[0].replicas for p in r.pods] == [names[3]]
    assert why(plans[0], 1) == room(4, Problem("too-few", 2))


def test_pods_already_placed_by_rackscale_keep_their_gpus() -> None:
    nodes = nvl72(1, trays=2)
    labels = {"rackscale.dev/deployment": "old", "rackscale.dev/replica": "0"}
    pods = [gpu_pod("old-0-0", "gb200-0000-00", 4, namespace="llm", labels=labels)]
    dep = deployment("new", tensor=8, gpusPerPod=4, fallback="Never")
    plans = plan(nodes, [dep], pods=pods, pools=[pool(gpusPerRack=8)])
    assert plans[0].mode == "Unplaced"
    assert why(plans[0]) == room(8, Problem("too-few", 4))


# HGX: NVLink ends at the node


def hgx_pool() -> RackPool:
    return pool(
        "hgx",
        nodeSelector={"matchLabels": {PRODUCT: "NVIDIA-H200"}},
        rackLabel="topology.kubernetes.io/rack",
        nvlinkDomain="Node",
        gpusPerRack=32,
    )


def hgx_nodes(count: int) -> list[dict[str, Any]]:
    labels = {PRODUCT: "NVIDIA-H200", "topology.kubernetes.io/rack": "row-1"}
    return [node(f"hgx-{i}", 8, labels) for i in range(count)]


def test_hgx_tensor_group_stays_on_one_node() -> None:
    pods = [gpu_pod("busy", "hgx-0", 4)]  # hgx-0 has 4 free: half a TP group must not go there
    dep = deployment("llama", tensor=8, pipeline=2, gpusPerPod=4, rackPool="hgx")
    plans = plan(hgx_nodes(4), [dep], pods=pods, pools=[hgx_pool()])
    replica = only(plans)
    nodes = [p.node for p in replica.pods]
    assert nodes[0] == nodes[1]
    assert nodes[2] == nodes[3]
    assert "hgx-0" not in nodes
    assert [p.first_rank for p in replica.pods] == [0, 4, 8, 12]


def test_hgx_refuses_a_tensor_group_larger_than_a_node() -> None:
    dep = deployment("big", tensor=16, gpusPerPod=8, rackPool="hgx", fallback="Never")
    plans = plan(hgx_nodes(4), [dep], pools=[hgx_pool()])
    assert plans[0].mode == "Unplaced"
    assert why(plans[0]) == Reason(
        "pod-too-large", PodTooLarge("hgx", 8, 8, nvlink_gpus=16, tensor=16)
    )


# Replicas that span racks


def block_nodes(racks: dict[str, int]) -> list[dict[str, Any]]:
    """NVL72 racks named `<block>/<rack>`, each with `trays` trays of 4 GPUs."""
    out: list[dict[str, Any]] = []
    for name, trays in racks.items():
        block, rack = name.split("/")
        labels = {PRODUCT: "NVIDIA-GB200", CLIQUE: rack, BLOCK: block}
        out.extend(node(f"{block}-{rack}-{t:02d}", 4, labels) for t in range(trays))
    return out


def shares(replica: ReplicaPlan) -> dict[str, int]:
    out: Counter[str] = Counter()
    for p in replica.pods:
        block, rack, _ = str(p.node).split("-")
        out[f"{block}/{rack}"] += p.gpus
    return dict(out)


def test_block_replica_splits_stages_evenly_over_the_fewest_racks() -> None:
    # Block b0 has 72 + 56 free: 9 + 7 stages of 8, not an even split. b1 has two empty racks.
    nodes = block_nodes({"b0/r0": 18, "b0/r1": 14, "b1/r0": 18, "b1/r1": 18})
    dep = deployment("moe", tensor=8, pipeline=16, gpusPerPod=4, replicaScope="Block")
    plans = plan(nodes, [dep], pools=[pool(blockLabel=BLOCK)])
    replica = only(plans)
    assert replica.racks == ("b1/r0", "b1/r1")
    assert shares(replica) == {"b1/r0": 64, "b1/r1": 64}
    # Whole stages per rack, in rank order: stages 0-7 in one rack, 8-15 in the other.
    first = [p for p in replica.pods if str(p.node).startswith("b1-r0")]
    assert max(p.first_rank for p in first) < min(
        p.first_rank for p in replica.pods if p not in first
    )


def test_block_replica_never_leaves_its_block_but_any_may() -> None:
    # b0: two racks of 40 free GPUs; b1: one rack of 72. 128 GPUs fit neither block alone.
    nodes = block_nodes({"b0/r0": 10, "b0/r1": 10, "b1/r0": 18})
    block = deployment(
        "moe", tensor=8, pipeline=16, gpusPerPod=4, replicaScope="Block", fallback="Never"
    )
    plans = plan(nodes, [block], pools=[pool(blockLabel=BLOCK)])
    assert plans[0].mode == "Unplaced"
    refused = why(plans[0])
    assert refused is not None
    assert refused.code == "no-block-with-room"
    assert isinstance(refused.details, NoRacksWithRoom)
    assert (refused.details.gpus, refused.details.units, refused.details.unit) == (128, 16, 8)
    assert refused.details.rooms == (BlockRoom("b0", 10, (40, 40)), BlockRoom("b1", 9, (72,)))

    anywhere = deployment("moe", tensor=8, pipeline=16, gpusPerPod=4, replicaScope="Any")
    replica = only(plan(nodes, [anywhere], pools=[pool(blockLabel=BLOCK)]))
    # Three racks are the fewest; 16 stages as 6:5:5, never 9:5:2.
    assert sorted(shares(replica).values()) == [40, 40, 48]
    assert shares(replica)["b1/r0"] == 48


def test_racks_numbered_inside_blocks_are_distinct_racks() -> None:
    nodes = block_nodes({"b0/r1": 2, "b1/r1": 2})
    dep = deployment("dense", tensor=8, gpusPerPod=4, replicas=2)
    plans = plan(nodes, [dep], pools=[pool(blockLabel=BLOCK)])
    assert [r.racks for r in plans[0].replicas] == [("b0/r1",), ("b1/r1",)]


def test_replica_with_one_stage_spans_racks_between_tensor_groups() -> None:
    # 128 GPUs, one pipeline stage of 16 TP groups of 8: two racks of 72 hold 8 groups each.
    dep = deployment("wide", tensor=8, data=16, gpusPerPod=4, replicaScope="Any", fallback="Never")
    replica = only(plan(nvl72(2), [dep]))
    assert replica.racks == ("clique-0000", "clique-0001")
    by_rack = Counter(rack_of(str(p.node)) for p in replica.pods for _ in range(p.gpus))
    assert by_rack == {"clique-0000": 64, "clique-0001": 64}
    # Rank order is the contract's: every TP group of 8 consecutive ranks sits in one rack.
    rank_rack = [rack_of(str(p.node)) for p in replica.pods for _ in range(p.gpus)]
    assert all(len(set(rank_rack[g : g + 8])) == 1 for g in range(0, 128, 8))


def test_replica_whose_expert_group_is_the_whole_replica_never_spans_racks() -> None:
    dep = deployment(
        "moe", tensor=8, data=16, expert=128, gpusPerPod=4, replicaScope="Any", fallback="Never"
    )
    plans = plan(nvl72(2), [dep])
    assert plans[0].mode == "Unplaced"
    assert (
        "its tensor- and expert-parallel groups and pods need 128 GPUs in one NVLink domain, "
        "so it cannot span racks" in str(plans[0].reason)
    )


def test_whole_stages_per_rack_when_that_costs_no_extra_rack() -> None:
    # TP 4 x DP 4 x PP 2: stages of 16 GPUs, TP groups of 4. Racks of 20 free take a stage each.
    nodes = block_nodes({"b0/r0": 5, "b0/r1": 5})
    dep = deployment("two", tensor=4, data=4, pipeline=2, gpusPerPod=4, replicaScope="Any")
    replica = only(plan(nodes, [dep], pools=[pool(blockLabel=BLOCK)]))
    assert shares(replica) == {"b0/r0": 16, "b0/r1": 16}


def test_split_inside_a_stage_when_whole_stages_need_an_extra_rack() -> None:
    # 24 + 12 free: whole stages of 16 would need three racks; cut between TP groups, two do.
    nodes = block_nodes({"b0/r0": 6, "b0/r1": 3, "b0/r2": 3})
    dep = deployment("two", tensor=4, data=4, pipeline=2, gpusPerPod=4, replicaScope="Any")
    replica = only(plan(nodes, [dep], pools=[pool(blockLabel=BLOCK)]))
    # As even as the racks allow: 12 on the small rack (all it has), 20 on the large one.
    assert sorted(shares(replica).values()) == [12, 20]
    assert shares(replica)["b0/r0"] == 20
    rank_rack = [str(p.node)[:5] for p in replica.pods for _ in range(p.gpus)]
    assert all(len(set(rank_rack[g : g + 4])) == 1 for g in range(0, 32, 4))


# Spread and Pack


def test_spread_puts_replicas_on_distinct_racks_and_pack_fills_one() -> None:
    pods = fill(0, 12)  # rack 0 has 24 free: best fit for everything below
    spread = deployment("spread", tensor=8, gpusPerPod=4, replicas=3, spread="Spread")
    plans = plan(nvl72(3), [spread], pods=pods)
    assert [r.racks for r in plans[0].replicas] == [
        ("clique-0000",),
        ("clique-0001",),
        ("clique-0002",),
    ]
    pack = deployment("pack", tensor=8, gpusPerPod=4, replicas=3, spread="Pack")
    plans = plan(nvl72(3), [pack], pods=pods)
    assert [r.racks for r in plans[0].replicas] == [("clique-0000",)] * 3


def test_spread_shares_a_rack_when_there_are_too_few() -> None:
    spread = deployment("spread", tensor=8, gpusPerPod=4, replicas=3, spread="Spread")
    plans = plan(nvl72(2), [spread])
    racks = [r.racks[0] for r in plans[0].replicas]
    assert len(racks) == 3
    assert set(racks) == {"clique-0000", "clique-0001"}


# Exclusive replicas and single-tenant racks


def test_exclusive_replica_takes_a_whole_empty_rack_and_holds_it() -> None:
    pods = fill(0, 17)  # rack 0: 4 free; best fit would pick it for anyone but an exclusive one
    whole = deployment("whole", namespace="llm", tensor=8, gpusPerPod=4, exclusive=True)
    later = deployment("later", tensor=4, replicas=2, fallback="Never", spread="Pack")
    plans = plan(nvl72(2), [whole, later], pods=pods)
    assert only(plans[:1]).racks == ("clique-0001",)
    # Rack 1 still has 64 free GPUs, but it is held: the second replica finds no room.
    assert [r.racks for r in plans[1].replicas] == [("clique-0000",)]
    assert why(plans[1], 1) == room(4, Problem("too-few", 0), Problem("held", 0, "llm/whole"))


def test_exclusive_replica_refuses_racks_in_use() -> None:
    pods = [gpu_pod("tiny", "gb200-0000-00", 1), gpu_pod("tiny2", "gb200-0001-05", 1)]
    whole = deployment("whole", tensor=8, gpusPerPod=4, exclusive=True, fallback="Never")
    plans = plan(nvl72(2), [whole], pods=pods)
    assert why(plans[0]) == room(8, Problem("in-use"), Problem("in-use"))


def test_running_exclusive_pods_hold_their_rack() -> None:
    labels = {**EXCLUSIVE_LABELS, "rackscale.dev/exclusive": "true"}
    pods = [gpu_pod("kimi-0-0", "gb200-0000-00", 4, namespace="llm", labels=labels)]
    dep = deployment("dense", tensor=8, gpusPerPod=4, replicas=2, fallback="Never")
    plans = plan(nvl72(2), [dep], pods=pods)
    # Rack 0 has 68 free GPUs, but kimi holds it: both replicas share rack 1.
    assert [r.racks for r in plans[0].replicas] == [("clique-0001",)] * 2


def test_single_tenant_racks_hold_one_namespace() -> None:
    pods = fill(0, 16, namespace="batch") + fill(1, 2, namespace="llm")
    pools = [pool(tenancy="Exclusive")]
    llm = deployment("chat", namespace="llm", tensor=8, gpusPerPod=4)
    batch = deployment("eval", namespace="batch", tensor=4, replicas=2, spread="Pack")
    plans = plan(nvl72(3), [llm, batch], pods=pods, pools=pools)
    # Rack 0 has the least free but holds batch pods: llm goes to its own rack 1.
    assert only(plans[:1]).racks == ("clique-0001",)
    assert [r.racks for r in plans[1].replicas] == [("clique-0000",)] * 2

    # A third namespace takes the empty rack, even for a second replica that Spread would
    # rather put elsewhere; a fourth finds every rack taken.
    research = deployment("probe", namespace="research", tensor=8, gpusPerPod=4, replicas=2)
    ops = deployment("ops", namespace="ops", tensor=4, fallback="Never")
    plans = plan(nvl72(3), [research, ops], pods=pods, pools=pools)
    assert [r.racks for r in plans[0].replicas] == [("clique-0002",)] * 2
    assert why(plans[1]) == room(
        4, *(Problem("tenant", 0, ns) for ns in ("batch", "llm", "research"))
    )


def test_shared_tenancy_mixes_namespaces() -> None:
    pods = fill(0, 16, namespace="batch")
    plans = plan(nvl72(2), [deployment("chat", namespace="llm", tensor=8)], pods=pods)
    assert only(plans).racks == ("clique-0000",)


# Fallback


def test_fallback_device_plugin_runs_unpinned_pods_and_says_why() -> None:
    nodes = nvl72(1, trays=2) + [node(f"l40s-{i}", 8, {PRODUCT: "NVIDIA-L40S"}) for i in range(2)]
    dep = deployment("big", tensor=8, data=2, fallback="DevicePlugin")
    plans = plan(nodes, [dep])
    assert plans[0].mode == "DevicePlugin"
    replica = plans[0].replicas[0]
    assert replica.mode == "DevicePlugin"
    assert replica.racks == ()
    assert [(p.node, p.gpus, p.first_rank) for p in replica.pods] == [(None, 8, 0), (None, 8, 8)]
    fallback = why(plans[0])
    assert fallback is not None
    assert (fallback.code, fallback.notes) == ("no-rack-with-room", (Note("fallback"),))


def test_fallback_never_leaves_the_replica_pending_with_a_reason() -> None:
    dep = deployment("big", tensor=8, data=4, gpusPerPod=4, fallback="Never")
    plans = plan(nvl72(1, trays=4), [dep])
    assert plans[0].mode == "Unplaced"
    assert plans[0].replicas == []
    assert why(plans[0]) == room(32, Problem("degraded", 16))


def test_some_replicas_placed_and_some_fallen_back_is_mixed() -> None:
    dep = deployment("dense", tensor=8, gpusPerPod=4, replicas=2, fallback="DevicePlugin")
    plans = plan(nvl72(1, trays=2), [dep])
    assert plans[0].mode == "Mixed"
    assert [r.mode for r in plans[0].replicas] == ["Rack", "DevicePlugin"]


def test_no_rack_pool_means_device_plugin_mode() -> None:
    dep = deployment("dense", tensor=8, rackPool=None)
    plans = plan(nvl72(1), [dep])
    assert plans[0].mode == "DevicePlugin"
    assert plans[0].reason is None


# Reasons a person can act on


def test_reason_counts_racks_by_cause() -> None:
    nodes = nvl72(4)
    for n in nodes:  # rack 2: 12 of 18 trays NotReady
        name = n["metadata"]["name"]
        if name.startswith("gb200-0002-") and int(name[-2:]) < 12:
            n["status"]["conditions"][0]["status"] = "False"
    pods = (
        fill(0, 16)  # 8 free
        + fill(1, 14)  # 16 free
        + [gpu_pod("busy-2", "gb200-0002-12", 4)]  # Degraded, and no longer empty
    )
    kimi = deployment("kimi", namespace="llm", tensor=4, exclusive=True)
    dep = deployment(
        "deepseek-r1", namespace="llm", tensor=8, data=4, expert=32, gpusPerPod=4, fallback="Never"
    )
    plans = plan(nodes, [kimi, dep], pods=pods)
    assert only(plans[:1]).racks == ("clique-0003",)
    assert why(plans[1]) == room(
        32,
        Problem("too-few", 8),
        Problem("too-few", 16),
        Problem("degraded", 20),
        Problem("held", 0, "llm/kimi"),
    )
    assert plans[1].decisions[0].reason == (  # as docs/design.md quotes it
        "no rack holds 32 free GPUs in one NVLink domain: 2 racks have too few free (8, 16), "
        "1 is Degraded, 1 is held exclusively by llm/kimi"
    )


def test_a_rack_pool_that_does_not_exist() -> None:
    never = deployment("lost", rackPool="nope", fallback="Never")
    fallback = deployment("lost-too", rackPool="nope", fallback="DevicePlugin")
    plans = plan(nvl72(1), [never, fallback])
    assert plans[0].mode == "Unplaced"
    assert why(plans[0]) == Reason("pool-missing", InPool("nope"))
    assert plans[1].mode == "DevicePlugin"
    assert why(plans[1]) == Reason("pool-missing", InPool("nope"), (Note("fallback"),))


def test_block_scope_without_block_label() -> None:
    dep = deployment("moe", tensor=8, pipeline=2, replicaScope="Block", fallback="Never")
    plans = plan(nvl72(2), [dep])
    assert why(plans[0]) == Reason("block-label-missing", InPool("gb200"))


# Determinism


def test_same_cluster_and_deployments_give_the_same_plan() -> None:
    nodes = nvl72(6, blocks=2)
    pods = fill(1, 5) + fill(4, 11, namespace="batch")
    deps = [
        deployment("a", tensor=4, replicas=5),
        deployment("b", tensor=8, pipeline=4, gpusPerPod=4, replicaScope="Block", replicas=2),
        deployment("c", tensor=8, gpusPerPod=4, exclusive=True),
        deployment("d", tensor=2, replicas=7, spread="Pack"),
    ]
    pools = [pool(blockLabel=BLOCK)]

    def outcome(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> list[Any]:
        plans = plan(nodes, deps, pods=pods, pools=pools)
        return [(p.deployment, p.mode, p.replicas, p.reason) for p in plans]

    first = outcome(nodes, pods)
    assert outcome(nodes, pods) == first
    assert outcome(nodes[::-1], pods[::-1]) == first


@pytest.mark.parametrize("racks", [1, 3])
def test_whole_rack_replica_fills_every_tray(racks: int) -> None:
    dep = deployment("whole", tensor=4, pipeline=18, gpusPerPod=4, replicas=racks)
    plans = plan(nvl72(racks), [dep])
    for replica in plans[0].replicas:
        assert len({p.node for p in replica.pods}) == 18
        assert gpus_by_rack(replica) == {replica.racks[0]: RACK}


def test_block_replica_never_spans_racks_that_carry_no_block_label() -> None:
    # Two racks not yet labelled with a block, and one small rack that is: nothing is known
    # about the spine between r0 and r1, so a Block-scoped replica may not span them.
    nodes = [
        node(f"{rack}-{t}", 4, {PRODUCT: "NVIDIA-GB200", CLIQUE: rack})
        for rack in ("r0", "r1")
        for t in range(2)
    ] + block_nodes({"b0/r9": 1})
    dep = deployment(
        "moe", tensor=4, pipeline=4, gpusPerPod=4, replicaScope="Block", fallback="Never"
    )
    plans = plan(nodes, [dep], pools=[pool(blockLabel=BLOCK, gpusPerRack=8)])
    assert plans[0].mode == "Unplaced"


def test_nodes_selected_by_two_pools_go_to_neither() -> None:
    nodes = nvl72(1, trays=2) + nvl72(1, trays=2, prefix="other")
    for n in nodes[2:]:
        n["metadata"]["labels"][CLIQUE] = "clique-b"
        n["metadata"]["labels"]["team"] = "a"
    pools = [
        pool("a", nodeSelector={"matchLabels": {"team": "a"}}),
        pool("b"),  # every GB200 node, the team's included
    ]
    snapshot = build_snapshot(nodes, [], pools)
    assert sorted(snapshot.conflicts) == ["other-0000-00", "other-0000-01"]
    plans = place(snapshot, [deployment("x", tensor=4, replicas=3, rackPool="b", fallback="Never")])
    assert {p.node for r in plans[0].replicas for p in r.pods} == {"gb200-0000-00", "gb200-0000-01"}
    assert len(plans[0].replicas) == 2


def test_a_node_listed_twice_is_one_node() -> None:
    # `rackscale plan --cluster a.yaml --cluster b.yaml` with the node in both files.
    nodes = nvl72(1, trays=2)
    pods = [gpu_pod("busy", "gb200-0000-00", 4)]
    dep = deployment("dense", tensor=4, replicas=3, spread="Pack", fallback="Never")
    plans = plan([*nodes, nodes[0]], [dep], pods=pods, pools=[pool(gpusPerRack=8)])
    # gb200-0000-00 is full: only gb200-0000-01 can take a replica.
    assert [p.node for r in plans[0].replicas for p in r.pods] == ["gb200-0000-01"]


def test_a_pod_listed_twice_holds_its_gpus_once() -> None:
    pods = [gpu_pod("busy", "gb200-0000-00", 2)] * 2
    dep = deployment("small", tensor=2, fallback="Never")
    plans = plan(nvl72(1, trays=1), [dep], pods=pods, pools=[pool(gpusPerRack=4)])
    assert only(plans).pods[0].node == "gb200-0000-00"


def test_pods_without_names_each_hold_their_gpus() -> None:
    # A hand-written cluster file for `rackscale plan` may leave pods unnamed.
    pods = [gpu_pod("a", "gb200-0000-00", 4), gpu_pod("b", "gb200-0000-01", 4)]
    for p in pods:
        del p["metadata"]["name"]
    dep = deployment("small", tensor=4, fallback="Never")
    plans = plan(nvl72(1, trays=2), [dep], pods=pods, pools=[pool(gpusPerRack=8)])
    assert plans[0].mode == "Unplaced"


@pytest.mark.parametrize(
    ("tenancy", "refused"),
    [
        # rack 1 is in reach but full
        ("Shared", NoNodeWithRoom(8, (Problem("held", 0, "llm/kimi"),), most=0)),
        # rack 1 holds pods of namespace other: no rack is in reach
        (
            "Exclusive",
            NoNodeWithRoom(8, (Problem("tenant", 0, "llm"), Problem("tenant", 0, "other"))),
        ),
    ],
)
def test_node_scope_reason_names_why_free_nodes_are_out_of_reach(
    tenancy: str, refused: NoNodeWithRoom
) -> None:
    # Rack 1 is full. Rack 0 has two free 8-GPU nodes, but either kimi, an exclusive replica,
    # holds it, or (single-tenant pool) a pod of namespace llm runs there. A replica of
    # namespace batch that needs one node cannot go there, and the reason must say why.
    nodes = nvl72(2, trays=3, gpus=8)
    pods = [gpu_pod(f"busy-{i}", f"gb200-0001-0{i}", 8) for i in range(3)]
    earlier = []
    if tenancy == "Shared":
        earlier = [deployment("kimi", namespace="llm", tensor=8, exclusive=True)]
    else:
        pods.append(gpu_pod("chat", "gb200-0000-00", 8, namespace="llm"))
    dep = deployment("x", namespace="batch", tensor=8, replicaScope="Node", fallback="Never")
    pools = [pool(gpusPerRack=24, tenancy=tenancy)]
    plans = plan(nodes, [*earlier, dep], pods=pods, pools=pools)
    # The free nodes are out of reach: never counted as the most free on one node.
    assert why(plans[-1]) == Reason("no-node-with-room", refused)


def test_multi_rack_reason_counts_gpus_a_toleration_opens() -> None:
    labels = {PRODUCT: "NVIDIA-GB200"}
    nodes = [node(f"r{r}-0", 4, {**labels, CLIQUE: f"r{r}"}, taints=[DEDICATED]) for r in range(2)]
    dep = tolerant("tolerant", {"tensor": 4, "pipeline": 3}, replicaScope="Any")
    plans = plan(nodes, [dep], pools=[pool(gpusPerRack=4)])
    # Three stages of 4 GPUs, two racks of 4 GPUs each: the same words as without the taint.
    assert why(plans[0]) == Reason(
        "no-racks-with-room", NoRacksWithRoom(12, 3, 4, rooms=(BlockRoom(None, 2, (4, 4)),))
    )


def test_best_fit_for_a_tolerant_replica_counts_the_gpus_it_may_use() -> None:
    # Rack a: four tainted trays the replica tolerates, all free (16 GPUs for it).
    # Rack b: four healthy trays, two in use (8 free). Best fit is b; a stays whole.
    labels = {PRODUCT: "NVIDIA-GB200"}
    nodes = [node(f"a-{t}", 4, {**labels, CLIQUE: "a"}, taints=[DEDICATED]) for t in range(4)]
    nodes += [node(f"b-{t}", 4, {**labels, CLIQUE: "b"}) for t in range(4)]
    pods = [gpu_pod(f"busy-{t}", f"b-{t}", 4) for t in range(2)]
    dep = tolerant("tolerant", {"tensor": 4})
    plans = plan(nodes, [dep], pods=pods, pools=[pool(gpusPerRack=16)])
    assert only(plans).racks == ("b",)


def test_a_replaced_replica_stays_on_its_racks_when_they_still_fit() -> None:
    # Best fit would pick the part-used rack 0; the replica ran on rack 1 before a template change.
    snapshot = build_snapshot(
        nvl72(2, trays=4), [gpu_pod("busy", "gb200-0000-00", 4)], [pool(gpusPerRack=16)]
    )
    dep = deployment("moe", tensor=8, gpusPerPod=4, fallback="Never")
    kept = place_replica(snapshot, dep, 0, prefer=["clique-0001"])
    assert kept.plan is not None
    assert kept.plan.racks == ("clique-0001",)
    # Racks that can no longer hold it are only a preference: it is placed as usual.
    bigger = deployment("dense", tensor=4, data=3, gpusPerPod=4, fallback="Never")
    moved = place_replica(snapshot, bigger, 0, prefer=["clique-0001"])  # 8 free there now
    assert moved.plan is not None
    assert moved.plan.racks == ("clique-0000",)
    assert moved.reason is None


def test_one_pass_places_the_largest_waiting_replica_before_an_older_small_one() -> None:
    # One empty rack; an 8-GPU replica waits, then a 72-GPU one arrives. Taken in the order
    # given the small one opens the rack and the large one can go nowhere; a pass takes the
    # large one first and the small one waits with a reason.
    small = deployment("small", tensor=8, gpusPerPod=4, fallback="Never")
    large = deployment("large", tensor=8, pipeline=9, gpusPerPod=4, fallback="Never")
    in_order = plan(nvl72(1), [small, large])
    assert [p.mode for p in in_order] == ["Rack", "Unplaced"]

    snapshot = build_snapshot(nvl72(1), [], [pool()])
    decided = [
        (w.deployment.name, d)
        for w, d in place_pass(snapshot, [Placeable(small, 0), Placeable(large, 0)])
    ]
    assert [name for name, _ in decided] == ["large", "small"]
    assert decided[0][1].plan is not None
    assert decided[1][1].plan is None
    refused = decided[1][1].why
    assert refused is not None
    assert (refused.code, refused.explained) == ("no-rack-with-room", True)
    assert isinstance(refused.details, NoRackWithRoom)
    assert refused.details.gpus == 8


def test_a_pass_places_replicas_keeping_their_racks_first_then_largest_then_as_given() -> None:
    snapshot = build_snapshot(nvl72(2), [], [pool()])
    small = [deployment(f"s{i}", tensor=8, gpusPerPod=4) for i in range(2)]
    large = deployment("large", tensor=8, data=4, gpusPerPod=4)
    kept = deployment("kept", tensor=4, gpusPerPod=4)
    waiting = [Placeable(small[0], 0), Placeable(large, 0), Placeable(small[1], 0)]
    waiting.append(Placeable(kept, 0, prefer=("clique-0001",)))
    order = [
        (w.deployment.name, d.plan.racks if d.plan else None)
        for w, d in place_pass(snapshot, waiting)
    ]
    assert [name for name, _ in order] == ["kept", "large", "s0", "s1"]
    assert order[0][1] == ("clique-0001",)


def test_a_rack_being_released_is_kept_for_the_largest_waiting_replica() -> None:
    # A 72-GPU replica is going away: 10 of its 18 pods are still being deleted, 8 trays are
    # free already. The 8-GPU replica would fit on those now, and the 72-GPU one once the rest
    # are gone: the pass keeps the rack for the large one.
    going = []
    for t in range(10):
        p = gpu_pod(f"old-{t}", f"gb200-0000-{t:02d}", 4)
        p["metadata"]["deletionTimestamp"] = "2026-11-28T10:00:00Z"
        going.append(p)
    small = deployment("small", tensor=8, gpusPerPod=4, fallback="Never")
    large = deployment("large", tensor=8, pipeline=9, gpusPerPod=4, fallback="Never")
    snapshot = build_snapshot(nvl72(1), going, [pool()])
    (_, first), (_, second) = place_pass(snapshot, [Placeable(small, 0), Placeable(large, 0)])
    assert first.plan is None
    assert first.kept == ("clique-0000",)
    assert first.why is not None
    assert first.why.notes == (Note("kept", Kept(("clique-0000",))),)
    assert second.plan is None
    assert second.why == room(8, Problem("kept", 0, "llm/large"))
    # The pass over, nothing is kept, and the GPUs being released still count as used.
    rack = snapshot.pools["gb200"].racks["clique-0000"]
    assert (rack.kept_for, rack.free) == (None, 32)
    assert place_replica(snapshot, small, 0).plan is not None

    # Pods that are not being deleted promise nothing: the small replica takes free room.
    for p in going:
        del p["metadata"]["deletionTimestamp"]
    snapshot = build_snapshot(nvl72(1), going, [pool()])
    decided = {
        w.deployment.name: d
        for w, d in place_pass(snapshot, [Placeable(small, 0), Placeable(large, 0)])
    }
    assert decided["large"].kept == ()
    assert decided["small"].plan is not None


def test_a_pass_tries_other_orders_when_largest_first_leaves_a_replica_out() -> None:
    # Racks with 44 and 60 free GPUs; replicas of 32, 24, 24 and 16. Largest first puts the 32
    # on the tighter rack (12 left), the 24s on the other (12 left): the 16 fits nowhere. The
    # pass finds an order that places all: 24 + 16 on one rack, 32 + 24 on the other.
    busy = [gpu_pod(f"busy-0-{t}", f"gb200-0000-{t:02d}", 4) for t in range(11, 18)]
    busy += [gpu_pod(f"busy-1-{t}", f"gb200-0001-{t:02d}", 4) for t in range(15, 18)]
    sizes = {"a": 4, "b": 3, "c": 3, "d": 2}  # x 8 GPUs
    deps = [
        deployment(n, tensor=8, data=d, gpusPerPod=4, fallback="Never") for n, d in sizes.items()
    ]
    assert [p.mode for p in plan(nvl72(2), deps, pods=busy)] == ["Rack", "Rack", "Rack", "Unplaced"]

    snapshot = build_snapshot(nvl72(2), busy, [pool()])
    done = place_pass(snapshot, [Placeable(d, 0) for d in deps])
    assert all(d.plan is not None for _, d in done)
    racks = {w.deployment.name: d.plan.racks for w, d in done if d.plan}
    assert racks["a"] != racks["d"]
    assert snapshot.pools["gb200"].racks["clique-0000"].free == 4
    assert snapshot.pools["gb200"].racks["clique-0001"].free == 4


def test_a_replica_whose_old_pods_are_going_has_their_rack_kept_for_it() -> None:
    # Replica 0 of llm/big is being replaced: 8 of its 18 pods are gone, 10 are going. It
    # cannot be placed before they are gone, but no smaller replica takes its rack meanwhile.
    labels = {"rackscale.dev/deployment": "big", "rackscale.dev/replica": "0"}
    going = []
    for t in range(10):
        p = gpu_pod(f"big-0-{t}", f"gb200-0000-{t:02d}", 4, namespace="llm", labels=labels)
        p["metadata"]["deletionTimestamp"] = "2026-11-28T10:00:00Z"
        going.append(p)
    big = deployment("big", tensor=8, pipeline=9, gpusPerPod=4, fallback="Never")
    small = deployment("small", tensor=8, gpusPerPod=4, fallback="Never")
    snapshot = build_snapshot(nvl72(1), going, [pool()])
    waiting = [Placeable(small, 0), Placeable(big, 0, prefer=("clique-0000",), terminating=True)]
    (_, replaced), (_, other) = place_pass(snapshot, waiting)
    assert (replaced.plan, replaced.kept) == (None, ("clique-0000",))
    assert other.plan is None
    assert other.why == room(8, Problem("kept", 0, "llm/big"))
    # Without it, the small replica takes the free trays.
    assert place_pass(build_snapshot(nvl72(1), going, [pool()]), [Placeable(small, 0)])[0][1].plan


def test_a_trial_without_explain_carries_the_code_and_no_words() -> None:
    snapshot = build_snapshot(nvl72(1, trays=2), [], [pool(gpusPerRack=8)])
    dep = deployment("big", tensor=8, data=2, gpusPerPod=4, fallback="Never")
    quiet = place_replica(snapshot, dep, 0, explain=False)
    assert quiet.why == Reason("no-rack-with-room")
    assert quiet.reason is None
    told = place_replica(snapshot, dep, 0)
    assert told.why == room(16, Problem("too-few", 8))
