"""Pods, Services and ComputeDomains of a disaggregated deployment (spec.roles)."""

from __future__ import annotations

from typing import Any

from rackscale.api import InferenceDeployment
from rackscale.placement import place_deployment
from rackscale.render import plan_objects, render_services, template_hash
from rackscale.topology import build_snapshot
from tests.factory import nvl72, pool
from tests.test_render import TEMPLATE, idep


def disagg(**spec: Any) -> InferenceDeployment:
    body = {
        "replicas": 2,
        "placement": {"rackPool": "gb200"},
        "roles": [
            {"name": "prefill", "replicas": 2, "parallelism": {"tensor": 4}, "port": 8100,
             "template": TEMPLATE},
            {"name": "decode", "parallelism": {"tensor": 4, "data": 2}, "gpusPerPod": 4,
             "template": {"spec": {"containers": [{"name": "decode", "image": "vllm"}]}}},
        ],
        **spec,
    }  # fmt: skip
    return InferenceDeployment.model_validate(
        {"metadata": {"name": "ds", "namespace": "llm", "uid": "u-1"}, "spec": body}
    )


def objects(dep: InferenceDeployment, compute_domains: bool = True) -> list[dict[str, Any]]:
    snapshot = build_snapshot(nvl72(2), [], [pool()], compute_domains=compute_domains)
    plan = place_deployment(snapshot, dep)
    return plan_objects(snapshot, [plan], [dep])


def env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def test_pods_are_named_and_labelled_by_group_role_and_index() -> None:
    pods = of_kind(objects(disagg()), "Pod")
    names = [p["metadata"]["name"] for p in pods]
    assert names == [
        "ds-g0-prefill-0-0", "ds-g0-prefill-1-0", "ds-g0-decode-0-0", "ds-g0-decode-0-1",
        "ds-g1-prefill-0-0", "ds-g1-prefill-1-0", "ds-g1-decode-0-0", "ds-g1-decode-0-1",
    ]  # fmt: skip
    labels = pods[3]["metadata"]["labels"]
    assert labels["rackscale.dev/role"] == "decode"
    assert labels["rackscale.dev/group"] == "0"
    assert labels["rackscale.dev/replica"] == "100"  # group x 1000 + role position x 100
    assert labels["rackscale.dev/shard"] == "1"
    assert "rackscale.dev/leader" not in labels
    assert all(p["spec"]["hostname"] == p["metadata"]["name"] for p in pods)
    assert {p["spec"]["subdomain"] for p in pods} == {"ds-shards"}


def test_each_role_is_shaped_by_its_own_parallelism_and_template() -> None:
    pods = of_kind(objects(disagg()), "Pod")
    prefill, decode = pods[0], pods[2]
    assert prefill["spec"]["containers"][0]["image"] == "lmsysorg/sglang:latest"
    assert decode["spec"]["containers"][0]["image"] == "vllm"
    assert env(prefill)["RACKSCALE_WORLD_SIZE"] == "4"
    assert env(decode)["RACKSCALE_WORLD_SIZE"] == "8"
    assert env(decode)["RACKSCALE_SHARDS"] == "2"
    assert env(pods[3])["RACKSCALE_LEADER_ADDRESS"] == "ds-g0-decode-0-0.ds-shards.llm.svc"
    gpus = [p["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] for p in pods]
    assert gpus[:4] == ["4", "4", "4", "4"]


def test_every_pod_knows_its_role_and_the_leaders_of_its_group() -> None:
    pods = of_kind(objects(disagg()), "Pod")
    seen = env(pods[7])  # group 1, decode, shard 1
    assert (seen["RACKSCALE_ROLE"], seen["RACKSCALE_GROUP"], seen["RACKSCALE_ROLE_INDEX"]) == (
        "decode",
        "1",
        "0",
    )
    assert seen["RACKSCALE_PREFILL_LEADERS"] == (
        "ds-g1-prefill-0-0.ds-shards.llm.svc:8100,ds-g1-prefill-1-0.ds-shards.llm.svc:8100"
    )
    assert seen["RACKSCALE_DECODE_LEADERS"] == "ds-g1-decode-0-0.ds-shards.llm.svc:8000"
    # Set before the container's own env, so `$(RACKSCALE_PREFILL_LEADERS)` expands.
    names = [e["name"] for e in pods[0]["spec"]["containers"][0]["env"]]
    assert names.index("RACKSCALE_PREFILL_LEADERS") < names.index("HF_HOME")


def test_a_group_shares_one_compute_domain() -> None:
    objs = objects(disagg())
    domains = of_kind(objs, "ComputeDomain")
    assert [d["metadata"]["name"] for d in domains] == ["ds-g0", "ds-g1"]
    assert domains[0]["metadata"]["labels"] == {
        "rackscale.dev/deployment": "ds",
        "rackscale.dev/group": "0",
    }
    claims = {
        p["metadata"]["name"]: p["spec"]["resourceClaims"][0]["resourceClaimTemplateName"]
        for p in of_kind(objs, "Pod")
    }
    assert {c for n, c in claims.items() if n.startswith("ds-g0-")} == {"ds-g0-channel"}
    assert objs.index(domains[1]) < [o["metadata"]["name"] for o in objs].index(
        "ds-g1-prefill-0-0"
    )  # created before the group's pods


def test_services_per_role_and_the_main_one_on_the_serving_role() -> None:
    services = {s["metadata"]["name"]: s["spec"] for s in render_services(disagg())}
    assert list(services) == ["ds-shards", "ds", "ds-prefill", "ds-decode"]
    assert services["ds"]["selector"] == {
        "rackscale.dev/deployment": "ds",
        "rackscale.dev/role": "decode",
        "rackscale.dev/leader": "true",
    }
    assert services["ds-prefill"]["ports"][0]["port"] == 8100
    assert services["ds-prefill"]["selector"]["rackscale.dev/role"] == "prefill"
    other = {
        s["metadata"]["name"]: s["spec"] for s in render_services(disagg(serviceRole="prefill"))
    }
    assert other["ds"]["selector"]["rackscale.dev/role"] == "prefill"
    assert other["ds"]["ports"][0]["port"] == 8100


def test_colocate_none_gives_each_role_replica_its_own_compute_domain() -> None:
    dep = disagg(placement={"rackPool": "gb200", "colocate": "None"})
    domains = of_kind(objects(dep), "ComputeDomain")
    assert [d["metadata"]["name"] for d in domains] == ["ds-100", "ds-1100"]  # the decodes


def test_the_template_hash_covers_the_roles_and_stays_the_same_without_them() -> None:
    assert template_hash(disagg()) == template_hash(disagg(replicas=3))
    changed = disagg(roles=[{"name": "prefill", "template": TEMPLATE}])
    assert template_hash(changed) != template_hash(disagg())
    # Without roles, the digest is what it was before roles existed (existing pods stay).
    assert template_hash(idep()) == "18ef210c515ebf3f"
