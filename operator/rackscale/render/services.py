"""The two Services of an InferenceDeployment: shard DNS (headless) and the leaders' endpoint."""

from __future__ import annotations

from typing import Any

from rackscale.api.inferencedeployment import InferenceDeployment
from rackscale.render.names import (
    DEPLOYMENT_LABEL,
    LEADER_LABEL,
    headless_service_name,
    owner_reference,
)


def render_services(deployment: InferenceDeployment) -> list[dict[str, Any]]:
    """`<name>-shards` (headless, not-ready addresses published) and `<name>` on `spec.port`."""
    port = deployment.spec.port
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
            "selector": {**selector, LEADER_LABEL: "true"},
            "ports": [{"name": "serve", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }
    return [shards, leaders]
