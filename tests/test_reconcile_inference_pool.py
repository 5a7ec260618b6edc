"""InferencePools against an in-memory API: one per deployment with spec.inferencePool, selecting
exactly the pods that serve; deleted with the field; a condition and one Event when the API server
does not serve them. No cluster."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from rackscale.controller.reconcile import Reconciler
from tests.factory import hgx, nvl72
from tests.fakeapi import FakeAPI
from tests.test_reconcile_roles import apply_disagg

PICKER = {"endpointPickerRef": {"name": "vllm-epp", "port": {"number": 9002}}}


def run(reconciler: Reconciler) -> None:
    asyncio.run(reconciler.reconcile_all())


def selected(api: FakeAPI, pool: dict[str, Any]) -> set[str]:
    """The live pods of the pool's namespace that its selector matches."""
    labels = pool["spec"]["selector"]["matchLabels"]
    namespace = pool["metadata"]["namespace"]
    return {
        p["metadata"]["name"]
        for (ns, _), (p,) in api.pods.items()
        if ns == namespace
        and not p["metadata"].get("deletionTimestamp")
        and labels.items() <= p["metadata"]["labels"].items()
    }


def leaders(api: FakeAPI, name: str, role: str | None = None) -> set[str]:
    """Shard 0 of every replica of `name` (of `role`), read from the pods' names and labels."""
    out = set()
    for (p,) in api.pods.values():
        labels = p["metadata"]["labels"]
        if labels["rackscale.dev/deployment"] != name or labels["rackscale.dev/shard"] != "0":
            continue
        if role is None or labels.get("rackscale.dev/role") == role:
            out.add(p["metadata"]["name"])
    return out


def conditions(api: FakeAPI, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in api.status(name)["conditions"]}


def test_the_pool_selects_exactly_the_leaders_on_the_served_port() -> None:
    api = FakeAPI(nvl72(2) + hgx(2), inference_pools_served=True)
    api.apply("r1", replicas=2, tensor=8, data=2, fallback="Never")  # 4 pods a replica
    api.edit("r1", lambda spec: spec.update(inferencePool=PICKER, port=8080))
    run(Reconciler(api.view(), api))
    pool = api.inference_pools[("llm", "r1")]
    assert len(api.pods) == 8
    assert selected(api, pool) == leaders(api, "r1") == {"r1-0-0", "r1-1-0"}
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    assert pool["spec"]["endpointPickerRef"] == {
        "group": "",
        "kind": "Service",
        "name": "vllm-epp",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }
    owner = pool["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("InferenceDeployment", "r1", "uid-r1")
    ready = conditions(api, "r1")["InferencePool"]
    assert (ready["status"], ready["reason"]) == ("True", "Applied")


def test_with_roles_the_pool_selects_the_serving_roles_leaders_on_its_port() -> None:
    api = FakeAPI(nvl72(2), inference_pools_served=True)
    apply_disagg(api, replicas=2)
    (body,) = api.deployments[("llm", "ds")]
    body["spec"]["inferencePool"] = PICKER
    body["spec"]["roles"][1]["port"] = 8200  # decode serves here
    api.touch("deployments", ("llm", "ds"))
    run(Reconciler(api.view(), api))
    pool = api.inference_pools[("llm", "ds")]
    decode = leaders(api, "ds", "decode")
    assert len(decode) == 2
    assert leaders(api, "ds", "prefill")
    assert selected(api, pool) == decode
    assert pool["spec"]["targetPorts"] == [{"number": 8200}]


def test_removing_the_field_deletes_the_pool_once_and_a_new_operator_deletes_a_leftover() -> None:
    api = FakeAPI(nvl72(2), inference_pools_served=True)
    api.apply("r1", replicas=1, tensor=4, fallback="Never")
    api.edit("r1", lambda spec: spec.update(inferencePool=PICKER))
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    left = copy.deepcopy(api.inference_pools[("llm", "r1")])
    api.edit("r1", lambda spec: spec.pop("inferencePool"))
    run(reconciler)
    assert api.inference_pools == {}
    assert api.deleted_inference_pools == ["r1"]
    assert "InferencePool" not in conditions(api, "r1")
    api.edit("r1", lambda spec: spec.update(replicas=2))  # another pass with work to do
    run(reconciler)
    assert api.deleted_inference_pools == ["r1"]  # once

    # One written before the operator restarted, shown by the new one's watch: deleted once.
    api.inference_pools[("llm", "r1")] = left
    fresh = Reconciler(api.view(), api)
    run(fresh)
    api.edit("r1", lambda spec: spec.update(replicas=1))
    run(fresh)
    assert api.inference_pools == {}
    assert api.deleted_inference_pools == ["r1", "r1"]


def test_a_started_operator_deletes_no_pool_that_does_not_exist() -> None:
    api = FakeAPI(nvl72(2), inference_pools_served=True)
    for i in range(10):
        api.apply(f"d{i}", replicas=1, tensor=4, data=1, fallback="Never")
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    api.edit("d3", lambda spec: spec.update(replicas=2))
    run(reconciler)
    assert len(api.pods) == 11
    assert api.deleted_inference_pools == []
    assert api.inference_pools == {}


def test_a_pool_deleted_by_hand_comes_back_on_the_next_pass() -> None:
    api = FakeAPI(nvl72(2), inference_pools_served=True)
    api.apply("r1", replicas=1, tensor=4, fallback="Never")
    api.edit("r1", lambda spec: spec.update(inferencePool=PICKER))
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    wanted = copy.deepcopy(api.inference_pools[("llm", "r1")])
    writes = len(api.pool_writes)
    run(reconciler)
    assert len(api.pool_writes) == writes  # what stands is not written again

    del api.inference_pools[("llm", "r1")]  # by hand: the watch shows it gone
    api.touch("inference_pools", ("llm", "r1"))
    run(reconciler)
    assert api.inference_pools[("llm", "r1")] == wanted
    assert len(api.pool_writes) == writes + 1


def test_a_pool_edited_by_hand_is_put_back_and_a_foreign_one_is_left_alone() -> None:
    api = FakeAPI(nvl72(2), inference_pools_served=True)
    api.apply("r1", replicas=1, tensor=4, fallback="Never")
    api.edit("r1", lambda spec: spec.update(inferencePool=PICKER))
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    wanted = copy.deepcopy(api.inference_pools[("llm", "r1")])
    edited = api.inference_pools[("llm", "r1")]
    edited["spec"]["targetPorts"] = [{"number": 9999}]
    edited["metadata"]["labels"]["team"] = "search"  # a label of someone else's: kept
    api.touch("inference_pools", ("llm", "r1"))
    run(reconciler)
    assert api.inference_pools[("llm", "r1")] == wanted

    # Another object's pool under the same name and label (not owned by r1): never deleted.
    api.edit("r1", lambda spec: spec.pop("inferencePool"))
    foreign = copy.deepcopy(wanted)
    foreign["metadata"]["ownerReferences"][0]["uid"] = "uid-someone-else"
    api.inference_pools[("llm", "r1")] = foreign
    api.touch("inference_pools", ("llm", "r1"))
    run(reconciler)
    assert api.deleted_inference_pools == []
    assert ("llm", "r1") in api.inference_pools


def test_without_the_crd_a_condition_and_one_event_then_the_pool_once_it_is_served() -> None:
    api = FakeAPI(nvl72(2), inference_pools_served=False)
    api.apply("r1", replicas=1, tensor=4, fallback="Never")
    api.edit("r1", lambda spec: spec.update(inferencePool=PICKER))
    reconciler = Reconciler(api.view(), api)
    run(reconciler)
    api.edit("r1", lambda spec: spec.update(replicas=2))  # another pass with work to do
    run(reconciler)
    run(reconciler)
    assert api.refused_pool_writes == []  # nothing written to a resource not served
    status = api.status("r1")
    assert status["phase"] == "Ready"  # it serves; only the gateway's pool is missing
    missing = conditions(api, "r1")["InferencePool"]
    assert (missing["status"], missing["reason"]) == ("False", "NotInstalled")
    assert "inferencepools.inference.networking.k8s.io" in missing["message"]
    warnings = [e for e in api.events if e[1] == "InferencePoolMissing"]
    assert len(warnings) == 1
    assert warnings[0][0] == "r1"

    api.inference_pools_served = True
    reconciler.cache.put_inference_pools_served(True)  # as the CRD's watch event does
    run(reconciler)
    pool = api.inference_pools[("llm", "r1")]
    assert selected(api, pool) == leaders(api, "r1") == {"r1-0-0", "r1-1-0"}
    applied = conditions(api, "r1")["InferencePool"]
    assert (applied["status"], applied["reason"]) == ("True", "Applied")
    assert len([e for e in api.events if e[1] == "InferencePoolMissing"]) == 1


def test_a_deployment_without_the_field_gets_no_pool_condition_or_event() -> None:
    api = FakeAPI(nvl72(2), inference_pools_served=False)
    api.apply("r1", replicas=1, tensor=4, fallback="Never")
    run(Reconciler(api.view(), api))
    assert "InferencePool" not in conditions(api, "r1")
    assert not [e for e in api.events if e[1] == "InferencePoolMissing"]
