"""The models accept what the design allows and refuse the rest, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from rackscale.api import InferenceDeployment, RackPool, format_errors

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def errors(model: type[InferenceDeployment] | type[RackPool], obj: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(obj)
    return format_errors(caught.value)


def idep(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "m", "namespace": "llm"}, "spec": spec}


def test_defaults_follow_the_design() -> None:
    dep = InferenceDeployment.model_validate(
        idep(parallelism={"tensor": 8, "data": 4, "expert": 32})
    )
    assert dep.spec.replicas == 1
    assert dep.spec.gpus_per_replica == 32
    assert dep.spec.port == 8000
    placement = dep.spec.placement
    assert (placement.rack_pool, placement.replica_scope, placement.exclusive) == (
        None,
        "Rack",
        False,
    )
    assert (placement.spread, placement.fallback) == ("Spread", "DevicePlugin")
    assert dep.key == "llm/m"
    pool = RackPool.model_validate({"metadata": {"name": "p"}})
    assert pool.spec.rack_label == "nvidia.com/gpu.clique"
    assert (pool.spec.nvlink_domain, pool.spec.gpus_per_rack, pool.spec.tenancy) == (
        "Rack",
        72,
        "Shared",
    )
    assert pool.spec.gpu_resource == "nvidia.com/gpu"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"parallelism": {"tensor": 8, "expert": 3}}, "spec.parallelism.expert: 3 must divide"),
        ({"parallelism": {"tensor": 8}, "gpusPerPod": 3}, "spec.gpusPerPod: 3 must divide"),
        ({"replicas": -1}, "spec.replicas: Input should be greater than or equal to 0"),
        ({"parallelism": {"tensor": 0}}, "spec.parallelism.tensor: Input should be greater"),
        ({"placement": {"replicaScope": "Row"}}, "spec.placement.replicaScope: Input should be"),
        ({"placement": {"spread": "Wide"}}, "spec.placement.spread: Input should be"),
        ({"placement": {"fallback": "Always"}}, "spec.placement.fallback: Input should be"),
        ({"placement": {"exclusive": True}}, "spec.placement.exclusive: needs placement.rackPool"),
        ({"port": 70000}, "spec.port: Input should be less than or equal to 65535"),
        ({"paralelism": {"tensor": 2}}, "spec.paralelism: Extra inputs are not permitted"),
        ({"template": {"spec": {}}}, "spec.template.spec.containers: a pod template needs"),
        (
            {"workerTemplate": {"spec": {"containers": []}}},
            "spec.workerTemplate.spec.containers: a worker pod template needs",
        ),
        ({"workerTemplate": {}}, "spec.workerTemplate.spec.containers: a worker pod template"),
        ({"model": {"name": "x", "precision": "fp7"}}, "spec.model.precision: Input should be"),
    ],
)
def test_bad_deployment_names_the_field(spec: dict[str, Any], expected: str) -> None:
    assert any(line.startswith(expected) for line in errors(InferenceDeployment, idep(**spec))), (
        errors(InferenceDeployment, idep(**spec))
    )


@pytest.mark.parametrize(
    ("name", "ok"),
    [("deepseek-r1", True), ("a" * 48, True), ("a" * 49, False), ("1abc", False), ("Big", False)],
)
def test_deployment_names_must_make_valid_pod_and_service_names(name: str, ok: bool) -> None:
    obj = {"metadata": {"name": name}, "spec": {}}
    if ok:
        assert InferenceDeployment.model_validate(obj).name == name
    else:
        assert errors(InferenceDeployment, obj)[0].startswith("metadata.name: ")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"rackLabel": "not a label"}, "spec.rackLabel:"),
        ({"gpusPerRack": 0}, "spec.gpusPerRack: Input should be greater than or equal to 1"),
        ({"nvlinkDomain": "Tray"}, "spec.nvlinkDomain: Input should be 'Rack' or 'Node'"),
        ({"tenancy": "Private"}, "spec.tenancy:"),
        (
            {"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.nodeSelector.matchExpressions.0.values: must be non-empty",
        ),
        (
            {
                "nodeSelector": {
                    "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
                }
            },
            "spec.nodeSelector.matchExpressions.0.values: must be empty",
        ),
        ({"gpuResource": "gpu"}, "spec.gpuResource: 'gpu' is not an extended"),
        ({"gpuResource": "kubernetes.io/gpu"}, "spec.gpuResource: 'kubernetes.io"),
        ({"blockLabel": "-bad"}, "spec.blockLabel: '-bad' is not a valid label key"),
        (
            {"nodeSelector": {"matchLabels": {"bad key": "x"}}},
            "spec.nodeSelector.matchLabels: 'bad key' is not a valid label key",
        ),
        (
            {"nodeSelector": {"matchExpressions": [{"key": "a/b/c", "operator": "Exists"}]}},
            "spec.nodeSelector.matchExpressions.0.key: 'a/b/c' is not a valid label key",
        ),
    ],
)
def test_bad_pool_names_the_field(spec: dict[str, Any], expected: str) -> None:
    lines = errors(RackPool, {"metadata": {"name": "p"}, "spec": spec})
    assert any(line.startswith(expected) for line in lines), lines


def test_label_selector_matches_like_kubernetes() -> None:
    pool = RackPool.model_validate(
        {
            "metadata": {"name": "p"},
            "spec": {
                "nodeSelector": {
                    "matchLabels": {"gpu": "gb200"},
                    "matchExpressions": [
                        {"key": "zone", "operator": "In", "values": ["a", "b"]},
                        {"key": "drain", "operator": "DoesNotExist"},
                        {"key": "tier", "operator": "NotIn", "values": ["test"]},
                    ],
                }
            },
        }
    )
    selector = pool.spec.node_selector
    assert selector.matches({"gpu": "gb200", "zone": "a"})
    assert selector.matches({"gpu": "gb200", "zone": "b", "tier": "prod"})
    assert not selector.matches({"gpu": "gb200", "zone": "c"})
    assert not selector.matches({"gpu": "gb200", "zone": "a", "drain": "yes"})
    assert not selector.matches({"gpu": "gb200", "zone": "a", "tier": "test"})
    assert not selector.matches({"zone": "a"})


def test_every_example_is_valid() -> None:
    seen = set()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "InferenceDeployment":
                InferenceDeployment.model_validate(doc)
                seen.add(doc["kind"])
            elif doc and doc.get("kind") == "RackPool":
                RackPool.model_validate(doc)
                seen.add(doc["kind"])
    assert seen == {"InferenceDeployment", "RackPool"}


@pytest.mark.parametrize(
    ("placement", "template", "expected"),
    [
        (
            {"rackPool": "GB200"},
            {},
            "spec.placement.rackPool: 'GB200' must be at most",
        ),
        ({}, {"spec": {"containers": []}}, "spec.template.spec.containers: a pod template needs"),
        ({}, {"metadata": {"labels": {}}}, "spec.template.spec.containers: a pod template needs"),
    ],
)
def test_names_and_templates_are_checked(
    placement: dict[str, Any], template: dict[str, Any], expected: str
) -> None:
    body = {"metadata": {"name": "d"}, "spec": {"placement": placement, "template": template}}
    lines = errors(InferenceDeployment, body)
    assert any(line.startswith(expected) for line in lines), lines


def test_pool_names_may_start_with_a_digit_and_the_message_says_so() -> None:
    assert RackPool.model_validate({"metadata": {"name": "0-gb200"}}).name == "0-gb200"
    [line] = errors(RackPool, {"metadata": {"name": "-gb200"}})
    assert "starting and ending with a letter or digit" in line
