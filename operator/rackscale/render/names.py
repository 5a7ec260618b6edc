"""Names, labels and annotations of what the operator creates, shared by render and controller."""

from __future__ import annotations

import re
from typing import Any

from rackscale.api.common import API_VERSION
from rackscale.api.inferencedeployment import InferenceDeployment
from rackscale.topology.snapshot import (
    COMPUTE_DOMAIN_LABEL,
    DEPLOYMENT_LABEL,
    EXCLUSIVE_LABEL,
    REPLICA_LABEL,
    compute_domain_name,
)

SHARD_LABEL = "rackscale.dev/shard"
RACK_LABEL = "rackscale.dev/rack"
LEADER_LABEL = "rackscale.dev/leader"

TEMPLATE_HASH_ANNOTATION = "rackscale.dev/template-hash"
SHARDS_ANNOTATION = "rackscale.dev/shards"
FIRST_RANK_ANNOTATION = "rackscale.dev/first-rank"
MODE_ANNOTATION = "rackscale.dev/mode"
RACK_ANNOTATION = "rackscale.dev/rack"  # the exact rack name; the label is sanitised
RACKS_ANNOTATION = "rackscale.dev/racks"

__all__ = [
    "COMPUTE_DOMAIN_LABEL",
    "DEPLOYMENT_LABEL",
    "EXCLUSIVE_LABEL",
    "FIRST_RANK_ANNOTATION",
    "LEADER_LABEL",
    "MODE_ANNOTATION",
    "RACKS_ANNOTATION",
    "RACK_ANNOTATION",
    "RACK_LABEL",
    "REPLICA_LABEL",
    "SHARDS_ANNOTATION",
    "SHARD_LABEL",
    "TEMPLATE_HASH_ANNOTATION",
    "compute_domain_name",
    "headless_service_name",
    "label_value",
    "leader_address",
    "owner_reference",
    "pod_name",
]

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def pod_name(deployment: str, replica: int, shard: int) -> str:
    return f"{deployment}-{replica}-{shard}"


def headless_service_name(deployment: str) -> str:
    return f"{deployment}-shards"


def leader_address(deployment: InferenceDeployment, replica: int) -> str:
    """DNS name of a replica's shard 0, served by the headless Service."""
    host = pod_name(deployment.name, replica, 0)
    return f"{host}.{headless_service_name(deployment.name)}.{deployment.namespace}.svc"


def label_value(text: str) -> str:
    """`text` as a valid label value: rack names such as `b1/r3` carry a `/`."""
    value = _LABEL_UNSAFE.sub("_", text)[:63]
    return value.strip("_.-") or "_"


def owner_reference(deployment: InferenceDeployment) -> dict[str, Any]:
    """Makes the InferenceDeployment the controller of an object, for kube's garbage collector."""
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceDeployment",
        "name": deployment.name,
        "uid": str(deployment.metadata.get("uid", "")),
        "controller": True,
        "blockOwnerDeletion": True,
    }
