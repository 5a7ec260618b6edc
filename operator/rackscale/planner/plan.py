"""One pass, planned in one call: `plan_pass(view, records, clock) -> PassPlan`.

Pure, as LeaderWorkerSet's `ComputeNextStep`: the cache's view (a snapshot, and for each
deployment its object, pods, ComputeDomains), the records kept between passes and the clock
in; every write of the pass, in the order the executor applies them, and the next records
out. The records given are not changed, and the snapshot is left as it was found: the pass
places inside its overlay (`Snapshot.trial`), dropped when it returns, so what it books is
plain values (rendered pods), which the cache then counts as assumed pods in one step
(`ClusterCache.assume`) before the executor writes them.

What a deployment's status says depends on which of those writes the API server took, so it
is left for after them: `finish_pass(plan, seen, ...)` gives the writes that end the pass
(Services, InferencePool, annotations), from the deployment's pods as the cache then shows
them (`after` gives them as they are when every write is taken), and `report_pass(...,
refused)` the status and Events, naming the writes the API server refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rackscale.api.pricing import Price
from rackscale.placement import place_batch
from rackscale.planner import lifecycle
from rackscale.planner import step as planner
from rackscale.planner.status import WriteFailure
from rackscale.planner.step import (
    Booking,
    Delete,
    Event,
    Finish,
    Record,
    Refusal,
    Report,
    Step,
)
from rackscale.topology import PodInfo, Snapshot
from rackscale.topology.objects import DomainInfo, InferencePoolInfo

Body = Mapping[str, Any]
Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class Seen:
    """One deployment as the cache shows it: its object, the pods labelled as its (whose owner
    the planner checks), the ComputeDomains labelled as its, by replica and by serving group,
    and the InferencePool of its name."""

    body: Body
    pods: Sequence[PodInfo] = ()
    domains: Mapping[int, DomainInfo] = field(default_factory=dict)
    group_domains: Mapping[int, DomainInfo] = field(default_factory=dict)
    inference_pool: InferencePoolInfo | None = None  # the InferencePool of its name, if any


@dataclass(frozen=True, slots=True)
class View:
    """What one pass reads: the snapshot, the deployments to reconcile, node readiness, and
    what the API server serves."""

    snapshot: Snapshot
    deployments: Sequence[Seen]
    readiness: Mapping[str, bool]
    inference_pools: bool = False  # the API server serves InferencePools (v1)
    ordinary_price: Price | None = None  # per GPU-hour on ordinary nodes


@dataclass(slots=True)
class DeploymentPass:
    """Everything one deployment's pass writes, in order: its Events, the deletes (pods and
    their ComputeDomains, then ComputeDomains of no pod), each booking (its ComputeDomain,
    then its pods, then its Events), then `finish` (Services, InferencePool, annotations,
    status, Events: `finish_pass`). A refused spec writes only `refusal`'s status and Event."""

    key: Key
    body: Body
    uid: str
    record: Record | None = None  # the next record (None: refused, the last one stays)
    refusal: Refusal | None = None
    events: list[Event] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)
    delete_domains: list[str] = field(default_factory=list)  # ComputeDomains of no pod
    bookings: list[Booking] = field(default_factory=list)  # in creation order
    step: Step | None = None  # what `finish_pass` completes (None: refused)
    restarts: list[str] = field(default_factory=list)  # causes, as metrics count them
    due: float | None = None  # seconds until the clock alone may change what it needs

    @property
    def waiting(self) -> bool:
        """Replicas are left waiting for room: tried again when room changes."""
        return self.record is not None and bool(self.record.progress.unplaced)


@dataclass(slots=True)
class PassPlan:
    """One pass: each deployment's writes, the oldest deployment first."""

    deployments: list[DeploymentPass] = field(default_factory=list)
    placement_seconds: float | None = None  # the engine's time (None: nothing was placed)

    def pods(self) -> Iterator[Body]:
        """Every pod the pass books, in creation order: what the cache assumes in one step."""
        for deployment in self.deployments:
            for booking in deployment.bookings:
                yield from booking.pods()


def plan_pass(view: View, records: Mapping[str, Record], clock: lifecycle.Clock) -> PassPlan:
    """The whole pass: heal each deployment (lifecycle's deletes), place what waits as one
    batch (`place_batch`: beside, growing, groups, replicas), book what each decision creates
    (a group whose lost member no longer fits beside it is restarted by lifecycle).
    `records` are by deployment uid."""
    now = clock.stamp
    steps: list[Step] = []
    out = PassPlan()
    passes: dict[int, DeploymentPass] = {}
    for seen in view.deployments:
        meta = seen.body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue  # the garbage collector removes what it owned
        deployment = planner.refusal(seen.body, now)
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        uid = str(meta.get("uid") or "")
        if isinstance(deployment, Refusal):
            out.deployments.append(DeploymentPass(key, seen.body, uid, refusal=deployment))
            continue
        step = planner.heal(
            seen.body,
            deployment,
            records.get(uid) or Record(),
            pods=seen.pods,
            domains=seen.domains,
            nodes=view.readiness,
            clock=clock,
            group_domains=seen.group_domains,
        )
        steps.append(step)
        passes[id(step)] = DeploymentPass(key, seen.body, uid, record=step.record)
    by_key = {step.deployment.key: step for step in steps}
    batch = planner.batch(steps)
    if batch:
        with view.snapshot.trial():  # the pass's overlay: its reservations end with it
            started = time.perf_counter()
            placed = place_batch(view.snapshot, batch)
            out.placement_seconds = time.perf_counter() - started
            for want, decisions in placed.beside:
                step = by_key[want.deployment.key]
                bookings = planner.book_beside(step, want, decisions, view.snapshot)
                passes[id(step)].bookings += bookings
            for placeable, decision in placed.waiting:
                step = by_key[placeable.deployment.key]
                if placeable.terminating:
                    continue
                if placeable.is_group:
                    bookings = planner.book_group(step, decision, view.snapshot)
                else:
                    bookings = [planner.book(step, decision, view.snapshot)]
                passes[id(step)].bookings += bookings
    for step in sorted(steps, key=lambda s: s.age):
        plan = passes[id(step)]
        plan.events, plan.deletes, plan.step = step.events, step.deletes, step
        plan.delete_domains, plan.restarts, plan.due = step.delete_domains, step.restarts, step.due
        out.deployments.append(plan)
    return out


def after(seen: Seen, plan: DeploymentPass) -> list[PodInfo]:
    """The deployment's pods once the pass's writes are made, as the cache counts them: the
    deleted ones going (gone, when the API never named them), the booked ones created."""
    going = {p.key for d in plan.deletes for p in d.pods}
    pods = [
        replace(p, deleting=True) if p.key in going else p
        for p in seen.pods
        if not (p.key in going and p.uid is None)
    ]
    return pods + [PodInfo.from_body(pod) for b in plan.bookings for pod in b.pods()]


def finish_pass(plan: DeploymentPass, seen: Seen, view: View, clock: lifecycle.Clock) -> Finish:
    """The writes that end a deployment's pass, once its pods are written: Services,
    InferencePool, leaders' annotations, from `seen`, the deployment as the cache then shows
    it."""
    step = plan.step
    assert step is not None, f"{plan.key}: a refused spec has nothing to finish"
    states = _states(step, seen, view, clock)
    return planner.finish(step, states, _context(view, clock), seen.inference_pool)


def report_pass(
    plan: DeploymentPass,
    seen: Seen,
    view: View,
    clock: lifecycle.Clock,
    *,
    done: Finish,
    refused: Sequence[WriteFailure] = (),
) -> Report:
    """What the pass says once every write is made: the status (naming the writes the API
    server `refused`, in the order they were tried) and its Events; the next record is
    completed with what was written."""
    step = plan.step
    assert step is not None, f"{plan.key}: a refused spec has nothing to report"
    states = _states(step, seen, view, clock)
    return planner.report(step, states, _context(view, clock), done, list(refused))


def _states(
    step: Step, seen: Seen, view: View, clock: lifecycle.Clock
) -> list[lifecycle.ReplicaState]:
    return planner.classify(
        step, seen.pods, seen.domains, view.readiness, clock, seen.group_domains
    )


def _context(view: View, clock: lifecycle.Clock) -> planner.Context:
    return planner.Context(
        view.snapshot, clock.stamp, view.ordinary_price, inference_pools=view.inference_pools
    )
