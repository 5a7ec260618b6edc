"""GPUs placed by rackscale's engine against the exact optimum (OR-Tools CP-SAT) on small pools."""

from __future__ import annotations

import random
import time
from typing import Any

from bench.stats import percentile
from rackscale.placement import Placeable, place_pass, place_replica
from rackscale.topology import build_snapshot
from tests.factory import deployment, gpu_pod, nvl72, pool

TRAYS, TRAY_GPUS = 18, 4

# (GPUs, GPUs per pod, parallelism): rack-scoped replicas, pods of 2 or 4 GPUs on trays of 4.
SHAPES: list[tuple[int, int, dict[str, int]]] = [
    (8, 2, {"tensor": 2, "data": 4}),
    (8, 4, {"tensor": 8}),
    (16, 4, {"tensor": 8, "data": 2}),
    (24, 4, {"tensor": 8, "data": 3}),
    (32, 4, {"tensor": 8, "data": 4}),
    (48, 4, {"tensor": 8, "data": 6}),
    (64, 4, {"tensor": 8, "data": 8}),
    (72, 4, {"tensor": 8, "pipeline": 9}),
]


# How the replicas reach the engine: all waiting in one operator pass (as after a GitOps sync,
# or when room frees for several), or one at a time in arrival order, each decided before the
# next is known.
MODES = ("one_pass", "one_at_a_time")

# Demand as a share of the free GPUs: "over" offers more than fits (which replicas to take
# matters), "under" offers what the optimum can usually place whole (pure packing).
DEMAND = {"over": (1.05, 1.4), "under": (0.8, 1.0)}


def instance(rng: random.Random, demand: tuple[float, float]) -> dict[str, Any]:
    """4-16 racks, some trays part-used by other pods, replicas up to `demand` of the free GPUs."""
    racks = rng.randint(4, 16)
    used = {
        f"gb200-{r:04d}-{t:02d}": rng.choice([1, 2, 2, 3, 4])
        for r in range(racks)
        for t in range(TRAYS)
        if rng.random() < 0.2
    }
    capacity = racks * TRAYS * TRAY_GPUS - sum(used.values())
    replicas: list[int] = []  # indexes into SHAPES, in arrival order
    demand_target = capacity * rng.uniform(*demand)
    while True:
        pick = rng.randrange(len(SHAPES))
        if sum(SHAPES[i][0] for i in replicas) + SHAPES[pick][0] > demand_target:
            if demand_target > capacity:
                replicas.append(pick)  # over: the last one crosses the target
            break
        replicas.append(pick)
    return {"racks": racks, "used": used, "replicas": replicas}


def engine(inst: dict[str, Any], *, one_pass: bool) -> int:
    """GPUs the engine places of the replicas, given in arrival order: all waiting in one
    operator pass, or one at a time, each placed or refused before the next arrives."""
    nodes = nvl72(inst["racks"], trays=TRAYS, gpus=TRAY_GPUS)
    pods = [gpu_pod(f"other-{i}", n, g) for i, (n, g) in enumerate(inst["used"].items())]
    snapshot = build_snapshot(nodes, pods, [pool("gb200")])
    deployments = []
    for j, shape in enumerate(inst["replicas"]):
        _, per_pod, par = SHAPES[shape]
        deployments.append(deployment(f"r-{j}", gpusPerPod=per_pod, fallback="Never", **par))
    if one_pass:
        decisions = [d for _, d in place_pass(snapshot, [Placeable(dep, 0) for dep in deployments])]
    else:
        decisions = [place_replica(snapshot, dep, 0) for dep in deployments]
    return sum(sum(p.gpus for p in d.plan.pods) for d in decisions if d.plan is not None)


def optimum(inst: dict[str, Any], seconds: float) -> tuple[int, float, bool]:
    """CP-SAT: most GPUs placed, each replica whole in one rack or not at all.

    Per rack, trays with 4 free GPUs take one 4-GPU pod or two 2-GPU pods, trays with 2-3 free
    take one 2-GPU pod: counting pods per rack is exact for these pod sizes. Returns (best
    found, proven bound, proven optimal)."""
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    shapes = [SHAPES[i] for i in inst["replicas"]]
    racks = range(inst["racks"])
    full = [0] * inst["racks"]
    part = [0] * inst["racks"]
    for r in racks:
        for t in range(TRAYS):
            free = TRAY_GPUS - inst["used"].get(f"gb200-{r:04d}-{t:02d}", 0)
            full[r] += free == TRAY_GPUS
            part[r] += 2 <= free < TRAY_GPUS
    x = {(j, r): model.new_bool_var(f"x{j}_{r}") for j in range(len(shapes)) for r in racks}
    for j in range(len(shapes)):
        model.add(sum(x[j, r] for r in racks) <= 1)
    for r in racks:
        fours = sum(x[j, r] * (g // p) for j, (g, p, _) in enumerate(shapes) if p == 4)
        twos = sum(x[j, r] * (g // p) for j, (g, p, _) in enumerate(shapes) if p == 2)
        model.add(fours <= full[r])
        model.add(twos <= 2 * (full[r] - fours) + part[r])
    model.maximize(sum(x[j, r] * g for j, (g, _, _) in enumerate(shapes) for r in racks))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = seconds
    solver.parameters.num_workers = 1
    status = solver.solve(model)
    best = round(solver.objective_value) if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) else 0
    return best, solver.best_objective_bound, status == cp_model.OPTIMAL


def run(instances: int, seed: int, seconds: float) -> dict[str, Any]:
    """Both demand families, `instances` each."""
    return {
        "instances": instances,
        "seed": seed,
        "solver_seconds_limit": seconds,
        "families": {
            name: family(instances, seed + i, seconds, span)
            for i, (name, span) in enumerate(DEMAND.items())
        },
    }


def family(
    instances: int, seed: int, seconds: float, demand: tuple[float, float]
) -> dict[str, Any]:
    """Random instances: the engine, in one pass and one at a time, against CP-SAT."""
    rng = random.Random(seed)
    rows = []
    started = time.perf_counter()
    for _ in range(instances):
        inst = instance(rng, demand)
        one_pass = engine(inst, one_pass=True)
        one_at_a_time = engine(inst, one_pass=False)
        best, bound, proven = optimum(inst, seconds)
        # Unproven: compare with the solver's upper bound, which can only lower the ratio.
        reference = best if proven else bound
        rows.append(
            {
                "racks": inst["racks"],
                "replicas": len(inst["replicas"]),
                "shapes": inst["replicas"],
                "optimum": best,
                "bound": round(bound),
                "proven": proven,
                "one_pass": one_pass,
                "one_at_a_time": one_at_a_time,
                "ratio_one_pass": round(one_pass / reference, 4) if reference else 1.0,
                "ratio_one_at_a_time": round(one_at_a_time / reference, 4) if reference else 1.0,
            }
        )
    # "95th-percentile instance": the ratio that 95% of the instances reach or beat.
    return {
        "demand_of_free_gpus": list(demand),
        "all_placed_by_optimum": sum(
            r["optimum"] == sum(SHAPES[i][0] for i in r["shapes"]) for r in rows
        ),
        "proven_optimal": sum(r["proven"] for r in rows),
        "seconds": round(time.perf_counter() - started, 2),
        **{mode: _ratios([r[f"ratio_{mode}"] for r in rows]) for mode in MODES},
        "rows": rows,
    }


def _ratios(ratios: list[float]) -> dict[str, float]:
    return {
        "p95_instance_ratio": percentile(ratios, 0.05),
        "median_ratio": percentile(ratios, 0.5),
        "worst_ratio": min(ratios),
    }
