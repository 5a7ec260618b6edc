"""Status of InferenceDeployments and RackPools, built from what the operator sees. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rackscale.api import Condition, InferenceDeployment
from rackscale.api.common import GpuCounts
from rackscale.api.inferencedeployment import (
    InferenceDeploymentStatus,
    ReplicaPlacement,
    ReplicaPod,
)
from rackscale.api.pricing import Price, cost_per_hour, money
from rackscale.api.rackpool import PoolCost, RackPoolStatus, RackStatus
from rackscale.placement import intended_mode, mode_of
from rackscale.planner.lifecycle import ReplicaState, first_rank
from rackscale.render import serving_port, serving_selector
from rackscale.topology.snapshot import Pool

DOMAINS_MISSING = (
    "the API server does not serve computedomains.resource.nvidia.com (NVIDIA's DRA driver is "
    "not installed): replicas whose pods span trays get no IMEX channel, so multi-node NVLink is "
    "not set up and NCCL falls back to the network; install the driver, or set the RackPool's "
    "computeDomains: Off to silence this"
)
INFERENCE_POOLS_MISSING = (
    "the API server does not serve inferencepools.inference.networking.k8s.io v1 (the Gateway "
    "API Inference Extension's CRDs are not installed): no InferencePool is created, so no "
    "inference gateway fronts this deployment; install those CRDs, or remove spec.inferencePool "
    "to silence this"
)


@dataclass(slots=True)
class Progress:
    """What the last reconcile did or could not do, beside what the pods show."""

    unplaced: dict[int, str] = field(default_factory=dict)  # replica -> engine's reason
    fallbacks: dict[int, str] = field(default_factory=dict)  # replica -> why not in the pool
    restarting: dict[int, str] = field(default_factory=dict)  # replica -> what was lost
    updating: list[int] = field(default_factory=list)
    scaling_down: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """A write of a deployment's pass the API server refused (or that failed on the way): what
    was written (`verb` `kind` `name`, e.g. apply Service llm/a-serving) and the server's
    message."""

    verb: str  # create, delete, apply, annotate, post, patch
    kind: str  # Pod, Service, ComputeDomain, InferencePool, Event, InferenceDeployment status
    name: str  # namespace/name
    message: str

    @property
    def what(self) -> str:
        return f"{self.verb} {self.kind} {self.name}"


def refused_message(failures: Sequence[WriteFailure]) -> str:
    """What the status says of a pass's refused writes: the first one, with the API server's
    message, and how many more there were."""
    first = failures[0]
    more = len(failures) - 1
    tail = f" ({_plural(more, 'other write')} refused too)" if more else ""
    return f"the API server refused to {first.what}: {first.message}{tail}"


def refused_events(
    failures: Sequence[WriteFailure], posted: Iterable[str]
) -> list[tuple[str, str]]:
    """One Warning `WriteRefused` per distinct message of the API server not yet posted (not
    one per retry): (message, Event text)."""
    seen = set(posted)
    out = []
    for failure in failures:
        if failure.message not in seen:
            seen.add(failure.message)
            out.append(
                (failure.message, f"the API server refused to {failure.what}: {failure.message}")
            )
    return out


@dataclass(frozen=True, slots=True)
class Sizes:
    """What a deployment's status reports beside its pods: the memory of each GPU of the nodes
    it runs on (MiB, None unknown), and the prices of its GPUs."""

    node_memory: Mapping[str, int | None] = field(default_factory=dict)
    pool_price: Price | None = None
    ordinary_price: Price | None = None  # device-plugin GPUs, from the operator's flag


def _conditions(
    wanted: Iterable[Condition], previous: Iterable[Mapping[str, Any]], now: str
) -> list[Condition]:
    """Keep a condition's lastTransitionTime while its status stays the same."""
    before = {str(c.get("type")): c for c in previous}
    out = []
    for cond in wanted:
        old = before.get(cond.type)
        same = old is not None and old.get("status") == cond.status
        since = old.get("lastTransitionTime") if same and old else None
        out.append(cond.model_copy(update={"last_transition_time": since or now}))
    return out


def _placement(state: ReplicaState, resource: str, sizes: Sizes) -> ReplicaPlacement:
    mode = "DevicePlugin" if state.mode == "DevicePlugin" else "Rack"
    placement = ReplicaPlacement(
        replica=state.replica,
        mode=mode,
        racks=state.racks,
        compute_domain=state.domain,
        compute_domain_ready=state.domain_ready if state.domain else None,
        pods=[
            ReplicaPod(
                name=p.name,
                node=p.node_name or p.pinned,
                gpus=p.gpus(resource),
                first_rank=first_rank(p),
            )
            for p in state.pods
        ],
    )
    if mode == "Rack" and placement.pods:
        memory = [sizes.node_memory.get(p.node or "") for p in placement.pods]
        if None not in memory:
            placement.gpu_memory_mib = sum(
                p.gpus * int(m or 0) for p, m in zip(placement.pods, memory, strict=True)
            )
    return placement


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(slots=True)
class _Seen:
    """A deployment's replicas as the status counts them. With spec.roles each one is a role
    replica (`desired` = spec.replicas x the group size), and `groups` counts serving groups."""

    desired: int
    states: list[ReplicaState]
    wanted: list[ReplicaState]
    running: list[ReplicaState]
    placed: list[ReplicaState]
    ready: list[ReplicaState]
    shown: list[ReplicaState]
    placements: list[ReplicaPlacement]
    mode: str
    unplaced: dict[int, str]
    restarting: dict[int, str]
    terminating: list[int]
    fallbacks: dict[int, str]

    @property
    def counts(self) -> str:
        return f"{len(self.ready)}/{self.desired} replicas ready"


def _seen(
    deployment: InferenceDeployment,
    states: list[ReplicaState],
    progress: Progress,
    gpu_resource: str,
    sizes: Sizes,
) -> _Seen:
    spec = deployment.spec
    desired = spec.replica_count
    wanted = [s for s in states if spec.wants(s.replica)]
    running = [s for s in wanted if s.condition == "Running"]
    shown = [s for s in states if s.pods]
    placements = [_placement(s, gpu_resource, sizes) for s in shown if spec.wants(s.replica)]
    if spec.roles:
        for placement in placements:
            member = spec.role_replica(placement.replica)
            placement.group, placement.role = member.group, member.role
    restarting = {s.replica: s.why or "" for s in wanted if s.condition == "Broken"}
    restarting.update({r: w for r, w in progress.restarting.items() if spec.wants(r)})
    return _Seen(
        desired=desired,
        states=states,
        wanted=wanted,
        running=running,
        placed=[s for s in wanted if s.condition in ("Running", "Broken")],
        ready=[s for s in running if s.ready],
        shown=shown,
        placements=placements,
        mode=mode_of((p.mode for p in placements), intended_mode(deployment)),
        unplaced={r: why for r, why in progress.unplaced.items() if spec.wants(r)},
        restarting=restarting,
        terminating=[s.replica for s in wanted if s.condition == "Terminating"],
        fallbacks={
            p.replica: progress.fallbacks.get(p.replica, "the pool could not hold it")
            for p in placements
            if p.mode == "DevicePlugin" and spec.placement.rack_pool
        },
    )


def _placed_condition(seen: _Seen) -> Condition:
    desired, placed, unplaced, fallbacks = seen.desired, seen.placed, seen.unplaced, seen.fallbacks
    if unplaced:
        first = min(unplaced)
        message = f"{len(placed)} of {desired} replicas placed; replica {first}: {unplaced[first]}"
        return Condition(type="Placed", status="False", reason="Unplaceable", message=message)
    if len(placed) < desired:
        message = f"{len(placed)} of {desired} replicas placed"
        return Condition(type="Placed", status="False", reason="Placing", message=message)
    if fallbacks:
        first = min(fallbacks)
        return Condition(
            type="Placed",
            status="True",
            reason="DevicePluginFallback",
            message=f"{_plural(len(fallbacks), 'replica')} in device-plugin mode; "
            f"replica {first}: {fallbacks[first]}",
        )
    message = f"{desired} of {desired} replicas placed ({seen.mode})"
    return Condition(type="Placed", status="True", reason="AllReplicasPlaced", message=message)


def _progressing(seen: _Seen, progress: Progress, placed_cond: Condition) -> Condition:
    desired, unplaced, counts = seen.desired, seen.unplaced, seen.counts
    if unplaced and not progress.restarting and not seen.terminating:
        message = "waiting for capacity: " + unplaced[min(unplaced)]
        return Condition(type="Progressing", status="False", reason="Stalled", message=message)
    if seen.restarting or seen.terminating:
        message = "restarting replica " + ", ".join(
            str(r) for r in sorted({*seen.restarting, *seen.terminating})
        )
        return Condition(type="Progressing", status="True", reason="Restarting", message=message)
    if progress.updating or any(s.outdated for s in seen.wanted):
        message = f"{sum(not s.outdated for s in seen.running)} of {desired} replicas updated"
        return Condition(type="Progressing", status="True", reason="Updating", message=message)
    if progress.scaling_down or len(seen.states) > len(seen.wanted):
        return Condition(type="Progressing", status="True", reason="ScalingDown", message=counts)
    return _moving(seen, placed_cond)


def _moving(seen: _Seen, placed_cond: Condition) -> Condition:
    """Progressing when nothing restarts, updates or scales down: placing, waiting, or done."""
    desired, counts = seen.desired, seen.counts
    if len(seen.placed) < desired:
        message = placed_cond.message
        return Condition(type="Progressing", status="True", reason="Placing", message=message)
    if len(seen.ready) < desired:
        return Condition(type="Progressing", status="True", reason="WaitingForPods", message=counts)
    return Condition(type="Progressing", status="False", reason="Complete", message=counts)


def _degraded(seen: _Seen, placed_cond: Condition) -> Condition:
    if seen.restarting:
        first = min(seen.restarting)
        message = f"replica {first}: {seen.restarting[first]}"
        return Condition(type="Degraded", status="True", reason="ReplicaLost", message=message)
    if seen.unplaced and seen.placed:
        message = placed_cond.message
        return Condition(type="Degraded", status="True", reason="ReplicasUnplaced", message=message)
    return Condition(type="Degraded", status="False", reason="AsExpected", message=seen.counts)


def _phase(seen: _Seen) -> str:
    desired, placed, unplaced = seen.desired, seen.placed, seen.unplaced
    if desired == 0 or len(seen.ready) == desired:
        return "Ready"
    if unplaced and not placed:
        return "Pending"
    if seen.restarting or (unplaced and placed):
        return "Degraded"
    if len(placed) < desired:
        return "Placing"
    return "Placed"


def _whole(
    deployment: InferenceDeployment, states: list[ReplicaState], everything: list[ReplicaState]
) -> int:
    """How many serving groups (spec.roles) have every role replica among `states`."""
    size, spec = deployment.spec.group_size, deployment.spec
    counts = Counter(spec.group_of(s.replica) for s in states if spec.wants(s.replica))
    # A group refused the role replicas it is to grow by serves as it was.
    added = Counter(spec.group_of(s.replica) for s in everything if s.added)
    return sum(1 for g, n in counts.items() if n + added[g] == size)


def deployment_status(
    deployment: InferenceDeployment,
    states: list[ReplicaState],
    progress: Progress,
    gpu_resource: str,
    now: str,
    *,
    domains_missing: bool = False,
    inference_pools_missing: bool = False,
    sizes: Sizes | None = None,
    refused: Sequence[WriteFailure] = (),
) -> InferenceDeploymentStatus:
    """The status a person reads: phase, mode, counts, placements and four conditions (five
    where ComputeDomains apply); memory needed against what each placement's GPUs have, and cost
    per hour. `domains_missing`: the pool wants ComputeDomains and the API server does not serve
    them; `inference_pools_missing`: nor InferencePools (spec.inferencePool then gets a
    condition saying so). With spec.roles the conditions count role replicas, and `replicas`,
    `placedReplicas`, `readyReplicas` and `ready` count serving groups (those with a pod; those
    whose role replicas are all placed; all ready), as `spec.replicas` does. `refused`: the
    writes of the pass the API server refused: `Synced` False and `Stalled` True name the
    first, with its message."""
    sizes = sizes or Sizes()
    seen = _seen(deployment, states, progress, gpu_resource, sizes)
    placed_cond = _placed_condition(seen)
    ready = len(seen.ready)
    available = Condition(
        type="Available",
        status="True" if ready or seen.desired == 0 else "False",
        reason="ReplicasReady" if ready or seen.desired == 0 else "NoReplicaReady",
        message=seen.counts,
    )
    progressing = _progressing(seen, progress, placed_cond)
    degraded = _degraded(seen, placed_cond)
    phase = _phase(seen)
    summary = _summary(phase, placed_cond, progressing, degraded, seen.counts, refused=refused)
    domains = _domains_condition(seen.wanted, domains_missing)
    gateway = _inference_pool_condition(deployment, inference_pools_missing)
    previous = (deployment.status.conditions if deployment.status else []) or []
    model = deployment.spec.model
    need = (
        model.need(deployment.spec.gpus_per_replica)
        if model and not deployment.spec.roles
        else None
    )
    placements = seen.placements
    by_mode = {
        mode: sum(p.gpus for pl in placements if pl.mode == mode for p in pl.pods)
        for mode in ("Rack", "DevicePlugin")
    }
    cost = cost_per_hour(
        by_mode["Rack"], by_mode["DevicePlugin"], sizes.pool_price, sizes.ordinary_price
    )
    counted = (len(seen.shown), len(seen.placed), ready)
    if deployment.spec.roles:
        shown = len({deployment.spec.group_of(s.replica) for s in seen.shown})
        counted = (
            shown,
            _whole(deployment, seen.placed, states),
            _whole(deployment, seen.ready, states),
        )
    return InferenceDeploymentStatus(
        observed_generation=deployment.metadata.get("generation"),
        phase=phase,
        mode=seen.mode,
        replicas=counted[0],
        selector=leader_selector(deployment),
        placed_replicas=counted[1],
        ready_replicas=counted[2],
        ready=f"{counted[2]}/{deployment.spec.replicas}",
        gpus=sum(p.gpus for pl in placements for p in pl.pods),
        racks=(racks := sorted({r for p in placements for r in p.racks})),
        rack_list=",".join(racks),
        memory_needed_mib=need.total_mib if need else None,
        cost_per_hour=money(cost[0]) if cost else None,
        currency=cost[1] if cost else None,
        placements=placements,
        conditions=_conditions(
            [placed_cond, available, progressing, degraded, *summary, *domains, *gateway],
            [c.model_dump(by_alias=True) for c in previous],
            now,
        ),
    )


def _domains_condition(wanted: list[ReplicaState], missing: bool) -> list[Condition]:
    """`ComputeDomains`: whether the replicas spanning trays have their IMEX channels. Shown only
    where a replica has a ComputeDomain, or should have one and cannot: its NVLink crosses
    nodes (the engine's word, on its pods) and the API server serves no ComputeDomains."""
    with_domain = [s for s in wanted if s.domain]
    if with_domain:
        waiting = [s for s in with_domain if not s.domain_ready]
        if waiting:
            return [
                Condition(
                    type="ComputeDomains",
                    status="False",
                    reason="NotReady",
                    message=f"replica {waiting[0].replica}: ComputeDomain {waiting[0].domain} "
                    "is not Ready yet (its IMEX daemons are starting)",
                )
            ]
        return [
            Condition(
                type="ComputeDomains",
                status="True",
                reason="Ready",
                message=f"{_plural(len({s.domain for s in with_domain}), 'ComputeDomain')} Ready",
            )
        ]
    if missing and any(s.nvlink_crosses_nodes for s in wanted):
        return [
            Condition(
                type="ComputeDomains",
                status="False",
                reason="NotInstalled",
                message=DOMAINS_MISSING,
            )
        ]
    return []


def domains_missing(status: InferenceDeploymentStatus) -> bool:
    """Whether the status says multi-node NVLink is not set up for want of ComputeDomains."""
    return any(c.type == "ComputeDomains" and c.reason == "NotInstalled" for c in status.conditions)


def _inference_pool_condition(deployment: InferenceDeployment, missing: bool) -> list[Condition]:
    """`InferencePool`, with spec.inferencePool: whether the pool fronting the serving pods
    exists, or why it cannot."""
    if deployment.spec.inference_pool is None:
        return []
    if missing:
        return [
            Condition(
                type="InferencePool",
                status="False",
                reason="NotInstalled",
                message=INFERENCE_POOLS_MISSING,
            )
        ]
    message = (
        f"InferencePool {deployment.name} selects {leader_selector(deployment)} on port "
        f"{serving_port(deployment)}"
    )
    return [Condition(type="InferencePool", status="True", reason="Applied", message=message)]


def inference_pools_missing(status: InferenceDeploymentStatus) -> bool:
    """Whether the status says the deployment's InferencePool cannot be created."""
    return any(c.type == "InferencePool" and c.reason == "NotInstalled" for c in status.conditions)


def leader_selector(deployment: InferenceDeployment) -> str:
    """The leader pods of the deployment, as `kubectl get pods -l` takes it: the scale
    subresource's selector, so an HPA averages the metrics of the pods that serve (with
    spec.roles, the serving role's leaders)."""
    return ",".join(f"{key}={value}" for key, value in serving_selector(deployment).items())


def _summary(
    phase: str,
    placed: Condition,
    progressing: Condition,
    degraded: Condition,
    counts: str,
    *,
    refused: Sequence[WriteFailure] = (),
) -> list[Condition]:
    """`Ready`, `Reconciling`, `Stalled` and `Synced`: the conditions kstatus (Flux, `kubectl
    wait`) and generic health checks read. Ready means every wanted replica serves; Reconciling
    that the operator is still moving towards the spec; Stalled that it cannot without capacity
    or a fix, or that the API server refused one of its writes (`WriteRefused`, as `Synced`
    False says, with the server's message: a quota, a full service range, an admission
    webhook)."""
    stalled = progressing.reason == "Stalled"
    if phase == "Ready":
        ready = Condition(type="Ready", status="True", reason="AllReplicasReady", message=counts)
    else:
        if placed.status == "False" and placed.reason == "Unplaceable":
            message = placed.message
        elif degraded.status == "True":
            message = degraded.message
        else:
            message = progressing.message
        ready = Condition(type="Ready", status="False", reason=phase, message=message)
    reconciling = Condition(
        type="Reconciling",
        status="True" if progressing.status == "True" else "False",
        reason=progressing.reason,
        message=progressing.message,
    )
    stall = Condition(
        type="Stalled",
        status="True" if stalled else "False",
        reason="WaitingForCapacity" if stalled else "AsExpected",
        message=progressing.message if stalled else counts,
    )
    synced = Condition(
        type="Synced", status="True", reason="Applied", message="every write was accepted"
    )
    if refused:
        message = refused_message(refused)
        stall = Condition(type="Stalled", status="True", reason="WriteRefused", message=message)
        synced = Condition(type="Synced", status="False", reason="WriteRefused", message=message)
    return [ready, reconciling, stall, synced]


def failed_status(
    generation: int | None, message: str, previous: Iterable[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    """A deployment the operator cannot read (the API server should have refused it)."""
    conds = [
        Condition(type="Placed", status="False", reason="InvalidSpec", message=message),
        Condition(type="Ready", status="False", reason="InvalidSpec", message=message),
        Condition(type="Reconciling", status="False", reason="InvalidSpec", message=message),
        Condition(type="Stalled", status="True", reason="InvalidSpec", message=message),
    ]
    status = InferenceDeploymentStatus(
        observed_generation=generation,
        phase="Failed",
        conditions=_conditions(conds, previous, now),
    )
    return dump(status)


# How long a RackPool may match no rack before it is Stalled: nodes of a new rack may be joining.
POOL_GRACE_SECONDS = 300.0


def pool_status(
    pool: Pool,
    conflicts: Mapping[str, list[str]],
    previous: Iterable[Mapping[str, Any]],
    now: str,
    grace: float = POOL_GRACE_SECONDS,
    *,
    domains_served: bool = False,
) -> RackPoolStatus:
    """Racks, health, free racks and GPUs of one pool, and the deployments on each rack."""
    racks = []
    for rack in pool.racks.values():
        racks.append(
            RackStatus(
                name=rack.name,
                block=rack.block,
                nodes=len(rack.nodes),
                health=rack.health,
                gpus=GpuCounts(
                    allocatable=rack.allocatable,
                    allocated=rack.used,
                    free=max(rack.allocatable - rack.used, 0),
                ),
                held_by=rack.held_by[0] if rack.held_by else None,
                deployments=sorted(rack.deployments),
            )
        )
    healthy = [r for r in racks if r.health == "Healthy"]
    since = now
    free = [r for r in pool.racks.values() if r.empty and r.health == "Healthy"]
    gpus = GpuCounts(
        allocatable=sum(r.gpus.allocatable for r in racks),
        allocated=sum(r.gpus.allocated for r in racks),
        free=sum(r.gpus.free for r in racks),
    )
    if not racks:
        ready = Condition(
            type="Ready",
            status="False",
            reason="NoRacks",
            message="no node matches spec.nodeSelector and carries the label "
            f"{pool.spec.rack_label}",
        )
        since = _since(previous, "Ready", "False", now)
    elif not healthy:
        ready = Condition(
            type="Ready",
            status="False",
            reason="NoHealthyRack",
            message=f"none of {_plural(len(racks), 'rack')} is Healthy",
        )
    else:
        unhealthy = [f"{r.name} {r.health}" for r in racks if r.health != "Healthy"]
        ready = Condition(
            type="Ready",
            status="True",
            reason="RacksHealthy" if not unhealthy else "SomeRacksUnhealthy",
            message=f"{len(healthy)} of {_plural(len(racks), 'rack')} Healthy"
            + (f" ({', '.join(unhealthy[:5])})" if unhealthy else ""),
        )
    mine = {node: pools for node, pools in conflicts.items() if pool.name in pools}
    if mine:
        others = sorted({p for pools in mine.values() for p in pools if p != pool.name})
        names = sorted(mine)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        overlap = Condition(
            type="NodesOverlap",
            status="True",
            reason="SelectedByOtherPools",
            message=f"{_plural(len(names), 'node')} ({shown}) also selected by RackPool "
            f"{', '.join(others)}; they belong to neither until the selectors are disjoint",
        )
    else:
        overlap = Condition(
            type="NodesOverlap",
            status="False",
            reason="Disjoint",
            message="no node is selected by another RackPool",
        )
    fragmented = sum(r.gpus.free for r in racks if r.gpus.allocated)
    cost = None
    if pool.spec.pricing is not None:
        price = pool.spec.pricing.price
        cost = PoolCost(
            currency=price.currency,
            per_gpu_hour=money(price.per_gpu_hour),
            idle_per_hour=money(price.of(gpus.free)),
            fragmented_per_hour=money(price.of(fragmented)),
        )
    progress = _pool_progress(ready, None if racks else since, now, grace)
    return RackPoolStatus(
        observed_generation=pool.generation,
        racks=len(racks),
        healthy_racks=len(healthy),
        free_racks=len(free),
        nodes=sum(r.nodes for r in racks),
        gpus=gpus,
        fragmented_gpus=fragmented,
        cost=cost,
        rack_statuses=racks,
        conditions=_conditions(
            [ready, overlap, *progress, *_pool_domains(pool, domains_served)], previous, now
        ),
    )


def _pool_domains(pool: Pool, served: bool) -> list[Condition]:
    """`ComputeDomains` on a pool that wants them: whether the API server serves them."""
    if not pool.spec.wants_compute_domains:
        return []
    if served:
        return [
            Condition(
                type="ComputeDomains",
                status="True",
                reason="Served",
                message="replicas whose pods span trays get a ComputeDomain (IMEX channels)",
            )
        ]
    return [
        Condition(
            type="ComputeDomains", status="False", reason="NotInstalled", message=DOMAINS_MISSING
        )
    ]


def _since(previous: Iterable[Mapping[str, Any]], kind: str, state: str, now: str) -> str:
    """When the condition `kind` took the status `state`; `now` when it has not yet."""
    for cond in previous:
        if cond.get("type") == kind and cond.get("status") == state:
            return str(cond.get("lastTransitionTime") or now)
    return now


def _seconds_between(start: str, end: str) -> float:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return 0.0


def _pool_progress(
    ready: Condition, no_racks_since: str | None, now: str, grace: float
) -> list[Condition]:
    """`Reconciling` and `Stalled` for kstatus: a pool whose selector has matched no rack for
    `grace` seconds is Stalled (nodes may still be joining before that)."""
    if no_racks_since is None:
        return [
            Condition(type="Reconciling", status="False", reason="RacksFound",
                      message=ready.message),
            Condition(type="Stalled", status="False", reason="AsExpected",
                      message=ready.message),
        ]  # fmt: skip
    waited = _seconds_between(no_racks_since, now)
    if waited < grace:
        return [
            Condition(type="Reconciling", status="True", reason="WaitingForRacks",
                      message=f"{ready.message}; waiting {grace:.0f} s for nodes to join"),
            Condition(type="Stalled", status="False", reason="WaitingForRacks",
                      message=ready.message),
        ]  # fmt: skip
    return [
        Condition(type="Reconciling", status="False", reason="NoMatchingNodes",
                  message=ready.message),
        Condition(type="Stalled", status="True", reason="NoMatchingNodes",
                  message=f"{ready.message}, for {waited:.0f} s: check spec.nodeSelector and "
                  "spec.rackLabel against the node labels"),
    ]  # fmt: skip


def dump(status: InferenceDeploymentStatus | RackPoolStatus) -> dict[str, Any]:
    """A status as it is written to the API: camelCase, no nulls."""
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def changed(new: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether writing `new` would change anything the operator owns in `current`."""
    current = current or {}
    return any(current.get(key) != value for key, value in new.items())
