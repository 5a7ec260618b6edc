"""What each replica of an InferenceDeployment is doing, read from its pods, and what to do next.

Pure: pods, nodes and the clock in; replica states and actions out.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from rackscale.api.labels import (
    COMPUTE_DOMAIN_LABEL,
    FIRST_RANK_ANNOTATION,
    MODE_ANNOTATION,
    NVLINK_CROSSES_NODES_ANNOTATION,
    RACKS_ANNOTATION,
    REPLICA_LABEL,
    SHARD_LABEL,
    SHARDS_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
)
from rackscale.topology.objects import DomainInfo, PodInfo

Condition = Literal["Missing", "Running", "Terminating", "Broken", "Excess"]
# Why a replica restarts, as metrics count it; `why` words it for a person.
Loss = Literal[
    "pod-failed",
    "pod-exited",
    "node-gone",
    "node-not-ready",
    "lost-shard",
    "unschedulable-pin",
    "compute-domain",
]
LOSSES: tuple[Loss, ...] = get_args(Loss)
NODE_LOSSES: tuple[Loss, ...] = ("node-gone", "node-not-ready")  # no kubelet confirms a delete
Cause = Literal["restart", "update", "scale-down", "force"]


@dataclass(slots=True)
class ReplicaState:
    """One replica index: its pods (shard order) and what is wrong with it, if anything."""

    replica: int
    condition: Condition
    pods: list[PodInfo] = field(default_factory=list)
    why: str | None = None  # Broken: what was lost
    outdated: bool = False
    ready: bool = False
    node_lost: bool = False  # the kubelet cannot confirm a graceful delete
    domain: str | None = None  # its ComputeDomain, named by its pods
    domain_ready: bool = False
    leftover_domain: str | None = None  # a ComputeDomain its pods no longer use: delete it
    added: bool = False  # spec.roles, Missing: a role replica its group never had (scaled up)
    loss: Loss | None = None  # Broken: the kind of loss
    due: float | None = None  # seconds until the clock alone may change this state

    @property
    def mode(self) -> str:
        if not self.pods:
            return "Rack"
        return self.pods[0].annotations.get(MODE_ANNOTATION) or "Rack"

    @property
    def nvlink_crosses_nodes(self) -> bool:
        """Whether its pods reach each other over NVLink across nodes, as the engine decided
        when it placed them (their annotation says so)."""
        return any(p.annotations.get(NVLINK_CROSSES_NODES_ANNOTATION) == "true" for p in self.pods)

    @property
    def racks(self) -> list[str]:
        value = self.pods[0].annotations.get(RACKS_ANNOTATION, "") if self.pods else ""
        return [r for r in value.split(",") if r]


@dataclass(slots=True)
class Actions:
    """One reconcile step: replicas to delete (and why), replicas to place."""

    delete: list[tuple[ReplicaState, Cause]] = field(default_factory=list)
    place: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # old pods (or domain) still going away
    delete_domains: list[str] = field(default_factory=list)  # ComputeDomains of no pod
    groups: list[int] = field(default_factory=list)  # serving groups to place whole
    beside: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)  # role replica, racks
    grow: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)  # added, racks


def first_rank(pod: PodInfo) -> int:
    value = pod.annotations.get(FIRST_RANK_ANNOTATION, "")
    return int(value) if value.isdigit() else 0


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _index(pod: PodInfo, key: str) -> int | None:
    value = pod.labels.get(key, "")
    return int(value) if value.isdigit() else None


@dataclass(frozen=True, slots=True)
class Clock:
    """The time and the bounds the clock enforces."""

    now: datetime
    unschedulable_after: float
    domain_after: float = 300.0

    @property
    def stamp(self) -> str:
        """`now` as status conditions write it."""
        return self.now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _waited(since: str | None, clock: Clock) -> float | None:
    start = parse_time(since)
    return None if start is None else (clock.now - start).total_seconds()


def _lost(
    pods: list[PodInfo], shards: int, nodes: Mapping[str, bool], clock: Clock
) -> tuple[str | None, Loss | None, float | None]:
    """Why a replica can no longer run as it is (None: it can), the kind of loss, and in how
    many seconds a pod stuck unschedulable turns into one."""
    have = {_index(p, SHARD_LABEL) for p in pods}
    missing = [s for s in range(shards) if s not in have]
    due = None
    for pod in pods:
        if pod.phase in ("Failed", "Succeeded"):
            loss: Loss = "pod-failed" if pod.phase == "Failed" else "pod-exited"
            return f"pod {pod.name} {pod.phase.lower()}", loss, None
        node = pod.pinned
        if node is not None and node not in nodes:
            return f"node {node} of pod {pod.name} is gone", "node-gone", None
        if node is not None and pod.node_name and not nodes[node]:
            return f"node {node} of pod {pod.name} is NotReady", "node-not-ready", None
        if node is None or pod.node_name or pod.unschedulable_message is None:
            continue
        waited = _waited(pod.created, clock)
        if waited is None:
            continue
        if waited > clock.unschedulable_after:
            return (
                f"pod {pod.name} could not be scheduled on node {node} for "
                f"{int(clock.unschedulable_after)}s ({pod.unschedulable_message})",
                "unschedulable-pin",
                None,
            )
        left = clock.unschedulable_after - waited
        due = left if due is None else min(due, left)
    if missing:
        return f"shard {missing[0]} of {shards} is gone", "lost-shard", None
    return None, None, due


def _domain(
    group: list[PodInfo], domain: DomainInfo | None, clock: Clock
) -> tuple[str | None, bool, str | None, float | None]:
    """The replica's ComputeDomain (named by its pods), whether it is Ready, why the replica
    must restart for it (None: it need not; IMEX state cannot be repaired in place), and in
    how many seconds it must have turned Ready."""
    name = group[0].labels.get(COMPUTE_DOMAIN_LABEL) or None
    if name is None:
        return None, False, None, None
    if domain is not None and (domain.name != name or domain.deleting):
        domain = None
    if domain is not None and domain.ready:
        return name, True, None, None
    # Not Ready (or not shown yet): counted from the domain's creation, else its pods'.
    times = [domain.created] if domain is not None else []
    waits = [_waited(t, clock) for t in [*times, *(p.created for p in group)]]
    waited = max((w for w in waits if w is not None), default=None)
    if waited is None:
        return name, False, None, None
    if waited > clock.domain_after:
        what = "did not turn Ready" if domain is not None else "is gone"
        return name, False, f"ComputeDomain {name} {what} within {int(clock.domain_after)}s", None
    return name, False, None, clock.domain_after - waited


def _leftover(
    index: int, domain: DomainInfo | None, replicas: Collection[int]
) -> ReplicaState | None:
    """A replica with no pods: Missing when wanted; Terminating while its ComputeDomain stays
    (a replica gets a fresh one)."""
    if domain is None:
        return ReplicaState(index, "Missing") if index in replicas else None
    leftover = None if domain.deleting else domain.name
    return ReplicaState(index, "Terminating", leftover_domain=leftover)


def _state(
    index: int,
    group: list[PodInfo],
    *,
    replicas: Collection[int],
    digest: str,
    nodes: Mapping[str, bool],
    domain: DomainInfo | None,
    clock: Clock,
) -> ReplicaState:
    named = group[0].labels.get(COMPUTE_DOMAIN_LABEL) or None
    if any(p.deleting for p in group):
        # A pod on a lost node never hears from its kubelet: only a forced delete ends it.
        lost = any(bool(p.node_name) and not nodes.get(str(p.pinned)) for p in group)
        return ReplicaState(index, "Terminating", group, domain=named, node_lost=lost)
    if index not in replicas:
        return ReplicaState(index, "Excess", group, domain=named)
    shards_text = group[0].annotations.get(SHARDS_ANNOTATION, "")
    shards = int(shards_text) if shards_text.isdigit() else len(group)
    why, loss, due = _lost(group, shards, nodes, clock)
    node_lost = loss in NODE_LOSSES
    name, domain_ready, domain_why, domain_due = _domain(group, domain, clock)
    if why is None and domain_why is not None:
        why, loss = domain_why, "compute-domain"
    outdated = any(p.annotations.get(TEMPLATE_HASH_ANNOTATION) != digest for p in group)
    ready = why is None and all(p.ready for p in group) and (domain_ready or not name)
    dues = [d for d in (due, domain_due) if d is not None]
    return ReplicaState(
        index,
        "Broken" if why else "Running",
        group,
        why,
        outdated,
        ready,
        node_lost,
        name,
        domain_ready,
        loss=loss,
        due=min(dues) if why is None and dues else None,
    )


def classify(
    pods: Iterable[PodInfo | Mapping[str, Any]],
    replicas: int | Collection[int],
    *,
    digest: str,
    nodes: Mapping[str, bool],
    now: datetime,
    unschedulable_after: float,
    domains: Mapping[int, DomainInfo | Mapping[str, Any]] | None = None,
    domain_after: float = 300.0,
    number: Callable[[PodInfo], int | None] | None = None,
) -> list[ReplicaState]:
    """Every replica index that is wanted, still has pods or a ComputeDomain, in index order.

    `replicas` is how many are wanted (`0 .. replicas - 1`) or the wanted numbers; `nodes` maps
    node name to readiness; `digest` is the template hash pods must carry; `domains` maps
    replica index to its ComputeDomain as the watch shows it; `number` says which replica a
    pod is (default: its `rackscale.dev/replica` label).
    """
    clock = Clock(now, unschedulable_after, domain_after)
    wanted = set(range(replicas)) if isinstance(replicas, int) else set(replicas)
    typed = {i: DomainInfo.of(d) for i, d in (domains or {}).items()}
    grouped: dict[int, list[PodInfo]] = {}
    for pod in map(PodInfo.of, pods):
        index = number(pod) if number is not None else _index(pod, REPLICA_LABEL)
        if index is not None:
            grouped.setdefault(index, []).append(pod)
    states = []
    for index in sorted(wanted | set(grouped) | set(typed)):
        group = sorted(grouped.get(index, []), key=lambda p: _index(p, SHARD_LABEL) or 0)
        state = (
            _state(
                index,
                group,
                replicas=wanted,
                digest=digest,
                nodes=nodes,
                domain=typed.get(index),
                clock=clock,
            )
            if group
            else _leftover(index, typed.get(index), wanted)
        )
        if state is not None:
            states.append(state)
    return states


def due(states: Iterable[ReplicaState]) -> float | None:
    """Seconds until the clock alone may change one of these states (None: never)."""
    return min((s.due for s in states if s.due is not None), default=None)


def decide(states: list[ReplicaState]) -> Actions:
    """Delete excess and broken replicas, place missing ones, replace one outdated at a time."""
    actions = Actions()
    unavailable = 0
    for state in states:
        if state.leftover_domain:
            actions.delete_domains.append(state.leftover_domain)
        if state.condition == "Excess":
            actions.delete.append((state, "scale-down"))
        elif state.condition == "Broken":
            actions.delete.append((state, "restart"))
        elif state.condition == "Missing":
            actions.place.append(state.replica)
        elif state.condition == "Terminating":
            actions.waiting.append(state.replica)
            if state.node_lost:  # going away, but stuck on a node that cannot confirm it
                actions.delete.append((state, "force"))
        if state.condition in ("Broken", "Missing", "Terminating") or (
            state.condition == "Running" and not state.ready and not state.outdated
        ):
            unavailable += 1
    running = [s for s in states if s.condition == "Running" and s.outdated]
    # An outdated replica that does not serve costs nothing to replace; a serving one is
    # replaced only while every other replica serves (at most one unavailable at a time).
    idle = [s for s in running if not s.ready]
    if idle:
        actions.delete.append((idle[0], "update"))
    elif running and unavailable == 0:
        actions.delete.append((running[0], "update"))
    return actions


# ---- serving groups (spec.roles) ---------------------------------------------------------------


def decide_groups(
    states: list[ReplicaState], *, colocated: bool = True, stride: int = 1000
) -> Actions:
    """`decide` for a deployment with spec.roles: `states` are its role replicas, numbered
    `group x stride + ...`. A group whose role replicas
    all are missing is placed whole; a lost role replica restarts alone beside its group when
    the group shares no ComputeDomain, else the whole group restarts; a role replica the group
    never had (`added`: its role scaled up) is placed beside its group, joining its
    ComputeDomain, and nothing of the group restarts for it; excess role replicas go (scale
    down: whole groups, or a role's highest indexes); an outdated group is replaced whole, one
    group at a time while the others serve. Not `colocated` (colocate None), each role
    replica's ComputeDomain is its own, and a lost one restarts alone."""
    actions = Actions()
    groups: dict[int, list[ReplicaState]] = {}
    for state in states:
        groups.setdefault(state.replica // stride, []).append(state)
    unavailable = 0
    outdated: list[list[ReplicaState]] = []
    idle: list[list[ReplicaState]] = []
    for group, members in sorted(groups.items()):
        _decide_group(group, members, actions, colocated=colocated)
        running = [m for m in members if m.condition == "Running"]
        if all(m.condition == "Excess" for m in members):
            continue
        # A group refused the role replicas it is to grow by serves as it was.
        whole = bool(running) and all(
            m.condition in ("Running", "Excess") or m.added for m in members
        )
        serving = whole and all(m.ready for m in running)
        if whole and any(m.outdated for m in running):
            (outdated if serving else idle).append(running)
        elif not serving:
            unavailable += 1
    if idle:
        actions.delete += [(m, "update") for m in idle[0]]
    elif outdated and unavailable == 0:
        actions.delete += [(m, "update") for m in outdated[0]]
    return actions


def _decide_group(
    group: int, members: list[ReplicaState], actions: Actions, *, colocated: bool
) -> None:
    """One serving group's deletes and what of it is placed."""
    if not any(m.pods for m in members):
        for name in dict.fromkeys(m.leftover_domain for m in members if m.leftover_domain):
            actions.delete_domains.append(name)
    if _going(members, actions):
        return
    missing = [m for m in members if m.condition == "Missing"]
    if missing and len(missing) == len(members):
        actions.groups.append(group)
        return
    lost = [m for m in missing if not m.added]
    broken = [m for m in members if m.condition == "Broken"]
    if colocated and any(m.domain for m in members) and (broken or lost):
        _restart_whole(group, members, broken[0] if broken else lost[0], actions)
        return
    actions.delete += [(m, "restart") for m in broken]
    if missing and not broken:
        racks = tuple(sorted({r for m in members if m.condition == "Running" for r in m.racks}))
        actions.beside += [(m.replica, racks) for m in lost]
        actions.grow += [(m.replica, racks) for m in missing if m.added]


def _going(members: list[ReplicaState], actions: Actions) -> bool:
    """A group scaled away (its role replicas deleted), or with pods still going away (nothing
    of it is placed until they are gone)."""
    going = False
    for member in members:
        if member.condition == "Excess":
            actions.delete.append((member, "scale-down"))
            going = True
        elif member.condition == "Terminating":
            actions.waiting.append(member.replica)
            going = True
            if member.node_lost:
                actions.delete.append((member, "force"))
    return going


def _restart_whole(
    group: int, members: list[ReplicaState], lost: ReplicaState, actions: Actions
) -> None:
    """A group sharing a ComputeDomain lost a member: all of it restarts, with a fresh one."""
    why = lost.why or f"replica {lost.replica} is gone"
    text = f"serving group {group} restarts whole with its ComputeDomain ({why})"
    actions.delete += _restart(members, text, keep=lost)


def restart_group(
    group: int, members: list[ReplicaState], why: str
) -> list[tuple[ReplicaState, Cause]]:
    """The one other reason a serving group restarts whole: a lost member no longer fits
    beside the rest (placement's `beside-group`), so the whole group is placed again. Its
    members with pods not already going are deleted, each saying why."""
    text = f"serving group {group} is placed again whole: {why}"
    return _restart([m for m in members if m.condition != "Terminating"], text)


def _restart(
    members: list[ReplicaState], why: str, keep: ReplicaState | None = None
) -> list[tuple[ReplicaState, Cause]]:
    """Delete every member with pods, each saying `why` (but `keep`, which says its own)."""
    out: list[tuple[ReplicaState, Cause]] = []
    for member in members:
        if member is not keep:
            member.why = why
        if member.pods:
            out.append((member, "restart"))
    return out
