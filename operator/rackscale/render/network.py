"""What a replica spanning racks needs of the network: pods that request an RDMA device.

Between racks GPUs reach each other only through the NICs. NCCL uses them over RDMA (InfiniBand,
RoCE, EFA) when the pod has an RDMA device; without one it falls back to TCP sockets, which start
and run, only an order of magnitude slower. A pod gets an RDMA device by requesting a resource
that a device plugin hands out (the RDMA shared device plugin's `rdma/...`, NVIDIA Network
Operator's `nvidia.com/rdma...` and `nvidia.com/hostdev`, AWS's `vpc.amazonaws.com/efa`) or by a
resource claim of its own (a NIC through DRA). Pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rackscale.api import InferenceDeployment

# Resources that hand a pod an RDMA device, matched on the whole name.
RDMA_RESOURCES = frozenset({"nvidia.com/hostdev", "vpc.amazonaws.com/efa"})


def is_rdma_resource(name: str) -> bool:
    """Whether a container resource gives the pod an RDMA device."""
    return name in RDMA_RESOURCES or "rdma" in name.lower()


def _resource_names(container: Mapping[str, Any]) -> Iterator[str]:
    resources = container.get("resources") or {}
    for kind in ("requests", "limits"):
        yield from (resources.get(kind) or {}).keys()


def requests_rdma(template: Mapping[str, Any]) -> bool:
    """Whether pods of this template get an RDMA device: a container requests an RDMA resource,
    or the pod brings resource claims of its own."""
    spec = template.get("spec") or {}
    if spec.get("resourceClaims"):
        return True
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    return any(is_rdma_resource(n) for c in containers for n in _resource_names(c))


def _templates(deployment: InferenceDeployment, role: str | None) -> list[Mapping[str, Any]]:
    """The pod templates of a replica's pods: its leader's and, when given, its workers'."""
    spec = deployment.role_view(role).spec if role else deployment.spec
    return [t for t in (spec.template, spec.worker_template) if t]


def cross_rack_warning(
    deployment: InferenceDeployment, replica: int, racks: Sequence[str]
) -> str | None:
    """The warning for a replica placed over `racks` when some of its pods would get no RDMA
    device; None when it stays in one rack or every pod template requests one."""
    if len(racks) < 2:
        return None
    role = deployment.spec.role_replica(replica).role if deployment.spec.roles else None
    if all(requests_rdma(t) for t in _templates(deployment, role)):
        return None
    return (
        f"{deployment.key}: replica {replica} spans racks {', '.join(racks)} and its pod "
        "template requests no RDMA resource (e.g. rdma/..., nvidia.com/hostdev, "
        "vpc.amazonaws.com/efa, or a resource claim for a NIC): NCCL between the racks would "
        "fall back to TCP sockets"
    )
