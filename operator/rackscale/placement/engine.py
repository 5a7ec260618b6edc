"""The placement engine: (snapshot, deployment) -> where each replica's shards go, or why not.

Pure and deterministic. For each replica it filters racks (health, exclusivity, tenancy, room),
picks by best fit (least free GPUs first, so empty racks stay whole), spreads replicas of one
deployment over racks when asked, splits a replica over the fewest racks only when its scope
allows, and reserves what it chose in the snapshot so the next decision sees it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from sortedcontainers import SortedList

from rackscale.api.inferencedeployment import (
    BYTES_PER_PARAMETER,
    RUNTIME_OVERHEAD_MIB_PER_GPU,
    InferenceDeployment,
    MemoryNeed,
    RoleReplica,
)
from rackscale.placement.ledger import Reservation
from rackscale.placement.reasons import (
    BlockRoom,
    GpuMemory,
    InPool,
    Kept,
    MemoryRefused,
    NoNodeWithRoom,
    NoRacksWithRoom,
    NoRackWithRoom,
    Note,
    PodTooLarge,
    PoolEmpty,
    Problem,
    Reason,
)
from rackscale.placement.shape import Shape, shape_of
from rackscale.topology.snapshot import (
    Node,
    Pool,
    Rack,
    Snapshot,
    compute_domain_name,
    group_compute_domain_name,
)


@dataclass(frozen=True, slots=True)
class PodPlan:
    shard: int
    node: str | None  # None: kube-scheduler decides (device-plugin mode)
    gpus: int
    first_rank: int
    rack: str | None = None  # the node's rack (None in device-plugin mode)


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    replica: int
    mode: Literal["Rack", "DevicePlugin"]
    racks: tuple[str, ...]
    pods: tuple[PodPlan, ...]
    # The engine's word on NVLink, decided once here and read by render, status and the CLI:
    # its ComputeDomain (guarantee 13), by `needs_compute_domain`; the serving group sharing it
    # (None: the replica's own); and whether its GPUs reach each other over NVLink across nodes
    # (a rack-mode replica on several nodes of a pool whose NVLink domain is the rack).
    compute_domain: str | None = None
    domain_group: int | None = None
    nvlink_crosses_nodes: bool = False


@dataclass(slots=True)
class Decision:
    """What placing one `Placeable` decided. A replica: its plan (None: pending), why it is not
    in its pool, its reservation. A serving group: `replica` is the group's number, `roles`
    hold a decision per role replica, `why` says why no unit holds it whole, and
    `compute_domain` names the ComputeDomain its pods share."""

    replica: int
    plan: ReplicaPlan | None
    why: Reason | None = None
    reservation: Reservation | None = None
    kept: tuple[str, ...] = ()  # pending: racks a pass keeps for it while their GPUs are released
    roles: list[tuple[RoleReplica, Decision]] = field(default_factory=list)
    compute_domain: str | None = None  # a serving group's shared ComputeDomain (`<name>-g<n>`)

    @property
    def reason(self) -> str | None:
        """`why` in words (None when placed in its pool, or not explained)."""
        return (self.why.text or None) if self.why else None

    @property
    def fallback(self) -> bool:
        """In device-plugin mode because its pool could not hold it (not by choice)."""
        return self.plan is not None and self.plan.mode == "DevicePlugin" and self.why is not None

    @property
    def group(self) -> int:
        """A serving group's number."""
        return self.replica

    @property
    def decisions(self) -> list[Decision]:
        """The replicas it decided: itself, or a serving group's role replicas."""
        return [d for _, d in self.roles] if self.roles else [self]

    @property
    def placed(self) -> bool:
        return all(d.plan is not None for d in self.decisions)

    @property
    def racks(self) -> tuple[str, ...]:
        """The racks its rack-mode replicas use, sorted."""
        plans = [d.plan for d in self.decisions if d.plan and d.plan.mode == "Rack"]
        return tuple(sorted({r for plan in plans for r in plan.racks}))

    def undo(self) -> None:
        """Give back what it reserved (once)."""
        for decision in reversed(self.decisions):
            if decision.reservation:
                decision.reservation.undo()


@dataclass(slots=True)
class DeploymentPlan:
    deployment: str
    decisions: list[Decision] = field(default_factory=list)
    intended: Literal["Rack", "DevicePlugin"] = "Rack"

    @property
    def replicas(self) -> list[ReplicaPlan]:
        return [d.plan for d in self.decisions if d.plan is not None]

    @property
    def mode(self) -> str:
        return mode_of(
            [r.mode for r in self.replicas], self.intended if not self.decisions else "Unplaced"
        )

    @property
    def reason(self) -> str | None:
        reasons = [f"replica {d.replica}: {d.reason}" for d in self.decisions if d.reason]
        return "; ".join(reasons) or None

    def undo(self) -> None:
        for d in reversed(self.decisions):
            d.undo()


def mode_of(modes: Iterable[str], none: str) -> str:
    """A deployment's mode from its placed replicas' modes: the one they share, `Mixed`, or
    `none` when nothing is placed."""
    found = set(modes)
    if not found:
        return none
    return found.pop() if len(found) == 1 else "Mixed"


def intended_mode(deployment: InferenceDeployment) -> Literal["Rack", "DevicePlugin"]:
    """The mode its spec asks for: in its RackPool, or device-plugin mode without one."""
    return "Rack" if deployment.spec.placement.rack_pool else "DevicePlugin"


class NoRoom(Exception):
    """The pool cannot hold the replica; `why` says why."""

    def __init__(self, why: Reason) -> None:
        super().__init__(why.text)
        self.why = why


@dataclass(slots=True)
class _Request:
    deployment: InferenceDeployment
    replica: int
    pool: Pool
    shape: Shape
    tolerations: tuple[dict[str, Any], ...]
    only: frozenset[str] | None = None  # consider just these racks (keeping a replica in place)
    explain: bool = True  # say why, rack by rack, when the replica does not fit
    domain: str | None = None  # its ComputeDomain: one pod per node, on nodes holding no other
    domain_group: int | None = None  # the serving group sharing that ComputeDomain
    memory: MemoryNeed | None = None  # what the replica needs in GPU memory (spec.model)
    memory_split: bool = False  # some of the pool's nodes have GPUs too small for it, some not

    @property
    def key(self) -> str:
        return self.deployment.key

    @property
    def exclusive(self) -> bool:
        return self.deployment.spec.placement.exclusive

    @property
    def slot(self) -> int:
        """GPUs that must sit on one node: a pod, or a whole NVLink group when NVLink ends there."""
        if self.pool.spec.nvlink_domain == "Node":
            return self.shape.domain_gpus
        return self.shape.pod_gpus

    @property
    def slow(self) -> bool:
        """Tolerations may open tainted nodes that the free-GPU index does not count, or some
        nodes the index counts have GPUs too small for the replica."""
        return (bool(self.tolerations) and self.pool.tainted_nodes > 0) or self.memory_split


def needs_compute_domain(pool: Pool, deployment: InferenceDeployment, pods: int) -> bool:
    """Whether `pods` pods placed together (one replica's, or one serving group's) need a
    ComputeDomain: their pool uses them (NVLink crosses its nodes and the API server serves
    them), their scope lets them span nodes, and there is more than one pod. The one rule
    (guarantees 13 and 15); decided before placement, since a ComputeDomain's pods take one
    node each."""
    scope = deployment.spec.placement.replica_scope
    return pool.compute_domains and scope != "Node" and pods > 1


@dataclass(frozen=True, slots=True)
class Placeable:
    """What one pass places whole, or not at all: a replica, or with spec.roles a serving group
    (`number` is then the group's). `prefer` names the racks it held before (a template
    change). `terminating`: its old pods are still going away, so it cannot be placed yet (its
    pods would take their names); a pass only keeps for it the racks it will fit on."""

    deployment: InferenceDeployment
    number: int
    prefer: tuple[str, ...] = ()
    terminating: bool = False

    @property
    def is_group(self) -> bool:
        return bool(self.deployment.spec.roles)


def pass_order(waiting: Iterable[Placeable]) -> list[Placeable]:
    """The order one pass places what waits in: those keeping their racks first, then the
    largest (a serving group's GPUs are the whole group's), then as given (the operator gives
    the oldest deployment first).

    Largest first lets small replicas fill what the large ones leave; in arrival order a small
    replica could open the one rack a large replica needed whole.
    """
    return sorted(waiting, key=lambda w: (not w.prefer, -w.deployment.spec.gpus_per_replica))


ORDER_TRIES = 16  # other orders a pass tries when the first one leaves replicas out of the pool


def place_replicas(
    snapshot: Snapshot, waiting: Iterable[Placeable], tries: int = ORDER_TRIES
) -> list[tuple[Placeable, Decision]]:
    """Place waiting replicas together, each decided by the usual rules, reserving as it goes.

    The first order is `pass_order`. When it leaves some replica out of the pool, `tries` more
    orders are tried, each a deterministic shuffle of the largest-first order by up to 40% of
    a replica's size (replicas keeping their racks stay first); the order placing the most GPUs
    in pools is kept, the first on a tie. Largest first alone packs well but not always best:
    a replica put on the tightest rack can leave a gap no later one fills.

    Room is freed a pod at a time as a replica's pods are deleted. A replica left pending that
    would fit once the GPUs being released are free has the racks it would take kept for it
    while the pass lasts, so smaller replicas after it cannot take that room piece by piece. So
    does a `terminating` replica (restarted or replaced), whose own old pods are among those.
    """
    order = pass_order(waiting)
    return search_orders(
        order,
        lambda o, explain: _try_order(snapshot, o, explain=explain),
        done=lambda first: all(
            d.plan is not None and not d.fallback for w, d in first if not w.terminating
        ),  # everything in its pool (or in device-plugin mode by choice)
        score=in_pools,
        undo=undo_all,
        tries=tries,
    )


class _Ordered(Protocol):
    @property
    def prefer(self) -> tuple[str, ...]: ...
    @property
    def deployment(self) -> InferenceDeployment: ...


W = TypeVar("W", bound=_Ordered)
R = TypeVar("R")


def search_orders(  # noqa: PLR0917
    order: list[W],
    attempt: Callable[[list[W], bool], list[R]],
    done: Callable[[list[R]], bool],
    score: Callable[[list[R]], int],
    undo: Callable[[list[R]], None],
    tries: int,
) -> list[R]:
    """The search one pass makes over orders (of replicas, or of serving groups): `order`
    first, without reasons; when that is not `done`, `tries` deterministic shuffles of it by up
    to 40% of each one's size (those keeping their racks stay first), and the order scoring
    highest (the first on a tie) is placed again, with reasons."""
    first = attempt(order, False)
    if done(first):
        return first
    best, top = order, score(first)
    undo(first)
    staying = [w for w in order if w.prefer]
    rest = [w for w in order if not w.prefer]
    # When nothing fits, each was tried on the same room: no other order helps.
    rng = random.Random(len(order))
    for _ in range(tries if top and len(rest) > 1 else 0):
        shuffled = staying + sorted(
            rest, key=lambda w: -w.deployment.spec.gpus_per_replica * rng.uniform(0.6, 1.4)
        )
        trial = attempt(shuffled, False)
        if score(trial) > top:
            best, top = shuffled, score(trial)
        undo(trial)
    return attempt(best, True)


def _try_order(
    snapshot: Snapshot, order: list[Placeable], *, explain: bool
) -> list[tuple[Placeable, Decision]]:
    """Place in `order`, keeping racks being released for replicas left pending until the end;
    without `explain`, refusals carry no reason (it costs a look at every rack)."""
    kept: list[Rack] = []
    out = []
    try:
        for want in order:
            if want.terminating:
                decision = Decision(want.number, None, Reason("terminating"))
            else:
                decision = place_replica(
                    snapshot, want.deployment, want.number, want.prefer, explain=explain
                )
            if decision.plan is None and (racks := _keep_releasing(snapshot, want)):
                kept.extend(racks)
                decision.kept = tuple(r.name for r in racks)
                if explain and decision.why is not None:
                    names = tuple(r.name for r in racks)
                    decision.why = decision.why.noted(Note("kept", Kept(names)))
            out.append((want, decision))
    finally:
        for rack in kept:
            rack.keep(None)
    return out


def in_pools(decisions: Iterable[tuple[Placeable, Decision]]) -> int:
    """GPUs placed in pools."""
    return sum(
        p.gpus
        for _, decision in decisions
        for d in decision.decisions
        if d.plan is not None and d.plan.mode == "Rack"
        for p in d.plan.pods
    )


def undo_all(decisions: list[tuple[Placeable, Decision]]) -> None:
    for _, decision in reversed(decisions):
        decision.undo()


def _keep_releasing(snapshot: Snapshot, want: Placeable) -> list[Rack]:
    """Keep for `want` the racks it would take were the GPUs being released free (none: [])."""
    pool = snapshot.pools.get(want.deployment.spec.placement.rack_pool or "")
    if pool is None or not (pool.releasing or want.terminating):
        return []  # refused with the room there is, and no more is coming
    _release(pool, -1)
    try:
        future = place_replica(snapshot, want.deployment, want.number, want.prefer, explain=False)
        if future.reservation:
            future.reservation.undo()
    finally:
        _release(pool, +1)
    if future.plan is None or future.plan.mode != "Rack":
        return []
    racks = [pool.racks[name] for name in future.plan.racks]
    for rack in racks:
        rack.keep(want.deployment.key)
    return racks


def _release(pool: Pool, sign: int) -> None:
    """Free (-1) or take back (+1) what the pods being deleted hold. An exclusive replica's
    hold on its rack stays until its pods are gone."""
    for node, gpus, namespace, deployment, domain in pool.releasing.values():
        assert node.rack is not None
        node.rack.use(node, sign * gpus, namespace, deployment, domain)


def place_replica(
    snapshot: Snapshot,
    deployment: InferenceDeployment,
    replica: int,
    prefer: Iterable[str] = (),
    *,
    explain: bool = True,
    only: Iterable[str] | None = None,
    group: int | None = None,
    alone: bool = False,
) -> Decision:
    """One replica, whole or not at all; falls back to device-plugin mode when asked to.

    `prefer` names racks to try first (where the replica ran before a template change): the
    replica stays there when they still hold it, and is placed as usual when they do not.
    Without `explain`, a refusal's reason is left out: building it looks at every rack.
    `only` keeps it strictly to those racks, and `group` puts it under the ComputeDomain that
    serving group shares instead of its own: how a serving group is placed (placement.groups).
    `alone`: under no ComputeDomain at all (a member returning to a group that runs without).
    """
    placement = deployment.spec.placement
    if deployment.spec.roles:  # each role replica is placed through its role's view
        return Decision(replica, None, Reason("roles-need-groups"))
    if placement.rack_pool is None:
        return Decision(replica, _device_plugin(snapshot, deployment, replica))
    try:
        request = _request(snapshot, deployment, replica, placement.rack_pool)
        request.explain = explain
        if alone:
            request.domain = None
        elif group is not None:
            name = group_compute_domain_name(deployment.name, group)
            request.domain, request.domain_group = f"{deployment.namespace}/{name}", group
        if only is not None:
            request.only = frozenset(only)
            prefer = ()
        if preferred := frozenset(prefer):
            request.only = preferred
            with contextlib.suppress(NoRoom):
                plan, reservation = _place_in_pool(request)
                return Decision(replica, plan, None, reservation)
            request.only = None
        plan, reservation = _place_in_pool(request)
        return Decision(replica, plan, None, reservation)
    except NoRoom as why:
        if placement.fallback == "DevicePlugin":
            plan = _device_plugin(snapshot, deployment, replica)
            return Decision(replica, plan, why.why.noted(Note("fallback")))
        return Decision(replica, None, why.why)


def _device_plugin(
    snapshot: Snapshot, deployment: InferenceDeployment, replica: int
) -> ReplicaPlan:
    shape = shape_of(deployment.spec, snapshot.ordinary_node_gpus)
    pods = tuple(PodPlan(i, None, shape.pod_gpus, i * shape.pod_gpus) for i in range(shape.pods))
    return ReplicaPlan(replica, "DevicePlugin", (), pods)


def _request(
    snapshot: Snapshot, deployment: InferenceDeployment, replica: int, pool_name: str
) -> _Request:
    pool = snapshot.pools.get(pool_name)
    if pool is None:
        raise NoRoom(Reason("pool-missing", InPool(pool_name)))
    if not pool.racks:
        shared = sum(pool_name in pools for pools in snapshot.conflicts.values())
        raise NoRoom(Reason("pool-empty", PoolEmpty(pool_name, pool.spec.rack_label, shared)))
    scope = deployment.spec.placement.replica_scope
    if scope == "Block" and not pool.spec.block_label:
        raise NoRoom(Reason("block-label-missing", InPool(pool_name)))
    shape = shape_of(deployment.spec, pool.node_gpus)
    template_spec = deployment.spec.template.get("spec") or {}
    request = _Request(
        deployment, replica, pool, shape, tuple(template_spec.get("tolerations") or ())
    )
    if needs_compute_domain(pool, deployment, shape.pods):
        name = compute_domain_name(deployment.name, replica)
        request.domain = f"{deployment.namespace}/{name}"
    largest = pool.largest_node_gpus
    if request.slot > largest:
        nvlink = shape.domain_gpus if pool.spec.nvlink_domain == "Node" else None
        too_large = PodTooLarge(
            pool_name, largest, shape.pod_gpus, nvlink, shape.tensor, shape.expert
        )
        raise NoRoom(Reason("pod-too-large", too_large))
    _memory_filter(request)
    return request


def _memory_filter(request: _Request) -> None:
    """Keep the replica off GPUs too small for it. Its weights, KV cache and runtime overhead
    are shared evenly by its GPUs, so each GPU must hold that share; a node whose GPU memory is
    unknown is not refused. Refuses at once when no node of the pool is large enough."""
    model = request.deployment.spec.model
    need = model.need(request.shape.gpus) if model else None
    if need is None:
        return
    request.memory = need
    nodes = request.pool.gpu_memory
    small = sum(n for mib, n in nodes.items() if mib is not None and mib < need.per_gpu_mib)
    if not small:
        return
    if small < sum(nodes.values()):
        request.memory_split = True
        return
    raise NoRoom(Reason("gpu-memory", _what_fits(request, need, small)))


def _fits_memory(request: _Request, node: Node) -> bool:
    memory = node.gpu_memory_mib
    return request.memory is None or memory is None or memory >= request.memory.per_gpu_mib


def _usable(request: _Request, node: Node) -> bool:
    """Whether the node may take shards of this request: schedulable for its tolerations, with
    GPUs large enough for it and, for a replica with a ComputeDomain, holding no pod of another
    ComputeDomain (guarantee 13)."""
    return (
        node.schedulable(request.tolerations)
        and _fits_memory(request, node)
        and not (request.domain and node.domains)
    )


def _what_fits(request: _Request, need: MemoryNeed, small: int) -> GpuMemory:
    """Why no GPU of the pool holds the replica (`small` nodes), and what would fit the
    pool's largest GPUs: more GPUs per replica, or a lower precision."""
    sizes = tuple(sorted(m for m in request.pool.gpu_memory if m is not None))
    largest = max(sizes, default=0)
    room = largest - RUNTIME_OVERHEAD_MIB_PER_GPU
    content = need.weights_mib + need.kv_cache_mib
    more = -(-content // room) if room > 0 else None
    model = request.deployment.spec.model
    assert model is not None
    current = BYTES_PER_PARAMETER[need.precision]
    lower = sorted(
        (p for p, b in BYTES_PER_PARAMETER.items() if b < current),
        key=lambda p: (-BYTES_PER_PARAMETER[p], p),
    )
    fitting = [p for p in lower if (o := model.need(need.gpus, p)) and o.per_gpu_mib <= largest]
    pool = request.pool
    return GpuMemory(
        pool.name,
        need,
        len(pool.racks),
        small,
        sizes,
        largest,
        more,
        fitting[0] if fitting else None,
    )


def _memory_note(request: _Request) -> Note:
    """The nodes refused for memory in a pool where others are large enough."""
    need = request.memory
    assert need is not None
    small = sorted(
        (m, n) for m, n in request.pool.gpu_memory.items() if m is not None and m < need.per_gpu_mib
    )
    return Note("memory-refused", MemoryRefused(tuple(small), need))


def _place_in_pool(request: _Request) -> tuple[ReplicaPlan, Reservation]:
    try:
        return _place_in_racks(request)
    except NoRoom as why:
        if request.explain and request.memory_split:
            raise NoRoom(why.why.noted(_memory_note(request))) from None
        raise


def _place_in_racks(request: _Request) -> tuple[ReplicaPlan, Reservation]:
    scope = request.deployment.spec.placement.replica_scope
    if scope == "Node":
        node = _best_node(request)
        assert node.rack is not None
        return _reserve(request, [(node.rack, request.shape.gpus // request.slot)], nodes=[node])
    rack = _best_rack(request, request.shape.gpus // request.slot)
    if rack is not None:
        return _reserve(request, [(rack, request.shape.gpus // request.slot)])
    if scope == "Rack" or request.shape.units < 2:
        if not request.explain:
            raise NoRoom(Reason("no-rack-with-room"))
        need = request.shape.gpus // request.slot
        problems = tuple(p for r in _racks(request) if (p := _problem(request, r, need)))
        details = NoRackWithRoom(request.shape.gpus, problems, cannot_span=scope != "Rack")
        raise NoRoom(Reason("no-rack-with-room", details))
    return _reserve(request, _best_racks(request))


def _racks(request: _Request) -> Iterator[Rack]:
    racks = request.pool.racks.values()
    return iter(racks) if request.only is None else (r for r in racks if r.name in request.only)


def _slots(request: _Request, rack: Rack) -> int:
    if request.domain:  # one pod per node
        return sum(n.free >= request.slot and _usable(request, n) for n in rack.nodes)
    if request.slow:
        return sum(n.free // request.slot for n in rack.nodes if _usable(request, n))
    return rack.slots(request.slot)


def _free(request: _Request, rack: Rack) -> int:
    """Free GPUs of the rack this request may use: tolerations can open tainted nodes, GPUs too
    small close them, and so do other ComputeDomains to a replica with one."""
    if request.slow or request.domain:
        return sum(n.free for n in rack.nodes if _usable(request, n))
    return rack.free


def _barrier(request: _Request, rack: Rack) -> Problem | None:
    """Why the rack is out of reach for this request whatever its room (None: it is not)."""
    return _reserved(rack) or _refused(request, rack)


def _reserved(rack: Rack) -> Problem | None:
    """Held by an exclusive replica, or kept for one this pass."""
    if rack.held_by is not None:
        return Problem("held", 0, rack.held_by[0])
    if rack.kept_for is not None:
        return Problem("kept", 0, rack.kept_for)
    return None


def _refused(request: _Request, rack: Rack) -> Problem | None:
    """Closed to this request by tenancy, exclusivity, GPU memory or health."""
    if request.pool.spec.tenancy == "Exclusive":
        others = sorted(ns for ns in rack.namespaces if ns != request.deployment.namespace)
        if others:
            return Problem("tenant", 0, others[0])
    if request.exclusive and rack.used:
        return Problem("in-use")
    if request.memory_split and not any(_fits_memory(request, n) for n in rack.nodes):
        return Problem("memory", min(n.gpu_memory_mib or 0 for n in rack.nodes))
    if rack.health == "Unavailable" and not request.slow:
        return Problem("unavailable")
    return None


def _problem(request: _Request, rack: Rack, need: int) -> Problem | None:
    """Filter: why `rack` cannot take `need` slots for this request (None: it can)."""
    barrier = _barrier(request, rack)
    if barrier is not None or _slots(request, rack) >= need:
        return barrier
    if request.domain:
        tol = request.tolerations
        trays = sum(
            n.free >= request.slot and n.schedulable(tol) and _fits_memory(request, n)
            for n in rack.nodes
        )
        if trays >= need:  # only the one-ComputeDomain-per-node rule stands in the way
            return Problem("compute-domain", _slots(request, rack))
    free = _free(request, rack)
    if rack.health == "Degraded":
        return Problem("degraded", free)
    if free >= need * request.slot:
        return Problem("split", free)
    return Problem("too-few", free)


def _candidates(request: _Request, min_free: int) -> Iterator[Rack]:
    """Racks in best-fit order (least free first) that have at least `min_free` free GPUs."""
    pool = request.pool
    if request.slow or request.only is not None:
        racks = [r for r in _racks(request) if _free(request, r) >= min_free]
        yield from sorted(racks, key=lambda r: (_free(request, r), r.name))
        return
    index = pool.empty_by_free if request.exclusive else pool.by_free
    for _, name in index.irange((min_free, "")):
        yield pool.racks[name]


def _passes(request: _Request) -> list[bool]:
    """Spread: first avoid racks that already hold this deployment, then allow them."""
    return [True, False] if request.deployment.spec.placement.spread == "Spread" else [False]


def _best_rack(request: _Request, need: int) -> Rack | None:
    for avoid_own in _passes(request):
        for rack in _candidates(request, need * request.slot):
            if avoid_own and rack.deployments.get(request.key):
                continue
            if _problem(request, rack, need) is None:
                return rack
    return None


def _best_node(request: _Request) -> Node:
    need = request.shape.gpus
    for avoid_own in _passes(request):
        for rack in _candidates(request, need):
            if avoid_own and rack.deployments.get(request.key):
                continue
            if _problem(request, rack, need // request.slot) is not None:
                continue
            fits = [n for n in rack.nodes if n.free >= need and _usable(request, n)]
            if fits:
                return min(fits, key=lambda n: (n.free, n.name))
    if not request.explain:
        raise NoRoom(Reason("no-node-with-room"))
    barriers = tuple(p for p in (_barrier(request, r) for r in _racks(request)) if p)
    reachable = [r for r in _racks(request) if _barrier(request, r) is None]
    most = max(
        (n.free for r in reachable for n in r.nodes if _usable(request, n)),
        default=0,
    )
    details = NoNodeWithRoom(need, barriers, most if reachable else None)
    raise NoRoom(Reason("no-node-with-room", details))


def _best_racks(request: _Request) -> list[tuple[Rack, int]]:
    """Fewest racks of one block (of the pool for scope Any) that hold the replica, cut only
    between whole NVLink groups (`Shape.unit_gpus`); whole pipeline stages per rack when that
    costs no extra rack (shared evenly first), then the block whose racks have the least free
    GPUs."""
    shape = request.shape
    per_unit = shape.unit_gpus // request.slot
    by_block = request.deployment.spec.placement.replica_scope == "Block"
    # Whole stages need racks with room for one: when those alone give a whole-stage split on
    # as few racks as any split can use, no finer cut can do better, and far fewer racks are
    # looked at.
    fewest = _fewest_possible(request)
    if fewest is not None and shape.part_gpus > shape.unit_gpus:
        found = _best_split(request, shape.part_gpus, per_unit, by_block)
        if found is not None and found[0][0] == fewest and found[0][1] < 2:
            return found[1]
    found = _best_split(request, shape.unit_gpus, per_unit, by_block)
    if found is None:
        if not request.explain:
            raise NoRoom(Reason("no-block-with-room" if by_block else "no-racks-with-room"))
        raise NoRoom(_why_no_racks(request, per_unit, by_block))
    return found[1]


def _fewest_possible(request: _Request) -> int | None:
    """The fewest racks any split can use: the replica over the most free GPUs of one rack
    (None when the free-GPU index does not tell)."""
    if request.slow or request.only is not None:
        return None
    index = request.pool.empty_by_free if request.exclusive else request.pool.by_free
    if not index:
        return None
    most = index[-1][0]
    return -(-request.shape.gpus // most) if most else None


def _best_split(
    request: _Request, min_free: int, per_unit: int, by_block: bool
) -> tuple[tuple[int, int, int, str], list[tuple[Rack, int]]] | None:
    """The best split over racks with at least `min_free` free GPUs: (rank, shares)."""
    groups: dict[str | None, list[tuple[Rack, int]]] = {}
    # Only racks with room for one unit can help: the free-GPU index yields just those.
    for rack in _candidates(request, min_free):
        if (by_block and rack.block is None) or _barrier(request, rack) is not None:
            continue  # nothing is known of the spine between racks without a block label
        units = _slots(request, rack) // per_unit
        if units:
            groups.setdefault(rack.block if by_block else None, []).append((rack, units))
    best: tuple[tuple[int, int, int, str], list[tuple[Rack, int]]] | None = None
    for block, capacity in groups.items():
        found = _split(request, capacity, best[0][0] if best else None)
        if found:
            kind, chosen = found
            free = sum(_free(request, r) for r, _ in chosen)
            rank = (len(chosen), kind, free, block or "")
            if best is None or rank < best[0]:
                best = (rank, chosen)
    return best


def _why_no_racks(request: _Request, per_unit: int, by_block: bool) -> Reason:
    """What each block (or the pool) lacks for a multi-rack replica, rack by rack."""
    shape = request.shape
    groups = request.pool.blocks() if by_block else {None: list(request.pool.racks.values())}
    problems: list[Problem] = []
    rooms: list[BlockRoom] = []
    unlabeled = 0
    for block, racks in sorted(groups.items(), key=lambda g: g[0] or ""):
        if by_block and block is None:
            unlabeled = len(racks)
            continue
        room = []
        for rack in racks:
            problem = _problem(request, rack, per_unit)
            if problem:
                problems.append(problem)
            else:
                room.append(rack)
        if room:
            units = sum(_slots(request, r) // per_unit for r in room)
            rooms.append(BlockRoom(block, units, tuple(_free(request, r) for r in room)))
    details = NoRacksWithRoom(
        shape.gpus, shape.units, shape.unit_gpus, tuple(problems), tuple(rooms), unlabeled
    )
    return Reason("no-block-with-room" if by_block else "no-racks-with-room", details)


def _split(
    request: _Request, capacity: list[tuple[Rack, int]], most: int | None = None
) -> tuple[int, list[tuple[Rack, int]]] | None:
    """The fewest racks of `capacity` (rack, free units, in best-fit order) that hold the
    replica, and the slots each takes, in rack-name order; None if they cannot (or need more
    than `most` racks).

    With that many racks, the first that works of: whole pipeline stages shared evenly (kind
    0), whole stages shared as evenly as the racks allow (1), any cut between units shared as
    evenly as the racks allow (2)."""
    shape = request.shape
    units = [u for _, u in capacity]
    if sum(units) < shape.units:
        return None
    units.sort(reverse=True)
    count, room = 0, 0
    while room < shape.units:
        room += units[count]
        count += 1
    if most is not None and count > most:
        return None
    own = request.key
    # `capacity` comes in best-fit order already; Spread moves racks holding this deployment last.
    order = capacity
    if request.deployment.spec.placement.spread == "Spread":
        order = [c for c in capacity if not c[0].deployments.get(own)] + [
            c for c in capacity if c[0].deployments.get(own)
        ]
    per_unit = shape.unit_gpus // request.slot
    stage_units = shape.part_gpus // shape.unit_gpus
    stages = [(r, u // stage_units) for r, u in order if u >= stage_units]
    for kind, choose in enumerate((_even, _fill)):
        if chosen := choose(stages, shape.parts, count):
            return kind, [(r, n * stage_units * per_unit) for r, n in chosen]
    chosen = _fill(order, shape.units, count)
    assert chosen is not None, "the largest racks hold it, so a fill exists"
    return 2, [(r, n * per_unit) for r, n in chosen]


def _even(order: list[tuple[Rack, int]], need: int, count: int) -> list[tuple[Rack, int]] | None:
    """`count` racks, in best-fit order, whose shares of `need` differ by at most one."""
    small, larger = divmod(need, count)
    if small == 0:
        return None
    big_racks = [c for c in order if c[1] >= small + 1][:larger]
    if len(big_racks) < larger:
        return None
    taken = {id(r) for r, _ in big_racks}
    rest = [c for c in order if id(c[0]) not in taken and c[1] >= small][: count - larger]
    if len(rest) < count - larger:
        return None
    chosen = [(r, small + 1) for r, _ in big_racks] + [(r, small) for r, _ in rest]
    return sorted(chosen, key=lambda c: c[0].name)


def _fill(order: list[tuple[Rack, int]], need: int, count: int) -> list[tuple[Rack, int]] | None:
    """`count` racks taken in best-fit order whenever the largest of those after them can
    still make up `need`, sharing `need` as evenly as their room allows."""
    if count > len(order):
        return None
    later = SortedList(u for _, u in order)  # room of the racks not yet looked at
    chosen: list[tuple[Rack, int]] = []
    room = 0
    for rack, units in order:
        later.remove(units)
        left = count - len(chosen) - 1
        if room + units + (sum(later[len(later) - left :]) if left else 0) >= need:
            chosen.append((rack, units))
            room += units
            if len(chosen) == count:
                break
    if len(chosen) < count or room < need:
        return None
    shares = []
    remaining = need
    for i, (rack, units) in enumerate(sorted(chosen, key=lambda c: (c[1], c[0].name))):
        share = min(units, -(-remaining // (count - i)))
        shares.append((rack, share))
        remaining -= share
    assert remaining == 0
    return sorted(shares, key=lambda c: c[0].name)


def _reserve(
    request: _Request, shares: list[tuple[Rack, int]], nodes: list[Node] | None = None
) -> tuple[ReplicaPlan, Reservation]:
    """Take `slots` slots on each rack (best-fit nodes inside it) and number the pods in order."""
    reservation = Reservation(request.deployment.namespace, request.key, request.domain)
    shape, slot = request.shape, request.slot
    pods: list[PodPlan] = []
    for rack, slots in shares:
        if request.exclusive:
            reservation.hold(rack, (request.key, request.replica))
        usable = nodes or sorted(
            (n for n in rack.nodes if n.free >= slot and _usable(request, n)),
            key=lambda n: (n.free, n.name),
        )
        left = slots
        for node in usable:
            take = min(1 if request.domain else node.free // slot, left)
            for _ in range(take * slot // shape.pod_gpus):
                shard = len(pods)
                pods.append(
                    PodPlan(shard, node.name, shape.pod_gpus, shard * shape.pod_gpus, rack.name)
                )
            if take:
                reservation.take(node, take * slot)
            left -= take
            if not left:
                break
        assert not left, f"rack {rack.name} lost room while placing"
    racks = tuple(r.name for r, _ in shares)
    domain = request.domain.split("/", 1)[1] if request.domain else None
    crosses = request.pool.spec.nvlink_domain == "Rack" and len({p.node for p in pods}) > 1
    plan = ReplicaPlan(
        request.replica, "Rack", racks, tuple(pods), domain, request.domain_group, crosses
    )
    return plan, reservation
