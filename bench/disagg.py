"""Disaggregated serving under churn: serving groups (prefill + decode) kept in one rack, against
the same roles placed as independent deployments, as users do without spec.roles.

One stream of groups arriving and leaving at up to 90% of the GPUs, through the real engine on
simulated GB200 NVL72 racks with ComputeDomains on (NVIDIA's DRA driver: one pod of a domain per
tray). Reported: the share of placed groups whose prefill and decode share an NVLink domain (one
rack), the groups refused, and the whole racks free at the end and on average over the second
half. `python -m bench.disagg [--racks N --events N --seed N]` prints the figures and writes
them to bench/out/disagg.json.

A group placed as independent deployments is counted placed only when all its role replicas
are; when some are not, those placed are given back, so that both systems carry the same kind
of load (a half-placed group serves nothing).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.churn import Event, fragmentation
from rackscale.api import InferenceDeployment
from rackscale.placement import Decision, place_replica
from rackscale.placement.groups import place_group
from rackscale.topology import Snapshot, build_snapshot
from tests.factory import nvl72, pool

TRAYS, TRAY_GPUS, POD_GPUS = 18, 4, 4
RACK_GPUS = TRAYS * TRAY_GPUS
TARGET_LOAD = 0.9
OUT = Path(__file__).parent / "out"

# (name, weight, prefill (replicas, GPUs each), decode (replicas, GPUs each)): pods of 4 GPUs,
# data and expert parallel over the trays, as DeepSeek-style MoE models are served.
MIX: list[tuple[str, int, tuple[int, int], tuple[int, int]]] = [
    ("small", 30, (1, 4), (1, 8)),  # 12 GPUs
    ("medium", 25, (1, 8), (1, 16)),  # 24
    ("deepseek-r1", 20, (1, 8), (1, 32)),  # 40: examples/deepseek-r1-disagg.yaml
    ("two-prefill", 15, (2, 8), (1, 32)),  # 48
    ("large", 10, (1, 16), (1, 48)),  # 64
]
SIZES = {name: p[0] * p[1] + d[0] * d[1] for name, _, p, d in MIX}


def stream(capacity: int, events: int, seed: int) -> tuple[list[Event], dict[int, str]]:
    """Arrivals and departures of groups keeping the demand at most TARGET_LOAD of `capacity`;
    an arrival that would exceed it becomes a departure. Returns the events and each job's kind."""
    rng = random.Random(seed)
    names, weights = [m[0] for m in MIX], [m[1] for m in MIX]
    active: dict[int, int] = {}
    kinds: dict[int, str] = {}
    demand, out, next_id = 0, [], 0
    limit = int(TARGET_LOAD * capacity)
    for _ in range(events):
        want_arrival = demand < 0.8 * limit or rng.random() < 0.5
        kind = rng.choices(names, weights)[0]
        size = SIZES[kind]
        if want_arrival and demand + size <= limit:
            active[next_id], kinds[next_id] = size, kind
            demand += size
            out.append(Event(next_id, size))
            next_id += 1
        elif active:
            job = rng.choice(list(active))
            demand -= active.pop(job)
            out.append(Event(job, 0))
    return out, kinds


def _role(name: str, replicas: int, gpus: int) -> dict[str, Any]:
    return {
        "name": name,
        "replicas": replicas,
        "parallelism": {"data": gpus, "expert": gpus},
        "gpusPerPod": POD_GPUS,
        "template": {"spec": {"containers": [{"name": "server"}]}},
    }


def group_deployment(job: int, kind: str) -> InferenceDeployment:
    """The group as one InferenceDeployment with spec.roles (colocate Rack by default)."""
    _, _, (p, pg), (d, dg) = next(m for m in MIX if m[0] == kind)
    spec = {
        "replicas": 1,
        "placement": {"rackPool": "gb200", "fallback": "Never"},
        "roles": [_role("prefill", p, pg), _role("decode", d, dg)],
    }
    return InferenceDeployment.model_validate(
        {"metadata": {"name": f"job-{job}", "namespace": "llm"}, "spec": spec}
    )


def role_deployments(job: int, kind: str) -> list[InferenceDeployment]:
    """The same roles as two ordinary deployments, `job-N-prefill` and `job-N-decode`."""
    _, _, (p, pg), (d, dg) = next(m for m in MIX if m[0] == kind)
    out = []
    for role, replicas, gpus in (("decode", d, dg), ("prefill", p, pg)):  # the larger first
        spec = {
            "replicas": replicas,
            "parallelism": {"data": gpus, "expert": gpus},
            "gpusPerPod": POD_GPUS,
            "placement": {"rackPool": "gb200", "fallback": "Never"},
        }
        meta = {"name": f"job-{job}-{role}", "namespace": "llm"}
        out.append(InferenceDeployment.model_validate({"metadata": meta, "spec": spec}))
    return out


def racks_snapshot(racks: int) -> Snapshot:
    nodes = nvl72(racks, trays=TRAYS, gpus=TRAY_GPUS, blocks=max(1, racks // 4))
    return build_snapshot(nodes, [], [pool("gb200")], compute_domains=True)


class Colocated:
    """Serving groups with spec.roles, `colocate: Rack`: `place_group`, undone on departure."""

    name = "colocate: Rack"

    def __init__(self, racks: int) -> None:
        self.snapshot = racks_snapshot(racks)
        self.held: dict[int, list[Decision]] = {}

    def arrive(self, job: int, kind: str) -> dict[str, set[str]] | None:
        decision = place_group(self.snapshot, group_deployment(job, kind), 0, explain=False)
        if not decision.placed:
            return None
        self.held[job] = decision.decisions
        return {
            member.role: set(d.plan.racks) for member, d in decision.roles if d.plan is not None
        }

    def depart(self, job: int) -> None:
        for decision in reversed(self.held.pop(job, [])):
            if decision.reservation:
                decision.reservation.undo()


class Independent(Colocated):
    """The same roles as independent deployments: each role replica placed on its own."""

    name = "independent deployments"

    def arrive(self, job: int, kind: str) -> dict[str, set[str]] | None:
        decisions: list[Decision] = []
        racks: dict[str, set[str]] = {}
        for dep in role_deployments(job, kind):
            role = dep.name.rsplit("-", 1)[1]
            for replica in range(dep.spec.replicas):
                decision = place_replica(self.snapshot, dep, replica, explain=False)
                decisions.append(decision)
                if decision.plan is None:
                    self.held[job] = decisions
                    self.depart(job)  # a group placed in part serves nothing: give it back
                    return None
                racks.setdefault(role, set()).update(decision.plan.racks)
        self.held[job] = decisions
        return racks


def free_by_rack(snapshot: Snapshot) -> dict[str, list[int]]:
    racks = snapshot.pools["gb200"].racks.values()
    return {r.name: [n.free for n in r.nodes] for r in racks}


@dataclass(slots=True)
class Tally:
    offered: int = 0
    placed: int = 0
    refused: int = 0
    gpus_placed: int = 0
    together: int = 0  # placed groups whose roles all lie in one rack
    series: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        share = round(self.together / self.placed, 4) if self.placed else None
        return {
            "offered": self.offered,
            "placed": self.placed,
            "refused": self.refused,
            "gpus_placed": self.gpus_placed,
            "same_nvlink_domain": self.together,
            "same_nvlink_domain_share": share,
        }


def simulate(
    system: Colocated, events: list[Event], kinds: dict[int, str], capacity: int
) -> dict[str, Any]:
    tally = Tally()
    sample = max(1, len(events) // 200)
    started = time.perf_counter()
    for i, event in enumerate(events):
        if event.arrival:
            tally.offered += 1
            racks = system.arrive(event.job, kinds[event.job])
            if racks is None:
                tally.refused += 1
            else:
                tally.placed += 1
                tally.gpus_placed += event.gpus
                tally.together += len(set().union(*racks.values())) == 1
        else:
            system.depart(event.job)
        if i % sample == 0 or i == len(events) - 1:
            frag = fragmentation(free_by_rack(system.snapshot))
            load = 1 - frag["free_gpus"] / capacity
            tally.series.append({"event": i, "load": round(load, 4), **frag})
    result = tally.summary()
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["after_churn"] = fragmentation(free_by_rack(system.snapshot))
    half = tally.series[len(tally.series) // 2 :]
    result["second_half_mean"] = {
        k: round(sum(s[k] for s in half) / len(half), 3)
        for k in ("load", "whole_racks_free", "largest_in_one_rack")
    }
    return result


def run(racks: int = 32, events: int = 3000, seed: int = 1) -> dict[str, Any]:
    """The same stream of serving groups through both systems."""
    capacity = racks * RACK_GPUS
    evs, kinds = stream(capacity, events, seed)
    systems = [Colocated(racks), Independent(racks)]
    return {
        "racks": racks,
        "gpus": capacity,
        "events": len(evs),
        "arrivals": sum(e.arrival for e in evs),
        "target_load": TARGET_LOAD,
        "compute_domains": True,
        "mix": [
            {"name": n, "weight": w, "prefill": list(p), "decode": list(d), "gpus": SIZES[n]}
            for n, w, p, d in MIX
        ],
        "seed": seed,
        "systems": {s.name: simulate(s, evs, kinds, capacity) for s in systems},
    }


def show(result: dict[str, Any]) -> None:
    print(
        f"disaggregated serving under churn: {result['racks']} NVL72 racks "
        f"({result['gpus']} GPUs), {result['arrivals']} serving groups arriving over "
        f"{result['events']} events, load up to {result['target_load']:.0%}, ComputeDomains on"
    )
    head = f"  {'system':<26} {'placed':>7} {'refused':>8} {'same rack':>10} "
    print(head + f"{'whole racks free (end, 2nd-half mean)':>38}  load (2nd-half mean)")
    for name, s in result["systems"].items():
        share = s["same_nvlink_domain_share"]
        end, mean = s["after_churn"]["whole_racks_free"], s["second_half_mean"]["whole_racks_free"]
        print(
            f"  {name:<26} {s['placed']:>7} {s['refused']:>8} "
            f"{'-' if share is None else f'{share:.1%}':>10} "
            f"{end:>24}, {mean:<13} {s['second_half_mean']['load']:.1%}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.disagg", description=__doc__)
    parser.add_argument("--racks", type=int, default=32)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.racks, args.events, args.seed)
    show(result)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "disagg.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT / 'disagg.json'}")
    return result


if __name__ == "__main__":
    main()
