"""Reconciling serving groups (spec.roles) against an in-memory API: both roles in one rack,
scaling keeps the ratio, a lost role replica restarts alone or with its whole group."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from rackscale.controller.reconcile import Reconciler
from tests.factory import hgx, nvl72
from tests.fakeapi import FakeAPI

TEMPLATE = {"spec": {"containers": [{"name": "server", "image": "vllm"}]}}


def apply_disagg(api: FakeAPI, replicas: int = 1, colocate: str = "Rack") -> None:
    """Shaped as examples/deepseek-r1-disagg.yaml: 1 prefill of 8 GPUs, 1 decode of 32."""
    body = {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {
            "name": "ds",
            "namespace": "llm",
            "uid": "uid-ds",
            "generation": 1,
            "creationTimestamp": "2026-11-28T10:00:00Z",
        },
        "spec": {
            "replicas": replicas,
            "placement": {"rackPool": "gb200", "colocate": colocate, "fallback": "Never"},
            "roles": [
                {
                    "name": "prefill",
                    "replicas": 1,
                    "parallelism": {"data": 8, "expert": 8},
                    "gpusPerPod": 4,
                    "template": TEMPLATE,
                },
                {
                    "name": "decode",
                    "replicas": 1,
                    "parallelism": {"data": 32, "expert": 32},
                    "gpusPerPod": 4,
                    "template": TEMPLATE,
                },
            ],
        },
    }
    api.deployments[("llm", "ds")] = [body]
    api.touch("deployments", ("llm", "ds"))


def pods(api: FakeAPI, name: str = "ds") -> list[dict[str, Any]]:
    """The live pods of one deployment."""
    return [
        p
        for (p,) in api.pods.values()
        if not p["metadata"].get("deletionTimestamp")
        and p["metadata"]["labels"]["rackscale.dev/deployment"] == name
    ]


def racks_by_group(api: FakeAPI) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for pod in pods(api):
        labels = pod["metadata"]["labels"]
        out.setdefault(labels["rackscale.dev/group"], set()).add(labels["rackscale.dev/rack"])
    return out


def roles(api: FakeAPI) -> Counter[tuple[str, str]]:
    """Pods by (group, role)."""
    return Counter(
        (
            p["metadata"]["labels"]["rackscale.dev/group"],
            p["metadata"]["labels"]["rackscale.dev/role"],
        )
        for p in pods(api)
    )


def run(reconciler: Reconciler, passes: int = 1) -> None:
    for _ in range(passes):
        asyncio.run(reconciler.reconcile_all())


def test_a_serving_group_is_placed_whole_in_one_rack() -> None:
    api = FakeAPI(nvl72(2) + hgx(2))
    apply_disagg(api)
    run(Reconciler(api.view(), api))
    assert roles(api) == {("0", "prefill"): 2, ("0", "decode"): 8}
    assert [len(r) for r in racks_by_group(api).values()] == [1]
    status = api.status("ds")
    assert status["phase"] == "Ready"
    assert (status["readyReplicas"], status["ready"]) == (1, "1/1")
    assert status["selector"] == (
        "rackscale.dev/deployment=ds,rackscale.dev/leader=true,rackscale.dev/role=decode"
    )
    assert status["gpus"] == 40
    assert {(p["group"], p["role"]) for p in status["placements"]} == {
        (0, "prefill"),
        (0, "decode"),
    }


def uids(api: FakeAPI, role: str) -> set[str]:
    return {
        p["metadata"]["uid"]
        for p in pods(api)
        if p["metadata"]["labels"]["rackscale.dev/role"] == role
    }


def lose_pod(api: FakeAPI, name: str) -> None:
    del api.pods[("llm", name)]
    api.touch("pods", ("llm", name))


def test_scaling_adds_and_removes_whole_groups_keeping_the_ratio() -> None:
    api = FakeAPI(nvl72(2) + hgx(2))
    apply_disagg(api)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    api.edit("ds", lambda spec: spec.update(replicas=2))
    run(reconciler)
    assert roles(api) == {
        ("0", "prefill"): 2,
        ("0", "decode"): 8,
        ("1", "prefill"): 2,
        ("1", "decode"): 8,
    }
    assert all(len(racks) == 1 for racks in racks_by_group(api).values())
    status = api.status("ds")
    assert (status["replicas"], status["readyReplicas"], status["ready"]) == (2, 2, "2/2")
    assert sorted(p["replica"] for p in status["placements"]) == [0, 1, 2, 3]
    api.edit("ds", lambda spec: spec.update(replicas=1))
    run(reconciler, 2)
    assert roles(api) == {("0", "prefill"): 2, ("0", "decode"): 8}
    assert api.status("ds")["ready"] == "1/1"


def test_a_lost_decode_shard_restarts_only_its_role_replica_beside_its_group() -> None:
    api = FakeAPI(nvl72(2) + hgx(2))
    apply_disagg(api)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    [rack] = racks_by_group(api)["0"]
    prefill, decode = uids(api, "prefill"), uids(api, "decode")
    lose_pod(api, "ds-g0-decode-0-3")
    run(reconciler)
    assert api.status("ds")["conditions"][3]["message"] == "replica 1: shard 3 of 8 is gone"
    run(reconciler, 2)
    assert uids(api, "prefill") == prefill  # the prefill replica kept serving
    assert len(uids(api, "decode")) == 8
    assert not uids(api, "decode") & decode
    assert racks_by_group(api) == {"0": {rack}}
    assert api.status("ds")["phase"] == "Ready"
    assert any(
        reason == "ReplicaRestarting" and "replica 1:" in text for _, reason, text in api.events
    )


def test_a_lost_decode_shard_restarts_the_whole_group_when_it_shares_a_compute_domain() -> None:
    api = FakeAPI(nvl72(2) + hgx(2), domains_served=True)
    apply_disagg(api)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    assert api.created_domains == ["ds-g0"]
    labels = {p["metadata"]["labels"]["rackscale.dev/compute-domain"] for p in pods(api)}
    assert labels == {"ds-g0"}
    prefill, decode = uids(api, "prefill"), uids(api, "decode")
    lose_pod(api, "ds-g0-decode-0-3")
    run(reconciler, 3)
    assert api.deleted_domains == ["ds-g0"]
    assert api.created_domains == ["ds-g0", "ds-g0"]
    assert len(uids(api, "prefill")) == 2
    assert not uids(api, "prefill") & prefill
    assert len(uids(api, "decode")) == 8
    assert not uids(api, "decode") & decode
    assert [len(r) for r in racks_by_group(api).values()] == [1]
    assert api.status("ds")["phase"] == "Ready"


def test_a_lost_role_replica_that_no_longer_fits_beside_its_group_moves_the_whole_group() -> None:
    api = FakeAPI(nvl72(2) + hgx(2))
    apply_disagg(api)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    [rack] = racks_by_group(api)["0"]
    prefill = uids(api, "prefill")
    lose_pod(api, "ds-g0-decode-0-3")
    # In the pass that deletes the decode replica, a 36-GPU replica takes the room it held.
    api.apply("filler", replicas=1, tensor=4, data=9, fallback="Never", spread="Pack")
    run(reconciler)
    filler = {p["metadata"]["labels"]["rackscale.dev/rack"] for p in pods(api, "filler")}
    assert filler == {rack}
    run(reconciler, 3)
    restarting = [text for _, reason, text in api.events if reason == "ReplicaRestarting"]
    assert any("serving group 0 is placed again whole" in text for text in restarting)
    [moved] = racks_by_group(api)["0"]
    assert moved != rack
    assert not uids(api, "prefill") & prefill
    assert roles(api) == {("0", "prefill"): 2, ("0", "decode"): 8}
    assert api.status("ds")["phase"] == "Ready"


def test_colocate_none_restarts_a_lost_role_replica_alone_with_its_own_compute_domain() -> None:
    api = FakeAPI(nvl72(2) + hgx(2), domains_served=True)
    apply_disagg(api, colocate="None")
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    assert sorted(api.created_domains) == ["ds-0", "ds-1"]
    prefill = uids(api, "prefill")
    lose_pod(api, "ds-g0-decode-0-3")
    run(reconciler, 3)
    assert api.deleted_domains == ["ds-1"]
    assert sorted(api.created_domains) == ["ds-0", "ds-1", "ds-1"]
    assert uids(api, "prefill") == prefill
    assert roles(api) == {("0", "prefill"): 2, ("0", "decode"): 8}
    assert api.status("ds")["phase"] == "Ready"


def test_a_template_change_replaces_one_whole_group_at_a_time_on_its_racks() -> None:
    api = FakeAPI(nvl72(2) + hgx(2))
    apply_disagg(api, replicas=2)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    before = racks_by_group(api)
    old = uids(api, "prefill") | uids(api, "decode")
    image = {"spec": {"containers": [{"name": "server", "image": "vllm:next"}]}}
    api.edit("ds", lambda spec: spec["roles"][1].update(template=image))
    serving = []
    for _ in range(6):
        run(reconciler)
        serving.append(api.status("ds")["readyReplicas"])
    assert min(serving) == 1, "one group at a time, the other serving"
    assert not (uids(api, "prefill") | uids(api, "decode")) & old
    assert racks_by_group(api) == before
    assert api.status("ds")["phase"] == "Ready"
