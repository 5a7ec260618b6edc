"""Leader election: of several operators, the one holding a coordination.k8s.io/v1 Lease acts.

kopf's peering freezes operators but holds no Lease, so rackscale keeps one of its own. Every
operator runs `LeaseElector.run`: a standby tries to take the Lease every `retry_every` seconds
and takes it when it is free (no holder: released on a clean stop) or expired (`renewTime` plus
`leaseDurationSeconds` in the past); the leader renews it every `renew_every` seconds. Writes
carry the `resourceVersion` they read, so of two candidates only one wins; the other gets a 409.

A leader that cannot renew within `renew_deadline` (shorter than the lease duration, so it stops
before anyone may take over) or finds another holder has lost the Lease: it stops acting at once
and calls `on_lost`, which stops the operator so that Kubernetes starts it again as a standby.
An operator never goes back from acting to standing by in one process: the state a pass leaves in
memory is only trusted by the process that built it while leading.

Clocks: expiry compares the holder's `renewTime` with the candidate's wall clock, so the nodes'
clocks must agree to well within the lease duration (NTP does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from rackscale.controller import metrics, readiness
from rackscale.controller.lease import (
    LeaseRecord,
    LeaseSettings,
    Step,
    decide,
    election_enabled,
    lease_body,
    parse_lease,
    released_body,
)

log = logging.getLogger("rackscale.leader")

# ---- the API ----------------------------------------------------------------------------------


class Conflict(Exception):
    """Another candidate wrote the Lease first (HTTP 409)."""


class LeaseStore(Protocol):
    """Reads and writes one Lease; tests give an in-memory one."""

    async def read(self) -> dict[str, Any] | None: ...
    async def create(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def replace(self, body: dict[str, Any]) -> dict[str, Any]: ...


class KubeLeaseStore:
    """The Lease through the official client, on a thread of its own (the reconcile loop's API
    calls never delay a renewal), each call bounded by a request timeout so that a renewal cannot
    hang past the leader's deadline."""

    def __init__(self, api: client.ApiClient, name: str, namespace: str, timeout: float) -> None:
        self.coordination: Any = client.CoordinationV1Api(api)
        self.name, self.namespace, self.timeout = name, namespace, timeout
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rackscale-lease")

    async def _call(self, call: Callable[..., Any], *args: Any) -> Any:
        bound = functools.partial(
            call, *args, _preload_content=False, _request_timeout=self.timeout
        )
        return await asyncio.get_running_loop().run_in_executor(self.thread, bound)

    async def read(self) -> dict[str, Any] | None:
        try:
            response = await self._call(
                self.coordination.read_namespaced_lease, self.name, self.namespace
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(json.loads(response.data))

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._write(self.coordination.create_namespaced_lease, self.namespace, body)

    async def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._write(
            self.coordination.replace_namespaced_lease, self.name, self.namespace, body
        )

    async def _write(self, call: Callable[..., Any], *args: Any) -> dict[str, Any]:
        try:
            response = await self._call(call, *args)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(str(error.reason)) from error
            raise
        return dict(json.loads(response.data))


# API errors, refused connections and timeouts: a failed attempt, tried again next period.
FAILURES = (ApiException, HTTPError, OSError, ValueError)


# ---- the election -----------------------------------------------------------------------------


class Leadership(Protocol):
    """What the worker and the probes need from leader election."""

    @property
    def leading(self) -> bool: ...
    @property
    def election(self) -> bool: ...
    @property
    def lost(self) -> bool: ...
    @property
    def leading_since(self) -> float | None: ...  # monotonic: when this operator took the lead
    @property
    def last_attempt(self) -> float | None: ...  # monotonic: the lease loop's last attempt

    async def wait_leading(self) -> None: ...
    async def run(self) -> None: ...
    async def release(self) -> None: ...
    def status(self) -> dict[str, Any]: ...


class Alone:
    """Leader election off: this operator always acts (run exactly one)."""

    election = False
    lost = False
    last_attempt = None

    def __init__(self) -> None:
        self.leading_since: float | None = time.monotonic()
        metrics.LEADER.set(1)

    @property
    def leading(self) -> bool:
        return True

    async def wait_leading(self) -> None:
        return

    async def run(self) -> None:
        return

    async def release(self) -> None:
        return

    def status(self) -> dict[str, Any]:
        return {"leaderElection": False, "leading": True}


class LeaseElector:
    """Takes, renews and gives back the Lease; `leading` says whether this operator may act."""

    election = True

    def __init__(
        self,
        store: LeaseStore,
        settings: LeaseSettings,
        *,
        on_lost: Callable[[], None] | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.settings = store, settings
        self.on_lost = on_lost
        self.wall, self.monotonic = wall, monotonic
        self.leading_since: float | None = None
        self.last_attempt: float | None = None
        self.last_renewed: float | None = None  # monotonic: when the last good write was sent
        self.holder: str | None = None  # the holder last read
        self.lost = False
        self._lead = asyncio.Event()
        self._standing_by: str | None = None  # the holder last logged
        readiness.STANDBY.set()

    @property
    def leading(self) -> bool:
        return self._lead.is_set()

    async def wait_leading(self) -> None:
        await self._lead.wait()

    async def run(self) -> None:
        """The lease loop, until cancelled or the Lease is lost."""
        log.info(
            "leader election: %s asks for Lease %s/%s",
            self.settings.identity,
            self.settings.namespace,
            self.settings.name,
        )
        while not self.lost:
            await self.attempt()
            period = self.settings.renew_every if self.leading else self.settings.retry_every
            await asyncio.sleep(period)

    async def attempt(self) -> None:
        """One read and, when the Lease is ours to take or renew, one write."""
        sent = self.monotonic()
        try:
            # One period at most for the read and the write together: a leader that cannot
            # renew must find out in time to stop before its Lease expires for the others.
            await asyncio.wait_for(self._attempt(sent), timeout=self.settings.renew_every)
        except Conflict:
            self._failed("another operator wrote the Lease first", conflict=True)
        except TimeoutError:
            self._failed(f"no answer within {self.settings.renew_every:g}s", conflict=False)
        except FAILURES as error:
            self._failed(f"{type(error).__name__}: {error}", conflict=False)
        finally:
            self.last_attempt = self.monotonic()

    async def _attempt(self, sent: float) -> None:
        body = await self.store.read()
        record = None if body is None else parse_lease(body)
        self.holder = record.holder if record else None
        now = self.wall()
        step = decide(record, self.settings.identity, now)
        if step is Step.STANDBY:
            if self.leading:
                self._lose(f"Lease {self.settings.name} is held by {self.holder}")
            elif record and record.holder != self._standing_by:
                log.info("standing by: Lease %s is held by %s", self.name, record.holder)
                self._standing_by = record.holder
            return
        new = lease_body(self.settings, record, step, now)
        if step is Step.CREATE:
            await self.store.create(new)
        else:
            await self.store.replace(new)
        self.holder = self.settings.identity
        self.last_renewed = sent
        if not self.leading:
            self._take(record)

    def _take(self, record: LeaseRecord | None) -> None:
        before = f" from {record.holder}" if record and record.holder else ""
        log.info("leader election: %s took Lease %s%s", self.settings.identity, self.name, before)
        self.leading_since = self.monotonic()
        readiness.STANDBY.clear()
        metrics.LEADER.set(1)
        self._lead.set()

    def _failed(self, why: str, *, conflict: bool) -> None:
        if not self.leading:
            log.debug("leader election: attempt failed: %s", why)
            return
        since = self.monotonic() - (self.last_renewed or 0.0)
        late = self.last_renewed is None or since > self.settings.renew_deadline
        if conflict or late:
            self._lose(f"Lease {self.settings.name} not renewed: {why}")
        else:
            log.warning("leader election: renewal failed, retrying: %s", why)

    def _lose(self, why: str) -> None:
        log.error("leader election lost: %s; this operator stops acting", why)
        self.lost = True
        self._lead.clear()
        metrics.LEADER.set(0)
        if self.on_lost is not None:
            self.on_lost()

    @property
    def name(self) -> str:
        return f"{self.settings.namespace}/{self.settings.name}"

    async def release(self) -> None:
        """Give the Lease back (a clean stop), so that a standby takes it at once."""
        if not self.leading:
            return
        self._lead.clear()
        metrics.LEADER.set(0)
        with contextlib.suppress(*FAILURES, Conflict):
            body = await self.store.read()
            record = None if body is None else parse_lease(body)
            if record is not None and record.holder == self.settings.identity:
                await self.store.replace(released_body(self.settings, record, self.wall()))
                log.info("leader election: %s released Lease %s", self.settings.identity, self.name)

    def status(self) -> dict[str, Any]:
        return {
            "leaderElection": True,
            "leading": self.leading,
            "identity": self.settings.identity,
            "holder": self.holder,
            "lease": self.name,
        }


def elector(
    api: client.ApiClient, settings: LeaseSettings, on_lost: Callable[[], None] | None
) -> LeaseElector:
    """The elector on the real API, with calls bounded by the renew period."""
    store = KubeLeaseStore(api, settings.name, settings.namespace, settings.renew_every)
    return LeaseElector(store, settings, on_lost=on_lost)


# ---- wiring into the operator -----------------------------------------------------------------


def settings_from(memo: Mapping[str, Any], environ: Mapping[str, str]) -> LeaseSettings | None:
    """`rackscale run` puts its flags in the memo as `election` (None: off); `kopf run -m
    rackscale.controller.handlers` has the environment (RACKSCALE_LEADER_ELECTION and the rest)."""
    if "election" in memo:
        chosen: LeaseSettings | None = memo["election"]
        return chosen
    return LeaseSettings.from_env(environ) if election_enabled(environ) else None


def stop_acting(memo: MutableMapping[str, Any]) -> None:
    """The Lease is lost: cancel the reconcile loop now, then stop the operator (kopf's stop
    flag, which `rackscale run` puts in the memo as `stop`) so that Kubernetes restarts it."""
    task: asyncio.Task[None] | None = memo.get("task")
    if task is not None:
        task.cancel()
    memo["lost"] = True
    stop: Callable[[], None] | None = memo.get("stop")
    if stop is not None:
        stop()


async def when_leading(leadership: Leadership, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` (the reconcile loop) once this operator leads; a standby waits here while
    kopf keeps its indices filled, so its first pass after a takeover adopts what exists."""
    await leadership.wait_leading()
    await work()


def begin(
    memo: MutableMapping[str, Any],
    api: client.ApiClient,
    work: Callable[[], Awaitable[None]],
    environ: Mapping[str, str],
) -> Leadership:
    """Start the lease loop and, behind it, the reconcile loop; both tasks go in the memo
    (`lease_task`, `task`) and the Leadership as `leadership`."""
    chosen = settings_from(memo, environ)
    leadership: Leadership = (
        Alone() if chosen is None else elector(api, chosen, lambda: stop_acting(memo))
    )
    memo["leadership"] = leadership
    memo["lease_task"] = asyncio.create_task(leadership.run(), name="rackscale-lease")
    memo["task"] = asyncio.create_task(when_leading(leadership, work), name="rackscale-worker")
    return leadership


async def end(memo: MutableMapping[str, Any]) -> None:
    """A clean stop: the reconcile loop first, then the lease loop, then the Lease given back
    (after the loop: its last renewal cannot overwrite the release)."""
    for key in ("task", "lease_task"):
        task: asyncio.Task[None] | None = memo.get(key)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    leadership: Leadership | None = memo.get("leadership")
    if leadership is not None:
        await leadership.release()
