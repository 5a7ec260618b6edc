"""A HorizontalPodAutoscaler targets an InferenceDeployment through its scale subresource.

kube-controller-manager's HPA controller reads the scale subresource (`status.replicas`, the
leader pods' `status.selector`) and would scale `spec.replicas`. The local cluster has no metrics
API, so the HPA cannot compute a recommendation: the test shows the controller got the scale
(AbleToScale True, SucceededGetScale; currentReplicas from status.replicas) and parsed the
selector (it fails later, fetching the metrics of the selected pods, and not with
SelectorRequired or InvalidSelector). `kubectl scale` goes through the same subresource.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from kubernetes import client

from e2e import objects
from e2e.support import GROUP, VERSION, apply, eventually, get, inference_deployment, pods, ready


def scale(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return objects.custom(
        client.CustomObjectsApi(kube).get_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, "inferencedeployments", name
        )
    )


def hpa_status(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    api = client.AutoscalingV2Api(kube)
    return dict(api.read_namespaced_horizontal_pod_autoscaler(name, namespace).to_dict()["status"])


@pytest.mark.usefixtures("operator")
def test_an_hpa_reads_the_scale_subresource_and_its_selector(
    kube: client.ApiClient, kubectl: list[str], pool: str, llm: str
) -> None:
    apply(kube, llm, inference_deployment("served", pool, replicas=1, data=1))
    ready(kube, llm, "served", 1)

    current = scale(kube, llm, "served")
    assert current["spec"]["replicas"] == 1
    assert current["status"]["replicas"] == 1
    selector = current["status"]["selector"]
    assert selector == "rackscale.dev/deployment=served,rackscale.dev/leader=true"
    leaders = client.CoreV1Api(kube).list_namespaced_pod(llm, label_selector=selector).items
    assert [objects.name(p) for p in leaders] == ["served-0-0"]  # shard 0 of the one replica

    client.AutoscalingV2Api(kube).create_namespaced_horizontal_pod_autoscaler(
        llm,
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "served"},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "InferenceDeployment",
                    "name": "served",
                },
                "minReplicas": 1,
                "maxReplicas": 3,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 60},
                        },
                    }
                ],
            },
        },  # type: ignore[arg-type]  # a plain manifest
    )

    def reported() -> dict[str, Any] | None:
        status = hpa_status(kube, llm, "served")
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        return status if {"AbleToScale", "ScalingActive"} <= set(conditions) else None

    status = eventually(reported, "the HPA controller to report on served", timeout=120)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["AbleToScale"]["status"] == "True"
    assert conditions["AbleToScale"]["reason"] == "SucceededGetScale"
    assert status["current_replicas"] == 1
    active = conditions["ScalingActive"]
    assert active["reason"] not in ("SelectorRequired", "InvalidSelector"), active
    assert (active["status"], active["reason"]) == ("False", "FailedGetResourceMetric"), active
    assert "metrics" in active["message"], active

    # kubectl scale writes spec.replicas through the subresource; the operator follows.
    done = subprocess.run(
        [*kubectl, "scale", "-n", llm, "inferencedeployment/served", "--replicas=2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ready(kube, llm, "served", 2)
    assert scale(kube, llm, "served")["status"]["replicas"] == 2
    assert get(kube, llm, "served")["metadata"]["generation"] == 2
    eventually(
        lambda: hpa_status(kube, llm, "served").get("current_replicas") == 2,
        "the HPA to see 2 replicas",
        timeout=120,
    )
    assert len(pods(kube, llm, "served")) == 4  # two replicas of two 4-GPU shards
