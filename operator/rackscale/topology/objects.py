"""Reading the few facts placement needs out of plain Node and Pod dicts."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": Decimal("0.001"),
}  # fmt: skip


def quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity (`4`, `500m`, `2Gi`) as a number."""
    text = str(value).strip()
    if text.isdigit():  # the common case for GPUs and pods: skip the suffix search
        return Decimal(int(text))
    for suffix, factor in _SUFFIXES.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * Decimal(factor)
    try:
        return Decimal(text)
    except InvalidOperation as error:
        raise ValueError(f"{value!r} is not a resource quantity") from error


def count(value: Any) -> int:
    """A countable resource (GPUs): whole units, rounded down."""
    return int(quantity(value))


def _container_request(container: dict[str, Any], resource: str) -> int:
    resources = container.get("resources") or {}
    for part in ("requests", "limits"):  # extended resources: a limit alone sets the request
        amount = (resources.get(part) or {}).get(resource)
        if amount is not None:
            return count(amount)
    return 0


def gpu_request(pod: dict[str, Any], resource: str) -> int:
    """GPUs the pod holds on its node: its containers' sum, or its largest init container."""
    spec = pod.get("spec") or {}
    main = sum(_container_request(c, resource) for c in spec.get("containers") or [])
    init = max(
        (_container_request(c, resource) for c in spec.get("initContainers") or []), default=0
    )
    return max(main, init)


def terminated(pod: dict[str, Any]) -> bool:
    """A pod whose containers are done holds no resources any more."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pinned_node(pod: dict[str, Any]) -> str | None:
    """The node a pod is bound to, or pinned to by a required affinity to one node name."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms") or []
    if len(required) != 1:
        return None
    term = required[0]
    for part, key in (
        ("matchFields", "metadata.name"),
        ("matchExpressions", "kubernetes.io/hostname"),
    ):
        for expr in term.get(part) or []:
            values = expr.get("values") or []
            if expr.get("key") == key and expr.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    return None


def node_ready(node: dict[str, Any]) -> bool:
    """Ready unless its Ready condition says otherwise: hand-written cluster files often omit it."""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return True


def node_gpus(node: dict[str, Any], resource: str) -> int:
    """GPUs the node offers to pods: allocatable, or capacity where allocatable is not given."""
    status = node.get("status") or {}
    for part in ("allocatable", "capacity"):
        amounts = status.get(part)
        if amounts is not None and resource in amounts:
            return count(amounts[resource])
    return 0
