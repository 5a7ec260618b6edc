"""The executor: one pass applies what the planner decides, against the one cluster cache.

A pass takes the deployments the cache marks dirty (plus those with a timer due, and those
waiting for room once the room changed), hands the cache's view of them to the planner in one
call (`plan_pass`), and applies the `PassPlan` it returns, deployment by deployment and in its
order: Events, deletes, each booking's ComputeDomain and pods, then Services, status and their
Events; last the RackPool statuses from that same snapshot. It decides nothing itself: a failed
write is undone and retried next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rackscale.api.pricing import Price, parse_price
from rackscale.controller import metrics
from rackscale.controller.cluster import ClusterCache, Key
from rackscale.controller.kube import Writer, now
from rackscale.planner import lifecycle, status
from rackscale.planner.plan import DeploymentPass, Seen, View, finish_pass, plan_pass
from rackscale.planner.step import Booking, Delete, Event, Record, Refusal

log = logging.getLogger("rackscale.reconcile")


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
        self._waiting: dict[Key, int] = {}  # deployment left waiting -> the version it saw
        self._pools_version = -1  # the snapshot version pool statuses were last built from
        self._pools_due: float | None = None
        self._pools_built: float | None = None  # when pool statuses were last built

    # ---- when ---------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """Seconds until a timer is due (None: none is set)."""
        dues = [*self.timers.values(), *([self._pools_due] if self._pools_due else [])]
        return max(min(dues) - time.monotonic(), 0.0) if dues else None

    @property
    def pending(self) -> bool:
        """Whether a pass has something to do now."""
        due = self.next_due()
        return self.cache.pending or (due is not None and due <= 0)

    def _keys(self) -> list[Key]:
        """The deployments this pass reconciles."""
        cache = self.cache
        dirty = cache.take_dirty()
        keys = set(cache.deployments) if dirty is None else set(dirty)
        clock = time.monotonic()
        keys |= {k for k, due in self.timers.items() if due <= clock}
        # Room may have changed: replicas waiting for it are tried again.
        keys |= {k for k, v in self._waiting.items() if v != cache.version}
        return sorted(keys)

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
        if plan.placement_seconds is not None:
            metrics.PLACEMENT_SECONDS.observe(plan.placement_seconds)
        passes = {p.key: p for p in plan.deployments}
        applied = await _each(passes, lambda k: self._apply(passes[k], seen))
        errors = {k: r for k, r in applied.items() if isinstance(r, BaseException)}
        if any(k not in self.cache.deployments for k in keys):
            self._forget_gone()
        await self.refresh_pools()
        metrics.COSTS.update(self.costs)
        metrics.count_unplaced(c for r in self.records.values() for c in r.codes.values())
        for key, error in sorted(errors.items()):
            metrics.RECONCILE_ERRORS.labels(scope="deployment").inc()
            self.timers[key] = time.monotonic() + 1.0  # tried again soon
            log.error("reconciling %s/%s failed: %s", *key, error, exc_info=error)

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

    async def _apply(self, plan: DeploymentPass, seen: int) -> None:
        """One deployment's part of the pass, in the plan's order."""
        if plan.refusal is not None:
            await self._refuse(plan.body, plan.refusal)
            return
        assert plan.record is not None
        self.records[plan.uid] = plan.record
        if plan.due is not None:
            self.timers[plan.key] = time.monotonic() + plan.due
        for cause in plan.restarts:
            metrics.REPLICA_RESTARTS.labels(cause=cause).inc()
        await self._post(plan.body, plan.events)
        namespace = plan.key[0]
        for delete in plan.deletes:
            await self._delete(plan, delete)
        for name in plan.delete_domains:
            log.info("%s/%s: deleting ComputeDomain %s, which no pod uses", *plan.key, name)
            await self.writer.delete_compute_domain(namespace, name)
        failed: BaseException | None = None
        for booking in plan.bookings:
            metrics.PLACEMENT_DECISIONS.labels(result=booking.result).inc()
            try:
                await self._create(plan, booking)
            except Exception as error:  # one failure spares the rest
                failed = failed or error
        if failed is not None:
            raise failed
        await self._finish(plan, seen)

    def _seen(self, key: Key, body: Mapping[str, Any]) -> Seen:
        """One deployment as the cache shows it now."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        cache = self.cache
        return Seen(
            body, cache.pods_of(key), cache.domains_of(key, uid), cache.group_domains_of(key, uid)
        )

    async def _refuse(self, body: Mapping[str, Any], refusal: Refusal) -> None:
        meta = body.get("metadata") or {}
        if refusal.event is not None:
            await self._post(body, [refusal.event])
        if refusal.status is not None:
            await self.writer.patch_deployment_status(
                meta["namespace"], meta["name"], refusal.status
            )

    async def _delete(self, plan: DeploymentPass, delete: Delete) -> None:
        namespace = plan.key[0]
        log.info("%s/%s: deleting replica %d (%s)", *plan.key, delete.replica, delete.cause)
        await asyncio.gather(
            *(self.writer.delete_pod(namespace, p.name, force=delete.force) for p in delete.pods)
        )
        for pod in delete.pods:
            self.cache.assume_deleted(pod)
        if delete.domain:  # IMEX state does not outlive a member: the replica gets a fresh one
            await self.writer.delete_compute_domain(namespace, delete.domain)

    async def _create(self, plan: DeploymentPass, booking: Booking) -> None:
        """A booking's ComputeDomain, then its pods; on any failure nothing is left half."""
        if not booking.pods:
            await self._post(plan.body, booking.events)
            return
        if booking.domain is not None and not await self._create_domain(plan, booking):
            return
        namespace = plan.key[0]
        if not await self._create_pods(plan, booking.pods):
            if booking.domain is not None:
                await self.writer.delete_compute_domain(
                    namespace, booking.domain["metadata"]["name"]
                )
            message = (
                f"replica {booking.replica}: creating its pods failed; it will be placed again"
            )
            await self._post(plan.body, [Event("Warning", "FailedCreate", message)])
            return
        await self._post(plan.body, booking.events)
        log.info("%s/%s: placed replica %d", *plan.key, booking.replica)

    async def _create_domain(self, plan: DeploymentPass, booking: Booking) -> bool:
        """The replica's fresh ComputeDomain, before its pods; False: the last one of that name
        is still being deleted, so the replica is placed again on a later pass."""
        body = booking.domain
        assert body is not None
        try:
            if await self.writer.create_compute_domain(body):
                return True
        except Exception as error:
            log.warning("%s/%s: creating ComputeDomain failed: %s", *plan.key, error)
            message = (
                f"replica {booking.replica}: creating its ComputeDomain failed ({error}); "
                "it will be placed again"
            )
            await self._post(plan.body, [Event("Warning", "FailedCreate", message)])
            return False
        log.info(
            "%s/%s: replica %d waits for its old ComputeDomain to go", *plan.key, booking.replica
        )
        return False

    async def _create_pods(self, plan: DeploymentPass, pods: list[dict[str, Any]]) -> bool:
        """Create a replica's pods, counted as created from now on; on any failure remove
        those created."""
        for pod in pods:
            self.cache.assume_created(pod)
        results = await asyncio.gather(
            *(self.writer.create_pod(p) for p in pods), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        for pod, result in zip(pods, results, strict=True):
            meta = pod["metadata"]
            if failed or isinstance(result, BaseException):
                self.cache.forget((meta["namespace"], meta["name"]))
            else:
                self.cache.assume_created(pod, str(result))
        if not failed:
            return True
        log.warning("%s/%s: creating pods failed: %s", *plan.key, failed[0])
        for pod, result in zip(pods, results, strict=True):
            if not isinstance(result, BaseException):
                await self.writer.delete_pod(plan.key[0], pod["metadata"]["name"])
        return False

    async def _finish(self, plan: DeploymentPass, seen: int) -> None:
        """Services, status and its Events, from the pods as they are after this pass."""
        key, record = plan.key, plan.record
        assert record is not None
        view = View(
            self.cache.snapshot(),
            [],
            self.cache.readiness,
            inference_pools=self.cache.inference_pools_served,
            ordinary_price=self.options.ordinary_price,
        )
        done = finish_pass(plan, self._seen(key, plan.body), view, self._clock())
        for service in done.services:
            await self.writer.apply_service(service)
        for pod, values in done.annotate:
            await self.writer.annotate_pod(key[0], pod, values)
        try:
            if done.inference_pool is not None:
                await self.writer.apply_inference_pool(done.inference_pool)
            if done.delete_inference_pool is not None:
                await self.writer.delete_inference_pool(key[0], done.delete_inference_pool)
        except Exception:
            record.inference_pool = None  # not known: applied (or deleted) again next pass
            raise
        if done.status is not None:
            await self.writer.patch_deployment_status(*key, done.status)
        await self._post(plan.body, done.events)
        if done.cost is None:
            self.costs.pop(key, None)
        else:
            self.costs[key] = done.cost
        if plan.waiting:
            self._waiting[key] = seen

    async def _post(self, obj: Mapping[str, Any], events: Iterable[Event]) -> None:
        for event in events:
            await self.writer.event(dict(obj), event.kind, event.reason, event.message)

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
        clock = time.monotonic()
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


async def _each(keys: Iterable[Key], work: Callable[[Key], Awaitable[Any]]) -> dict[Key, Any]:
    """Run `work(key)` for every key at once; results and exceptions by key."""
    keys = list(keys)
    calls: list[Awaitable[Any]] = [work(k) for k in keys]
    results = await asyncio.gather(*calls, return_exceptions=True)
    return dict(zip(keys, results, strict=True))
