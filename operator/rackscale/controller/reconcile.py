"""Reconciling: RackPool statuses, and each InferenceDeployment's pods, services and status.

A pass reads the cluster view and asks `lifecycle` what each replica needs. Replicas waiting for
placement, across all deployments, go to the engine as one batch with one ledger, so no two book
the same GPUs and the largest are placed first; each decision is written as pods, and its
reservation undone when a write fails. The worker runs one pass at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from rackscale.api import InferenceDeployment, format_errors
from rackscale.api.pricing import Price, parse_price
from rackscale.api.rackpool import DEFAULT_GPU_RESOURCE
from rackscale.controller import lifecycle, metrics, status
from rackscale.controller.cluster import ClusterView
from rackscale.controller.kube import Writer, now
from rackscale.placement import Decision, Waiting, place_pass
from rackscale.render import (
    compute_domain_name,
    pool_facts,
    render_compute_domain,
    render_replica,
    render_services,
    template_hash,
)
from rackscale.topology import Snapshot, build_snapshot
from rackscale.topology.snapshot import gpu_memory

log = logging.getLogger("rackscale.reconcile")


@dataclass(slots=True)
class Options:
    """How the operator behaves; `rackscale run` sets them from its flags."""

    unschedulable_timeout: float = 60.0  # seconds a pinned pod may stay unschedulable
    compute_domain_timeout: float = 300.0  # seconds a replica's ComputeDomain may stay not Ready
    resync: float = 10.0  # seconds between reconciles when nothing is heard
    debounce: float = 0.2  # seconds to gather a burst of watch events into one reconcile
    ordinary_price: Price | None = None  # per GPU-hour on ordinary nodes (device-plugin mode)
    pool_grace: float = status.POOL_GRACE_SECONDS  # a pool matching no rack this long: Stalled

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


@dataclass(slots=True)
class _Memory:
    """What the operator remembers of one deployment between reconciles (lost on restart)."""

    unplaced: dict[int, str] = field(default_factory=dict)
    fallbacks: dict[int, str] = field(default_factory=dict)
    prefer: dict[int, tuple[str, ...]] = field(default_factory=dict)  # replica -> racks to keep
    warned: dict[int, str] = field(default_factory=dict)  # replica -> last reason posted
    services: bool = False
    domains_missing: bool = False  # the Event saying multi-node NVLink is not set up was posted


@dataclass(slots=True)
class _Step:
    """One deployment in one pass: what healing found, carried to placement and status."""

    obj: dict[str, Any]
    deployment: InferenceDeployment
    uid: str
    digest: str
    memory: _Memory
    age: tuple[str, str]  # (creationTimestamp, namespace/name): the oldest places first
    states: list[lifecycle.ReplicaState] = field(default_factory=list)
    actions: lifecycle.Actions = field(default_factory=lifecycle.Actions)
    returning: list[int] = field(default_factory=list)  # replicas whose old pods are going
    progress: status.Progress = field(default_factory=status.Progress)


class Reconciler:
    """Everything the worker does on each pass; state shared between passes lives here."""

    def __init__(self, view: ClusterView, writer: Writer, options: Options | None = None) -> None:
        self.view = view
        self.writer = writer
        self.options = options or Options()
        self.memory: dict[str, _Memory] = {}
        self.deleting: set[str] = set()  # uids of pods deleted and not yet shown as deleted
        self.costs: dict[tuple[str, str], tuple[str, str]] = {}  # deployment -> cost, currency
        self._nodes: dict[str, dict[str, Any]] | None = None  # by name, for one pass

    def _pods(
        self, deployment: InferenceDeployment, uid: str, *, fresh: bool = False
    ) -> list[dict[str, Any]]:
        """The deployment's pods; those already deleted count as terminating, so a replica is
        not deleted (and announced) twice while the watch catches up."""
        pods = self.view.pods_of(deployment.namespace, deployment.name, uid, fresh=fresh)
        return [self._as_deleted(p) for p in pods]

    def _as_deleted(self, pod: dict[str, Any]) -> dict[str, Any]:
        """A pod this operator deleted, marked so before the watch shows it."""
        meta = pod["metadata"]
        if meta.get("uid") in self.deleting and not meta.get("deletionTimestamp"):
            return {**pod, "metadata": {**meta, "deletionTimestamp": now()}}
        return pod

    def snapshot(self) -> Snapshot:
        """The placement ledger as the cluster view shows it now: pods just created count, and
        pods just deleted hold their GPUs, as being released."""
        pods = [self._as_deleted(p) for p in self.view.pods()]
        return build_snapshot(
            self.view.nodes(),
            pods,
            self.view.pools(),
            compute_domains=self.view.compute_domains_served(),
        )

    # ---- pools -------------------------------------------------------------------------------

    async def refresh_pools(self) -> None:
        """Write each RackPool's status when it differs from what the API server holds."""
        bodies = {b["metadata"]["name"]: b for b in self.view.pool_bodies()}
        snapshot = self.snapshot()
        stamp = now()
        built = {}
        for name, pool in snapshot.pools.items():
            current = (bodies.get(name) or {}).get("status") or {}
            built[name] = status.pool_status(
                pool,
                snapshot.conflicts,
                current.get("conditions") or [],
                stamp,
                self.options.pool_grace,
                domains_served=self.view.compute_domains_served(),
            )
            new = status.dump(built[name])
            if status.changed(new, current):
                await self.writer.patch_pool_status(name, new)
        metrics.POOLS.update(built)

    # ---- deployments -------------------------------------------------------------------------

    async def reconcile_all(self) -> None:
        """One pass: heal every deployment, place what waits in one ordered batch, then write
        each deployment's services and status."""
        bodies = self.view.deployments()
        if self.deleting:
            self.deleting &= {str(p["metadata"].get("uid")) for p in self.view.pods()}
        live = {str(b["metadata"].get("uid")) for b in bodies}
        for uid in list(self.memory):
            if uid not in live:
                del self.memory[uid]
        self.view.begin_pass()
        self.costs, self._nodes = {}, None
        try:
            healed = await asyncio.gather(*(self._heal(b) for b in bodies), return_exceptions=True)
            errors = {i: r for i, r in enumerate(healed) if isinstance(r, BaseException)}
            steps = {i: r for i, r in enumerate(healed) if isinstance(r, _Step)}
            errors |= await self._place_waiting(steps)
            ok = [i for i in steps if i not in errors]
            finished = await asyncio.gather(
                *(self._finish(steps[i]) for i in ok), return_exceptions=True
            )
            errors |= {i: r for i, r in zip(ok, finished, strict=True) if r is not None}
        finally:
            self.view.end_pass()
        metrics.COSTS.update(self.costs)
        metrics.count_unplaced(
            reason for memory in self.memory.values() for reason in memory.unplaced.values()
        )
        for i, error in sorted(errors.items()):
            metrics.RECONCILE_ERRORS.labels(scope="deployment").inc()
            meta = bodies[i]["metadata"]
            log.error(
                "reconciling %s/%s failed: %s",
                meta.get("namespace"),
                meta.get("name"),
                error,
                exc_info=error,
            )

    async def _heal(self, body: Mapping[str, Any]) -> _Step | None:
        """Validate one deployment, delete what is broken, excess or outdated, and say which
        replicas wait for placement. None: nothing more to do this pass."""
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None  # the garbage collector removes what it owned
        try:
            deployment = InferenceDeployment.model_validate(dict(body))
        except ValidationError as error:
            await self._refuse(body, "; ".join(format_errors(error)))
            return None
        if not (deployment.spec.template.get("spec") or {}).get("containers"):
            await self._refuse(
                body, "spec.template.spec.containers: a pod template needs at least one container"
            )
            return None
        uid = str(meta.get("uid") or "")
        step = _Step(
            obj=dict(body),
            deployment=deployment,
            uid=uid,
            digest=template_hash(deployment),
            memory=self.memory.setdefault(uid, _Memory()),
            age=(str(meta.get("creationTimestamp") or ""), deployment.key),
        )
        step.progress.fallbacks = dict(step.memory.fallbacks)
        step.states = self._classify(step)
        step.actions = lifecycle.decide(step.states)
        for state, cause in step.actions.delete:
            await self._delete(step, state, cause=cause)
        for name in step.actions.delete_domains:
            log.info("%s: deleting ComputeDomain %s, which no pod uses", deployment.key, name)
            await self.writer.delete_compute_domain(deployment.namespace, name)
        wanted = range(deployment.spec.replicas)
        step.returning = [i for i in step.actions.waiting if i in wanted] + [
            state.replica
            for state, cause in step.actions.delete
            if cause not in ("scale-down", "force")  # a forced one is waiting already
        ]
        return step

    async def _place_waiting(self, steps: Mapping[int, _Step]) -> dict[int, BaseException]:
        """Place every waiting replica of the pass together in one ledger (`place_pass`: largest
        first, the oldest deployment first among equals), then write each decision."""
        by_key = {step.deployment.key: i for i, step in steps.items()}
        waiting = []
        for step in sorted(steps.values(), key=lambda s: s.age):
            prefer = step.memory.prefer
            waiting += [Waiting(step.deployment, i, prefer.pop(i, ())) for i in step.actions.place]
            # Replicas whose old pods are going (restart, update): room is kept for them.
            waiting += [
                Waiting(step.deployment, i, prefer.get(i, ()), terminating=True)
                for i in step.returning
            ]
        errors: dict[int, BaseException] = {}
        if all(w.terminating for w in waiting):
            return errors  # nothing to place: keeping room matters only against placements
        snapshot = self.snapshot()
        with metrics.PLACEMENT_SECONDS.time():
            decisions = place_pass(snapshot, waiting)
        for want, decision in decisions:
            i = by_key[want.deployment.key]
            if want.terminating:
                continue
            if i in errors:
                if decision.reservation:
                    decision.reservation.undo()
                continue
            try:
                await self._book(steps[i], decision, snapshot)
            except Exception as error:
                # Its reservation stays booked: pods may exist. One failure spares the rest.
                errors[i] = error
        return errors

    async def _finish(self, step: _Step) -> None:
        """Services, forgetting reasons of replicas no longer waiting, then status."""
        deployment, memory, actions = step.deployment, step.memory, step.actions
        for index in list(memory.unplaced):
            if index not in actions.place:
                del memory.unplaced[index]
        step.progress.unplaced = dict(memory.unplaced)
        if not memory.services or actions.place:  # again on placing: one may have been deleted
            for service in render_services(deployment):
                await self.writer.ensure_service(service)
            memory.services = True
        states = step.states
        if actions.delete or actions.place:
            # Re-read: pods written in this pass count for the status it reports.
            states = self._classify(step, fresh=True)
        resource = self._gpu_resource(deployment)
        built = status.deployment_status(
            deployment,
            states,
            step.progress,
            resource,
            now(),
            domains_missing=self._domains_missing(deployment),
            sizes=self._sizes(deployment, states),
        )
        if built.cost_per_hour is not None and built.currency is not None:
            self.costs[(deployment.namespace, deployment.name)] = (
                built.cost_per_hour,
                built.currency,
            )
        new = status.dump(built)
        current = dict(step.obj.get("status") or {})
        if status.changed(new, current):
            await self.writer.patch_deployment_status(deployment.namespace, deployment.name, new)
        if status.domains_missing(built) and not memory.domains_missing:
            await self.writer.event(
                step.obj, "Warning", "ComputeDomainsMissing", status.DOMAINS_MISSING
            )
            memory.domains_missing = True

    def _classify(self, step: _Step, *, fresh: bool = False) -> list[lifecycle.ReplicaState]:
        deployment = step.deployment
        return lifecycle.classify(
            self._pods(deployment, step.uid, fresh=fresh),
            deployment.spec.replicas,
            digest=step.digest,
            nodes=self.view.node_readiness(),
            now=datetime.now(UTC),
            unschedulable_after=self.options.unschedulable_timeout,
            domains=self.view.domains_of(deployment.namespace, deployment.name, step.uid),
            domain_after=self.options.compute_domain_timeout,
        )

    def _domains_missing(self, deployment: InferenceDeployment) -> bool:
        """Its pool would give replicas spanning trays ComputeDomains, but none are served."""
        name = deployment.spec.placement.rack_pool
        pool = next((p for p in self.view.pools() if p.name == name), None)
        wanted = pool is not None and pool.spec.wants_compute_domains
        return wanted and not self.view.compute_domains_served()

    async def _refuse(self, body: Mapping[str, Any], message: str) -> None:
        """A spec the operator cannot act on: phase Failed, one Event, no pods."""
        meta = body.get("metadata") or {}
        current = dict(body.get("status") or {})
        new = status.failed_status(
            meta.get("generation"), message, current.get("conditions") or [], now()
        )
        if status.changed(new, current):
            await self.writer.event(dict(body), "Warning", "InvalidSpec", message)
            await self.writer.patch_deployment_status(meta["namespace"], meta["name"], new)

    async def _delete(self, step: _Step, state: lifecycle.ReplicaState, *, cause: str) -> None:
        obj, deployment, memory, progress = step.obj, step.deployment, step.memory, step.progress
        if cause == "force":
            log.info("%s: force-deleting replica %d on a lost node", deployment.key, state.replica)
        elif cause == "restart":
            metrics.REPLICA_RESTARTS.labels(cause=metrics.restart_cause(state.why)).inc()
            progress.restarting[state.replica] = state.why or "a shard was lost"
            await self.writer.event(
                obj,
                "Warning",
                "ReplicaRestarting",
                f"replica {state.replica}: {state.why}; deleting its pods to place it again whole",
            )
        elif cause == "update":
            metrics.REPLICA_RESTARTS.labels(cause="template-change").inc()
            progress.updating.append(state.replica)
            if state.mode == "Rack" and state.racks:
                memory.prefer[state.replica] = tuple(state.racks)
            await self.writer.event(
                obj,
                "Normal",
                "ReplicaUpdating",
                f"replica {state.replica}: the template changed; replacing it",
            )
        else:
            progress.scaling_down.append(state.replica)
            await self.writer.event(
                obj, "Normal", "ScaledDown", f"replica {state.replica} removed (scaled down)"
            )
            memory.prefer.pop(state.replica, None)
            memory.fallbacks.pop(state.replica, None)
        log.info("%s: deleting replica %d (%s)", deployment.key, state.replica, cause)
        await asyncio.gather(
            *(
                self.writer.delete_pod(
                    deployment.namespace, p["metadata"]["name"], force=state.node_lost
                )
                for p in state.pods
            )
        )
        for pod in state.pods:
            self.view.forget(pod)
            if pod["metadata"].get("uid"):
                self.deleting.add(pod["metadata"]["uid"])
        if state.domain:  # IMEX state does not outlive a member: the replica gets a fresh one
            await self.writer.delete_compute_domain(deployment.namespace, state.domain)

    def _sizes(
        self, deployment: InferenceDeployment, states: list[lifecycle.ReplicaState]
    ) -> status.Sizes:
        """GPU memory of the nodes the deployment runs on, and the prices of its GPUs."""
        pool = next(
            (p for p in self.view.pools() if p.name == deployment.spec.placement.rack_pool), None
        )
        memory: dict[str, int | None] = {}
        if deployment.spec.model is not None and pool is not None:
            if self._nodes is None:
                self._nodes = {n["metadata"]["name"]: n for n in self.view.nodes()}
            for state in states:
                for pod in state.pods:
                    name = (pod.get("spec") or {}).get("nodeName") or lifecycle.pod_node(pod)
                    raw = self._nodes.get(name or "")
                    if raw is not None and name:
                        labels = (raw.get("metadata") or {}).get("labels") or {}
                        memory[name] = gpu_memory(labels, pool.spec)
        return status.Sizes(
            node_memory=memory,
            pool_price=pool.spec.pricing.price if pool and pool.spec.pricing else None,
            ordinary_price=self.options.ordinary_price,
        )

    def _gpu_resource(self, deployment: InferenceDeployment) -> str:
        name = deployment.spec.placement.rack_pool
        for pool in self.view.pools():
            if pool.name == name:
                return pool.spec.gpu_resource
        return DEFAULT_GPU_RESOURCE

    async def _book(self, step: _Step, decision: Decision, snapshot: Snapshot) -> None:
        """Act on one placement decision: pods created, or the reason kept and announced."""
        obj, deployment, memory, progress = step.obj, step.deployment, step.memory, step.progress
        index, plan = decision.replica, decision.plan
        fallback = plan is not None and plan.mode == "DevicePlugin"
        fallback = fallback and bool(deployment.spec.placement.rack_pool)
        result = "unplaced" if plan is None else "fallback" if fallback else "placed"
        metrics.PLACEMENT_DECISIONS.labels(result=result).inc()
        if plan is None:
            reason = decision.reason or "no room"
            memory.unplaced[index] = reason
            if memory.warned.get(index) != reason:
                memory.warned[index] = reason
                await self.writer.event(
                    obj, "Warning", "FailedPlacement", f"replica {index}: {reason}"
                )
            return
        memory.unplaced.pop(index, None)
        memory.warned.pop(index, None)
        pods = render_replica(deployment, plan, pool_facts(deployment, plan, snapshot))
        if plan.compute_domain and not await self._create_domain(deployment, index):
            if decision.reservation:
                decision.reservation.undo()
            return
        if not await self._create(deployment, pods):
            if decision.reservation:
                decision.reservation.undo()
            if plan.compute_domain:
                name = compute_domain_name(deployment.name, index)
                await self.writer.delete_compute_domain(deployment.namespace, name)
            await self.writer.event(
                obj,
                "Warning",
                "FailedCreate",
                f"replica {index}: creating its pods failed; it will be placed again",
            )
            return
        where = ", ".join(plan.racks) or "ordinary GPU nodes"
        gpus = sum(p.gpus for p in plan.pods)
        if fallback:
            why = decision.reason or "the pool could not hold it"
            memory.fallbacks[index] = why
            progress.fallbacks[index] = why
            await self.writer.event(
                obj, "Warning", "DevicePluginFallback", f"replica {index}: {why}"
            )
        else:
            memory.fallbacks.pop(index, None)
            progress.fallbacks.pop(index, None)
            await self.writer.event(
                obj,
                "Normal",
                "Placed",
                f"replica {index}: {len(plan.pods)} pods, {gpus} GPUs, {plan.mode} mode on {where}",
            )
        log.info("%s: placed replica %d on %s", deployment.key, index, where)

    async def _create_domain(self, deployment: InferenceDeployment, replica: int) -> bool:
        """The replica's fresh ComputeDomain, before its pods; False: the last one of that name
        is still being deleted, so the replica is placed again on a later pass."""
        body = render_compute_domain(deployment, replica)
        try:
            if await self.writer.create_compute_domain(body):
                return True
        except Exception as error:
            log.warning("%s: creating ComputeDomain failed: %s", deployment.key, error)
            await self.writer.event(
                body,
                "Warning",
                "FailedCreate",
                f"replica {replica}: creating its ComputeDomain failed ({error}); "
                "it will be placed again",
            )
            return False
        log.info("%s: replica %d waits for its old ComputeDomain to go", deployment.key, replica)
        return False

    async def _create(self, deployment: InferenceDeployment, pods: list[dict[str, Any]]) -> bool:
        """Create a replica's pods; on any failure remove those created, so none is left half."""
        for pod in pods:
            self.view.expect(pod)
        results = await asyncio.gather(
            *(self.writer.create_pod(p) for p in pods), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            for pod, uid in zip(pods, results, strict=True):
                self.view.created(pod, str(uid))
            return True
        log.warning("%s: creating pods failed: %s", deployment.key, failed[0])
        for pod, result in zip(pods, results, strict=True):
            self.view.forget(pod)
            if not isinstance(result, BaseException):
                await self.writer.delete_pod(deployment.namespace, pod["metadata"]["name"])
        return False
