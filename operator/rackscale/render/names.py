"""Names of what the operator creates, shared by render and controller (their label and
annotation keys are in `rackscale.api.labels`)."""

from __future__ import annotations

import re
from typing import Any

from rackscale.api.common import API_VERSION
from rackscale.api.inferencedeployment import InferenceDeployment, RoleReplica
from rackscale.topology.snapshot import compute_domain_name, group_compute_domain_name

__all__ = [
    "compute_domain_name",
    "group_compute_domain_name",
    "headless_service_name",
    "label_value",
    "leader_address",
    "leaders_variable",
    "owner_reference",
    "pod_name",
    "replica_pod_name",
    "role_pod_name",
    "role_service_name",
]

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def pod_name(deployment: str, replica: int, shard: int) -> str:
    return f"{deployment}-{replica}-{shard}"


def role_pod_name(deployment: str, member: RoleReplica, shard: int) -> str:
    """With spec.roles: `<name>-g<group>-<role>-<index>-<shard>` (a hostname: the API's
    length rules keep it within 63 characters)."""
    return f"{deployment}-g{member.group}-{member.role}-{member.index}-{shard}"


def replica_pod_name(deployment: InferenceDeployment, replica: int, shard: int) -> str:
    """The pod of shard `shard` of replica `replica` (with roles, the deployment-wide number of
    a role replica, as `rackscale.dev/replica`)."""
    if not deployment.spec.roles:
        return pod_name(deployment.name, replica, shard)
    return role_pod_name(deployment.name, deployment.spec.role_replica(replica), shard)


def headless_service_name(deployment: str) -> str:
    return f"{deployment}-shards"


def role_service_name(deployment: str, role: str) -> str:
    """With spec.roles: the Service on one role's leaders, `<name>-<role>`."""
    return f"{deployment}-{role}"


def leaders_variable(role: str) -> str:
    """`RACKSCALE_<ROLE>_LEADERS`: the `host:port` of a role's leaders in the pod's group."""
    return f"RACKSCALE_{role.upper().replace('-', '_')}_LEADERS"


def leader_address(deployment: InferenceDeployment, replica: int) -> str:
    """DNS name of a replica's shard 0, served by the headless Service."""
    host = replica_pod_name(deployment, replica, 0)
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
