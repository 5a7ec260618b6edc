"""`rackscale racks`: the pools as they are now, one line per rack, read from the live cluster."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from rackscale.api import GROUP, VERSION, RackPool, format_errors
from rackscale.api.labels import DEPLOYMENT_LABEL, GROUP_LABEL, ROLE_LABEL
from rackscale.api.rackpool import RackPoolStatus
from rackscale.cli import kubectl
from rackscale.topology import Snapshot, build_snapshot, pinned_node

# pool -> rack -> deployment (`namespace/name`) -> `group 0: decode, prefill; group 1: ...`
RoleNotes = Mapping[str, Mapping[str, Mapping[str, str]]]

BAR = 18


def register(commands: Any) -> None:
    cmd = commands.add_parser(
        "racks",
        help="show every rack of every RackPool: health, GPUs in use, deployments",
        description="Read nodes, pods and RackPools from the current cluster ($KUBECONFIG) and "
        "print each rack's health, a bar of used/free GPUs and the deployments on it.",
    )
    kubectl.add_output(cmd)
    kubectl.add_cluster(cmd)
    cmd.set_defaults(handler=run)


def role_notes(snapshot: Snapshot, pods: Iterable[dict[str, Any]]) -> RoleNotes:
    """Which serving groups and roles (spec.roles) each rack holds, from the pods' labels."""
    found: dict[str, dict[str, dict[str, dict[int, set[str]]]]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        node = pinned_node(pod)
        rack = snapshot.rack_of(node) if node else None
        if rack is None or ROLE_LABEL not in labels or DEPLOYMENT_LABEL not in labels:
            continue
        key = f"{meta.get('namespace') or 'default'}/{labels[DEPLOYMENT_LABEL]}"
        pool = next(p for p in snapshot.pools.values() if rack.name in p.racks)
        groups = found.setdefault(pool.name, {}).setdefault(rack.name, {}).setdefault(key, {})
        groups.setdefault(int(labels.get(GROUP_LABEL, "0")), set()).add(labels[ROLE_LABEL])
    return {
        pool: {
            rack: {
                key: "; ".join(f"group {g}: {', '.join(sorted(r))}" for g, r in sorted(gs.items()))
                for key, gs in deps.items()
            }
            for rack, deps in racks.items()
        }
        for pool, racks in found.items()
    }


def fetch(args: argparse.Namespace) -> tuple[Snapshot, list[str], RoleNotes]:
    """The snapshot of the live cluster, warnings about RackPools that cannot be read, and the
    serving groups on each rack."""
    with kubectl.Cluster(args) as cluster:
        nodes = cluster.items("list nodes", cluster.core, "list_node")
        pods = cluster.items(
            "list pods --all-namespaces",
            cluster.core,
            "list_pod_for_all_namespaces",
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
        )
        raw_pools = cluster.items(
            "list rackpools.rackscale.dev",
            cluster.custom,
            "list_cluster_custom_object",
            GROUP,
            VERSION,
            "rackpools",
        )
    pools, warnings = [], []
    for raw in raw_pools:
        try:
            pools.append(RackPool.model_validate(raw))
        except ValidationError as error:
            name = (raw.get("metadata") or {}).get("name")
            warnings.append(f"RackPool {name} ignored: {'; '.join(format_errors(error))}")
    snapshot = build_snapshot(nodes, pods, pools)
    return snapshot, warnings, role_notes(snapshot, pods)


def statuses(snapshot: Snapshot) -> dict[str, RackPoolStatus]:
    from rackscale.planner.status import pool_status

    return {
        name: pool_status(pool, snapshot.conflicts, [], "")
        for name, pool in sorted(snapshot.pools.items())
    }


def bar(used: int, total: int) -> str:
    filled = round(BAR * used / total) if total else 0
    if used and not filled:
        filled = 1
    return "[" + "#" * filled + "-" * (BAR - filled) + "]"


def idle_cost(pool: RackPoolStatus) -> str:
    """`, idle 96.00 USD/h (fragmented 32.00)` for a pool with spec.pricing."""
    if pool.cost is None:
        return ""
    return (
        f", idle {pool.cost.idle_per_hour} {pool.cost.currency}/h "
        f"({pool.gpus.free} GPUs; fragmented {pool.cost.fragmented_per_hour}, "
        f"{pool.fragmented_gpus} GPUs)"
    )


def as_table(
    pools: dict[str, RackPoolStatus],
    *,
    wide: bool = False,
    headers: bool = True,
    roles: RoleNotes | None = None,
) -> str:
    """One summary line per pool (a header: `--no-headers` drops it), one line per rack; wide
    adds the rack's nodes and free GPUs. A deployment with spec.roles is followed by the
    serving groups and roles the rack holds (`llm/ds (group 0: decode, prefill)`)."""
    if not pools:
        return "no RackPools: create one (see examples/) to group nodes into racks"
    lines = []
    for name, pool in pools.items():
        if headers:
            lines.append(
                f"{name}: {pool.racks} racks, {pool.healthy_racks} healthy, "
                f"{pool.free_racks} free, {pool.gpus.allocated}/{pool.gpus.allocatable} GPUs in use"
                + idle_cost(pool)
            )
        width = max((len(r.name) for r in pool.rack_statuses), default=4)
        for rack in pool.rack_statuses:
            used, total = rack.gpus.allocated, rack.gpus.allocatable
            notes = ((roles or {}).get(name) or {}).get(rack.name) or {}
            who = ", ".join(f"{d} ({notes[d]})" if d in notes else d for d in rack.deployments)
            who = who or "-"
            if rack.held_by:
                who += f" (held by {rack.held_by})"
            extra = f"{rack.nodes:>3} nodes  {rack.gpus.free:>4} free  " if wide else ""
            lines.append(
                f"  {rack.name:<{width}}  {rack.health:<11}  {bar(used, total)}  "
                f"{used:>4}/{total:<4}  {extra}{who}"
            )
        for cond in pool.conditions:
            if cond.type == "NodesOverlap" and cond.status == "True":
                lines.append(f"  warning: {cond.message}")
    return "\n".join(lines)


def as_json(pools: dict[str, RackPoolStatus]) -> dict[str, Any]:
    return {
        "pools": [
            {
                "name": name,
                **pool.model_dump(
                    by_alias=True, exclude_none=True, mode="json", exclude={"conditions"}
                ),
            }
            for name, pool in pools.items()
        ]
    }


def run(args: argparse.Namespace) -> int:
    try:
        snapshot, warnings, roles = fetch(args)
    except kubectl.ClusterError as error:  # no cluster, no credentials, no CRDs: one line
        return kubectl.fail(str(error), kubectl.CLUSTER_ERROR)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    pools = statuses(snapshot)
    if args.output in ("json", "yaml"):
        print(kubectl.dump(as_json(pools), args.output))
    else:
        wide = args.output == "wide"
        print(as_table(pools, wide=wide, headers=not args.no_headers, roles=roles))
    return kubectl.OK
