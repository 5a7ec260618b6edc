"""The cluster as placement sees it: nodes, racks, blocks, free GPUs, health and tenancy."""

from rackscale.topology.objects import NodeInfo, PodInfo, gpu_request, pinned_node, terminated
from rackscale.topology.snapshot import (
    Node,
    Pool,
    Rack,
    Snapshot,
    Taint,
    Usage,
    build_racks,
    build_snapshot,
)

__all__ = [
    "Node",
    "NodeInfo",
    "PodInfo",
    "Pool",
    "Rack",
    "Snapshot",
    "Taint",
    "Usage",
    "build_racks",
    "build_snapshot",
    "gpu_request",
    "pinned_node",
    "terminated",
]
