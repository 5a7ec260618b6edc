"""What each replica of an InferenceDeployment is doing, read from its pods, and what to do next.

Pure: pods, nodes and the clock in; replica states and actions out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from rackscale.render import (
    COMPUTE_DOMAIN_LABEL,
    FIRST_RANK_ANNOTATION,
    MODE_ANNOTATION,
    RACKS_ANNOTATION,
    REPLICA_LABEL,
    SHARD_LABEL,
    SHARDS_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
)
from rackscale.topology.objects import gpu_request, pinned_node

Condition = Literal["Missing", "Running", "Terminating", "Broken", "Excess"]


@dataclass(slots=True)
class ReplicaState:
    """One replica index: its pods (shard order) and what is wrong with it, if anything."""

    replica: int
    condition: Condition
    pods: list[dict[str, Any]] = field(default_factory=list)
    why: str | None = None  # Broken: what was lost
    outdated: bool = False
    ready: bool = False
    node_lost: bool = False  # the kubelet cannot confirm a graceful delete
    domain: str | None = None  # its ComputeDomain, named by its pods
    domain_ready: bool = False
    leftover_domain: str | None = None  # a ComputeDomain its pods no longer use: delete it

    @property
    def mode(self) -> str:
        if not self.pods:
            return "Rack"
        return _annotation(self.pods[0], MODE_ANNOTATION) or "Rack"

    @property
    def racks(self) -> list[str]:
        value = _annotation(self.pods[0], RACKS_ANNOTATION) if self.pods else ""
        return [r for r in value.split(",") if r]


@dataclass(slots=True)
class Actions:
    """One reconcile step: replicas to delete (and why), replicas to place."""

    delete: list[tuple[ReplicaState, str]] = field(default_factory=list)  # (replica, cause)
    place: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # old pods (or domain) still going away
    delete_domains: list[str] = field(default_factory=list)  # ComputeDomains of no pod


def _annotation(pod: Mapping[str, Any], key: str) -> str:
    return str(((pod.get("metadata") or {}).get("annotations") or {}).get(key) or "")


def _label(pod: Mapping[str, Any], key: str) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(key) or "")


def _condition(pod: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    cond = _condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True")


def pod_node(pod: Mapping[str, Any]) -> str | None:
    return pinned_node(dict(pod))


def pod_gpus(pod: Mapping[str, Any], resource: str) -> int:
    return gpu_request(dict(pod), resource)


def first_rank(pod: Mapping[str, Any]) -> int:
    value = _annotation(pod, FIRST_RANK_ANNOTATION)
    return int(value) if value.isdigit() else 0


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _index(pod: Mapping[str, Any], key: str) -> int | None:
    value = _label(pod, key)
    return int(value) if value.isdigit() else None


def _lost(
    pods: list[dict[str, Any]],
    shards: int,
    nodes: Mapping[str, bool],
    now: datetime,
    unschedulable_after: float,
) -> tuple[str | None, bool]:
    """Why a replica can no longer run as it is (None: it can), and whether a node is lost."""
    have = {_index(p, SHARD_LABEL) for p in pods}
    missing = [s for s in range(shards) if s not in have]
    for pod in pods:
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Failed", "Succeeded"):
            return f"pod {name} {phase.lower()}", False
        node = pod_node(pod)
        bound = bool((pod.get("spec") or {}).get("nodeName"))
        if node is not None and node not in nodes:
            return f"node {node} of pod {name} is gone", True
        if node is not None and bound and not nodes[node]:
            return f"node {node} of pod {name} is NotReady", True
        if node is not None and not bound:
            scheduled = _condition(pod, "PodScheduled") or {}
            created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
            stuck = scheduled.get("status") == "False"
            if stuck and created and (now - created).total_seconds() > unschedulable_after:
                why = scheduled.get("message") or scheduled.get("reason") or "unschedulable"
                return (
                    f"pod {name} could not be scheduled on node {node} for "
                    f"{int(unschedulable_after)}s ({why})",
                    False,
                )
    if missing:
        return f"shard {missing[0]} of {shards} is gone", False
    return None, False


def _domain(
    group: list[dict[str, Any]],
    domain: Mapping[str, Any] | None,
    now: datetime,
    timeout: float,
) -> tuple[str | None, bool, str | None]:
    """The replica's ComputeDomain (named by its pods), whether it is Ready, and why the
    replica must restart for it (None: it need not): IMEX state cannot be repaired in place."""
    name = _label(group[0], COMPUTE_DOMAIN_LABEL) or None
    if name is None:
        return None, False, None
    meta = (domain or {}).get("metadata") or {}
    if meta.get("name") != name or meta.get("deletionTimestamp"):
        domain = None
    ready = domain is not None and (domain.get("status") or {}).get("status") == "Ready"
    if ready:
        return name, True, None
    # Not Ready (or not shown yet): counted from the domain's creation, else its pods'.
    times = [parse_time(meta.get("creationTimestamp"))] if domain is not None else []
    times += [parse_time((p.get("metadata") or {}).get("creationTimestamp")) for p in group]
    since = min((t for t in times if t is not None), default=None)
    if since is not None and (now - since).total_seconds() > timeout:
        what = "did not turn Ready" if domain is not None else "is gone"
        return name, False, f"ComputeDomain {name} {what} within {int(timeout)}s"
    return name, False, None


def classify(
    pods: Iterable[dict[str, Any]],
    replicas: int,
    *,
    digest: str,
    nodes: Mapping[str, bool],
    now: datetime,
    unschedulable_after: float,
    domains: Mapping[int, Mapping[str, Any]] | None = None,
    domain_after: float = 300.0,
) -> list[ReplicaState]:
    """Every replica index that is wanted, still has pods or a ComputeDomain, in index order.

    `nodes` maps node name to readiness; `digest` is the template hash pods must carry;
    `domains` maps replica index to its ComputeDomain as the watch shows it.
    """
    domains = domains or {}
    grouped: dict[int, list[dict[str, Any]]] = {}
    for pod in pods:
        index = _index(pod, REPLICA_LABEL)
        if index is not None:
            grouped.setdefault(index, []).append(pod)
    states = []
    for index in sorted(set(range(replicas)) | set(grouped) | set(domains)):
        group = sorted(grouped.get(index, []), key=lambda p: _index(p, SHARD_LABEL) or 0)
        if not group:
            meta = (domains.get(index) or {}).get("metadata") or {}
            if not meta:
                if index < replicas:
                    states.append(ReplicaState(index, "Missing"))
                continue
            # Its pods are gone but not its ComputeDomain: a replica gets a fresh one.
            leftover = None if meta.get("deletionTimestamp") else str(meta.get("name"))
            states.append(ReplicaState(index, "Terminating", leftover_domain=leftover))
            continue
        named = _label(group[0], COMPUTE_DOMAIN_LABEL) or None
        if any((p.get("metadata") or {}).get("deletionTimestamp") for p in group):
            # A pod on a lost node never hears from its kubelet: only a forced delete ends it.
            lost = any(
                bool((p.get("spec") or {}).get("nodeName")) and not nodes.get(str(pod_node(p)))
                for p in group
            )
            states.append(ReplicaState(index, "Terminating", group, domain=named, node_lost=lost))
            continue
        if index >= replicas:
            states.append(ReplicaState(index, "Excess", group, domain=named))
            continue
        shards_text = _annotation(group[0], SHARDS_ANNOTATION)
        shards = int(shards_text) if shards_text.isdigit() else len(group)
        why, node_lost = _lost(group, shards, nodes, now, unschedulable_after)
        domain, domain_ready, domain_why = _domain(group, domains.get(index), now, domain_after)
        why = why or domain_why
        outdated = any(_annotation(p, TEMPLATE_HASH_ANNOTATION) != digest for p in group)
        ready = why is None and all(pod_ready(p) for p in group) and (domain_ready or not domain)
        condition: Condition = "Broken" if why else "Running"
        states.append(
            ReplicaState(
                index, condition, group, why, outdated, ready, node_lost, domain, domain_ready
            )
        )
    return states


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
            unavailable += 1
        elif state.condition == "Missing":
            actions.place.append(state.replica)
            unavailable += 1
        elif state.condition == "Terminating":
            actions.waiting.append(state.replica)
            if state.node_lost:  # going away, but stuck on a node that cannot confirm it
                actions.delete.append((state, "force"))
            unavailable += 1
        elif not state.ready and not state.outdated:
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
