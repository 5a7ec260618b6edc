"""spec.roles: serving groups of roles; what makes no sense is refused naming the field, by the
models (for `rackscale plan`) and by the CRD's CEL rules (evaluated here with cel-python, and on
the real API server in e2e/test_crd_rules.py)."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import celpy.adapter
import pytest
from pydantic import ValidationError

from rackscale.api import InferenceDeployment, format_errors
from rackscale.api.inferencedeployment import RoleReplica
from tests.test_crds import schema_of, walk

TEMPLATE = {"spec": {"containers": [{"name": "server", "image": "vllm"}]}}


def role(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "template": TEMPLATE, **fields}


def disagg(name: str = "ds", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "replicas": 2,
        "placement": {"rackPool": "gb200"},
        "roles": [
            role("prefill", parallelism={"tensor": 4}),
            role("decode", replicas=2, parallelism={"tensor": 4, "data": 4}, gpusPerPod=4),
        ],
    }
    body.update(spec)
    return {"metadata": {"name": name, "namespace": "llm"}, "spec": body}


def errors(obj: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        InferenceDeployment.model_validate(obj)
    return format_errors(caught.value)


def test_a_serving_group_is_one_of_each_role_at_its_count() -> None:
    dep = InferenceDeployment.model_validate(disagg())
    spec = dep.spec
    assert spec.colocation == "Rack"  # the default with roles
    assert spec.serving_role == "decode"
    assert spec.group_size == 3
    assert spec.gpus_per_replica == 4 + 2 * 16  # one group's GPUs
    assert spec.role_replicas(1) == [
        RoleReplica(1, "prefill", 0, 1000),
        RoleReplica(1, "decode", 0, 1100),
        RoleReplica(1, "decode", 1, 1101),
    ]
    numbers = spec.replica_numbers()
    assert numbers == [0, 100, 101, 1000, 1100, 1101]  # group x 1000 + position x 100 + index
    assert [spec.role_replica(r) for r in numbers] == spec.role_replicas(0) + spec.role_replicas(1)
    assert not spec.wants(102)
    assert not spec.wants(2000)
    assert spec.wants(1101)


def test_the_role_view_is_a_deployment_of_the_role_shape_with_the_same_placement() -> None:
    dep = InferenceDeployment.model_validate(
        disagg(placement={"rackPool": "gb200", "spread": "Pack"})
    )
    view = dep.role_view("decode")
    assert (view.name, view.namespace, view.key) == ("ds", "llm", "llm/ds")
    assert view.spec.roles is None
    assert view.spec.replicas == 4  # two groups of two
    assert view.spec.gpus_per_replica == 16
    assert view.spec.gpus_per_pod == 4
    assert view.spec.placement.spread == "Pack"
    assert view.spec.placement.colocate is None
    assert view.spec.port == 8000  # the role names no port: spec.port
    assert view.spec.template == TEMPLATE


def test_service_role_defaults_to_the_last_role_without_decode() -> None:
    body = disagg(roles=[role("encode"), role("generate")])
    assert InferenceDeployment.model_validate(body).spec.serving_role == "generate"
    body["spec"]["serviceRole"] = "encode"
    assert InferenceDeployment.model_validate(body).spec.serving_role == "encode"


def test_without_roles_nothing_changes() -> None:
    dep = InferenceDeployment.model_validate(
        {"metadata": {"name": "m"}, "spec": {"parallelism": {"tensor": 8}}}
    )
    assert (dep.spec.roles, dep.spec.colocation, dep.spec.serving_role) == (None, None, None)
    assert dep.spec.gpus_per_replica == 8


BAD: list[tuple[dict[str, Any], str]] = [
    (disagg(roles=[role("decode"), role("decode")]),
     "spec.roles: role names must be unique: decode given twice"),
    (disagg(roles=[role("prefill", replicas=0)]),
     "spec.roles.0.replicas: Input should be greater than or equal to 1"),
    (disagg(parallelism={"tensor": 8}),
     "spec.parallelism: with spec.roles, parallelism is set per role"),
    (disagg(gpusPerPod=4), "spec.gpusPerPod: with spec.roles, gpusPerPod is set per role"),
    (disagg(template=TEMPLATE), "spec.template: with spec.roles, template is set per role"),
    (disagg(workerTemplate=TEMPLATE),
     "spec.workerTemplate: with spec.roles, workerTemplate is set per role"),
    (disagg(serviceRole="router"), "spec.serviceRole: serviceRole must name one of spec.roles"),
    (disagg(roles=[role("prefill", parallelism={"tensor": 4}, gpusPerPod=3)]),
     "spec.roles.0.gpusPerPod: 3 must divide the role's tensor x pipeline x data = 4"),
    (disagg(roles=[role("Prefill")]), "spec.roles.0.name: String should match pattern"),
    (disagg(roles=[{"name": "prefill"}]), "spec.roles.0.template: Field required"),
    (disagg(roles=[role("prefill", template={"spec": {"containers": []}})]),
     "spec.roles.0.spec.containers: a pod template needs at least one container"),
    (disagg(roles=[]), "spec.roles: List should have at least 1 item"),
    ({"metadata": {"name": "m"}, "spec": {"placement": {"colocate": "Rack"}}},
     "spec.placement.colocate: colocate places the roles of a serving group together"),
    (disagg(placement={"rackPool": "p", "exclusive": True}),
     "spec.placement.exclusive: exclusive is not available with spec.roles yet"),
    (disagg(name="a" * 40, roles=[role("decode-and-more")]),
     "metadata.name: metadata.name and each role name together may have at most 48 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_the_models_refuse_naming_the_field(body: dict[str, Any], message: str) -> None:
    assert any(line.startswith(message) for line in errors(body)), errors(body)


def cel_rules() -> list[tuple[str, dict[str, Any]]]:
    """(schema path, rule) of the InferenceDeployment CRD's CEL rules, but those calling
    Kubernetes' own `format` library, which cel-python lacks (e2e/test_crd_rules.py runs them)."""
    return [
        (path, rule)
        for path, node in walk(schema_of("InferenceDeployment"))
        for rule in node.get("x-kubernetes-validations", [])
        if "format." not in rule["rule"]
    ]


def defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server checks the rules against: the defaults the rules read filled in."""
    out = copy.deepcopy(obj)
    spec = out["spec"]
    spec.setdefault("parallelism", {})
    spec.setdefault("placement", {})
    for r in spec.get("roles") or []:
        r.setdefault("parallelism", {})
        r.setdefault("replicas", 1)
    for par in [spec["parallelism"], *(r["parallelism"] for r in spec.get("roles") or [])]:
        for key in ("tensor", "pipeline", "data", "expert"):
            par.setdefault(key, 1)
    return out


def broken_rules(obj: dict[str, Any]) -> list[str]:
    """`<fieldPath>: <message>` of every CEL rule the object breaks, rules evaluated where the
    schema puts them (the object, spec, spec.placement, each role)."""
    obj = defaulted(obj)
    spec = obj["spec"]
    scopes: dict[str, list[tuple[str, Any]]] = {
        "": [("", obj)],
        ".properties.spec": [("spec", spec)],
        ".properties.spec.properties.placement": [("spec.placement", spec["placement"])],
        ".properties.spec.properties.roles.items": [
            (f"spec.roles[{i}]", r) for i, r in enumerate(spec.get("roles") or [])
        ],
    }
    env = celpy.Environment()
    broken = []
    for path, rule in cel_rules():
        for where, value in scopes.get(path, []):
            program = env.program(env.compile(rule["rule"]))
            if not bool(program.evaluate({"self": celpy.adapter.json_to_cel(value)})):
                field = f"{where}{rule['fieldPath']}".lstrip(".")
                broken.append(f"{field}: {rule['message']}")
    return broken


def test_every_role_rule_is_evaluated_somewhere() -> None:
    paths = {path for path, rule in cel_rules() if "role" in rule["rule"].lower()}
    assert paths <= {"", ".properties.spec", ".properties.spec.properties.placement",
                     ".properties.spec.properties.roles.items"}, paths  # fmt: skip


def test_a_valid_disaggregated_deployment_breaks_no_rule() -> None:
    assert broken_rules(disagg()) == []
    assert broken_rules(disagg(serviceRole="prefill", placement={"colocate": "Block"})) == []


CEL_BAD: list[tuple[dict[str, Any], str]] = [
    (disagg(roles=[role("decode"), role("decode")]), "spec.roles: role names must be unique"),
    (disagg(roles=[role("prefill", replicas=0)]),
     "spec.roles[0].replicas: a role needs at least one replica in each serving group"),
    (disagg(parallelism={"data": 2}),
     "spec.parallelism: with spec.roles, parallelism is set per role"),
    (disagg(gpusPerPod=4), "spec.gpusPerPod: with spec.roles, gpusPerPod is set per role"),
    (disagg(template=TEMPLATE), "spec.template: with spec.roles, each role has its own template"),
    (disagg(workerTemplate=TEMPLATE), "spec.workerTemplate: with spec.roles, workerTemplate"),
    (disagg(serviceRole="router"), "spec.serviceRole: serviceRole must name one of spec.roles"),
    (disagg(roles=[role("prefill", parallelism={"tensor": 4}, gpusPerPod=3)]),
     "spec.roles[0].gpusPerPod: gpusPerPod must divide the role's tensor x pipeline x data"),
    (disagg(roles=[role("prefill", template={"spec": {"containers": []}})]),
     "spec.roles[0].template.spec.containers: a pod template needs at least one container"),
    ({"metadata": {"name": "m"}, "spec": {"placement": {"colocate": "Rack"}}},
     "spec.placement.colocate: colocate places the roles of a serving group together"),
    (disagg(placement={"rackPool": "p", "exclusive": True}),
     "spec.placement.exclusive: exclusive is not available with spec.roles yet"),
    (disagg(name="a" * 40, roles=[role("decode-and-more")]),
     "metadata.name: metadata.name and each role name together may have at most 48"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), CEL_BAD, ids=[m.split(":")[0] for _, m in CEL_BAD])
def test_the_crd_rules_refuse_naming_the_field(body: dict[str, Any], message: str) -> None:
    broken = broken_rules(body)
    assert any(line.startswith(message) for line in broken), broken
