"""The operator's view of the cluster: kopf indices of nodes, GPU pods, RackPools and
InferenceDeployments, plus the pods it has just created and not yet seen come back.

The placement ledger is a snapshot rebuilt from this view: it counts every non-terminated GPU
pod, pinned-but-unbound ones included, so nothing can be booked twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from rackscale.api import RackPool, format_errors
from rackscale.render import COMPUTE_DOMAIN_VERSION, DEPLOYMENT_LABEL, REPLICA_LABEL
from rackscale.topology.objects import node_ready

log = logging.getLogger("rackscale.cluster")

Index = Mapping[Any, Iterable[Any]]

# How long a created pod counts from memory before the watch must have shown it.
PENDING_GRACE_SECONDS = 60.0


def slim_node(body: Mapping[str, Any]) -> dict[str, Any]:
    """What placement needs of a Node."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
        "spec": {"unschedulable": spec.get("unschedulable"), "taints": spec.get("taints") or []},
        "status": {
            # Hand-written cluster files (`rackscale plan`) may give capacity alone.
            "allocatable": {**(status.get("capacity") or {}), **(status.get("allocatable") or {})},
            "conditions": [
                {"type": c.get("type"), "status": c.get("status")}
                for c in status.get("conditions") or []
                if c.get("type") == "Ready"
            ],
        },
    }


def _resources(containers: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"resources": dict(c.get("resources") or {})} for c in containers]


def is_gpu_pod(body: Mapping[str, Any]) -> bool:
    """A pod the ledger must count: rackscale's own, or one requesting an extended resource."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    if DEPLOYMENT_LABEL in labels:
        return True
    spec = body.get("spec") or {}
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        resources = container.get("resources") or {}
        for part in ("requests", "limits"):
            if any("/" in name for name in (resources.get(part) or {})):
                return True
    return False


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What placement, status and lifecycle need of a Pod."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    return {
        "metadata": _slim_meta(body),
        "spec": {
            "nodeName": spec.get("nodeName"),
            "affinity": spec.get("affinity"),
            "containers": _resources(spec.get("containers") or []),
            "initContainers": _resources(spec.get("initContainers") or []),
        },
        "status": {
            "phase": status.get("phase"),
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message")}
                for c in status.get("conditions") or []
            ],
        },
    }


def _slim_meta(body: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata the operator reads of the objects it owns: identity, labels, owners, age."""
    meta = body.get("metadata") or {}
    return {k: meta[k] for k in _META if meta.get(k) is not None}


_META = (
    "name",
    "namespace",
    "uid",
    "labels",
    "annotations",
    "creationTimestamp",
    "deletionTimestamp",
    "ownerReferences",
)


def slim_compute_domain(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator needs of a ComputeDomain: whose it is, and whether it is Ready."""
    return {
        "metadata": _slim_meta(body),
        "status": {"status": ((body.get("status") or {}).get("status"))},
    }


def serves(crd: Mapping[str, Any], version: str) -> bool:
    """Whether a CustomResourceDefinition is established and serves `version`."""
    spec = crd.get("spec") or {}
    conditions = (crd.get("status") or {}).get("conditions") or []
    established = any(
        c.get("type") == "Established" and c.get("status") == "True" for c in conditions
    )
    versions = [v for v in spec.get("versions") or [] if v.get("name") == version]
    return established and any(v.get("served") for v in versions)


def _values(index: Index | None) -> Iterator[Any]:
    if index is None:
        return
    for store in list(index.values()):
        yield from store


@dataclass(slots=True)
class _Pending:
    pod: dict[str, Any]
    since: float
    uid: str | None = None


@dataclass(slots=True)
class ClusterView:
    """Live kopf indices, bound on the first handler call after kopf has filled them."""

    nodes_index: Index | None = None
    pods_index: Index | None = None
    pools_index: Index | None = None
    deployments_index: Index | None = None
    domains_index: Index | None = None  # ComputeDomains, when the API server serves them
    crds_index: Index | None = None  # the ComputeDomain CRD, when it exists
    pending: dict[tuple[str, str], _Pending] = field(default_factory=dict)
    version: int = 0
    _pool_cache: dict[tuple[str, str], RackPool | None] = field(default_factory=dict)
    _grouped: dict[tuple[str, str], list[dict[str, Any]]] | None = None
    _readiness: dict[str, bool] | None = None

    @property
    def bound(self) -> bool:
        return None not in (
            self.nodes_index,
            self.pods_index,
            self.pools_index,
            self.deployments_index,
        )

    def bind(
        self,
        nodes: Index,
        pods: Index,
        pools: Index,
        deployments: Index,
        *,
        domains: Index | None = None,
        crds: Index | None = None,
    ) -> None:
        self.nodes_index, self.pods_index = nodes, pods
        self.pools_index, self.deployments_index = pools, deployments
        self.domains_index, self.crds_index = domains, crds
        self.version += 1

    # ---- reading -----------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        return list(_values(self.nodes_index))

    def node_readiness(self) -> dict[str, bool]:
        if self._readiness is not None:
            return self._readiness
        return {n["metadata"]["name"]: node_ready(n) for n in self.nodes()}

    def compute_domains_served(self) -> bool:
        """Whether the API server serves NVIDIA's ComputeDomains (its DRA driver is installed)."""
        return any(serves(crd, COMPUTE_DOMAIN_VERSION) for crd in _values(self.crds_index))

    def domains_of(self, namespace: str, name: str, uid: str) -> dict[int, dict[str, Any]]:
        """The ComputeDomains of one InferenceDeployment, by replica index."""
        out = {}
        for domain in _values(self.domains_index):
            meta = domain["metadata"]
            labels = meta.get("labels") or {}
            if meta.get("namespace") != namespace or labels.get(DEPLOYMENT_LABEL) != name:
                continue
            owners = meta.get("ownerReferences") or []
            index = str(labels.get(REPLICA_LABEL, ""))
            if index.isdigit() and not (
                uid and owners and all(o.get("uid") != uid for o in owners)
            ):
                out[int(index)] = domain
        return out

    def pool_bodies(self) -> list[dict[str, Any]]:
        return list(_values(self.pools_index))

    def pools(self) -> list[RackPool]:
        """Valid RackPools; one the API server should have refused is logged and left out."""
        out = []
        for body in self.pool_bodies():
            meta = body.get("metadata") or {}
            key = (str(meta.get("name")), str(meta.get("resourceVersion")))
            if key not in self._pool_cache:
                try:
                    self._pool_cache[key] = RackPool.model_validate(body)
                except ValidationError as error:
                    log.warning("RackPool %s ignored: %s", key[0], "; ".join(format_errors(error)))
                    self._pool_cache[key] = None
            pool = self._pool_cache[key]
            if pool is not None:
                out.append(pool)
        if len(self._pool_cache) > 4 * len(out) + 16:
            live = {(p.name, str(p.metadata.get("resourceVersion"))) for p in out}
            self._pool_cache = {k: v for k, v in self._pool_cache.items() if k in live}
        return out

    def deployments(self) -> list[dict[str, Any]]:
        return sorted(
            _values(self.deployments_index),
            key=lambda b: (b["metadata"].get("namespace", ""), b["metadata"]["name"]),
        )

    def pods(self) -> list[dict[str, Any]]:
        """Every GPU pod the watch has shown, plus the ones just created and not yet shown."""
        seen = list(_values(self.pods_index))
        self._forget_arrived(seen)
        return seen + [pending.pod for pending in self.pending.values()]

    def _forget_arrived(self, shown: Iterable[dict[str, Any]]) -> None:
        """Drop the pods the watch has shown, and those past the grace, from `pending`."""
        if not self.pending:
            return
        uids = {
            (p["metadata"].get("namespace"), p["metadata"]["name"]): p["metadata"].get("uid")
            for p in shown
        }
        now = time.monotonic()
        for key, pending in list(self.pending.items()):
            arrived = pending.uid is not None and uids.get(key) == pending.uid
            if arrived or now - pending.since > PENDING_GRACE_SECONDS:
                del self.pending[key]

    def begin_pass(self) -> None:
        """Group pods by deployment and read node health once for a whole reconcile pass."""
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        pods = list(_values(self.pods_index))
        self._forget_arrived(pods)  # else every deployment's lookup walks them all
        for pod in pods:
            meta = pod["metadata"]
            label = (meta.get("labels") or {}).get(DEPLOYMENT_LABEL)
            if label:
                grouped.setdefault((str(meta.get("namespace")), str(label)), []).append(pod)
        self._grouped = grouped
        self._readiness = {n["metadata"]["name"]: node_ready(n) for n in self.nodes()}

    def end_pass(self) -> None:
        self._grouped = None
        self._readiness = None

    def pods_of(
        self, namespace: str, name: str, uid: str, *, fresh: bool = False
    ) -> list[dict[str, Any]]:
        """Pods of one InferenceDeployment: its label, its namespace, owned by this very object.

        Within a pass, from the grouping made at its start unless `fresh` (after writes)."""
        if self._grouped is not None and not fresh:
            shown = self._grouped.get((namespace, name), [])
        else:
            shown = [
                p
                for p in _values(self.pods_index)
                if p["metadata"].get("namespace") == namespace
                and (p["metadata"].get("labels") or {}).get(DEPLOYMENT_LABEL) == name
            ]
        uids = {p["metadata"]["name"]: p["metadata"].get("uid") for p in shown}
        now = time.monotonic()
        candidates = list(shown)
        for (ns, pod_name), pending in self.pending.items():
            if ns != namespace or now - pending.since > PENDING_GRACE_SECONDS:
                continue
            labels = pending.pod["metadata"].get("labels") or {}
            if labels.get(DEPLOYMENT_LABEL) != name:
                continue
            if pending.uid is not None and uids.get(pod_name) == pending.uid:
                continue  # the watch has shown it
            candidates.append(pending.pod)
        out = []
        for pod in candidates:
            owners = pod["metadata"].get("ownerReferences") or []
            if uid and owners and not any(o.get("uid") == uid for o in owners):
                continue  # left behind by an earlier object of the same name: the GC takes it
            out.append(pod)
        return out

    # ---- the pods the operator is writing ---------------------------------------------------

    def expect(self, pod: dict[str, Any]) -> None:
        """Count a pod about to be created, before the watch shows it."""
        meta = pod["metadata"]
        self.pending[(meta["namespace"], meta["name"])] = _Pending(pod, time.monotonic())

    def created(self, pod: dict[str, Any], uid: str) -> None:
        meta = pod["metadata"]
        entry = self.pending.get((meta["namespace"], meta["name"]))
        if entry is not None:
            entry.uid = uid

    def forget(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.pending.pop((meta["namespace"], meta["name"]), None)
