"""CustomResourceDefinitions generated from the models: `python -m rackscale.api.crd DIR`."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from rackscale.api.common import DNS_1035, DNS_1123, GROUP, NAME_RULES, VERSION
from rackscale.api.inferencedeployment import (
    MAX_NAME_AND_ROLE_LENGTH,
    MAX_NAME_LENGTH,
    NAME_AND_ROLE_RULE,
    InferenceDeploymentSpec,
    InferenceDeploymentStatus,
)
from rackscale.api.rackpool import RackPoolSpec, RackPoolStatus

_DROP = {"title"}


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as a Kubernetes structural schema: no `$ref`, no `type: null`."""
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    converted: dict[str, Any] = _convert(schema, defs)
    return converted


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _inline_ref(node, defs)
    if "anyOf" in node:
        return _nullable(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_keyword(key, value, defs))
    return out


def _inline_ref(node: dict[str, Any], defs: dict[str, Any]) -> Any:
    """The definition `$ref` names, copied in, with the referring node's own keys on top."""
    target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return _convert(merged, defs)


def _nullable(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [X, null]` (pydantic's optional field) as X with `nullable: true`."""
    variants = [v for v in node["anyOf"] if v.get("type") != "null"]
    nullable = len(variants) < len(node["anyOf"])
    if len(variants) != 1:
        raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    merged: dict[str, Any] = {**_convert(variants[0], defs), **_convert(rest, defs)}
    if nullable:
        merged["nullable"] = True
    if merged.get("default", ...) is None:
        del merged["default"]
    return merged


def _keyword(key: str, value: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """One schema keyword as the structural keywords it becomes (none when it is dropped)."""
    if key in _DROP:
        return {}
    if key == "properties":
        return {key: {name: _convert(prop, defs) for name, prop in value.items()}}
    if key == "additionalProperties" and isinstance(value, bool):
        return {}  # structural schemas allow neither `false` beside properties nor `true`
    if key == "exclusiveMinimum":
        return {"minimum": value, "exclusiveMinimum": True}
    if key == "const":
        return {"enum": [value]}
    return {key: _convert(value, defs)}


def _name_rule(max_length: int, pattern: str) -> dict[str, Any]:
    return {
        "rule": f"self.metadata.name.size() <= {max_length} && "
        f"self.metadata.name.matches('{pattern}')",
        "message": f"metadata.name must be at most {max_length} {NAME_RULES[pattern]}",
        "fieldPath": ".metadata.name",
    }


def _name_and_role_rule() -> dict[str, Any]:
    """With roles, the pod names `<name>-g<group>-<role>-<index>-<shard>` must be hostnames."""
    return {
        "rule": "!has(self.spec) || !has(self.spec.roles) || self.spec.roles.all(r, "
        f"self.metadata.name.size() + r.name.size() <= {MAX_NAME_AND_ROLE_LENGTH})",
        "message": NAME_AND_ROLE_RULE,
        "fieldPath": ".metadata.name",
    }


def _crd(
    *,
    kind: str,
    plural: str,
    short: str,
    scope: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
    name_rule: dict[str, Any],
    object_rules: list[dict[str, Any]] | None = None,
    scale: bool = False,
    wide: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            # A HorizontalPodAutoscaler reads the leader pods' metrics through this selector.
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["rackscale"],
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        *(wide or []),
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                # Declared so the name rule's fieldPath names a field.
                                "metadata": {
                                    "type": "object",
                                    "properties": {"name": {"type": "string"}},
                                },
                                "spec": structural(spec),
                                "status": {
                                    **structural(status),
                                    # Until the operator writes status, observedGeneration 0
                                    # trails metadata.generation: kstatus (Flux), Argo CD and
                                    # `kubectl wait` read a new object as in progress.
                                    "default": {"observedGeneration": 0},
                                },
                            },
                            "x-kubernetes-validations": [name_rule, *(object_rules or [])],
                        }
                    },
                }
            ],
        },
    }


def definitions() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for both resources."""
    rackpools = _crd(
        kind="RackPool",
        plural="rackpools",
        short="rp",
        scope="Cluster",
        spec=RackPoolSpec,
        status=RackPoolStatus,
        name_rule=_name_rule(63, DNS_1123),
        columns=[
            {"name": "Racks", "type": "integer", "jsonPath": ".status.racks"},
            {"name": "Healthy", "type": "integer", "jsonPath": ".status.healthyRacks"},
            {"name": "Free-Racks", "type": "integer", "jsonPath": ".status.freeRacks"},
            {"name": "GPUs-Free", "type": "integer", "jsonPath": ".status.gpus.free"},
        ],
    )
    deployments = _crd(
        kind="InferenceDeployment",
        plural="inferencedeployments",
        short="idep",
        scope="Namespaced",
        spec=InferenceDeploymentSpec,
        status=InferenceDeploymentStatus,
        name_rule=_name_rule(MAX_NAME_LENGTH, DNS_1035),
        object_rules=[_name_and_role_rule()],
        scale=True,
        columns=[
            {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
            {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
            {"name": "Mode", "type": "string", "jsonPath": ".status.mode"},
            {"name": "Racks", "type": "string", "jsonPath": ".status.rackList", "priority": 1},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        ],
        wide=[  # priority 1: only `kubectl get -o wide` shows them
            {"name": "Cost/h", "type": "string", "jsonPath": ".status.costPerHour", "priority": 1},
            {"name": "Currency", "type": "string", "jsonPath": ".status.currency", "priority": 1},
        ],
    )
    return {
        f"{GROUP}_rackpools.yaml": rackpools,
        f"{GROUP}_inferencedeployments.yaml": deployments,
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated from operator/rackscale/api by `make crds`; do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "crds")
    target.mkdir(parents=True, exist_ok=True)
    for name, crd in definitions().items():
        (target / name).write_text(render(crd))
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
