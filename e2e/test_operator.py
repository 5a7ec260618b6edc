"""The operator, run in-process with kopf, against a real API server, kube-scheduler and kwok.

Every test works in its own namespace and RackPool, waits by polling with a deadline, and checks
every pod's node against the placement guarantees.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import objects, profiles
from e2e.support import (
    CLIQUE,
    GPU,
    GROUP,
    OPERATOR,
    UNSCHEDULABLE_TIMEOUT,
    VERSION,
    apply,
    check_guarantees,
    condition,
    events,
    eventually,
    get,
    inference_deployment,
    patch,
    pods,
    ready,
    replica_uids,
    uids,
    waiting,
)
from rackscale.topology import pinned_node


def whole_rack(name: str, pool: str, replicas: int) -> dict[str, Any]:
    """An InferenceDeployment of 72-GPU replicas (a whole rack each) that never falls back."""
    return inference_deployment(name, pool, replicas=replicas, data=9, fallback="Never")


# ---- tests ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("operator")
def test_rack_mode_replicas_are_placed_bound_and_ready(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(
        kube,
        llm,
        inference_deployment(
            "moe", pool, replicas=2, tensor=8, data=4, expert=32, fallback="Never"
        ),
    )
    body = ready(kube, llm, "moe", 2)
    status = body["status"]
    assert status["mode"] == "Rack"
    assert status["gpus"] == 64
    assert status["ready"] == "2/2"
    assert len(status["racks"]) == 2, "spread: two replicas on two racks"
    for name in ("Placed", "Available"):
        assert condition(body, name)["status"] == "True"
    assert condition(body, "Degraded")["status"] == "False"

    live = pods(kube, llm, "moe")
    assert len(live) == 16
    for pod in live:
        assert pod["spec"]["nodeName"] == pinned_node(pod)
        assert pod["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        replica = pod["metadata"]["labels"]["rackscale.dev/replica"]
        assert env["MODEL"] == "moe"
        assert env["RACKSCALE_LEADER_ADDRESS"] == f"moe-{replica}-0.moe-shards.{llm}.svc"
        assert env["RACKSCALE_WORLD_SIZE"] == "32"
    check_guarantees(kube)

    core = client.CoreV1Api(kube)
    shards = objects.service_spec(core.read_namespaced_service("moe-shards", llm))
    assert shards.cluster_ip == "None"
    assert shards.publish_not_ready_addresses is True
    leaders = objects.service_spec(core.read_namespaced_service("moe", llm))
    assert leaders.selector == {
        "rackscale.dev/deployment": "moe",
        "rackscale.dev/leader": "true",
    }
    eventually(lambda: "Placed" in events(kube, llm, "moe"), "a Placed event")

    def pool_shows_it() -> dict[str, Any] | None:
        rp = objects.custom(
            client.CustomObjectsApi(kube).get_cluster_custom_object(
                GROUP, VERSION, "rackpools", pool
            )
        )
        status = rp.get("status") or {}
        holding = [r for r in status.get("rackStatuses", []) if f"{llm}/moe" in r["deployments"]]
        return status if len(holding) == 2 and status.get("gpus", {}).get("allocated") else None

    status = eventually(pool_shows_it, f"RackPool {pool} to show {llm}/moe on two racks")
    assert status["racks"] == 4
    assert status["healthyRacks"] == 4
    assert status["freeRacks"] == 2
    assert status["gpus"]["allocated"] >= 64
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


@pytest.mark.usefixtures("operator")
def test_concurrent_applies_never_share_a_gpu(kube: client.ApiClient, pool: str, llm: str) -> None:
    names = [f"m{i}" for i in range(5)]
    for name in names:  # five 64-GPU replicas, four 72-GPU racks: one must wait
        apply(kube, llm, inference_deployment(name, pool, replicas=1, data=8, fallback="Never"))

    def settled() -> list[dict[str, Any]] | None:
        bodies = [get(kube, llm, n) for n in names]
        phases = Counter((b.get("status") or {}).get("phase") for b in bodies)
        return bodies if phases == Counter({"Ready": 4, "Pending": 1}) else None

    bodies = eventually(settled, "four deployments Ready and one Pending")
    check_guarantees(kube)
    racks = [b["status"]["racks"][0] for b in bodies if b["status"]["phase"] == "Ready"]
    assert len(set(racks)) == 4
    waiting = next(b for b in bodies if b["status"]["phase"] == "Pending")
    assert condition(waiting, "Placed")["reason"] == "Unplaceable"
    assert "no rack holds 64 free GPUs" in condition(waiting, "Placed")["message"]

    # Capacity freed: the waiting one is placed without being touched.
    done = next(b for b in bodies if b["status"]["phase"] == "Ready")["metadata"]["name"]
    client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        GROUP, VERSION, llm, "inferencedeployments", done
    )
    ready(kube, llm, waiting["metadata"]["name"], 1)
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_freed_room_goes_to_the_largest_waiting_replica(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, whole_rack("filler", pool, replicas=4))
    ready(kube, llm, "filler", 4)

    apply(kube, llm, inference_deployment("small", pool, replicas=1, fallback="Never"))
    waiting(kube, llm, "small")
    apply(kube, llm, whole_rack("large", pool, replicas=1))
    waiting(kube, llm, "large")

    # One rack freed: taken in arrival order, the small replica would open it and the large one
    # would wait for good; the pass gives it to the large one.
    patch(kube, llm, "filler", {"replicas": 3})
    ready(kube, llm, "large", 1)
    small = get(kube, llm, "small")
    assert small["status"]["phase"] == "Pending"
    assert "no rack holds 8 free GPUs" in condition(small, "Placed")["message"]
    assert pods(kube, llm, "small") == []
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_a_replaced_replica_returns_to_its_rack_while_a_smaller_one_waits(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, whole_rack("filler", pool, replicas=3))
    apply(kube, llm, whole_rack("big", pool, replicas=1))
    ready(kube, llm, "filler", 3)
    [rack] = ready(kube, llm, "big", 1)["status"]["racks"]
    apply(kube, llm, inference_deployment("small", pool, replicas=1, fallback="Never"))
    waiting(kube, llm, "small")
    old = set(uids(kube, llm, "big").values())
    template = inference_deployment("big", pool, replicas=1)["spec"]["template"]
    template["metadata"]["labels"]["version"] = "2"
    patch(kube, llm, "big", {"template": template})

    # While the old pods go, the rack is kept for the replica that will come back to it.
    def replaced() -> dict[str, Any] | None:
        body = get(kube, llm, "big")
        fresh = set(uids(kube, llm, "big").values())
        done = (body.get("status") or {}).get("phase") == "Ready" and len(fresh) == 18
        return body if done and not (fresh & old) else None

    body = eventually(replaced, "big's replica to be replaced")
    assert body["status"]["racks"] == [rack]
    assert get(kube, llm, "small")["status"]["phase"] == "Pending"
    assert pods(kube, llm, "small") == []
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_dense_model_falls_back_to_device_plugin_on_hgx_nodes(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    # 8-GPU pods cannot fit a 4-GPU tray: the pool cannot hold it, the H200 nodes can.
    apply(kube, llm, inference_deployment("dense", pool, replicas=1, tensor=8, gpus_per_pod=8))
    body = ready(kube, llm, "dense", 1)
    assert body["status"]["mode"] == "DevicePlugin"
    placed = condition(body, "Placed")
    assert (placed["status"], placed["reason"]) == ("True", "DevicePluginFallback")
    assert "cannot fit one node" in placed["message"]
    (pod,) = pods(kube, llm, "dense")
    assert pinned_node({"spec": {k: v for k, v in pod["spec"].items() if k != "nodeName"}}) is None
    assert pod["spec"]["nodeName"].startswith("h200-")
    assert "rackscale.dev/rack" not in pod["metadata"]["labels"]
    eventually(
        lambda: "DevicePluginFallback" in events(kube, llm, "dense"), "a DevicePluginFallback event"
    )
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_impossible_deployment_is_not_placed_and_says_why(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, inference_deployment("huge", pool, replicas=1, data=16, fallback="Never"))

    def refused() -> dict[str, Any] | None:
        body = get(kube, llm, "huge")
        return body if condition(body, "Placed").get("reason") == "Unplaceable" else None

    body = eventually(refused, "Placed=False on an impossible deployment")
    assert condition(body, "Placed")["status"] == "False"
    assert (
        "no rack holds 128 free GPUs in one NVLink domain" in condition(body, "Placed")["message"]
    )
    assert body["status"]["phase"] == "Pending"
    assert condition(body, "Progressing")["reason"] == "Stalled"
    eventually(lambda: "FailedPlacement" in events(kube, llm, "huge"), "a FailedPlacement event")
    assert pods(kube, llm, "huge") == []


@pytest.mark.usefixtures("operator")
def test_a_deleted_pod_restarts_its_replica_and_only_it(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, inference_deployment("r", pool, replicas=2, tensor=8))
    ready(kube, llm, "r", 2)
    keep = replica_uids(kube, llm, "r", 0)
    lost = replica_uids(kube, llm, "r", 1)
    client.CoreV1Api(kube).delete_namespaced_pod("r-1-1", llm)

    def replaced() -> bool:
        now = replica_uids(kube, llm, "r", 1)
        return len(now) == 2 and not (now & lost)

    eventually(replaced, "replica 1 to be recreated whole")
    ready(kube, llm, "r", 2)
    assert replica_uids(kube, llm, "r", 0) == keep, "replica 0 kept running untouched"
    assert "ReplicaRestarting" in events(kube, llm, "r")
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_scaling_removes_and_adds_the_highest_indexes(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, inference_deployment("s", pool, replicas=3, tensor=8))
    ready(kube, llm, "s", 3)
    zero = replica_uids(kube, llm, "s", 0)
    patch(kube, llm, "s", {"replicas": 1})
    ready(kube, llm, "s", 1)
    eventually(
        lambda: (
            {p["metadata"]["labels"]["rackscale.dev/replica"] for p in pods(kube, llm, "s")}
            == {"0"}
        ),
        "replicas 1 and 2 to be removed",
    )
    assert replica_uids(kube, llm, "s", 0) == zero
    patch(kube, llm, "s", {"replicas": 2})
    ready(kube, llm, "s", 2)
    assert replica_uids(kube, llm, "s", 0) == zero
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_a_template_change_replaces_replicas_on_their_racks(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, inference_deployment("t", pool, replicas=2, tensor=8, data=2))
    before = ready(kube, llm, "t", 2)
    racks = {p["replica"]: p["racks"] for p in before["status"]["placements"]}
    old = set(uids(kube, llm, "t").values())
    template = inference_deployment("t", pool, replicas=2)["spec"]["template"]
    template["metadata"]["labels"]["version"] = "2"
    patch(kube, llm, "t", {"template": template})

    def updated() -> bool:
        live = pods(kube, llm, "t")
        return len(live) == 8 and all(p["metadata"]["labels"].get("version") == "2" for p in live)

    eventually(updated, "every pod to carry the new template")
    after = ready(kube, llm, "t", 2)
    assert not (set(uids(kube, llm, "t").values()) & old)
    assert {p["replica"]: p["racks"] for p in after["status"]["placements"]} == racks
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_a_pin_that_cannot_schedule_goes_back_to_placement(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    # Trays have 144 CPUs: kube-scheduler can never bind these pins, whatever the GPUs say.
    body = inference_deployment(
        "stuck", pool, replicas=1, tensor=4, resources={"requests": {"cpu": "500"}}
    )
    apply(kube, llm, body)
    first = eventually(lambda: replica_uids(kube, llm, "stuck", 0), "the pinned pod")
    (pod,) = pods(kube, llm, "stuck")
    assert pinned_node(pod)
    assert not pod["spec"].get("nodeName"), "kube-scheduler cannot bind it"
    eventually(
        lambda: "ReplicaRestarting" in events(kube, llm, "stuck"),
        "the unschedulable replica to be sent back to placement",
        timeout=UNSCHEDULABLE_TIMEOUT * 6,
    )
    eventually(
        lambda: (uids := replica_uids(kube, llm, "stuck", 0)) and not (uids & first),
        "the replica to be placed again",
        timeout=UNSCHEDULABLE_TIMEOUT * 6,
    )
    body = get(kube, llm, "stuck")
    assert body["status"]["readyReplicas"] == 0
    check_guarantees(kube)


@pytest.mark.usefixtures("crds")
def test_a_restarted_operator_adopts_without_moving_anything(
    kube: client.ApiClient,
    kubeconfig: str,
    pool: str,
    llm: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    with KopfRunner(OPERATOR, timeout=60) as first:
        apply(kube, llm, inference_deployment("a", pool, replicas=2, tensor=8, data=2))
        ready(kube, llm, "a", 2)
    assert first.exception is None, first.output
    before = uids(kube, llm, "a")
    with KopfRunner(OPERATOR, timeout=60) as second:
        # Scaling up proves the new operator is acting; nothing that ran may be recreated.
        patch(kube, llm, "a", {"replicas": 3})
        ready(kube, llm, "a", 3)
        after = uids(kube, llm, "a")
        assert {k: after[k] for k in before} == before
        assert len(after) == len(before) + 4
    assert second.exception is None, second.output
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_deleting_the_deployment_removes_everything_it_created(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, inference_deployment("d", pool, replicas=1, tensor=8))
    ready(kube, llm, "d", 1)
    client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        GROUP, VERSION, llm, "inferencedeployments", "d"
    )
    core = client.CoreV1Api(kube)
    eventually(lambda: not pods(kube, llm, "d"), "the pods to be garbage-collected")
    eventually(
        lambda: not core.list_namespaced_service(llm).items,
        "the services to be garbage-collected",
    )


@pytest.mark.usefixtures("crds")
def test_invalid_rackpool_is_refused_naming_the_field(kube: client.ApiClient) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RackPool",
        "metadata": {"name": f"bad-{uuid.uuid4().hex[:6]}"},
        "spec": {"nvlinkDomain": "Galaxy", "gpusPerRack": 0},
    }
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(kube).create_cluster_custom_object(
            GROUP, VERSION, "rackpools", body
        )
    assert refused.value.status == 422
    assert refused.value.body, "the API server refused without a body"
    message = json.loads(refused.value.body)["message"]
    assert "spec.nvlinkDomain" in message
    assert "spec.gpusPerRack" in message


@pytest.fixture
def small_racks(kube: client.ApiClient, crds: None) -> Iterator[tuple[str, dict[str, str]]]:
    """Two racks of two 4-GPU kwok trays, in a pool of their own: nodes a test may delete."""
    tag = uuid.uuid4().hex[:6]
    product = f"E2E-{tag}"
    core = client.CoreV1Api(kube)
    racks: dict[str, str] = {}
    for rack in ("a", "b"):
        for tray in range(2):
            name = f"e2e-{tag}-{rack}{tray}"
            racks[name] = f"{tag}-{rack}"
            resources = {"cpu": "64", "memory": "256Gi", "pods": "110", GPU: "4"}
            core.create_node(
                {  # type: ignore[arg-type]  # a plain manifest
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "nvidia.com/gpu.product": product,
                            CLIQUE: f"{tag}-{rack}",
                        },
                        "annotations": {profiles.KWOK_ANNOTATION: "fake"},
                    },
                    "status": {"capacity": resources, "allocatable": resources},
                }
            )
    objects_api = client.CustomObjectsApi(kube)
    pool = f"e2e-{tag}"
    objects_api.create_cluster_custom_object(
        GROUP,
        VERSION,
        "rackpools",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RackPool",
            "metadata": {"name": pool},
            "spec": {
                "nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": product}},
                "gpusPerRack": 8,
            },
        },
    )

    def all_ready() -> bool:
        return all(objects.node_ready(core.read_node(n)) for n in racks)

    eventually(all_ready, "the test's kwok trays to be Ready", timeout=60)
    yield pool, racks
    objects_api.delete_cluster_custom_object(GROUP, VERSION, "rackpools", pool)
    for name in racks:
        try:
            core.delete_node(name)
        except ApiException as err:
            if err.status != 404:
                raise


@pytest.mark.usefixtures("operator")
def test_a_lost_node_moves_its_replica_to_another_rack(
    kube: client.ApiClient, small_racks: tuple[str, dict[str, str]], llm: str
) -> None:
    pool, racks = small_racks
    apply(kube, llm, inference_deployment("n", pool, replicas=1, tensor=8, fallback="Never"))
    ready(kube, llm, "n", 1)
    first = {p["spec"]["nodeName"] for p in pods(kube, llm, "n")}
    (rack,) = {racks[n] for n in first}
    client.CoreV1Api(kube).delete_node(sorted(first)[0])

    def moved() -> set[str] | None:
        live = pods(kube, llm, "n")
        nodes = {p["spec"].get("nodeName") for p in live}
        if len(live) != 2 or None in nodes or {racks.get(str(n)) for n in nodes} == {rack}:
            return None
        return {racks[str(n)] for n in nodes}

    assert eventually(moved, "the replica to move whole to the other rack") != {rack}
    ready(kube, llm, "n", 1)
    assert "ReplicaRestarting" in events(kube, llm, "n")
    check_guarantees(kube)


@pytest.mark.usefixtures("operator")
def test_cost_and_memory_show_in_status_and_in_kubectl_wide(
    kube: client.ApiClient, pool: str, llm: str, kubectl: list[str]
) -> None:
    objects_api = client.CustomObjectsApi(kube)
    price = {"spec": {"pricing": {"perGpuHour": "3.20", "currency": "USD"}}}
    objects_api.patch_cluster_custom_object(GROUP, VERSION, "rackpools", pool, price)
    body = inference_deployment("priced", pool, replicas=1, tensor=8, fallback="Never")
    body["spec"]["model"] = {"name": "llama-405b", "parametersBillions": 405, "precision": "fp8"}
    apply(kube, llm, body)
    status = ready(kube, llm, "priced", 1)["status"]
    # By hand: 8 GPUs x 3.20 = 25.60 an hour; 405e9 bytes = 386,239 MiB (rounded up) + 2 GiB x 8.
    assert (status["costPerHour"], status["currency"]) == ("25.60", "USD")
    assert status["memoryNeededMiB"] == 386239 + 8 * 2048
    assert status["placements"][0]["gpuMemoryMiB"] == 8 * 189471  # the profile's GB200 label

    wide = subprocess.run(
        [*kubectl, "get", "idep", "-n", llm, "-o", "wide"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert wide[0].split()[-2:] == ["COST/H", "CURRENCY"]
    assert wide[1].split()[-2:] == ["25.60", "USD"]
    short = subprocess.run(
        [*kubectl, "get", "idep", "-n", llm], capture_output=True, text=True, check=True
    ).stdout
    assert "COST/H" not in short

    def priced() -> dict[str, Any] | None:
        pool_status = objects.custom(
            objects_api.get_cluster_custom_object(GROUP, VERSION, "rackpools", pool)
        )
        found = (pool_status.get("status") or {}).get("cost")
        return pool_status["status"] if found else None

    pool_status = eventually(priced, f"RackPool {pool} to show its idle cost")
    cost, gpus = pool_status["cost"], pool_status["gpus"]
    assert Decimal(cost["idlePerHour"]) == Decimal("3.20") * gpus["free"]
    assert Decimal(cost["fragmentedPerHour"]) == Decimal("3.20") * pool_status["fragmentedGpus"]
    assert pool_status["fragmentedGpus"] == 72 - 8  # the one rack in use keeps 64 free
