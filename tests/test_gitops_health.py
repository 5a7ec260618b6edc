"""The Flux `healthCheckExprs` of docs/flux-health.yaml (CEL, evaluated with cel-python) and the
Argo CD Lua check, against the statuses the operator writes and the CRD's default status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import celpy.adapter
import pytest
import yaml

from rackscale.api.crd import definitions
from rackscale.planner import lifecycle
from rackscale.planner.status import Progress, deployment_status, dump, failed_status
from rackscale.planner.status import pool_status as build_pool_status
from rackscale.topology import build_snapshot
from tests.factory import deployment, nvl72, pool
from tests.test_argocd_health import as_object, health, written
from tests.test_status import NOW, STAMP

EXPRS = yaml.safe_load((Path(__file__).parent.parent / "docs" / "flux-health.yaml").read_text())
LATER = "2026-01-01T12:10:00Z"  # ten minutes after STAMP: past the pool's grace period


def flux(obj: dict[str, Any]) -> str:
    """Flux's verdict: the first of inProgress, failed, current that holds; else InProgress."""
    [check] = [c for c in EXPRS["healthCheckExprs"] if c["kind"] == obj["kind"]]
    env = celpy.Environment()
    activation = {key: celpy.adapter.json_to_cel(value) for key, value in obj.items()}
    for verdict, key in (
        ("InProgress", "inProgress"),
        ("Failed", "failed"),
        ("Current", "current"),
    ):
        program = env.program(env.compile(check[key]))
        if bool(program.evaluate(activation)):
            return verdict
    return "InProgress"


def crd_default_status(kind: str) -> dict[str, Any]:
    """What the API server shows of a new object's status before the operator writes one."""
    for crd in definitions().values():
        if crd["spec"]["names"]["kind"] == kind:
            schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return dict(schema["properties"]["status"]["default"])
    raise AssertionError(kind)


def unplaceable() -> dict[str, Any]:
    dep = deployment("big", replicas=1, tensor=8, data=16, gpusPerPod=4, fallback="Never")
    states = lifecycle.classify([], 1, digest="x", nodes={}, now=NOW, unschedulable_after=60)
    reason = "no rack holds 128 free GPUs in one NVLink domain: 4 racks have too few free"
    status = dump(deployment_status(dep, states, Progress(unplaced={0: reason}), "g", STAMP))
    return {**status, "observedGeneration": 1}


@pytest.mark.parametrize(
    ("status", "generation", "expected_flux", "expected_argo"),
    [
        pytest.param(written(), 1, "Current", "Healthy", id="ready"),
        pytest.param(written(), 2, "InProgress", "Progressing", id="new-generation"),
        pytest.param(written(pods_ready=False), 1, "InProgress", "Progressing", id="pods-starting"),
        pytest.param(written(drop="ds-1-3"), 1, "InProgress", "Progressing", id="restarting"),
        pytest.param(unplaceable(), 1, "Failed", "Degraded", id="waiting-for-capacity"),
        pytest.param(failed_status(1, "spec.x: bad", [], STAMP), 1, "Failed", "Degraded",
                     id="invalid-spec"),
        pytest.param(crd_default_status("InferenceDeployment"), 1, "InProgress", "Progressing",
                     id="fresh-before-the-operator"),
    ],
)  # fmt: skip
def test_inference_deployment_health(
    status: dict[str, Any], generation: int, expected_flux: str, expected_argo: str
) -> None:
    obj = as_object(status, generation=generation)
    assert flux(obj) == expected_flux
    assert health(obj)[0] == expected_argo


def pool_object(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "RackPool",
        "metadata": {"name": "gb200", "generation": 1},
        "spec": {},
        "status": status,
    }


def test_rack_pool_health_through_the_grace_period() -> None:
    assert flux(pool_object(crd_default_status("RackPool"))) == "InProgress"

    healthy = build_snapshot(nvl72(2), [], [pool()]).pools["gb200"]
    written_now = dump(build_pool_status(healthy, {}, [], STAMP))
    assert flux(pool_object({**written_now, "observedGeneration": 1})) == "Current"

    empty = build_snapshot([], [], [pool()]).pools["gb200"]
    first = build_pool_status(empty, {}, [], STAMP)
    first_status = {**dump(first), "observedGeneration": 1}
    assert flux(pool_object(first_status)) == "InProgress"  # nodes may still be joining
    later = build_pool_status(empty, {}, first_status["conditions"], LATER)
    stalled = {c.type: c for c in later.conditions}["Stalled"]
    assert (stalled.status, stalled.reason) == ("True", "NoMatchingNodes")
    assert "spec.nodeSelector" in stalled.message
    assert flux(pool_object({**dump(later), "observedGeneration": 1})) == "Failed"

    # Racks appear: no longer stalled.
    back = build_pool_status(healthy, {}, dump(later)["conditions"], LATER)
    assert flux(pool_object({**dump(back), "observedGeneration": 1})) == "Current"
