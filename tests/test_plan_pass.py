"""`plan_pass` tested directly, table by table: a small cluster, deployments, their pods, the
records and the clock in; the deletes, bookings, Events, status phases and records out."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from rackscale.planner.lifecycle import Clock
from rackscale.planner.plan import (
    PassPlan,
    Seen,
    View,
    after,
    finish_pass,
    plan_pass,
    report_pass,
)
from rackscale.planner.step import Record
from rackscale.topology import PodInfo, build_snapshot
from tests.factory import gpu_pod, nvl72, pool

CLOCK = Clock(datetime(2026, 11, 28, 12, 0, tzinfo=UTC), unschedulable_after=60.0)
TEMPLATE = {"spec": {"containers": [{"name": "server", "image": "vllm"}]}}


def body(name: str, replicas: int, data: int = 16, **spec: Any) -> dict[str, Any]:
    """A deployment of `replicas` replicas of `data` GPUs (4 per pod) in pool gb200."""
    return {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {
            "name": name,
            "namespace": "llm",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": "2026-11-28T10:00:00Z",
        },
        "spec": {
            "replicas": replicas,
            "parallelism": {"data": data},
            "gpusPerPod": 4,
            "placement": {"rackPool": "gb200", "fallback": "Never"},
            "template": TEMPLATE,
            **spec,
        },
    }


def view(racks: int, bodies: list[dict[str, Any]], pods: Sequence[PodInfo] = ()) -> View:
    nodes = nvl72(racks)
    snapshot = build_snapshot(nodes, [], [pool()])
    for pod in pods:
        snapshot.add_pod(pod)
    readiness = {n["metadata"]["name"]: True for n in nodes}
    seen = [
        Seen(
            b,
            [p for p in pods if p.labels.get("rackscale.dev/deployment") == b["metadata"]["name"]],
        )
        for b in bodies
    ]
    return View(snapshot, seen, readiness)


def running(plan: PassPlan) -> list[PodInfo]:
    """The pods a plan books, as the watch shows them once they run and serve."""
    out = []
    for deployment in plan.deployments:
        for booking in deployment.bookings:
            for pod in booking.pods():
                pod = copy.deepcopy(pod)
                pod["metadata"]["uid"] = f"uid-{pod['metadata']['name']}"
                pod["metadata"]["creationTimestamp"] = "2026-11-28T11:00:00Z"
                pod["spec"]["nodeName"] = PodInfo.from_body(pod).pinned
                pod["status"] = {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
                out.append(PodInfo.from_body(pod))
    return out


@dataclass
class Case:
    """One row: what the pass sees, what it must do."""

    racks: int
    bodies: list[dict[str, Any]]
    before: list[dict[str, Any]] = field(default_factory=list)  # deployments run in a pass before
    lose: str | None = None  # a node gone since
    deletes: list[tuple[str, int, str]] = field(default_factory=list)  # deployment, replica, cause
    booked: list[tuple[str, int, str]] = field(default_factory=list)  # deployment, replica, result
    events: dict[str, list[str]] = field(default_factory=dict)  # deployment -> Event reasons
    phases: dict[str, str] = field(default_factory=dict)  # once every write is taken
    unplaced: dict[str, list[int]] = field(default_factory=dict)  # next record's


CASES = {
    "places every replica, largest first": Case(
        racks=2,
        bodies=[body("a", 1), body("b", 1, data=64)],
        booked=[("a", 0, "placed"), ("b", 0, "placed")],
        events={"a": ["Placed"], "b": ["Placed"]},
        phases={"a": "Placed", "b": "Placed"},
    ),
    "a replica that does not fit waits, said once": Case(
        racks=1,
        bodies=[body("a", 2, data=64)],
        booked=[("a", 0, "placed"), ("a", 1, "unplaced")],
        events={"a": ["Placed", "FailedPlacement"]},
        phases={"a": "Degraded"},
        unplaced={"a": [1]},
    ),
    "a running deployment needs nothing": Case(
        racks=1,
        bodies=[body("a", 1)],
        before=[body("a", 1)],
        phases={"a": "Ready"},
    ),
    "scaled down: the excess replica goes": Case(
        racks=2,
        bodies=[body("a", 1)],
        before=[body("a", 2)],
        deletes=[("a", 1, "scale-down")],
        events={"a": ["ScaledDown"]},
        phases={"a": "Ready"},
    ),
    "a lost node restarts its replica, placed once its pods are gone": Case(
        racks=2,
        bodies=[body("a", 1, data=64)],
        before=[body("a", 1, data=64)],
        lose="gb200-0000-00",
        deletes=[("a", 0, "restart")],
        events={"a": ["ReplicaRestarting"]},
        phases={"a": "Degraded"},
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_plan_pass(name: str) -> None:
    case = CASES[name]
    records: dict[str, Record] = {}
    pods: list[PodInfo] = []
    if case.before:
        first = plan_pass(view(case.racks, case.before), records, CLOCK)
        records = {p.uid: p.record for p in first.deployments if p.record is not None}
        pods = running(first)
    the_view = view(case.racks, case.bodies, pods)
    if case.lose:
        the_view = View(
            the_view.snapshot,
            the_view.deployments,
            {n: r for n, r in the_view.readiness.items() if n != case.lose},
        )
    kept = copy.deepcopy(records)
    plan = plan_pass(the_view, records, CLOCK)
    assert records == kept  # the records given are not changed

    deletes = [(p.key[1], d.replica, d.cause) for p in plan.deployments for d in p.deletes]
    assert deletes == case.deletes
    booked = [(p.key[1], b.replica, b.result) for p in plan.deployments for b in p.bookings]
    assert sorted(booked) == sorted(case.booked)
    events = {
        p.key[1]: [e.reason for e in p.events] + [e.reason for b in p.bookings for e in b.events]
        for p in plan.deployments
    }
    assert {k: v for k, v in events.items() if v} == case.events
    for deployment in plan.deployments:
        name_ = deployment.key[1]
        seen = next(s for s in the_view.deployments if s.body["metadata"]["name"] == name_)
        shown = Seen(seen.body, after(seen, deployment))
        done = finish_pass(deployment, shown, the_view, CLOCK)
        said = report_pass(deployment, shown, the_view, CLOCK, done=done)
        assert said.status is not None
        assert said.status["phase"] == case.phases[name_]
        assert deployment.record is not None
        assert sorted(deployment.record.progress.unplaced) == case.unplaced.get(name_, [])


def test_a_refused_placement_is_said_once_over_passes() -> None:
    the_view = view(1, [body("a", 2, data=64)])
    first = plan_pass(the_view, {}, CLOCK)
    (deployment,) = first.deployments
    assert deployment.record is not None
    assert deployment.record.codes == {1: "no-rack-with-room"}
    pods = running(first)
    again = plan_pass(view(1, [body("a", 2, data=64)], pods), {"uid-a": deployment.record}, CLOCK)
    (second,) = again.deployments
    assert [b.replica for b in second.bookings] == [1]
    assert second.bookings[0].events == []  # the same reason is not posted twice


def test_the_snapshot_is_left_as_found() -> None:
    the_view = view(2, [body("a", 3, data=48)])
    before = {r.name: r.free for p in the_view.snapshot.pools.values() for r in p.racks.values()}
    plan = plan_pass(the_view, {}, CLOCK)
    assert sum(len(b.pods()) for p in plan.deployments for b in p.bookings) == 24
    after_ = {r.name: r.free for p in the_view.snapshot.pools.values() for r in p.racks.values()}
    assert after_ == before


def test_an_invalid_spec_is_refused_with_no_writes_but_its_status() -> None:
    bad = body("a", 1)
    bad["spec"]["template"] = {"spec": {"containers": []}}
    (deployment,) = plan_pass(view(1, [bad]), {}, CLOCK).deployments
    assert deployment.refusal is not None
    assert deployment.refusal.status is not None
    assert deployment.refusal.status["phase"] == "Failed"
    assert deployment.bookings == []
    assert deployment.record is None


def disagg() -> dict[str, Any]:
    """One serving group: a prefill of 8 GPUs and a decode of 32, in one rack."""
    spec = body("ds", 1)
    role = {"parallelism": {"data": 8}, "gpusPerPod": 4, "template": TEMPLATE}
    spec["spec"] = {
        "replicas": 1,
        "placement": {"rackPool": "gb200", "colocate": "Rack", "fallback": "Never"},
        "roles": [
            {"name": "prefill", "replicas": 1, **role},
            {"name": "decode", "replicas": 1, **role, "parallelism": {"data": 32}},
        ],
    }
    return spec


def test_a_lost_role_replica_that_no_longer_fits_beside_restarts_its_group() -> None:
    first = plan_pass(view(1, [disagg()]), {}, CLOCK)
    (group,) = first.deployments
    assert [len(b.pods()) for b in group.bookings] == [10]  # one booking: the whole group
    pods = running(first)
    decode = [p for p in pods if p.labels["rackscale.dev/role"] == "decode"]
    kept = [p for p in pods if p not in decode]
    used = {p.pinned for p in kept}
    free = [n["metadata"]["name"] for n in nvl72(1) if n["metadata"]["name"] not in used]
    filler = [  # someone takes 40 of the 64 free GPUs: 24 stay, the decode needs 32
        PodInfo.from_body(gpu_pod(f"f{i}", node, 4)) for i, node in enumerate(free[:10])
    ]
    the_view = view(1, [disagg()], kept + filler)
    assert group.record is not None
    plan = plan_pass(the_view, {"uid-ds": group.record}, CLOCK)
    (again,) = plan.deployments
    assert [b.decisions[0].why.code for b in again.bookings if b.decisions[0].why] == [
        "beside-group"
    ]
    assert [(d.replica, d.cause) for d in again.deletes] == [(0, "restart")]  # the prefill
    assert [e.reason for e in again.events] == ["ReplicaRestarting"]
    assert "serving group 0 is placed again whole" in again.events[0].message
