"""Placement -> Pod and Service manifests: labels, env, affinity, tolerations, owners. Pure."""

from rackscale.render.names import (
    DEPLOYMENT_LABEL,
    EXCLUSIVE_LABEL,
    FIRST_RANK_ANNOTATION,
    LEADER_LABEL,
    MODE_ANNOTATION,
    RACK_ANNOTATION,
    RACK_LABEL,
    RACKS_ANNOTATION,
    REPLICA_LABEL,
    SHARD_LABEL,
    SHARDS_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
    headless_service_name,
    leader_address,
    pod_name,
)
from rackscale.render.plan import plan_objects, pool_facts
from rackscale.render.pods import PoolFacts, render_replica, template_hash
from rackscale.render.services import render_services

__all__ = [
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
    "PoolFacts",
    "headless_service_name",
    "leader_address",
    "plan_objects",
    "pod_name",
    "pool_facts",
    "render_replica",
    "render_services",
    "template_hash",
]
