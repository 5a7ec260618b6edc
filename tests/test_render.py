"""Pod and Service manifests rendered from placements, as design section 3 describes them."""

from __future__ import annotations

from typing import Any

from rackscale.api import InferenceDeployment
from rackscale.placement import PodPlan, ReplicaPlan
from rackscale.render import PoolFacts, render_replica, render_services, template_hash
from rackscale.topology import pinned_node

TEMPLATE = {
    "metadata": {"labels": {"app": "sglang"}, "annotations": {"team": "llm"}},
    "spec": {
        "containers": [
            {
                "name": "server",
                "image": "lmsysorg/sglang:latest",
                "env": [{"name": "HF_HOME", "value": "/models"}, {"name": "RACKSCALE_RACK"}],
                "resources": {"requests": {"cpu": "16", "memory": "200Gi"}},
            },
            {"name": "sidecar", "image": "busybox"},
        ],
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
    },
}


def idep(**spec: Any) -> InferenceDeployment:
    body = {
        "replicas": 2,
        "parallelism": {"tensor": 8, "data": 1, "expert": 8},
        "gpusPerPod": 4,
        "placement": {"rackPool": "gb200"},
        "template": TEMPLATE,
        **spec,
    }
    return InferenceDeployment.model_validate(
        {"metadata": {"name": "r1", "namespace": "llm", "uid": "u-1"}, "spec": body}
    )


RACK_PLAN = ReplicaPlan(
    replica=1,
    mode="Rack",
    racks=("b0/clique-a",),
    pods=(PodPlan(0, "gb-a-01", 4, 0), PodPlan(1, "gb-a-02", 4, 4)),
)
FACTS = PoolFacts(
    pool="gb200",
    gpu_resource="nvidia.com/gpu",
    rack_labels=("nvidia.com/gpu.clique",),
    node_racks={"gb-a-01": "b0/clique-a", "gb-a-02": "b0/clique-a"},
)
DP_PLAN = ReplicaPlan(replica=0, mode="DevicePlugin", racks=(), pods=(PodPlan(0, None, 8, 0),))


def env(pod: dict[str, Any], container: int = 0) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][container]["env"]}


def test_rack_mode_pods_are_named_labelled_and_owned() -> None:
    pods = render_replica(idep(), RACK_PLAN, FACTS)
    assert [p["metadata"]["name"] for p in pods] == ["r1-1-0", "r1-1-1"]
    leader, worker = pods
    assert leader["metadata"]["namespace"] == "llm"
    assert leader["metadata"]["labels"] == {
        "app": "sglang",
        "rackscale.dev/deployment": "r1",
        "rackscale.dev/replica": "1",
        "rackscale.dev/shard": "0",
        "rackscale.dev/leader": "true",
        "rackscale.dev/rack": "b0_clique-a",
    }
    assert "rackscale.dev/leader" not in worker["metadata"]["labels"]
    assert "rackscale.dev/exclusive" not in worker["metadata"]["labels"]
    assert leader["metadata"]["annotations"]["team"] == "llm"
    assert leader["metadata"]["annotations"]["rackscale.dev/rack"] == "b0/clique-a"
    assert leader["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "rackscale.dev/v1alpha1",
            "kind": "InferenceDeployment",
            "name": "r1",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_rack_mode_pod_is_pinned_tolerates_the_pool_and_requests_its_gpus() -> None:
    pod = render_replica(idep(), RACK_PLAN, FACTS)[1]
    assert pinned_node(pod) == "gb-a-02"
    assert "nodeName" not in pod["spec"]
    assert pod["spec"]["tolerations"] == [
        {"key": "gpu", "operator": "Exists"},
        {
            "key": "rackscale.dev/pool",
            "operator": "Equal",
            "value": "gb200",
            "effect": "NoSchedule",
        },
    ]
    server, sidecar = pod["spec"]["containers"]
    assert server["image"] == "lmsysorg/sglang:latest"
    assert server["resources"] == {
        "requests": {"cpu": "16", "memory": "200Gi", "nvidia.com/gpu": "4"},
        "limits": {"nvidia.com/gpu": "4"},
    }
    assert "nvidia.com/gpu" not in str(sidecar.get("resources"))


def test_every_container_gets_the_topology_env_and_keeps_its_own() -> None:
    pod = render_replica(idep(), RACK_PLAN, FACTS)[1]
    values = env(pod)
    assert values["HF_HOME"] == "/models"
    assert {k: v for k, v in values.items() if k.startswith("RACKSCALE_")} == {
        "RACKSCALE_REPLICA": "1",
        "RACKSCALE_SHARD": "1",
        "RACKSCALE_SHARDS": "2",
        "RACKSCALE_WORLD_SIZE": "8",
        "RACKSCALE_FIRST_RANK": "4",
        "RACKSCALE_TENSOR_PARALLEL": "8",
        "RACKSCALE_PIPELINE_PARALLEL": "1",
        "RACKSCALE_DATA_PARALLEL": "1",
        "RACKSCALE_EXPERT_PARALLEL": "8",
        "RACKSCALE_LEADER_ADDRESS": "r1-1-0.r1-shards.llm.svc",
        "RACKSCALE_RACK": "b0/clique-a",
    }
    assert [e["name"] for e in pod["spec"]["containers"][0]["env"]].count("RACKSCALE_RACK") == 1
    assert env(pod, 1)["RACKSCALE_SHARD"] == "1"


def test_hostname_and_subdomain_make_the_leader_address_resolve() -> None:
    leader = render_replica(idep(), RACK_PLAN, FACTS)[0]
    assert leader["spec"]["hostname"] == "r1-1-0"
    assert leader["spec"]["subdomain"] == "r1-shards"
    shards = render_services(idep())[0]
    assert shards["metadata"]["name"] == leader["spec"]["subdomain"]


def test_exclusive_replicas_are_labelled_so_the_ledger_holds_their_racks() -> None:
    dep = idep(placement={"rackPool": "gb200", "exclusive": True})
    for pod in render_replica(dep, RACK_PLAN, FACTS):
        assert pod["metadata"]["labels"]["rackscale.dev/exclusive"] == "true"


def test_device_plugin_pods_are_not_pinned_and_avoid_rack_nodes() -> None:
    template = {
        "spec": {
            "containers": [{"name": "server", "image": "vllm"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "In", "values": ["a"]}
                                ]
                            }
                        ]
                    }
                }
            },
        }
    }
    dep = idep(template=template, placement={}, parallelism={"tensor": 8}, gpusPerPod=8)
    (pod,) = render_replica(dep, DP_PLAN, PoolFacts())
    assert pinned_node(pod) is None
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]},
                {"key": "nvidia.com/gpu.clique", "operator": "DoesNotExist"},
            ]
        }
    ]
    assert "tolerations" not in pod["spec"]
    assert "rackscale.dev/rack" not in pod["metadata"]["labels"]
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert env(pod)["RACKSCALE_RACK"] == ""
    assert pod["metadata"]["annotations"]["rackscale.dev/mode"] == "DevicePlugin"


def test_services_select_every_shard_and_the_leaders() -> None:
    shards, leaders = render_services(idep(port=30000))
    assert shards["metadata"]["name"] == "r1-shards"
    assert shards["spec"]["clusterIP"] == "None"
    assert shards["spec"]["publishNotReadyAddresses"] is True
    assert shards["spec"]["selector"] == {"rackscale.dev/deployment": "r1"}
    assert leaders["metadata"]["name"] == "r1"
    assert leaders["spec"]["selector"] == {
        "rackscale.dev/deployment": "r1",
        "rackscale.dev/leader": "true",
    }
    assert leaders["spec"]["ports"][0]["port"] == 30000
    for service in (shards, leaders):
        assert service["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_template_hash_changes_with_the_template_not_with_scale() -> None:
    base = template_hash(idep())
    assert template_hash(idep(replicas=5)) == base
    changed = {**TEMPLATE, "metadata": {"labels": {"app": "vllm"}}}
    assert template_hash(idep(template=changed)) != base
    pods = render_replica(idep(), RACK_PLAN, FACTS)
    assert {p["metadata"]["annotations"]["rackscale.dev/template-hash"] for p in pods} == {base}


def test_rendering_does_not_touch_the_users_template() -> None:
    dep = idep()
    before = repr(dep.spec.template)
    render_replica(dep, RACK_PLAN, FACTS)
    assert repr(dep.spec.template) == before
