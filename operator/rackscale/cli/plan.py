"""`rackscale plan`: the offline what-if, with the same engine the operator runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rackscale.api import InferenceDeployment, RackPool
from rackscale.api.pricing import Price, parse_price
from rackscale.cli import fit
from rackscale.cli.manifests import InputError, objects, parse
from rackscale.placement import DeploymentPlan, ReplicaPlan, place, place_together
from rackscale.topology import Snapshot, build_snapshot


def register(commands: Any) -> None:
    cmd = commands.add_parser(
        "plan",
        help="place deployments on a cluster described in files, without touching a cluster",
        description="Place InferenceDeployments, in the order given, on the Nodes, RackPools and "
        "Pods of CLUSTER.yaml, and print where every shard would go or why it cannot.",
    )
    cmd.add_argument(
        "--cluster",
        required=True,
        type=Path,
        action="append",
        metavar="CLUSTER.yaml",
        help="Nodes, RackPools and (optionally) running Pods; may be repeated",
    )
    cmd.add_argument("-o", "--output", choices=("json", "table"), default="table")
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


def load(
    cluster_files: list[Path], deployment_files: list[Path], *, compute_domains: bool = True
) -> tuple[Snapshot, list[InferenceDeployment]]:
    """The snapshot and deployments of the files; ComputeDomains are taken as served, as on a
    GB200 cluster with NVIDIA's DRA driver, unless `compute_domains` is False."""
    nodes: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    pools: list[RackPool] = []
    for cluster in cluster_files:
        for obj in objects(cluster, ("Node", "Pod", "RackPool")):
            if obj["kind"] == "Node":
                nodes.append(obj)
            elif obj["kind"] == "Pod":
                pods.append(obj)
            else:
                pool = parse(RackPool, obj, cluster)
                if any(p.name == pool.name for p in pools):
                    raise InputError(f"{cluster}: RackPool {pool.name} is defined twice")
                pools.append(pool)
    deployments = [
        parse(InferenceDeployment, obj, path)
        for path in deployment_files
        for obj in objects(path, ("InferenceDeployment",))
    ]
    return build_snapshot(nodes, pods, pools, compute_domains=compute_domains), deployments


def run(args: argparse.Namespace) -> int:
    try:
        snapshot, deployments = load(
            args.cluster, args.deployments, compute_domains=not args.no_compute_domains
        )
    except InputError as error:
        print(f"rackscale plan: {error}", file=sys.stderr)
        return 2
    plans = (place_together if args.together else place)(snapshot, deployments)
    ordinary = args.device_plugin_gpu_hour
    if args.output == "json":
        print(json.dumps(as_json(snapshot, plans, deployments, ordinary), indent=2))
    else:
        print(as_table(snapshot, plans, deployments, ordinary))
    return 0


def replica_json(replica: ReplicaPlan, snapshot: Snapshot | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "replica": replica.replica,
        "mode": replica.mode,
        "racks": list(replica.racks),
        "computeDomain": replica.compute_domain,
        "pods": [
            {"shard": p.shard, "node": p.node, "gpus": p.gpus, "firstRank": p.first_rank}
            for p in replica.pods
        ],
    }
    if snapshot is not None and replica.mode == "Rack":
        out["gpuMemoryMiB"] = fit.replica_memory(snapshot, replica)
    return out


def as_json(
    snapshot: Snapshot,
    plans: list[DeploymentPlan],
    deployments: list[InferenceDeployment] | None = None,
    ordinary: Price | None = None,
) -> dict[str, Any]:
    fits = [
        fit.fit_of(snapshot, p, d, ordinary) for p, d in zip(plans, deployments or [], strict=False)
    ]
    out: dict[str, Any] = {
        "placements": [
            {
                "deployment": plan.deployment,
                "mode": plan.mode,
                "replicas": [replica_json(r, snapshot) for r in plan.replicas],
                "reason": plan.reason,
                **(fit.fit_json(fits[i]) if i < len(fits) else {}),
            }
            for i, plan in enumerate(plans)
        ]
    }
    if totals := fit.totals_json(fits):
        out["totalCostPerHour"] = totals
    if snapshot.conflicts:
        out["warnings"] = conflict_warnings(snapshot)
    return out


def conflict_warnings(snapshot: Snapshot) -> list[str]:
    return [
        f"node {node} is selected by RackPools {', '.join(pools)} and belongs to none"
        for node, pools in sorted(snapshot.conflicts.items())
    ]


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
) -> str:
    fits = [fit.fit_of(snapshot, p, d, ordinary) for p, d in zip(plans, deployments, strict=True)]
    # The memory and cost columns only when some deployment has such figures.
    memory = any(f.needed_mib is not None for f in fits)
    cost = any(f.cost is not None for f in fits)
    head = ["DEPLOYMENT", "MODE", "PLACED", "GPUS"]
    rows = [(*head, *(["MEMORY"] if memory else []), *(["COST/H"] if cost else []), "RACKS")]
    for plan, dep, sized in zip(plans, deployments, fits, strict=True):
        racks = sorted({r for rep in plan.replicas for r in rep.racks})
        gpus = sum(p.gpus for rep in plan.replicas for p in rep.pods)
        rows.append(
            (
                plan.deployment,
                plan.mode,
                f"{len(plan.replicas)}/{dep.spec.replicas}",
                str(gpus),
                *([fit.memory_column(sized)] if memory else []),
                *([fit.cost_column(sized)] if cost else []),
                ",".join(racks) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if total := fit.total_line(fits):
        lines.append(total)
    for plan, sized in zip(plans, fits, strict=True):
        lines.append("")
        lines.append(f"{plan.deployment}:")
        for rep in plan.replicas:
            where = ",".join(rep.racks) or "ordinary GPU nodes"
            domain = f", ComputeDomain {rep.compute_domain}" if rep.compute_domain else ""
            lines.append(
                f"  replica {rep.replica}  {rep.mode:<12} {where}  {_pods(rep)}{domain}"
                + fit.replica_note(sized, rep.replica)
            )
        if plan.reason:
            lines.append(f"  reason: {plan.reason}")
    lines.extend(f"warning: {w}" for w in conflict_warnings(snapshot))
    return "\n".join(lines)
