"""The Helm chart's files: CRDs identical to crds/, and values that the values schema checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "rackscale"


def values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def errors(candidate: dict[str, Any]) -> list[str]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(candidate)
    ]


def test_chart_crds_are_the_generated_crds() -> None:
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert generated
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == generated
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/rackscale/crds/{name} differs from crds/{name}: "
            "run `make crds` (or copy crds/*.yaml into charts/rackscale/crds/)"
        )


def test_default_values_pass_the_schema() -> None:
    assert errors(values()) == []


def test_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(json.loads((CHART / "values.schema.json").read_text()))


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        (["replicaCount"], 0, "0 is less than the minimum of 1"),
        (["replicaCount"], "2", "not of type 'integer'"),
        (["leaderElection", "leaseDuration"], 2, "2 is less than the minimum of 6"),
        (["leaderElection", "leaseName"], "Bad_Name", "Bad_Name"),
        (["image", "pullPolicy"], "Sometimes", "Sometimes"),
        (["image", "digest"], "latest", "latest"),
        (["metrics", "port"], "9090", "not of type 'integer'"),
        (["metrics", "port"], 70000, "70000"),
        (["metrics", "serviceMonitor", "enabled"], "yes", "not of type 'boolean'"),
        (["operator", "resync"], 0, "0"),
        (["operator", "logFormat"], "xml", "xml"),
        (["rbac", "createe"], True, "createe"),
    ],
)
def test_schema_refuses_bad_values(path: list[str], value: object, why: str) -> None:
    candidate = copy.deepcopy(values())
    node = candidate
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    found = errors(candidate)
    assert found, f"{'.'.join(path)}={value!r} was accepted"
    assert any(why in message for message in found), found
