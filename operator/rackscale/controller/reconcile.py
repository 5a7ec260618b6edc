"""The executor: one pass applies what the planner decides, against the one cluster cache.

A pass takes the deployments the cache marks dirty (plus those with a timer due, and those
waiting for room once the room changed), hands the cache's view of them to the planner in one
call (`plan_pass`), has the cache assume every pod the pass books in one step, and applies the
`PassPlan`, deployment by deployment and in its order: Events, deletes, each booking's
ComputeDomain and pods, then Services, InferencePool and annotations, status and its Events;
last the RackPool statuses from that same snapshot. It decides nothing itself: every write is
tried, those the API server refuses are collected as `WriteFailure`s and handed to the planner,
whose status says so; a deployment with a refused write backs off (`backoff.Backoff`): passes
made for other deployments' or the cluster's changes skip it until it is due, its own changes
reconcile it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rackscale.api.pricing import Price, parse_price
from rackscale.controller import metrics
from rackscale.controller.backoff import Backoff
from rackscale.controller.cluster import ClusterCache, Key
from rackscale.controller.kube import Writer, now, refusal_message
from rackscale.planner import lifecycle, status
from rackscale.planner.plan import (
    DeploymentPass,
    Seen,
    View,
    finish_pass,
    plan_pass,
    report_pass,
)
from rackscale.planner.status import WriteFailure
from rackscale.planner.step import Booking, Delete, Event, Record, Refusal

log = logging.getLogger("rackscale.reconcile")

Failures = list[WriteFailure]


@dataclass(slots=True)
class Options:
    """How the operator behaves; `rackscale run` sets them from its flags."""

    unschedulable_timeout: float = 60.0  # seconds a pinned pod may stay unschedulable
    compute_domain_timeout: float = 300.0  # seconds a replica's ComputeDomain may stay not Ready
    resync: float = 300.0  # seconds between full reconciles when nothing is heard
    debounce: float = 0.05  # seconds to gather a burst of watch events into one reconcile
    ordinary_price: Price | None = None  # per GPU-hour on ordinary nodes (device-plugin mode)
    pool_grace: float = status.POOL_GRACE_SECONDS  # a pool matching no rack this long: Stalled
    pool_interval: float = 1.0  # pool statuses are rebuilt at most this often (seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Options:
        """Defaults, overridden by RACKSCALE_UNSCHEDULABLE_TIMEOUT,
        RACKSCALE_COMPUTE_DOMAIN_TIMEOUT, RACKSCALE_RESYNC and RACKSCALE_POOL_GRACE."""
        options = cls()
        if value := environ.get("RACKSCALE_POOL_GRACE"):
            options.pool_grace = float(value)
        if value := environ.get("RACKSCALE_UNSCHEDULABLE_TIMEOUT"):
            options.unschedulable_timeout = float(value)
        if value := environ.get("RACKSCALE_COMPUTE_DOMAIN_TIMEOUT"):
            options.compute_domain_timeout = float(value)
        if value := environ.get("RACKSCALE_RESYNC"):
            options.resync = float(value)
        if value := environ.get("RACKSCALE_DEVICE_PLUGIN_GPU_HOUR"):
            options.ordinary_price = parse_price(value)
        return options


POOL_RECHECK_SECONDS = 10.0  # a pool waiting for racks is looked at again this often


class Reconciler:
    """Everything the worker does on each pass; what lasts between passes lives here."""

    def __init__(self, cache: ClusterCache, writer: Writer, options: Options | None = None) -> None:
        self.cache = cache
        self.writer = writer
        self.options = options or Options()
        self.records: dict[str, Record] = {}  # by deployment uid
        self.costs: dict[tuple[str, str], tuple[str, str]] = {}  # deployment -> cost, currency
        self.timers: dict[Key, float] = {}  # deployment -> when the clock may change its step
        self.backoff = Backoff(cache.clock)  # deployments whose last pass had a write refused
        self._waiting: dict[Key, int] = {}  # deployment left waiting -> the version it saw
        self._pools_version = -1  # the snapshot version pool statuses were last built from
        self._pools_due: float | None = None
        self._pools_built: float | None = None  # when pool statuses were last built

    # ---- when ---------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """Seconds until a timer is due (None: none is set)."""
        dues = [*self.timers.values(), *([self._pools_due] if self._pools_due else [])]
        return max(min(dues) - self.cache.clock(), 0.0) if dues else None

    @property
    def pending(self) -> bool:
        """Whether a pass has something to do now."""
        due = self.next_due()
        return self.cache.pending or (due is not None and due <= 0)

    def _keys(self) -> list[Key]:
        """The deployments this pass reconciles: those whose own objects changed, and, unless
        they are backing off, every one when nodes or pools changed, those whose timer is due
        and those waiting for room once room changed."""
        cache = self.cache
        everything, own = cache.take_dirty()
        keys = set(cache.deployments) if everything else set()
        clock = cache.clock()
        keys |= {k for k, due in self.timers.items() if due <= clock}
        keys |= {k for k, v in self._waiting.items() if v != cache.version}
        held = {k for k in keys - own if self.backoff.holds(k)}
        for key in held:  # tried when due: its timer says when
            self.timers[key] = max(self.timers.get(key, 0.0), self.backoff.due(key) or 0.0)
        return sorted((keys - held) | own)

    # ---- one pass -----------------------------------------------------------------------------

    async def reconcile_all(self) -> None:
        """One pass: the planner's plan for what changed, applied."""
        self.cache.expire()
        keys = self._keys()
        for key in keys:
            self.timers.pop(key, None)
            self._waiting.pop(key, None)
        seen = self.cache.version  # what placement sees: later changes wake the waiting ones
        plan = plan_pass(self._view(keys), self.records, self._clock())
        self.cache.assume(plan.pods())  # what the pass books counts from now, in one step
        if plan.placement_seconds is not None:
            metrics.PLACEMENT_SECONDS.observe(plan.placement_seconds)
        passes = {p.key: p for p in plan.deployments}
        applied = await _each(passes, lambda k: self._apply(passes[k], seen))
        if any(k not in self.cache.deployments for k in keys):
            self._forget_gone()
        await self.refresh_pools()
        metrics.COSTS.update(self.costs)
        metrics.count_unplaced(c for r in self.records.values() for c in r.codes.values())
        for key, result in sorted(applied.items()):
            if isinstance(result, BaseException):  # a fault of the operator's, not a refusal
                metrics.RECONCILE_ERRORS.labels(scope="deployment").inc()
                log.error("reconciling %s/%s failed: %s", *key, result, exc_info=result)
            if isinstance(result, BaseException) or result:
                due = self.backoff.failed(key)
                self.timers[key] = min(self.timers.get(key, due), due)
                log.info(
                    "%s/%s: %d failed passes in a row; tried again in %.3fs",
                    *key,
                    self.backoff.failures(key),
                    due - self.cache.clock(),
                )
            else:
                self.backoff.succeeded(key)
        metrics.BACKING_OFF.set(len(self.backoff))

    def _view(self, keys: Iterable[Key]) -> View:
        """What the planner reads of the cache this pass."""
        cache = self.cache
        seen = [self._seen(k, b) for k in keys if (b := cache.deployments.get(k)) is not None]
        return View(
            cache.snapshot(),
            seen,
            cache.readiness,
            inference_pools=cache.inference_pools_served,
            ordinary_price=self.options.ordinary_price,
        )

    def _forget_gone(self) -> None:
        live = {str((b.get("metadata") or {}).get("uid")) for b in self.cache.deployments.values()}
        for uid in [u for u in self.records if u not in live]:
            del self.records[uid]
        for key in [k for k in self.costs if k not in self.cache.deployments]:
            del self.costs[key]
        self.backoff.keep(self.cache.deployments)

    async def _apply(self, plan: DeploymentPass, seen: int) -> Failures:
        """One deployment's part of the pass, in the plan's order; every write is tried, and
        those refused are returned."""
        if plan.refusal is not None:
            return await self._refuse(plan.body, plan.refusal)
        assert plan.record is not None
        self.records[plan.uid] = plan.record
        if plan.due is not None:
            self.timers[plan.key] = self.cache.clock() + plan.due
        for cause in plan.restarts:
            metrics.REPLICA_RESTARTS.labels(cause=cause).inc()
        await self._post(plan.body, plan.events)
        failures: Failures = []
        namespace = plan.key[0]
        for delete in plan.deletes:
            failures += await self._delete(plan, delete)
        for name in plan.delete_domains:
            log.info("%s/%s: deleting ComputeDomain %s, which no pod uses", *plan.key, name)
            write = self.writer.delete_compute_domain(namespace, name)
            failures += await _tried(write, "delete", "ComputeDomain", (namespace, name))
        for booking in plan.bookings:
            metrics.PLACEMENT_DECISIONS.labels(result=booking.result).inc()
            failures += await self._create(plan, booking)
        return failures + await self._finish(plan, seen, failures)

    def _seen(self, key: Key, body: Mapping[str, Any]) -> Seen:
        """One deployment as the cache shows it now."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        cache = self.cache
        return Seen(
            body,
            cache.pods_of(key),
            cache.domains_of(key, uid),
            cache.group_domains_of(key, uid),
            cache.inference_pool_of(key),
        )

    async def _refuse(self, body: Mapping[str, Any], refusal: Refusal) -> Failures:
        meta = body.get("metadata") or {}
        await self._post(body, [refusal.event] if refusal.event else [])
        failures: Failures = []
        if refusal.status is not None:
            key = (str(meta.get("namespace")), str(meta.get("name")))
            failures += await self._write_status(body, key, refusal.status)
        return failures

    async def _delete(self, plan: DeploymentPass, delete: Delete) -> Failures:
        namespace = plan.key[0]
        log.info("%s/%s: deleting replica %d (%s)", *plan.key, delete.replica, delete.cause)
        writes = [
            self.writer.delete_pod(namespace, p.name, force=delete.force) for p in delete.pods
        ]
        results = await asyncio.gather(*writes, return_exceptions=True)
        failures = []
        for pod, result in zip(delete.pods, results, strict=True):
            if isinstance(result, Exception):
                failures.append(_failure("delete", "Pod", pod.key, result))
            else:
                self.cache.assume_deleted(pod)
        if delete.domain and not failures:  # IMEX state does not outlive a member
            write = self.writer.delete_compute_domain(namespace, delete.domain)
            failures += await _tried(write, "delete", "ComputeDomain", (namespace, delete.domain))
        return failures

    async def _create(self, plan: DeploymentPass, booking: Booking) -> Failures:
        """A booking's ComputeDomain, then its pods (assumed by the cache since the pass was
        planned); on any failure nothing is left half, and the replica is placed again on a
        later pass."""
        if not booking.replicas:
            await self._post(plan.body, booking.events)
            return []
        namespace = plan.key[0]
        failures: Failures = []
        if booking.domain is not None:
            name = booking.domain["metadata"]["name"]
            try:
                created = await self.writer.create_compute_domain(booking.domain)
            except Exception as error:
                created, failures = (
                    False,
                    [_failure("create", "ComputeDomain", (namespace, name), error)],
                )
            if not created:
                if not failures:
                    log.info(
                        "%s/%s: replica %d waits for its old ComputeDomain to go",
                        *plan.key,
                        booking.replica,
                    )
                self._forget(booking.pods())
                return failures
        failures += await self._create_pods(plan, booking.pods())
        if failures:
            if booking.domain is not None:
                name = booking.domain["metadata"]["name"]
                write = self.writer.delete_compute_domain(namespace, name)
                failures += await _tried(write, "delete", "ComputeDomain", (namespace, name))
            return failures
        log.info("%s/%s: placed replica %d", *plan.key, booking.replica)
        await self._post(plan.body, booking.events)
        return []

    def _forget(self, pods: Iterable[Mapping[str, Any]]) -> None:
        for pod in pods:
            meta = pod["metadata"]
            self.cache.forget((meta["namespace"], meta["name"]))

    async def _create_pods(self, plan: DeploymentPass, pods: list[dict[str, Any]]) -> Failures:
        """Create a replica's pods; on any failure remove those created, none counted."""
        results = await asyncio.gather(
            *(self.writer.create_pod(p) for p in pods), return_exceptions=True
        )
        failures = []
        for pod, result in zip(pods, results, strict=True):
            meta = pod["metadata"]
            key = (meta["namespace"], meta["name"])
            if isinstance(result, Exception):
                failures.append(_failure("create", "Pod", key, result))
            else:
                self.cache.created(key, str(result))
        if not failures:
            return []
        self._forget(pods)
        for pod, result in zip(pods, results, strict=True):
            if not isinstance(result, BaseException):
                name = pod["metadata"]["name"]
                write = self.writer.delete_pod(plan.key[0], name)
                failures += await _tried(write, "delete", "Pod", (plan.key[0], name))
        return failures

    async def _finish(self, plan: DeploymentPass, seen: int, failures: Failures) -> Failures:
        """Services, InferencePool and annotations, then the status naming what was refused,
        and its Events, from the pods as they are after this pass."""
        key, record = plan.key, plan.record
        assert record is not None
        namespace = key[0]
        view = View(
            self.cache.snapshot(),
            [],
            self.cache.readiness,
            inference_pools=self.cache.inference_pools_served,
            ordinary_price=self.options.ordinary_price,
        )
        clock = self._clock()
        deployment = self._seen(key, plan.body)
        done = finish_pass(plan, deployment, view, clock)
        refused = list(failures)
        for service in done.services:
            name = (namespace, service["metadata"]["name"])
            refused += await _tried(self.writer.apply_service(service), "apply", "Service", name)
        for pod, values in done.annotate:
            write = self.writer.annotate_pod(namespace, pod, values)
            refused += await _tried(write, "annotate", "Pod", (namespace, pod))
        if done.inference_pool is not None:
            name = (namespace, done.inference_pool["metadata"]["name"])
            write = self.writer.apply_inference_pool(done.inference_pool)
            failed = await _tried(write, "apply", "InferencePool", name)
            if not failed:
                self.cache.wrote_inference_pool(name, done.inference_pool)
            refused += failed
        if done.delete_inference_pool is not None:
            name = (namespace, done.delete_inference_pool)
            write = self.writer.delete_inference_pool(*name)
            failed = await _tried(write, "delete", "InferencePool", name)
            if not failed:
                self.cache.wrote_inference_pool(name, None)
            refused += failed
        said = report_pass(plan, deployment, view, clock, done=done, refused=refused)
        more = refused[len(failures) :]
        if said.status is not None:
            more += await self._write_status(plan.body, key, said.status)
        await self._post(plan.body, said.events)
        if said.cost is None:
            self.costs.pop(key, None)
        else:
            self.costs[key] = said.cost
        if plan.waiting:
            self._waiting[key] = seen
        return more

    async def _write_status(
        self, body: Mapping[str, Any], key: Key, new: dict[str, Any]
    ) -> Failures:
        """The status; refused, it is logged, counted, said in an Event if the server takes
        one, and the deployment backs off."""
        failures = await _tried(
            self.writer.patch_deployment_status(*key, new), "patch", "status", key
        )
        if failures:
            events = [Event("Warning", "WriteRefused", status.refused_message(failures))]
            await self._post(body, events)
        return failures

    async def _post(self, obj: Mapping[str, Any], events: Iterable[Event]) -> None:
        """Events are best effort, as kube's own recorders treat them: a refused one (the
        server's event rate limit, a quota) is counted and logged, never the deployment's
        failure: the status says what matters, and it is not stalled for want of an Event."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        for event in events:
            write = self.writer.event(dict(obj), event.kind, event.reason, event.message)
            await _tried(write, "post", "Event", key, event.reason)

    def _clock(self) -> lifecycle.Clock:
        return lifecycle.Clock(
            datetime.now(UTC),
            self.options.unschedulable_timeout,
            self.options.compute_domain_timeout,
        )

    # ---- pools --------------------------------------------------------------------------------

    async def refresh_pools(self, *, force: bool = False) -> None:
        """Each RackPool's status from the pass's snapshot, written when it differs from what
        the API server holds; rebuilt only when the snapshot moved (or a pool waits for racks),
        or when `force`d."""
        clock = self.cache.clock()
        due = force or (self._pools_due is not None and self._pools_due <= clock)
        if self.cache.version == self._pools_version and not due:
            return
        # At 1,000 racks a rebuild costs tens of ms: a burst of changes gets one, after it.
        built_at, interval = self._pools_built, self.options.pool_interval
        if built_at is not None and clock - built_at < interval and not due:
            self._pools_due = built_at + interval
            return
        snapshot = self.cache.snapshot()
        self._pools_version, self._pools_due = self.cache.version, None
        self._pools_built = clock
        stamp, built = now(), {}
        for name, pool in snapshot.pools.items():
            current = self.cache.pool_status(name)
            built[name] = status.pool_status(
                pool,
                snapshot.conflicts,
                current.get("conditions") or [],
                stamp,
                self.options.pool_grace,
                domains_served=self.cache.domains_served,
            )
            if not pool.racks:
                self._pools_due = clock + POOL_RECHECK_SECONDS
            new = status.dump(built[name])
            if status.changed(new, current):
                await self.writer.patch_pool_status(name, new)
        metrics.POOLS.update(built)


def _failure(verb: str, kind: str, key: Key, error: BaseException, what: str = "") -> WriteFailure:
    """A refused write, counted and logged."""
    metrics.WRITE_FAILURES.labels(kind=kind).inc()
    name = "/".join(key) + (f" ({what})" if what else "")
    failure = WriteFailure(verb, kind, name, refusal_message(error))
    log.warning("%s refused: %s", failure.what, failure.message)
    return failure


async def _tried(
    write: Awaitable[Any], verb: str, kind: str, key: Key, what: str = ""
) -> list[WriteFailure]:
    """Make one write; refused, it is returned as a failure instead of raised."""
    try:
        await write
    except Exception as error:
        return [_failure(verb, kind, key, error, what)]
    return []


# Deployments whose writes are in flight at once. The client's calls run on a few threads, so
# more would not write faster; they would only hold more rendered pods at once (a first pass
# over 500 deployments rendered every pod of the pass together and doubled the peak memory).
APPLYING_AT_ONCE = 16


async def _each(
    keys: Iterable[Key], work: Callable[[Key], Awaitable[Any]], limit: int = APPLYING_AT_ONCE
) -> dict[Key, Any]:
    """Run `work(key)` for every key, at most `limit` at a time; results and exceptions by
    key."""
    keys = list(keys)
    room = asyncio.Semaphore(limit)

    async def bounded(key: Key) -> Any:
        async with room:
            return await work(key)

    results = await asyncio.gather(*(bounded(k) for k in keys), return_exceptions=True)
    return dict(zip(keys, results, strict=True))
