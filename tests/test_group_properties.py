"""Property tests of serving groups (spec.roles): on random clusters every group keeps
guarantee 15 (design, section 4), and each of its role replicas the per-replica guarantees."""

from __future__ import annotations

from hypothesis import given, settings

from rackscale.api import InferenceDeployment
from rackscale.placement import Decision, Placeable, ReplicaPlan, place_together
from rackscale.placement.groups import fits_in, grow_group, place_group, place_groups
from rackscale.topology import Snapshot, build_snapshot
from tests.strategies import Cluster, group_workloads
from tests.test_engine_properties import SETTINGS, World, memory_need, usage

Workload = tuple[Cluster, list[InferenceDeployment], bool]


def snapshot_of(cluster: Cluster, compute_domains: bool) -> Snapshot:
    return build_snapshot(
        list(cluster.nodes),
        list(cluster.pods),
        list(cluster.pools),
        compute_domains=compute_domains,
    )


def units(world: World, dep: InferenceDeployment) -> list[list[str]]:
    """The world's racks (colocate Rack) or blocks (Block) of the deployment's pool, as racks
    the plans name."""
    pool = dep.spec.placement.rack_pool
    racks = sorted(r for r, p in world.rack_pool.items() if p == pool)
    if dep.spec.colocation == "Block":
        blocks: dict[str, list[str]] = {}
        for r in racks:
            if world.rack_block[r] is not None:
                blocks.setdefault(str(world.rack_block[r]), []).append(r)
        return [[world.rack_name(r) for r in rs] for _, rs in sorted(blocks.items())]
    return [[world.rack_name(r)] for r in racks]


def room(world: World, unit: list[str], pool: str) -> int:
    """Free GPUs of every node of the unit, as the raw objects and the plans so far say."""
    racks = [f"{pool}:{name}" for name in unit]
    return sum(world.free(n) for r in racks for n in world.rack_nodes[r])


def check_role_replica(world: World, view: InferenceDeployment, plan: ReplicaPlan) -> None:
    """Per-replica guarantees for one role replica in rack mode: whole, in its pool, on healthy
    nodes, TP and EP groups in one NVLink domain, in one unit of replicaScope, memory."""
    spec = view.spec
    par = spec.parallelism
    pods = plan.pods
    assert sum(p.gpus for p in pods) == par.gpus, "a role replica is placed whole"
    assert [p.first_rank for p in pods] == [i * pods[0].gpus for i in range(len(pods))]
    if spec.gpus_per_pod:
        assert pods[0].gpus == spec.gpus_per_pod
    pool = spec.placement.rack_pool
    assert pool is not None
    tolerations = (spec.template.get("spec") or {}).get("tolerations") or []
    for p in pods:
        assert world.pool_of.get(str(p.node)) == pool
        assert world.healthy(str(p.node), tolerations), f"unhealthy node {p.node} got a pod"
    nvlink = world.pools[pool].nvlink_domain
    domain_of_rank = [
        (p.node if nvlink == "Node" else world.rack_of[str(p.node)])
        for p in pods
        for _ in range(p.gpus)
    ]
    for size in (par.tensor, par.expert):
        for start in range(0, par.gpus, size):
            assert len(set(domain_of_rank[start : start + size])) == 1, "an NVLink group is cut"
    if spec.placement.replica_scope == "Node":
        assert len({p.node for p in pods}) == 1
    if spec.placement.replica_scope == "Rack":
        assert len({world.rack_of[str(p.node)] for p in pods}) == 1
    need = memory_need(view)
    for p in pods:
        mib = world.gpu_memory(str(p.node))
        assert need is None or mib is None or mib >= need[1], f"{p.node}: {mib} MiB per GPU"


def check_together(
    world: World,
    dep: InferenceDeployment,
    decision: Decision,
    fitting: list[tuple[list[str], int]],
) -> bool:
    """Whole or not at all, in one unit, the best fit; False: the group was not placed."""
    spec = dep.spec
    pool = str(spec.placement.rack_pool)
    plans = [d.plan for d in decision.decisions]
    rack_mode = [p for p in plans if p is not None and p.mode == "Rack"]
    # Whole or not at all: all in the pool, or none of it (all pending or all fallen back).
    assert len(rack_mode) in (0, len(plans)), f"group {decision.group} placed in part"
    if not rack_mode:
        assert fitting == [], f"refused ({decision.reason}) but {fitting[0][0]} holds it"
        assert decision.why is not None
        assert decision.why.explained
        assert decision.why.code in ("group-no-room", "group-block-label-missing")
        if spec.placement.fallback == "Never":
            assert all(p is None for p in plans)
        else:
            assert all(p is not None and p.mode == "DevicePlugin" for p in plans)
        return False
    used = sorted(decision.racks)
    unit = next(u for u, _ in fitting if set(used) <= set(u))
    if spec.colocation == "Rack":
        assert len(used) == 1, f"colocate Rack, group on {used}"
    # Best fit (after Spread): no unit that could hold the group has fewer free GPUs.
    chosen = room(world, unit, pool)
    own = {r for r, o in world.owners.items() if any(x[0] == dep.key for x in o if x)}
    fresh = [(u, f) for u, f in fitting if not own & {f"{pool}:{n}" for n in u}]
    pick = fresh if spec.placement.spread == "Spread" and fresh else fitting
    assert chosen == min(f for _, f in pick), f"{unit} ({chosen} free) is not the best fit"
    return True


def check_group(  # noqa: PLR0917
    world: World,
    snapshot: Snapshot,
    dep: InferenceDeployment,
    decision: Decision,
    fitting: list[tuple[list[str], int]],
    domains: dict[str, str],
) -> None:
    """Guarantee 15 for one group, judged against the world before it; then the world takes it."""
    spec = dep.spec
    members = spec.role_replicas(decision.group)
    assert [m for m, _ in decision.roles] == members
    assert [d.replica for d in decision.decisions] == [m.replica for m in members]
    plans = [d.plan for d in decision.decisions]
    rack_mode = [p for p in plans if p is not None and p.mode == "Rack"]
    pool = str(spec.placement.rack_pool)
    together = spec.colocation in ("Rack", "Block")
    if together and not check_together(world, dep, decision, fitting):
        return
    views = {r.name: dep.role_view(r.name) for r in spec.roles or []}
    for member, d in decision.roles:
        if d.plan is not None and d.plan.mode == "Rack":
            check_role_replica(world, views[member.role], d.plan)
    # ComputeDomains: the group's one, one pod per node for the whole group, none beside another.
    pods = [p for plan in rack_mode for p in plan.pods]
    if decision.compute_domain is not None:
        assert together
        assert decision.compute_domain == f"{dep.name}-g{decision.group}"
        assert all(plan.compute_domain == decision.compute_domain for plan in rack_mode)
        assert all(plan.domain_group == decision.group for plan in rack_mode)
        assert len({p.node for p in pods}) == len(pods), "two pods of one group's domain on a node"
    for plan in rack_mode:
        if plan.compute_domain:
            for p in plan.pods:
                other = domains.setdefault(str(p.node), f"{dep.namespace}/{plan.compute_domain}")
                assert other == f"{dep.namespace}/{plan.compute_domain}", f"{p.node}: two domains"
    for member, placed in zip(members, plans, strict=True):
        if placed is not None and placed.mode == "Rack":
            world.apply(views[member.role], placed)
    for n in {str(p.node) for p in pods}:
        assert world.used[n] <= world.allocatable[n], f"{n}: {world.used[n]} GPUs"  # guarantee 1
        rack = world.rack_of[n]
        if world.pools[pool].tenancy == "Exclusive":
            assert set(world.namespaces[rack]) <= {dep.namespace}


@settings(SETTINGS, max_examples=80)
@given(group_workloads())
def test_every_group_keeps_the_guarantees(workload: Workload) -> None:
    cluster, deployments, compute_domains = workload
    snapshot = snapshot_of(cluster, compute_domains)
    world = World(cluster)
    domains: dict[str, str] = {}
    for dep in deployments:
        for group in range(dep.spec.replicas):
            fitting = []
            if dep.spec.colocation != "None" and dep.spec.placement.rack_pool in snapshot.pools:
                pool = str(dep.spec.placement.rack_pool)
                for unit in units(world, dep):
                    if fits_in(snapshot, dep, group, unit):
                        fitting.append((unit, room(world, unit, pool)))
            before = usage(snapshot)
            decision = place_group(snapshot, dep, group)
            in_pool = any(d.plan and d.plan.mode == "Rack" for d in decision.decisions)
            if not in_pool and dep.spec.colocation != "None":
                assert usage(snapshot) == before, "a refused group left GPUs reserved"
            check_group(world, snapshot, dep, decision, fitting, domains)
            # What the snapshot holds is what the plans placed: no trial left GPUs behind.
            held = {n: snapshot.nodes[n].used for n in world.pool_of}
            assert held == {n: world.used[n] for n in world.pool_of}


@settings(SETTINGS, max_examples=40)
@given(group_workloads())
def test_same_inputs_give_the_same_groups_and_undo_restores(workload: Workload) -> None:
    cluster, deployments, compute_domains = workload
    results = []
    for _ in range(2):
        snapshot = snapshot_of(cluster, compute_domains)
        before = usage(snapshot)
        plans = place_together(snapshot, deployments)
        results.append([[(d.replica, d.plan, d.reason) for d in p.decisions] for p in plans])
        for plan in plans:
            plan.undo()
        assert usage(snapshot) == before
    assert results[0] == results[1]


def in_pools(decisions: list[tuple[Placeable, Decision]]) -> int:
    return sum(
        p.gpus
        for _, group in decisions
        for d in group.decisions
        if d.plan is not None and d.plan.mode == "Rack"
        for p in d.plan.pods
    )


@settings(SETTINGS, max_examples=40)
@given(group_workloads(max_deployments=4))
def test_a_pass_keeps_groups_whole_and_places_at_least_what_largest_first_does(
    workload: Workload,
) -> None:
    cluster, deployments, compute_domains = workload
    waiting = [Placeable(d, g) for d in deployments for g in range(d.spec.replicas)]
    largest_first = in_pools(place_groups(snapshot_of(cluster, compute_domains), waiting, tries=0))
    decided = place_groups(snapshot_of(cluster, compute_domains), waiting)
    assert in_pools(decided) >= largest_first
    assert sorted((w.deployment.key, w.number) for w, _ in decided) == sorted(
        (w.deployment.key, w.number) for w in waiting
    )
    for want, group in decided:
        rack_mode = [d.plan for d in group.decisions if d.plan and d.plan.mode == "Rack"]
        if want.deployment.spec.colocation == "Rack":
            assert len(rack_mode) in (0, len(group.decisions))
            assert len(group.racks) <= 1


def scaled(dep: InferenceDeployment, role: int) -> InferenceDeployment:
    """The deployment with one more replica of its `role`-th role in each serving group."""
    roles = [
        r.model_copy(update={"replicas": r.replicas + 1}) if i == role else r
        for i, r in enumerate(dep.spec.roles or [])
    ]
    return InferenceDeployment(
        metadata=dep.metadata, spec=dep.spec.model_copy(update={"roles": roles})
    )


@settings(SETTINGS, max_examples=60)
@given(group_workloads())
def test_a_group_grows_by_a_scaled_role_whole_or_not_at_all_inside_its_unit(
    workload: Workload,
) -> None:
    """Guarantee 15 through per-role scaling: the role replicas a placed group grows by are all
    placed or none (a refusal leaves no GPU reserved), inside the group's rack (or block), each
    keeping the per-replica guarantees; with a ComputeDomain they join the group's, each pod on
    a node that held no pod of any ComputeDomain, the group's own included (guarantee 13)."""
    cluster, deployments, compute_domains = workload
    snapshot = snapshot_of(cluster, compute_domains)
    world = World(cluster)
    for dep in deployments:
        pool = snapshot.pools.get(str(dep.spec.placement.rack_pool))
        if dep.spec.colocation == "None" or pool is None:
            continue
        decision = place_group(snapshot, dep, 0)
        if not decision.decisions or not all(
            d.plan is not None and d.plan.mode == "Rack" for d in decision.decisions
        ):
            decision.undo()
            continue
        views = {r.name: dep.role_view(r.name) for r in dep.spec.roles or []}
        for member, d in decision.roles:
            world.apply(views[member.role], d.plan)  # type: ignore[arg-type]  # placed, above
        grown = scaled(dep, 0)
        had = {m.replica for m in dep.spec.role_replicas(0)}
        added = [m.replica for m in grown.spec.role_replicas(0) if m.replica not in had]
        before = usage(snapshot)
        domains_before = {n: set(node.domains) for n, node in snapshot.nodes.items()}
        grew = grow_group(snapshot, grown, added, decision.racks)
        placed = [d.plan for d in grew if d.plan is not None and d.plan.mode == "Rack"]
        assert len(placed) in (0, len(added)), "a group grew in part"
        if not placed:
            assert usage(snapshot) == before, "a refused growth left GPUs reserved"
            assert {d.why.code for d in grew if d.why is not None} == {"group-cannot-grow"}
            continue
        held = set(decision.racks)
        if dep.spec.colocation == "Block":
            blocks = {pool.racks[r].block for r in held}
            held = {
                r.name for r in pool.racks.values() if r.block is not None and r.block in blocks
            }
        view = grown.role_view(grown.spec.role_replicas(0)[0].role)
        for plan in placed:
            assert set(plan.racks) <= held, f"grew onto {plan.racks}, outside {sorted(held)}"
            check_role_replica(world, view, plan)
            assert plan.compute_domain == decision.compute_domain
            if plan.compute_domain is not None:
                assert plan.domain_group == decision.group
                nodes = [str(p.node) for p in plan.pods]
                assert len(set(nodes)) == len(nodes), "two pods of the group's domain on a node"
                for n in nodes:
                    assert not domains_before[n], f"{n} held pods of {domains_before[n]}"
            world.apply(view, plan)
        for n in {str(p.node) for plan in placed for p in plan.pods}:
            assert world.used[n] <= world.allocatable[n], f"{n}: {world.used[n]} GPUs"
