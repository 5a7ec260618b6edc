"""A write the API server refuses shows in the deployment's status, and is retried with back-off:
a namespace whose ResourceQuota allows no Service, on a real API server."""

from __future__ import annotations

import pytest
from kubernetes import client

from e2e import objects
from e2e.support import apply, condition, eventually, get, inference_deployment, pods

QUOTA = "no-services"


def _quota(kube: client.ApiClient, namespace: str, services: int) -> None:
    """The ResourceQuota, with the status kube-controller-manager's quota controller gives it
    in its own time, written here at once: the API server's quota admission enforces
    `status.hard` against `status.used`, so the test does not wait on that controller."""
    core = client.CoreV1Api(kube)
    hard = {"services": str(services)}
    body = {"metadata": {"name": QUOTA}, "spec": {"hard": hard}}
    try:
        core.read_namespaced_resource_quota(QUOTA, namespace)
        core.patch_namespaced_resource_quota(QUOTA, namespace, body)
    except client.exceptions.ApiException as err:
        if err.status != 404:
            raise
        core.create_namespaced_resource_quota(namespace, body)  # type: ignore[arg-type]  # a plain manifest
    used = len(core.list_namespaced_service(namespace).items)
    status = {"status": {"hard": hard, "used": {"services": str(used)}}}
    core.patch_namespaced_resource_quota_status(QUOTA, namespace, status)


@pytest.mark.usefixtures("operator")
def test_a_service_refused_by_a_quota_is_said_and_goes_through_once_raised(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    _quota(kube, llm, 0)
    apply(kube, llm, inference_deployment("quota", pool, replicas=1, fallback="Never"))

    def refused() -> dict[str, str] | None:
        body = get(kube, llm, "quota")
        synced = condition(body, "Synced")
        return synced if synced.get("reason") == "WriteRefused" else None

    synced = eventually(refused, "the status to name the refused Service")
    assert synced["status"] == "False"
    assert f"apply Service {llm}/quota" in synced["message"]
    assert "exceeded quota: no-services" in synced["message"]
    body = get(kube, llm, "quota")
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    stalled = condition(body, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "WriteRefused")
    assert len(pods(kube, llm, "quota")) == 2, "its pods are created all the same"
    reasons = [
        e.reason
        for e in client.CoreV1Api(kube).list_namespaced_event(llm).items
        if e.involved_object.name == "quota"
    ]
    assert "WriteRefused" in reasons

    _quota(kube, llm, 10)  # raised: noticed when the deployment's back-off is due

    def applied() -> dict[str, str] | None:
        synced = condition(get(kube, llm, "quota"), "Synced")
        return synced if synced.get("status") == "True" else None

    eventually(applied, "the Service to go through once the quota is raised", timeout=240)
    core = client.CoreV1Api(kube)
    assert {objects.name(s) for s in core.list_namespaced_service(llm).items} >= {
        "quota",
        "quota-shards",
    }
    assert condition(get(kube, llm, "quota"), "Stalled")["status"] == "False"
