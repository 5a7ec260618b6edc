"""Smoke tests: the cluster under test schedules GPU pods, runs controllers and serves our CRDs."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import cluster, objects, profiles
from e2e.support import eventually

T = TypeVar("T")
GPU = profiles.GPU_RESOURCE
PAUSE = "registry.k8s.io/pause:3.10"
CRD_FILES = ("rackscale.dev_rackpools.yaml", "rackscale.dev_inferencedeployments.yaml")
EXTERNAL = bool(os.environ.get(cluster.EXTERNAL_KUBECONFIG))


def gpu_pod(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {"name": "main", "image": PAUSE, "resources": {"limits": {GPU: str(gpus)}}}
            ],
            "terminationGracePeriodSeconds": 0,
        },
    }


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "main", "image": PAUSE}],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }


def test_api_server_serves_the_pinned_version(kube: client.ApiClient) -> None:
    version = client.VersionApi(kube).get_code()
    if EXTERNAL:
        assert version.git_version.startswith("v1."), version
    else:
        assert version.git_version == cluster.pinned_kubernetes_version()


def test_profile_nodes_are_ready_with_their_gpus(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    if EXTERNAL:
        gpu_nodes = core.list_node(label_selector="nvidia.com/gpu.product").items
        assert gpu_nodes, "no node carries nvidia.com/gpu.product: run e2e/kind/fake-gpus.sh"
        for node in gpu_nodes:
            assert objects.node_ready(node), objects.name(node)
            assert int(objects.allocatable(node).get(GPU, "0")) > 0, objects.name(node)
        return
    profile = profiles.load(os.environ.get("RACKSCALE_E2E_PROFILE", "default"))
    actual = {objects.name(n): n for n in core.list_node().items}
    for want in profiles.nodes(profile):
        name = want["metadata"]["name"]
        assert name in actual, f"profile node {name} is missing"
        node = actual[name]
        assert objects.node_ready(node), f"{name} is not Ready"
        assert objects.allocatable(node).get(GPU) == want["status"]["allocatable"].get(GPU), name
        assert objects.labels(node).items() >= want["metadata"]["labels"].items(), name


def test_gpu_pod_is_scheduled_onto_a_gpu_node_and_runs(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(
        namespace,
        gpu_pod("four-gpus", 4),  # type: ignore[arg-type]  # a plain manifest
    )

    def running() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("four-gpus", namespace)
        return pod if objects.pod_status(pod).phase == "Running" else None

    pod = eventually(running, "pod four-gpus to be Running")
    node_name = objects.pod_spec(pod).node_name
    assert node_name
    assert int(objects.allocatable(core.read_node(node_name)).get(GPU, "0")) >= 4
    scheduled = [c for c in objects.pod_status(pod).conditions or [] if c.type == "PodScheduled"]
    assert scheduled
    assert scheduled[0].status == "True"


def test_pod_asking_more_gpus_than_any_node_stays_pending(
    kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    most = max(int(objects.allocatable(n).get(GPU, "0")) for n in core.list_node().items)
    core.create_namespaced_pod(
        namespace,
        gpu_pod("too-many-gpus", most + 1),  # type: ignore[arg-type]  # a plain manifest
    )

    def failed_scheduling() -> list[client.CoreV1Event]:
        return core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=too-many-gpus,reason=FailedScheduling"
        ).items

    def unschedulable() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("too-many-gpus", namespace)
        scheduled = [
            c for c in objects.pod_status(pod).conditions or [] if c.type == "PodScheduled"
        ]
        return pod if scheduled and scheduled[0].reason == "Unschedulable" else None

    events = eventually(failed_scheduling, "a FailedScheduling event for too-many-gpus")
    assert any(GPU in (e.message or "") for e in events), [e.message for e in events]
    # The scheduler records the event and the pod condition separately: either may come first.
    pod = eventually(unschedulable, "pod too-many-gpus to be marked Unschedulable")
    assert objects.pod_status(pod).phase == "Pending"
    assert not objects.pod_spec(pod).node_name


def test_deployment_creates_running_pods(kube: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(
        namespace,
        deployment("web", 3),  # type: ignore[arg-type]  # a plain manifest
    )

    def ready_replicas() -> int:
        status = apps.read_namespaced_deployment("web", namespace).status
        return (status.ready_replicas if status else None) or 0

    eventually(lambda: ready_replicas() == 3, "deployment web to have 3 ready replicas")
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    assert all(objects.pod_status(p).phase == "Running" for p in pods)


def test_deleting_the_owner_garbage_collects_its_pods(
    kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    core = client.CoreV1Api(kube)
    apps.create_namespaced_deployment(
        namespace,
        deployment("doomed", 2),  # type: ignore[arg-type]  # a plain manifest
    )
    eventually(
        lambda: len(core.list_namespaced_pod(namespace, label_selector="app=doomed").items) == 2,
        "deployment doomed to create 2 pods",
    )
    # Background propagation leaves the dependents to the garbage collector alone.
    apps.delete_namespaced_deployment("doomed", namespace, propagation_policy="Background")
    eventually(
        lambda: (
            not apps.list_namespaced_replica_set(namespace).items
            and not core.list_namespaced_pod(namespace, label_selector="app=doomed").items
        ),
        "the garbage collector to remove the ReplicaSet and pods of deployment doomed",
    )


def _install_crds(kube: client.ApiClient) -> list[str]:
    ext = client.ApiextensionsV1Api(kube)
    crd_dir = cluster.REPO_ROOT / "crds"
    names = []
    for file in CRD_FILES:
        path = Path(crd_dir / file)
        assert path.is_file(), f"{path} is missing: run `make crds`"
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        try:
            ext.patch_custom_resource_definition(
                name,
                crd,
                field_manager="rackscale-e2e",
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as err:
            message = json.loads(err.body).get("message", err.body) if err.body else err.reason
            pytest.fail(f"the API server refuses {path}: {message}", pytrace=False)
        names.append(name)
    return names


def _established(kube: client.ApiClient, name: str) -> bool:
    status = client.ApiextensionsV1Api(kube).read_custom_resource_definition(name).status
    conditions = (status.conditions if status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def _inference_deployment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "parallelism": {"tensor": 4, "pipeline": 2, "data": 1, "expert": 8},
            "template": {"spec": {"containers": [{"name": "server", "image": PAUSE}]}},
            **spec,
        },
    }


def _refusal(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> str:
    api = client.CustomObjectsApi(kube)
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(
            "rackscale.dev", "v1alpha1", namespace, "inferencedeployments", body
        )
    assert refused.value.status == 422, refused.value.body
    assert refused.value.body, "a refusal without a body"
    return str(json.loads(refused.value.body)["message"])


def test_crds_install_and_refuse_invalid_objects_naming_the_field(
    kube: client.ApiClient, namespace: str
) -> None:
    for name in _install_crds(kube):
        eventually(functools.partial(_established, kube, name), f"CRD {name} to be Established")

    api = client.CustomObjectsApi(kube)
    # Discovery of a just-established CRD can lag a moment behind its condition.
    eventually(
        lambda: _try_create(api, namespace, _inference_deployment("valid")),
        "a valid InferenceDeployment to be accepted",
        timeout=30,
    )

    bad_expert = _inference_deployment(
        "bad-expert", parallelism={"tensor": 4, "pipeline": 2, "data": 1, "expert": 3}
    )
    message = _refusal(kube, namespace, bad_expert)
    assert "spec.parallelism.expert" in message, message

    message = _refusal(kube, namespace, _inference_deployment("bad-replicas", replicas=-1))
    assert "spec.replicas" in message, message


def _try_create(api: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> bool:
    try:
        api.create_namespaced_custom_object(
            "rackscale.dev", "v1alpha1", namespace, "inferencedeployments", body
        )
        return True
    except ApiException as err:
        if err.status == 404:
            return False
        raise
