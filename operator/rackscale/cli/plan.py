"""`rackscale plan`: the offline what-if, with the same engine the operator runs."""

from __future__ import annotations

import argparse
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rackscale.api import InferenceDeployment, RackPool
from rackscale.api.pricing import Price, parse_price
from rackscale.cli import fit, kubectl
from rackscale.cli.manifests import FAST_ABOVE_BYTES, InputError, describe, objects, parse
from rackscale.placement import DeploymentPlan, ReplicaPlan, place, place_together
from rackscale.render import plan_objects
from rackscale.render.network import cross_rack_warning
from rackscale.topology import NodeInfo, Snapshot, build_snapshot

EPILOG = """exit codes:
  0  every replica of every deployment is placed (in a RackPool, or on ordinary GPU nodes)
  2  bad input: a file that cannot be read, is not YAML or JSON, holds no objects, or holds an
     invalid object (the message names the file, the object and the field)
  3  some replica is left unplaced: the plan is printed first, so a CI step fails on a pull
     request that would not fit

Nodes may come as `kubectl get nodes -o yaml` or `-o json` prints them (JSON reads fastest)."""


def register(commands: Any) -> None:
    cmd = commands.add_parser(
        "plan",
        help="place deployments on a cluster described in files, without touching a cluster",
        description="Place InferenceDeployments, in the order given, on the Nodes, RackPools and "
        "Pods of CLUSTER.yaml, and print where every shard would go or why it cannot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "--cluster",
        required=True,
        type=Path,
        action="append",
        metavar="CLUSTER.yaml",
        help="Nodes, RackPools and (optionally) running Pods, as YAML or JSON; may be repeated",
    )
    kubectl.add_output(cmd)
    cmd.add_argument(
        "--together",
        action="store_true",
        help="place them as the operator does when all wait at once (one GitOps sync): largest "
        "first, trying other orders when some do not fit; default: one after another, in order",
    )
    cmd.add_argument(
        "--no-compute-domains",
        action="store_true",
        help="plan as on a cluster without NVIDIA's DRA driver (no ComputeDomains): replicas "
        "spanning trays are then not held to one pod per tray",
    )
    cmd.add_argument(
        "--device-plugin-gpu-hour",
        type=_price,
        default=None,
        metavar="PRICE",
        help="price of one GPU-hour on ordinary nodes (2.10 or '2.10 USD'): device-plugin "
        "replicas count in the cost (default: left out); pools price theirs in spec.pricing",
    )
    cmd.add_argument("deployments", nargs="+", type=Path, metavar="DEPLOYMENT.yaml")
    cmd.set_defaults(handler=run)


def _price(text: str) -> Price:
    try:
        return parse_price(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


@dataclass(slots=True)
class Loaded:
    """What the files hold: plain Nodes and Pods (only the fields the snapshot reads), models."""

    nodes: list[NodeInfo] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    pools: list[RackPool] = field(default_factory=list)
    deployments: list[InferenceDeployment] = field(default_factory=list)


class Progress:
    """A line on stderr while loading takes more than a second, and only on a terminal."""

    def __init__(self, after: float = 1.0) -> None:
        self.shown = False
        self.message = ""
        self.live = sys.stderr.isatty()
        self.timer = threading.Timer(after, self._show) if self.live else None
        if self.timer is not None:
            self.timer.daemon = True
            self.timer.start()

    def _show(self) -> None:
        self.shown = True
        print(f"\r\033[K{self.message} ...", end="", file=sys.stderr, flush=True)

    def __call__(self, message: str) -> None:
        self.message = message
        if self.shown:
            self._show()

    def done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def label_keys(pools: list[RackPool]) -> frozenset[str]:
    """The node labels the pools read: all the snapshot needs of a node's labels."""
    keys: set[str] = set()
    for pool in pools:
        spec = pool.spec
        keys.add(spec.rack_label)
        if spec.block_label:
            keys.add(spec.block_label)
        keys.update(spec.node_selector.match_labels)
        keys.update(e.key for e in spec.node_selector.match_expressions)
    return frozenset(keys)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # read() names the file


def read(
    cluster_files: list[Path],
    deployment_files: list[Path],
    progress: Callable[[str], None] | None = None,
) -> Loaded:
    """Read and check every file; a deployment's rackPool must be a RackPool of the cluster."""
    kinds = ("Node", "Pod", "RackPool")
    # Small files first: their RackPools say which labels the nodes of large files need.
    order = sorted(
        range(len(cluster_files)), key=lambda i: _size(cluster_files[i]) > FAST_ABOVE_BYTES
    )
    found: dict[int, tuple[list[dict[str, Any]], list[RackPool]]] = {}
    known: list[RackPool] = []
    for index in order:
        path = cluster_files[index]
        labels = label_keys(known) if known else None
        objs = list(objects(path, kinds, progress, labels))
        pools = [parse(RackPool, o, path) for o in objs if o["kind"] == "RackPool"]
        if labels is not None and not label_keys(pools) <= labels:
            objs = list(objects(path, kinds, progress))  # its own pools read other labels
        found[index] = (objs, pools)
        known += pools
    loaded = Loaded()
    for index, cluster in enumerate(cluster_files):
        objs, pools = found[index]
        for obj in objs:
            if obj["kind"] == "Node":
                loaded.nodes.append(NodeInfo.from_body(obj))
            elif obj["kind"] == "Pod":
                loaded.pods.append(obj)
        for pool in pools:
            if any(p.name == pool.name for p in loaded.pools):
                raise InputError(f"{cluster}: RackPool {pool.name} is defined twice")
            loaded.pools.append(pool)
    names = sorted(p.name for p in loaded.pools)
    for path in deployment_files:
        for obj in objects(path, ("InferenceDeployment",), progress):
            deployment = parse(InferenceDeployment, obj, path)
            wanted = deployment.spec.placement.rack_pool
            if wanted is not None and wanted not in names:
                known_names = ", ".join(names) or "none"
                raise InputError(
                    f"{path}: {describe(obj)}: spec.placement.rackPool: RackPool {wanted!r} is "
                    f"not in the cluster files (they define {known_names}; add it with --cluster)"
                )
            loaded.deployments.append(deployment)
    return loaded


def snapshot_of(
    loaded: Loaded, *, compute_domains: bool = True
) -> tuple[Snapshot, list[InferenceDeployment]]:
    """The snapshot of what was read; ComputeDomains are taken as served, as on a GB200 cluster
    with NVIDIA's DRA driver, unless `compute_domains` is False."""
    snapshot = build_snapshot(
        loaded.nodes, loaded.pods, loaded.pools, compute_domains=compute_domains
    )
    return snapshot, loaded.deployments


def load(
    cluster_files: list[Path], deployment_files: list[Path]
) -> tuple[Snapshot, list[InferenceDeployment]]:
    return snapshot_of(read(cluster_files, deployment_files))


def place_all(
    snapshot: Snapshot, deployments: list[InferenceDeployment], *, together: bool
) -> list[DeploymentPlan]:
    """In order, each seeing those before it; or `together`, as one operator pass places them
    (`place_together`: the batch the operator places, serving groups first, then replicas)."""
    return place_together(snapshot, deployments) if together else place(snapshot, deployments)


def unplaced(plans: list[DeploymentPlan], deployments: list[InferenceDeployment]) -> int:
    """Replicas (role replicas, with spec.roles) the plan leaves out."""
    return sum(
        max(d.spec.replica_count - len(p.replicas), 0)
        for p, d in zip(plans, deployments, strict=True)
    )


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    try:
        snapshot, deployments = snapshot_of(
            read(args.cluster, args.deployments, progress),
            compute_domains=not args.no_compute_domains,
        )
    except InputError as error:
        return kubectl.fail(str(error), kubectl.BAD_INPUT)
    finally:
        progress.done()
    plans = place_all(snapshot, deployments, together=args.together)
    ordinary = args.device_plugin_gpu_hour
    if args.output == "json":
        print(kubectl.dump(as_json(snapshot, plans, deployments, ordinary), "json"))
    elif args.output == "yaml":
        print(as_yaml(snapshot, plans, deployments))
        for warning in warnings(snapshot, plans, deployments):
            print(f"warning: {warning}", file=sys.stderr)
    else:
        print(as_table(snapshot, plans, deployments, ordinary, wide=args.output == "wide",
                       headers=not args.no_headers))  # fmt: skip
    missing = unplaced(plans, deployments)
    if missing:
        print(
            f"error: {missing} replica{'s' if missing != 1 else ''} left unplaced",
            file=sys.stderr,
        )
        return kubectl.UNPLACED
    return kubectl.OK


def as_yaml(
    snapshot: Snapshot, plans: list[DeploymentPlan], deployments: list[InferenceDeployment]
) -> str:
    """The ComputeDomains, Pods and Services the operator would create for the plan, as one
    `kind: List`."""
    items = plan_objects(snapshot, plans, deployments)
    return kubectl.dump({"apiVersion": "v1", "kind": "List", "items": items}, "yaml")


def replica_json(
    replica: ReplicaPlan,
    snapshot: Snapshot | None = None,
    deployment: InferenceDeployment | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "replica": replica.replica,
        **_role_json(replica, deployment),
        "mode": replica.mode,
        "racks": list(replica.racks),
        "computeDomain": replica.compute_domain,
        "nvlinkCrossesNodes": replica.nvlink_crosses_nodes,
        "pods": [
            {"shard": p.shard, "node": p.node, "gpus": p.gpus, "firstRank": p.first_rank}
            for p in replica.pods
        ],
    }
    if snapshot is not None and replica.mode == "Rack":
        out["gpuMemoryMiB"] = fit.replica_memory(snapshot, replica)
    return out


def _role_json(replica: ReplicaPlan, deployment: InferenceDeployment | None) -> dict[str, Any]:
    """With spec.roles: the replica's serving group, role and index in the group."""
    if deployment is None or not deployment.spec.roles:
        return {}
    member = deployment.spec.role_replica(replica.replica)
    return {"group": member.group, "role": member.role, "roleIndex": member.index}


def _role_text(replica: ReplicaPlan, deployment: InferenceDeployment) -> str:
    """` (group 0 decode 1)` with spec.roles."""
    role = _role_json(replica, deployment)
    return f" (group {role['group']} {role['role']} {role['roleIndex']})" if role else ""


def placed_count(plan: DeploymentPlan, deployment: InferenceDeployment) -> int:
    """Replicas placed; with spec.roles, serving groups all of whose role replicas are."""
    if not deployment.spec.roles:
        return len(plan.replicas)
    groups = Counter(deployment.spec.role_replica(r.replica).group for r in plan.replicas)
    return sum(n == deployment.spec.group_size for n in groups.values())


def as_json(
    snapshot: Snapshot,
    plans: list[DeploymentPlan],
    deployments: list[InferenceDeployment] | None = None,
    ordinary: Price | None = None,
) -> dict[str, Any]:
    fits = [
        fit.fit_of(snapshot, p, d, ordinary) for p, d in zip(plans, deployments or [], strict=False)
    ]
    deps: list[InferenceDeployment | None] = [*(deployments or [])] or [None] * len(plans)
    out: dict[str, Any] = {
        "placements": [
            {
                "deployment": plan.deployment,
                "mode": plan.mode,
                "replicas": [replica_json(r, snapshot, deps[i]) for r in plan.replicas],
                "reason": plan.reason,
                **(fit.fit_json(fits[i]) if i < len(fits) else {}),
            }
            for i, plan in enumerate(plans)
        ]
    }
    if totals := fit.totals_json(fits):
        out["totalCostPerHour"] = totals
    if found := warnings(snapshot, plans, deployments or []):
        out["warnings"] = found
    return out


def warnings(
    snapshot: Snapshot, plans: list[DeploymentPlan], deployments: list[InferenceDeployment]
) -> list[str]:
    """Nodes two pools claim, then replicas spanning racks whose pods get no RDMA device."""
    conflicts = [
        f"node {node} is selected by RackPools {', '.join(pools)} and belongs to none"
        for node, pools in sorted(snapshot.conflicts.items())
    ]
    network = [
        warning
        for plan, deployment in zip(plans, deployments, strict=False)
        for replica in plan.replicas
        if (warning := cross_rack_warning(deployment, replica.replica, replica.racks))
    ]
    return conflicts + network


def _pods(replica: ReplicaPlan) -> str:
    """`8 pods x 4 GPUs, 1 per node: gb200-r00-t00 .. gb200-r00-t07`."""
    pods = len(replica.pods)
    gpus = replica.pods[0].gpus if replica.pods else 0
    head = f"{pods} pod{'s' if pods != 1 else ''} x {gpus} GPUs"
    if replica.mode == "DevicePlugin":
        return f"{head}, kube-scheduler decides"
    per_node = Counter(p.node for p in replica.pods)
    spread = sorted(set(per_node.values()))
    density = f"{spread[0]} per node" if len(spread) == 1 else f"{spread[0]}-{spread[-1]} per node"
    nodes = list(per_node)
    listed = nodes[0] if len(nodes) == 1 else f"{nodes[0]} .. {nodes[-1]}"
    if len(nodes) == 2:
        listed = f"{nodes[0]}, {nodes[1]}"
    return f"{head}, {density}: {listed}"


def as_table(
    snapshot: Snapshot,
    plans: list[DeploymentPlan],
    deployments: list[InferenceDeployment],
    ordinary: Price | None = None,
    *,
    wide: bool = False,
    headers: bool = True,
) -> str:
    fits = [fit.fit_of(snapshot, p, d, ordinary) for p, d in zip(plans, deployments, strict=True)]
    # The memory and cost columns only when some deployment has such figures.
    memory = any(f.needed_mib is not None for f in fits)
    cost = any(f.cost is not None for f in fits)
    head = (
        "DEPLOYMENT",
        "MODE",
        "PLACED",
        "GPUS",
        *(["MEMORY"] if memory else []),
        *(["COST/H"] if cost else []),
        "RACKS",
    )
    rows: list[tuple[str, ...]] = [(*head, "SCOPE", "PODS", "NODES") if wide else head]
    for plan, dep, sized in zip(plans, deployments, fits, strict=True):
        racks = sorted({r for rep in plan.replicas for r in rep.racks})
        gpus = sum(p.gpus for rep in plan.replicas for p in rep.pods)
        row: tuple[str, ...] = (
            plan.deployment,
            plan.mode,
            f"{placed_count(plan, dep)}/{dep.spec.replicas}",
            str(gpus),
            *([fit.memory_column(sized)] if memory else []),
            *([fit.cost_column(sized)] if cost else []),
            ",".join(racks) or "-",
        )
        if wide:
            pods = [p for rep in plan.replicas for p in rep.pods]
            nodes = {p.node for p in pods if p.node}
            row = (*row, dep.spec.placement.replica_scope, str(len(pods)), str(len(nodes)))
        rows.append(row)
    lines = kubectl.columns(rows, headers)
    if total := fit.total_line(fits):
        lines.append(total)
    for plan, dep, sized in zip(plans, deployments, fits, strict=True):
        lines.append("")
        lines.append(f"{plan.deployment}:")
        for rep in plan.replicas:
            where = ",".join(rep.racks) or "ordinary GPU nodes"
            domain = f", ComputeDomain {rep.compute_domain}" if rep.compute_domain else ""
            lines.append(
                f"  replica {rep.replica}{_role_text(rep, dep)}  {rep.mode:<12} {where}  "
                f"{_pods(rep)}{domain}" + fit.replica_note(sized, rep.replica)
            )
        if plan.reason:
            lines.append(f"  reason: {plan.reason}")
    lines.extend(f"warning: {w}" for w in warnings(snapshot, plans, deployments))
    return "\n".join(lines)
