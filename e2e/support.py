"""What the operator e2e tests share: waiting with a deadline, building and reading objects,
and checking every pod against the placement guarantees."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client

from e2e import objects, profiles
from rackscale.topology import pinned_node

T = TypeVar("T")
GROUP, VERSION = "rackscale.dev", "v1alpha1"
GPU = profiles.GPU_RESOURCE
CLIQUE = profiles.CLIQUE_LABEL
PAUSE = "registry.k8s.io/pause:3.10"
UNSCHEDULABLE_TIMEOUT = 8
OPERATOR = ["run", "--all-namespaces", "--standalone", "-m", "rackscale.controller.handlers"]


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 90.0) -> T:
    """Poll `probe` until it returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:.0f}s still waiting for {what}", pytrace=False)
        time.sleep(0.3)


# ---- fixtures ---------------------------------------------------------------------------------


def inference_deployment(
    name: str,
    pool: str | None,
    *,
    replicas: int,
    tensor: int = 8,
    data: int = 1,
    expert: int = 1,
    gpus_per_pod: int | None = 4,
    fallback: str = "DevicePlugin",
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "parallelism": {"tensor": tensor, "pipeline": 1, "data": data, "expert": expert},
        "placement": {"fallback": fallback},
        "port": 8000,
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "server",
                        "image": PAUSE,
                        "env": [{"name": "MODEL", "value": name}],
                        "resources": resources or {"requests": {"cpu": "1"}},
                    }
                ],
            },
        },
    }
    if pool:
        spec["placement"]["rackPool"] = pool
    if gpus_per_pod:
        spec["gpusPerPod"] = gpus_per_pod
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", body
    )


def patch(kube: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", name, {"spec": spec}
    )


def get(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return objects.custom(
        client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencedeployments", name
        )
    )


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def pods(kube: client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    response = client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=f"rackscale.dev/deployment={name}", _preload_content=False
    )
    return objects.raw_items(response)


def waiting(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """Wait for phase Pending (nothing placed, the engine says why); return the deployment."""

    def probe() -> dict[str, Any] | None:
        body = get(kube, namespace, name)
        return body if (body.get("status") or {}).get("phase") == "Pending" else None

    return eventually(probe, f"{namespace}/{name} to wait for room")


def ready(kube: client.ApiClient, namespace: str, name: str, replicas: int) -> dict[str, Any]:
    """Wait for status Ready with every pod bound and Ready; return the deployment."""

    def probe() -> dict[str, Any] | None:
        body = get(kube, namespace, name)
        status = body.get("status") or {}
        if status.get("phase") != "Ready" or status.get("readyReplicas") != replicas:
            return None
        if status.get("observedGeneration") != body["metadata"]["generation"]:
            return None
        live = [
            p for p in pods(kube, namespace, name) if not p["metadata"].get("deletionTimestamp")
        ]
        shards = sum(len(p["pods"]) for p in status.get("placements") or [])
        if len(live) != shards or not all(p["spec"].get("nodeName") for p in live):
            return None
        return body

    return eventually(probe, f"{namespace}/{name} to be Ready with {replicas} replicas")


def uids(kube: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(kube, namespace, name)}


def replica_uids(kube: client.ApiClient, namespace: str, name: str, replica: int) -> set[str]:
    return {
        p["metadata"]["uid"]
        for p in pods(kube, namespace, name)
        if p["metadata"]["labels"]["rackscale.dev/replica"] == str(replica)
    }


def events(kube: client.ApiClient, namespace: str, name: str) -> list[str]:
    items = (
        client.CoreV1Api(kube)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        .items
    )
    return [e.reason for e in items if e.reason]


def check_guarantees(kube: client.ApiClient) -> None:
    """Every pod on the cluster against design section 4: no node over-allocated, every pinned
    pod bound where it was pinned, every rack-mode replica inside one rack, and no node holding
    pods of two ComputeDomains or two pods of one (guarantee 13)."""
    core = client.CoreV1Api(kube)
    nodes = {objects.name(n): n for n in core.list_node().items}
    response = core.list_pod_for_all_namespaces(_preload_content=False)
    used: Counter[str] = Counter()
    replicas: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    live = [
        p
        for p in objects.raw_items(response)
        if p["status"].get("phase") not in ("Succeeded", "Failed")
    ]
    for node, held in node_domains(live).items():
        assert len(set(held)) <= 1, f"node {node} holds pods of ComputeDomains {sorted(held)}"
        assert len(held) == len(set(held)), f"node {node} holds two pods of {held}"
    for pod in live:
        node = pod["spec"].get("nodeName")
        gpus = sum(
            int((c.get("resources") or {}).get("limits", {}).get(GPU, 0))
            for c in pod["spec"]["containers"]
        )
        if node:
            used[node] += gpus
        labels = pod["metadata"].get("labels") or {}
        pin = pinned_node(pod)
        if "rackscale.dev/deployment" in labels and pin:
            assert node in (None, pin), f"pod {pod['metadata']['name']} pinned to {pin} on {node}"
            rack = objects.labels(nodes[pin]).get(CLIQUE) if pin in nodes else None
            key = (
                pod["metadata"]["namespace"],
                labels["rackscale.dev/deployment"],
                labels["rackscale.dev/replica"],
            )
            replicas[key].add(str(rack))
    for node, gpus in used.items():
        allocatable = int(objects.allocatable(nodes[node]).get(GPU, 0))
        assert gpus <= allocatable, f"node {node} holds {gpus} GPUs of {allocatable}"
    for key, racks in replicas.items():
        assert len(racks) == 1, f"replica {key} spans racks {racks}"


def node_domains(pods: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Node -> the ComputeDomain (`namespace/name`) of each pod there that has one."""
    held: dict[str, list[str]] = defaultdict(list)
    for pod in pods:
        domain = (pod["metadata"].get("labels") or {}).get("rackscale.dev/compute-domain")
        node = pod["spec"].get("nodeName") or pinned_node(pod)
        if domain and node:
            held[node].append(f"{pod['metadata']['namespace']}/{domain}")
    return held


@contextlib.contextmanager
def gb200_pool(kube: client.ApiClient, prefix: str, **spec: Any) -> Iterator[str]:
    """A RackPool over the profile's GB200 racks, alone (other pools would share its nodes),
    deleted afterwards; `spec` adds to its spec."""
    api = client.CustomObjectsApi(kube)
    others = objects.custom_items(api.list_cluster_custom_object(GROUP, VERSION, "rackpools"))
    if others:
        names = ", ".join(p["metadata"]["name"] for p in others)
        pytest.fail(
            f"RackPools {names} already exist and would share the GB200 nodes (a demo left "
            "running?): `make cluster-down` or delete them, and stop any other operator",
            pytrace=False,
        )
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RackPool",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-GB200"}},
            "rackLabel": CLIQUE,
            "blockLabel": profiles.BLOCK_LABEL,
            "gpusPerRack": 72,
            **spec,
        },
    }
    api.create_cluster_custom_object(GROUP, VERSION, "rackpools", body)
    try:
        yield name
    finally:
        api.delete_cluster_custom_object(GROUP, VERSION, "rackpools", name)
