"""Reconciling replicas with ComputeDomains against an in-memory API. No cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rackscale.controller.reconcile import Options, Reconciler
from tests.factory import hgx, nvl72
from tests.fakeapi import FakeAPI


def DomainAPI(nodes: list[dict[str, Any]], *, served: bool = True) -> FakeAPI:  # noqa: N802
    """FakeAPI whose API server serves ComputeDomains (or not)."""
    return FakeAPI(nodes, domains_served=served)


@pytest.fixture
def api() -> FakeAPI:
    return DomainAPI(nvl72(2) + hgx(2))


def run(reconciler: Reconciler) -> None:
    asyncio.run(reconciler.reconcile_all())


def test_a_replica_spanning_trays_gets_a_domain_and_its_pods_claim_it(api: FakeAPI) -> None:
    api.apply("r1", replicas=2, tensor=8, data=2, fallback="Never")  # 16 GPUs: 4 trays each
    run(Reconciler(api.view(), api))
    assert api.created_domains == ["r1-0", "r1-1"]
    pods = [p for (p,) in api.pods.values()]
    assert len(pods) == 8
    for pod in pods:
        replica = pod["metadata"]["labels"]["rackscale.dev/replica"]
        assert pod["metadata"]["labels"]["rackscale.dev/compute-domain"] == f"r1-{replica}"
    nodes = [p["spec"]["nodeName"] for p in pods]
    assert len(set(nodes)) == len(nodes)  # one pod per tray
    status = api.status("r1")
    assert [p["computeDomain"] for p in status["placements"]] == ["r1-0", "r1-1"]
    assert all(p["computeDomainReady"] for p in status["placements"])
    domains = {c["type"]: c for c in status["conditions"]}["ComputeDomains"]
    assert (domains["status"], domains["reason"]) == ("True", "Ready")
    assert status["phase"] == "Ready"


def test_a_domain_not_ready_holds_availability_then_restarts_its_replica(api: FakeAPI) -> None:
    api.ready = False
    api.apply("r1", replicas=1, tensor=8, fallback="Never")
    reconciler = Reconciler(api.view(), api, Options(compute_domain_timeout=1e9))
    run(reconciler)
    status = api.status("r1")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Available"]["status"] == "False"
    assert status["readyReplicas"] == 0
    assert conditions["ComputeDomains"]["reason"] == "NotReady"
    assert status["placements"][0]["computeDomainReady"] is False

    reconciler.options.compute_domain_timeout = 0  # now long past: restart it as a unit
    reconciler.cache.mark(None)  # as a resync does
    run(reconciler)
    assert api.deleted_domains == ["r1-0"]
    assert any(reason == "ReplicaRestarting" for _, reason, _ in api.events)
    assert "ComputeDomain r1-0 did not turn Ready" in str(api.events)
    run(reconciler)  # placed again, with a fresh domain
    assert api.created_domains == ["r1-0", "r1-0"]


def test_a_lost_shard_gives_its_replica_a_fresh_domain(api: FakeAPI) -> None:
    api.apply("r1", replicas=2, tensor=8, fallback="Never")
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    first = {k: v[0]["metadata"]["uid"] for k, v in api.domains.items()}
    (pod,) = api.pods[("llm", "r1-1-1")]
    pod["status"] = {"phase": "Failed"}  # its container exited for good
    api.touch("pods", ("llm", "r1-1-1"))
    run(reconciler)
    assert api.deleted_domains == ["r1-1"]
    run(reconciler)
    after = {k: v[0]["metadata"]["uid"] for k, v in api.domains.items()}
    assert after[("llm", "r1-0")] == first[("llm", "r1-0")]  # the other replica kept its own
    assert after[("llm", "r1-1")] != first[("llm", "r1-1")]
    assert api.status("r1")["phase"] == "Ready"


def test_a_leftover_domain_is_deleted_and_waited_for(api: FakeAPI) -> None:
    api.apply("r1", replicas=1, tensor=8, fallback="Never")
    left = {
        "metadata": {
            "name": "r1-0",
            "namespace": "llm",
            "labels": {"rackscale.dev/deployment": "r1", "rackscale.dev/replica": "0"},
        }
    }
    api.domains[("llm", "r1-0")] = [left]
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    assert api.deleted_domains == ["r1-0"]
    assert not api.pods  # it waited for the old domain to go
    run(reconciler)
    assert api.created_domains == ["r1-0"]
    assert len(api.pods) == 8  # 32 GPUs, 4 a tray


def test_scaling_down_deletes_the_domains_of_removed_replicas(api: FakeAPI) -> None:
    api.apply("r1", replicas=2, tensor=8, fallback="Never")
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    api.edit("r1", lambda spec: spec.update(replicas=1))
    run(reconciler)
    assert api.deleted_domains == ["r1-1"]
    assert set(api.domains) == {("llm", "r1-0")}


def test_without_the_crd_a_condition_and_one_event_say_nvlink_is_not_set_up() -> None:
    api = DomainAPI(nvl72(2) + hgx(2), served=False)
    api.apply("r1", replicas=1, tensor=8, fallback="Never")
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    run(reconciler)
    assert api.created_domains == []
    status = api.status("r1")
    assert status["phase"] == "Ready"  # it runs, at network speed between trays
    domains = {c["type"]: c for c in status["conditions"]}["ComputeDomains"]
    assert (domains["status"], domains["reason"]) == ("False", "NotInstalled")
    assert "computedomains.resource.nvidia.com" in domains["message"]
    warnings = [e for e in api.events if e[1] == "ComputeDomainsMissing"]
    assert len(warnings) == 1
    asyncio.run(reconciler.refresh_pools())
    pool = {c["type"]: c for c in api.pools["gb200"][0]["status"]["conditions"]}
    assert pool["ComputeDomains"]["reason"] == "NotInstalled"


def test_a_pool_with_compute_domains_off_shows_no_such_condition() -> None:
    api = DomainAPI(nvl72(2) + hgx(2), served=False)
    api.pools["gb200"][0]["spec"]["computeDomains"] = "Off"
    api.apply("r1", replicas=1, tensor=8, fallback="Never")
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    assert "ComputeDomains" not in {c["type"] for c in api.status("r1")["conditions"]}
    assert not [e for e in api.events if e[1] == "ComputeDomainsMissing"]
