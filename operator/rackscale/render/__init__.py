"""Placement -> Pod and Service manifests: labels, env, affinity, tolerations, owners. Pure."""

from rackscale.render.computedomain import (
    CHANNEL_CLAIM,
    COMPUTE_DOMAIN_API_VERSION,
    COMPUTE_DOMAIN_CRD,
    COMPUTE_DOMAIN_GROUP,
    COMPUTE_DOMAIN_PLURAL,
    COMPUTE_DOMAIN_VERSION,
    channel_template_name,
    compute_domain_of,
    render_compute_domain,
)
from rackscale.render.inferencepool import (
    INFERENCE_POOL_API_VERSION,
    INFERENCE_POOL_CRD,
    INFERENCE_POOL_GROUP,
    INFERENCE_POOL_PLURAL,
    INFERENCE_POOL_VERSION,
    render_inference_pool,
)
from rackscale.render.names import (
    compute_domain_name,
    group_compute_domain_name,
    headless_service_name,
    leader_address,
    leaders_variable,
    pod_name,
    replica_pod_name,
    role_pod_name,
    role_service_name,
)
from rackscale.render.plan import plan_objects
from rackscale.render.pods import (
    PoolFacts,
    leaders_annotation,
    pool_facts,
    render_replica,
    template_hash,
)
from rackscale.render.services import render_services, serving_port, serving_selector

__all__ = [
    "CHANNEL_CLAIM",
    "COMPUTE_DOMAIN_API_VERSION",
    "COMPUTE_DOMAIN_CRD",
    "COMPUTE_DOMAIN_GROUP",
    "COMPUTE_DOMAIN_PLURAL",
    "COMPUTE_DOMAIN_VERSION",
    "INFERENCE_POOL_API_VERSION",
    "INFERENCE_POOL_CRD",
    "INFERENCE_POOL_GROUP",
    "INFERENCE_POOL_PLURAL",
    "INFERENCE_POOL_VERSION",
    "PoolFacts",
    "channel_template_name",
    "compute_domain_name",
    "compute_domain_of",
    "group_compute_domain_name",
    "headless_service_name",
    "leader_address",
    "leaders_annotation",
    "leaders_variable",
    "plan_objects",
    "pod_name",
    "pool_facts",
    "render_compute_domain",
    "render_inference_pool",
    "render_replica",
    "render_services",
    "replica_pod_name",
    "role_pod_name",
    "role_service_name",
    "serving_port",
    "serving_selector",
    "template_hash",
]
