"""InferencePools on a real API server, kube-scheduler and kwok: the pool of a deployment selects
exactly its serving pods (the leaders; with spec.roles, those of the serving role) through scaling
up and down and a replica restart, on the port they serve on.

The API server serves the InferencePool CRD the local cluster installs (e2e/inferencepools, the
published v1 fields); no gateway or endpoint picker runs: the test reads the pool's selector and
lets the API server select with it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import inferencepools, objects
from e2e.support import (
    PAUSE,
    apply,
    condition,
    eventually,
    get,
    inference_deployment,
    patch,
    pods,
    ready,
)

PICKER = {"endpointPickerRef": {"name": "vllm-epp", "port": {"number": 9002}}}
POOL = (inferencepools.GROUP, inferencepools.VERSION)


@pytest.fixture(scope="module", autouse=True)
def served(kube: client.ApiClient) -> None:
    """The CRD, as the local cluster installs it (here too for a cluster given from outside)."""
    inferencepools.install(kube)


def pool_of(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return objects.custom(
            client.CustomObjectsApi(kube).get_namespaced_custom_object(
                *POOL, namespace, inferencepools.PLURAL, name
            )
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def selected(kube: client.ApiClient, namespace: str, pool: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods the API server selects with the pool's selector."""
    labels = pool["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    response = client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=selector, _preload_content=False
    )
    return objects.raw_items(response)


def serving_leaders(body: dict[str, Any], role: str | None) -> set[str]:
    """Shard 0 of every replica (of the serving role), read from the status, not the labels."""
    return {
        p["pods"][0]["name"]
        for p in body["status"]["placements"]
        if role is None or p.get("role") == role
    }


def check(
    kube: client.ApiClient, namespace: str, name: str, groups: int, *, role: str | None, port: int
) -> set[str]:
    """Once Ready at `groups` replicas: the pool's live pods are exactly the serving leaders
    (no worker, no other role, not even one being deleted), on `port`. Returns the leaders."""
    body = ready(kube, namespace, name, groups)
    leaders = serving_leaders(body, role)

    def exact() -> dict[str, Any] | None:
        pool = pool_of(kube, namespace, name)
        if pool is None:
            return None
        chosen = selected(kube, namespace, pool)
        live = {p["metadata"]["name"] for p in chosen if not p["metadata"].get("deletionTimestamp")}
        return pool if live == leaders else None

    pool = eventually(exact, f"InferencePool {name} to select exactly {sorted(leaders)}")
    for pod in selected(kube, namespace, pool):  # being deleted or not: only serving leaders
        labels = pod["metadata"]["labels"]
        assert labels["rackscale.dev/shard"] == "0", pod["metadata"]["name"]
        assert labels.get("rackscale.dev/role") == role, pod["metadata"]["name"]
    assert pool["spec"]["targetPorts"] == [{"number": port}]
    assert pool["spec"]["endpointPickerRef"] == {
        "group": "",
        "kind": "Service",
        "name": "vllm-epp",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }
    owner = pool["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("InferenceDeployment", body["metadata"]["uid"])
    assert condition(get(kube, namespace, name), "InferencePool")["status"] == "True"
    # Shards of more than one pod: the pool must leave workers out for this test to mean much.
    assert len(pods(kube, namespace, name)) > len(leaders)
    return leaders


def restart_a_replica(kube: client.ApiClient, namespace: str, name: str, leader: str) -> None:
    """Delete shard 1 of the replica `leader` leads; wait until that leader is a new pod."""

    def uid() -> str | None:
        """The leader's uid, while it is not being deleted."""
        for pod in pods(kube, namespace, name):
            meta = pod["metadata"]
            if meta["name"] == leader and not meta.get("deletionTimestamp"):
                return str(meta["uid"])
        return None

    old = uid()
    assert old is not None
    worker = leader[: -len("-0")] + "-1"
    client.CoreV1Api(kube).delete_namespaced_pod(worker, namespace, grace_period_seconds=0)

    def renewed() -> bool:
        now = uid()
        return now is not None and now != old

    eventually(renewed, f"replica of {leader} to restart with a new leader", timeout=120)


@pytest.mark.usefixtures("operator")
def test_a_plain_deployment_pool_follows_scaling_and_a_restart(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    body = inference_deployment("plain", pool, replicas=1, tensor=8)  # 2 pods a replica
    body["spec"]["port"] = 8080
    body["spec"]["inferencePool"] = PICKER
    apply(kube, llm, body)
    assert check(kube, llm, "plain", 1, role=None, port=8080) == {"plain-0-0"}
    patch(kube, llm, "plain", {"replicas": 3})
    assert check(kube, llm, "plain", 3, role=None, port=8080) == {
        "plain-0-0",
        "plain-1-0",
        "plain-2-0",
    }
    patch(kube, llm, "plain", {"replicas": 2})
    assert check(kube, llm, "plain", 2, role=None, port=8080) == {"plain-0-0", "plain-1-0"}
    restart_a_replica(kube, llm, "plain", "plain-1-0")
    assert check(kube, llm, "plain", 2, role=None, port=8080) == {"plain-0-0", "plain-1-0"}

    patch(kube, llm, "plain", {"inferencePool": None})  # removing the field deletes the pool
    eventually(lambda: pool_of(kube, llm, "plain") is None, "InferencePool plain to be deleted")
    assert condition(get(kube, llm, "plain"), "InferencePool") == {}


def roles_deployment(pool: str) -> dict[str, Any]:
    """Prefill (one pod of 4 GPUs) and decode (two pods of 4) in each serving group."""
    container = {
        "name": "server",
        "image": PAUSE,
        "resources": {"requests": {"cpu": "1"}},
    }
    template = {"spec": {"terminationGracePeriodSeconds": 0, "containers": [container]}}
    return {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "disagg"},
        "spec": {
            "replicas": 1,
            "port": 8000,
            "placement": {"rackPool": pool, "fallback": "Never"},
            "inferencePool": PICKER,
            "roles": [
                {"name": "prefill", "parallelism": {"tensor": 4}, "gpusPerPod": 4,
                 "port": 8100, "template": copy.deepcopy(template)},
                {"name": "decode", "parallelism": {"tensor": 8}, "gpusPerPod": 4,
                 "port": 8200, "template": copy.deepcopy(template)},
            ],
        },
    }  # fmt: skip


@pytest.mark.usefixtures("operator")
def test_with_roles_the_pool_selects_the_decode_leaders_through_scaling_and_a_restart(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, roles_deployment(pool))
    first = check(kube, llm, "disagg", 1, role="decode", port=8200)
    assert first == {"disagg-g0-decode-0-0"}
    patch(kube, llm, "disagg", {"replicas": 3})
    three = check(kube, llm, "disagg", 3, role="decode", port=8200)
    assert three == {f"disagg-g{g}-decode-0-0" for g in range(3)}
    patch(kube, llm, "disagg", {"replicas": 2})
    assert check(kube, llm, "disagg", 2, role="decode", port=8200) == {
        "disagg-g0-decode-0-0",
        "disagg-g1-decode-0-0",
    }
    restart_a_replica(kube, llm, "disagg", "disagg-g1-decode-0-0")
    assert check(kube, llm, "disagg", 2, role="decode", port=8200) == {
        "disagg-g0-decode-0-0",
        "disagg-g1-decode-0-0",
    }


@pytest.mark.usefixtures("operator")
def test_a_pool_deleted_or_edited_by_hand_comes_back(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    """The operator watches the pools it labels: one deleted by hand is made again, and one
    edited by hand is put back, with no change to the deployment."""
    body = inference_deployment("kept", pool, replicas=1, tensor=8)
    body["spec"]["inferencePool"] = PICKER
    apply(kube, llm, body)
    check(kube, llm, "kept", 1, role=None, port=8000)
    first = pool_of(kube, llm, "kept")
    assert first is not None
    api = client.CustomObjectsApi(kube)
    api.delete_namespaced_custom_object(*POOL, llm, inferencepools.PLURAL, "kept")

    def again() -> dict[str, Any] | None:
        now = pool_of(kube, llm, "kept")
        return now if now and now["metadata"]["uid"] != first["metadata"]["uid"] else None

    made = eventually(again, "InferencePool kept to be made again after its deletion")
    assert made["spec"] == first["spec"]

    edit = {"spec": {"targetPorts": [{"number": 9999}]}}
    api.patch_namespaced_custom_object(*POOL, llm, inferencepools.PLURAL, "kept", edit)

    def put_back() -> dict[str, Any] | None:
        now = pool_of(kube, llm, "kept")
        return now if now and now["spec"]["targetPorts"] == [{"number": 8000}] else None

    eventually(put_back, "InferencePool kept to be put back after an edit by hand")
