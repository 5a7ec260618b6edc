"""A scale-up domain that is not NVIDIA's: Trainium2 UltraServers (examples/). Placement, memory
fit, cost and pod rendering read only what the pool names. No cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from rackscale.api import InferenceDeployment, RackPool
from rackscale.placement import place
from rackscale.planner.status import pool_status
from rackscale.render import PoolFacts, render_replica
from rackscale.topology import build_snapshot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NEURON = "aws.amazon.com/neuron"
ULTRASERVER = "neuron.amazonaws.com/ultraserver-server-id-4"


def trn2(ultraservers: int) -> list[dict[str, Any]]:
    """trn2u.48xlarge nodes, 4 to an UltraServer, each with 16 Neuron devices and no GPU."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"trn2-{u}-{n}",
                "labels": {
                    "node.kubernetes.io/instance-type": "trn2u.48xlarge",
                    ULTRASERVER: f"us-{u}",
                },
            },
            "status": {"allocatable": {NEURON: "16", "cpu": "192"}, "capacity": {NEURON: "16"}},
        }
        for u in range(ultraservers)
        for n in range(4)
    ]


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def test_ultraservers_are_racks_and_their_chips_are_placed_memory_and_cost_included() -> None:
    pool = RackPool.model_validate(example("rackpool-trn2-ultraserver.yaml"))
    dep = InferenceDeployment.model_validate(example("llama-405b-trn2.yaml"))
    snapshot = build_snapshot(trn2(2), [], [pool])
    assert sorted(snapshot.pools["trn2"].racks) == ["us-0", "us-1"]
    [plan] = place(snapshot, [dep])
    assert plan.mode == "Rack"
    assert [r.racks for r in plan.replicas] == [("us-0",), ("us-1",)]  # spread
    first = plan.replicas[0]
    assert [(p.gpus, p.first_rank) for p in first.pods] == [(16, 0), (16, 16)]
    # The pool's gpuMemoryMiB stands in for a label no Neuron node carries.
    assert {snapshot.nodes[str(p.node)].gpu_memory_mib for p in first.pods} == {98304}

    pods = render_replica(
        dep,
        first,
        PoolFacts(pool="trn2", gpu_resource=NEURON, node_racks={"trn2-0-0": "us-0"}),
    )
    for pod in pods:
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits == {NEURON: "16"} or limits.get(NEURON) == "16"
    # Nothing in what rackscale writes for this pool names NVIDIA.
    assert "nvidia" not in json.dumps(pods).lower()

    # 64 chips of two UltraServers' 128 in use, at 2.80 a chip-hour.
    status = pool_status(snapshot.pools["trn2"], {}, [], "")
    assert status.cost is not None
    assert (status.cost.idle_per_hour, status.cost.fragmented_per_hour) == ("179.20", "179.20")


def test_a_model_too_large_for_the_chips_is_refused_with_their_memory() -> None:
    pool = RackPool.model_validate(example("rackpool-trn2-ultraserver.yaml"))
    body = example("llama-405b-trn2.yaml")
    body["spec"]["model"] = {"name": "huge", "parametersBillions": 2000, "precision": "fp32"}
    [plan] = place(build_snapshot(trn2(1), [], [pool]), [InferenceDeployment.model_validate(body)])
    assert plan.mode == "Unplaced"
    assert "its one rack (4 nodes) of RackPool trn2 has GPUs with too little memory (96 GiB)" in (
        str(plan.reason)
    )
