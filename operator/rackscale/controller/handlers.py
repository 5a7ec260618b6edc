"""Every kopf handler of the operator. Each only decodes its arguments and delegates.

Indices are kopf's informer cache of nodes, GPU pods, RackPools and InferenceDeployments; every
watch event wakes the one worker, which reconciles from them. Nothing here adds finalizers or
writes kopf's bookkeeping into the objects: deletion is left to owner references.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import kopf

from rackscale.api import GROUP, VERSION
from rackscale.controller import leader, liveness
from rackscale.controller.cluster import (
    ClusterView,
    is_gpu_pod,
    slim_compute_domain,
    slim_node,
    slim_pod,
)
from rackscale.controller.kube import Kube, api_client
from rackscale.controller.reconcile import Options, Reconciler
from rackscale.controller.worker import Worker
from rackscale.render import (
    COMPUTE_DOMAIN_CRD,
    COMPUTE_DOMAIN_GROUP,
    COMPUTE_DOMAIN_PLURAL,
    COMPUTE_DOMAIN_VERSION,
    DEPLOYMENT_LABEL,
)

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
    worker = Worker(Reconciler(ClusterView(), Kube(api_client()), options))
    memo["worker"] = worker
    memo.setdefault("liveness_bound", liveness.bound_from(os.environ, options.resync))
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


@kopf.index("nodes")
def nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: slim_node(body)}


@kopf.index("pods")
def gpu_pods(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any] | None:
    return {(namespace, name): slim_pod(body)} if is_gpu_pod(body) else None


@kopf.index(GROUP, VERSION, "rackpools")
def rackpools(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: copy.deepcopy(dict(body))}


@kopf.index(GROUP, VERSION, "inferencedeployments")
def inferencedeployments(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, name): copy.deepcopy(dict(body))}


# NVIDIA's ComputeDomains, watched once their CRD exists (kopf watches CRDs appear and go), and
# that CRD itself: whether it is served decides whether replicas spanning trays get one.
@kopf.index(
    COMPUTE_DOMAIN_GROUP,
    COMPUTE_DOMAIN_VERSION,
    COMPUTE_DOMAIN_PLURAL,
    labels={DEPLOYMENT_LABEL: kopf.PRESENT},
)
def computedomains(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): slim_compute_domain(body)}


@kopf.index(*CRDS, field="metadata.name", value=COMPUTE_DOMAIN_CRD)
def computedomain_crd(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: {"spec": dict(body.spec), "status": dict(body.status)}}


def _wake(memo: kopf.Memo, indices: dict[str, Any]) -> None:
    worker: Worker | None = memo.get("worker")
    if worker is not None:
        worker.observe(
            indices["nodes"],
            indices["gpu_pods"],
            indices["rackpools"],
            indices["inferencedeployments"],
            domains=indices["computedomains"],
            crds=indices["computedomain_crd"],
        )


@kopf.on.event("nodes")
@kopf.on.event(GROUP, VERSION, "rackpools")
@kopf.on.event(GROUP, VERSION, "inferencedeployments")
@kopf.on.event(
    COMPUTE_DOMAIN_GROUP,
    COMPUTE_DOMAIN_VERSION,
    COMPUTE_DOMAIN_PLURAL,
    labels={DEPLOYMENT_LABEL: kopf.PRESENT},
)
@kopf.on.event(*CRDS, field="metadata.name", value=COMPUTE_DOMAIN_CRD)
@kopf.on.event("pods", when=lambda body, **_: is_gpu_pod(body))
async def changed(memo: kopf.Memo, **kwargs: Any) -> None:
    """Any watch event: kopf passes the indices by their function names."""
    _wake(memo, kwargs)
