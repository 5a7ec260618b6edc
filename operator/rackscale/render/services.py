"""The Services of an InferenceDeployment: shard DNS (headless) and the leaders' endpoint, and
with spec.roles one per role."""

from __future__ import annotations

from typing import Any

from rackscale.api.inferencedeployment import InferenceDeployment
from rackscale.api.labels import DEPLOYMENT_LABEL, LEADER_LABEL, ROLE_LABEL
from rackscale.render.names import headless_service_name, owner_reference, role_service_name


def serving_selector(deployment: InferenceDeployment) -> dict[str, str]:
    """The labels of exactly the pods that serve requests: the leaders (shard 0; workers serve
    no HTTP), with spec.roles those of the serving role. The Service `<name>`, the scale
    subresource's selector and the InferencePool all select with it."""
    selector = {DEPLOYMENT_LABEL: deployment.name, LEADER_LABEL: "true"}
    serving = deployment.spec.serving_role
    return selector if serving is None else {**selector, ROLE_LABEL: serving}


def serving_port(deployment: InferenceDeployment) -> int:
    """The port the serving pods serve on: the serving role's, else spec.port."""
    return _port(deployment, deployment.spec.serving_role)


def render_services(deployment: InferenceDeployment) -> list[dict[str, Any]]:
    """`<name>-shards` (headless, not-ready addresses published) and `<name>` on `spec.port`.
    With spec.roles, `<name>` selects the leaders of the serving role (spec.serviceRole, else
    decode, else the last role) on its port, and `<name>-<role>` those of each role."""
    port = serving_port(deployment)
    selector = {DEPLOYMENT_LABEL: deployment.name}
    labels = {DEPLOYMENT_LABEL: deployment.name}

    def meta(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": deployment.namespace,
            "labels": dict(labels),
            "ownerReferences": [owner_reference(deployment)],
        }

    shards = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(headless_service_name(deployment.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": dict(selector),
            "ports": [{"name": "serve", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }
    leaders = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(deployment.name),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(deployment),
            "ports": [{"name": "serve", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }
    roles = [
        _role_service(meta(role_service_name(deployment.name, r.name)), deployment, r.name)
        for r in deployment.spec.roles or ()
    ]
    return [shards, leaders, *roles]


def _port(deployment: InferenceDeployment, role: str | None) -> int:
    """The port a role's leaders serve on: spec.roles[].port, else spec.port."""
    if role is None:
        return deployment.spec.port
    return deployment.spec.role(role).port or deployment.spec.port


def _role_service(
    metadata: dict[str, Any], deployment: InferenceDeployment, role: str
) -> dict[str, Any]:
    port = _port(deployment, role)
    selector = {DEPLOYMENT_LABEL: deployment.name, ROLE_LABEL: role, LEADER_LABEL: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "serve", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }
