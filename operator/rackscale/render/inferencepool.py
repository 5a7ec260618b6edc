"""The InferencePool of an InferenceDeployment: what an inference gateway fronts. Pure.

The Gateway API Inference Extension's InferencePool (`inference.networking.k8s.io/v1`) names the
pods a gateway may send requests to (a label selector in the pool's namespace), the port they
serve on, and the endpoint picker that chooses one of them for each request. rackscale gives it
exactly the pods that serve: the leaders (workers are Ready without serving HTTP), with
spec.roles those of the serving role.
"""

from __future__ import annotations

from typing import Any

from rackscale.api.inferencedeployment import InferenceDeployment
from rackscale.api.labels import DEPLOYMENT_LABEL
from rackscale.render.names import owner_reference
from rackscale.render.services import serving_port, serving_selector

INFERENCE_POOL_GROUP = "inference.networking.k8s.io"
INFERENCE_POOL_VERSION = "v1"
INFERENCE_POOL_PLURAL = "inferencepools"
INFERENCE_POOL_CRD = f"{INFERENCE_POOL_PLURAL}.{INFERENCE_POOL_GROUP}"
INFERENCE_POOL_API_VERSION = f"{INFERENCE_POOL_GROUP}/{INFERENCE_POOL_VERSION}"


def render_inference_pool(deployment: InferenceDeployment) -> dict[str, Any] | None:
    """InferencePool `<name>`, owned by the InferenceDeployment; None without
    spec.inferencePool."""
    wanted = deployment.spec.inference_pool
    if wanted is None:
        return None
    picker = wanted.endpoint_picker_ref
    ref: dict[str, Any] = {
        "group": picker.group,
        "kind": picker.kind,
        "name": picker.name,
        "failureMode": picker.failure_mode,
    }
    if picker.port is not None:
        ref["port"] = {"number": picker.port.number}
    return {
        "apiVersion": INFERENCE_POOL_API_VERSION,
        "kind": "InferencePool",
        "metadata": {
            "name": deployment.name,
            "namespace": deployment.namespace,
            "labels": {DEPLOYMENT_LABEL: deployment.name},
            "ownerReferences": [owner_reference(deployment)],
        },
        "spec": {
            "selector": {"matchLabels": serving_selector(deployment)},
            "targetPorts": [{"number": serving_port(deployment)}],
            "endpointPickerRef": ref,
        },
    }
