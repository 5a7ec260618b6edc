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
    assert sorted(p["replica"] for p in status["placements"]) == [0, 100, 1000, 1100]
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
    assert api.status("ds")["conditions"][3]["message"] == "replica 100: shard 3 of 8 is gone"
    run(reconciler, 2)
    assert uids(api, "prefill") == prefill  # the prefill replica kept serving
    assert len(uids(api, "decode")) == 8
    assert not uids(api, "decode") & decode
    assert racks_by_group(api) == {"0": {rack}}
    assert api.status("ds")["phase"] == "Ready"
    assert any(
        reason == "ReplicaRestarting" and "replica 100:" in text for _, reason, text in api.events
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


def test_a_role_replica_lost_whole_restarts_its_group_with_a_fresh_compute_domain() -> None:
    api = FakeAPI(nvl72(2) + hgx(2), domains_served=True)
    apply_disagg(api)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    decode = uids(api, "decode")
    lose_pod(api, "ds-g0-prefill-0-0")
    lose_pod(api, "ds-g0-prefill-0-1")  # every pod of the prefill replica: none is left to see
    run(reconciler, 3)
    assert api.deleted_domains == ["ds-g0"]
    assert api.created_domains == ["ds-g0", "ds-g0"]
    assert roles(api) == {("0", "prefill"): 2, ("0", "decode"): 8}
    assert not uids(api, "decode") & decode
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
    assert sorted(api.created_domains) == ["ds-0", "ds-100"]
    prefill = uids(api, "prefill")
    lose_pod(api, "ds-g0-decode-0-3")
    run(reconciler, 3)
    assert api.deleted_domains == ["ds-100"]
    assert sorted(api.created_domains) == ["ds-0", "ds-100", "ds-100"]
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


def scale_role(api: FakeAPI, role: str, replicas: int) -> None:
    def change(spec: dict[str, Any]) -> None:
        for item in spec["roles"]:
            if item["name"] == role:
                item["replicas"] = replicas

    api.edit("ds", change)


def test_scaling_a_role_grows_each_group_in_its_rack_and_restarts_no_other_pod() -> None:
    api = FakeAPI(nvl72(2) + hgx(2))
    apply_disagg(api, replicas=2)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    before = racks_by_group(api)
    prefill, decode = uids(api, "prefill"), uids(api, "decode")
    scale_role(api, "prefill", 2)
    run(reconciler, 2)
    assert roles(api) == {
        ("0", "prefill"): 4,
        ("0", "decode"): 8,
        ("1", "prefill"): 4,
        ("1", "decode"): 8,
    }
    assert uids(api, "decode") == decode  # no decode pod restarted
    assert prefill < uids(api, "prefill")  # nor the prefill replicas it had
    assert racks_by_group(api) == before  # the new prefill replicas beside their groups
    names = {p["metadata"]["name"] for p in pods(api)}
    assert {"ds-g0-prefill-1-0", "ds-g1-prefill-1-1"} <= names
    status = api.status("ds")
    assert (status["phase"], status["ready"]) == ("Ready", "2/2")
    grown = uids(api, "prefill")
    scale_role(api, "prefill", 1)
    run(reconciler, 2)
    assert uids(api, "decode") == decode
    assert uids(api, "prefill") == prefill  # only the highest prefill replica of each group went
    assert not any("prefill-1" in p["metadata"]["name"] for p in pods(api))
    assert grown > prefill
    assert api.status("ds")["ready"] == "2/2"


def test_a_group_without_room_to_grow_is_refused_and_keeps_serving() -> None:
    api = FakeAPI(nvl72(2) + hgx(2))
    apply_disagg(api)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    before = uids(api, "prefill") | uids(api, "decode")
    scale_role(api, "prefill", 6)  # 6 x 8 + 32 = 80 GPUs: more than a rack's 72
    run(reconciler, 3)
    assert uids(api, "prefill") | uids(api, "decode") == before  # nothing deleted
    status = api.status("ds")
    placed = next(c for c in status["conditions"] if c["type"] == "Placed")
    assert "serving group 0 cannot grow by this prefill replica in its rack" in placed["message"]
    assert any(
        reason == "FailedPlacement" and "cannot grow" in text for _, reason, text in api.events
    )
    assert api.status("ds")["ready"] == "1/1"  # it serves as it was
    scale_role(api, "prefill", 5)  # 72 GPUs: the rack holds it
    run(reconciler, 2)
    assert roles(api)[("0", "prefill")] == 10
    assert before <= uids(api, "prefill") | uids(api, "decode")


def test_a_role_scaled_to_zero_is_refused_naming_the_field() -> None:
    api = FakeAPI(nvl72(1))
    apply_disagg(api)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    decode = uids(api, "decode")
    scale_role(api, "prefill", 0)
    run(reconciler)
    status = api.status("ds")
    assert status["phase"] == "Failed"
    assert "roles.0.replicas" in str(status["conditions"]) or "roles[0].replicas" in str(
        status["conditions"]
    )
    assert uids(api, "decode") == decode


def test_scaling_a_role_grows_a_group_into_its_compute_domain() -> None:
    api = FakeAPI(nvl72(2) + hgx(2), domains_served=True)
    apply_disagg(api)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    assert api.created_domains == ["ds-g0"]
    prefill, decode = uids(api, "prefill"), uids(api, "decode")
    scale_role(api, "prefill", 2)
    run(reconciler, 3)
    assert roles(api) == {("0", "prefill"): 4, ("0", "decode"): 8}
    assert uids(api, "decode") == decode
    assert prefill < uids(api, "prefill")
    assert (api.created_domains, api.deleted_domains) == (["ds-g0"], [])
    for pod in pods(api):  # the added pods join the group's domain, as its other pods do
        assert pod["metadata"]["labels"]["rackscale.dev/compute-domain"] == "ds-g0"
        [claim] = pod["spec"]["resourceClaims"]
        assert claim["resourceClaimTemplateName"] == "ds-g0-channel"
    nodes = [p["spec"]["nodeName"] for p in pods(api)]
    assert len(set(nodes)) == len(nodes)  # one pod per tray
    status = api.status("ds")
    assert (status["phase"], status["ready"]) == ("Ready", "1/1")
    scale_role(api, "prefill", 1)  # the group keeps serving in its ComputeDomain
    run(reconciler, 2)
    assert (uids(api, "prefill"), uids(api, "decode")) == (prefill, decode)
    assert (api.created_domains, api.deleted_domains) == (["ds-g0"], [])
    status = api.status("ds")
    assert (status["phase"], status["ready"]) == ("Ready", "1/1")
    domains = next(c for c in status["conditions"] if c["type"] == "ComputeDomains")
    assert domains["message"] == "1 ComputeDomain Ready"  # the group's one, not one per member


def test_a_group_grows_only_onto_trays_holding_no_other_compute_domain() -> None:
    """Guarantee 13 for a group's additions: one pod per tray, never beside another domain."""
    api = FakeAPI(nvl72(1), domains_served=True)
    apply_disagg(api)
    (body,) = api.deployments[("llm", "ds")]
    body["spec"]["roles"][0]["gpusPerPod"] = 2  # prefill: 4 pods of 2 GPUs
    api.touch("deployments", ("llm", "ds"))
    reconciler = Reconciler(api.view(), api)
    run(reconciler)  # the group takes 12 of the 18 trays
    neighbour = api.apply("nb", replicas=1, tensor=2, data=4, fallback="Never")
    neighbour["spec"]["gpusPerPod"] = 2  # 4 pods on 4 trays, each half free
    api.touch("deployments", ("llm", "nb"))
    run(reconciler)
    assert len({p["spec"]["nodeName"] for p in pods(api, "nb")}) == 4
    assert sorted(api.created_domains) == ["ds-g0", "nb-0"]
    before = uids(api, "prefill") | uids(api, "decode")
    scale_role(api, "prefill", 2)  # 4 more pods: 2 trays are free, 4 others hold nb-0's pods
    run(reconciler, 2)
    assert uids(api, "prefill") | uids(api, "decode") == before
    placed = next(c for c in api.status("ds")["conditions"] if c["type"] == "Placed")
    assert "serving group 0 cannot grow by this prefill replica in its rack" in placed["message"]
    assert "holding no other ComputeDomain" in placed["message"]
    assert any(
        reason == "FailedPlacement" and "cannot grow" in text for _, reason, text in api.events
    )
    assert api.status("ds")["ready"] == "1/1"
    assert (api.created_domains, api.deleted_domains) == (["ds-g0", "nb-0"], [])


def test_of_two_groups_the_one_with_room_grows_and_the_other_is_refused_whole() -> None:
    api = FakeAPI(nvl72(2) + hgx(2))
    apply_disagg(api, replicas=2)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    racks = racks_by_group(api)
    assert racks["0"] != racks["1"]  # 40 GPUs each: one group to a rack
    api.apply("filler", replicas=1, tensor=8, data=4, fallback="Never")  # 32 GPUs: a rack full
    run(reconciler)
    [filled] = {p["metadata"]["labels"]["rackscale.dev/rack"] for p in pods(api, "filler")}
    full = next(g for g, held in racks.items() if held == {filled})
    free = "1" if full == "0" else "0"
    by_group = {
        g: {
            p["metadata"]["uid"]
            for p in pods(api)
            if p["metadata"]["labels"]["rackscale.dev/group"] == g
        }
        for g in racks
    }
    scale_role(api, "prefill", 2)
    run(reconciler, 3)
    assert roles(api)[(free, "prefill")] == 4  # grown in its rack
    assert roles(api)[(full, "prefill")] == 2
    assert by_group[free] < {
        p["metadata"]["uid"]
        for p in pods(api)
        if p["metadata"]["labels"]["rackscale.dev/group"] == free
    }
    kept = {
        p["metadata"]["uid"]
        for p in pods(api)
        if p["metadata"]["labels"]["rackscale.dev/group"] == full
    }
    assert kept == by_group[full]  # refused: every pod of it kept
    assert racks_by_group(api) == racks
    status = api.status("ds")
    placed = next(c for c in status["conditions"] if c["type"] == "Placed")
    refused = f"serving group {full} cannot grow by this prefill replica in its rack"
    assert refused in placed["message"]
    assert f"serving group {free} cannot grow" not in placed["message"]
    assert any(reason == "FailedPlacement" and refused in text for _, reason, text in api.events)
    codes = reconciler.records["uid-ds"].codes
    assert set(codes.values()) == {"group-cannot-grow"}
    assert {int(full) * 1000 + 1} == set(codes)  # the full group's prefill 1
    # Both groups serve; what the spec asks is not all placed.
    assert (status["phase"], status["ready"]) == ("Degraded", "2/2")


def leaders(pod: dict[str, Any]) -> dict[str, list[str]]:
    """A pod's `rackscale.dev/leaders`, as a router reads it: role -> host:port list."""
    text = pod["metadata"]["annotations"]["rackscale.dev/leaders"]
    lines = (line.split("=", 1) for line in text.splitlines())
    return {role: hosts.split(",") for role, hosts in lines}


def test_every_pod_of_a_group_is_told_its_leaders_as_a_role_scales() -> None:
    """The leaders annotation starts as RACKSCALE_<ROLE>_LEADERS says, and follows a role
    scaling on the pods that stay (a patch: no pod restarts), so a router reading it through a
    downward API volume sends prefills to the new replicas, and stops sending to removed ones."""
    api = FakeAPI(nvl72(2) + hgx(2))
    apply_disagg(api, replicas=2)
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    address = "ds-g{}-{}-{}-0.ds-shards.llm.svc:8000"
    for pod in pods(api):
        group = pod["metadata"]["labels"]["rackscale.dev/group"]
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert leaders(pod) == {
            "prefill": [address.format(group, "prefill", 0)],
            "decode": [address.format(group, "decode", 0)],
        }
        assert env["RACKSCALE_PREFILL_LEADERS"] == address.format(group, "prefill", 0)
    decode = uids(api, "decode")
    scale_role(api, "prefill", 2)
    run(reconciler, 2)
    assert uids(api, "decode") == decode
    for pod in pods(api):
        group = pod["metadata"]["labels"]["rackscale.dev/group"]
        assert leaders(pod)["prefill"] == [
            address.format(group, "prefill", 0),
            address.format(group, "prefill", 1),
        ]
    scale_role(api, "prefill", 1)
    run(reconciler, 2)
    assert uids(api, "decode") == decode
    for pod in pods(api):
        group = pod["metadata"]["labels"]["rackscale.dev/group"]
        assert leaders(pod)["prefill"] == [address.format(group, "prefill", 0)]
    patched = len(api.annotated)
    run(reconciler, 2)
    assert len(api.annotated) == patched  # once said, not said again
