"""Reconciling against an in-memory API: placement, rollback, adoption, concurrency. No cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rackscale.controller import metrics
from rackscale.controller.cluster import ClusterCache
from rackscale.controller.reconcile import Options, Reconciler
from rackscale.controller.worker import Worker
from tests.factory import hgx, nvl72
from tests.fakeapi import FakeAPI, gpus_per_node


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI(nvl72(2) + hgx(2))


def test_two_deployments_reconciled_at_once_never_share_a_gpu(api: FakeAPI) -> None:
    for name in ("a", "b", "c", "d"):
        api.apply(name, replicas=1, data=8, fallback="Never")  # 64 GPUs: one per rack
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    used = gpus_per_node(api)
    assert max(used.values()) <= 4
    placed = [n for n in "abcd" if api.status(n).get("placedReplicas") == 1]
    assert len(placed) == 2
    for name in set("abcd") - set(placed):
        placed_cond = api.status(name)["conditions"][0]
        assert (placed_cond["type"], placed_cond["status"]) == ("Placed", "False")
        assert "no rack holds 64 free GPUs" in placed_cond["message"]


def test_a_pass_gives_room_to_the_largest_waiting_replica_before_an_older_small_one(
    api: FakeAPI,
) -> None:
    api.apply("small", replicas=1, data=1, created="2026-11-28T09:00:00Z", fallback="Never")
    api.apply("large", replicas=2, data=9, created="2026-11-28T10:00:00Z", fallback="Never")
    asyncio.run(Reconciler(api.view(), api).reconcile_all())
    assert api.status("large")["phase"] == "Ready"
    assert sorted(api.status("large")["racks"]) == ["clique-0000", "clique-0001"]
    assert api.status("small")["phase"] == "Pending"
    assert "no rack holds 8 free GPUs" in api.status("small")["conditions"][0]["message"]


def test_a_rack_freed_pod_by_pod_is_kept_for_the_largest_waiting_replica(api: FakeAPI) -> None:
    api.apply("filler", replicas=2, data=9, fallback="Never")  # 72 GPUs: both racks
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    api.apply("small", replicas=1, data=1, created="2026-11-28T11:00:00Z", fallback="Never")
    api.apply("large", replicas=1, data=9, created="2026-11-28T12:00:00Z", fallback="Never")
    asyncio.run(reconciler.reconcile_all())
    api.slow_deletes = True
    api.edit("filler", lambda spec: spec.update(replicas=1))
    asyncio.run(reconciler.reconcile_all())
    while api.finish_deletes(4):  # the 18 pods go four at a time, a pass after each step
        asyncio.run(reconciler.reconcile_all())
        assert api.status("large")["phase"] == "Pending"
        assert api.status("small")["phase"] == "Pending"
        assert "is kept for llm/large" in api.status("small")["conditions"][0]["message"]
    asyncio.run(reconciler.reconcile_all())
    assert api.status("large")["phase"] == "Ready"
    assert api.status("small")["phase"] == "Pending"
    assert max(gpus_per_node(api).values()) <= 4


def test_a_replaced_replica_gets_its_rack_back_though_a_smaller_one_waits(api: FakeAPI) -> None:
    api.apply("big", replicas=1, data=9, fallback="Never")  # 72 GPUs: a whole rack
    api.apply("filler", replicas=1, data=9, fallback="Never")  # the other rack
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    [rack] = api.status("big")["racks"]
    api.apply("small", replicas=1, data=1, fallback="Never")
    asyncio.run(reconciler.reconcile_all())
    assert api.status("small")["phase"] == "Pending"

    # A template change: big's old pods go away four at a time, a pass after each step.
    api.slow_deletes = True
    api.edit("big", lambda spec: spec["template"].update(metadata={"labels": {"v": "2"}}))
    asyncio.run(reconciler.reconcile_all())
    while api.finish_deletes(4):
        asyncio.run(reconciler.reconcile_all())
        assert api.status("small")["phase"] == "Pending"
        assert "is kept for llm/big" in api.status("small")["conditions"][0]["message"]
    asyncio.run(reconciler.reconcile_all())
    assert api.status("big")["phase"] == "Ready"
    assert api.status("big")["racks"] == [rack]
    assert api.status("small")["phase"] == "Pending"


def test_a_refused_event_spares_the_rest_of_the_pass_and_its_status(api: FakeAPI) -> None:
    """Events are best effort: a refused one is counted, and the deployment is neither
    stalled nor backed off for it."""
    api.apply("a", replicas=1)
    api.apply("b", replicas=1)
    api.events_fail_for = {"a"}
    refused = metrics.WRITE_FAILURES.labels(kind="Event")._value.get()
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    assert api.status("b")["phase"] == "Ready"
    assert api.status("a")["phase"] == "Ready", "its pods are created, its status written"
    synced = next(c for c in api.status("a")["conditions"] if c["type"] == "Synced")
    assert (synced["status"], synced["reason"]) == ("True", "Applied")
    assert metrics.WRITE_FAILURES.labels(kind="Event")._value.get() > refused
    assert reconciler.backoff.failures(("llm", "a")) == 0
    assert max(gpus_per_node(api).values()) <= 4
    assert len(api.pods) == 16


def test_a_failed_write_leaves_no_pod_and_no_booking(api: FakeAPI) -> None:
    api.apply("a", replicas=1)
    api.fail_after = 3
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    assert api.pods == {}
    refused = [m for _, reason, m in api.events if reason == "WriteRefused"]
    assert refused == [
        "the API server refused to create Pod llm/a-0-3: the API server refused the pod"
    ]
    assert api.status("a")["observedGeneration"] == 1, "the status is written all the same"
    assert reconciler.cache.snapshot().pools["gb200"].racks["clique-0000"].used == 0
    api.fail_after = None
    asyncio.run(reconciler.reconcile_all())
    assert len(api.pods) == 8
    assert api.status("a")["phase"] == "Ready"


def test_a_restarted_operator_adopts_what_exists(api: FakeAPI) -> None:
    api.apply("a", replicas=2)
    asyncio.run(Reconciler(api.view(), api).reconcile_all())
    before = {k: v[0]["metadata"]["uid"] for k, v in api.pods.items()}
    created = api.created
    asyncio.run(Reconciler(api.view(), api).reconcile_all())
    assert api.created == created
    assert {k: v[0]["metadata"]["uid"] for k, v in api.pods.items()} == before


def test_services_and_one_event_per_placement(api: FakeAPI) -> None:
    api.apply("a", replicas=2)
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    asyncio.run(reconciler.reconcile_all())
    assert set(api.services) == {("llm", "a"), ("llm", "a-shards")}
    # No DRA driver here: one warning that the replicas spanning trays lack ComputeDomains.
    assert [r for _, r, _ in api.events] == ["Placed", "Placed", "ComputeDomainsMissing"]


def test_unplaceable_is_reported_once_and_placed_when_room_appears(api: FakeAPI) -> None:
    api.apply("big", replicas=1, data=16, fallback="Never")  # 128 GPUs in one rack: never
    api.apply("a", replicas=1, data=16, fallback="Never")
    reconciler = Reconciler(api.view(), api)
    for _ in range(3):
        asyncio.run(reconciler.reconcile_all())
    assert [r for n, r, _ in api.events if n == "big"] == ["FailedPlacement"]
    assert api.pods == {}
    assert api.status("big")["phase"] == "Pending"
    api.edit("a", lambda spec: spec["parallelism"].update(data=2))  # 16 GPUs now fit
    asyncio.run(reconciler.reconcile_all())
    assert api.status("a")["phase"] == "Ready"


def test_pool_status_is_written_only_when_it_changes(api: FakeAPI) -> None:
    writes: list[str] = []
    original = api.patch_pool_status

    async def counting(name: str, status: dict[str, Any]) -> None:
        writes.append(name)
        await original(name, status)

    api.patch_pool_status = counting  # type: ignore[method-assign]
    reconciler = Reconciler(api.view(), api, Options(pool_interval=0))
    asyncio.run(reconciler.refresh_pools())
    asyncio.run(reconciler.refresh_pools())
    assert writes == ["gb200"]
    assert api.pools["gb200"][0]["status"]["racks"] == 2
    api.apply("a", replicas=1)
    asyncio.run(reconciler.reconcile_all())
    asyncio.run(reconciler.refresh_pools())
    assert writes == ["gb200", "gb200"]
    assert api.pools["gb200"][0]["status"]["gpus"]["allocated"] == 32


def test_the_worker_reconciles_at_once_when_the_cache_is_loaded(api: FakeAPI) -> None:
    """Objects listed before the first event need a pass even if no event follows."""
    api.apply("a", replicas=1)
    cache = ClusterCache()
    reconciler = Reconciler(cache, api, Options(resync=3600, debounce=0))
    worker = Worker(reconciler)

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0)  # the worker now waits for the cache to load
        api.view(cache)  # the first event: kopf's indices, fully listed
        worker.wake.set()
        async with asyncio.timeout(30):
            while api.status("a").get("phase") != "Ready":
                await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert worker.passes >= 1


def test_a_pass_with_nothing_changed_writes_nothing(api: FakeAPI) -> None:
    """Work in proportion to change: once settled, a pass reconciles no deployment."""
    for name in ("a", "b"):
        api.apply(name, replicas=1)
    reconciler = Reconciler(api.view(), api)
    for _ in range(3):  # placed, then the statuses the watch shows back
        asyncio.run(reconciler.reconcile_all())
    writes: list[str] = []
    original = api.patch_deployment_status

    async def counting(namespace: str, name: str, status: dict[str, Any]) -> None:
        writes.append(name)
        await original(namespace, name, status)

    api.patch_deployment_status = counting  # type: ignore[method-assign]
    assert not reconciler.pending
    asyncio.run(reconciler.reconcile_all())
    assert writes == []
    api.edit("b", lambda spec: spec.update(replicas=2))
    assert reconciler.pending
    asyncio.run(reconciler.reconcile_all())
    assert writes == ["b"], "only the deployment that changed is reconciled"
    assert api.status("b")["placedReplicas"] == 2


def test_a_replica_going_away_on_a_lost_node_is_force_deleted() -> None:
    api = FakeAPI(nvl72(2) + hgx(2))
    forced: list[str] = []
    plain_delete = api.delete_pod

    async def delete_pod(namespace: str, name: str, *, force: bool = False) -> None:
        if force:
            forced.append(name)
        await plain_delete(namespace, name, force=force)

    api.delete_pod = delete_pod  # type: ignore[method-assign]
    api.apply("a", replicas=1, fallback="Never")
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    api.slow_deletes = True
    api.edit("a", lambda spec: spec.update(replicas=0))  # its pods start going away
    asyncio.run(reconciler.reconcile_all())
    assert not forced, "a graceful delete while every node answers"
    (pod,) = api.pods[("llm", "a-0-3")]
    (node,) = api.nodes[pod["spec"]["nodeName"]]
    node["status"]["conditions"] = [{"type": "Ready", "status": "Unknown"}]
    api.touch("nodes", node["metadata"]["name"])
    asyncio.run(reconciler.reconcile_all())
    assert "a-0-3" in forced, "its kubelet cannot confirm: only a forced delete ends it"


def test_a_port_change_reaches_both_services(api: FakeAPI) -> None:
    api.apply("a", replicas=1)
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    ports = {k: s["spec"]["ports"][0]["port"] for k, s in api.services.items()}
    assert ports == {("llm", "a"): 8000, ("llm", "a-shards"): 8000}
    api.edit("a", lambda spec: spec.update(port=9000))
    for _ in range(3):  # the replica is replaced, and the Services applied again
        asyncio.run(reconciler.reconcile_all())
    ports = {k: s["spec"]["ports"][0]["port"] for k, s in api.services.items()}
    assert ports == {("llm", "a"): 9000, ("llm", "a-shards"): 9000}
    assert api.status("a")["phase"] == "Ready"
