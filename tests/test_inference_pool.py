"""spec.inferencePool: refused naming the field, rendered as InferencePool v1 selecting exactly the
serving leaders (shared with the Service `<name>` and the scale selector), and printed by `plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rackscale.api import InferenceDeployment
from rackscale.planner.status import leader_selector
from rackscale.render import render_inference_pool, render_services
from tests.factory import BLOCK, hgx, nvl72
from tests.test_api import errors, idep
from tests.test_cli_plan import EXAMPLES, run, write
from tests.test_crds import as_json_schema, schema_of

PICKER = {"endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}
ROLES = [
    {"name": "prefill", "port": 8100, "template": {"spec": {"containers": [{"name": "s"}]}}},
    {"name": "decode", "port": 8200, "template": {"spec": {"containers": [{"name": "s"}]}}},
]


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        ({}, "spec.inferencePool.endpointPickerRef: Field required"),
        ({"endpointPickerRef": {"port": {"number": 9002}}},
         "spec.inferencePool.endpointPickerRef.name: Field required"),
        ({"endpointPickerRef": {"name": "epp"}},
         "spec.inferencePool.endpointPickerRef.port: port is needed when kind is Service"),
        ({"endpointPickerRef": {"name": "epp", "port": {}}},
         "spec.inferencePool.endpointPickerRef.port.number: Field required"),
        ({"endpointPickerRef": {"name": "epp", "port": {"number": 0}}},
         "spec.inferencePool.endpointPickerRef.port.number: Input should be greater"),
        ({"endpointPickerRef": {**PICKER["endpointPickerRef"], "failureMode": "Retry"}},
         "spec.inferencePool.endpointPickerRef.failureMode: Input should be"),
        ({"endpointPickerRef": {"name": "", "port": {"number": 9002}}},
         "spec.inferencePool.endpointPickerRef.name: String should have at least 1"),
        ({**PICKER, "targetPorts": [8000]}, "spec.inferencePool.targetPorts: Extra inputs"),
    ],
)  # fmt: skip
def test_bad_pool_is_refused_naming_the_field(pool: dict[str, Any], expected: str) -> None:
    found = errors(InferenceDeployment, idep(inferencePool=pool))
    assert any(line.startswith(expected) for line in found), found


def test_the_crd_refuses_a_pool_without_a_picker_or_its_name() -> None:
    schema = as_json_schema(schema_of("InferenceDeployment"))
    body = {"apiVersion": "rackscale.dev/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": "m"}}  # fmt: skip
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "'endpointPickerRef'"),
        ({"endpointPickerRef": {}}, "'name'"),
    ]
    for pool, missing in cases:
        found = [
            (list(e.path), e.message)
            for e in jsonschema.Draft4Validator(schema).iter_errors(
                {**body, "spec": {"inferencePool": pool}}
            )
        ]
        assert any(missing in m and "required" in m for _, m in found), found
    rules = schema["properties"]["spec"]["properties"]["inferencePool"]["properties"][
        "endpointPickerRef"
    ]["x-kubernetes-validations"]
    assert rules == [
        {
            "rule": "self.kind != 'Service' || has(self.port)",
            "message": "port is needed when kind is Service (the default)",
            "fieldPath": ".port",
        }
    ]


def test_no_field_no_pool_and_the_defaults_of_the_v1_api() -> None:
    assert render_inference_pool(InferenceDeployment.model_validate(idep())) is None
    dep = InferenceDeployment.model_validate(idep(inferencePool=PICKER, port=8080))
    pool = render_inference_pool(dep)
    assert pool is not None
    assert (pool["apiVersion"], pool["kind"]) == ("inference.networking.k8s.io/v1", "InferencePool")
    assert (pool["metadata"]["name"], pool["metadata"]["namespace"]) == ("m", "llm")
    assert pool["spec"] == {
        "selector": {"matchLabels": {"rackscale.dev/deployment": "m",
                                     "rackscale.dev/leader": "true"}},
        "targetPorts": [{"number": 8080}],
        "endpointPickerRef": {"group": "", "kind": "Service", "name": "epp",
                              "port": {"number": 9002}, "failureMode": "FailClose"},
    }  # fmt: skip
    other = {"name": "picker", "kind": "Gateway", "group": "example.com", "failureMode": "FailOpen"}
    dep = InferenceDeployment.model_validate(idep(inferencePool={"endpointPickerRef": other}))
    pool = render_inference_pool(dep)
    assert pool is not None
    assert pool["spec"]["endpointPickerRef"] == other  # no port: not a Service


def test_with_roles_it_selects_the_serving_role_as_the_service_and_scale_selector_do() -> None:
    for service_role, port in ((None, 8200), ("prefill", 8100)):
        spec: dict[str, Any] = {"roles": ROLES, "inferencePool": PICKER}
        if service_role:
            spec["serviceRole"] = service_role
        dep = InferenceDeployment.model_validate(idep(**spec))
        pool = render_inference_pool(dep)
        assert pool is not None
        role = service_role or "decode"
        labels = pool["spec"]["selector"]["matchLabels"]
        assert labels == {
            "rackscale.dev/deployment": "m",
            "rackscale.dev/leader": "true",
            "rackscale.dev/role": role,
        }
        assert pool["spec"]["targetPorts"] == [{"number": port}]
        service = next(s for s in render_services(dep) if s["metadata"]["name"] == "m")
        assert service["spec"]["selector"] == labels
        assert service["spec"]["ports"][0]["targetPort"] == port
        assert leader_selector(dep) == ",".join(f"{k}={v}" for k, v in labels.items())


def test_plan_yaml_prints_the_pool_after_the_services(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = yaml.safe_load((EXAMPLES / "rackpool-gb200.yaml").read_text())
    nodes = nvl72(2, blocks=1) + hgx(2)
    for item in nodes:
        if "nvidia.com/gpu.clique" in item["metadata"]["labels"]:
            item["metadata"]["labels"][BLOCK] = "b0"
    cluster = write(tmp_path / "cluster.yaml", {"apiVersion": "v1", "kind": "List",
                                                "items": nodes}, pool)  # fmt: skip
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "deepseek-r1-disagg.yaml").read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "InferenceDeployment"]
    deployment["spec"]["inferencePool"] = PICKER
    code, out, _ = run(capsys, "plan", "--cluster", cluster, "-o", "yaml",
                       write(tmp_path / "d.yaml", deployment))  # fmt: skip
    assert code == 0
    items: list[dict[str, Any]] = yaml.safe_load(out)["items"]
    assert items[-1]["kind"] == "InferencePool"
    assert items[-2]["kind"] == "Service"
    labels = items[-1]["spec"]["selector"]["matchLabels"]
    pods = [o for o in items if o["kind"] == "Pod"]
    chosen = [o["metadata"]["name"] for o in pods
              if labels.items() <= o["metadata"]["labels"].items()]  # fmt: skip
    leaders = [o["metadata"]["name"] for o in items if o["kind"] == "Pod"
               and o["metadata"]["labels"].get("rackscale.dev/role") == "decode"
               and o["metadata"]["labels"]["rackscale.dev/shard"] == "0"]  # fmt: skip
    assert leaders
    assert chosen == leaders
    role_ports = {r["name"]: r.get("port") for r in deployment["spec"]["roles"]}
    served = role_ports["decode"] or deployment["spec"].get("port", 8000)
    assert items[-1]["spec"]["targetPorts"] == [{"number": served}]
