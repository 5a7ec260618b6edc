"""The few facts placement needs of Nodes and Pods: read from API bodies into typed slim objects."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
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


# ---- typed slim objects: what the operator keeps of each Node and Pod --------------------------

Body = Mapping[str, Any]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What placement needs of a Node: identity, labels, schedulability and GPUs offered."""

    name: str
    labels: Mapping[str, str]
    unschedulable: bool = False
    taints: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect)
    allocatable: Mapping[str, str] = field(default_factory=dict)  # extended, capacity overlaid
    ready: bool = True

    @classmethod
    def of(cls, node: NodeInfo | Body) -> NodeInfo:
        """The node as given, or read from an API body (or a hand-written cluster file)."""
        return node if isinstance(node, NodeInfo) else cls.from_body(node)

    @classmethod
    def from_body(cls, body: Body) -> NodeInfo:
        meta, spec, status = (_mapping(body.get(k)) for k in ("metadata", "spec", "status"))
        return cls(
            name=str(meta.get("name")),
            labels={str(k): str(v) for k, v in _mapping(meta.get("labels")).items()},
            unschedulable=bool(spec.get("unschedulable")),
            taints=tuple(
                (str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect") or ""))
                for t in spec.get("taints") or []
            ),
            # Hand-written cluster files (`rackscale plan`) may give capacity alone. Only
            # extended resources (`vendor/name`): GPUs are what placement counts.
            allocatable={
                str(k): str(v)
                for k, v in {
                    **_mapping(status.get("capacity")),
                    **_mapping(status.get("allocatable")),
                }.items()
                if "/" in str(k)
            },
            ready=node_ready(dict(body)),
        )

    def gpus(self, resource: str) -> int:
        value = self.allocatable.get(resource)
        return count(value) if value is not None else 0


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What placement, lifecycle and status need of a Pod."""

    namespace: str
    name: str
    uid: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    created: str | None = None
    deleting: bool = False  # deletionTimestamp set
    owners: tuple[str, ...] = ()  # owner uids
    node_name: str | None = None  # bound by kube-scheduler
    pinned: str | None = None  # bound, or pinned by a required affinity to one node
    requests: Mapping[str, int] = field(default_factory=dict)  # extended resources held
    phase: str | None = None
    ready: bool = False
    unschedulable_message: str | None = None  # PodScheduled False: its message or reason

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @classmethod
    def of(cls, pod: PodInfo | Body) -> PodInfo:
        return pod if isinstance(pod, PodInfo) else cls.from_body(pod)

    @classmethod
    def from_body(cls, body: Body) -> PodInfo:
        meta, spec, status = (_mapping(body.get(k)) for k in ("metadata", "spec", "status"))
        plain = dict(body)
        return cls(
            namespace=str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or ""),
            uid=str(meta["uid"]) if meta.get("uid") else None,
            labels={str(k): str(v) for k, v in _mapping(meta.get("labels")).items()},
            annotations={str(k): str(v) for k, v in _mapping(meta.get("annotations")).items()},
            created=str(meta["creationTimestamp"]) if meta.get("creationTimestamp") else None,
            deleting=bool(meta.get("deletionTimestamp")),
            owners=tuple(str(o.get("uid")) for o in meta.get("ownerReferences") or []),
            node_name=str(spec["nodeName"]) if spec.get("nodeName") else None,
            pinned=pinned_node(plain),
            requests={r: gpu_request(plain, r) for r in _extended(spec)},
            phase=str(status["phase"]) if status.get("phase") else None,
            ready=_condition(status, "Ready", "True") is not None,
            unschedulable_message=_unschedulable(status),
        )

    def gpus(self, resource: str) -> int:
        return self.requests.get(resource, 0)

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def _extended(spec: Mapping[str, Any]) -> set[str]:
    """The extended resources (`vendor/name`) a pod's containers ask for."""
    names: set[str] = set()
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        resources = _mapping(container.get("resources"))
        for part in ("requests", "limits"):
            names.update(str(n) for n in _mapping(resources.get(part)) if "/" in str(n))
    return names


def _condition(status: Mapping[str, Any], kind: str, value: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == value:
            return _mapping(cond)
    return None


def _unschedulable(status: Mapping[str, Any]) -> str | None:
    cond = _condition(status, "PodScheduled", "False")
    if cond is None:
        return None
    return str(cond.get("message") or cond.get("reason") or "unschedulable")


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """What the operator needs of a ComputeDomain: whose it is, and whether it is Ready."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    owners: tuple[str, ...] = ()
    created: str | None = None
    deleting: bool = False
    ready: bool = False

    @classmethod
    def of(cls, domain: DomainInfo | Body) -> DomainInfo:
        return domain if isinstance(domain, DomainInfo) else cls.from_body(domain)

    @classmethod
    def from_body(cls, body: Body) -> DomainInfo:
        meta = _mapping(body.get("metadata"))
        return cls(
            **_owned(meta),
            created=str(meta["creationTimestamp"]) if meta.get("creationTimestamp") else None,
            ready=_mapping(body.get("status")).get("status") == "Ready",
        )


def _owned(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Whose an object is, from its metadata: what DomainInfo and InferencePoolInfo share."""
    return {
        "namespace": str(meta.get("namespace") or "default"),
        "name": str(meta.get("name") or ""),
        "labels": {str(k): str(v) for k, v in _mapping(meta.get("labels")).items()},
        "owners": tuple(str(o.get("uid")) for o in meta.get("ownerReferences") or []),
        "deleting": bool(meta.get("deletionTimestamp")),
    }


@dataclass(frozen=True, slots=True)
class InferencePoolInfo:
    """What the operator needs of an InferencePool (inference.networking.k8s.io): whose it is
    (labels, owners) and its spec, to tell whether it is what rackscale renders."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    owners: tuple[str, ...] = ()
    spec: Mapping[str, Any] = field(default_factory=dict)
    deleting: bool = False

    @classmethod
    def from_body(cls, body: Body) -> InferencePoolInfo:
        return cls(
            **_owned(_mapping(body.get("metadata"))),
            spec=copy.deepcopy(dict(_mapping(body.get("spec")))),
        )
