"""Every kopf handler of the operator. Each only decodes its arguments and delegates.

kopf's indices hold the typed slim objects of nodes, GPU pods, RackPools, InferenceDeployments,
ComputeDomains and InferencePools, and whether the ComputeDomain and InferencePool CRDs are
served; every watch event puts its object into the operator's one cache and wakes the one worker,
which reconciles what changed. Nothing here adds finalizers or writes kopf's bookkeeping into
the objects: deletion is left to owner references.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import kopf

from rackscale.api import GROUP, VERSION
from rackscale.api.labels import DEPLOYMENT_LABEL
from rackscale.controller import leader, liveness
from rackscale.controller.cluster import (
    ClusterCache,
    is_gpu_pod,
    serves_compute_domains,
    serves_inference_pools,
)
from rackscale.controller.kube import Kube, api_client
from rackscale.controller.reconcile import Options, Reconciler
from rackscale.controller.worker import Worker, period
from rackscale.render import (
    COMPUTE_DOMAIN_CRD,
    COMPUTE_DOMAIN_GROUP,
    COMPUTE_DOMAIN_PLURAL,
    COMPUTE_DOMAIN_VERSION,
    INFERENCE_POOL_CRD,
    INFERENCE_POOL_GROUP,
    INFERENCE_POOL_PLURAL,
    INFERENCE_POOL_VERSION,
)
from rackscale.topology import NodeInfo, PodInfo
from rackscale.topology.objects import DomainInfo, InferencePoolInfo

CRDS = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod its service account, else $KUBECONFIG as it is now (not at import time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = 30  # kopf's own Events: warnings only; rackscale posts its own
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    options = memo.get("options") or Options.from_env(os.environ)
    worker = Worker(Reconciler(ClusterCache(), Kube(api_client()), options))
    memo["worker"] = worker
    memo.setdefault("liveness_bound", liveness.bound_from(os.environ, period(options.resync)))
    leader.begin(memo, api_client(), worker.run, os.environ)  # the worker acts once it leads


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await leader.end(memo)


@kopf.on.probe(id="reconciler")
async def probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """kopf's /healthz: 500 (a permanent error) when the loop has stopped turning. Async, so a
    blocked event loop makes the probe time out too."""
    worker: Worker | None = memo.get("worker")
    if worker is None:
        return {}
    try:
        return liveness.check(
            worker.loop(), memo["leadership"], bound=memo["liveness_bound"], now=time.monotonic()
        )
    except liveness.Unhealthy as error:
        raise kopf.PermanentError(str(error)) from error


def _slim(body: kopf.Body) -> dict[str, Any]:
    """An object as the cache keeps it: without managedFields, which nothing here reads."""
    plain = copy.deepcopy(dict(body))
    plain.get("metadata", {}).pop("managedFields", None)
    return plain


# kopf's indices are filled from a full listing before any other handler runs: the cache loads
# from them on the first event, so the operator never acts on half a cluster.
@kopf.index("nodes")
def nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeInfo]:
    return {name: NodeInfo.from_body(body)}


@kopf.index("pods")
def gpu_pods(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any] | None:
    return {(namespace, name): PodInfo.from_body(body)} if is_gpu_pod(body) else None


@kopf.index(GROUP, VERSION, "rackpools")
def rackpools(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: _slim(body)}


@kopf.index(GROUP, VERSION, "inferencedeployments")
def inferencedeployments(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, name): _slim(body)}


# NVIDIA's ComputeDomains, watched once their CRD exists (kopf watches CRDs appear and go), and
# that CRD itself: whether it is served decides whether replicas spanning trays get one.
@kopf.index(
    COMPUTE_DOMAIN_GROUP,
    COMPUTE_DOMAIN_VERSION,
    COMPUTE_DOMAIN_PLURAL,
    labels={DEPLOYMENT_LABEL: kopf.PRESENT},
)
def computedomains(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): DomainInfo.from_body(body)}


@kopf.index(*CRDS, field="metadata.name", value=COMPUTE_DOMAIN_CRD)
def computedomain_crd(name: str, body: kopf.Body, **_: Any) -> dict[str, bool]:
    return {name: serves_compute_domains(body)}


# The InferencePools rackscale labels, watched once their CRD exists, as ComputeDomains are: the
# planner applies a pool only when it is missing or not what it renders, and deletes one only
# when it exists. Their CRD: whether it is served decides whether spec.inferencePool gets one.
@kopf.index(
    INFERENCE_POOL_GROUP,
    INFERENCE_POOL_VERSION,
    INFERENCE_POOL_PLURAL,
    labels={DEPLOYMENT_LABEL: kopf.PRESENT},
)
def inferencepools(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): InferencePoolInfo.from_body(body)}


@kopf.index(*CRDS, field="metadata.name", value=INFERENCE_POOL_CRD)
def inferencepool_crd(name: str, body: kopf.Body, **_: Any) -> dict[str, bool]:
    return {name: serves_inference_pools(body)}


def _one(index: Any, key: Any, event: Any) -> Any:
    """The one value an object gave its index under `key`; None when the event deletes it
    (kopf may call the handler before the index forgets it)."""
    if event == "DELETED":
        return None
    store = index.get(key) if index is not None else None
    return next(iter(store), None) if store is not None else None


def _values(index: Any) -> list[Any]:
    return [v for store in list(index.values()) for v in store] if index is not None else []


def _observe(memo: kopf.Memo, indices: dict[str, Any], put: Any) -> None:
    """Load the cache on the first event, else apply this one; then wake the worker."""
    worker: Worker | None = memo.get("worker")
    if worker is None:
        return
    cache = worker.reconciler.cache
    if not cache.loaded:
        cache.load(
            nodes=_values(indices["nodes"]),
            pods=_values(indices["gpu_pods"]),
            pools=_values(indices["rackpools"]),
            deployments=_values(indices["inferencedeployments"]),
            domains=_values(indices["computedomains"]),
            domains_served=any(_values(indices["computedomain_crd"])),
            inference_pools=_values(indices["inferencepools"]),
            inference_pools_served=any(_values(indices["inferencepool_crd"])),
        )
        worker.loaded()
    else:
        put(cache)
    worker.wake.set()


@kopf.on.event("nodes")
async def node_changed(name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    node = _one(kwargs["nodes"], name, kwargs.get("type"))
    _observe(memo, kwargs, lambda cache: cache.put_node(name, node))


@kopf.on.event("pods", when=lambda body, **_: is_gpu_pod(body))
async def pod_changed(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    key = (namespace or "default", name)
    pod = _one(kwargs["gpu_pods"], (namespace, name), kwargs.get("type"))
    _observe(memo, kwargs, lambda cache: cache.put_pod(key, pod))


@kopf.on.event(GROUP, VERSION, "rackpools")
async def pool_changed(name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    pool = _one(kwargs["rackpools"], name, kwargs.get("type"))
    _observe(memo, kwargs, lambda cache: cache.put_pool(name, pool))


@kopf.on.event(GROUP, VERSION, "inferencedeployments")
async def deployment_changed(
    namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any
) -> None:
    key = (namespace or "default", name)
    body = _one(kwargs["inferencedeployments"], (namespace, name), kwargs.get("type"))
    _observe(memo, kwargs, lambda cache: cache.put_deployment(key, body))


@kopf.on.event(
    COMPUTE_DOMAIN_GROUP,
    COMPUTE_DOMAIN_VERSION,
    COMPUTE_DOMAIN_PLURAL,
    labels={DEPLOYMENT_LABEL: kopf.PRESENT},
)
async def domain_changed(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    key = (namespace or "default", name)
    domain = _one(kwargs["computedomains"], (namespace, name), kwargs.get("type"))
    _observe(memo, kwargs, lambda cache: cache.put_domain(key, domain))


@kopf.on.event(
    INFERENCE_POOL_GROUP,
    INFERENCE_POOL_VERSION,
    INFERENCE_POOL_PLURAL,
    labels={DEPLOYMENT_LABEL: kopf.PRESENT},
)
async def inference_pool_changed(
    namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any
) -> None:
    key = (namespace or "default", name)
    pool = _one(kwargs["inferencepools"], (namespace, name), kwargs.get("type"))
    _observe(memo, kwargs, lambda cache: cache.put_inference_pool(key, pool))


@kopf.on.event(*CRDS, field="metadata.name", value=COMPUTE_DOMAIN_CRD)
async def crd_changed(memo: kopf.Memo, **kwargs: Any) -> None:
    served = any(_values(kwargs["computedomain_crd"]))
    _observe(memo, kwargs, lambda cache: cache.put_domains_served(served))


@kopf.on.event(*CRDS, field="metadata.name", value=INFERENCE_POOL_CRD)
async def inference_pool_crd_changed(memo: kopf.Memo, **kwargs: Any) -> None:
    served = any(_values(kwargs["inferencepool_crd"]))
    _observe(memo, kwargs, lambda cache: cache.put_inference_pools_served(served))
