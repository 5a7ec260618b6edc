"""Reconciling: RackPool statuses, and each InferenceDeployment's pods, services and status.

Reads the cluster view, asks `lifecycle` what each replica needs, asks the placement engine where
missing replicas go, reserves in the ledger, writes pods, and undoes the reservation when a write
fails. Placement is serialised by one lock so two deployments never book the same GPUs.
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
from rackscale.api.rackpool import DEFAULT_GPU_RESOURCE, DEFAULT_RACK_LABEL
from rackscale.controller import lifecycle, metrics, status
from rackscale.controller.cluster import ClusterView
from rackscale.controller.kube import Writer, now
from rackscale.placement import ReplicaPlan, place_replica
from rackscale.render import PoolFacts, render_replica, render_services, template_hash
from rackscale.topology import Snapshot, build_snapshot

log = logging.getLogger("rackscale.reconcile")


@dataclass(slots=True)
class Options:
    """How the operator behaves; `rackscale run` sets them from its flags."""

    unschedulable_timeout: float = 60.0  # seconds a pinned pod may stay unschedulable
    resync: float = 10.0  # seconds between reconciles when nothing is heard
    debounce: float = 0.2  # seconds to gather a burst of watch events into one reconcile

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Options:
        """Defaults, overridden by RACKSCALE_UNSCHEDULABLE_TIMEOUT and RACKSCALE_RESYNC."""
        options = cls()
        if value := environ.get("RACKSCALE_UNSCHEDULABLE_TIMEOUT"):
            options.unschedulable_timeout = float(value)
        if value := environ.get("RACKSCALE_RESYNC"):
            options.resync = float(value)
        return options


@dataclass(slots=True)
class _Memory:
    """What the operator remembers of one deployment between reconciles (lost on restart)."""

    unplaced: dict[int, str] = field(default_factory=dict)
    fallbacks: dict[int, str] = field(default_factory=dict)
    prefer: dict[int, tuple[str, ...]] = field(default_factory=dict)  # replica -> racks to keep
    warned: dict[int, str] = field(default_factory=dict)  # replica -> last reason posted
    services: bool = False


class Reconciler:
    """Everything the worker does on each pass; state shared between passes lives here."""

    def __init__(self, view: ClusterView, writer: Writer, options: Options | None = None) -> None:
        self.view = view
        self.writer = writer
        self.options = options or Options()
        self.placing = asyncio.Lock()
        self.memory: dict[str, _Memory] = {}
        self.deleting: set[str] = set()  # uids of pods deleted and not yet shown as deleted
        self._ledger: Snapshot | None = None  # the booking ledger of the current pass

    def _pods(
        self, deployment: InferenceDeployment, uid: str, *, fresh: bool = False
    ) -> list[dict[str, Any]]:
        """The deployment's pods; those already deleted count as terminating, so a replica is
        not deleted (and announced) twice while the watch catches up."""
        out = []
        for pod in self.view.pods_of(deployment.namespace, deployment.name, uid, fresh=fresh):
            meta = pod["metadata"]
            if meta.get("uid") in self.deleting and not meta.get("deletionTimestamp"):
                pod = {**pod, "metadata": {**meta, "deletionTimestamp": now()}}
            out.append(pod)
        return out

    # ---- pools -------------------------------------------------------------------------------

    async def refresh_pools(self) -> None:
        """Write each RackPool's status when it differs from what the API server holds."""
        pools = self.view.pools()
        bodies = {b["metadata"]["name"]: b for b in self.view.pool_bodies()}
        snapshot = build_snapshot(self.view.nodes(), self.view.pods(), pools)
        stamp = now()
        built = {}
        for name, pool in snapshot.pools.items():
            current = (bodies.get(name) or {}).get("status") or {}
            built[name] = status.pool_status(
                pool, snapshot.conflicts, current.get("conditions") or [], stamp
            )
            new = status.dump(built[name])
            if status.changed(new, current):
                await self.writer.patch_pool_status(name, new)
        metrics.POOLS.update(built)

    # ---- deployments -------------------------------------------------------------------------

    async def reconcile_all(self) -> None:
        bodies = self.view.deployments()
        if self.deleting:
            self.deleting &= {str(p["metadata"].get("uid")) for p in self.view.pods()}
        live = {str(b["metadata"].get("uid")) for b in bodies}
        for uid in list(self.memory):
            if uid not in live:
                del self.memory[uid]
        self.view.begin_pass()
        self._ledger = None
        try:
            results = await asyncio.gather(
                *(self.reconcile(b) for b in bodies), return_exceptions=True
            )
        finally:
            self.view.end_pass()
            self._ledger = None
        metrics.count_unplaced(
            reason for memory in self.memory.values() for reason in memory.unplaced.values()
        )
        for body, result in zip(bodies, results, strict=True):
            if isinstance(result, BaseException):
                metrics.RECONCILE_ERRORS.labels(scope="deployment").inc()
                meta = body["metadata"]
                log.error(
                    "reconciling %s/%s failed: %s",
                    meta.get("namespace"),
                    meta.get("name"),
                    result,
                    exc_info=result,
                )

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        """One InferenceDeployment: heal, scale, update, place, then write status."""
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return  # the garbage collector removes what it owned
        current = dict(body.get("status") or {})
        try:
            deployment = InferenceDeployment.model_validate(dict(body))
        except ValidationError as error:
            await self._refuse(body, "; ".join(format_errors(error)))
            return
        if not (deployment.spec.template.get("spec") or {}).get("containers"):
            await self._refuse(
                body, "spec.template.spec.containers: a pod template needs at least one container"
            )
            return
        uid = str(meta.get("uid") or "")
        memory = self.memory.setdefault(uid, _Memory())
        obj = dict(body)
        digest = template_hash(deployment)
        states = lifecycle.classify(
            self._pods(deployment, uid),
            deployment.spec.replicas,
            digest=digest,
            nodes=self.view.node_readiness(),
            now=datetime.now(UTC),
            unschedulable_after=self.options.unschedulable_timeout,
        )
        actions = lifecycle.decide(states)
        progress = status.Progress(fallbacks=dict(memory.fallbacks))

        for state, cause in actions.delete:
            await self._delete(
                obj, deployment, state, cause=cause, memory=memory, progress=progress
            )
        if actions.place:
            await self._place(obj, deployment, actions.place, memory, progress)
        for index in list(memory.unplaced):
            if index not in actions.place:
                del memory.unplaced[index]
        progress.unplaced = dict(memory.unplaced)

        if not memory.services or actions.place:  # again on placing: one may have been deleted
            for service in render_services(deployment):
                await self.writer.ensure_service(service)
            memory.services = True

        if actions.delete or actions.place:
            # Re-read: pods written in this pass count for the status it reports.
            states = lifecycle.classify(
                self._pods(deployment, uid, fresh=True),
                deployment.spec.replicas,
                digest=digest,
                nodes=self.view.node_readiness(),
                now=datetime.now(UTC),
                unschedulable_after=self.options.unschedulable_timeout,
            )
        resource = self._gpu_resource(deployment)
        new = status.dump(status.deployment_status(deployment, states, progress, resource, now()))
        if status.changed(new, current):
            await self.writer.patch_deployment_status(deployment.namespace, deployment.name, new)

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

    async def _delete(
        self,
        obj: dict[str, Any],
        deployment: InferenceDeployment,
        state: lifecycle.ReplicaState,
        *,
        cause: str,
        memory: _Memory,
        progress: status.Progress,
    ) -> None:
        if cause == "restart":
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

    def _facts(
        self, deployment: InferenceDeployment, plan: ReplicaPlan, snapshot: Snapshot
    ) -> PoolFacts:
        pool = snapshot.pools.get(deployment.spec.placement.rack_pool or "")
        labels = {p.spec.rack_label for p in snapshot.pools.values()} or {DEFAULT_RACK_LABEL}
        racks = {}
        for pod in plan.pods:
            rack = snapshot.rack_of(pod.node) if pod.node else None
            if pod.node and rack is not None:
                racks[pod.node] = rack.name
        return PoolFacts(
            pool=pool.name if pool else None,
            gpu_resource=pool.spec.gpu_resource if pool else DEFAULT_GPU_RESOURCE,
            rack_labels=tuple(sorted(labels)),
            node_racks=racks,
        )

    def _gpu_resource(self, deployment: InferenceDeployment) -> str:
        name = deployment.spec.placement.rack_pool
        for pool in self.view.pools():
            if pool.name == name:
                return pool.spec.gpu_resource
        return DEFAULT_GPU_RESOURCE

    async def _place(
        self,
        obj: dict[str, Any],
        deployment: InferenceDeployment,
        replicas: list[int],
        memory: _Memory,
        progress: status.Progress,
    ) -> None:
        async with self.placing:
            # One ledger for the whole pass: each placement books into it, so the next sees it.
            snapshot = self._ledger = self._ledger or self.view.snapshot()
            for index in replicas:
                # A replaced replica (template change) stays on its racks when they still fit.
                prefer = memory.prefer.pop(index, ())
                with metrics.PLACEMENT_SECONDS.time():
                    decision = place_replica(snapshot, deployment, index, prefer=prefer)
                plan = decision.plan
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
                    continue
                memory.unplaced.pop(index, None)
                memory.warned.pop(index, None)
                pods = render_replica(deployment, plan, self._facts(deployment, plan, snapshot))
                if not await self._create(deployment, pods):
                    if decision.reservation:
                        decision.reservation.undo()
                    await self.writer.event(
                        obj,
                        "Warning",
                        "FailedCreate",
                        f"replica {index}: creating its pods failed; it will be placed again",
                    )
                    continue
                where = ", ".join(plan.racks) or "ordinary GPU nodes"
                gpus = sum(p.gpus for p in plan.pods)
                if plan.mode == "DevicePlugin" and deployment.spec.placement.rack_pool:
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
                        f"replica {index}: {len(plan.pods)} pods, {gpus} GPUs, {plan.mode} "
                        f"mode on {where}",
                    )
                log.info("%s: placed replica %d on %s", deployment.key, index, where)

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
