"""`rackscale explain`, from plain objects: where each replica is and why, or why it waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rackscale.api import InferenceDeployment, RackPool
from rackscale.cli import main as cli
from rackscale.cli.explain import Cluster, explain
from rackscale.placement import place_deployment
from rackscale.render import PoolFacts, render_replica
from rackscale.topology import build_snapshot
from tests.factory import gpu_pod, nvl72

POOL = {
    "apiVersion": "rackscale.dev/v1alpha1",
    "kind": "RackPool",
    "metadata": {"name": "gb200"},
    "spec": {"nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-GB200"}}},
}
TEMPLATE = {"spec": {"containers": [{"name": "server", "image": "vllm"}]}}


def body(name: str, *, replicas: int, data: int, **placement: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": "llm", "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "replicas": replicas,
            "parallelism": {"tensor": 8, "data": data},
            "gpusPerPod": 4,
            "placement": {"rackPool": "gb200", "fallback": "Never", **placement},
            "template": TEMPLATE,
        },
    }


def bound(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods as the API server shows them once bound and running."""
    out = []
    for pod in pods:
        affinity = pod["spec"]["affinity"]["nodeAffinity"]
        term = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        node = term["matchFields"][0]["values"][0]
        meta = {**pod["metadata"], "ownerReferences": [{"uid": "uid-moe"}]}
        out.append(
            {
                **pod,
                "metadata": meta,
                "spec": {**pod["spec"], "nodeName": node},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }
        )
    return out


def placed_cluster() -> tuple[Cluster, list[str]]:
    """Two 32-GPU replicas of llm/moe placed by the engine on four racks, one rack half used."""
    nodes = nvl72(4)
    others = [gpu_pod(f"other-{i}", f"gb200-0000-{i:02d}", 4) for i in range(10)]
    raw = body("moe", replicas=2, data=4)
    deployment = InferenceDeployment.model_validate(raw)
    snapshot = build_snapshot(nodes, others, [RackPool.model_validate(POOL)])
    plan = place_deployment(snapshot, deployment)
    facts = PoolFacts(
        pool="gb200",
        node_racks={n.name: n.rack.name for n in snapshot.nodes.values() if n.rack},
    )
    pods = [p for r in plan.replicas for p in bound(render_replica(deployment, r, facts))]
    raw["status"] = {
        "observedGeneration": 1,
        "phase": "Ready",
        "mode": "Rack",
        "readyReplicas": 2,
        "gpus": 64,
        "conditions": [
            {"type": "Placed", "status": "True", "reason": "AllReplicasPlaced", "message": "2 of 2"}
        ],
    }
    events = [
        {
            "type": "Normal",
            "reason": "Placed",
            "message": "replica 1: 8 pods",
            "lastTimestamp": "2026-01-01T12:00:02Z",
        },
        {
            "type": "Normal",
            "reason": "Placed",
            "message": "replica 0: 8 pods",
            "lastTimestamp": "2026-01-01T12:00:01Z",
        },
    ]
    cluster = Cluster(raw, nodes=nodes, pods=others + pods, pools=[POOL], events=events)
    return cluster, [r.racks[0] for r in plan.replicas]


def test_a_placed_deployment_shows_racks_nodes_and_why() -> None:
    cluster, racks = placed_cluster()
    text = explain(cluster)
    assert text.splitlines()[0] == "InferenceDeployment llm/moe"
    assert "phase Ready, 2/2 replicas ready, 64 GPUs, mode Rack" in text
    assert "each replica: 32 GPUs (tensor 8 x pipeline 1 x data 4, expert 1)" in text
    for index, rack in enumerate(racks):
        assert f"replica {index}: Rack mode, 8 pods" in text
        assert rack in text
    # Best fit took the half-used rack first; spread put the second replica elsewhere.
    assert racks[0] == "clique-0000"
    assert "(Healthy, 0/72 GPUs free now)" in text
    assert racks[1] != racks[0]
    assert text.count("why: spread: the best-fit rack among those holding no other replica") == 2
    assert "moe-0-0: gb200-0000-" in text
    assert "; Running" in text
    assert "Placed=True AllReplicasPlaced: 2 of 2" in text
    events = text.split("Events:")[1].splitlines()
    assert "replica 0" in events[1]  # oldest first
    assert "replica 1" in events[2]


def test_a_pending_deployment_gives_the_engines_current_reason() -> None:
    cluster, _ = placed_cluster()
    raw = body("huge", replicas=1, data=16)  # 128 GPUs: no NVL72 rack holds them
    raw["status"] = {
        "observedGeneration": 1,
        "phase": "Pending",
        "conditions": [
            {"type": "Placed", "status": "False", "reason": "Unplaceable", "message": "old words"}
        ],
    }
    text = explain(Cluster(raw, cluster.nodes, cluster.pods, cluster.pools, []))
    assert "replica 0: pending" in text
    assert "why: no rack holds 128 free GPUs in one NVLink domain" in text
    assert "(the operator's next pass, on the cluster now)" in text
    assert "Placed=False Unplaceable: old words" in text
    assert text.endswith("Events:\n  none")


def test_a_pending_replica_that_fits_now_says_so() -> None:
    cluster, _ = placed_cluster()
    raw = body("small", replicas=1, data=1, exclusive=True)
    text = explain(Cluster(raw, cluster.nodes, cluster.pods, cluster.pools, []))
    assert "phase unknown (not reconciled yet)" in text
    assert "the operator places it on its next pass" in text
    assert "none yet: is the operator running?" in text


def test_a_pending_replica_is_told_what_the_next_pass_does_with_the_others() -> None:
    """The racks the small replica fits on now go to larger replicas waiting too: the operator's
    pass places the largest first, and so does explain."""
    cluster, _ = placed_cluster()
    small = body("small", replicas=1, data=1, exclusive=True)
    alone = explain(Cluster(small, cluster.nodes, cluster.pods, cluster.pools, []))
    assert "the operator places it on its next pass" in alone
    wide = body("wide", replicas=2, data=9, exclusive=True)  # 72 GPUs each: both empty racks
    text = explain(
        Cluster(small, cluster.nodes, cluster.pods, cluster.pools, [], deployments=[wide])
    )
    assert "replica 0: pending" in text
    assert "the operator places it on its next pass" not in text
    assert "2 are held exclusively by llm/wide" in text


def test_an_invalid_spec_is_named() -> None:
    raw = body("bad", replicas=1, data=1)
    raw["spec"]["parallelism"]["tensor"] = 0
    text = explain(Cluster(raw))
    assert "invalid spec: spec.parallelism.tensor" in text


def test_the_kubectl_plugin_offers_racks_plan_and_explain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.kubectl_plugin(["--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: kubectl rackscale")
    listed = {line.split()[0] for line in usage.splitlines() if line.startswith("    ")}
    assert {"racks", "plan", "explain"} <= listed
    assert "run" not in listed  # the operator is not a kubectl plugin
    with pytest.raises(SystemExit):
        cli.kubectl_plugin(["explain", "--help"])
    assert "-n NAMESPACE" in capsys.readouterr().out


def test_explain_shows_memory_needed_against_its_gpus_and_the_cost() -> None:
    deployment = body("moe", replicas=1, data=1)
    deployment["spec"]["model"] = {"name": "m", "parametersBillions": 405, "precision": "fp8"}
    deployment["status"] = {
        "phase": "Ready",
        "placements": [{"replica": 0, "mode": "Rack", "gpuMemoryMiB": 8 * 189471}],
        "costPerHour": "25.60",
        "currency": "USD",
    }
    text = explain(Cluster(deployment=deployment, nodes=nvl72(1), pools=[POOL]))
    # 405e9 bytes = 377.2 GiB of weights; 2 GiB x 8 of overhead; 8 x 185 GiB of GPUs.
    assert (
        "  memory: 394 GiB per replica (377 GiB of weights at fp8, 16 GiB runtime overhead); "
        "its GPUs have: replica 0 1480 GiB"
    ) in text
    assert "  cost: 25.60 USD/h" in text


def test_a_pending_serving_group_is_explained_role_by_role() -> None:
    text = Path(__file__).resolve().parent.parent / "examples" / "deepseek-r1-disagg.yaml"
    docs = [d for d in yaml.safe_load_all(text.read_text()) if d]
    (raw,) = [d for d in docs if d["kind"] == "InferenceDeployment"]
    raw["spec"]["placement"]["rackPool"] = "gb200"
    out = explain(Cluster(raw, nvl72(2), [], [POOL], []))
    numbers = InferenceDeployment.model_validate(raw).spec.replica_numbers()
    replicas = len(numbers)
    for index in numbers:
        assert f"  replica {index} (group " in out
    assert out.count("the operator places it on its next pass") == replicas
    racks = {line.split("it fits now on ")[1].split(":")[0] for line in out.splitlines()
             if "it fits now on " in line}  # fmt: skip
    assert len(racks) == 1, f"a group's role replicas on one rack: {racks}"


def test_a_replica_spanning_racks_without_rdma_is_warned() -> None:
    """A 144-GPU replica must span two racks: explain warns that its pods request no RDMA
    device, pending or placed; one that fits a rack gets no warning."""
    cluster, _ = placed_cluster()
    raw = body("wide", replicas=1, data=18, replicaScope="Any")
    text = explain(Cluster(raw, cluster.nodes, cluster.pods, cluster.pools, []))
    assert "the operator places it on its next pass" in text
    [warning] = [line for line in text.splitlines() if "warning:" in line]
    assert warning.startswith("    warning: llm/wide: replica 0 spans racks ")
    assert "requests no RDMA resource" in warning
    raw["spec"]["template"] = {
        "spec": {
            "containers": [
                {"name": "server", "image": "vllm", "resources": {"limits": {"rdma/ib": 1}}}
            ]
        }
    }
    assert "warning:" not in explain(Cluster(raw, cluster.nodes, cluster.pods, cluster.pools, []))
    assert "warning:" not in explain(cluster)


def test_a_reason_is_said_once() -> None:
    """The operator words one engine reason into several conditions and an Event: explain
    prints it under the replica, groups the conditions that share a message, and points back
    to it instead of repeating it."""
    cluster, _ = placed_cluster()
    raw = body("huge", replicas=1, data=16)
    reason = "no rack holds 128 free GPUs in one NVLink domain (largest free: 72 on clique-0001)"
    placed = f"0 of 1 replicas placed; replica 0: {reason}"
    waiting = f"waiting for capacity: {reason}"
    raw["status"] = {
        "observedGeneration": 1,
        "phase": "Pending",
        "conditions": [
            {"type": t, "status": v, "reason": r, "message": m}
            for t, v, r, m in [
                ("Placed", "False", "Unplaceable", placed),
                ("Progressing", "False", "Stalled", waiting),
                ("Degraded", "True", "ReplicasUnplaced", placed),
                ("Available", "False", "Pending", "0 of 1 replicas ready"),
                ("Ready", "False", "Pending", placed),
                ("Reconciling", "False", "Stalled", waiting),
                ("Stalled", "True", "Stalled", waiting),
            ]
        ],
    }
    events = [
        {
            "type": "Warning",
            "reason": "FailedPlacement",
            "message": f"replica 0: {reason}",
            "count": 3,
            "lastTimestamp": "2026-01-01T12:00:00Z",
        }
    ]
    text = explain(Cluster(raw, cluster.nodes, cluster.pods, cluster.pools, events))
    assert text.count(reason) == 1  # the operator's status, stale here, says it once
    current = "no rack holds 128 free GPUs in one NVLink domain"
    assert text.count(current) == 2  # the next pass's reason under the replica, then the status
    conditions = text.split("Conditions:\n")[1].split("Events:")[0].splitlines()
    assert conditions == [
        "  Placed=False Unplaceable, Degraded=True ReplicasUnplaced, Ready=False Pending: "
        f"{placed}",
        "  Progressing=False Stalled, Reconciling=False Stalled, Stalled=True Stalled: "
        "waiting for capacity: (as above)",
        "  Available=False Pending: 0 of 1 replicas ready",
    ]
    assert text.endswith("Warning  FailedPlacement (x3): replica 0: (as above)")
