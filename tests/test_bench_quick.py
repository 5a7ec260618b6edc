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
    assert set(parts) == {"placement", "apply", "churn", "optimal", "overhead", "plan_speed"}
    assert not [name for name, part in parts.items() if "error" in part]
    assert "skipped" in parts["apply"]
    assert {r["racks"] for r in parts["placement"]["runs"]} == {10}
    assert set(parts["churn"]["systems"]) == {
        "rackscale",
        "kube-scheduler (first found)",
        "kube-scheduler (random ties)",
    }
    assert set(parts["optimal"]["families"]) == {"over", "under"}
    assert parts["overhead"]["runs"][0]["pods"] > 0
    speed = parts["plan_speed"]
    assert (speed["racks"], speed["replicas"]) == (20, 40)
    for source in ("yaml", "json"):  # the CLI's own exit code: every replica placed
        assert speed[source]["exit_code"] == 0
        assert speed[source]["unplaced"] == 0


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
