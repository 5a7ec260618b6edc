"""Pod and Service manifests rendered from placements, as design section 3 describes them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rackscale.api import InferenceDeployment
from rackscale.api.labels import NVLINK_CROSSES_NODES_ANNOTATION
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
        "RACKSCALE_NNODES": "2",
        "RACKSCALE_NODE_RANK": "1",
        "RACKSCALE_DATA_PARALLEL_START_RANK": "0",
        "RACKSCALE_DATA_PARALLEL_SIZE_LOCAL": "1",
        "RACKSCALE_COORDINATION_PORT": "29600",
    }
    assert {k: v for k, v in values.items() if k.startswith("LWS_")} == {
        "LWS_LEADER_ADDRESS": "r1-1-0.r1-shards.llm.svc",
        "LWS_GROUP_SIZE": "2",
        "LWS_WORKER_INDEX": "1",
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


PROBED = {
    "spec": {
        "containers": [
            {
                "name": "server",
                "image": "vllm",
                "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                "livenessProbe": {"tcpSocket": {"port": 8000}},
                "startupProbe": {"exec": {"command": ["true"]}},
            }
        ]
    }
}


def test_workers_from_the_leaders_template_run_without_its_probes() -> None:
    leader, worker = render_replica(idep(template=PROBED), RACK_PLAN, FACTS)
    probes = {"readinessProbe", "livenessProbe", "startupProbe"}
    assert probes <= set(leader["spec"]["containers"][0])
    assert not probes & set(worker["spec"]["containers"][0])


def test_a_worker_template_shapes_shards_1_to_n_and_keeps_its_own_probes() -> None:
    worker_template = {
        "metadata": {"labels": {"role": "worker"}},
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "image": "vllm",
                    "args": ["--headless"],
                    "readinessProbe": {"exec": {"command": ["true"]}},
                }
            ]
        },
    }
    dep = idep(template=PROBED, workerTemplate=worker_template)
    leader, worker = render_replica(dep, RACK_PLAN, FACTS)
    assert leader["spec"]["containers"][0]["name"] == "server"
    assert "role" not in leader["metadata"]["labels"]
    (container,) = worker["spec"]["containers"]
    assert (container["name"], container["args"]) == ("worker", ["--headless"])
    assert container["readinessProbe"] == {"exec": {"command": ["true"]}}
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert env(worker)["LWS_WORKER_INDEX"] == "1"
    assert worker["metadata"]["labels"]["role"] == "worker"
    assert worker["metadata"]["labels"]["rackscale.dev/shard"] == "1"
    assert pinned_node(worker) == "gb-a-02"


def test_the_worker_template_is_part_of_the_template_hash() -> None:
    base = template_hash(idep())
    worker_template = {"spec": {"containers": [{"name": "w", "image": "vllm"}]}}
    with_workers = template_hash(idep(workerTemplate=worker_template))
    assert with_workers != base
    other = {"spec": {"containers": [{"name": "w", "image": "vllm:v2"}]}}
    assert template_hash(idep(workerTemplate=other)) != with_workers


def test_nccl_uses_nvlink_across_nodes_where_the_plan_says_it_crosses_them() -> None:
    # Render follows the engine's word, not the pool or the pods' nodes: a plan saying NVLink
    # crosses nodes gets multi-node NVLink (and the annotation status reads), one saying it
    # does not gets neither, whatever its nodes.
    crossing = replace(RACK_PLAN, nvlink_crosses_nodes=True)
    for pod in render_replica(idep(), crossing, FACTS):
        for index in (0, 1):
            assert env(pod, index)["NCCL_MNNVL_ENABLE"] == "1"
            assert env(pod, index)["NCCL_CUMEM_ENABLE"] == "1"
        assert pod["metadata"]["annotations"][NVLINK_CROSSES_NODES_ANNOTATION] == "true"
    one_node = ReplicaPlan(0, "Rack", ("b0/clique-a",), (PodPlan(0, "gb-a-01", 4, 0),))
    contrived = replace(one_node, nvlink_crosses_nodes=True)  # no engine would say so
    for pod in render_replica(idep(parallelism={"tensor": 4}), contrived, FACTS):
        assert env(pod)["NCCL_MNNVL_ENABLE"] == "1"
    for plan in (RACK_PLAN, one_node, DP_PLAN):
        dep = idep(parallelism={"tensor": 4}) if len(plan.pods) == 1 else idep()
        for pod in render_replica(dep, plan, FACTS):
            assert "NCCL_MNNVL_ENABLE" not in env(pod)
            assert NVLINK_CROSSES_NODES_ANNOTATION not in pod["metadata"]["annotations"]


def test_a_template_cannot_claim_nvlink_crosses_nodes_for_the_engine() -> None:
    template = {
        "metadata": {"annotations": {NVLINK_CROSSES_NODES_ANNOTATION: "true"}},
        "spec": {"containers": [{"name": "server", "image": "x"}]},
    }
    pod = render_replica(idep(template=template), RACK_PLAN, FACTS)[0]
    assert NVLINK_CROSSES_NODES_ANNOTATION not in pod["metadata"]["annotations"]


def test_the_templates_own_nccl_settings_are_kept() -> None:
    template = {
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "image": "x",
                    "env": [{"name": "NCCL_MNNVL_ENABLE", "value": "0"}],
                }
            ]
        }
    }
    crossing = replace(RACK_PLAN, nvlink_crosses_nodes=True)
    pod = render_replica(idep(template=template), crossing, FACTS)[0]
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names.count("NCCL_MNNVL_ENABLE") == 1
    assert env(pod)["NCCL_MNNVL_ENABLE"] == "0"
    assert env(pod)["NCCL_CUMEM_ENABLE"] == "1"


def test_data_parallel_ranks_of_a_pod_follow_the_tensor_fastest_order() -> None:
    # 32 GPUs as TP 2 x DP 16 in 8 pods of 4: each pod holds two whole data-parallel ranks.
    plan = ReplicaPlan(
        0, "Rack", ("b0/clique-a",), tuple(PodPlan(i, f"n{i}", 4, 4 * i) for i in range(8))
    )
    dep = idep(parallelism={"tensor": 2, "data": 16, "expert": 32})
    pods = render_replica(dep, plan, PoolFacts(pool="gb200"))
    ranks = [
        (
            int(env(p)["RACKSCALE_DATA_PARALLEL_START_RANK"]),
            int(env(p)["RACKSCALE_DATA_PARALLEL_SIZE_LOCAL"]),
        )
        for p in pods
    ]
    assert ranks == [(2 * i, 2) for i in range(8)]
    # TP 8 over pods of 4: a data-parallel rank spans two pods.
    dep = idep(parallelism={"tensor": 8, "data": 4, "expert": 32})
    pods = render_replica(dep, plan, PoolFacts(pool="gb200"))
    assert [env(p)["RACKSCALE_DATA_PARALLEL_START_RANK"] for p in pods] == [
        str(i // 2) for i in range(8)
    ]
    assert {env(p)["RACKSCALE_DATA_PARALLEL_SIZE_LOCAL"] for p in pods} == {"1"}


def test_rackscale_variables_come_first_so_the_containers_env_can_use_them() -> None:
    template = {
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "image": "x",
                    "env": [{"name": "MASTER_ADDR", "value": "$(RACKSCALE_LEADER_ADDRESS)"}],
                }
            ]
        }
    }
    pod = render_replica(idep(template=template), RACK_PLAN, FACTS)[1]
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names.index("RACKSCALE_LEADER_ADDRESS") < names.index("MASTER_ADDR")
