"""The executor: one pass applies what the planner decides, against the one cluster cache.

A pass takes the deployments the cache marks dirty (plus those with a timer due, and those
waiting for room once the room changed), asks the planner for each one's step, deletes what it
says, places every waiting replica of the pass as one batch in the cache's snapshot, creates
what each decision books, then writes Services and statuses, and last the RackPool statuses from
that same snapshot. It decides nothing itself: a failed write is undone and retried next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rackscale.api import InferenceDeployment
from rackscale.api.pricing import Price, parse_price
from rackscale.controller import metrics
from rackscale.controller.cluster import ClusterCache, Key
from rackscale.controller.kube import Writer, now
from rackscale.placement import Decision, Waiting, place_pass
from rackscale.placement.groups import (
    GroupDecision,
    WaitingGroup,
    grow_group,
    place_groups,
    restart_role_replica,
)
from rackscale.planner import lifecycle, status
from rackscale.planner import step as planner
from rackscale.planner.step import Booking, Event, Record, Step
from rackscale.topology import Snapshot

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
        """One pass: heal what changed, place what waits in one batch, write statuses."""
        self.cache.expire()
        keys = self._keys()
        for key in keys:
            self.timers.pop(key, None)
            self._waiting.pop(key, None)
        steps: dict[Key, Step] = {}
        errors: dict[Key, BaseException] = {}
        healed = await _each(keys, self._heal)
        for key, result in healed.items():
            if isinstance(result, BaseException):
                errors[key] = result
            elif result is not None:
                steps[key] = result
        seen = self.cache.version  # what placement sees: later changes wake the waiting ones
        errors |= await self._place(steps)
        live = {k: s for k, s in steps.items() if k not in errors}
        finished = await _each(live, lambda k: self._finish(live[k], seen))
        errors |= {k: r for k, r in finished.items() if isinstance(r, BaseException)}
        if any(k not in self.cache.deployments for k in keys):
            self._forget_gone()
        await self.refresh_pools()
        metrics.COSTS.update(self.costs)
        metrics.count_unplaced(c for r in self.records.values() for c in r.codes.values())
        for key, error in sorted(errors.items()):
            metrics.RECONCILE_ERRORS.labels(scope="deployment").inc()
            self.timers[key] = time.monotonic() + 1.0  # tried again soon
            log.error("reconciling %s/%s failed: %s", *key, error, exc_info=error)

    def _forget_gone(self) -> None:
        live = {str((b.get("metadata") or {}).get("uid")) for b in self.cache.deployments.values()}
        for uid in [u for u in self.records if u not in live]:
            del self.records[uid]
        for key in [k for k in self.costs if k not in self.cache.deployments]:
            del self.costs[key]

    async def _heal(self, key: Key) -> Step | None:
        """The planner's step for one deployment, its deletes applied."""
        body = self.cache.deployments.get(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None  # the garbage collector removes what it owned
        deployment = planner.refusal(body, now())
        if isinstance(deployment, planner.Refusal):
            await self._refuse(body, deployment)
            return None
        uid = str((body.get("metadata") or {}).get("uid") or "")
        step = planner.heal(
            body,
            deployment,
            self.records.setdefault(uid, Record()),
            pods=self.cache.pods_of(key),
            domains=self.cache.domains_of(key, uid),
            nodes=self.cache.readiness,
            clock=self._clock(),
            group_domains=self.cache.group_domains_of(key, uid),
        )
        if step.due is not None:
            self.timers[key] = time.monotonic() + step.due
        for cause in step.restarts:
            metrics.REPLICA_RESTARTS.labels(cause=cause).inc()
        await self._post(step.body, step.events)
        step.events = []
        for delete in step.deletes:
            await self._delete(deployment, delete)
        for name in step.delete_domains:
            log.info("%s: deleting ComputeDomain %s, which no pod uses", deployment.key, name)
            await self.writer.delete_compute_domain(deployment.namespace, name)
        return step

    async def _refuse(self, body: Mapping[str, Any], refusal: planner.Refusal) -> None:
        meta = body.get("metadata") or {}
        if refusal.event is not None:
            await self._post(body, [refusal.event])
        if refusal.status is not None:
            await self.writer.patch_deployment_status(
                meta["namespace"], meta["name"], refusal.status
            )

    async def _delete(self, deployment: InferenceDeployment, delete: planner.Delete) -> None:
        log.info("%s: deleting replica %d (%s)", deployment.key, delete.replica, delete.cause)
        await asyncio.gather(
            *(
                self.writer.delete_pod(deployment.namespace, p.name, force=delete.force)
                for p in delete.pods
            )
        )
        for pod in delete.pods:
            self.cache.assume_deleted(pod)
        if delete.domain:  # IMEX state does not outlive a member: the replica gets a fresh one
            await self.writer.delete_compute_domain(deployment.namespace, delete.domain)

    async def _place(self, steps: Mapping[Key, Step]) -> dict[Key, BaseException]:
        """Place everything waiting in the pass on one snapshot: first role replicas going back
        beside their serving groups (only their group's racks will do), then whole serving
        groups (`place_groups`), then every waiting replica in one batch (`place_pass`: largest
        first, the oldest deployment first among equals), as `plan --together` orders them;
        then create what each decision books."""
        ordered = sorted(steps.values(), key=lambda s: s.age)
        waiting = planner.batch(ordered)
        groups = [g for s in ordered for g in s.groups]
        beside = [(s, b) for s in ordered for b in s.beside]
        if not groups and not beside and all(w.terminating for w in waiting):
            return {}  # nothing to place: keeping room matters only against placements
        snapshot = self.cache.snapshot()
        with metrics.PLACEMENT_SECONDS.time():
            returning = [
                (s, restart_role_replica(snapshot, s.deployment, b.replica, b.racks))
                for s, b in beside
                if not b.added
            ]
            returning += [
                (s, decision)
                for s, group, racks in planner.growing(ordered)
                for decision in grow_group(snapshot, s.deployment, group, racks)
            ]
            grouped = place_groups(snapshot, groups)
            decisions = place_pass(snapshot, waiting) if waiting else []
        bookings = [
            ((s.deployment.namespace, s.deployment.name), planner.book_beside(s, d, snapshot))
            for s, d in returning
        ]
        bookings += self._book_groups(steps, grouped, snapshot)
        bookings += self._book(steps, decisions, snapshot)
        for _, booking in reversed(bookings):
            metrics.PLACEMENT_DECISIONS.labels(result=booking.result).inc()
            booking.undo()  # the reservations give way to the pods they become
        errors: dict[Key, BaseException] = {}
        for key, booking in bookings:
            try:
                await self._create(steps[key], booking)
            except Exception as error:  # one failure spares the rest
                errors[key] = error
        return errors

    def _book(
        self,
        steps: Mapping[Key, Step],
        decisions: Iterable[tuple[Waiting, Decision]],
        snapshot: Snapshot,
    ) -> list[tuple[Key, Booking]]:
        """The planner's bookings of the batch's decisions (its reservations are given back in
        `_place`: each pod is counted in the cache as created when it is written, so the
        snapshot holds only what the cache holds)."""
        out = []
        for want, decision in decisions:
            key = (want.deployment.namespace, want.deployment.name)
            if want.terminating:
                continue
            out.append((key, planner.book(steps[key], decision, snapshot)))
        return out

    def _book_groups(
        self,
        steps: Mapping[Key, Step],
        decisions: Iterable[tuple[WaitingGroup, GroupDecision]],
        snapshot: Snapshot,
    ) -> list[tuple[Key, Booking]]:
        out = []
        for want, decision in decisions:
            key = (want.deployment.namespace, want.deployment.name)
            out += [(key, b) for b in planner.book_group(steps[key], decision, snapshot)]
        return out

    async def _create(self, step: Step, booking: Booking) -> None:
        """A booking's deletes (a serving group to place again whole), its ComputeDomain, then
        its pods; on any failure nothing is left half."""
        deployment = step.deployment
        for cause in booking.restarts:
            metrics.REPLICA_RESTARTS.labels(cause=cause).inc()
        for delete in booking.deletes:
            await self._delete(deployment, delete)
        pods = booking.pods()
        if not pods:
            await self._post(step.body, booking.events)
            return
        if booking.domain is not None and not await self._create_domain(step, booking):
            return
        if not await self._create_pods(deployment, pods):
            if booking.domain is not None:
                await self.writer.delete_compute_domain(
                    deployment.namespace, booking.domain["metadata"]["name"]
                )
            message = (
                f"replica {booking.replica}: creating its pods failed; it will be placed again"
            )
            await self._post(step.body, [Event("Warning", "FailedCreate", message)])
            return
        await self._post(step.body, booking.events)
        log.info("%s: placed replica %d", deployment.key, booking.replica)

    async def _create_domain(self, step: Step, booking: Booking) -> bool:
        """The replica's fresh ComputeDomain, before its pods; False: the last one of that name
        is still being deleted, so the replica is placed again on a later pass."""
        body = booking.domain
        assert body is not None
        try:
            if await self.writer.create_compute_domain(body):
                return True
        except Exception as error:
            log.warning("%s: creating ComputeDomain failed: %s", step.key, error)
            message = (
                f"replica {booking.replica}: creating its ComputeDomain failed ({error}); "
                "it will be placed again"
            )
            await self._post(body, [Event("Warning", "FailedCreate", message)])
            return False
        log.info("%s: replica %d waits for its old ComputeDomain to go", step.key, booking.replica)
        return False

    async def _create_pods(
        self, deployment: InferenceDeployment, pods: list[dict[str, Any]]
    ) -> bool:
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
        log.warning("%s: creating pods failed: %s", deployment.key, failed[0])
        for pod, result in zip(pods, results, strict=True):
            if not isinstance(result, BaseException):
                await self.writer.delete_pod(deployment.namespace, pod["metadata"]["name"])
        return False

    async def _finish(self, step: Step, seen: int) -> None:
        """Services, status and its Events, from the pods as they are after this pass."""
        key = (step.deployment.namespace, step.deployment.name)
        states = planner.classify(
            step,
            self.cache.pods_of(key),
            self.cache.domains_of(key, step.uid),
            self.cache.readiness,
            self._clock(),
            self.cache.group_domains_of(key, step.uid),
        )
        context = planner.Context(
            self.cache.snapshot(),
            now(),
            self.options.ordinary_price,
            inference_pools=self.cache.inference_pools_served,
        )
        done = planner.finish(step, states, context)
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
            step.record.inference_pool = None  # not known: applied (or deleted) again next pass
            raise
        if done.status is not None:
            await self.writer.patch_deployment_status(*key, done.status)
        await self._post(step.body, done.events)
        if done.cost is None:
            self.costs.pop(key, None)
        else:
            self.costs[key] = done.cost
        if step.record.progress.unplaced:
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
