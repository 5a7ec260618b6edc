"""`python -m bench [--quick]`: rackscale against kube-scheduler alone, every part in one run."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from bench import baseline_code, churn, disagg, machine, optimal, placement, plan_speed, report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
QUICK_OUT = Path(__file__).parent / "out"  # git-ignored: quick runs are not results
# The module timing the reconciler in memory: each side runs its own commit's copy, written
# against that commit's controller and test helpers.
OVERHEAD_DRIVER = "bench.passes"


class Sizes(TypedDict):
    """Every size the run uses; the report prints them."""

    placement_racks: list[int]
    placement_max_replicas: int | None
    apply_trials: int
    failover_trials: int
    validate_events: int
    churn_racks: int
    churn_events: int
    disagg: tuple[int, int]
    optimal_instances: int
    optimal_solver_seconds: float
    overhead: list[tuple[int, int, int]]
    plan_speed: tuple[int, int]
    operator: dict[str, Any]
    fleet: dict[str, Any]


# Every size the run uses, full and quick.
FULL: Sizes = {
    "placement_racks": [10, 100, 1000],
    "placement_max_replicas": None,
    "apply_trials": 20,
    "failover_trials": 5,  # leader killed, new deployment's pods created by the standby
    "validate_events": 120,  # a churn stream through the real kube-scheduler, to check the model
    "churn_racks": 64,
    "churn_events": 6000,
    "disagg": (32, 3000),  # (racks, events): serving groups arriving and leaving at up to 90%
    "optimal_instances": 200,
    "optimal_solver_seconds": 5.0,
    "overhead": [(100, 50, 20), (1000, 500, 10)],  # (racks, deployments filling them, passes)
    "plan_speed": (1000, 2000),  # (racks, replicas): `rackscale plan` as a CI gate
    "operator": {"deployments": 150, "trials": 20, "idle_seconds": 60.0},  # live, 20 racks
    # live: that many deployments applied at once on that many racks; each side stops at the
    # deadline (seconds from the first create) if its deployments are not all Ready by then
    "fleet": {"racks": 100, "deployments": 1000, "deadline_s": 300.0, "sides": ["old", "new"]},
}
QUICK: Sizes = {
    "placement_racks": [10],
    "placement_max_replicas": 40,
    "apply_trials": 2,
    "failover_trials": 1,
    "validate_events": 20,
    "churn_racks": 8,
    "churn_events": 300,
    "disagg": (8, 300),
    "optimal_instances": 10,
    "optimal_solver_seconds": 1.0,
    "overhead": [(20, 10, 5)],
    "plan_speed": (20, 40),
    "operator": {"deployments": 20, "trials": 3, "idle_seconds": 10.0},  # only with --operator
    "fleet": {"racks": 4, "deployments": 20, "deadline_s": 120.0, "sides": ["old", "new"]},
}


def _placement(params: Sizes, seed: int) -> dict[str, Any]:
    """Each size in a process of its own, the new code's and the old commit's own driver, same
    seed and mix; `runs` are the new code's (the headline's), `old` the old commit's."""
    runs: list[dict[str, Any]] = []
    old: list[dict[str, Any]] = []
    for n in params["placement_racks"]:
        args = [n, seed, params["placement_max_replicas"]]
        new = baseline_code.call_json("new", "bench.placement", "run", args)
        if "error" in new:
            raise RuntimeError(new["error"])
        placement.show(new)
        runs.append(new)
        old.append({"racks": n} | baseline_code.call_json("old", "bench.placement", "run", args))
    part: dict[str, Any] = {
        "mix": [{"label": m[0], "weight": m[1], "spec": m[2]} for m in placement.MIX],
        "runs": runs,
        "old": {"code": baseline_code.describe(), "runs": old},
    }
    failed = [f"{r['racks']} racks" for r in old if "error" in r]
    if failed:
        part["error"] = f"the old placement driver failed at {', '.join(failed)}"
    return part


def _apply(params: Sizes, seed: int, keep: bool) -> dict[str, Any]:
    from bench import apply

    logs = Path(__file__).parent / ".logs"  # the operator's log; git-ignored
    return apply.run(params["apply_trials"], seed, logs, params["validate_events"], keep)


def _failover(params: Sizes, keep: bool) -> dict[str, Any]:
    from bench import failover

    logs = Path(__file__).parent / ".logs" / "failover"  # the operators' logs; git-ignored
    return failover.run(params["failover_trials"], logs, keep)


def _overhead(params: Sizes) -> dict[str, Any]:
    """Each size in its own process (the RSS is then the reconciler's state at that size and
    nothing else), once against the old code and once against the new."""
    runs: list[dict[str, Any]] = []
    for racks, deployments, passes in params["overhead"]:
        args = [str(racks), str(deployments), str(passes)]
        sides = {
            side: baseline_code.run_json(side, OVERHEAD_DRIVER, args)
            for side in baseline_code.SIDES
        }
        run: dict[str, Any] = {"racks": racks, "deployments": deployments, "passes": passes}
        runs.append(run | sides)
    failed = [f"{side} at {r['racks']} racks" for r in runs for side in baseline_code.SIDES
              if "error" in r[side]]  # fmt: skip
    part: dict[str, Any] = {"code": baseline_code.describe(), "runs": runs}
    if failed:
        part["error"] = f"the overhead driver failed for {', '.join(failed)} (see the runs)"
    return part


def _operator(params: Sizes, stop_cluster: bool) -> dict[str, Any]:
    from bench import live

    logs = Path(__file__).parent / ".logs"  # the operators' logs; git-ignored
    return live.run(params["operator"], logs, stop_cluster=stop_cluster)


def _fleet(params: Sizes, stop_cluster: bool) -> dict[str, Any]:
    from bench import fleet

    logs = Path(__file__).parent / ".logs" / "fleet"  # the operators' logs; git-ignored
    result = fleet.run(params["fleet"], logs, stop_cluster=stop_cluster)
    fleet.show(result)
    return result


def _disagg(params: Sizes, seed: int) -> dict[str, Any]:
    racks, events = params["disagg"]
    result = disagg.run(racks, events, seed)
    disagg.show(result)
    return result


def _plan_speed(params: Sizes, out: Path) -> dict[str, Any]:
    racks, replicas = params["plan_speed"]
    result = plan_speed.run(racks, replicas, out / "plan-speed")
    plan_speed.show(result)
    # The old commit's own `rackscale plan` on the same files, from its export.
    try:
        env = baseline_code.environ("old")
    except baseline_code.BaselineError as error:
        result["old"] = {"error": f"{type(error).__name__}: {error}"}
    else:
        result["old"] = plan_speed.commands(
            racks, replicas, out / "plan-speed", env, baseline_code.workdir("old")
        )
        result["old"]["code"] = baseline_code.describe()
        plan_speed.show_old(result["old"])
    failed = [k for k in ("yaml", "json") if _get_exit(result["old"], k) != 0]
    if failed:
        result["error"] = f"the old commit's `rackscale plan` failed with {', '.join(failed)}"
    return result


def _get_exit(side: dict[str, Any], source: str) -> int | None:
    value = (side.get(source) or {}).get("exit_code")
    return value if isinstance(value, int) else None


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
    parser.add_argument(
        "--operator",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run part 6, the old and the new operator live on the local control plane "
        "(default: yes, but not with --quick)",
    )
    parser.add_argument(
        "--fleet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run part 7, 1,000 deployments at once on a 100-rack local cluster, old and new "
        "(default: yes, but not with --quick)",
    )
    parser.add_argument("--keep-cluster", action="store_true", help="leave the bench cluster up")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    args.out = args.out or (QUICK_OUT if args.quick else RESULTS)
    with_apply = (not args.quick) if args.apply is None else args.apply
    with_operator = (not args.quick) if args.operator is None else args.operator
    with_fleet = (not args.quick) if args.fleet is None else args.fleet
    os.environ.setdefault("RACKSCALE_CLUSTER_DIR", str(Path(__file__).parent / ".cluster"))
    started = datetime.now(UTC)
    figures: dict[str, Any] = {
        "benchmark": "rackscale against kube-scheduler alone",
        "date": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "seed": args.seed,
        "parameters": {
            **params,
            "apply": with_apply,
            "operator_live": with_operator,
            "fleet_live": with_fleet,
            "churn_target_load": churn.TARGET_LOAD,
        },
        "machine": machine.describe(),
    }
    parts = _run_parts(params, args, with_apply, with_operator, with_fleet)
    figures["parts"] = parts
    figures["load_average_end"] = machine.load_average()
    figures["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    figures["headline"] = report.headline(figures)
    figures["old_and_new"] = report.old_and_new(figures)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{started:%Y-%m-%d}"
    (args.out / f"{stem}.json").write_text(json.dumps(figures, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(report.markdown(figures, args.out, stem))
    print("\n" + report.table(figures["headline"]))
    print("\n" + report.table(figures["old_and_new"], report.OLD_AND_NEW_COLUMNS))
    print(f"\nwritten: {args.out / stem}.json, {args.out / stem}.md and its plots")
    failed = [name for name, part in parts.items() if "error" in part]
    if failed:
        print(f"parts that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _run_parts(
    params: Sizes,
    args: argparse.Namespace,
    with_apply: bool,
    with_operator: bool,
    with_fleet: bool,
) -> dict[str, Any]:
    """Every part in turn; a part that fails records its error and the run goes on."""
    parts: dict[str, Any] = {}
    seed = args.seed
    _part("placement", parts, lambda: _placement(params, seed))
    no_cluster = "quick mode: no local control plane (run without --quick)"
    # The live operator part reuses the cluster the apply part started, and stops it unless
    # it was there before this run.
    preexisting = (Path(os.environ["RACKSCALE_CLUSTER_DIR"]) / "cluster.json").exists()
    if with_apply:
        _part("apply", parts, lambda: _apply(params, seed, args.keep_cluster or with_operator))
        _part("failover", parts, lambda: _failover(params, args.keep_cluster or with_operator))
    else:
        parts["apply"] = {"skipped": no_cluster}
        parts["failover"] = {"skipped": "runs with the apply part, on the local control plane"}
    if with_operator:
        stop = not (args.keep_cluster or preexisting)
        _part("operator", parts, lambda: _operator(params, stop))
    else:
        parts["operator"] = {"skipped": no_cluster}
    # Its own 100-rack cluster: started here unless one was running before this run.
    if with_fleet:
        stop = not (args.keep_cluster or preexisting)
        _part("fleet", parts, lambda: _fleet(params, stop))
    else:
        parts["fleet"] = {"skipped": no_cluster}
    _part("churn", parts, lambda: churn.run(params["churn_racks"], params["churn_events"], seed))
    _part("disagg", parts, lambda: _disagg(params, seed))
    _part(
        "optimal",
        parts,
        lambda: optimal.run(params["optimal_instances"], seed, params["optimal_solver_seconds"]),
    )
    _part("overhead", parts, lambda: _overhead(params))
    _part("plan_speed", parts, lambda: _plan_speed(params, QUICK_OUT))
    return parts


if __name__ == "__main__":
    sys.exit(main())
