"""Placement speed: a mixed workload planned onto 100 and 1,000 NVL72 racks until ~90% full."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stats import percentile
from rackscale.api import InferenceDeployment
from rackscale.placement import place_replica
from rackscale.topology import build_snapshot
from tests.factory import deployment, nvl72, pool

OUT = Path(__file__).parent / "out"
RACK_GPUS = 72
FULL = 0.9
# Consecutive refusals after which the pool counts as full for the mix.
GIVE_UP = 50

# (label, weight, deployment spec): what a busy inference fleet asks for, small jobs the most.
MIX: list[tuple[str, int, dict[str, Any]]] = [
    ("4", 30, {"tensor": 4}),
    ("8", 25, {"tensor": 8, "gpusPerPod": 4}),
    ("16", 14, {"tensor": 8, "data": 2, "gpusPerPod": 4}),
    ("32", 12, {"tensor": 8, "data": 4, "expert": 32, "gpusPerPod": 4}),
    ("64", 5, {"tensor": 8, "data": 8, "expert": 64, "gpusPerPod": 4}),
    ("72", 5, {"tensor": 4, "pipeline": 18, "gpusPerPod": 4}),
    ("144-block", 3, {"tensor": 4, "pipeline": 4, "data": 9, "replicaScope": "Block"}),
    ("32-exclusive", 6, {"tensor": 8, "data": 4, "gpusPerPod": 4, "exclusive": True}),
]


def summary(latencies_ns: list[int], placed: int) -> dict[str, Any]:
    ms = 1e-6
    return {
        "decisions": len(latencies_ns),
        "placed": placed,
        "p50_ms": round(percentile(latencies_ns, 0.50) * ms, 4),
        "p99_ms": round(percentile(latencies_ns, 0.99) * ms, 4),
        "max_ms": round(max(latencies_ns) * ms, 4),
        "mean_ms": round(statistics.fmean(latencies_ns) * ms, 4),
    }


def jobs(rng: random.Random) -> Iterator[tuple[str, InferenceDeployment]]:
    """An endless stream of deployments drawn from the mix, each with 1-4 replicas."""
    labels = [m[0] for m in MIX]
    weights = [m[1] for m in MIX]
    specs = {m[0]: m[2] for m in MIX}
    for n in range(10**9):
        label = rng.choices(labels, weights)[0]
        spread = "Pack" if rng.random() < 0.3 else "Spread"
        yield (
            label,
            deployment(
                f"job-{n}",
                namespace=f"team-{n % 7}",
                replicas=rng.randint(1, 4),
                fallback="Never",
                spread=spread,
                **specs[label],
            ),
        )


def run(racks: int, seed: int, max_replicas: int | None) -> dict[str, Any]:
    """Fill `racks` racks with the mix and time every replica decision."""
    blocks = max(1, racks // 8)
    nodes = nvl72(racks, blocks=blocks)
    pools = [pool("gb200", blockLabel="topology.rackscale.dev/block")]
    started = time.perf_counter_ns()
    snapshot = build_snapshot(nodes, [], pools)
    build_ms = (time.perf_counter_ns() - started) / 1e6

    total = racks * RACK_GPUS
    used = 0
    refusals = 0
    by_size: dict[str, list[int]] = defaultdict(list)
    placed_by_size: dict[str, int] = defaultdict(int)
    everything: list[int] = []
    cpu: list[int] = []  # the same decisions in CPU time: less skewed by other work on the machine
    rng = random.Random(seed)
    for label, dep in jobs(rng):
        if used >= FULL * total or refusals >= GIVE_UP:
            break
        if max_replicas is not None and len(everything) >= max_replicas:
            break
        refusals = decide(snapshot, dep, label, by_size, placed_by_size, everything, cpu, refusals)
        used = sum(r.used for r in snapshot.pools["gb200"].racks.values())

    seconds = sum(everything) / 1e9
    return {
        "racks": racks,
        "nodes": len(nodes),
        "gpus": total,
        "snapshot_build_ms": round(build_ms, 2),
        "filled": round(used / total, 4),
        "decisions_per_second": round(len(everything) / seconds) if seconds else None,
        "all": summary(everything, sum(placed_by_size.values())),
        "cpu_decisions_per_second": round(len(cpu) / (sum(cpu) / 1e9)) if sum(cpu) else None,
        "cpu": summary(cpu, sum(placed_by_size.values())),
        "by_size": {k: summary(v, placed_by_size[k]) for k, v in sorted(by_size.items())},
    }


def decide(  # noqa: PLR0917 - the tallies are the caller's, updated in place
    snapshot: Any,
    dep: InferenceDeployment,
    label: str,
    by_size: dict[str, list[int]],
    placed_by_size: dict[str, int],
    everything: list[int],
    cpu: list[int],
    refusals: int,
) -> int:
    """Place every replica of `dep`, timing each decision; returns the refusal streak."""
    for replica in range(dep.spec.replicas):
        started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        decision = place_replica(snapshot, dep, replica)
        elapsed = time.perf_counter_ns() - started
        cpu.append(time.thread_time_ns() - started_cpu)
        by_size[label].append(elapsed)
        everything.append(elapsed)
        if decision.plan is not None:
            placed_by_size[label] += 1
            refusals = 0
        else:
            refusals += 1
    return refusals


def show(result: dict[str, Any]) -> None:
    print(
        f"\n{result['racks']} racks ({result['nodes']} nodes, {result['gpus']} GPUs): "
        f"snapshot {result['snapshot_build_ms']} ms, filled {result['filled']:.1%}, "
        f"{result['decisions_per_second']} decisions/s "
        f"({result['cpu_decisions_per_second']}/s of CPU time)"
    )
    print(f"  {'size':<14}{'decisions':>10}{'placed':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    rows = [*result["by_size"].items(), ("all", result["all"]), ("all, CPU time", result["cpu"])]
    for label, s in rows:
        print(
            f"  {label:<14}{s['decisions']:>10}{s['placed']:>8}"
            f"{s['p50_ms']:>10.3f}{s['p99_ms']:>10.3f}{s['max_ms']:>10.3f}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the figures, write them as JSON and return them."""
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 racks and a few replicas")
    parser.add_argument("--racks", type=int, nargs="+", help="rack counts (default 100 1000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT, help="directory for the JSON figures")
    args = parser.parse_args(argv)
    sizes = args.racks or ([10] if args.quick else [100, 1000])
    results = [run(n, args.seed, 40 if args.quick else None) for n in sizes]
    for result in results:
        show(result)
    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    figures = {
        "benchmark": "placement",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        # Other work on the machine skews the figures: the 1-minute load says how much.
        "load_average": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "seed": args.seed,
        "runs": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"placement-{datetime.now(UTC):%Y-%m-%d}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfigures written to {path}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
