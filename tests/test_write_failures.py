"""Writes the API server refuses: every deployment's status says what happened, the rest of its
pass is made, and the refused writes back off exponentially per deployment. No cluster."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from rackscale.controller import backoff
from rackscale.controller.cluster import ClusterCache
from rackscale.controller.reconcile import Reconciler
from tests.factory import nvl72
from tests.fakeapi import FakeAPI

RANGE_FULL = "Internal error occurred: failed to allocate a serviceIP: range is full"
QUOTA = (
    'services "c" is forbidden: exceeded quota: no-services, requested: services=1, '
    "used: services=0, limited: services=0"
)


class Clock:
    """The operator's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def refusing(messages: dict[str, str]) -> Any:
    """The server refuses the Services of the deployments named, each with its message."""

    def refuse(body: dict[str, Any]) -> str | None:
        name = body["metadata"]["labels"]["rackscale.dev/deployment"]
        return messages.get(name)

    return refuse


def condition(api: FakeAPI, name: str, kind: str) -> dict[str, Any]:
    return next(c for c in api.status(name)["conditions"] if c["type"] == kind)


def attempts(api: FakeAPI, name: str) -> int:
    return api.service_writes.count(name)  # its main Service: one a pass that tries


def setup(clock: Clock) -> tuple[FakeAPI, Reconciler]:
    api = FakeAPI(nvl72(2))
    for name in ("a", "b", "c"):
        api.apply(name, replicas=1, data=1)  # 8 GPUs each
    api.refuse_service = refusing({"b": RANGE_FULL, "c": QUOTA})
    return api, Reconciler(api.view(ClusterCache(clock=clock)), api)


def churn(reconciler: Reconciler, clock: Clock, seconds: float = 1.0) -> None:
    """A second passes and the cluster changes (a node, a pool, a resync): a pass for all."""
    clock.now += seconds
    reconciler.cache.mark(None)
    asyncio.run(reconciler.reconcile_all())


def test_every_status_says_what_happened_and_the_rest_of_the_pass_is_made(clock: Clock) -> None:
    api, reconciler = setup(clock)
    asyncio.run(reconciler.reconcile_all())
    for name in ("a", "b", "c"):
        assert api.status(name)["observedGeneration"] == 1
        assert len([k for k in api.pods if k[1].startswith(f"{name}-")]) == 2, "its pods"
    assert condition(api, "a", "Synced")["status"] == "True"
    assert condition(api, "a", "Stalled")["status"] == "False"
    for name, message in (("b", RANGE_FULL), ("c", QUOTA)):
        synced, stalled = condition(api, name, "Synced"), condition(api, name, "Stalled")
        assert (synced["status"], synced["reason"]) == ("False", "WriteRefused")
        assert (stalled["status"], stalled["reason"]) == ("True", "WriteRefused")
        assert synced["message"].startswith(f"the API server refused to apply Service llm/{name}")
        assert message in synced["message"]
        assert stalled["message"] == synced["message"]
    assert ("llm", "a") in api.services
    refused = [(n, m) for n, reason, m in api.events if reason == "WriteRefused"]
    assert sorted(n for n, _ in refused) == ["b", "c"], "one Event per distinct message"


def test_refused_writes_back_off_exponentially_under_churn(clock: Clock) -> None:
    api, reconciler = setup(clock)
    asyncio.run(reconciler.reconcile_all())
    counts = {}
    for second in range(1, 3601):  # an hour of churn, a pass a second
        churn(reconciler, clock)
        if second in (60, 600, 3600):
            counts[second] = attempts(api, "b")
    # Linear would be 60, 600, 3,600; doubling from 5 ms, each tenfold adds about 3 tries,
    # and the 1,000 s cap a few more.
    assert counts[60] <= 16
    assert counts[600] - counts[60] <= 5
    assert counts[3600] - counts[600] <= 5
    assert attempts(api, "a") == 1, "a Service applied is not applied again"
    assert [n for n, r, _ in api.events if r == "WriteRefused"].count("b") == 1
    assert reconciler.backoff.failures(("llm", "b")) == counts[3600]


def test_a_success_resets_the_back_off(clock: Clock) -> None:
    api, reconciler = setup(clock)
    asyncio.run(reconciler.reconcile_all())
    for _ in range(200):
        churn(reconciler, clock)
    before = attempts(api, "b")
    assert reconciler.backoff.failures(("llm", "b")) >= 10
    api.refuse_service = refusing({"c": QUOTA})  # the service range grew
    due = reconciler.backoff.due(("llm", "b"))
    assert due is not None
    churn(reconciler, clock, due - clock.now)
    assert attempts(api, "b") == before + 1
    assert condition(api, "b", "Synced")["status"] == "True"
    assert condition(api, "b", "Stalled")["status"] == "False"
    assert reconciler.backoff.failures(("llm", "b")) == 0
    assert ("llm", "b") in api.services
    api.refuse_service = refusing(
        {"b": RANGE_FULL}
    )  # refused again: from 5 ms, not from where it was
    api.edit("b", lambda spec: spec.update(port=8001))
    asyncio.run(reconciler.reconcile_all())
    assert reconciler.backoff.failures(("llm", "b")) == 1
    assert reconciler.backoff.due(("llm", "b")) == pytest.approx(clock.now + backoff.BASE_SECONDS)


def test_a_spec_edit_is_tried_at_once_while_backing_off(clock: Clock) -> None:
    api, reconciler = setup(clock)
    asyncio.run(reconciler.reconcile_all())
    for _ in range(300):
        churn(reconciler, clock)
    due = reconciler.backoff.due(("llm", "c"))
    assert due is not None
    assert due - clock.now > 10
    before = attempts(api, "c")
    churn(reconciler, clock)
    assert attempts(api, "c") == before, "others' churn does not retry it"
    api.refuse_service = None  # the quota is raised, and the spec edited
    api.edit("c", lambda spec: spec.update(port=8001))
    asyncio.run(reconciler.reconcile_all())  # no time passes
    assert attempts(api, "c") == before + 1
    assert api.status("c")["observedGeneration"] == 2
    assert condition(api, "c", "Synced")["status"] == "True"


def test_a_refused_status_write_backs_off(clock: Clock) -> None:
    api = FakeAPI(nvl72(1))
    api.apply("a", replicas=1, data=1)
    tries = []

    async def refuse(namespace: str, name: str, status: dict[str, Any]) -> None:
        tries.append(clock.now)
        raise RuntimeError("etcdserver: request timed out")

    api.patch_deployment_status = refuse  # type: ignore[method-assign]
    reconciler = Reconciler(api.view(ClusterCache(clock=clock)), api)
    asyncio.run(reconciler.reconcile_all())
    for _ in range(600):
        churn(reconciler, clock)
    assert 5 <= len(tries) <= 20
    said = [m for _, r, m in api.events if r == "WriteRefused"]
    assert said
    assert "patch status llm/a" in said[0]
    assert "etcdserver: request timed out" in said[0]


def test_the_delay_doubles_from_five_milliseconds_to_the_cap() -> None:
    delays = [backoff.delay(n) for n in range(1, 22)]
    assert delays[:3] == [0.005, 0.01, 0.02]
    assert all(b == min(2 * a, backoff.CAP_SECONDS) for a, b in itertools.pairwise(delays))
    assert delays[-1] == backoff.CAP_SECONDS == 1000.0
