"""Serving groups (spec.roles): one of each role at its count, placed whole or not at all.

Each role replica is placed by the engine like a replica of its own (`InferenceDeployment.
role_view`), so every per-replica guarantee holds for it. What this module adds is the group:
with `colocate: Rack` every role replica of a group lies in one rack, with `Block` in one block;
the unit chosen is the best fit (the least free GPUs that holds the whole group, so empty racks
stay whole), trying each unit until one holds them all and undoing every reservation of a unit
that does not. With ComputeDomains the group shares one, `<name>-g<group>`, and one pod per tray
applies to the group as a whole (guarantee 15). `colocate: None` places each role replica alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Literal

from rackscale.api.inferencedeployment import InferenceDeployment, RoleReplica
from rackscale.placement.engine import (
    ORDER_TRIES,
    Decision,
    Placeable,
    in_pools,
    needs_compute_domain,
    pass_order,
    place_replica,
    search_orders,
    undo_all,
)
from rackscale.placement.reasons import (
    BesideGroup,
    GroupBlockLabelMissing,
    GroupCannotGrow,
    GroupNoRoom,
    Note,
    Reason,
    ServingGroup,
)
from rackscale.placement.shape import shape_of
from rackscale.topology.snapshot import Pool, Rack, Snapshot, group_compute_domain_name


def place_groups(
    snapshot: Snapshot, waiting: Iterable[Placeable], tries: int = ORDER_TRIES
) -> list[tuple[Placeable, Decision]]:
    """Place waiting serving groups together, reserving as it goes, as `place_replicas` places
    replicas: first in `pass_order`; when that leaves a group out of its pool, `tries` more
    orders (deterministic shuffles of the largest-first order by up to 40% of a group's size,
    groups keeping their racks first), keeping the one placing the most GPUs in pools, the
    first on a tie."""
    return search_orders(
        pass_order(waiting),
        lambda o, explain: _try_groups(snapshot, o, explain=explain),
        done=lambda first: all(
            _in_pool(d) or w.deployment.spec.placement.rack_pool is None for w, d in first
        ),
        score=in_pools,
        undo=undo_all,
        tries=tries,
    )


def _try_groups(
    snapshot: Snapshot, order: list[Placeable], *, explain: bool
) -> list[tuple[Placeable, Decision]]:
    return [
        (want, place_group(snapshot, want.deployment, want.number, want.prefer, explain=explain))
        for want in order
    ]


def _in_pool(decision: Decision) -> bool:
    return decision.placed and all(
        d.plan is not None and d.plan.mode == "Rack" for d in decision.decisions
    )


def place_group(
    snapshot: Snapshot,
    deployment: InferenceDeployment,
    group: int,
    prefer: Iterable[str] = (),
    *,
    explain: bool = True,
) -> Decision:
    """One serving group, whole or not at all (colocate Rack or Block), or role replica by role
    replica (colocate None). `prefer` names racks to try first, as for `place_replica`."""
    spec = deployment.spec
    assert spec.roles, f"{deployment.key} has no spec.roles"
    members = spec.role_replicas(group)
    views = {r.name: deployment.role_view(r.name) for r in spec.roles}
    result = Decision(group, None)
    pool = snapshot.pools.get(spec.placement.rack_pool or "")
    if spec.colocation == "None" or pool is None or not pool.racks:
        # Independent gangs; a missing pool or device-plugin mode is the engine's to explain.
        for member in members:
            decision = place_replica(snapshot, views[member.role], member.replica, prefer)
            result.roles.append((member, decision))
        return result
    domain = _group_domain(deployment, pool, views, group)
    result.compute_domain = (
        group_compute_domain_name(deployment.name, group) if domain is not None else None
    )
    misses: Counter[str] = Counter()
    strict = {name: _never(view) for name, view in views.items()}
    for racks in _units(deployment, pool, frozenset(prefer)):
        placed = _try_unit(snapshot, strict, members, racks, domain=domain, misses=misses)
        if placed is not None:
            result.roles = placed
            return result
    result.why = _why_not(deployment, pool, group, misses, explain=explain)
    result.roles = _unplaced(snapshot, deployment, views, members, result.why)
    result.compute_domain = None
    return result


def restart_role_replica(
    snapshot: Snapshot,
    deployment: InferenceDeployment,
    replica: int,
    group_racks: Iterable[str],
    *,
    added: bool = False,
) -> Decision:
    """A lost role replica (`replica` as numbered in the deployment) placed again beside the
    rest of its group: on the group's rack (colocate Rack) or the racks of its block (Block),
    never elsewhere; no plan (`beside-group`) when it does not fit there. Only a group that
    shares no ComputeDomain gets a lost member back this way (lifecycle restarts one that
    does whole: IMEX state does not survive a member's loss), so the member joins none.
    `added`: a role replica the group grows by (its role scaled up), placed the same way but
    joining the group's ComputeDomain (guarantee 13 holds with the group's pods), and refused
    (`group-cannot-grow`) when it does not fit. colocate None: the replica is placed as any
    replica."""
    spec = deployment.spec
    member = spec.role_replica(replica)
    view = deployment.role_view(member.role)
    pool = snapshot.pools.get(spec.placement.rack_pool or "")
    if spec.colocation == "None" or pool is None:
        return place_replica(snapshot, view, replica)
    views = {r.name: view if r.name == member.role else deployment.role_view(r.name)
             for r in spec.roles or []}  # fmt: skip
    domain = _group_domain(deployment, pool, views, member.group) if added else None
    held = set(group_racks)
    if spec.colocation == "Block":
        blocks = {pool.racks[r].block for r in held if r in pool.racks}
        held = {r.name for r in pool.racks.values() if r.block is not None and r.block in blocks}
    decision = place_replica(
        snapshot, _never(view), replica, only=held, group=domain, alone=not added
    )
    if decision.plan is None and decision.why is not None:
        unit = "block" if spec.colocation == "Block" else "rack"
        decision.why = (
            Reason(
                "group-cannot-grow", GroupCannotGrow(member.group, member.role, unit, decision.why)
            )
            if added
            else Reason("beside-group", BesideGroup(member.group, decision.why))
        )
    return decision


def grow_group(
    snapshot: Snapshot,
    deployment: InferenceDeployment,
    replicas: Iterable[int],
    group_racks: Iterable[str],
) -> list[Decision]:
    """The role replicas one serving group grows by (its roles scaled up), placed beside it
    (`restart_role_replica`, `added`) all or none: when one does not fit, the others are undone
    and each carries the reason (`group-cannot-grow`), so the group serves as it was."""
    racks, wanted = tuple(group_racks), list(replicas)
    done: list[Decision] = []
    for replica in wanted:
        decision = restart_role_replica(snapshot, deployment, replica, racks, added=True)
        if decision.plan is None and deployment.spec.colocation != "None":
            for placed in reversed(done):
                if placed.reservation is not None:
                    placed.reservation.undo()
            return [Decision(r, None, decision.why) for r in wanted]
        done.append(decision)
    return done


def fits_in(
    snapshot: Snapshot, deployment: InferenceDeployment, group: int, racks: Iterable[str]
) -> bool:
    """Whether the serving group could be placed on just these racks now (nothing is kept)."""
    spec = deployment.spec
    assert spec.roles
    pool = snapshot.pools[spec.placement.rack_pool or ""]
    views = {r.name: _never(deployment.role_view(r.name)) for r in spec.roles}
    domain = _group_domain(deployment, pool, views, group)
    unit = [pool.racks[name] for name in racks]
    placed = _try_unit(
        snapshot, views, spec.role_replicas(group), unit, domain=domain, misses=Counter()
    )
    for _, decision in reversed(placed or []):
        assert decision.reservation is not None
        decision.reservation.undo()
    return placed is not None


def _group_domain(
    deployment: InferenceDeployment,
    pool: Pool,
    views: dict[str, InferenceDeployment],
    group: int,
) -> int | None:
    """`group` when its role replicas share a ComputeDomain (`needs_compute_domain`, the pods
    of the whole group counted: guarantee 15), else None."""
    roles = deployment.spec.roles or []
    pods = sum(r.replicas * shape_of(views[r.name].spec, pool.node_gpus).pods for r in roles)
    return group if needs_compute_domain(pool, deployment, pods) else None


def _units(deployment: InferenceDeployment, pool: Pool, prefer: frozenset[str]) -> list[list[Rack]]:
    """The racks (colocate Rack) or blocks (Block) that may hold the group, in the order tried:
    those it held before first, then (spread Spread) those holding none of its deployment,
    then best fit, the least free GPUs first; units with fewer free GPUs than the group needs
    are left out."""
    spec = deployment.spec
    if spec.colocation == "Block":
        blocks = pool.blocks()
        units = [racks for block, racks in sorted(blocks.items(), key=_name) if block is not None]
    else:
        units = [[rack] for rack in pool.racks.values()]
    need = spec.gpus_per_replica
    spread = spec.placement.spread == "Spread"

    def key(unit: list[Rack]) -> tuple[bool, bool, int, str]:
        held = not any(r.name in prefer for r in unit)
        own = spread and any(r.deployments.get(deployment.key) for r in unit)
        return (held, own, _room(unit), unit[0].name)

    return sorted((u for u in units if _room(u) >= need), key=key)


def _name(item: tuple[str | None, list[Rack]]) -> str:
    return item[0] or ""


def _room(unit: list[Rack]) -> int:
    """Free GPUs of every node of the unit, whatever their taints: an upper bound of its room."""
    return sum(n.free for rack in unit for n in rack.nodes)


def _try_unit(
    snapshot: Snapshot,
    views: dict[str, InferenceDeployment],
    members: list[RoleReplica],
    racks: list[Rack],
    *,
    domain: int | None,
    misses: Counter[str],
) -> list[tuple[RoleReplica, Decision]] | None:
    """Place every role replica on `racks` only, the largest first (`views` without a
    fallback); on the first that does not fit, undo the others, count the miss by role and
    return None."""
    only = frozenset(r.name for r in racks)
    done: list[tuple[RoleReplica, Decision]] = []
    for member in sorted(members, key=lambda m: -views[m.role].spec.gpus_per_replica):
        view = views[member.role]
        decision = place_replica(
            snapshot, view, member.replica, explain=False, only=only, group=domain
        )
        if decision.plan is None:
            for _, placed in reversed(done):
                assert placed.reservation is not None
                placed.reservation.undo()
            misses[member.role] += 1
            return None
        done.append((member, decision))
    return sorted(done, key=lambda d: d[0].replica)


def _never(view: InferenceDeployment) -> InferenceDeployment:
    """The role view without a device-plugin fallback: a trial in one unit either fits or not."""
    placement = view.spec.placement.model_copy(update={"fallback": "Never"})
    spec = view.spec.model_copy(update={"placement": placement})
    return InferenceDeployment(metadata=view.metadata, spec=spec)


def _unplaced(
    snapshot: Snapshot,
    deployment: InferenceDeployment,
    views: dict[str, InferenceDeployment],
    members: list[RoleReplica],
    reason: Reason,
) -> list[tuple[RoleReplica, Decision]]:
    """No unit holds the group: all of it in device-plugin mode (fallback DevicePlugin), or all
    of it pending. The first role replica carries the reason, the others point to it."""
    first = members[0].replica
    out = []
    fallback = deployment.spec.placement.fallback == "DevicePlugin"
    for member in members:
        why = reason if member.replica == first else reason.with_replica(first)
        if fallback:
            view = _device_plugin_view(views[member.role])
            plan = place_replica(snapshot, view, member.replica).plan
            out.append((member, Decision(member.replica, plan, why.noted(Note("fallback")))))
        else:
            out.append((member, Decision(member.replica, None, why)))
    return out


def _device_plugin_view(view: InferenceDeployment) -> InferenceDeployment:
    placement = view.spec.placement.model_copy(update={"rack_pool": None, "exclusive": False})
    spec = view.spec.model_copy(update={"placement": placement})
    return InferenceDeployment(metadata=view.metadata, spec=spec)


def _why_not(
    deployment: InferenceDeployment,
    pool: Pool,
    group: int,
    misses: Counter[str],
    *,
    explain: bool,
) -> Reason:
    """Why no unit holds the serving group whole: the pool lacks a block label for colocate
    Block, or units have too few free GPUs or no room for a role replica beside the rest."""
    spec = deployment.spec
    unit: Literal["rack", "block"] = "block" if spec.colocation == "Block" else "rack"
    missing = unit == "block" and not pool.spec.block_label
    code: Literal["group-no-room", "group-block-label-missing"] = (
        "group-block-label-missing" if missing else "group-no-room"
    )
    if not explain:
        return Reason(code)
    roles = tuple((r.name, r.replicas, r.parallelism.gpus) for r in spec.roles or [])
    serving = ServingGroup(group, unit, roles, spec.gpus_per_replica)
    if missing:
        return Reason(code, GroupBlockLabelMissing(serving, pool.name))
    units = (
        [r for b, r in pool.blocks().items() if b is not None]
        if unit == "block"
        else [[r] for r in pool.racks.values()]
    )
    small = tuple(sorted(_room(u) for u in units if _room(u) < spec.gpus_per_replica))
    return Reason(code, GroupNoRoom(serving, small, tuple(sorted(misses.items()))))
