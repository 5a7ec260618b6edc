"""docs/argocd-health.lua, run in Lua 5.1 (the dialect of Argo CD's Lua VM) against the statuses
the operator writes. No cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import lua51

from rackscale.placement import place_deployment
from rackscale.planner import lifecycle
from rackscale.planner.status import (
    Progress,
    WriteFailure,
    deployment_status,
    dump,
    failed_status,
)
from rackscale.render import PoolFacts, render_replica, template_hash
from rackscale.topology import build_snapshot
from tests.factory import deployment, nvl72, pool
from tests.test_status import NOW, STAMP, running

SCRIPT = (Path(__file__).resolve().parent.parent / "docs" / "argocd-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """What Argo CD shows: the script sees the object as the global `obj`."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def as_object(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "ds", "namespace": "llm", "generation": generation},
        "spec": {"replicas": 2},
    }
    if status is not None:
        obj["status"] = status
    return obj


def written(
    pods_ready: bool = True, drop: str | None = None, refused: tuple[WriteFailure, ...] = ()
) -> dict[str, Any]:
    """The status the operator writes for two placed 32-GPU replicas."""
    snapshot = build_snapshot(nvl72(4), [], [pool()])
    dep = deployment("ds", replicas=2, tensor=8, data=4, gpusPerPod=4)
    dep = dep.model_copy(
        update={
            "metadata": {**dep.metadata, "generation": 1},
            "spec": dep.spec.model_copy(
                update={"template": {"spec": {"containers": [{"name": "s", "image": "x"}]}}}
            ),
        }
    )
    plan = place_deployment(snapshot, dep)
    facts = PoolFacts(
        pool="gb200", node_racks={n.name: n.rack.name for n in snapshot.nodes.values() if n.rack}
    )
    pods = [
        p
        for r in plan.replicas
        for p in running(render_replica(dep, r, facts), ready=pods_ready)
        if p["metadata"]["name"] != drop
    ]
    states = lifecycle.classify(
        pods,
        2,
        digest=template_hash(dep),
        nodes={n.name: True for n in snapshot.nodes.values()},
        now=NOW,
        unschedulable_after=60,
    )
    return dump(
        deployment_status(dep, states, Progress(), "nvidia.com/gpu", STAMP, refused=refused)
    )


def test_ready_is_healthy() -> None:
    assert health(as_object(written())) == ("Healthy", "2/2 replicas ready")


def test_not_yet_reconciled_or_an_old_generation_is_progressing() -> None:
    status, message = health(as_object(None))
    assert status == "Progressing"
    assert "Waiting for the rackscale operator" in message
    status, message = health(as_object(written(), generation=2))
    assert (status, message) == (
        "Progressing",
        "Waiting for the rackscale operator to observe generation 2",
    )


def test_pods_starting_or_a_replica_restarting_is_progressing() -> None:
    assert health(as_object(written(pods_ready=False))) == ("Progressing", "0/2 replicas ready")
    status, message = health(as_object(written(drop="ds-1-3")))
    assert status == "Progressing"
    assert message == "replica 1: shard 3 of 8 is gone"


def test_a_refused_write_is_degraded_naming_it_and_the_servers_message() -> None:
    full = "Internal error occurred: failed to allocate a serviceIP: range is full"
    refused = (WriteFailure("apply", "Service", "llm/ds", full),)
    status, message = health(as_object(written(refused=refused)))
    assert status == "Degraded"
    assert message == f"the API server refused to apply Service llm/ds: {full}"


def test_unplaceable_is_degraded_with_the_engines_reason() -> None:
    dep = deployment("big", replicas=1, tensor=8, data=16, gpusPerPod=4, fallback="Never")
    states = lifecycle.classify([], 1, digest="x", nodes={}, now=NOW, unschedulable_after=60)
    reason = "no rack holds 128 free GPUs in one NVLink domain: 4 racks have too few free"
    status = dump(deployment_status(dep, states, Progress(unplaced={0: reason}), "g", STAMP))
    status["observedGeneration"] = 1
    state, message = health(as_object(status))
    assert state == "Degraded"
    assert reason in message


def test_an_invalid_spec_is_degraded_naming_the_field() -> None:
    message = "spec.parallelism.tensor: must be at least 1"
    status = failed_status(1, message, [], STAMP)
    assert health(as_object(status)) == ("Degraded", message)
