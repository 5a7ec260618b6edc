"""The snapshot reads racks, blocks, health, usage and tenancy from plain cluster objects."""

from __future__ import annotations

from typing import Any

from rackscale.topology import build_snapshot
from tests.factory import BLOCK, CLIQUE, PRODUCT, gpu_pod, hgx, node, nvl72, pool

GB200 = {PRODUCT: "NVIDIA-GB200"}


def rack_free(snapshot: Any, pool_name: str = "gb200") -> dict[str, int]:
    return {name: rack.free for name, rack in snapshot.pools[pool_name].racks.items()}


def test_racks_come_from_the_clique_label_and_ordinary_nodes_stay_out() -> None:
    snap = build_snapshot(nvl72(2) + hgx(3), [], [pool()])
    racks = snap.pools["gb200"].racks
    assert list(racks) == ["clique-0000", "clique-0001"]
    assert [len(r.nodes) for r in racks.values()] == [18, 18]
    assert all(r.health == "Healthy" and r.free == 72 for r in racks.values())
    assert snap.nodes["hgx-00"].pool is None
    assert snap.ordinary_node_gpus == 8


def test_blocks_qualify_rack_names() -> None:
    nodes = [
        node("a", 4, {**GB200, CLIQUE: "r1", BLOCK: "b1"}),
        node("b", 4, {**GB200, CLIQUE: "r1", BLOCK: "b2"}),
    ]
    snap = build_snapshot(nodes, [], [pool(blockLabel=BLOCK)])
    assert list(snap.pools["gb200"].racks) == ["b1/r1", "b2/r1"]
    assert snap.pools["gb200"].racks["b2/r1"].block == "b2"


def test_every_gpu_pod_counts_but_finished_ones_do_not() -> None:
    finished = gpu_pod("done", "gb200-0000-01", 4)
    finished["status"]["phase"] = "Succeeded"
    pinned = gpu_pod("pinned", "gb200-0000-02", 2)
    del pinned["spec"]["nodeName"]
    pinned["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": ["gb200-0000-02"]}
                        ]
                    }
                ]
            }
        }
    }
    init = gpu_pod("init", "gb200-0000-03", 1)
    init["spec"]["initContainers"] = [
        {"name": "i", "resources": {"requests": {"nvidia.com/gpu": "3"}}}
    ]
    pods = [gpu_pod("foreign", "gb200-0000-00", 3), finished, pinned, init]
    snap = build_snapshot(nvl72(1), pods, [pool()])
    used = {n.name: n.used for n in snap.pools["gb200"].racks["clique-0000"].nodes if n.used}
    assert used == {"gb200-0000-00": 3, "gb200-0000-02": 2, "gb200-0000-03": 3}
    rack = snap.pools["gb200"].racks["clique-0000"]
    assert (rack.free, rack.used, rack.namespaces["other"]) == (72 - 8, 8, 3)


def test_health_of_nodes_and_racks() -> None:
    nodes = nvl72(3)
    for n in nodes[:18]:  # rack 0: every tray NotReady
        n["status"]["conditions"][0]["status"] = "False"
    nodes[18]["spec"]["unschedulable"] = True  # rack 1: one tray cordoned
    nodes[19]["spec"]["taints"] = [{"key": "gpu-fault", "effect": "NoExecute"}]
    nodes[36]["spec"]["taints"] = [  # rack 2: the pool's own taint and a PreferNoSchedule: healthy
        {"key": "rackscale.dev/pool", "value": "gb200", "effect": "NoSchedule"},
        {"key": "soft", "effect": "PreferNoSchedule"},
    ]
    snap = build_snapshot(nodes, [], [pool()])
    racks = snap.pools["gb200"].racks
    assert [r.health for r in racks.values()] == ["Unavailable", "Degraded", "Healthy"]
    assert [r.free for r in racks.values()] == [0, 64, 72]
    assert snap.nodes["gb200-0001-00"].problem() == "cordoned"
    assert snap.nodes["gb200-0001-01"].problem() == "tainted gpu-fault:NoExecute"
    assert snap.nodes["gb200-0000-00"].problem() == "NotReady"


def test_a_node_selected_by_two_pools_joins_neither() -> None:
    nodes = nvl72(1)
    nodes[0]["metadata"]["labels"]["team"] = "a"
    other = pool("team-a", nodeSelector={"matchLabels": {"team": "a"}})
    snap = build_snapshot(nodes, [], [pool(), other])
    assert snap.conflicts == {"gb200-0000-00": ["gb200", "team-a"]}
    assert snap.nodes["gb200-0000-00"].pool is None
    assert len(snap.pools["gb200"].racks["clique-0000"].nodes) == 17


def test_a_node_without_the_rack_label_is_not_in_the_pool() -> None:
    nodes = nvl72(1)
    del nodes[0]["metadata"]["labels"][CLIQUE]
    snap = build_snapshot(nodes, [], [pool()])
    assert snap.nodes["gb200-0000-00"].pool is None
    assert len(snap.pools["gb200"].racks["clique-0000"].nodes) == 17


def test_exclusive_pods_hold_their_rack() -> None:
    labels = {
        "rackscale.dev/deployment": "kimi",
        "rackscale.dev/replica": "0",
        "rackscale.dev/exclusive": "true",
    }
    snap = build_snapshot(
        nvl72(2), [gpu_pod("k", "gb200-0001-00", 4, namespace="llm", labels=labels)], [pool()]
    )
    racks = snap.pools["gb200"].racks
    assert racks["clique-0001"].held_by == ("llm/kimi", 0)
    assert racks["clique-0000"].held_by is None
    assert racks["clique-0001"].deployments == {"llm/kimi": 1}
