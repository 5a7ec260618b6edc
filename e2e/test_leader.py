"""Two operators on one cluster: exactly one acts (the Lease holder), and when it dies or stops
the other takes over, adopting every existing pod and placing what is new.

The operators run as child processes (`python -m rackscale run -A`), each with its own probe and
metrics ports, on a Lease of the test's own namespace.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e import operators
from e2e.operators import Operator
from e2e.support import (
    UNSCHEDULABLE_TIMEOUT,
    apply,
    check_guarantees,
    eventually,
    inference_deployment,
    pods,
    ready,
)

TAKEOVER_BOUND = 20.0  # seconds: a correctness bound (lease 10 s, retries every 2 s), not a figure
PASSES = "rackscale_reconcile_passes_total"


@pytest.fixture
def lease(namespace: str) -> tuple[str, str]:
    return namespace, f"e2e-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def pair(
    kubeconfig: str, crds: None, lease: tuple[str, str], tmp_path: Path
) -> Iterator[list[Operator]]:
    """Two operators on one Lease, both started and probed; stopped afterwards."""
    env = {"RACKSCALE_UNSCHEDULABLE_TIMEOUT": str(UNSCHEDULABLE_TIMEOUT)}
    started = [
        operators.start(name, kubeconfig, lease, tmp_path, env=env) for name in ("op-a", "op-b")
    ]
    try:
        for op in started:
            eventually(partial(is_ready, op), f"{op.name} to be ready (log {op.log})")
        yield started
    finally:
        for op in started:
            op.stop()


def is_ready(op: Operator) -> bool:
    return op.ready() == 200


def leader_of(kube: client.ApiClient, lease: tuple[str, str], pair: list[Operator]) -> Operator:
    holder = eventually(lambda: operators.holder(kube, lease), f"a holder of Lease {lease}")
    (chosen,) = [op for op in pair if holder.startswith(f"{op.name}_")]
    return chosen


def placed(kube: client.ApiClient, namespace: str, name: str) -> dict[str, tuple[str, str]]:
    """Pod name -> (uid, node) of a deployment's live pods."""
    return {
        p["metadata"]["name"]: (p["metadata"]["uid"], p["spec"].get("nodeName") or "")
        for p in pods(kube, namespace, name)
        if not p["metadata"].get("deletionTimestamp")
    }


def test_one_acts_and_a_killed_leader_is_replaced_without_moving_anything(
    kube: client.ApiClient, pool: str, llm: str, lease: tuple[str, str], pair: list[Operator]
) -> None:
    first = leader_of(kube, lease, pair)
    (standby,) = [op for op in pair if op is not first]
    apply(kube, llm, inference_deployment("before", pool, replicas=2, fallback="Never"))
    ready(kube, llm, "before", 2)
    existing = placed(kube, llm, "before")
    assert len(existing) == 4

    # Exactly one acts: the holder has run passes, the standby none, and says it stands by.
    assert (first.metric(PASSES) or 0) > 0
    assert standby.metric(PASSES) == 0
    assert (first.metric("rackscale_leader"), standby.metric("rackscale_leader")) == (1, 0)
    assert (first.live(), standby.live()) == (200, 200)

    first.kill()
    killed = time.monotonic()
    apply(kube, llm, inference_deployment("after", pool, replicas=1, fallback="Never"))
    eventually(
        lambda: len(placed(kube, llm, "after")) == 2,
        "the standby to create the new deployment's 2 pods",
        timeout=TAKEOVER_BOUND + 10,
    )
    took = time.monotonic() - killed
    assert took <= TAKEOVER_BOUND, f"the new deployment's pods came {took:.1f}s after the kill"
    assert operators.holder(kube, lease) is not None
    assert str(operators.holder(kube, lease)).startswith(f"{standby.name}_")
    ready(kube, llm, "after", 1)
    ready(kube, llm, "before", 2)
    assert placed(kube, llm, "before") == existing, "the takeover moved or replaced a pod"
    assert (standby.metric(PASSES) or 0) > 0
    assert standby.live() == 200
    check_guarantees(kube)


def test_a_clean_stop_hands_the_lease_over_at_once(
    kube: client.ApiClient, pool: str, llm: str, lease: tuple[str, str], pair: list[Operator]
) -> None:
    first = leader_of(kube, lease, pair)
    (standby,) = [op for op in pair if op is not first]
    stopped = time.monotonic()
    assert first.stop() == 0
    eventually(
        lambda: str(operators.holder(kube, lease)).startswith(f"{standby.name}_"),
        f"{standby.name} to take the released Lease",
        timeout=30,
    )
    handover = time.monotonic() - stopped
    # Released, not expired: the standby took it before the 10 s lease could have run out
    # (stopping includes kopf's own shutdown, a few seconds at most).
    assert handover < 10, f"the Lease changed hands {handover:.1f}s after SIGTERM"
    apply(kube, llm, inference_deployment("handed", pool, replicas=1, fallback="Never"))
    ready(kube, llm, "handed", 1)
    assert (standby.metric(PASSES) or 0) > 0
    assert "released Lease" in first.log.read_text()


def test_a_leader_that_finds_another_holder_stops_acting_and_exits(
    kube: client.ApiClient, kubeconfig: str, crds: None, lease: tuple[str, str], tmp_path: Path
) -> None:
    """Someone else wrote the Lease (a leader that stalled past its lease would see this): the
    operator stops at its next renewal and exits 1, for Kubernetes to restart it."""
    op = operators.start("op-alone", kubeconfig, lease, tmp_path)
    try:
        eventually(partial(is_ready, op), f"{op.name} to lead and be ready (log {op.log})")
        namespace, name = lease
        coordination: Any = client.CoordinationV1Api(kube)
        taken = coordination.read_namespaced_lease(name, namespace)
        assert str(taken.spec.holder_identity).startswith("op-alone_")
        taken.spec.holder_identity = "intruder"
        taken.spec.renew_time = datetime.now(UTC)
        coordination.replace_namespaced_lease(name, namespace, taken)
        eventually(lambda: op.process.poll() is not None, f"{op.name} to exit", timeout=30)
        assert op.process.returncode == 1
        text = op.log.read_text()
        assert "leader election lost" in text
        assert "the leader Lease was lost" in text
        assert operators.holder(kube, lease) == "intruder"  # nothing given back that was not its
    finally:
        op.stop()
