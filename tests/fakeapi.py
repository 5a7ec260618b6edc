"""An in-memory API for fast tests of the reconciler, with a watch feeding the operator's cache.

Objects are kept as API bodies, each in a one-element list (as a kopf index store holds it).
Every write the reconciler makes, and every `touch` a test makes after changing an object in
place, is shown to each cache made by `view()` as the watch would show it: at once (before the
write returns), or, with `lagging`, only when the test calls `deliver()` (a watch behind its
writes). kube-scheduler binds a pinned pod at once; ComputeDomains turn Ready at once unless
`ready` is False. `refuse_service` makes the server refuse some Services with a message.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Callable
from typing import Any

from rackscale.api.labels import DEPLOYMENT_LABEL
from rackscale.controller.cluster import ClusterCache, is_gpu_pod
from rackscale.topology import NodeInfo, PodInfo
from rackscale.topology.objects import DomainInfo, InferencePoolInfo

POOL = {
    "apiVersion": "rackscale.dev/v1alpha1",
    "kind": "RackPool",
    "metadata": {"name": "gb200", "generation": 1, "resourceVersion": "1"},
    "spec": {"nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-GB200"}}},
}

Store = dict[Any, list[dict[str, Any]]]


class FakeAPI:
    """Pods, Services, ComputeDomains, InferencePools, statuses and Events kept in dicts."""

    def __init__(
        self,
        nodes: list[dict[str, Any]],
        *,
        domains_served: bool = False,
        inference_pools_served: bool = False,
    ) -> None:
        self.nodes: Store = {n["metadata"]["name"]: [n] for n in nodes}
        self.pods: Store = {}
        self.pools: Store = {"gb200": [copy.deepcopy(POOL)]}
        self.deployments: Store = {}
        self.domains: Store = {}
        self.domains_served = domains_served
        self.inference_pools_served = inference_pools_served
        self.inference_pools: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted_inference_pools: list[str] = []
        self.pool_writes: list[str] = []  # every InferencePool apply tried, refused or not
        self.refused_pool_writes: list[tuple[str, str]] = []  # while their CRD is not served
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.annotated: list[str] = []  # pods whose annotations were patched, in order
        self.events: list[tuple[str, str, str]] = []
        self.created = 0
        self.fail_after: int | None = None  # creates that succeed before one fails
        self.events_fail_for: set[str] = set()  # deployments whose Events the server refuses
        self.slow_deletes = False  # deleted pods stay, being deleted, until `finish_deletes`
        self.ready = True  # ComputeDomains turn Ready once created
        self.created_domains: list[str] = []
        self.deleted_domains: list[str] = []
        self.refuse_service: Callable[[dict[str, Any]], str | None] | None = None  # -> message
        self.service_writes: list[str] = []  # every Service write tried, refused or not
        self.lagging = False  # the watch shows writes only on `deliver()`
        self._behind: list[tuple[str, Any]] = []  # what the lagging watch has yet to show
        self._caches: list[ClusterCache] = []

    # ---- the watch -------------------------------------------------------------------------------

    def view(self, cache: ClusterCache | None = None) -> ClusterCache:
        """A new operator's cache (or `cache`): loaded from a full listing, then fed by the
        watch."""
        cache = cache or ClusterCache()
        cache.load(
            nodes=[NodeInfo.from_body(n) for (n,) in self.nodes.values()],
            pods=[PodInfo.from_body(p) for (p,) in self.pods.values() if is_gpu_pod(p)],
            pools=[copy.deepcopy(p) for (p,) in self.pools.values()],
            deployments=[copy.deepcopy(d) for (d,) in self.deployments.values()],
            domains=[DomainInfo.from_body(d) for (d,) in self.domains.values()],
            domains_served=self.domains_served,
            inference_pools=[p for k in self.inference_pools if (p := self._inference_pool(k))],
            inference_pools_served=self.inference_pools_served,
        )
        self._caches.append(cache)
        return cache

    def touch(self, kind: str, key: Any) -> None:
        """Show every cache the object `key` of `kind` as it is now (gone when absent); with
        `lagging`, once `deliver` is called."""
        if self.lagging:
            self._behind.append((kind, key))
            return
        self._show(kind, key)

    def deliver(self, *kinds: str) -> int:
        """The lagging watch catches up: every change not yet shown (of `kinds`, default all)
        is shown, in order; returns how many."""
        shown = [(k, key) for k, key in self._behind if not kinds or k in kinds]
        self._behind = [(k, key) for k, key in self._behind if kinds and k not in kinds]
        for kind, key in shown:
            self._show(kind, key)
        return len(shown)

    def _inference_pool(self, key: Any) -> InferencePoolInfo | None:
        """An InferencePool as the operator's label-selected watch shows it (None: not at all)."""
        body = self.inference_pools.get(key)
        labels = (body or {}).get("metadata", {}).get("labels") or {}
        return InferencePoolInfo.from_body(body) if body and DEPLOYMENT_LABEL in labels else None

    def _show(self, kind: str, key: Any) -> None:
        if kind == "inference_pools":
            pool = self._inference_pool(key)
            for cache in self._caches:
                cache.put_inference_pool(key, pool)
            return
        store: Store = getattr(self, kind)
        body = store[key][0] if key in store else None
        put: dict[str, Callable[[ClusterCache], None]] = {
            "nodes": lambda c: c.put_node(key, NodeInfo.from_body(body) if body else None),
            "pods": lambda c: c.put_pod(key, PodInfo.from_body(body) if body else None),
            "pools": lambda c: c.put_pool(key, copy.deepcopy(body) if body else None),
            "deployments": lambda c: c.put_deployment(key, copy.deepcopy(body) if body else None),
            "domains": lambda c: c.put_domain(key, DomainInfo.from_body(body) if body else None),
        }
        for cache in self._caches:
            put[kind](cache)

    # ---- what tests do -----------------------------------------------------------------------

    def apply(
        self,
        name: str,
        replicas: int,
        tensor: int = 8,
        data: int = 4,
        created: str = "2026-11-28T10:00:00Z",
        **placement: Any,
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "rackscale.dev/v1alpha1",
            "kind": "InferenceDeployment",
            "metadata": {
                "name": name,
                "namespace": "llm",
                "uid": f"uid-{name}",
                "generation": 1,
                "creationTimestamp": created,
            },
            "spec": {
                "replicas": replicas,
                "parallelism": {"tensor": tensor, "data": data},
                "gpusPerPod": 4,
                "placement": {"rackPool": "gb200", **placement},
                "template": {"spec": {"containers": [{"name": "server", "image": "vllm"}]}},
            },
        }
        self.deployments[("llm", name)] = [body]
        self.touch("deployments", ("llm", name))
        return body

    def edit(self, name: str, change: Callable[[dict[str, Any]], object]) -> None:
        """Change a deployment's spec in place, as `kubectl edit` would."""
        (body,) = self.deployments[("llm", name)]
        change(body["spec"])
        body["metadata"]["generation"] += 1
        self.touch("deployments", ("llm", name))

    def status(self, name: str) -> dict[str, Any]:
        return self.deployments[("llm", name)][0].get("status") or {}

    def finish_deletes(self, count: int) -> int:
        """Let `count` of the pods being deleted go; returns how many are still going."""
        going = sorted(k for k, (p,) in self.pods.items() if p["metadata"].get("deletionTimestamp"))
        for key in going[:count]:
            del self.pods[key]
            self.touch("pods", key)
        return len(going[count:])

    # ---- the Writer ------------------------------------------------------------------------------

    async def create_pod(self, body: dict[str, Any]) -> str:
        await asyncio.sleep(0)  # let other reconciles run between writes
        if self.fail_after is not None and self.created >= self.fail_after:
            raise RuntimeError("the API server refused the pod")
        self.created += 1
        pod = copy.deepcopy(body)
        pod["metadata"]["uid"] = str(uuid.uuid4())
        terms = (
            (body["spec"].get("affinity") or {})
            .get("nodeAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms", [{}])
        )
        fields = terms[0].get("matchFields") or []
        pod["spec"]["nodeName"] = fields[0]["values"][0] if fields else "h200-00"
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        self.pods[key] = [pod]
        self.touch("pods", key)
        return str(pod["metadata"]["uid"])

    async def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> None:
        key = (namespace, name)
        if key not in self.pods:
            return
        if not self.slow_deletes or force:
            del self.pods[key]
        else:
            (pod,) = self.pods[key]
            pod["metadata"]["deletionTimestamp"] = "2026-11-28T10:00:00Z"
        self.touch("pods", key)

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        await asyncio.sleep(0)
        key = (namespace, name)
        if key not in self.pods:
            return
        (pod,) = self.pods[key]
        pod["metadata"].setdefault("annotations", {}).update(annotations)
        self.annotated.append(name)
        self.touch("pods", key)

    async def apply_service(self, body: dict[str, Any]) -> None:
        self.service_writes.append(body["metadata"]["name"])
        if self.refuse_service is not None and (message := self.refuse_service(body)):
            raise RuntimeError(message)
        self.services[(body["metadata"]["namespace"], body["metadata"]["name"])] = body

    async def apply_inference_pool(self, body: dict[str, Any]) -> None:
        self.pool_writes.append(body["metadata"]["name"])
        self._pool_served("apply", body["metadata"]["name"])
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        self.inference_pools[key] = copy.deepcopy(body)
        self.touch("inference_pools", key)

    async def delete_inference_pool(self, namespace: str, name: str) -> None:
        self._pool_served("delete", name)
        self.deleted_inference_pools.append(name)
        if self.inference_pools.pop((namespace, name), None) is not None:
            self.touch("inference_pools", (namespace, name))

    def _pool_served(self, verb: str, name: str) -> None:
        """As the API server answers a write to a resource it does not serve: 404."""
        if not self.inference_pools_served:
            self.refused_pool_writes.append((verb, name))
            raise RuntimeError("404: the server could not find the requested resource")

    async def create_compute_domain(self, body: dict[str, Any]) -> bool:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.domains:
            return False
        domain = copy.deepcopy(body)
        domain["metadata"]["uid"] = f"cd-{len(self.created_domains)}"
        domain["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
        domain["status"] = {"status": "Ready" if self.ready else "NotReady"}
        self.domains[key] = [domain]
        self.created_domains.append(body["metadata"]["name"])
        self.touch("domains", key)
        return True

    async def delete_compute_domain(self, namespace: str, name: str) -> None:
        if self.domains.pop((namespace, name), None):
            self.deleted_domains.append(name)
            self.touch("domains", (namespace, name))

    async def patch_deployment_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self.deployments[(namespace, name)][0]["status"] = status
        self.touch("deployments", (namespace, name))

    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        self.pools[name][0]["status"] = status
        self.touch("pools", name)

    async def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        if obj["metadata"]["name"] in self.events_fail_for:
            raise RuntimeError("the API server refused the Event")
        self.events.append((obj["metadata"]["name"], reason, message))


def gpus_per_node(api: FakeAPI) -> dict[str, int]:
    used: dict[str, int] = {}
    for (pod,) in api.pods.values():
        limits = pod["spec"]["containers"][0]["resources"].get("limits") or {}
        node = pod["spec"]["nodeName"]
        used[node] = used.get(node, 0) + int(limits.get("nvidia.com/gpu", 0))
    return used
