"""One replica's Pods: the user's template with rackscale's pins, GPUs, env and identity added."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rackscale.api.environment import COORDINATION_PORT, ENVIRONMENT, MULTI_NODE_NVLINK_ENV
from rackscale.api.inferencedeployment import InferenceDeployment, Parallelism, RoleReplica
from rackscale.api.labels import (
    DEFAULT_RACK_LABEL,
    DEPLOYMENT_LABEL,
    EXCLUSIVE_LABEL,
    FIRST_RANK_ANNOTATION,
    GROUP_LABEL,
    GROUP_ROLES_ANNOTATION,
    LEADER_LABEL,
    LEADERS_ANNOTATION,
    MODE_ANNOTATION,
    NVLINK_CROSSES_NODES_ANNOTATION,
    POOL_TAINT_KEY,
    RACK_ANNOTATION,
    RACK_LABEL,
    RACKS_ANNOTATION,
    REPLICA_LABEL,
    ROLE_LABEL,
    SHARD_LABEL,
    SHARDS_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
)
from rackscale.api.rackpool import DEFAULT_GPU_RESOURCE
from rackscale.placement.engine import PodPlan, ReplicaPlan
from rackscale.render.computedomain import claim_channel
from rackscale.render.names import (
    headless_service_name,
    label_value,
    leader_address,
    leaders_variable,
    owner_reference,
    replica_pod_name,
)
from rackscale.topology.snapshot import Snapshot

_AFFINITY_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_PROBES = ("readinessProbe", "livenessProbe", "startupProbe")


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """What rendering needs to know of the cluster besides the plan."""

    pool: str | None = None  # the RackPool of rack-mode replicas
    gpu_resource: str = DEFAULT_GPU_RESOURCE  # the pool's; device-plugin pods use the default
    rack_labels: tuple[str, ...] = (DEFAULT_RACK_LABEL,)  # device-plugin pods avoid these nodes
    node_racks: Mapping[str, str] | None = None  # node -> rack, for plans naming no pod's rack


def pool_facts(deployment: InferenceDeployment, plan: ReplicaPlan, snapshot: Snapshot) -> PoolFacts:
    """What rendering `plan` needs from the snapshot it was placed in: the deployment's pool,
    its GPU resource, and every pool's rack label (each pod's rack, its ComputeDomain and
    whether NVLink crosses its nodes are in the plan)."""
    pool = snapshot.pools.get(deployment.spec.placement.rack_pool or "")
    labels = {p.spec.rack_label for p in snapshot.pools.values()} or {DEFAULT_RACK_LABEL}
    return PoolFacts(
        pool=pool.name if pool else None,
        gpu_resource=pool.spec.gpu_resource if pool else DEFAULT_GPU_RESOURCE,
        rack_labels=tuple(sorted(labels)),
    )


def template_hash(deployment: InferenceDeployment) -> str:
    """A digest of everything in the spec that shapes a pod; `replicas` and `model` excluded."""
    spec = deployment.spec
    placement = spec.placement.model_dump(mode="json", by_alias=True)
    if placement["colocate"] is None:  # absent, the digest of existing pods stays the same
        del placement["colocate"]
    shaping: dict[str, Any] = {
        "template": spec.template,
        "parallelism": spec.parallelism.model_dump(mode="json"),
        "gpusPerPod": spec.gpus_per_pod,
        "placement": placement,
        "port": spec.port,
    }
    if spec.worker_template is not None:  # absent, the digest of existing pods stays the same
        shaping["workerTemplate"] = spec.worker_template
    if spec.roles is not None:  # a role's replicas are scaled in place (its pods stay)
        shaping["roles"] = [
            r.model_dump(mode="json", by_alias=True, exclude={"replicas"}) for r in spec.roles
        ]
    text = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_replica(
    deployment: InferenceDeployment, plan: ReplicaPlan, facts: PoolFacts
) -> list[dict[str, Any]]:
    """Every Pod of one placed replica, shard 0 (the leader) first. With spec.roles, `plan`
    is a role replica's (`plan.replica` numbers it in the deployment) and its pods are shaped
    by its role."""
    digest = template_hash(deployment)
    view = deployment
    if deployment.spec.roles:
        view = deployment.role_view(deployment.spec.role_replica(plan.replica).role)
    return [_pod(deployment, view, plan, pod, facts, digest) for pod in plan.pods]


def _pod(  # noqa: PLR0917
    deployment: InferenceDeployment,
    view: InferenceDeployment,
    plan: ReplicaPlan,
    pod: PodPlan,
    facts: PoolFacts,
    digest: str,
) -> dict[str, Any]:
    """One pod: `deployment` gives its identity, `view` (the deployment, or its role) its shape."""
    worker_template = view.spec.worker_template
    from_leader = pod.shard == 0 or worker_template is None
    template = copy.deepcopy(view.spec.template if from_leader else worker_template or {})
    meta_in: dict[str, Any] = template.get("metadata") or {}
    rack = _rack_of(pod, plan, facts) if plan.mode == "Rack" else ""
    name = replica_pod_name(deployment, plan.replica, pod.shard)
    rendered = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": deployment.namespace,
            "labels": _labels(deployment, plan, pod, rack, meta_in.get("labels") or {}),
            "annotations": _annotations(
                deployment, plan, pod, rack, digest, meta_in.get("annotations") or {}
            ),
            "ownerReferences": [owner_reference(deployment)],
        },
        "spec": _spec(deployment, view, plan, pod, facts, template.get("spec") or {}, rack),
    }
    if plan.compute_domain:
        claim_channel(rendered, plan.compute_domain)
    return rendered


def _labels(
    deployment: InferenceDeployment,
    plan: ReplicaPlan,
    pod: PodPlan,
    rack: str,
    given: Mapping[str, str],
) -> dict[str, str]:
    labels = dict(given)
    labels.update(
        {
            DEPLOYMENT_LABEL: deployment.name,
            REPLICA_LABEL: str(plan.replica),
            SHARD_LABEL: str(pod.shard),
        }
    )
    if deployment.spec.roles:
        member = deployment.spec.role_replica(plan.replica)
        labels[ROLE_LABEL] = member.role
        labels[GROUP_LABEL] = str(member.group)
    labels.pop(LEADER_LABEL, None)
    if pod.shard == 0:
        labels[LEADER_LABEL] = "true"
    if plan.mode == "Rack":
        labels[RACK_LABEL] = label_value(rack)
        if deployment.spec.placement.exclusive:
            labels[EXCLUSIVE_LABEL] = "true"
    return labels


def _annotations(  # noqa: PLR0917
    deployment: InferenceDeployment,
    plan: ReplicaPlan,
    pod: PodPlan,
    rack: str,
    digest: str,
    given: Mapping[str, str],
) -> dict[str, str]:
    annotations = dict(given)
    annotations.update(
        {
            TEMPLATE_HASH_ANNOTATION: digest,
            SHARDS_ANNOTATION: str(len(plan.pods)),
            FIRST_RANK_ANNOTATION: str(pod.first_rank),
            MODE_ANNOTATION: plan.mode,
        }
    )
    if plan.mode == "Rack":
        annotations[RACK_ANNOTATION] = rack
        annotations[RACKS_ANNOTATION] = ",".join(plan.racks)
    annotations.pop(NVLINK_CROSSES_NODES_ANNOTATION, None)
    if plan.nvlink_crosses_nodes:  # read back by status, as the engine decided it
        annotations[NVLINK_CROSSES_NODES_ANNOTATION] = "true"
    if deployment.spec.roles:
        counts = (f"{r.name}={r.replicas}" for r in deployment.spec.roles)
        annotations[GROUP_ROLES_ANNOTATION] = ",".join(counts)
        group = deployment.spec.group_of(plan.replica)
        annotations[LEADERS_ANNOTATION] = leaders_annotation(deployment, group)
    return annotations


def _spec(  # noqa: PLR0917
    deployment: InferenceDeployment,
    view: InferenceDeployment,
    plan: ReplicaPlan,
    pod: PodPlan,
    facts: PoolFacts,
    spec: dict[str, Any],
    rack: str,
) -> dict[str, Any]:
    rack_mode = plan.mode == "Rack"
    resource = facts.gpu_resource if rack_mode else DEFAULT_GPU_RESOURCE
    env = _env(deployment, view, plan, pod, rack)
    if deployment.spec.roles:
        env += _role_env(deployment, deployment.spec.role_replica(plan.replica))
    containers = _containers(spec.get("containers") or [], env, resource, pod.gpus)
    if pod.shard > 0 and view.spec.worker_template is None:
        containers = [_without_probes(c) for c in containers]
    if plan.nvlink_crosses_nodes:
        containers = [_with_defaults(c, MULTI_NODE_NVLINK_ENV) for c in containers]
    spec["containers"] = containers
    if spec.get("initContainers"):
        spec["initContainers"] = [_with_env(c, env) for c in spec["initContainers"]]
    spec["hostname"] = replica_pod_name(deployment, plan.replica, pod.shard)
    spec["subdomain"] = headless_service_name(deployment.name)
    spec.pop("nodeName", None)  # kube-scheduler binds; the operator only pins
    if rack_mode:
        assert pod.node is not None, "a rack-mode pod is pinned to a node"
        _pin(spec, pod.node)
        spec["tolerations"] = _tolerations(spec.get("tolerations") or [], facts.pool)
    else:
        _avoid_racks(spec, facts.rack_labels)
    return spec


def _rack_of(pod: PodPlan, plan: ReplicaPlan, facts: PoolFacts) -> str:
    if pod.rack is not None:  # the engine says where it placed the pod
        return pod.rack
    if facts.node_racks and pod.node is not None and pod.node in facts.node_racks:
        return facts.node_racks[pod.node]
    return plan.racks[0] if plan.racks else ""


def _env(
    deployment: InferenceDeployment,
    view: InferenceDeployment,
    plan: ReplicaPlan,
    pod: PodPlan,
    rack: str,
) -> list[dict[str, str]]:
    par = view.spec.parallelism
    leader = leader_address(deployment, plan.replica)
    start, local = _data_parallel_ranks(par, pod.first_rank, pod.gpus)
    values = {
        "RACKSCALE_REPLICA": plan.replica,
        "RACKSCALE_SHARD": pod.shard,
        "RACKSCALE_SHARDS": len(plan.pods),
        "RACKSCALE_WORLD_SIZE": par.gpus,
        "RACKSCALE_FIRST_RANK": pod.first_rank,
        "RACKSCALE_TENSOR_PARALLEL": par.tensor,
        "RACKSCALE_PIPELINE_PARALLEL": par.pipeline,
        "RACKSCALE_DATA_PARALLEL": par.data,
        "RACKSCALE_EXPERT_PARALLEL": par.expert,
        "RACKSCALE_LEADER_ADDRESS": leader,
        "RACKSCALE_RACK": rack,
        "RACKSCALE_NNODES": len(plan.pods),
        "RACKSCALE_NODE_RANK": pod.shard,
        "RACKSCALE_DATA_PARALLEL_START_RANK": start,
        "RACKSCALE_DATA_PARALLEL_SIZE_LOCAL": local,
        "RACKSCALE_COORDINATION_PORT": COORDINATION_PORT,
        "LWS_LEADER_ADDRESS": leader,
        "LWS_GROUP_SIZE": len(plan.pods),
        "LWS_WORKER_INDEX": pod.shard,
    }
    assert len(values) == len(ENVIRONMENT), "every variable has its meaning in api.environment"
    return [{"name": name, "value": str(values[name])} for name, _ in ENVIRONMENT]


def _role_env(deployment: InferenceDeployment, member: RoleReplica) -> list[dict[str, str]]:
    """Which role replica the pod is, and where the leaders of every role of its group listen
    (api.environment.ROLE_ENVIRONMENT)."""
    env = [
        {"name": "RACKSCALE_ROLE", "value": member.role},
        {"name": "RACKSCALE_GROUP", "value": str(member.group)},
        {"name": "RACKSCALE_ROLE_INDEX", "value": str(member.index)},
    ]
    for role, leaders in group_leaders(deployment, member.group).items():
        env.append({"name": leaders_variable(role), "value": ",".join(leaders)})
    return env


def group_leaders(deployment: InferenceDeployment, group: int) -> dict[str, list[str]]:
    """Each role of a serving group, in spec order, and the `host:port` of its leaders there."""
    spec = deployment.spec
    members = spec.role_replicas(group)
    return {
        role.name: [
            f"{leader_address(deployment, m.replica)}:{role.port or spec.port}"
            for m in members
            if m.role == role.name
        ]
        for role in spec.roles or ()
    }


def leaders_annotation(deployment: InferenceDeployment, group: int) -> str:
    """The value of `rackscale.dev/leaders` on the pods of a serving group: `<role>=host:port,...`
    a line, as RACKSCALE_<ROLE>_LEADERS holds them, for the group's roles as they are now."""
    return "\n".join(
        f"{role}={','.join(leaders)}" for role, leaders in group_leaders(deployment, group).items()
    )


def _data_parallel_ranks(par: Parallelism, first_rank: int, gpus: int) -> tuple[int, int]:
    """(data-parallel rank of the pod's first GPU, data-parallel ranks among its GPUs), for
    ranks numbered tensor-fastest: rank = t + tensor * (d + data * p)."""
    ranks = {(rank // par.tensor) % par.data for rank in range(first_rank, first_rank + gpus)}
    return (first_rank // par.tensor) % par.data, max(len(ranks), 1)


def _with_env(container: dict[str, Any], env: list[dict[str, str]]) -> dict[str, Any]:
    """rackscale's variables, then the container's own env without any of the same name: set
    first, they can be used as `$(NAME)` in the container's env values."""
    ours = {e["name"] for e in env}
    kept = [e for e in container.get("env") or [] if e.get("name") not in ours]
    return {**container, "env": env + kept}


def _with_defaults(
    container: dict[str, Any], defaults: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Variables added unless the container's env already names them: its own value wins."""
    env = list(container.get("env") or [])
    have = {e.get("name") for e in env}
    env += [{"name": name, "value": value} for name, value in defaults if name not in have]
    return {**container, "env": env}


def _without_probes(container: dict[str, Any]) -> dict[str, Any]:
    """A worker rendered from the leader's template: its probes check the leader's server."""
    return {k: v for k, v in container.items() if k not in _PROBES}


def _containers(
    containers: Sequence[dict[str, Any]],
    env: list[dict[str, str]],
    resource: str,
    gpus: int,
) -> list[dict[str, Any]]:
    """GPUs requested by the first container only: the device plugin hands them to one process."""
    out = []
    for index, container in enumerate(containers):
        c = _with_env(container, env)
        resources = dict(c.get("resources") or {})
        for part in ("requests", "limits"):
            amounts = dict(resources.get(part) or {})
            if index == 0:
                amounts[resource] = str(gpus)
            else:
                amounts.pop(resource, None)
            if amounts:
                resources[part] = amounts
        c["resources"] = resources
        out.append(c)
    return out


def _pin(spec: dict[str, Any], node: str) -> None:
    """A required affinity to exactly one node: kube-scheduler can bind it nowhere else."""
    affinity = dict(spec.get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    node_affinity[_AFFINITY_REQUIRED] = {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        ]
    }
    affinity["nodeAffinity"] = node_affinity
    spec["affinity"] = affinity


def _avoid_racks(spec: dict[str, Any], rack_labels: Sequence[str]) -> None:
    """Device-plugin pods stay off rack-pool nodes: `<rackLabel> DoesNotExist` in every term."""
    avoid = [{"key": label, "operator": "DoesNotExist"} for label in sorted(set(rack_labels))]
    if not avoid:
        return
    affinity = dict(spec.get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    required = dict(node_affinity.get(_AFFINITY_REQUIRED) or {})
    terms = [dict(t) for t in required.get("nodeSelectorTerms") or []] or [{}]
    for term in terms:
        term["matchExpressions"] = [*(term.get("matchExpressions") or []), *avoid]
    required["nodeSelectorTerms"] = terms
    node_affinity[_AFFINITY_REQUIRED] = required
    affinity["nodeAffinity"] = node_affinity
    spec["affinity"] = affinity


def _tolerations(existing: Sequence[dict[str, Any]], pool: str | None) -> list[dict[str, Any]]:
    ours = {"key": POOL_TAINT_KEY, "operator": "Equal", "value": pool or "", "effect": "NoSchedule"}
    kept = [dict(t) for t in existing if t != ours]
    return [*kept, ours]
