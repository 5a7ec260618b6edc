"""Locality and fragmentation under churn: the engine and the kube-scheduler model, one stream."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench import baseline
from rackscale.placement import Reservation, place_replica
from rackscale.topology import build_snapshot
from tests.factory import deployment, nvl72, pool

TRAYS, TRAY_GPUS, POD_GPUS, TENSOR = 18, 4, 4, 8
RACK_GPUS = TRAYS * TRAY_GPUS
TARGET_LOAD = 0.9

# (GPUs, weight, parallelism): every size is tensor 8 on trays of 4, so each TP group is 2 pods.
MIX: list[tuple[int, int, dict[str, Any]]] = [
    (8, 30, {}),
    (16, 22, {"data": 2}),
    (32, 18, {"data": 4, "expert": 32}),
    (64, 12, {"data": 8, "expert": 64}),
    (72, 10, {"pipeline": 9}),
    (144, 8, {"pipeline": 18, "replicaScope": "Any"}),
]


@dataclass(frozen=True, slots=True)
class Event:
    """An arrival (job id, GPUs) or a departure (job id, 0)."""

    job: int
    gpus: int

    @property
    def arrival(self) -> bool:
        return self.gpus > 0


def stream(capacity: int, events: int, seed: int) -> list[Event]:
    """Arrivals and departures keeping the demand at most TARGET_LOAD of `capacity`.

    An arrival that would lift the demand above the target is replaced by a departure, so both
    systems are offered exactly the same jobs and anything either refuses is its own doing."""
    rng = random.Random(seed)
    sizes, weights = [m[0] for m in MIX], [m[1] for m in MIX]
    active: dict[int, int] = {}
    demand, out, next_id = 0, [], 0
    limit = int(TARGET_LOAD * capacity)
    for _ in range(events):
        want_arrival = demand < 0.8 * limit or rng.random() < 0.5
        size = rng.choices(sizes, weights)[0]
        if want_arrival and demand + size <= limit:
            active[next_id] = size
            demand += size
            out.append(Event(next_id, size))
            next_id += 1
        elif active:
            job = rng.choice(list(active))
            demand -= active.pop(job)
            out.append(Event(job, 0))
    return out


def _min_racks(slots: list[int], pods: int) -> int:
    """Fewest racks whose free pod slots hold `pods` (0 when all racks together cannot)."""
    total = 0
    for n, s in enumerate(sorted(slots, reverse=True), 1):
        total += s
        if total >= pods:
            return n
    return 0


@dataclass(slots=True)
class Tally:
    """What one system did with the stream."""

    offered: int = 0
    placed: int = 0
    refused: int = 0
    gpus_placed: int = 0
    gpus_refused: int = 0
    tp_groups: int = 0
    tp_in_domain: int = 0
    rack_sized: int = 0  # placed replicas of at most one rack
    in_one_rack: int = 0
    split: int = 0
    avoidable_splits: int = 0
    extra_racks: int = 0  # multi-rack replicas spread over more racks than needed
    refused_by_size: Counter[int] = field(default_factory=Counter)
    series: list[dict[str, float]] = field(default_factory=list)

    def record(self, gpus: int, racks_of_pods: list[str], min_racks: int) -> None:
        """One placed replica: its pods' racks in shard order, and the fewest racks it needed."""
        self.placed += 1
        self.gpus_placed += gpus
        groups = [
            racks_of_pods[i : i + TENSOR // POD_GPUS] for i in range(0, len(racks_of_pods), 2)
        ]
        self.tp_groups += len(groups)
        self.tp_in_domain += sum(len(set(g)) == 1 for g in groups)
        spanned = len(set(racks_of_pods))
        if gpus <= RACK_GPUS:
            self.rack_sized += 1
            self.in_one_rack += spanned == 1
            self.split += spanned > 1
        if min_racks and spanned > min_racks:
            self.avoidable_splits += gpus <= RACK_GPUS
            self.extra_racks += gpus > RACK_GPUS

    def summary(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "placed": self.placed,
            "refused": self.refused,
            "gpus_placed": self.gpus_placed,
            "gpus_refused": self.gpus_refused,
            "refused_by_size": dict(sorted(self.refused_by_size.items())),
            "tp_groups": self.tp_groups,
            "tp_in_domain_share": _share(self.tp_in_domain, self.tp_groups),
            "rack_sized_replicas": self.rack_sized,
            "in_one_rack_share": _share(self.in_one_rack, self.rack_sized),
            "split_replicas": self.split,
            "avoidable_splits": self.avoidable_splits,
            "multi_rack_with_extra_racks": self.extra_racks,
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class Rackscale:
    """The real engine on a snapshot; a departure undoes the replica's reservation."""

    name = "rackscale"

    def __init__(self, racks: int) -> None:
        nodes = nvl72(racks, trays=TRAYS, gpus=TRAY_GPUS, blocks=max(1, racks // 4))
        self.snapshot = build_snapshot(nodes, [], [pool("gb200")])
        self.pool = self.snapshot.pools["gb200"]
        self.jobs: dict[int, Reservation | None] = {}

    def free_by_rack(self) -> dict[str, list[int]]:
        return {r.name: [n.free for n in r.nodes] for r in self.pool.racks.values()}

    def arrive(self, job: int, gpus: int) -> list[str] | None:
        spec = next(m[2] for m in MIX if m[0] == gpus)
        dep = deployment(f"job-{job}", tensor=TENSOR, gpusPerPod=POD_GPUS, fallback="Never", **spec)
        decision = place_replica(self.snapshot, dep, 0)
        if decision.plan is None:
            return None
        self.jobs[job] = decision.reservation
        pods = sorted(decision.plan.pods, key=lambda p: p.shard)
        racks = [self.snapshot.rack_of(p.node) if p.node else None for p in pods]
        assert all(racks), "a replica placed in a pool has every pod on a rack's node"
        return [r.name for r in racks if r]

    def depart(self, job: int) -> None:
        if (reservation := self.jobs.pop(job, None)) is not None:
            reservation.undo()


FIRST_FOUND = "kube-scheduler (first found)"
RANDOM_TIES = "kube-scheduler (random ties)"
MODELS = (FIRST_FOUND, RANDOM_TIES)


class KubeSchedulerModel:
    """bench.baseline's model: every pod of the replica created at once, bound one by one.

    Ties go to the node found first (the scheduler without an extender) or to a random one:
    the real scheduler's parallel filter lands between the two, so both are reported."""

    def __init__(self, racks: int, seed: int, random_ties: bool = False) -> None:
        self.name = RANDOM_TIES if random_ties else FIRST_FOUND
        self.nodes = [
            baseline.Node(f"gb200-{r:04d}-{t:02d}", f"clique-{r:04d}", TRAY_GPUS)
            for r in range(racks)
            for t in range(TRAYS)
        ]
        self.scheduler = baseline.KubeScheduler(
            self.nodes, random.Random(seed), random_ties=random_ties
        )
        self.jobs: dict[int, list[baseline.Node]] = {}

    def free_by_rack(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for n in self.nodes:
            out.setdefault(n.rack, []).append(n.free)
        return out

    def arrive(self, job: int, gpus: int) -> list[str] | None:
        bound = self.scheduler.place_all([POD_GPUS] * (gpus // POD_GPUS))
        if bound is None:
            return None
        self.jobs[job] = bound
        return [n.rack for n in bound]

    def depart(self, job: int) -> None:
        for node in self.jobs.pop(job, []):
            self.scheduler.release(node, POD_GPUS)


def fragmentation(free_by_rack: dict[str, list[int]]) -> dict[str, int]:
    """Whole racks free, and the largest replica of 4-GPU pods one rack can still take."""
    whole = sum(all(f == TRAY_GPUS for f in frees) for frees in free_by_rack.values())
    largest = max(sum(f // POD_GPUS for f in frees) * POD_GPUS for frees in free_by_rack.values())
    free = sum(sum(frees) for frees in free_by_rack.values())
    return {"whole_racks_free": whole, "largest_in_one_rack": largest, "free_gpus": free}


def _means(samples: list[dict[str, float]]) -> dict[str, float]:
    """Fragmentation averaged over samples of the stream (the end point alone is one draw)."""
    keys = ("load", "whole_racks_free", "largest_in_one_rack")
    return {k: round(sum(s[k] for s in samples) / len(samples), 3) for k in keys}


class System(Protocol):
    """What the stream is fed to: rackscale's engine or the kube-scheduler model."""

    @property
    def name(self) -> str: ...

    def free_by_rack(self) -> dict[str, list[int]]: ...

    def arrive(self, job: int, gpus: int) -> list[str] | None: ...

    def depart(self, job: int) -> None: ...


def simulate(
    system: System, events: list[Event], capacity: int, sample_every: int
) -> dict[str, Any]:
    """Feed the stream to one system and tally locality, refusals and fragmentation."""
    tally = Tally()
    for i, event in enumerate(events):
        if event.arrival:
            tally.offered += 1
            pods = event.gpus // POD_GPUS
            slots = [sum(f // POD_GPUS for f in frees) for frees in system.free_by_rack().values()]
            racks = system.arrive(event.job, event.gpus)
            if racks is None:
                tally.refused += 1
                tally.gpus_refused += event.gpus
                tally.refused_by_size[event.gpus] += 1
            else:
                tally.record(event.gpus, racks, _min_racks(slots, pods))
        else:
            system.depart(event.job)
        if i % sample_every == 0 or i == len(events) - 1:
            frag = fragmentation(system.free_by_rack())
            load = 1 - frag["free_gpus"] / capacity
            tally.series.append({"event": i, "load": round(load, 4), **frag})
    result = tally.summary()
    result["after_churn"] = fragmentation(system.free_by_rack())
    result["second_half_mean"] = _means(tally.series[len(tally.series) // 2 :])
    result["series"] = tally.series
    return result


def run(racks: int, events: int, seed: int) -> dict[str, Any]:
    """The same stream through rackscale's engine and the kube-scheduler model."""
    capacity = racks * RACK_GPUS
    evs = stream(capacity, events, seed)
    sample = max(1, len(evs) // 200)
    systems: list[System] = [
        Rackscale(racks),
        KubeSchedulerModel(racks, seed),
        KubeSchedulerModel(racks, seed, random_ties=True),
    ]
    return {
        "racks": racks,
        "gpus": capacity,
        "events": len(evs),
        "arrivals": sum(e.arrival for e in evs),
        "target_load": TARGET_LOAD,
        "mix": [
            {"gpus": g, "weight": w, "parallelism": {"tensor": TENSOR, **p}} for g, w, p in MIX
        ],
        "seed": seed,
        "systems": {s.name: simulate(s, evs, capacity, sample) for s in systems},
    }
