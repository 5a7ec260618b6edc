"""Reconciling against an in-memory API: placement, rollback, adoption, concurrency. No cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest

from rackscale.controller.cluster import ClusterView, slim_pod
from rackscale.controller.reconcile import Options, Reconciler
from rackscale.controller.worker import Worker
from tests.factory import hgx, nvl72

POOL = {
    "apiVersion": "rackscale.dev/v1alpha1",
    "kind": "RackPool",
    "metadata": {"name": "gb200", "generation": 1, "resourceVersion": "1"},
    "spec": {"nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-GB200"}}},
}


class FakeAPI:
    """Pods, Services, statuses and Events kept in dicts; kube-scheduler binds pins at once."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = {n["metadata"]["name"]: [n] for n in nodes}
        self.pods: dict[Any, list[dict[str, Any]]] = {}
        self.pools: dict[Any, list[dict[str, Any]]] = {"gb200": [POOL]}
        self.deployments: dict[Any, list[dict[str, Any]]] = {}
        self.services: set[tuple[str, str]] = set()
        self.events: list[tuple[str, str, str]] = []
        self.created = 0
        self.fail_after: int | None = None  # creates that succeed before one fails
        self.events_fail_for: set[str] = set()  # deployments whose Events the server refuses
        self.slow_deletes = False  # deleted pods stay, being deleted, until `finish_deletes`

    def view(self) -> ClusterView:
        view = ClusterView()
        view.bind(self.nodes, self.pods, self.pools, self.deployments)
        return view

    def apply(
        self,
        name: str,
        replicas: int,
        tensor: int = 8,
        data: int = 4,
        created: str = "2026-11-28T10:00:00Z",
        **placement: Any,
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "rackscale.dev/v1alpha1",
            "kind": "InferenceDeployment",
            "metadata": {
                "name": name,
                "namespace": "llm",
                "uid": f"uid-{name}",
                "generation": 1,
                "creationTimestamp": created,
            },
            "spec": {
                "replicas": replicas,
                "parallelism": {"tensor": tensor, "data": data},
                "gpusPerPod": 4,
                "placement": {"rackPool": "gb200", **placement},
                "template": {"spec": {"containers": [{"name": "server", "image": "vllm"}]}},
            },
        }
        self.deployments[("llm", name)] = [body]
        return body

    def status(self, name: str) -> dict[str, Any]:
        return self.deployments[("llm", name)][0].get("status") or {}

    async def create_pod(self, body: dict[str, Any]) -> str:
        await asyncio.sleep(0)  # let other reconciles run between writes
        if self.fail_after is not None and self.created >= self.fail_after:
            raise RuntimeError("the API server refused the pod")
        self.created += 1
        pod = {**body, "metadata": {**body["metadata"], "uid": str(uuid.uuid4())}}
        terms = (
            (body["spec"].get("affinity") or {})
            .get("nodeAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms", [{}])
        )
        fields = terms[0].get("matchFields") or []
        node = fields[0]["values"][0] if fields else "h200-00"
        pod["spec"] = {**body["spec"], "nodeName": node}
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        self.pods[(body["metadata"]["namespace"], body["metadata"]["name"])] = [slim_pod(pod)]
        return pod["metadata"]["uid"]

    async def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> None:
        if not self.slow_deletes:
            self.pods.pop((namespace, name), None)
        elif (namespace, name) in self.pods:
            (pod,) = self.pods[(namespace, name)]
            meta = {**pod["metadata"], "deletionTimestamp": "2026-11-28T10:00:00Z"}
            self.pods[(namespace, name)] = [{**pod, "metadata": meta}]

    def finish_deletes(self, count: int) -> int:
        """Let `count` of the pods being deleted go; returns how many are still going."""
        going = sorted(k for k, (p,) in self.pods.items() if p["metadata"].get("deletionTimestamp"))
        for key in going[:count]:
            del self.pods[key]
        return len(going[count:])

    async def ensure_service(self, body: dict[str, Any]) -> None:
        self.services.add((body["metadata"]["namespace"], body["metadata"]["name"]))

    async def patch_deployment_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self.deployments[(namespace, name)][0]["status"] = status

    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        self.pools[name][0]["status"] = status

    async def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        if obj["metadata"]["name"] in self.events_fail_for:
            raise RuntimeError("the API server refused the Event")
        self.events.append((obj["metadata"]["name"], reason, message))


def gpus_per_node(api: FakeAPI) -> Counter[str]:
    used: Counter[str] = Counter()
    for (pod,) in api.pods.values():
        limits = pod["spec"]["containers"][0]["resources"].get("limits") or {}
        used[pod["spec"]["nodeName"]] += int(limits.get("nvidia.com/gpu", 0))
    return used


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
    api.deployments[("llm", "filler")][0]["spec"]["replicas"] = 1
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
    api.deployments[("llm", "big")][0]["spec"]["template"]["metadata"] = {"labels": {"v": "2"}}
    asyncio.run(reconciler.reconcile_all())
    while api.finish_deletes(4):
        asyncio.run(reconciler.reconcile_all())
        assert api.status("small")["phase"] == "Pending"
        assert "is kept for llm/big" in api.status("small")["conditions"][0]["message"]
    asyncio.run(reconciler.reconcile_all())
    assert api.status("big")["phase"] == "Ready"
    assert api.status("big")["racks"] == [rack]
    assert api.status("small")["phase"] == "Pending"


def test_one_deployment_failing_spares_the_rest_of_the_pass(api: FakeAPI) -> None:
    api.apply("a", replicas=1)
    api.apply("b", replicas=1)
    api.events_fail_for = {"a"}
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    assert api.status("b")["phase"] == "Ready"
    assert api.status("a") == {}, "its pass failed before the status was written"
    assert max(gpus_per_node(api).values()) <= 4
    asyncio.run(reconciler.reconcile_all())
    assert api.status("a")["phase"] == "Ready", "the next pass adopts its pods"
    assert len(api.pods) == 16


def test_a_failed_write_leaves_no_pod_and_no_booking(api: FakeAPI) -> None:
    api.apply("a", replicas=1)
    api.fail_after = 3
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    assert api.pods == {}
    assert any(reason == "FailedCreate" for _, reason, _ in api.events)
    assert reconciler.snapshot().pools["gb200"].racks["clique-0000"].used == 0
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
    assert api.services == {("llm", "a"), ("llm", "a-shards")}
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
    api.deployments[("llm", "a")][0]["spec"]["parallelism"]["data"] = 2  # 16 GPUs now fit
    asyncio.run(reconciler.reconcile_all())
    assert api.status("a")["phase"] == "Ready"


def test_pool_status_is_written_only_when_it_changes(api: FakeAPI) -> None:
    writes: list[str] = []
    original = api.patch_pool_status

    async def counting(name: str, status: dict[str, Any]) -> None:
        writes.append(name)
        await original(name, status)

    api.patch_pool_status = counting  # type: ignore[method-assign]
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.refresh_pools())
    asyncio.run(reconciler.refresh_pools())
    assert writes == ["gb200"]
    assert api.pools["gb200"][0]["status"]["racks"] == 2
    api.apply("a", replicas=1)
    asyncio.run(reconciler.reconcile_all())
    asyncio.run(reconciler.refresh_pools())
    assert writes == ["gb200", "gb200"]
    assert api.pools["gb200"][0]["status"]["gpus"]["allocated"] == 32


def test_the_worker_reconciles_at_once_when_the_view_is_bound(api: FakeAPI) -> None:
    """Objects listed before binding need a pass even if no event follows."""
    api.apply("a", replicas=1)
    reconciler = Reconciler(ClusterView(), api, Options(resync=3600, debounce=0))
    worker = Worker(reconciler)

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0)  # the worker now waits for its first event
        worker.observe(api.nodes, api.pods, api.pools, api.deployments)
        async with asyncio.timeout(30):
            while api.status("a").get("phase") != "Ready":
                await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert worker.passes >= 1


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
    api.deployments[("llm", "a")][0]["spec"]["replicas"] = 0  # its pods start going away
    asyncio.run(reconciler.reconcile_all())
    assert not forced, "a graceful delete while every node answers"
    (pod,) = api.pods[("llm", "a-0-3")]
    (node,) = api.nodes[pod["spec"]["nodeName"]]
    node["status"]["conditions"] = [{"type": "Ready", "status": "Unknown"}]
    asyncio.run(reconciler.reconcile_all())
    assert "a-0-3" in forced, "its kubelet cannot confirm: only a forced delete ends it"
