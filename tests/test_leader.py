"""Leader election and the probes: who takes the Lease when, who stops acting, who is live."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rackscale.cli.main import parser
from rackscale.controller import leader, liveness, readiness
from rackscale.controller.lease import (
    LeaseRecord,
    LeaseSettings,
    Step,
    decide,
    default_identity,
    lease_body,
    lease_namespace,
    parse_lease,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in an event loop of its own."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class Leases:
    """One Lease in memory with the API server's optimistic concurrency: a write carrying a
    stale resourceVersion, or a create of an existing Lease, is a 409."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.version = 0
        self.failing: Exception | None = None

    async def read(self) -> dict[str, Any] | None:
        if self.failing:
            raise self.failing
        return copy.deepcopy(self.body)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.failing:
            raise self.failing
        if self.body is not None:
            raise leader.Conflict("exists")
        return self._store(body)

    async def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.failing:
            raise self.failing
        if body["metadata"].get("resourceVersion") != str(self.version):
            raise leader.Conflict("stale resourceVersion")
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.body = copy.deepcopy(body)
        self.body["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.body)

    @property
    def holder(self) -> str | None:
        return None if self.body is None else self.body["spec"].get("holderIdentity")


class Clock:
    """Wall and monotonic time, moved by the test."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.seconds)

    def monotonic(self) -> float:
        return 1000.0 + self.seconds


def candidate(
    store: Leases, clock: Clock, name: str, lost: list[str] | None = None
) -> leader.LeaseElector:
    settings = LeaseSettings(name="rackscale", namespace="ops", identity=name)
    return leader.LeaseElector(
        store,
        settings,
        on_lost=None if lost is None else (lambda: lost.append(name)),
        wall=clock.wall,
        monotonic=clock.monotonic,
    )


def record(holder: str | None, renewed_ago: float, duration: float = 10) -> LeaseRecord:
    renewed = T0 - timedelta(seconds=renewed_ago)
    return LeaseRecord(holder, duration, renewed, renewed, 0, "7")


# ---- the Lease as data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease", "step"),
    [
        (None, Step.CREATE),
        (record("me", 1), Step.RENEW),
        (record("other", 1), Step.STANDBY),
        (record("other", 9.9), Step.STANDBY),
        (record("other", 10.1), Step.ACQUIRE),  # renewTime + leaseDurationSeconds < now
        (record(None, 0), Step.ACQUIRE),  # released on a clean stop
        (LeaseRecord("other", 10, None, None, 0, "1"), Step.ACQUIRE),  # never renewed
    ],
)
def test_decide(lease: LeaseRecord | None, step: Step) -> None:
    assert decide(lease, "me", T0) is step


def test_a_takeover_counts_a_transition_and_a_renewal_keeps_the_acquire_time() -> None:
    settings = LeaseSettings(namespace="ops", identity="me")
    old = record("other", 30)
    taken = lease_body(settings, old, Step.ACQUIRE, T0)
    assert taken["metadata"] == {"name": "rackscale", "namespace": "ops", "resourceVersion": "7"}
    assert taken["spec"]["holderIdentity"] == "me"
    assert taken["spec"]["leaseTransitions"] == 1
    assert taken["spec"]["leaseDurationSeconds"] == 10
    assert taken["spec"]["renewTime"] == "2026-12-01T12:00:00.000000Z"
    later = T0 + timedelta(seconds=2)
    mine = parse_lease({**taken, "metadata": {**taken["metadata"], "resourceVersion": "8"}})
    renewed = lease_body(settings, mine, Step.RENEW, later)
    assert renewed["spec"]["acquireTime"] == taken["spec"]["acquireTime"]
    assert renewed["spec"]["renewTime"] == "2026-12-01T12:00:02.000000Z"
    assert renewed["spec"]["leaseTransitions"] == 1
    assert renewed["metadata"]["resourceVersion"] == "8"


def test_settings_refuse_a_lease_a_leader_cannot_renew_in_time() -> None:
    with pytest.raises(ValueError, match="at least 3 x the renew period"):
        LeaseSettings(duration=5)
    assert LeaseSettings().renew_deadline == 6  # 10 s lease, renewals every 2 s


def test_lease_namespace_is_the_pods_own_by_default() -> None:
    assert lease_namespace({}) == "default"
    assert lease_namespace({"POD_NAMESPACE": "rackscale-system"}) == "rackscale-system"
    assert lease_namespace({"POD_NAMESPACE": "rackscale-system"}, "ops") == "ops"


def test_identity_is_the_pod_name_and_pid() -> None:
    first = default_identity({"POD_NAME": "rackscale-7d9f-abcde"})
    second = default_identity({"POD_NAME": "rackscale-7d9f-abcde"})
    assert first.startswith("rackscale-7d9f-abcde_")
    assert first != second  # a random suffix: a restarted container is a new candidate


# ---- the election -----------------------------------------------------------------------------


@in_loop
async def test_one_of_two_leads_and_a_release_hands_over_at_once() -> None:
    store, clock = Leases(), Clock()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    await a.attempt()
    await b.attempt()
    assert (a.leading, b.leading) == (True, False)
    assert store.holder == "a"
    assert not readiness.STANDBY.is_set()  # the last one made took the lead
    assert b.status()["holder"] == "a"
    clock.seconds = 2
    await a.attempt()  # renews
    await b.attempt()
    assert (a.leading, b.leading) == (True, False)
    await a.release()
    assert not a.leading
    assert store.holder is None
    clock.seconds = 2.5  # well inside the lease duration: a release needs no waiting
    await b.attempt()
    assert b.leading
    assert store.body is not None
    assert store.body["spec"]["leaseTransitions"] == 1


@in_loop
async def test_a_dead_leaders_lease_is_taken_only_once_it_expires() -> None:
    store, clock = Leases(), Clock()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    await a.attempt()
    for seconds in (2, 4, 6, 8, 10):  # `a` was killed at 0: it renews no more
        clock.seconds = seconds
        await b.attempt()
        assert not b.leading, f"took a live lease at {seconds}s"
    clock.seconds = 10.1
    await b.attempt()
    assert b.leading
    assert store.holder == "b"


@in_loop
async def test_wait_leading_returns_when_the_lease_is_taken() -> None:
    store, clock = Leases(), Clock()
    a = candidate(store, clock, "a")
    waiting = asyncio.create_task(a.wait_leading())
    await asyncio.sleep(0)
    assert not waiting.done()
    await a.attempt()
    await asyncio.wait_for(waiting, 1)


@in_loop
async def test_a_leader_that_cannot_renew_stops_before_the_lease_expires() -> None:
    store, clock = Leases(), Clock()
    lost: list[str] = []
    a = candidate(store, clock, "a", lost)
    await a.attempt()
    store.failing = OSError("connection refused")
    for seconds in (2, 4, 6):  # within the renew deadline (6 s): keeps acting
        clock.seconds = seconds
        await a.attempt()
        assert a.leading, seconds
    clock.seconds = 8
    await a.attempt()
    assert not a.leading
    assert a.lost
    assert lost == ["a"]
    # Stopped 8 s after its last renewal: the others may take over only after 10 s.
    assert store.body is not None
    assert store.body["spec"]["leaseDurationSeconds"] == 10


class Hanging(Leases):
    """An API server that accepts the connection and never answers."""

    async def read(self) -> dict[str, Any] | None:
        if self.failing:
            await asyncio.sleep(3600)
        return await super().read()


@in_loop
async def test_a_renewal_that_hangs_counts_as_failed_within_one_period() -> None:
    store, clock = Hanging(), Clock()
    lost: list[str] = []
    settings = LeaseSettings(identity="a", duration=0.4, renew_every=0.1, retry_every=0.1)
    a = leader.LeaseElector(
        store,
        settings,
        on_lost=lambda: lost.append("a"),
        wall=clock.wall,
        monotonic=clock.monotonic,
    )
    await a.attempt()
    assert a.leading
    store.failing = OSError("unused: reads hang instead")
    clock.seconds = 0.3  # past the renew deadline (0.2 s) when the hanging read gives up
    started = time.monotonic()
    await a.attempt()
    assert time.monotonic() - started < 1
    assert lost == ["a"]


@in_loop
async def test_a_leader_overwritten_by_another_stops_at_once() -> None:
    store, clock = Leases(), Clock()
    lost: list[str] = []
    a, b = candidate(store, clock, "a", lost), candidate(store, clock, "b", lost)
    await a.attempt()
    clock.seconds = 11  # `a` stalled past its lease: `b` takes it
    await b.attempt()
    assert b.leading
    await a.attempt()
    assert (a.leading, a.lost, lost) == (False, True, ["a"])


@in_loop
async def test_of_two_writers_racing_only_one_wins() -> None:
    store, clock = Leases(), Clock()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    await a.attempt()
    clock.seconds = 20  # expired for both
    body = await store.read()
    assert body is not None
    seen = parse_lease(body)
    await b.attempt()  # b writes first
    late = lease_body(a.settings, seen, Step.ACQUIRE, clock.wall())
    with pytest.raises(leader.Conflict):
        await store.replace(late)  # the other's write, with the version both read
    assert store.holder == "b"


@in_loop
async def test_a_lost_lease_cancels_the_loop_and_stops_the_operator() -> None:
    stopped: list[bool] = []
    work = asyncio.create_task(asyncio.sleep(60))
    memo: dict[str, Any] = {"task": work, "stop": lambda: stopped.append(True)}
    leader.stop_acting(memo)
    with pytest.raises(asyncio.CancelledError):
        await work
    assert stopped == [True]
    assert memo["lost"] is True


@in_loop
async def test_the_worker_runs_only_once_leading() -> None:
    store, clock = Leases(), Clock()
    other = candidate(store, clock, "other")
    await other.attempt()
    me = candidate(store, clock, "me")
    ran: list[str] = []

    async def work() -> None:
        ran.append("pass")

    task = asyncio.create_task(leader.when_leading(me, work))
    await me.attempt()
    await asyncio.sleep(0)
    assert ran == []  # standing by
    await other.release()
    await me.attempt()
    await asyncio.wait_for(task, 1)
    assert ran == ["pass"]


def test_settings_come_from_the_memo_or_the_environment() -> None:
    chosen = LeaseSettings(name="x", identity="me")
    assert leader.settings_from({"election": chosen}, {}) is chosen
    assert leader.settings_from({"election": None}, {}) is None
    assert leader.settings_from({}, {"RACKSCALE_LEADER_ELECTION": "false"}) is None
    from_env = leader.settings_from(
        {}, {"POD_NAMESPACE": "rs", "RACKSCALE_LEASE_NAME": "l", "POD_NAME": "p"}
    )
    assert from_env is not None
    assert (from_env.namespace, from_env.name) == ("rs", "l")
    assert from_env.identity.startswith("p_")


# ---- liveness and readiness -------------------------------------------------------------------


class Lead:
    """A Leadership as the probe sees it."""

    def __init__(
        self,
        *,
        leading: bool,
        election: bool = True,
        since: float | None = 0.0,
        attempt: float | None = None,
        lost: bool = False,
    ) -> None:
        self.leading, self.election, self.lost = leading, election, lost
        self.leading_since, self.last_attempt = since, attempt

    async def wait_leading(self) -> None:
        return

    async def run(self) -> None:
        return

    async def release(self) -> None:
        return

    def status(self) -> dict[str, Any]:
        return {"leading": self.leading}


BOUND = 60.0


def test_the_leader_is_live_while_passes_complete() -> None:
    loop = liveness.Loop(started=0, bound_at=5, last_pass=100, passes=12)
    report = liveness.check(loop, Lead(leading=True, attempt=159), bound=BOUND, now=160)
    assert report["secondsSinceLastPass"] == 60
    assert report["passes"] == 12
    with pytest.raises(liveness.Unhealthy, match="no reconcile pass completed for 61s"):
        liveness.check(loop, Lead(leading=True, attempt=160), bound=BOUND, now=161)


def test_a_new_leader_counts_from_its_takeover_not_from_its_start() -> None:
    loop = liveness.Loop(started=0, bound_at=5, last_pass=None)
    lead = Lead(leading=True, since=300, attempt=330)
    assert liveness.check(loop, lead, bound=BOUND, now=330)["secondsSinceLastPass"] == 30
    with pytest.raises(liveness.Unhealthy):
        liveness.check(loop, Lead(leading=True, since=300, attempt=370), bound=BOUND, now=370)


def test_the_leader_is_live_while_kopf_fills_its_view() -> None:
    loop = liveness.Loop(started=0, bound_at=None, last_pass=None)
    report = liveness.check(loop, Lead(leading=True, attempt=599), bound=BOUND, now=600)
    assert "waiting" in report


def test_a_standby_is_live_while_its_lease_loop_runs() -> None:
    loop = liveness.Loop(started=0, bound_at=5, last_pass=None)
    assert liveness.check(loop, Lead(leading=False, since=None, attempt=998), bound=BOUND, now=1000)
    with pytest.raises(liveness.Unhealthy, match="lease loop has not run for 61s"):
        liveness.check(loop, Lead(leading=False, since=None, attempt=939), bound=BOUND, now=1000)


def test_an_operator_that_lost_the_lease_is_not_live() -> None:
    loop = liveness.Loop(started=0, bound_at=5, last_pass=99)
    lead = Lead(leading=False, lost=True, attempt=99)
    with pytest.raises(liveness.Unhealthy, match="lost"):
        liveness.check(loop, lead, bound=BOUND, now=100)


def test_without_election_a_wedged_loop_is_not_live() -> None:
    loop = liveness.Loop(started=0, bound_at=5, last_pass=10)
    alone = leader.Alone()
    alone.leading_since = 0
    assert liveness.check(loop, alone, bound=BOUND, now=70)
    with pytest.raises(liveness.Unhealthy):
        liveness.check(loop, alone, bound=BOUND, now=71)


def test_liveness_bound_defaults_to_six_loop_periods_at_least_a_minute() -> None:
    assert liveness.default_bound(10) == 60
    assert liveness.default_bound(30) == 180
    assert liveness.bound_from({"RACKSCALE_LIVENESS_BOUND": "45"}, 10) == 45


@pytest.mark.parametrize(
    ("passed", "watching", "standby", "code"),
    [
        (False, False, False, 503),  # the leader before its first pass
        (True, True, False, 200),  # the leader after it
        (False, False, True, 503),  # a standby still loading the cluster
        (False, True, True, 200),  # a standby ready to take over
        (False, True, False, 503),  # just took over: ready after its first pass
    ],
)
def test_readiness(passed: bool, watching: bool, standby: bool, code: int) -> None:
    answered, _ = readiness.answer(passed=passed, watching=watching, standby=standby)
    assert answered == code


class Stale:
    """A worker whose last pass was two minutes ago."""

    def loop(self) -> liveness.Loop:
        now = time.monotonic()
        return liveness.Loop(started=now - 300, bound_at=now - 290, last_pass=now - 120)


class Fresh:
    def loop(self) -> liveness.Loop:
        now = time.monotonic()
        return liveness.Loop(started=now - 300, bound_at=now - 290, last_pass=now - 1)


@pytest.mark.parametrize(("worker", "code"), [(Fresh(), 200), (Stale(), 500)])
def test_kopf_answers_500_when_the_loop_is_stale(worker: object, code: int) -> None:
    """kopf's own /healthz server with the operator's probe handler: a stale loop is a 500."""
    import kopf
    from kopf._core.engines.indexing import OperatorIndexers
    from kopf._core.engines.probing import health_reporter

    from rackscale.controller import handlers

    registry = kopf.OperatorRegistry()
    kopf.on.probe(id="reconciler", registry=registry)(handlers.probe)
    alone = leader.Alone()
    alone.leading_since = time.monotonic() - 300  # acting since the operator started
    memo = kopf.Memo(worker=worker, leadership=alone, liveness_bound=60.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def get() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as error:
            return error.code

    async def probe() -> int:
        ready = asyncio.Event()
        server = asyncio.create_task(
            health_reporter(
                f"http://127.0.0.1:{port}/healthz",
                memo=memo,  # type: ignore[arg-type]
                indices=OperatorIndexers().indices,
                registry=registry,
                settings=kopf.OperatorSettings(),
                ready_flag=ready,
            )
        )
        await asyncio.wait_for(ready.wait(), 10)
        try:
            return await asyncio.to_thread(get)
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server

    assert asyncio.run(probe()) == code


# ---- flags ------------------------------------------------------------------------------------


def test_run_flags_default_to_leader_election_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RACKSCALE_LEADER_ELECTION", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", "rackscale-system")
    args = parser().parse_args(["run"])
    assert args.leader_election is True
    assert (args.lease_name, args.lease_namespace, args.lease_duration) == (
        "rackscale",
        "rackscale-system",
        10.0,
    )
    assert args.liveness_bound is None
    off = parser().parse_args(["run", "--no-leader-election", "--liveness-bound", "90"])
    assert off.leader_election is False
    assert off.liveness_bound == 90


def test_run_refuses_a_too_short_lease(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["run", "--lease-duration", "4"])
    assert args.handler(args) == 2
    assert "--lease-duration" in capsys.readouterr().err
