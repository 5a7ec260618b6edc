"""`rackscale explain NAME`: why an InferenceDeployment is where it is, or why it is pending.

`explain` is pure: the deployment, its pods, the cluster's nodes, GPU pods and RackPools, and its
Events in; text out. `fetch` reads them from the live cluster. A pending replica's reason is
derived again by running the engine on a snapshot of the cluster as it is now, so it is current
even when the operator has not written status for a while.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from rackscale.api import GROUP, VERSION, InferenceDeployment, RackPool, format_errors
from rackscale.api.labels import DEPLOYMENT_LABEL, MODE_ANNOTATION, RACKS_ANNOTATION, REPLICA_LABEL
from rackscale.cli import kubectl
from rackscale.placement import Decision
from rackscale.planner import step as planner
from rackscale.planner.lifecycle import Clock
from rackscale.planner.plan import Seen, View, plan_pass
from rackscale.render import COMPUTE_DOMAIN_GROUP, COMPUTE_DOMAIN_VERSION
from rackscale.render.network import cross_rack_warning
from rackscale.topology import PodInfo, Snapshot, build_snapshot, pinned_node

EVENTS_SHOWN = 10


@dataclass(slots=True)
class Cluster:
    """What `explain` reads: plain API objects, as `kubectl get -o json` prints them."""

    deployment: dict[str, Any]
    nodes: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)  # every GPU pod of the cluster
    pools: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # the deployment's Events
    compute_domains: bool = False  # the API server serves NVIDIA's ComputeDomains
    deployments: list[dict[str, Any]] = field(default_factory=list)  # all: the next pass


def register(commands: Any) -> None:
    cmd = commands.add_parser(
        "explain",
        help="why an InferenceDeployment is where it is, or why it is pending",
        description="Read an InferenceDeployment, its pods, the cluster's racks and its Events, "
        "and print, for each replica, its mode, racks and nodes and why those racks; for a "
        "pending replica, the reason the placement engine gives on the cluster as it is now.",
    )
    cmd.add_argument("name", metavar="NAME", help="the InferenceDeployment (kubectl get idep)")
    cmd.add_argument("-n", "--namespace", default=None, help="default: the context's namespace")
    kubectl.add_output(cmd)
    kubectl.add_cluster(cmd)
    cmd.set_defaults(handler=run)


# ---- the pure part ----------------------------------------------------------------------------


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _pods_of(cluster: Cluster, deployment: InferenceDeployment) -> dict[int, list[dict[str, Any]]]:
    """The deployment's pods by replica number (with roles, known by group, role and index, as
    the operator knows them)."""
    infos = [PodInfo.from_body(p) for p in cluster.pods]
    mine = {id(p) for p in planner.owned_pods(deployment, infos)}
    replicas: dict[int, list[dict[str, Any]]] = {}
    for info, pod in zip(infos, cluster.pods, strict=True):
        if id(info) not in mine:
            continue
        index = info.labels.get(REPLICA_LABEL, "")
        number = int(index) if index.isdigit() else None
        if deployment.spec.roles:
            number = planner.role_number_of(deployment, info)
        if number is not None:
            replicas.setdefault(number, []).append(pod)
    return replicas


def _pod_line(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName")
    pinned = pinned_node(dict(pod))
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    where = node or (f"pinned to {pinned}, not bound yet" if pinned else "not scheduled yet")
    state = "terminating" if meta.get("deletionTimestamp") else (status.get("phase") or "Pending")
    if state == "Running" and not ready:
        state = "Running, not ready"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            state += f" ({cond.get('reason')}: {cond.get('message')})"
    return f"{meta.get('name')}: {where}; {state}"


def _why_racks(deployment: InferenceDeployment, racks: list[str]) -> str:
    placement = deployment.spec.placement
    if placement.exclusive:
        return "exclusive: whole racks that hold no GPU pod of anything else"
    if placement.replica_scope == "Node":
        return "replicaScope Node: best fit, the node with the fewest free GPUs that holds it"
    if len(racks) > 1:
        return (
            f"replicaScope {placement.replica_scope}: too large for one rack, so the fewest "
            "racks that hold it, cut only between whole tensor- and expert-parallel groups, "
            "whole pipeline stages per rack where that costs no extra rack"
        )
    if placement.spread == "Spread" and deployment.spec.replicas > 1:
        return (
            "spread: the best-fit rack among those holding no other replica of this deployment "
            "(any rack when every rack holds one)"
        )
    return "best fit: the rack with the fewest free GPUs that holds the whole replica"


def _rack_now(snapshot: Snapshot, pool: str | None, name: str) -> str:
    rack = snapshot.pools[pool].racks.get(name) if pool in snapshot.pools else None
    if rack is None:
        return f"{name} (no longer a rack of RackPool {pool})"
    free = max(rack.allocatable - rack.used, 0)
    return f"{name} ({rack.health}, {free}/{rack.allocatable} GPUs free now)"


def _events(events: Sequence[Mapping[str, Any]], said: Said | None = None) -> list[str]:
    def when(event: Mapping[str, Any]) -> str:
        return str(
            event.get("lastTimestamp")
            or event.get("eventTime")
            or (event.get("metadata") or {}).get("creationTimestamp")
            or ""
        )

    lines = []
    for event in sorted(events, key=when)[-EVENTS_SHOWN:]:
        count = event.get("count") or 1
        times = f" (x{count})" if count > 1 else ""
        message = str(event.get("message", ""))
        lines.append(
            f"  {when(event) or '-'}  {event.get('type', ''):<7}  {event.get('reason', '')}"
            f"{times}: {said.once(message) if said else message}"
        )
    return lines


def explain(cluster: Cluster) -> str:
    """The explanation a person reads: absolute timestamps only, so the same input reads the
    same."""
    body = cluster.deployment
    meta = body.get("metadata") or {}
    lines = [f"InferenceDeployment {meta.get('namespace')}/{meta.get('name')}"]
    try:
        deployment = InferenceDeployment.model_validate(body)
    except ValidationError as error:
        lines.append("  invalid spec: " + "; ".join(format_errors(error)))
        lines += ["Events:", *(_events(cluster.events) or ["  none"])]
        return "\n".join(lines)
    lines += _summary(deployment, body)
    snapshot = _snapshot(cluster)
    next_pass = _next_pass(cluster, snapshot)
    lines.append("Replicas:")
    by_replica = _pods_of(cluster, deployment)
    said = Said()
    for index in sorted(set(deployment.spec.replica_numbers()) | set(by_replica)):
        pods = sorted(by_replica.get(index, []), key=lambda p: p["metadata"]["name"])
        if pods:
            lines += _placed(deployment, body, snapshot, index, pods)
        else:
            decision = next_pass.get((deployment.key, index))
            lines += _pending(deployment, index, decision)
            if decision is not None and decision.plan is None:
                said.add(str(decision.reason))
    lines += _conditions(body.get("status") or {}, said)
    lines += ["Events:", *(_events(cluster.events, said) or ["  none"])]
    return "\n".join(lines)


class Said:
    """Reasons already printed in full: conditions and Events that repeat one say `(as above)`.
    The operator words one engine reason into several conditions and an Event; a person needs
    to read it once."""

    SHORTEST = 40  # shorter texts cost less to repeat than a pointer to them

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, text: str) -> None:
        if len(text) >= self.SHORTEST and text not in self.texts:
            self.texts.append(text)

    def once(self, message: str) -> str:
        """The message with every reason said before replaced by `(as above)`; then the
        message, and its reason (what follows the replica or state it starts with, up to the
        first `: `), count as said."""
        for text in sorted(self.texts, key=len, reverse=True):
            message = message.replace(text, "(as above)")
        self.add(message)
        self.add(message.partition(": ")[2])
        return message


def _summary(deployment: InferenceDeployment, body: Mapping[str, Any]) -> list[str]:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    spec = deployment.spec
    placement = spec.placement
    unit = "serving groups" if spec.roles else "replicas"
    lines = [
        f"  phase {status.get('phase', 'unknown (not reconciled yet)')}, "
        f"{status.get('readyReplicas', 0)}/{spec.replicas} {unit} ready, "
        f"{status.get('gpus', 0)} GPUs, mode {status.get('mode', '-')}"
    ]
    if status.get("observedGeneration") != meta.get("generation"):
        lines.append(
            f"  status is for generation {status.get('observedGeneration', '-')}, the spec is "
            f"generation {meta.get('generation')}: the operator has not caught up yet"
        )
    lines += _shape(deployment)
    lines.extend(_memory_and_cost(deployment, status))
    if placement.rack_pool:
        lines.append(
            f"  placement: RackPool {placement.rack_pool}, replicaScope {placement.replica_scope}, "
            f"spread {placement.spread}, exclusive {str(placement.exclusive).lower()}, "
            f"fallback {placement.fallback}"
        )
    else:
        lines.append(
            "  placement: no rackPool, so device-plugin mode: kube-scheduler and the device "
            "plugin place the pods on ordinary GPU nodes"
        )
    return lines


def _shape(deployment: InferenceDeployment) -> list[str]:
    """Each replica's GPUs and parallelism; with roles, each role's, per serving group."""
    spec = deployment.spec
    views = [(f"{r.replicas} x {r.name}", deployment.role_view(r.name)) for r in spec.roles or []]
    lines = [f"  each serving group: {spec.gpus_per_replica} GPUs"] if views else []
    for label, view in views or [("each replica", deployment)]:
        par, per_pod = view.spec.parallelism, view.spec.gpus_per_pod
        lines.append(
            f"  {'  ' if views else ''}{label}: {par.gpus} GPUs (tensor {par.tensor} x pipeline "
            f"{par.pipeline} x data {par.data}, expert {par.expert})"
            + (f", {per_pod} GPUs per pod" if per_pod else "")
        )
    return lines


def _snapshot(cluster: Cluster) -> Snapshot:
    pools = []
    for raw in cluster.pools:
        try:
            pools.append(RackPool.model_validate(raw))
        except ValidationError:
            continue  # the API server refuses such pools; `rackscale racks` names them
    return build_snapshot(
        cluster.nodes, cluster.pods, pools, compute_domains=cluster.compute_domains
    )


def _next_pass(cluster: Cluster, snapshot: Snapshot) -> dict[tuple[str, int], Decision]:
    """What the operator's next pass decides for every waiting replica of the cluster: the
    planner's pass (`plan_pass`) on the cluster as it is now, with nothing remembered (racks
    kept for larger replicas, role replicas beside their groups and ComputeDomains included)."""
    bodies = {_key(b): b for b in [*cluster.deployments, cluster.deployment]}
    pods = [PodInfo.from_body(p) for p in cluster.pods]
    seen = []
    for body in bodies.values():
        try:
            model = InferenceDeployment.model_validate(body)
        except ValidationError:
            seen.append(Seen(body))  # refused by the planner: nothing of it is placed
            continue
        seen.append(Seen(body, planner.owned_pods(model, pods)))
    readiness = {n.name: n.ready for n in snapshot.nodes.values()}
    clock = Clock(datetime.now(UTC), unschedulable_after=float("inf"), domain_after=float("inf"))
    plan = plan_pass(View(snapshot, seen, readiness), {}, clock)
    return {
        (f"{p.key[0]}/{p.key[1]}", d.replica): d
        for p in plan.deployments
        for booking in p.bookings
        for d in booking.decisions
    }


def _key(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _member(deployment: InferenceDeployment, index: int) -> str:
    """` (group 0, decode 0)` for a role replica; nothing without roles."""
    if not deployment.spec.roles or not deployment.spec.wants(index):
        return ""
    member = deployment.spec.role_replica(index)
    return f" (group {member.group}, {member.role} {member.index})"


def _pending(deployment: InferenceDeployment, index: int, decision: Decision | None) -> list[str]:
    lines = [f"  replica {index}{_member(deployment, index)}: pending"]
    if decision is None:
        lines.append("    its old pods are still going away; it is placed once they are gone")
    elif decision.plan is None:
        lines.append(f"    why: {decision.reason} (the operator's next pass, on the cluster now)")
    elif decision.plan.mode == "Rack":
        lines.append(
            f"    it fits now on {', '.join(decision.plan.racks)}: the operator places it "
            "on its next pass"
        )
        lines += _network(deployment, index, decision.plan.racks)
    else:
        lines.append(f"    it fits now in device-plugin mode ({decision.reason or 'no rackPool'})")
    return lines


def _placed(
    deployment: InferenceDeployment,
    body: Mapping[str, Any],
    snapshot: Snapshot,
    index: int,
    pods: list[dict[str, Any]],
) -> list[str]:
    spec, placement = deployment.spec, deployment.spec.placement
    lines = []
    if not spec.wants(index):
        lines.append(f"  replica {index}: being removed (scaled down)")
    annotations = _annotations(pods[0])
    mode = annotations.get(MODE_ANNOTATION) or "Rack"
    racks = [r for r in annotations.get(RACKS_ANNOTATION, "").split(",") if r]
    nodes = sorted({n for p in pods if (n := pinned_node(p) or p["spec"].get("nodeName"))})
    if spec.wants(index):
        lines.append(
            f"  replica {index}{_member(deployment, index)}: {mode} mode, {len(pods)} pods"
        )
    if mode == "Rack":
        shown = ", ".join(_rack_now(snapshot, placement.rack_pool, r) for r in racks)
        lines.append(f"    racks: {shown or '-'}")
        lines.append(f"    nodes: {', '.join(nodes) or '-'}")
        lines.append(f"    why: {_why_racks(deployment, racks)}")
        lines += _network(deployment, index, racks)
    elif placement.rack_pool:
        fallback = _condition(body.get("status") or {}, "Placed")
        fell_back = fallback.get("reason") == "DevicePluginFallback"
        message = str(fallback.get("message") or "") if fell_back else ""
        lines.append(
            "    why: the pool could not hold it and fallback is DevicePlugin"
            + (f" ({message})" if message else "")
        )
    else:
        lines.append("    why: no rackPool: kube-scheduler chose the nodes")
    lines += [f"    {_pod_line(pod)}" for pod in pods]
    return lines


def _network(deployment: InferenceDeployment, index: int, racks: Sequence[str]) -> list[str]:
    warning = cross_rack_warning(deployment, index, racks)
    return [f"    warning: {warning}"] if warning else []


def _conditions(status: Mapping[str, Any], said: Said) -> list[str]:
    """One line per distinct message, naming every condition that carries it."""
    conditions = status.get("conditions") or []
    by_message: dict[str, list[str]] = {}
    for cond in conditions:
        name = f"{cond.get('type')}={cond.get('status')} {cond.get('reason')}"
        by_message.setdefault(str(cond.get("message", "")), []).append(name)
    lines = ["Conditions:"]
    for message, names in by_message.items():
        lines.append(f"  {', '.join(names)}: {said.once(message)}")
    if not conditions:
        lines.append("  none yet: is the operator running? (kubectl get pods -A | grep rackscale)")
    return lines


def _memory_and_cost(deployment: InferenceDeployment, status: Mapping[str, Any]) -> list[str]:
    """Memory one replica needs against what each placed replica's GPUs have, and the cost."""
    lines = []
    model = deployment.spec.model
    # With roles each role holds the whole model: one figure per replica says nothing true.
    need = (
        model.need(deployment.spec.gpus_per_replica)
        if model and not deployment.spec.roles
        else None
    )
    if need is not None:
        have = [
            f"replica {p.get('replica')} {p['gpuMemoryMiB'] // 1024} GiB"
            for p in status.get("placements") or []
            if p.get("gpuMemoryMiB") is not None
        ]
        parts = [f"{need.weights_mib // 1024} GiB of weights at {need.precision}"]
        if need.kv_cache_mib:
            parts.append(f"{need.kv_cache_mib // 1024} GiB KV cache")
        parts.append(f"{need.overhead_mib // 1024} GiB runtime overhead")
        lines.append(
            f"  memory: {-(-need.total_mib // 1024)} GiB per replica ({', '.join(parts)}); "
            "its GPUs have: " + (", ".join(have) or "not known yet")
        )
    if status.get("costPerHour") is not None:
        lines.append(f"  cost: {status['costPerHour']} {status.get('currency', '')}/h")
    return lines


def _condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


# ---- reading the cluster ------------------------------------------------------------------------


def as_data(cluster: Cluster) -> dict[str, Any]:
    """`-o json|yaml`: the explanation's lines beside the objects it was made from."""
    meta = cluster.deployment.get("metadata") or {}
    return {
        "deployment": f"{meta.get('namespace')}/{meta.get('name')}",
        "explanation": explain(cluster).splitlines(),
        "status": cluster.deployment.get("status") or {},
        "pods": sorted(
            (p.get("metadata") or {}).get("name", "")
            for p in cluster.pods
            if (p.get("metadata") or {}).get("namespace") == meta.get("namespace")
            and _labels(p).get(DEPLOYMENT_LABEL) == meta.get("name")
        ),
        "events": cluster.events[-EVENTS_SHOWN:],
    }


def current_namespace(args: argparse.Namespace) -> str:
    """The namespace of the kubeconfig's (or --context's) context, as kubectl would use it."""
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    except Exception:
        return "default"
    if args.context:
        active = next((c for c in contexts or [] if c.get("name") == args.context), active)
    return str(((active or {}).get("context") or {}).get("namespace") or "default")


def fetch(args: argparse.Namespace, namespace: str) -> Cluster:
    name = args.name
    with kubectl.Cluster(args) as cluster:
        core, custom = cluster.core, cluster.custom
        body = cluster.call(
            f"get inferencedeployments.rackscale.dev {name} -n {namespace}",
            custom,
            "get_namespaced_custom_object",
            GROUP,
            VERSION,
            namespace,
            "inferencedeployments",
            name,
        )
        return Cluster(
            deployment=body,
            nodes=cluster.items("list nodes", core, "list_node"),
            deployments=cluster.items(
                "list inferencedeployments.rackscale.dev --all-namespaces",
                custom,
                "list_cluster_custom_object",
                GROUP,
                VERSION,
                "inferencedeployments",
            ),
            pods=cluster.items(
                "list pods --all-namespaces",
                core,
                "list_pod_for_all_namespaces",
                field_selector="status.phase!=Succeeded,status.phase!=Failed",
            ),
            pools=cluster.items(
                "list rackpools.rackscale.dev",
                custom,
                "list_cluster_custom_object",
                GROUP,
                VERSION,
                "rackpools",
            ),
            events=cluster.items(
                f"list events -n {namespace}",
                core,
                "list_namespaced_event",
                namespace,
                field_selector=f"involvedObject.name={name},involvedObject.kind=InferenceDeployment",
            ),
            compute_domains=cluster.serves(COMPUTE_DOMAIN_GROUP, COMPUTE_DOMAIN_VERSION),
        )


def run(args: argparse.Namespace) -> int:
    namespace = args.namespace or current_namespace(args)
    try:
        cluster = fetch(args, namespace)
    except kubectl.ClusterError as error:
        message = str(error)
        if message.startswith("not found: get inferencedeployments"):
            message = (
                f"InferenceDeployment {namespace}/{args.name} not found "
                "(kubectl get idep -A lists them)"
            )
        return kubectl.fail(message, kubectl.CLUSTER_ERROR)
    if args.output in ("json", "yaml"):
        print(kubectl.dump(as_data(cluster), args.output))
    else:
        print(explain(cluster))
    return kubectl.OK
