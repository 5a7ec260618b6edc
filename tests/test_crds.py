"""The CRDs in crds/ are what the models generate, are structural, and accept the examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rackscale.api import crd

ROOT = Path(__file__).resolve().parent.parent


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def schema_of(kind: str) -> dict[str, Any]:
    for definition in crd.definitions().values():
        if definition["spec"]["names"]["kind"] == kind:
            return dict(definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    raise KeyError(kind)


def as_json_schema(node: Any) -> Any:
    """OpenAPI v3 (`nullable`) to JSON Schema draft 4, for validating objects offline."""
    if isinstance(node, list):
        return [as_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def test_crds_on_disk_match_the_models() -> None:
    for name, definition in crd.definitions().items():
        on_disk = (ROOT / "crds" / name).read_text()
        assert on_disk == crd.render(definition), f"crds/{name} is stale: run `make crds`"


def test_crds_are_structural() -> None:
    for name, definition in crd.definitions().items():
        for path, node in walk(definition):
            assert "$ref" not in node, f"{name}{path} has $ref"
            assert node.get("type") != "null", f"{name}{path} has type null"
            assert not any(k in node for k in ("anyOf", "oneOf", "allOf")), f"{name}{path}"
            if "properties" in node:
                assert node.get("type") == "object", f"{name}{path} has properties but no type"
                assert "additionalProperties" not in node, f"{name}{path}"


def test_names_columns_and_subresources() -> None:
    defs = {d["spec"]["names"]["kind"]: d["spec"] for d in crd.definitions().values()}
    rp, idep = defs["RackPool"], defs["InferenceDeployment"]
    assert (rp["scope"], rp["names"]["shortNames"]) == ("Cluster", ["rp"])
    assert (idep["scope"], idep["names"]["shortNames"]) == ("Namespaced", ["idep"])
    columns = {
        kind: [
            c["name"].upper()
            for c in d["versions"][0]["additionalPrinterColumns"]
            if not c.get("priority")
        ]
        for kind, d in defs.items()
    }
    # The long ones (the rack list, cost) only with `kubectl get -o wide`.
    assert columns["InferenceDeployment"] == ["READY", "GPUS", "MODE", "PHASE", "AGE"]
    wide = [
        (c["name"], c["jsonPath"])
        for c in defs["InferenceDeployment"]["versions"][0]["additionalPrinterColumns"]
        if c.get("priority") == 1
    ]  # `kubectl get idep -o wide` adds the racks and cost; the default view stays short
    assert wide == [
        ("Racks", ".status.rackList"),
        ("Cost/h", ".status.costPerHour"),
        ("Currency", ".status.currency"),
    ]
    racks = [
        c
        for c in defs["InferenceDeployment"]["versions"][0]["additionalPrinterColumns"]
        if c["name"] == "Racks"
    ]
    assert (
        racks[0]["jsonPath"] == ".status.rackList"
    )  # a string: the API server prints one array item
    assert columns["RackPool"] == ["RACKS", "HEALTHY", "FREE-RACKS", "GPUS-FREE", "AGE"]
    assert "status" in rp["versions"][0]["subresources"]
    assert idep["versions"][0]["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"


def test_cross_field_rules_name_their_field() -> None:
    rules = {
        r.get("fieldPath"): r["rule"]
        for _, node in walk(schema_of("InferenceDeployment"))
        for r in node.get("x-kubernetes-validations", [])
    }
    assert ".expert" in rules
    assert ".gpusPerPod" in rules
    assert ".placement.exclusive" in rules


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_against_the_crd_schemas(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") not in ("RackPool", "InferenceDeployment"):
            continue
        schema = as_json_schema(schema_of(doc["kind"]))
        jsonschema.Draft4Validator(schema).validate(doc)


def test_the_crd_schema_refuses_what_the_models_refuse() -> None:
    schema = as_json_schema(schema_of("InferenceDeployment"))
    bad = {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": -1, "placement": {"replicaScope": "Row"}},
    }
    messages = sorted(e.message for e in jsonschema.Draft4Validator(schema).iter_errors(bad))
    assert any("-1 is less than the minimum of 0" in m for m in messages), messages
    assert any("'Row' is not one of" in m for m in messages), messages


def test_every_cel_rule_names_its_field_and_the_name_rules_agree() -> None:
    for kind in ("RackPool", "InferenceDeployment"):
        rules = [
            (path, r)
            for path, node in walk(schema_of(kind))
            for r in node.get("x-kubernetes-validations", [])
        ]
        assert len(rules) >= 4, kind
        for path, rule in rules:
            assert rule.get("fieldPath", "").startswith("."), f"{kind}{path}: {rule}"
    [rp_rule] = schema_of("RackPool")["x-kubernetes-validations"]
    assert "[a-z0-9]([-a-z0-9]*[a-z0-9])?" in rp_rule["rule"]
    assert "starting and ending with a letter or digit" in rp_rule["message"]
    idep_rule = schema_of("InferenceDeployment")["x-kubernetes-validations"][0]
    assert "starting with a letter" in idep_rule["message"]


def test_kubernetes_names_are_checked_with_kubernetes_own_cel_library() -> None:
    pool_rules = {
        r["fieldPath"]: r["rule"]
        for _, node in walk(schema_of("RackPool"))
        for r in node.get("x-kubernetes-validations", [])
    }
    for field in (".rackLabel", ".blockLabel", ".gpuResource", ".matchLabels", ".key"):
        assert "format.qualifiedName()" in pool_rules[field], field
    dep_rules = {
        r["fieldPath"]: r["rule"]
        for _, node in walk(schema_of("InferenceDeployment"))
        for r in node.get("x-kubernetes-validations", [])
    }
    assert "format.dns1123Label()" in dep_rules[".rackPool"]
    assert "size(self.template.spec.containers) > 0" in dep_rules[".template.spec.containers"]


def test_conditions_are_list_maps_and_times_are_date_time() -> None:
    for kind in ("RackPool", "InferenceDeployment"):
        conditions = schema_of(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert "type" in conditions["items"]["required"]
        stamp = conditions["items"]["properties"]["lastTransitionTime"]
        assert stamp["format"] == "date-time"


def test_scale_selector_status_default_and_wide_columns() -> None:
    defs = {
        d["spec"]["names"]["kind"]: d["spec"]["versions"][0] for d in crd.definitions().values()
    }
    scale = defs["InferenceDeployment"]["subresources"]["scale"]
    assert scale["labelSelectorPath"] == ".status.selector"
    status = defs["InferenceDeployment"]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["selector"]["type"] == "string"
    assert status["default"] == {"observedGeneration": 0}
    columns = {c["name"]: c for c in defs["InferenceDeployment"]["additionalPrinterColumns"]}
    wide = {"Racks", "Cost/h", "Currency"}
    assert all(columns[n]["priority"] == 1 for n in wide)
    assert all(c.get("priority", 0) == 0 for n, c in columns.items() if n not in wide)
