"""A replica's NVIDIA ComputeDomain and the IMEX channel claim its pods make. Pure.

On GB200/GB300 NVL72 the GPUs of different trays reach each other over NVLink only through IMEX
channels, which NVIDIA's DRA driver hands out per ComputeDomain (`resource.nvidia.com/v1beta1`).
The driver creates the ResourceClaimTemplate the ComputeDomain names; each pod claims one channel
from it, so the pods of one replica join one IMEX domain.
"""

from __future__ import annotations

from typing import Any

from rackscale.api.inferencedeployment import InferenceDeployment
from rackscale.api.labels import COMPUTE_DOMAIN_LABEL, DEPLOYMENT_LABEL, GROUP_LABEL, REPLICA_LABEL
from rackscale.placement.engine import ReplicaPlan
from rackscale.render.names import compute_domain_name, owner_reference

COMPUTE_DOMAIN_GROUP = "resource.nvidia.com"
COMPUTE_DOMAIN_VERSION = "v1beta1"
COMPUTE_DOMAIN_PLURAL = "computedomains"
COMPUTE_DOMAIN_CRD = f"{COMPUTE_DOMAIN_PLURAL}.{COMPUTE_DOMAIN_GROUP}"
COMPUTE_DOMAIN_API_VERSION = f"{COMPUTE_DOMAIN_GROUP}/{COMPUTE_DOMAIN_VERSION}"
CHANNEL_CLAIM = "compute-domain-channel"  # the pod's claim, and its GPU container's


def channel_template_name(domain: str) -> str:
    """The ResourceClaimTemplate the driver creates for a ComputeDomain: `<domain>-channel`."""
    return f"{domain}-channel"


def render_compute_domain(deployment: InferenceDeployment, replica: int) -> dict[str, Any]:
    """`<name>-<replica>`, owned by the InferenceDeployment. `numNodes: 0`: each pod starts as
    soon as the IMEX daemon of its own node runs (the field is deprecated upstream)."""
    name = compute_domain_name(deployment.name, replica)
    return _compute_domain(deployment, name, {REPLICA_LABEL: str(replica)})


def compute_domain_of(deployment: InferenceDeployment, plan: ReplicaPlan) -> dict[str, Any]:
    """The ComputeDomain the engine put a placed replica under, as its plan names it: its own
    (labelled with its replica), or the one its serving group shares (`plan.domain_group`,
    labelled with the group)."""
    assert plan.compute_domain, f"replica {plan.replica} has no ComputeDomain"
    if plan.domain_group is not None:
        return _compute_domain(
            deployment, plan.compute_domain, {GROUP_LABEL: str(plan.domain_group)}
        )
    return _compute_domain(deployment, plan.compute_domain, {REPLICA_LABEL: str(plan.replica)})


def _compute_domain(
    deployment: InferenceDeployment, name: str, labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": COMPUTE_DOMAIN_API_VERSION,
        "kind": "ComputeDomain",
        "metadata": {
            "name": name,
            "namespace": deployment.namespace,
            "labels": {DEPLOYMENT_LABEL: deployment.name, **labels},
            "ownerReferences": [owner_reference(deployment)],
        },
        "spec": {
            "numNodes": 0,
            "channel": {"resourceClaimTemplate": {"name": channel_template_name(name)}},
        },
    }


def claim_channel(pod: dict[str, Any], domain: str) -> None:
    """Give a rendered pod its replica's IMEX channel: a pod-level claim from the domain's
    template, used by every container that requests GPUs, and the label naming the domain."""
    pod["metadata"]["labels"][COMPUTE_DOMAIN_LABEL] = domain
    spec = pod["spec"]
    claims = [c for c in spec.get("resourceClaims") or [] if c.get("name") != CHANNEL_CLAIM]
    template = channel_template_name(domain)
    spec["resourceClaims"] = [
        *claims,
        {"name": CHANNEL_CLAIM, "resourceClaimTemplateName": template},
    ]
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        asks = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
        if not any("/" in name for name in asks):  # only containers holding GPUs use NVLink
            continue
        used = [c for c in resources.get("claims") or [] if c.get("name") != CHANNEL_CLAIM]
        container["resources"] = {**resources, "claims": [*used, {"name": CHANNEL_CLAIM}]}
