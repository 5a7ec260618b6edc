"""One pass's placement batch, in the one order the operator, `rackscale explain` and
`rackscale plan --together` all place in.

First role replicas returning beside their serving groups (only their group's racks will do),
then groups growing by a scaled role (all or none), then whole serving groups, then every
other waiting replica; each step sees what the ones before it reserved.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from rackscale.api.inferencedeployment import InferenceDeployment
from rackscale.placement.engine import (
    ORDER_TRIES,
    Decision,
    DeploymentPlan,
    Placeable,
    intended_mode,
    place_replica,
    place_replicas,
)
from rackscale.placement.groups import grow_group, place_group, place_groups, restart_role_replica
from rackscale.topology.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class Beside:
    """Role replicas (spec.roles) to place beside the rest of their serving group, on the racks
    it holds: one lost member returning (`restart_role_replica`), or, `added`, the members a
    group grows by when its roles scale up (`grow_group`: all or none)."""

    deployment: InferenceDeployment
    replicas: tuple[int, ...]
    racks: tuple[str, ...]
    added: bool = False


@dataclass(slots=True)
class Batch:
    """What one pass places: role replicas beside their groups, then `waiting` (serving groups
    and replicas), each list with the oldest deployment first."""

    beside: list[Beside] = field(default_factory=list)
    waiting: list[Placeable] = field(default_factory=list)

    def __bool__(self) -> bool:
        """Whether it places anything: room kept for terminating replicas matters only
        against placements."""
        return bool(self.beside) or any(not w.terminating for w in self.waiting)


@dataclass(slots=True)
class Placed:
    """A batch's decisions, in the order they were made (the order their objects are created
    in), each with what it decided for; their reservations stand in the snapshot until
    `undo`."""

    beside: list[tuple[Beside, list[Decision]]] = field(default_factory=list)
    waiting: list[tuple[Placeable, Decision]] = field(default_factory=list)

    def replicas(self) -> Iterator[tuple[InferenceDeployment, Decision]]:
        """Every replica's (and role replica's) decision, with its deployment."""
        for want, decisions in self.beside:
            yield from ((want.deployment, d) for d in decisions)
        for placeable, decision in self.waiting:
            if not placeable.terminating:
                yield from ((placeable.deployment, d) for d in decision.decisions)

    def undo(self) -> None:
        """Leave the snapshot as the batch found it."""
        for _, decision in reversed(self.waiting):
            decision.undo()
        for _, decisions in reversed(self.beside):
            for decision in reversed(decisions):
                decision.undo()


def place_batch(snapshot: Snapshot, batch: Batch, tries: int = ORDER_TRIES) -> Placed:
    """Place one pass's batch in the pass order, reserving as it goes."""
    placed = Placed()
    for want in batch.beside:
        if want.added:
            decisions = grow_group(snapshot, want.deployment, want.replicas, want.racks)
        else:
            decisions = [
                restart_role_replica(snapshot, want.deployment, r, want.racks)
                for r in want.replicas
            ]
        placed.beside.append((want, decisions))
    placed.waiting = place_pass(snapshot, batch.waiting, tries)
    return placed


def place_pass(
    snapshot: Snapshot, waiting: Iterable[Placeable], tries: int = ORDER_TRIES
) -> list[tuple[Placeable, Decision]]:
    """Place what waits together: whole serving groups first (`place_groups`), then replicas
    (`place_replicas`: largest first, other orders tried when some do not fit)."""
    waiting = list(waiting)
    groups = [w for w in waiting if w.is_group]
    replicas = [w for w in waiting if not w.is_group]
    out = place_groups(snapshot, groups, tries) if groups else []
    return out + (place_replicas(snapshot, replicas, tries) if replicas else [])


def place_together(
    snapshot: Snapshot, deployments: list[InferenceDeployment]
) -> list[DeploymentPlan]:
    """Plan deployments as one operator pass places them when all wait at once
    (`place_batch`); with spec.roles a plan's decisions are its role replicas', in order."""
    waiting = [Placeable(d, n) for d in deployments for n in range(d.spec.replicas)]
    return _plans(deployments, place_batch(snapshot, Batch(waiting=waiting)))


def place(snapshot: Snapshot, deployments: Iterable[InferenceDeployment]) -> list[DeploymentPlan]:
    """Plan deployments in order, each seeing the reservations of those before it."""
    return [place_deployment(snapshot, d) for d in deployments]


def place_deployment(
    snapshot: Snapshot, deployment: InferenceDeployment, numbers: Iterable[int] | None = None
) -> DeploymentPlan:
    """Place the given replicas (with spec.roles, serving groups; default: all of them) in
    order, reserving as it goes."""
    plan = empty_plan(deployment)
    for number in range(deployment.spec.replicas) if numbers is None else numbers:
        if deployment.spec.roles:
            plan.decisions += place_group(snapshot, deployment, number).decisions
        else:
            plan.decisions.append(place_replica(snapshot, deployment, number))
    return plan


def empty_plan(deployment: InferenceDeployment) -> DeploymentPlan:
    return DeploymentPlan(deployment.key, intended=intended_mode(deployment))


def _plans(deployments: list[InferenceDeployment], placed: Placed) -> list[DeploymentPlan]:
    plans = {id(d): empty_plan(d) for d in deployments}
    for deployment, decision in placed.replicas():
        plans[id(deployment)].decisions.append(decision)
    for plan in plans.values():
        plan.decisions.sort(key=lambda d: d.replica)
    return [plans[id(d)] for d in deployments]
