"""`python -m bench [--quick]`: rackscale against kube-scheduler alone, every part in one run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import churn, machine, optimal, placement, plan_speed, report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
QUICK_OUT = Path(__file__).parent / "out"  # git-ignored: quick runs are not results

# Every size the run uses, full and quick; the report prints them.
FULL = {
    "placement_racks": [10, 100, 1000],
    "placement_max_replicas": None,
    "apply_trials": 20,
    "failover_trials": 5,  # leader killed, new deployment's pods created by the standby
    "validate_events": 120,  # a churn stream through the real kube-scheduler, to check the model
    "churn_racks": 64,
    "churn_events": 6000,
    "optimal_instances": 200,
    "optimal_solver_seconds": 5.0,
    "overhead": [(100, 50, 20), (1000, 500, 10)],  # (racks, deployments filling them, passes)
    "plan_speed": (1000, 2000),  # (racks, replicas): `rackscale plan` as a CI gate
}
QUICK = {
    "placement_racks": [10],
    "placement_max_replicas": 40,
    "apply_trials": 2,
    "failover_trials": 1,
    "validate_events": 20,
    "churn_racks": 8,
    "churn_events": 300,
    "optimal_instances": 10,
    "optimal_solver_seconds": 1.0,
    "overhead": [(20, 10, 5)],
    "plan_speed": (20, 40),
}


def _placement(params: dict[str, Any], seed: int) -> dict[str, Any]:
    runs = [
        placement.run(n, seed, params["placement_max_replicas"]) for n in params["placement_racks"]
    ]
    for r in runs:
        placement.show(r)
    return {
        "mix": [{"label": m[0], "weight": m[1], "spec": m[2]} for m in placement.MIX],
        "runs": runs,
    }


def _apply(params: dict[str, Any], seed: int, keep: bool) -> dict[str, Any]:
    from bench import apply

    logs = Path(__file__).parent / ".logs"  # the operator's log; git-ignored
    return apply.run(params["apply_trials"], seed, logs, params["validate_events"], keep)


def _failover(params: dict[str, Any], keep: bool) -> dict[str, Any]:
    from bench import failover

    logs = Path(__file__).parent / ".logs" / "failover"  # the operators' logs; git-ignored
    return failover.run(params["failover_trials"], logs, keep)


def _overhead(params: dict[str, Any]) -> dict[str, Any]:
    runs = []
    for racks, deployments, passes in params["overhead"]:
        # Its own process: the RSS is then the reconciler's state at that size and nothing else.
        done = subprocess.run(
            [sys.executable, "-m", "bench.passes", str(racks), str(deployments), str(passes)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"runs": runs}


def _plan_speed(params: dict[str, Any], out: Path) -> dict[str, Any]:
    racks, replicas = params["plan_speed"]
    result = plan_speed.run(racks, replicas, out / "plan-speed")
    plan_speed.show(result)
    return result


def _part(name: str, parts: dict[str, Any], work: Callable[[], dict[str, Any]]) -> None:
    print(f"\n==> {name}", flush=True)
    started = time.perf_counter()
    try:
        parts[name] = work()
    except Exception as error:
        traceback.print_exc()
        parts[name] = {"error": f"{type(error).__name__}: {error}"}
    parts[name]["seconds"] = round(time.perf_counter() - started, 1)
    parts[name]["load_average_after"] = machine.load_average()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no 1,000-rack parts")
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for JSON, Markdown, PNG (bench/results; quick: bench/out)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--apply",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run part 2 on the local control plane (default: yes, but not with --quick)",
    )
    parser.add_argument("--keep-cluster", action="store_true", help="leave the bench cluster up")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    args.out = args.out or (QUICK_OUT if args.quick else RESULTS)
    with_apply = (not args.quick) if args.apply is None else args.apply
    os.environ.setdefault("RACKSCALE_CLUSTER_DIR", str(Path(__file__).parent / ".cluster"))
    started = datetime.now(UTC)
    figures: dict[str, Any] = {
        "benchmark": "rackscale against kube-scheduler alone",
        "date": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "seed": args.seed,
        "parameters": {**params, "apply": with_apply, "churn_target_load": churn.TARGET_LOAD},
        "machine": machine.describe(),
    }
    parts: dict[str, Any] = {}
    seed = args.seed
    _part("placement", parts, lambda: _placement(params, seed))
    if with_apply:
        _part("apply", parts, lambda: _apply(params, seed, args.keep_cluster))
        _part("failover", parts, lambda: _failover(params, args.keep_cluster))
    else:
        parts["apply"] = {"skipped": "quick mode: no local control plane (run without --quick)"}
        parts["failover"] = {"skipped": "runs with the apply part, on the local control plane"}
    _part("churn", parts, lambda: churn.run(params["churn_racks"], params["churn_events"], seed))
    _part(
        "optimal",
        parts,
        lambda: optimal.run(params["optimal_instances"], seed, params["optimal_solver_seconds"]),
    )
    _part("overhead", parts, lambda: _overhead(params))
    _part("plan_speed", parts, lambda: _plan_speed(params, QUICK_OUT))
    figures["parts"] = parts
    figures["load_average_end"] = machine.load_average()
    figures["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    figures["headline"] = report.headline(figures)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{started:%Y-%m-%d}"
    (args.out / f"{stem}.json").write_text(json.dumps(figures, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(report.markdown(figures, args.out, stem))
    print("\n" + report.table(figures["headline"]))
    print(f"\nwritten: {args.out / stem}.json, {args.out / stem}.md and its plots")
    failed = [name for name, part in parts.items() if "error" in part]
    if failed:
        print(f"parts that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
