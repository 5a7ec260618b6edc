"""The operator's one state: a typed cache of nodes, GPU pods, RackPools, InferenceDeployments,
ComputeDomains and InferencePools, kept from watch events, with the placement snapshot kept in
step with it.

Every watch event goes through one `put_*` call. The pods a pass books, and those it deletes,
which the watch has not shown yet, are assumed here, and only here (kube-scheduler's and
Kueue's assume/forget): what a pass books is assumed in one step before any write
(`assume`), forgotten if its create fails (`forget`), confirmed when the watch shows the pod
the API server named (`created`, then `put_pod`), and dropped `PENDING_GRACE_SECONDS` after its
write returned (or after it was assumed, when the write never returned) if the watch never
shows it (`expire`). An assumed pod counts in the snapshot like any other. The snapshot is
updated a pod at a time; a change of nodes, pools or the ComputeDomain CRD rebuilds it once, on
the next pass that reads it.

An InferencePool the operator applied or deleted is likewise assumed so (`wrote_inference_pool`)
until the watch shows it, so a pass does not write it twice.

Each put marks what it touches dirty, so a pass reconciles only the deployments whose object,
pods, ComputeDomains or InferencePool changed (all of them when nodes or pools change).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from rackscale.api import RackPool, format_errors
from rackscale.api.labels import DEPLOYMENT_LABEL, GROUP_LABEL, REPLICA_LABEL
from rackscale.planner.step import owns
from rackscale.render import COMPUTE_DOMAIN_VERSION, INFERENCE_POOL_VERSION
from rackscale.topology import NodeInfo, PodInfo, Snapshot, Usage, build_racks
from rackscale.topology.objects import DomainInfo, InferencePoolInfo

log = logging.getLogger("rackscale.cluster")

Key = tuple[str, str]  # (namespace, name)
Body = Mapping[str, Any]

# How long a created pod counts from memory before the watch must have shown it.
PENDING_GRACE_SECONDS = 60.0


def is_gpu_pod(body: Body) -> bool:
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


def serves(crd: Body, version: str) -> bool:
    """Whether a CustomResourceDefinition is established and serves `version`."""
    spec = crd.get("spec") or {}
    conditions = (crd.get("status") or {}).get("conditions") or []
    established = any(
        c.get("type") == "Established" and c.get("status") == "True" for c in conditions
    )
    versions = [v for v in spec.get("versions") or [] if v.get("name") == version]
    return established and any(v.get("served") for v in versions)


def serves_compute_domains(crd: Body) -> bool:
    return serves(crd, COMPUTE_DOMAIN_VERSION)


def serves_inference_pools(crd: Body) -> bool:
    return serves(crd, INFERENCE_POOL_VERSION)


def _without_status(body: Body) -> dict[str, Any]:
    """What of a deployment asks for work: everything but its status and resourceVersion."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "resourceVersion"}
    return {**{k: v for k, v in body.items() if k not in ("status", "metadata")}, "metadata": meta}


def _deployment_of(pod: PodInfo | DomainInfo) -> Key | None:
    name = pod.labels.get(DEPLOYMENT_LABEL)
    return (pod.namespace, name) if name else None


@dataclass(slots=True)
class _Assumed:
    """A write the watch has not shown yet: a pod created (`pod`), or deleted (`uid`)."""

    since: float
    pod: PodInfo | None = None  # created: counted as this until the watch shows it
    deleted: str | None = None  # the uid deleted: counted as being deleted until shown


@dataclass(slots=True)
class _Pool:
    body: Body
    model: RackPool | None


@dataclass(slots=True)
class ClusterCache:
    """The cluster as the watch shows it, plus the operator's own writes not yet shown."""

    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    readiness: dict[str, bool] = field(default_factory=dict)  # node -> Ready
    deployments: dict[Key, Body] = field(default_factory=dict)
    domains_served: bool = False  # the API server serves NVIDIA's ComputeDomains
    inference_pools_served: bool = False  # ... and InferencePools (inference.networking.k8s.io/v1)
    loaded: bool = False  # the first full listing is in
    _pools: dict[str, _Pool] = field(default_factory=dict)
    _shown: dict[Key, PodInfo] = field(default_factory=dict)  # pods as the watch shows them
    _assumed: dict[Key, _Assumed] = field(default_factory=dict)
    _pods: dict[Key, PodInfo] = field(default_factory=dict)  # shown, with assumptions applied
    _by_deployment: dict[Key, set[Key]] = field(default_factory=dict)
    _domains: dict[Key, DomainInfo] = field(default_factory=dict)
    _domains_by_deployment: dict[Key, set[Key]] = field(default_factory=dict)
    _inference_pools: dict[Key, InferencePoolInfo] = field(default_factory=dict)
    _snapshot: Snapshot | None = None
    _usage: dict[Key, Usage] = field(default_factory=dict)
    _dirty: set[Key] = field(default_factory=set)
    _all_dirty: bool = True
    version: int = 0  # counts changes to the snapshot: pool statuses are rebuilt when it moves
    clock: Callable[[], float] = time.monotonic  # seconds; tests move it by hand

    # ---- the watch -----------------------------------------------------------------------------

    def load(
        self,
        *,
        nodes: Iterable[NodeInfo],
        pods: Iterable[PodInfo],
        pools: Iterable[Body],
        deployments: Iterable[Body],
        domains: Iterable[DomainInfo] = (),
        domains_served: bool = False,
        inference_pools: Iterable[InferencePoolInfo] = (),
        inference_pools_served: bool = False,
    ) -> None:
        """The first full listing (kopf's indices once filled); later changes come by put."""
        for node in nodes:
            self.put_node(node.name, node)
        for pod in pods:
            self.put_pod(pod.key, pod)
        for body in pools:
            self.put_pool(str(body["metadata"]["name"]), body)
        for body in deployments:
            meta = body["metadata"]
            self.put_deployment((str(meta.get("namespace")), str(meta["name"])), body)
        for domain in domains:
            self.put_domain((domain.namespace, domain.name), domain)
        for pool in inference_pools:
            self.put_inference_pool((pool.namespace, pool.name), pool)
        self.put_domains_served(domains_served)
        self.put_inference_pools_served(inference_pools_served)
        self.loaded = True
        self._stale()
        # The listing lives as long as the operator: the cyclic collector need not walk it on
        # every full collection (at 1,000 racks that walk was the slowest part of a pass).
        gc.freeze()

    def put_node(self, name: str, node: NodeInfo | None) -> None:
        if self.nodes.get(name) == node:
            return  # a heartbeat: nothing placement reads changed
        if node is None:
            self.nodes.pop(name, None)
            self.readiness.pop(name, None)
        else:
            self.nodes[name] = node
            self.readiness[name] = node.ready
        self._stale()

    def put_pod(self, key: Key, pod: PodInfo | None) -> None:
        if self._shown.get(key) == pod:
            return
        if pod is None:
            self._shown.pop(key, None)
        else:
            self._shown[key] = pod
        self._refresh(key)

    def put_pool(self, name: str, body: Body | None) -> None:
        if body is None:
            if self._pools.pop(name, None) is not None:
                self._stale()
            return
        current = self._pools.get(name)
        if current is not None and _spec_and_generation(current.body) == _spec_and_generation(body):
            current.body = body  # its status, written by this operator: nothing to redo
            return
        self._pools[name] = _Pool(body, _validated(body))
        self._stale()

    def put_deployment(self, key: Key, body: Body | None) -> None:
        current = self.deployments.get(key)
        if body is None:
            self.deployments.pop(key, None)
            self._dirty.add(key)
            return
        self.deployments[key] = body
        if current is None or _without_status(current) != _without_status(body):
            self._dirty.add(key)

    def put_domain(self, key: Key, domain: DomainInfo | None) -> None:
        old = self._domains.get(key)
        if old == domain:
            return
        for info in (old, domain):
            owner = _deployment_of(info) if info is not None else None
            if owner is not None:
                self._dirty.add(owner)
                group = self._domains_by_deployment.setdefault(owner, set())
                (group.add if info is domain else group.discard)(key)
        if domain is None:
            self._domains.pop(key, None)
        else:
            self._domains[key] = domain

    def put_inference_pool(self, key: Key, pool: InferencePoolInfo | None) -> None:
        """An InferencePool labelled as a deployment's, as the watch shows it: the deployment of
        its name (the one whose pool it would be) is reconciled again."""
        if self._inference_pools.get(key) == pool:
            return
        if pool is None:
            self._inference_pools.pop(key, None)
        else:
            self._inference_pools[key] = pool
        self._dirty.add(key)

    def put_domains_served(self, served: bool) -> None:
        if served != self.domains_served:
            self.domains_served = served
            self._stale()

    def put_inference_pools_served(self, served: bool) -> None:
        """Every deployment is reconciled again: those with spec.inferencePool get theirs, or a
        condition saying why not. Placement does not change: the snapshot stands."""
        if served != self.inference_pools_served:
            self.inference_pools_served = served
            self._all_dirty = True

    # ---- the operator's own writes -----------------------------------------------------------

    def assume(self, pods: Iterable[Body]) -> None:
        """Count every pod a pass books, in one step, before any is written: each holds its
        GPUs from now until the watch shows it, its create fails (`forget`), or its grace
        passes (`expire`)."""
        since = self.clock()
        for body in pods:
            pod = PodInfo.from_body(body)
            self._assumed[pod.key] = _Assumed(since, pod=pod)
            self._refresh(pod.key)

    def created(self, key: Key, uid: str) -> None:
        """The API server took the pod's create and named it `uid`: it stays assumed until the
        watch shows that pod, for at most `PENDING_GRACE_SECONDS` from now (kube-scheduler's
        FinishBinding)."""
        assumed = self._assumed.get(key)
        if assumed is None or assumed.pod is None:
            return
        self._assumed[key] = _Assumed(self.clock(), pod=replace(assumed.pod, uid=uid))
        self._refresh(key)

    def forget(self, key: Key) -> None:
        """A write that did not happen: count the pod as the watch shows it."""
        if self._assumed.pop(key, None) is not None:
            self._refresh(key)

    def assume_deleted(self, pod: PodInfo) -> None:
        """Count a pod as being deleted before the watch shows it so: it holds its GPUs as
        being released, and its replica is not deleted (or announced) twice."""
        if pod.uid is None:
            self.forget(pod.key)  # created by this operator and not shown: gone with the write
            return
        self._assumed[pod.key] = _Assumed(self.clock(), deleted=pod.uid)
        self._refresh(pod.key)

    def wrote_inference_pool(self, key: Key, body: Body | None) -> None:
        """An InferencePool the API server took (applied: `body`; deleted: None), counted so
        until the watch shows it: a pass between the write and its watch event writes nothing
        again. Not a change to reconcile: nothing is marked dirty."""
        if body is None:
            self._inference_pools.pop(key, None)
        else:
            self._inference_pools[key] = InferencePoolInfo.from_body(body)

    def _effective(self, key: Key) -> PodInfo | None:
        """The pod as the operator counts it: shown, unless an assumption is still pending."""
        shown, assumed = self._shown.get(key), self._assumed.get(key)
        if assumed is None:
            return shown
        expired = self.clock() - assumed.since > PENDING_GRACE_SECONDS
        if assumed.pod is not None:
            arrived = shown is not None and assumed.pod.uid is not None
            arrived = arrived and shown is not None and shown.uid == assumed.pod.uid
            if not (arrived or expired):
                return assumed.pod
        elif not (expired or shown is None or shown.uid != assumed.deleted or shown.deleting):
            return replace(shown, deleting=True)
        del self._assumed[key]  # the watch has caught up (or never will)
        return shown

    def _refresh(self, key: Key) -> None:
        """Recount the pod `key` after its shown state or its assumption changed."""
        pod, old = self._effective(key), self._pods.get(key)
        if pod == old:
            return
        for info in (old, pod):
            owner = _deployment_of(info) if info is not None else None
            if owner is not None:
                self._dirty.add(owner)
                group = self._by_deployment.setdefault(owner, set())
                (group.add if info is pod else group.discard)(key)
        if pod is None:
            self._pods.pop(key, None)
        else:
            self._pods[key] = pod
        if self._snapshot is not None:
            usage = self._usage.pop(key, None)
            if usage is not None:
                self._snapshot.remove_pod(key, usage)
            added = self._snapshot.add_pod(pod) if pod is not None else None
            if added is not None:
                self._usage[key] = added
        self.version += 1

    def expire(self) -> None:
        """Drop the assumptions past their grace: the watch has not shown them in time."""
        now = self.clock()
        for key in [k for k, a in self._assumed.items() if now - a.since > PENDING_GRACE_SECONDS]:
            self._refresh(key)

    def _stale(self) -> None:
        self._snapshot = None
        self._usage = {}
        self._all_dirty = True
        self.version += 1

    # ---- reading -------------------------------------------------------------------------------

    def take_dirty(self) -> tuple[bool, set[Key]]:
        """What to reconcile since the last call: whether every deployment is (nodes, pools or
        a resync changed), and those whose own object, pods or ComputeDomains changed."""
        everything, own = self._all_dirty, self._dirty
        self._dirty, self._all_dirty = set(), False
        return everything, own

    def mark(self, keys: Iterable[Key] | None) -> None:
        """Reconcile these deployments (None: all) on the next pass."""
        if keys is None:
            self._all_dirty = True
        else:
            self._dirty.update(keys)

    @property
    def pending(self) -> bool:
        return self._all_dirty or bool(self._dirty)

    def snapshot(self) -> Snapshot:
        """The placement ledger now; kept in step with every put until nodes or pools change."""
        if self._snapshot is None:
            snapshot = build_racks(
                self.nodes.values(), self.pools(), compute_domains=self.domains_served
            )
            self._usage = {}
            for key, pod in self._pods.items():
                usage = snapshot.add_pod(pod)
                if usage is not None:
                    self._usage[key] = usage
            self._snapshot = snapshot
        return self._snapshot

    def pools(self) -> list[RackPool]:
        """Valid RackPools; one the API server should have refused is logged and left out."""
        return [p.model for _, p in sorted(self._pools.items()) if p.model is not None]

    def pool_status(self, name: str) -> Mapping[str, Any]:
        pool = self._pools.get(name)
        return (pool.body.get("status") or {}) if pool else {}

    def pods_of(self, key: Key) -> list[PodInfo]:
        """The pods labelled as the deployment's, in its namespace (owners are not checked)."""
        return [self._pods[k] for k in self._by_deployment.get(key, ())]

    def domains_of(self, key: Key, uid: str) -> dict[int, DomainInfo]:
        """The ComputeDomains of one InferenceDeployment (owned by this very object), by replica."""
        out = {}
        for name in self._domains_by_deployment.get(key, ()):
            domain = self._domains[name]
            index = domain.labels.get(REPLICA_LABEL, "")
            if index.isdigit() and owns(uid, domain):
                out[int(index)] = domain
        return out

    def group_domains_of(self, key: Key, uid: str) -> dict[int, DomainInfo]:
        """The ComputeDomains shared by a deployment's serving groups (spec.roles), by group."""
        out = {}
        for name in self._domains_by_deployment.get(key, ()):
            domain = self._domains[name]
            index = domain.labels.get(GROUP_LABEL, "")
            if REPLICA_LABEL in domain.labels or not index.isdigit():
                continue
            if owns(uid, domain):
                out[int(index)] = domain
        return out

    def inference_pool_of(self, key: Key) -> InferencePoolInfo | None:
        """The InferencePool named as the deployment `key`, labelled as a deployment's (whose,
        and its owner, the planner checks); None when there is none."""
        return self._inference_pools.get(key)

    def all_pods(self) -> list[PodInfo]:
        return list(self._pods.values())


def _validated(body: Body) -> RackPool | None:
    try:
        return RackPool.model_validate(dict(body))
    except ValidationError as error:
        name = (body.get("metadata") or {}).get("name")
        log.warning("RackPool %s ignored: %s", name, "; ".join(format_errors(error)))
        return None


def _spec_and_generation(body: Body) -> tuple[Any, Any]:
    return body.get("spec"), (body.get("metadata") or {}).get("generation")
