"""Everything the operator creates for a plan: one function, for the reconciler and `plan -o yaml`.

`plan_objects` is the full list of objects for placed replicas (each replica's ComputeDomain,
where it has one, and its Pods, then each deployment's Services and its InferencePool, where
spec.inferencePool asks for one), in the order the operator creates them. Objects a later
feature adds per deployment or replica belong here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rackscale.api.inferencedeployment import InferenceDeployment
from rackscale.placement import DeploymentPlan
from rackscale.render.computedomain import compute_domain_of
from rackscale.render.inferencepool import render_inference_pool
from rackscale.render.pods import pool_facts, render_replica
from rackscale.render.services import render_services
from rackscale.topology import Snapshot


def plan_objects(
    snapshot: Snapshot,
    plans: Sequence[DeploymentPlan],
    deployments: Sequence[InferenceDeployment],
) -> list[dict[str, Any]]:
    """The ComputeDomain and Pods of every placed replica, and the Services (and InferencePool)
    of every deployment with one."""
    out: list[dict[str, Any]] = []
    for plan, deployment in zip(plans, deployments, strict=True):
        domains: set[str] = set()
        for replica in plan.replicas:
            if replica.compute_domain and replica.compute_domain not in domains:
                domains.add(replica.compute_domain)
                out.append(compute_domain_of(deployment, replica))
            out += render_replica(deployment, replica, pool_facts(deployment, replica, snapshot))
        if plan.replicas:
            out += render_services(deployment)
            pool = render_inference_pool(deployment)
            if pool is not None:
                out.append(pool)
    return out
