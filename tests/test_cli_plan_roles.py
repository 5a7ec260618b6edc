"""`rackscale plan` on a disaggregated deployment: groups and roles in JSON, table and YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.test_cli_plan import EXAMPLES, cluster, run, write

__all__ = ["cluster"]  # the fixture, used by name

DISAGG = EXAMPLES / "deepseek-r1-disagg.yaml"


def scaled(tmp_path: Path, replicas: int) -> Path:
    doc = yaml.safe_load(DISAGG.read_text())
    doc["spec"]["replicas"] = replicas
    return write(tmp_path / "disagg.yaml", doc)


def test_json_names_each_role_replicas_group_and_role(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "plan", "--cluster", cluster, "-o", "json", scaled(tmp_path, 2))
    assert code == 0
    [placement] = json.loads(out)["placements"]
    seen = [(r["replica"], r["group"], r["role"], r["roleIndex"]) for r in placement["replicas"]]
    # group x 1000 + role position x 100 + index
    assert seen == [(0, 0, "prefill", 0), (100, 0, "decode", 0), (1000, 1, "prefill", 0),
                    (1100, 1, "decode", 0)]  # fmt: skip
    by_group: dict[int, set[str]] = {}
    for r in placement["replicas"]:
        by_group.setdefault(r["group"], set()).update(r["racks"])
        assert r["computeDomain"] == f"deepseek-r1-disagg-g{r['group']}"
    assert all(len(racks) == 1 for racks in by_group.values())  # prefill beside its decode


def test_the_table_counts_groups_and_a_missing_group_fails_the_plan(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "plan", "--cluster", cluster, scaled(tmp_path, 3))
    assert code == 3  # two racks: the third group fits nowhere whole
    assert "llm/deepseek-r1-disagg  Rack  2/3" in out
    assert "replica 5 (group 2 decode 0)" not in out
    assert "no rack holds serving group 2 whole (1 prefill of 8, 1 decode of 32 = 40 GPUs)" in out
    assert "error: 2 replicas left unplaced" in err


def test_yaml_has_the_role_services_and_one_compute_domain_per_group(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "plan", "--cluster", cluster, "-o", "yaml", "--together", DISAGG)
    assert code == 0
    items = yaml.safe_load(out)["items"]
    names = [(o["kind"], o["metadata"]["name"]) for o in items]
    assert names[0] == ("ComputeDomain", "deepseek-r1-disagg-g0")
    assert ("Pod", "deepseek-r1-disagg-g0-decode-0-7") in names
    services = [n for k, n in names if k == "Service"]
    assert services == ["deepseek-r1-disagg-shards", "deepseek-r1-disagg",
                        "deepseek-r1-disagg-prefill", "deepseek-r1-disagg-decode"]  # fmt: skip
