"""Everything the operator creates for a plan: one function, for the reconciler and `plan -o yaml`.

`pool_facts` is what rendering needs to know of the cluster beside the plan; `plan_objects` is
the full list of objects for placed replicas (Pods, then each deployment's Services), in the order
the operator creates them. Objects a later feature adds per deployment or replica belong here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rackscale.api.inferencedeployment import InferenceDeployment
from rackscale.api.rackpool import DEFAULT_GPU_RESOURCE, DEFAULT_RACK_LABEL
from rackscale.placement import DeploymentPlan, ReplicaPlan
from rackscale.render.pods import PoolFacts, render_replica
from rackscale.render.services import render_services
from rackscale.topology import Snapshot


def pool_facts(deployment: InferenceDeployment, plan: ReplicaPlan, snapshot: Snapshot) -> PoolFacts:
    """The deployment's pool, its GPU resource, every pool's rack label, and each pod's rack."""
    pool = snapshot.pools.get(deployment.spec.placement.rack_pool or "")
    labels = {p.spec.rack_label for p in snapshot.pools.values()} or {DEFAULT_RACK_LABEL}
    racks = {}
    for pod in plan.pods:
        rack = snapshot.rack_of(pod.node) if pod.node else None
        if pod.node and rack is not None:
            racks[pod.node] = rack.name
    return PoolFacts(
        pool=pool.name if pool else None,
        gpu_resource=pool.spec.gpu_resource if pool else DEFAULT_GPU_RESOURCE,
        rack_labels=tuple(sorted(labels)),
        node_racks=racks,
    )


def plan_objects(
    snapshot: Snapshot,
    plans: Sequence[DeploymentPlan],
    deployments: Sequence[InferenceDeployment],
) -> list[dict[str, Any]]:
    """The Pods of every placed replica and the Services of every deployment with one."""
    out: list[dict[str, Any]] = []
    for plan, deployment in zip(plans, deployments, strict=True):
        for replica in plan.replicas:
            out += render_replica(deployment, replica, pool_facts(deployment, replica, snapshot))
        if plan.replicas:
            out += render_services(deployment)
    return out
