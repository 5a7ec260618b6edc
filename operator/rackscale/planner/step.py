"""The whole step for one InferenceDeployment in one pass, decided here and applied by the
controller's executor: what to delete, what waits for placement (and the racks to keep or
prefer), what to create for each placement decision, which Services and status to write, and
which Events to post. Pure: objects, pods and the snapshot in; the step out.

What the operator remembers of a deployment between passes is one `Record`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

from pydantic import ValidationError

from rackscale.api import InferenceDeployment, format_errors
from rackscale.api.inferencedeployment import GROUP_NUMBERS, ROLE_NUMBERS
from rackscale.api.labels import (
    DEPLOYMENT_LABEL,
    GROUP_LABEL,
    GROUP_ROLES_ANNOTATION,
    LEADERS_ANNOTATION,
    ROLE_LABEL,
)
from rackscale.api.pricing import Price
from rackscale.api.rackpool import DEFAULT_GPU_RESOURCE
from rackscale.placement import Batch, Beside, Decision, Placeable, ReasonCode, ReplicaPlan
from rackscale.planner import lifecycle, status
from rackscale.render import (
    PoolFacts,
    compute_domain_of,
    group_compute_domain_name,
    leaders_annotation,
    pool_facts,
    render_inference_pool,
    render_replica,
    render_services,
    template_hash,
)
from rackscale.topology import PodInfo, Snapshot
from rackscale.topology.objects import DomainInfo, InferencePoolInfo

Body = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post on the deployment."""

    kind: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(slots=True)
class Record:
    """What the operator remembers of one deployment between passes (lost on restart). Its
    `progress` is what the status reports beside the pods."""

    progress: status.Progress = field(default_factory=status.Progress)
    codes: dict[int, ReasonCode] = field(default_factory=dict)  # unplaced replica -> code
    prefer: dict[int, tuple[str, ...]] = field(default_factory=dict)  # replica -> racks held
    warned: dict[int, str] = field(default_factory=dict)  # replica -> last reason posted
    services: str | None = None  # digest of the Services last applied
    domains_missing: bool = False  # the Event saying multi-node NVLink is not set up was posted
    pools_missing: bool = False  # the Event saying no InferencePool can be created was posted
    group_prefer: dict[int, tuple[str, ...]] = field(default_factory=dict)  # group -> racks held
    refused: set[str] = field(default_factory=set)  # API messages of refused writes, posted

    def copy(self) -> Record:
        """A copy a pass changes, returned as the next record: the one given is left as is."""
        return copy.deepcopy(self)


@dataclass(frozen=True, slots=True)
class Delete:
    """A replica's pods to delete (forced when no kubelet can confirm), and its ComputeDomain."""

    replica: int
    cause: lifecycle.Cause
    pods: tuple[PodInfo, ...]
    force: bool
    domain: str | None


@dataclass(slots=True)
class Step:
    """One deployment in one pass."""

    body: Body
    deployment: InferenceDeployment
    uid: str
    digest: str
    record: Record
    age: tuple[str, str]  # (creationTimestamp, namespace/name): the oldest places first
    states: list[lifecycle.ReplicaState] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)
    delete_domains: list[str] = field(default_factory=list)  # ComputeDomains of no pod
    waiting: list[Placeable] = field(default_factory=list)  # replicas, or serving groups
    beside: list[Beside] = field(default_factory=list)  # spec.roles: beside their groups
    events: list[Event] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)  # causes, as metrics count them
    placing: bool = False  # it has replicas to place this pass
    due: float | None = None  # seconds until the clock alone may change what it needs

    @property
    def key(self) -> str:
        return self.deployment.key


@dataclass(frozen=True, slots=True)
class Refusal:
    """A spec the operator cannot act on: phase Failed, one Event, no pods."""

    message: str
    status: dict[str, Any] | None  # None: the status already says so
    event: Event | None


@dataclass(slots=True)
class Booking:
    """What one placement decision creates, as plain values: its ComputeDomain first, then its
    pods (a serving group's: every role replica's, under the group's one ComputeDomain), and
    the Events posted once they are created. `decisions` are the engine's, their reservations
    dropped with the pass's overlay (the cache counts the pods as assumed once booked)."""

    replica: int  # the replica (a serving group: its first role replica)
    decisions: list[Decision]
    result: Literal["placed", "fallback", "unplaced"] = "unplaced"
    domain: dict[str, Any] | None = None
    replicas: list[tuple[InferenceDeployment, ReplicaPlan, PoolFacts]] = field(
        default_factory=list
    )  # what its pods are rendered from
    events: list[Event] = field(default_factory=list)

    def pods(self) -> list[dict[str, Any]]:
        """Its pods, rendered when asked (assumed, then written): a pass that books thousands
        of pods holds the bodies of one booking at a time, not all of them."""
        return [pod for d, plan, facts in self.replicas for pod in render_replica(d, plan, facts)]


@dataclass(frozen=True, slots=True)
class Finish:
    """The writes that end a deployment's pass, before its status: Services (and its
    InferencePool) to apply, or its InferencePool to delete, and leaders' annotations; with
    what the record keeps of them once the API server has taken them."""

    services: list[dict[str, Any]]
    inference_pool: dict[str, Any] | None = None  # to apply
    delete_inference_pool: str | None = None  # the name of one to delete
    annotate: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # pod, annotations
    services_digest: str | None = None  # what record.services becomes once they are applied


@dataclass(frozen=True, slots=True)
class Report:
    """What a deployment's pass says once its writes are made: the status to write (None:
    unchanged), Events, and its cost."""

    status: dict[str, Any] | None
    events: list[Event]
    cost: tuple[str, str] | None  # (per hour, currency)


# ---- healing -----------------------------------------------------------------------------------


def refusal(body: Body, now: str) -> Refusal | InferenceDeployment:
    """The deployment as a model, or why the operator cannot act on it."""
    try:
        deployment = InferenceDeployment.model_validate(dict(body))
    except ValidationError as error:
        return _refuse(body, "; ".join(format_errors(error)), now)
    spec = deployment.spec
    templates = {"spec.template": spec.template}
    if spec.roles:
        templates = {f"spec.roles[{i}].template": r.template for i, r in enumerate(spec.roles)}
    for where, template in templates.items():
        if not (template.get("spec") or {}).get("containers"):
            message = f"{where}.spec.containers: a pod template needs at least one container"
            return _refuse(body, message, now)
    return deployment


def _refuse(body: Body, message: str, now: str) -> Refusal:
    meta = body.get("metadata") or {}
    current = dict(body.get("status") or {})
    new = status.failed_status(
        meta.get("generation"), message, current.get("conditions") or [], now
    )
    if not status.changed(new, current):
        return Refusal(message, None, None)
    return Refusal(message, new, Event("Warning", "InvalidSpec", message))


def heal(
    body: Body,
    deployment: InferenceDeployment,
    record: Record,
    *,
    pods: Iterable[PodInfo],
    domains: Mapping[int, DomainInfo],
    nodes: Mapping[str, bool],
    clock: lifecycle.Clock,
    group_domains: Mapping[int, DomainInfo] | None = None,
) -> Step:
    """What the deployment needs before placement: deletes, and the replicas (or, with
    spec.roles, the serving groups and role replicas) that wait. The step holds a copy of
    `record`, which it changes: the next record."""
    meta = body.get("metadata") or {}
    step = Step(
        body=body,
        deployment=deployment,
        uid=str(meta.get("uid") or ""),
        digest=template_hash(deployment),
        record=record.copy(),
        age=(str(meta.get("creationTimestamp") or ""), deployment.key),
    )
    progress = record.progress
    progress.restarting, progress.updating, progress.scaling_down = {}, [], []
    step.states = classify(step, pods, domains, nodes, clock, group_domains)
    step.due = lifecycle.due(step.states)
    size = deployment.spec.group_size
    colocated = deployment.spec.colocation != "None"
    actions = (
        lifecycle.decide_groups(step.states, colocated=colocated, stride=GROUP_NUMBERS)
        if size
        else lifecycle.decide(step.states)
    )
    _apply(step, actions)
    return step


def _apply(step: Step, actions: lifecycle.Actions) -> None:
    """Lifecycle's actions as the step's deletes and what it places."""
    for state, cause in actions.delete:
        step.deletes.append(_delete(step, state, cause))
    step.delete_domains += actions.delete_domains
    if step.deployment.spec.roles:
        _wait_groups(step, actions)
    else:
        _wait(step, actions)


def classify(  # noqa: PLR0917
    step: Step,
    pods: Iterable[PodInfo],
    domains: Mapping[int, DomainInfo],
    nodes: Mapping[str, bool],
    clock: lifecycle.Clock,
    group_domains: Mapping[int, DomainInfo] | None = None,
) -> list[lifecycle.ReplicaState]:
    """The deployment's replica states from its pods (owned by this very object). With
    spec.roles, its role replicas', each known by its group, role and index (so scaling one
    role changes nothing of the others); a missing one its group never had is `added`. Each
    group's shared ComputeDomain stands for its role replicas that have pods, so one without
    pods is Missing (lost, or added) beside them; when none has pods, for every one, so the
    domain left behind goes before the group is placed again."""
    owned = [p for p in pods if owns(step.uid, p)]
    spec = step.deployment.spec
    number = None
    if spec.roles:
        number = partial(role_number_of, step.deployment)
        holding = {n for p in owned if (n := number(p)) is not None}
        shared: dict[int, DomainInfo] = {}
        for group, domain in (group_domains or {}).items():
            members = [m.replica for m in spec.role_replicas(group)]
            held = [r for r in members if r in holding] or members
            shared |= dict.fromkeys(held, domain)
        domains = {**shared, **domains}
    states = lifecycle.classify(
        owned,
        spec.replica_numbers(),
        digest=step.digest,
        nodes=nodes,
        now=clock.now,
        unschedulable_after=clock.unschedulable_after,
        domains=domains,
        domain_after=clock.domain_after,
        number=number,
    )
    if spec.roles:
        _mark_added(step.deployment, states)
    return states


def owns(uid: str, obj: PodInfo | DomainInfo | InferencePoolInfo) -> bool:
    """Whether a pod, ComputeDomain or InferencePool labelled as a deployment's is that very
    object's: its owner is the deployment's uid (one left by an object deleted and made again
    under the same name is not). Unknown uids (no owner set, or none known) count as owned."""
    return not (uid and obj.owners and uid not in obj.owners)


def owned_pods(deployment: InferenceDeployment, pods: Iterable[PodInfo]) -> list[PodInfo]:
    """Of `pods`, those of this deployment: in its namespace, labelled with its name, owned by
    it (`owns`)."""
    uid = str(deployment.metadata.get("uid") or "")
    return [
        p
        for p in pods
        if p.namespace == deployment.namespace
        and p.labels.get(DEPLOYMENT_LABEL) == deployment.name
        and owns(uid, p)
    ]


def role_number_of(deployment: InferenceDeployment, pod: PodInfo) -> int | None:
    """A role pod's replica number from its identity (group and role labels, index from its
    name `<name>-g<group>-<role>-<index>-<shard>`), whatever number it was created with. A pod
    of a role no longer in the spec is numbered past every role (it is excess)."""
    group, role = pod.labels.get(GROUP_LABEL, ""), pod.labels.get(ROLE_LABEL)
    prefix = f"{deployment.name}-g{group}-{role}-"
    index = pod.name[len(prefix) :].split("-", 1)[0] if pod.name.startswith(prefix) else ""
    if not group.isdigit() or not index.isdigit():
        return None
    names = [r.name for r in deployment.spec.roles or ()]
    position = names.index(role) if role in names else GROUP_NUMBERS // ROLE_NUMBERS - 1
    return deployment.spec.role_number(int(group), position, int(index))


def _mark_added(deployment: InferenceDeployment, states: list[lifecycle.ReplicaState]) -> None:
    """A missing role replica is `added` when its group, which has pods, never had it: its
    index is at least the most replicas of its role any living pod of the group was created
    beside (pods without that record: the role's replicas among the group's pods)."""
    spec = deployment.spec
    had: dict[int, dict[str, int]] = {}
    for state in states:
        if not state.pods:
            continue
        counts = had.setdefault(spec.group_of(state.replica), {})
        for pod in state.pods:
            for role, count in _recorded(pod).items():
                counts[role] = max(counts.get(role, 0), count)
        recorded = any(GROUP_ROLES_ANNOTATION in p.annotations for p in state.pods)
        if not recorded and _known(deployment, state.replica):
            member = spec.role_replica(state.replica)
            counts[member.role] = max(counts.get(member.role, 0), member.index + 1)
    for state in states:
        group = spec.group_of(state.replica)
        if state.condition != "Missing" or group not in had:
            continue
        member = spec.role_replica(state.replica)
        state.added = member.index >= had[group].get(member.role, 0)


def _known(deployment: InferenceDeployment, replica: int) -> bool:
    return (replica % GROUP_NUMBERS) // ROLE_NUMBERS < len(deployment.spec.roles or ())


def _recorded(pod: PodInfo) -> dict[str, int]:
    out = {}
    for item in pod.annotations.get(GROUP_ROLES_ANNOTATION, "").split(","):
        role, _, count = item.partition("=")
        if count.isdigit():
            out[role] = int(count)
    return out


def _delete(step: Step, state: lifecycle.ReplicaState, cause: lifecycle.Cause) -> Delete:
    """Delete a replica, saying why; a replaced one returns to its racks when they fit."""
    record, index = step.record, state.replica
    if cause == "restart":
        step.restarts.append(state.loss or "lost-shard")
        record.progress.restarting[index] = state.why or "a shard was lost"
        message = f"replica {index}: {state.why}; deleting its pods to place it again whole"
        step.events.append(Event("Warning", "ReplicaRestarting", message))
    elif cause == "update":
        step.restarts.append("template-change")
        record.progress.updating.append(index)
        if state.mode == "Rack" and state.racks:
            _keep_racks(step, index, tuple(state.racks))
        message = f"replica {index}: the template changed; replacing it"
        step.events.append(Event("Normal", "ReplicaUpdating", message))
    elif cause == "scale-down":
        record.progress.scaling_down.append(index)
        message = f"replica {index} removed (scaled down)"
        step.events.append(Event("Normal", "ScaledDown", message))
        record.prefer.pop(index, None)
        record.progress.fallbacks.pop(index, None)
    return Delete(index, cause, tuple(state.pods), state.node_lost, _domain_going(step, state))


def _domain_going(step: Step, state: lifecycle.ReplicaState) -> str | None:
    """The ComputeDomain deleted with a replica: its own, or its serving group's, but not when
    a role scaled down leaves a group that stays, which keeps serving in it."""
    spec = step.deployment.spec
    if spec.roles and not spec.wants(state.replica):
        group = spec.group_of(state.replica)
        shared = group_compute_domain_name(step.deployment.name, group)
        if group < spec.replicas and state.domain == shared:
            return None
    return state.domain


def _wait(step: Step, actions: lifecycle.Actions) -> None:
    """The replicas waiting for this pass's placement batch: missing ones to place, and those
    whose old pods are going (restart, update), for which room is kept."""
    wanted = range(step.deployment.spec.replicas)
    prefer, deployment = step.record.prefer, step.deployment
    step.waiting = [Placeable(deployment, i, prefer.get(i, ())) for i in actions.place]
    returning = [i for i in actions.waiting if i in wanted] + [
        d.replica for d in step.deletes if d.cause in ("restart", "update")
    ]
    step.waiting += [
        Placeable(deployment, i, prefer.get(i, ()), terminating=True) for i in returning
    ]
    step.placing = bool(actions.place)
    for index in list(step.record.progress.unplaced):
        if index not in actions.place:
            forget_unplaced(step.record, index)


def batch(steps: Iterable[Step]) -> Batch:
    """What one pass places together, the oldest deployment first (`place_batch` then orders
    each kind, the largest first)."""
    ordered = sorted(steps, key=lambda s: s.age)
    return Batch(
        beside=[b for step in ordered for b in step.beside],
        waiting=[w for step in ordered for w in step.waiting],
    )


def _keep_racks(step: Step, index: int, racks: tuple[str, ...]) -> None:
    """Racks a replaced replica (with spec.roles, its whole group) returns to."""
    spec = step.deployment.spec
    if not spec.roles:
        step.record.prefer[index] = racks
        return
    group = spec.group_of(index)
    held = step.record.group_prefer.get(group, ())
    step.record.group_prefer[group] = tuple(sorted({*held, *racks}))


def _wait_groups(step: Step, actions: lifecycle.Actions) -> None:
    """spec.roles: the serving groups to place whole, and the role replicas to place beside
    their groups: each lost one alone, those a group grows by together (room is not kept for
    groups whose old pods are still going)."""
    deployment, record = step.deployment, step.record
    spec = deployment.spec
    step.waiting = [
        Placeable(deployment, g, record.group_prefer.get(g, ())) for g in actions.groups
    ]
    step.beside = [Beside(deployment, (replica,), racks) for replica, racks in actions.beside]
    growing: dict[int, tuple[list[int], tuple[str, ...]]] = {}
    for replica, racks in actions.grow:
        growing.setdefault(spec.group_of(replica), ([], racks))[0].append(replica)
    step.beside += [
        Beside(deployment, tuple(replicas), racks, added=True)
        for replicas, racks in growing.values()
    ]
    step.placing = bool(step.waiting or step.beside)
    placing = {m.replica for g in actions.groups for m in spec.role_replicas(g)}
    placing |= {r for b in step.beside for r in b.replicas}
    for index in list(record.progress.unplaced):
        if index not in placing:
            forget_unplaced(record, index)


def forget_unplaced(record: Record, index: int) -> None:
    record.progress.unplaced.pop(index, None)
    record.codes.pop(index, None)
    record.warned.pop(index, None)


# ---- placement -------------------------------------------------------------------------------


def book(step: Step, decision: Decision, snapshot: Snapshot) -> Booking:
    """What one placement decision creates, and what the deployment's record keeps of it."""
    record, index, plan = step.record, decision.replica, decision.plan
    booking = Booking(index, [replace(decision, reservation=None)])
    if plan is None:
        reason = decision.reason or "no room"
        record.progress.unplaced[index] = reason
        if decision.why is not None:
            record.codes[index] = decision.why.code
        if record.warned.get(index) != reason:
            record.warned[index] = reason
            booking.events.append(Event("Warning", "FailedPlacement", f"replica {index}: {reason}"))
        return booking
    forget_unplaced(record, index)
    record.prefer.pop(index, None)
    deployment = step.deployment
    booking.replicas = [(deployment, plan, pool_facts(deployment, plan, snapshot))]
    if plan.compute_domain:
        booking.domain = compute_domain_of(deployment, plan)
    where = ", ".join(plan.racks) or "ordinary GPU nodes"
    if decision.fallback:
        why = decision.reason or "the pool could not hold it"
        record.progress.fallbacks[index] = why
        booking.events.append(Event("Warning", "DevicePluginFallback", f"replica {index}: {why}"))
        booking.result = "fallback"
    else:
        record.progress.fallbacks.pop(index, None)
        gpus = sum(p.gpus for p in plan.pods)
        message = (
            f"replica {index}: {len(plan.pods)} pods, {gpus} GPUs, {plan.mode} mode on {where}"
        )
        booking.events.append(Event("Normal", "Placed", message))
        booking.result = "placed"
    return booking


def book_group(step: Step, decision: Decision, snapshot: Snapshot) -> list[Booking]:
    """What one serving group's decision creates, as one booking: the group's ComputeDomain
    (once, before any of its pods), then every placed role replica's pods. A group not placed
    posts one Event, its first role replica's. colocate None: a booking per role replica, each
    with its own ComputeDomain."""
    parts = [book(step, d, snapshot) for d in decision.decisions]
    if step.deployment.spec.colocation == "None":
        return parts
    first = decision.decisions[0].replica if decision.decisions else 0
    booking = Booking(first, [d for part in parts for d in part.decisions])
    domains = [p.domain for p in parts if p.domain is not None]
    booking.domain = domains[0] if domains else None
    for part in parts:
        booking.replicas += part.replicas
        booking.events += part.events if part.replicas or part is parts[0] else []
    if decision.placed:
        step.record.group_prefer.pop(decision.group, None)
    results = {p.result for p in parts}
    booking.result = "unplaced" if "unplaced" in results else max(results, default="unplaced")
    return [booking]


def book_beside(
    step: Step, beside: Beside, decisions: list[Decision], snapshot: Snapshot
) -> list[Booking]:
    """Role replicas placed beside their group, each joining the group's ComputeDomain when
    it grows (the domain exists: it is not created again). A lost member that no longer fits
    there (`beside-group`) has lifecycle restart its group whole (`restart_group`); a group
    refused the members it grows by (`group-cannot-grow`) restarts nothing: it keeps serving
    as it was."""
    bookings = [book(step, d, snapshot) for d in decisions]
    for booking, decision in zip(bookings, decisions, strict=True):
        joins = decision.plan is not None and decision.plan.domain_group is not None
        if joins and beside.added:
            booking.domain = None  # the group's ComputeDomain exists: its new member joins it
    refused = [d for d in decisions if d.why is not None and d.why.code == "beside-group"]
    if refused and not beside.added:
        spec = step.deployment.spec
        group = spec.group_of(refused[0].replica)
        why = refused[0].reason or "it no longer fits beside its group"
        members = [s for s in step.states if spec.group_of(s.replica) == group]
        if any(d.cause == "restart" and spec.group_of(d.replica) == group for d in step.deletes):
            return bookings  # restarting already (another member was refused first)
        for state, cause in lifecycle.restart_group(group, members, why):
            step.deletes.append(_delete(step, state, cause))
    return bookings


# ---- status ----------------------------------------------------------------------------------


def _digest(objects: list[dict[str, Any]]) -> str:
    text = json.dumps(objects, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Context:
    """What the status needs beside the deployment's own pods."""

    snapshot: Snapshot
    now: str
    ordinary_price: Price | None = None
    inference_pools: bool = False  # the API server serves InferencePools (v1)


def finish(
    step: Step,
    states: list[lifecycle.ReplicaState],
    context: Context,
    shown: InferencePoolInfo | None = None,
) -> Finish:
    """The writes before the status: Services (applied when they change, and whenever the
    deployment places: one may have been deleted), the InferencePool when the one `shown` (as
    the cache shows it) is not what is wanted (or its deletion), leaders' annotations. The
    record learns what they wrote in `report`, once they are taken."""
    services = render_services(step.deployment)
    digest = _digest(services)
    apply = services if (step.record.services != digest or step.placing) else []
    gateway, gone = _inference_pool(step, context.inference_pools, shown)
    return Finish(apply, gateway, gone, _leaders(step, states), digest)


def report(
    step: Step,
    states: list[lifecycle.ReplicaState],
    context: Context,
    done: Finish,
    refused: list[status.WriteFailure],
) -> Report:
    """The status to write when it changed, with the writes the API server refused (`Synced`,
    `Stalled`), and the Events: multi-node NVLink not set up, or no InferencePool possible,
    once; each distinct refusal once while they last. A refused Service or InferencePool is
    not recorded as written, so the next pass writes it again."""
    deployment, record = step.deployment, step.record
    kinds = {f.kind for f in refused}
    record.services = None if "Service" in kinds else done.services_digest
    pool = context.snapshot.pools.get(deployment.spec.placement.rack_pool or "")
    missing = pool is not None and pool.spec.wants_compute_domains and not pool.compute_domains
    built = status.deployment_status(
        deployment,
        states,
        record.progress,
        pool.spec.gpu_resource if pool else DEFAULT_GPU_RESOURCE,
        context.now,
        domains_missing=missing,
        inference_pools_missing=not context.inference_pools,
        sizes=_sizes(deployment, states, context),
        refused=refused,
    )
    new = status.dump(built)
    current = dict(step.body.get("status") or {})
    events = []
    if status.domains_missing(built) and not record.domains_missing:
        events.append(Event("Warning", "ComputeDomainsMissing", status.DOMAINS_MISSING))
        record.domains_missing = True
    if not status.inference_pools_missing(built):
        record.pools_missing = False  # posted again should the CRD go
    elif not record.pools_missing:
        events.append(Event("Warning", "InferencePoolMissing", status.INFERENCE_POOLS_MISSING))
        record.pools_missing = True
    said = status.refused_events(refused, record.refused)
    events += [Event("Warning", "WriteRefused", text) for _, text in said]
    record.refused = {*record.refused, *(m for m, _ in said)} if refused else set()
    cost = None
    if built.cost_per_hour is not None and built.currency is not None:
        cost = (built.cost_per_hour, built.currency)
    changed = new if status.changed(new, current) else None
    return Report(changed, events, cost)


def _leaders(step: Step, states: list[lifecycle.ReplicaState]) -> list[tuple[str, dict[str, str]]]:
    """The pods of wanted serving groups whose `rackscale.dev/leaders` no longer says where the
    leaders of their group listen (a role of the group scaled): the annotation to set on each."""
    spec = step.deployment.spec
    if not spec.roles:
        return []
    wanted: dict[int, str] = {}
    out = []
    for state in states:
        group = spec.group_of(state.replica)
        if state.condition in ("Terminating", "Excess") or group >= spec.replicas:
            continue
        text = wanted.get(group)
        if text is None:
            text = wanted[group] = leaders_annotation(step.deployment, group)
        out += [
            (pod.name, {LEADERS_ANNOTATION: text})
            for pod in state.pods
            if not pod.deleting and pod.annotations.get(LEADERS_ANNOTATION) != text
        ]
    return out


def _inference_pool(
    step: Step, served: bool, shown: InferencePoolInfo | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The InferencePool to apply (wanted, and none is shown or the one shown is not what is
    rendered), or the name of one to delete (shown, labelled as and owned by this deployment,
    and not wanted):
    nothing when neither, so no write for a pool that does not exist, and one deleted by hand
    comes back on the next pass. Nothing while the API server does not serve them (any pool
    went with its CRD: applied again once served). A refused write is tried again on a later
    pass, as the cache still shows what stands."""
    deployment = step.deployment
    if not served:
        return None, None
    wanted = render_inference_pool(deployment)
    if wanted is None:
        gone = (
            shown is not None
            and not shown.deleting
            and shown.labels.get(DEPLOYMENT_LABEL) == deployment.name
            and owns(step.uid, shown)
        )
        return None, (deployment.name if gone else None)
    return (None if _stands(wanted, shown) else wanted), None


def _stands(wanted: Mapping[str, Any], shown: InferencePoolInfo | None) -> bool:
    """Whether the InferencePool shown is the one rendered: its spec holds every field
    rackscale renders (the API server may add defaults; other managers' fields are theirs),
    it carries rackscale's labels and the deployment as an owner."""
    if shown is None:
        return False
    meta = wanted["metadata"]
    owners = {str(o["uid"]) for o in meta.get("ownerReferences") or []}
    return (
        _holds(shown.spec, wanted["spec"])
        and meta.get("labels", {}).items() <= shown.labels.items()
        and owners <= set(shown.owners)
    )


def _holds(shown: Any, wanted: Any) -> bool:
    """Whether `shown` has every field of `wanted`, with its value (lists item by item)."""
    if isinstance(wanted, Mapping):
        return isinstance(shown, Mapping) and all(
            k in shown and _holds(shown[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(shown, list)
            and len(shown) == len(wanted)
            and all(_holds(a, b) for a, b in zip(shown, wanted, strict=True))
        )
    return bool(shown == wanted)


def _sizes(
    deployment: InferenceDeployment, states: list[lifecycle.ReplicaState], context: Context
) -> status.Sizes:
    """GPU memory of the nodes the deployment runs on, and the prices of its GPUs."""
    snapshot = context.snapshot
    pool = snapshot.pools.get(deployment.spec.placement.rack_pool or "")
    memory: dict[str, int | None] = {}
    if deployment.spec.model is not None and pool is not None:
        for state in states:
            for pod in state.pods:
                node = snapshot.nodes.get(pod.pinned or "")
                if node is not None:
                    memory[node.name] = node.gpu_memory_mib
    return status.Sizes(
        node_memory=memory,
        pool_price=pool.spec.pricing.price if pool and pool.spec.pricing else None,
        ordinary_price=context.ordinary_price,
    )
