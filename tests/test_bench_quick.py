"""`python -m bench --quick` runs every part it can without a cluster and writes its files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main

Run = tuple[Path, dict[str, Any]]  # the output directory and the figures written there


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("bench")
    assert main(["--quick", "--out", str(out)]) == 0
    (figures,) = out.glob("*.json")
    return out, json.loads(figures.read_text())


def test_quick_mode_writes_json_markdown_and_plots(run: Run) -> None:
    out, figures = run
    stem = next(out.glob("*.json")).stem
    report = (out / f"{stem}.md").read_text()
    for plot in ("placement", "churn", "optimal"):
        assert (out / f"{stem}-{plot}.png").stat().st_size > 0
        assert f"({stem}-{plot}.png)" in report
    assert "## Machine and versions" in report
    assert figures["quick"] is True
    assert figures["machine"]["cpus"] >= 1


def test_every_part_is_measured_or_says_why_not(run: Run) -> None:
    _, figures = run
    parts = figures["parts"]
    assert set(parts) == {
        "placement",
        "apply",
        "failover",
        "operator",
        "fleet",
        "churn",
        "disagg",
        "optimal",
        "overhead",
        "plan_speed",
    }
    assert not [name for name, part in parts.items() if "error" in part]
    assert "skipped" in parts["apply"]
    assert "skipped" in parts["failover"]
    assert "skipped" in parts["operator"]
    assert "skipped" in parts["fleet"]
    assert {r["racks"] for r in parts["placement"]["runs"]} == {10}
    (old_placement,) = parts["placement"]["old"]["runs"]  # the old commit's driver, same stream
    assert old_placement["racks"] == 10
    assert old_placement["all"]["decisions"] == parts["placement"]["runs"][0]["all"]["decisions"]
    assert set(parts["churn"]["systems"]) == {
        "rackscale",
        "kube-scheduler (first found)",
        "kube-scheduler (random ties)",
    }
    assert set(parts["optimal"]["families"]) == {"over", "under"}
    (overhead,) = parts["overhead"]["runs"]
    assert overhead["old"]["pods"] > 0
    assert overhead["new"]["pods"] > 0
    speed = parts["plan_speed"]
    assert (speed["racks"], speed["replicas"]) == (20, 40)
    for source in ("yaml", "json"):  # the CLI's own exit code: every replica placed
        assert speed[source]["exit_code"] == 0
        assert speed[source]["unplaced"] == 0
        assert speed["old"][source]["exit_code"] == 0  # the old commit's CLI, same files
        assert speed["old"][source]["cpu_s"] > 0


def test_the_headline_compares_against_targets(run: Run) -> None:
    _, figures = run
    rows = figures["headline"]
    assert {"figure", "target", "rackscale", "kube-scheduler", "verdict"} == set(rows[0])
    assert any(r["figure"].startswith("3. TP groups") for r in rows)
    assert all(r["verdict"] in {"met", "missed", "n/a"} for r in rows)


def test_the_engine_keeps_every_tp_group_in_its_rack_under_churn(run: Run) -> None:
    ours = run[1]["parts"]["churn"]["systems"]["rackscale"]
    assert ours["tp_in_domain_share"] == 1.0
    assert ours["avoidable_splits"] == 0


def test_old_and_new_code_side_by_side(run: Run) -> None:
    out, figures = run
    code = figures["parts"]["overhead"]["code"]
    assert code["old_commit"][:10] in code["old"]
    assert "one plan per pass" in code["old"]
    assert figures["parts"]["overhead"]["runs"][0]["old"]["pods"] > 0
    rows = {r["figure"]: r for r in figures["old_and_new"]}
    idle = rows["5. pass with nothing to do, 20 racks (in-memory view), p99"]
    assert idle["old"].endswith(" ms")
    assert idle["new"].endswith(" ms")
    assert idle["new meets target"] == "n/a"  # the target is at 1,000 racks
    decisions = rows["1. placement decisions/s, 10 racks"]
    assert decisions["old"].replace(",", "").isdigit()
    assert decisions["new"].replace(",", "").isdigit()
    assert decisions["new meets target"] == "n/a"
    plan = rows["plan, 20 racks, 40 replicas, YAML nodes: wall / CPU"]
    assert plan["old"].endswith(" s")
    assert plan["new"].endswith(" s")
    assert plan["target"] == "n/a"
    assert rows["6. the live operator"]["old"].startswith("quick mode")
    assert rows["7. the fleet"]["new"].startswith("quick mode")
    report = next(out.glob("*.md")).read_text()
    assert "### The operator before and after the rebuild" in report
    assert f"Old: the operator at commit {code['old_commit'][:10]}" in report


def test_the_targets_apply_at_1000_racks(run: Run) -> None:
    """Decisions/s, `plan` with YAML and the two passes, judged on the new side at 1,000 racks."""
    from bench import report

    figures = json.loads(json.dumps(run[1]))
    parts = figures["parts"]
    new_run = {**parts["placement"]["runs"][0], "racks": 1000, "decisions_per_second": 12_000}
    old_run = {**new_run, "decisions_per_second": 4_000}
    parts["placement"]["runs"] = [new_run]
    parts["placement"]["old"]["runs"] = [old_run]
    parts["plan_speed"] |= {"racks": 1000, "replicas": 2000}
    parts["plan_speed"]["yaml"] |= {"wall_s": 3.4, "cpu_s": 3.1}
    parts["plan_speed"]["old"]["yaml"] |= {"wall_s": 5.7, "cpu_s": 5.2}
    (overhead,) = parts["overhead"]["runs"]
    overhead["racks"] = 1000
    overhead["new"]["steady_pass_ms"]["p99"] = 0.4
    overhead["new"]["placing_pass_ms"]["p99"] = 18.0
    rows = {r["figure"]: r for r in report.old_and_new(figures)}
    decisions = rows["1. placement decisions/s, 1,000 racks"]
    assert (decisions["target"], decisions["old"], decisions["new"]) == (
        ">= 10,000",
        "4,000",
        "12,000",
    )
    assert decisions["new meets target"] == "met"
    plan = rows["plan, 1,000 racks, 2,000 replicas, YAML nodes: wall / CPU"]
    assert (plan["target"], plan["old"], plan["new"]) == ("<= 3 s wall", "5.70 s / 5.20 s",
                                                          "3.40 s / 3.10 s")  # fmt: skip
    assert plan["new meets target"] == "missed"
    assert rows["plan, 1,000 racks, 2,000 replicas, JSON nodes: wall / CPU"]["target"] == "n/a"
    idle = rows["5. pass with nothing to do, 1,000 racks (in-memory view), p99"]
    assert (idle["target"], idle["new"], idle["new meets target"]) == ("<= 0.5 ms", "0.40 ms",
                                                                       "met")  # fmt: skip
    placing = rows["5. pass placing one replica, 1,000 racks, p99"]
    assert (placing["target"], placing["new meets target"]) == ("<= 17 ms", "missed")


def _live_side(p50: float, cpu: float) -> dict[str, Any]:
    return {
        "fill": {"deployments": 150, "gpus": 1136, "ready_s": 40.0},
        "apply_to_pods_created_s": {"p50": p50, "p90": p50 + 0.1, "max": p50 + 0.2},
        "idle_cpu": {"window_s": 60.0, "cpu_s": 0.6 * cpu, "percent_of_core": cpu, "passes": 6},
        "rss_mib": 120.0,
        "peak_rss_mib": 130.0,
    }


def test_the_live_part_reports_old_and_new_and_a_failed_side(run: Run, tmp_path: Path) -> None:
    """A live part's figures (as bench.live returns them) in the table and the report; a side
    that failed shows as failed, its error in the report, and never meets a target."""
    from bench import report

    figures = json.loads(json.dumps(run[1]))
    live = {
        "profile": "bench-20",
        "nodes": 360,
        "code": figures["parts"]["overhead"]["code"],
        "trial_gpus": 16,
        "trial_pods": 4,
        "parameters": {"deployments": 150, "trials": 20, "idle_seconds": 60.0},
        "measurement": {"apply_to_pods_created": "w", "idle_cpu": "c", "rss": "r"},
        "old": _live_side(0.63, 1.0),
        "new": _live_side(0.25, 0.4),
    }
    figures["parts"]["operator"] = live
    rows = {r["figure"]: r for r in report.old_and_new(figures)}
    apply = rows["6. apply -> all pods created, live 20-rack kwok cluster, 150 deployments, p50"]
    assert (apply["old"], apply["new"], apply["new meets target"]) == ("0.63 s", "0.25 s", "met")
    cpu = rows["6. operator CPU while nothing changes, same cluster"]
    assert (cpu["old"], cpu["new"], cpu["new meets target"]) == (
        "1.00% of a core",
        "0.40% of a core",
        "met",
    )

    live["new"] = {"error": "RuntimeError: the new operator exited"}
    rows = {r["figure"]: r for r in report.old_and_new(figures)}
    apply = rows["6. apply -> all pods created, live 20-rack kwok cluster, 150 deployments, p50"]
    assert (apply["old"], apply["new"], apply["new meets target"]) == ("0.63 s", "failed", "n/a")
    figures["old_and_new"] = list(rows.values())
    text = report.markdown(figures, tmp_path, "live")
    assert "| old | 40.0 s | 0.63 s / 0.73 s / 0.83 s | 1.00% (0.6 s CPU in 60.0 s) |" in text
    assert "| new | failed: `RuntimeError: the new operator exited` |" in text


def _fleet_side(ready_s: float | None, no_status: int, services: int) -> dict[str, Any]:
    ready = 1000 if ready_s is not None else 310
    return {
        "deployments": 1000,
        "created": 1000,
        "pods_wanted": 1690,
        "applied_s": 9.0,
        "observed_s": 30.0 if no_status == 0 else None,
        "pods_created_s": 40.0 if ready_s is not None else None,
        "ready_s": ready_s,
        "finished": ready_s is not None,
        "at_the_end": {"observed": 1000 - no_status, "ready": ready, "no_status": no_status,
                       "failed": 0, "pods": 1690, "services": services},
        "services_wanted": 2000,
        "refused_writes": 0 if services == 2000 else 11890,
        "write_errors_by_kind": {} if services == 2000 else {"POST services 500": 11890},
        "cpu_s": 50.0,
        "cpu_percent_of_core": 40.0,
        "rss_mib": 150.0,
        "peak_rss_mib": 170.0,
    }  # fmt: skip


def test_the_fleet_part_reports_old_and_new(run: Run, tmp_path: Path) -> None:
    """The fleet part's figures (as bench.fleet returns them): a side that missed its deadline
    says so and how far it got; the new side's verdicts follow its own figures."""
    from bench import report

    figures = json.loads(json.dumps(run[1]))
    figures["parts"]["fleet"] = {
        "profile": "bench-100",
        "nodes": 1800,
        "racks": 100,
        "gpus_in_racks": 7200,
        "sizes": {"1": 300, "64": 10},
        "code": figures["parts"]["overhead"]["code"],
        "parameters": {"racks": 100, "deployments": 1000, "deadline_s": 600.0},
        "measurement": dict.fromkeys(
            (
                "clock",
                "observed_s",
                "pods_created_s",
                "ready_s",
                "failed",
                "refused_writes",
                "cpu",
                "rss",
            ),
            "m",
        ),
        "old": _fleet_side(None, 690, 620),
        "new": _fleet_side(95.0, 0, 2000),
    }
    rows = {r["figure"]: r for r in report.old_and_new(figures)}
    ready = rows["7. 1,000 deployments applied at once, 100 racks: all Ready"]
    assert (ready["old"], ready["new"], ready["new meets target"]) == (
        "not by 600 s (310 Ready)",
        "95.00 s",
        "met",
    )
    left = rows["7. deployments left without a status / saying they failed"]
    assert (left["old"], left["new"], left["new meets target"]) == ("690 / 0", "0 / 0", "met")
    services = rows["7. Services created (2 per deployment)"]
    assert (services["old"], services["new"]) == ("620 of 2,000", "2,000 of 2,000")
    refused = rows["7. writes the API server refused (all clients)"]
    assert (refused["old"], refused["new"]) == ("11,890", "0")

    figures["parts"]["fleet"]["new"] = _fleet_side(None, 5, 2000)
    rows = {r["figure"]: r for r in report.old_and_new(figures)}
    assert (
        rows["7. 1,000 deployments applied at once, 100 racks: all Ready"]["new meets target"]
        == "missed"
    )
    assert (
        rows["7. deployments left without a status / saying they failed"]["new meets target"]
        == "missed"
    )
    figures["old_and_new"] = list(rows.values())
    text = report.markdown(figures, tmp_path, "fleet")
    assert "## 7. The fleet: 1,000 deployments applied at once" in text
    assert "| old | 9.0 s | not reached | not reached | not reached | 310 / 690 / 0 |" in text
    assert "Writes answered with an error, old: POST services 500: 11890." in text
