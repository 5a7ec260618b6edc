"""ComputeDomains on a real API server and kube-scheduler: created, owned, claimed, replaced.

The node side of NVIDIA's DRA driver is the stand-in in e2e/computedomains (a test fixture): it
publishes one IMEX channel device per GB200 node and reports domains Ready. Allocating the
channel claims and binding the pods is the real kube-scheduler's work.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from e2e import objects
from e2e.support import (
    OPERATOR,
    apply,
    check_guarantees,
    condition,
    eventually,
    gb200_pool,
    get,
    inference_deployment,
    node_domains,
    pods,
    ready,
)

CD = ("resource.nvidia.com", "v1beta1")
DRA = ("resource.k8s.io", "v1")


def domains(kube: client.ApiClient, namespace: str) -> dict[str, dict[str, Any]]:
    items = objects.custom_items(
        client.CustomObjectsApi(kube).list_namespaced_custom_object(
            *CD, namespace, "computedomains"
        )
    )
    return {d["metadata"]["name"]: d for d in items}


def claims(kube: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    return objects.custom_items(
        client.CustomObjectsApi(kube).list_namespaced_custom_object(
            *DRA, namespace, "resourceclaims"
        )
    )


@pytest.mark.usefixtures("operator")
def test_a_replica_spanning_trays_gets_an_owned_domain_and_its_pods_allocated_claims(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, inference_deployment("moe", pool, replicas=2, tensor=8, data=2))
    body = ready(kube, llm, "moe", 2)
    found = domains(kube, llm)
    assert set(found) == {"moe-0", "moe-1"}
    for name, domain in found.items():
        owner = domain["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("InferenceDeployment", body["metadata"]["uid"])
        assert domain["spec"]["numNodes"] == 0
        assert domain["spec"]["channel"]["resourceClaimTemplate"]["name"] == f"{name}-channel"
        assert domain["status"]["status"] == "Ready"
    placements = body["status"]["placements"]
    assert [(p["computeDomain"], p["computeDomainReady"]) for p in placements] == [
        ("moe-0", True),
        ("moe-1", True),
    ]
    assert condition(body, "ComputeDomains")["status"] == "True"

    live = pods(kube, llm, "moe")
    assert len(live) == 8
    by_claim = {c["metadata"]["name"]: c for c in claims(kube, llm)}
    for pod in live:
        replica = pod["metadata"]["labels"]["rackscale.dev/replica"]
        [entry] = [
            c for c in pod["spec"]["resourceClaims"] if c["name"] == "compute-domain-channel"
        ]
        assert entry["resourceClaimTemplateName"] == f"moe-{replica}-channel"
        assert pod["spec"]["containers"][0]["resources"]["claims"] == [
            {"name": "compute-domain-channel"}
        ]
        [generated] = pod["status"]["resourceClaimStatuses"]
        claim = by_claim[generated["resourceClaimName"]]
        [result] = claim["status"]["allocation"]["devices"]["results"]
        assert result["driver"] == "compute-domain.nvidia.com"
        assert result["pool"] == pod["spec"]["nodeName"], "the channel of the pod's own node"
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_a_lost_shard_gets_its_replica_a_fresh_domain_and_delete_removes_them(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, inference_deployment("moe", pool, replicas=2, tensor=8, data=2))
    ready(kube, llm, "moe", 2)
    before = {n: d["metadata"]["uid"] for n, d in domains(kube, llm).items()}
    client.CoreV1Api(kube).delete_namespaced_pod("moe-1-2", llm, grace_period_seconds=0)

    def replaced() -> dict[str, str] | None:
        now = {n: d["metadata"]["uid"] for n, d in domains(kube, llm).items()}
        done = set(now) == {"moe-0", "moe-1"} and now["moe-1"] != before["moe-1"]
        return now if done else None

    after = eventually(replaced, "replica 1 to get a fresh ComputeDomain")
    assert after["moe-0"] == before["moe-0"], "the other replica keeps its domain"
    ready(kube, llm, "moe", 2)
    check_guarantees(kube)

    client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        "rackscale.dev", "v1alpha1", llm, "inferencedeployments", "moe"
    )
    eventually(lambda: not domains(kube, llm), "the garbage collector to delete the domains")


@pytest.mark.usefixtures("operator")
def test_no_node_ever_holds_two_domains_while_many_deployments_arrive_at_once(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    """Pods of 2 GPUs leave room on each 4-GPU tray that only a replica without a domain, or
    none, may take; a watcher samples every pod while they are placed."""
    core = client.CoreV1Api(kube)
    worst: dict[str, list[str]] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            response = core.list_namespaced_pod(llm, _preload_content=False)
            # Unloaded, the client hands back the HTTP response in place of the V1PodList.
            data = response.data  # type: ignore[attr-defined]
            live = [
                p
                for p in json.loads(data)["items"]
                if p["status"].get("phase") not in ("Succeeded", "Failed")
            ]
            for node, held in node_domains(live).items():
                if len(held) > len(worst.get(node, [])):
                    worst[node] = held
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    shapes = [(8, 2), (4, 2), (16, 2), (2, 2), (8, 4), (4, 1), (12, 2), (6, 2)]
    try:
        for i, (tensor, per_pod) in enumerate(shapes):
            apply(
                kube,
                llm,
                inference_deployment(
                    f"d{i}", pool, replicas=2, tensor=tensor, gpus_per_pod=per_pod
                ),
            )
        for i in range(len(shapes)):
            ready(kube, llm, f"d{i}", 2)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert worst, "the watcher saw no pod of any ComputeDomain"
    twice = {n: held for n, held in worst.items() if len(held) > 1}
    assert not twice, f"nodes holding two domain pods: {twice}"
    made = len(domains(kube, llm))
    assert made == 2 * sum(tensor // per_pod > 1 for tensor, per_pod in shapes)
    check_guarantees(kube)


@pytest.fixture
def slow_domains(
    kube: client.ApiClient,
    kubeconfig: str,
    crds: None,
    llm: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The test namespace, where the driver stand-in never reports a domain Ready, and an
    operator that gives a domain 6 s."""
    client.CoreV1Api(kube).patch_namespace(
        llm, {"metadata": {"labels": {"e2e.rackscale.dev/compute-domains": "never-ready"}}}
    )
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setenv("RACKSCALE_COMPUTE_DOMAIN_TIMEOUT", "6")
    with KopfRunner(OPERATOR, timeout=60) as runner:
        yield llm
    assert runner.exception is None, runner.output


def test_a_domain_that_never_turns_ready_holds_availability_and_restarts_its_replica(
    kube: client.ApiClient, pool: str, slow_domains: str
) -> None:
    llm = slow_domains
    apply(kube, llm, inference_deployment("moe", pool, replicas=1, tensor=8))

    def not_ready() -> dict[str, Any] | None:
        body = get(kube, llm, "moe")
        return body if condition(body, "ComputeDomains").get("reason") == "NotReady" else None

    body = eventually(not_ready, "the deployment to wait for its ComputeDomain")
    assert condition(body, "Available")["status"] == "False"
    assert body["status"]["readyReplicas"] == 0

    def restarted() -> bool:
        items = (
            client.CoreV1Api(kube)
            .list_namespaced_event(
                llm, field_selector="involvedObject.name=moe,reason=ReplicaRestarting"
            )
            .items
        )
        return any(
            "ComputeDomain moe-0 did not turn Ready within 6s" in (e.message or "") for e in items
        )

    eventually(restarted, "the replica to restart for its domain", timeout=60)


@pytest.mark.usefixtures("operator")
def test_a_pool_with_compute_domains_off_creates_none(
    kube: client.ApiClient, crds: None, llm: str
) -> None:
    with gb200_pool(kube, "off", computeDomains="Off") as name:
        apply(kube, llm, inference_deployment("moe", name, replicas=1, tensor=8, gpus_per_pod=2))
        ready(kube, llm, "moe", 1)
        assert not domains(kube, llm)
        live = pods(kube, llm, "moe")
        assert all("resourceClaims" not in p["spec"] for p in live)
        assert len({p["spec"]["nodeName"] for p in live}) < len(live), "best fit shares trays"
        assert "ComputeDomains" not in {
            c["type"] for c in get(kube, llm, "moe")["status"]["conditions"]
        }
