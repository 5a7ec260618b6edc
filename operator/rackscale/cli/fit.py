"""What `rackscale plan` adds to each placement: memory needed against what its GPUs have, and
cost per hour, for the table and for JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from rackscale.api import InferenceDeployment
from rackscale.api.pricing import Price, cost_per_hour, money
from rackscale.placement import DeploymentPlan, ReplicaPlan
from rackscale.topology import Snapshot


@dataclass(frozen=True, slots=True)
class Fit:
    """One deployment's memory and cost figures."""

    needed_mib: int | None  # per replica
    available_mib: dict[int, int | None] = field(default_factory=dict)  # Rack replicas
    cost: tuple[Decimal, str] | None = None


def replica_memory(snapshot: Snapshot, replica: ReplicaPlan) -> int | None:
    """Summed memory of the replica's GPUs in MiB; None when a node's is unknown."""
    total = 0
    for pod in replica.pods:
        node = snapshot.nodes.get(pod.node or "")
        if node is None or node.gpu_memory_mib is None:
            return None
        total += pod.gpus * node.gpu_memory_mib
    return total


def fit_of(
    snapshot: Snapshot,
    plan: DeploymentPlan,
    deployment: InferenceDeployment,
    ordinary: Price | None,
) -> Fit:
    model = deployment.spec.model
    # With spec.roles each role replica holds the model and is checked on its own GPUs: no
    # one figure is "a replica's need", so none is shown.
    need = (
        model.need(deployment.spec.gpus_per_replica)
        if model and not deployment.spec.roles
        else None
    )
    available = {r.replica: replica_memory(snapshot, r) for r in plan.replicas if r.mode == "Rack"}
    pool = snapshot.pools.get(deployment.spec.placement.rack_pool or "")
    pricing = pool.spec.pricing if pool else None
    gpus = {
        mode: sum(p.gpus for r in plan.replicas if r.mode == mode for p in r.pods)
        for mode in ("Rack", "DevicePlugin")
    }
    cost = cost_per_hour(
        gpus["Rack"], gpus["DevicePlugin"], pricing.price if pricing else None, ordinary
    )
    return Fit(need.total_mib if need else None, available, cost)


def gib(mib: int, *, up: bool) -> str:
    whole = -(-mib // 1024) if up else mib // 1024
    return str(whole)


def memory_column(fit: Fit) -> str:
    """`641/1489 GiB`: one replica's need against the least any placed replica's GPUs have."""
    if fit.needed_mib is None:
        return "-"
    known = [m for m in fit.available_mib.values() if m is not None]
    if not fit.available_mib:
        have = "-"
    elif len(known) < len(fit.available_mib):
        have = "?"
    else:
        have = gib(min(known), up=False)
    return f"{gib(fit.needed_mib, up=True)}/{have} GiB"


def cost_column(fit: Fit) -> str:
    return f"{money(fit.cost[0])} {fit.cost[1]}" if fit.cost else "-"


def replica_note(fit: Fit, replica: int) -> str:
    """`, GPU memory 641 of 1489 GiB` on a placed replica's line."""
    if fit.needed_mib is None or replica not in fit.available_mib:
        return ""
    have = fit.available_mib[replica]
    shown = gib(have, up=False) if have is not None else "unknown"
    return f", GPU memory {gib(fit.needed_mib, up=True)} GiB needed of {shown}"


def totals(fits: list[Fit]) -> dict[str, Decimal]:
    """Cost per hour of every deployment, added up by currency."""
    out: dict[str, Decimal] = {}
    for fit in fits:
        if fit.cost:
            out[fit.cost[1]] = out.get(fit.cost[1], Decimal(0)) + fit.cost[0]
    return out


def total_line(fits: list[Fit]) -> str | None:
    sums = totals(fits)
    if not sums:
        return None
    return "total cost: " + ", ".join(f"{money(v)} {c}/h" for c, v in sorted(sums.items()))


def fit_json(fit: Fit) -> dict[str, Any]:
    out: dict[str, Any] = {
        "memoryNeededMiB": fit.needed_mib,
        "costPerHour": money(fit.cost[0]) if fit.cost else None,
        "currency": fit.cost[1] if fit.cost else None,
    }
    return out


def totals_json(fits: list[Fit]) -> dict[str, str]:
    return {c: money(v) for c, v in sorted(totals(fits).items())}
