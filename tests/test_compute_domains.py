"""ComputeDomains: guarantee 13 on random clusters, the reason it gives, and the manifests."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rackscale.api import InferenceDeployment
from rackscale.api.labels import COMPUTE_DOMAIN_LABEL, GROUP_LABEL, REPLICA_LABEL
from rackscale.placement import (
    Decision,
    DeploymentPlan,
    PodPlan,
    ReplicaPlan,
    place,
    place_replica,
)
from rackscale.placement.reasons import NoRackWithRoom, Problem, Reason
from rackscale.render import (
    CHANNEL_CLAIM,
    PoolFacts,
    compute_domain_of,
    plan_objects,
    render_compute_domain,
    render_replica,
)
from rackscale.topology import build_snapshot
from tests.factory import deployment, nvl72, pool
from tests.strategies import GPU, Cluster, workloads
from tests.test_engine_properties import SETTINGS, _affinity_node

DOMAINS = ("other/cd-a", "other/cd-b", "batch/cd-c")


def _live_node(pod: dict[str, Any]) -> str | None:
    if pod["status"]["phase"] in ("Succeeded", "Failed"):
        return None
    spec = pod["spec"]
    return spec.get("nodeName") or _affinity_node(spec)


def _gpus(pod: dict[str, Any]) -> int:
    resources = pod["spec"]["containers"][0]["resources"]
    return int((resources.get("requests") or resources.get("limits") or {}).get(GPU, 0))


@st.composite
def with_domains(draw: st.DrawFn) -> tuple[Cluster, list[InferenceDeployment]]:
    """A workload whose foreign pods sometimes belong to ComputeDomains of their own; a node
    holds at most one, as NVIDIA's driver allows."""
    cluster, deployments = draw(workloads())
    pods = []
    domain_of: dict[str, str] = {}
    for raw in cluster.pods:
        target = _live_node(raw)
        if target is not None and draw(st.booleans()):
            namespace, name = domain_of.setdefault(target, draw(st.sampled_from(DOMAINS))).split(
                "/"
            )
            raw = {
                **raw,
                "metadata": {
                    **raw["metadata"],
                    "namespace": namespace,
                    "labels": {COMPUTE_DOMAIN_LABEL: name},
                },
            }
        pods.append(raw)
    return Cluster(cluster.nodes, tuple(pods), cluster.pools), deployments


@SETTINGS
@given(with_domains())
def test_no_node_ever_holds_two_compute_domains(
    workload: tuple[Cluster, list[InferenceDeployment]],
) -> None:
    """Guarantee 13: a node holds pods of at most one ComputeDomain, and at most one pod of a
    replica that has one; a replica spanning trays of a pool that wants them has one."""
    cluster, deployments = workload
    snapshot = build_snapshot(cluster.nodes, cluster.pods, cluster.pools, compute_domains=True)
    allocatable = {
        n["metadata"]["name"]: int(n["status"]["allocatable"][GPU]) for n in cluster.nodes
    }
    used: Counter[str] = Counter()
    domains: dict[str, set[str]] = {}
    for raw in cluster.pods:
        target = _live_node(raw)
        if target is None:
            continue
        used[target] += _gpus(raw)
        name = raw["metadata"]["labels"].get(COMPUTE_DOMAIN_LABEL)
        if name:
            domains.setdefault(target, set()).add(f"{raw['metadata']['namespace']}/{name}")
    wants = {p.name: p.spec.wants_compute_domains for p in cluster.pools}
    rack_nvlink = {p.name: p.spec.nvlink_domain == "Rack" for p in cluster.pools}
    for dep, plan in zip(deployments, place(snapshot, deployments), strict=True):
        for decision in plan.decisions:
            replica = decision.plan
            if replica is None:
                continue
            assert sum(p.gpus for p in replica.pods) == dep.spec.parallelism.gpus  # gang
            nodes = [p.node for p in replica.pods]
            pool_name = dep.spec.placement.rack_pool
            spans = len(replica.pods) > 1 and dep.spec.placement.replica_scope != "Node"
            expected = replica.mode == "Rack" and spans and wants.get(pool_name or "", False)
            assert (replica.compute_domain is not None) == expected, (replica, expected)
            # The plan says whether NVLink crosses nodes, judged here from where its pods went.
            crosses = replica.mode == "Rack" and rack_nvlink.get(pool_name or "", False)
            assert replica.nvlink_crosses_nodes == (crosses and len(set(nodes)) > 1), replica
            if replica.compute_domain:
                assert replica.compute_domain == f"{dep.name}-{decision.replica}"
                assert replica.domain_group is None
                assert replica.nvlink_crosses_nodes  # a domain's pods are on a node each
                assert len(set(nodes)) == len(nodes), f"two pods of one domain on a node: {nodes}"
                key = f"{dep.namespace}/{replica.compute_domain}"
            for p in replica.pods:
                if p.node is None:
                    continue
                used[p.node] += p.gpus
                assert used[p.node] <= allocatable[p.node]  # guarantee 1
                if replica.compute_domain:
                    held = domains.setdefault(p.node, set())
                    assert not held, f"{p.node} holds {held}, then gets {key}"
                    held.add(key)
    assert all(len(held) <= 1 for held in domains.values()), domains


def _domain_pod(name: str, node_name: str, domain: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "other", "labels": {COMPUTE_DOMAIN_LABEL: domain}},
        "spec": {
            "nodeName": node_name,
            "containers": [{"resources": {"limits": {GPU: "1"}}}],
        },
        "status": {"phase": "Running"},
    }


def test_the_reason_says_when_the_one_domain_per_tray_rule_blocks() -> None:
    nodes = nvl72(1, trays=8)
    # Half the trays run one GPU of someone else's ComputeDomain: every tray has room for a pod
    # of 2 GPUs, but only 4 trays are free of another domain.
    pods = [_domain_pod(f"w-{t}", f"gb200-0000-{t:02d}", "cd-x") for t in range(4)]
    dep = deployment("big", tensor=2, data=5, gpusPerPod=2, fallback="Never")
    snapshot = build_snapshot(nodes, pods, [pool(gpusPerRack=32)], compute_domains=True)
    refused = place_replica(snapshot, dep, 0)
    assert refused.plan is None
    assert refused.why == Reason(
        "no-rack-with-room", NoRackWithRoom(10, (Problem("compute-domain", 4),))
    )
    small = deployment("small", tensor=2, data=4, gpusPerPod=2, fallback="Never")
    placed = place_replica(snapshot, small, 0)
    assert placed.plan is not None
    assert {p.node for p in placed.plan.pods} == {f"gb200-0000-{t:02d}" for t in range(4, 8)}


def test_without_the_crd_or_with_off_pods_share_nodes_and_get_no_domain() -> None:
    nodes = nvl72(1, trays=2)
    dep = deployment("d", tensor=4, gpusPerPod=2)
    for served, spec in ((False, {}), (True, {"computeDomains": "Off"})):
        snapshot = build_snapshot(nodes, [], [pool(gpusPerRack=8, **spec)], compute_domains=served)
        plan = place_replica(snapshot, dep, 0).plan
        assert plan is not None
        assert plan.compute_domain is None
        assert len({p.node for p in plan.pods}) == 1  # best fit: both pods on one tray
        assert not plan.nvlink_crosses_nodes
    snapshot = build_snapshot(nodes, [], [pool(gpusPerRack=8)], compute_domains=True)
    plan = place_replica(snapshot, dep, 0).plan
    assert plan is not None
    assert plan.compute_domain == "d-0"
    assert len({p.node for p in plan.pods}) == 2
    assert plan.nvlink_crosses_nodes


def test_hgx_pools_and_other_vendors_never_get_domains() -> None:
    for spec in ({"nvlinkDomain": "Node"}, {"gpuResource": "amd.com/gpu"}):
        p = pool(rackLabel="rack", gpusPerRack=16, **spec)
        assert not p.spec.wants_compute_domains


def test_pods_claim_the_channel_of_their_replicas_domain() -> None:
    nodes = nvl72(1, trays=4)
    spec = deployment("kimi", namespace="research", tensor=16, gpusPerPod=4).spec
    template = {
        "spec": {
            "containers": [{"name": "server"}, {"name": "log-shipper"}],
            "resourceClaims": [{"name": "scratch", "resourceClaimName": "scratch"}],
        }
    }
    dep = InferenceDeployment.model_validate(
        {
            "metadata": {"name": "kimi", "namespace": "research", "uid": "u-1"},
            "spec": {**spec.model_dump(by_alias=True, exclude_none=True), "template": template},
        }
    )
    snapshot = build_snapshot(nodes, [], [pool(gpusPerRack=16)], compute_domains=True)
    plan = place_replica(snapshot, dep, 3).plan
    assert plan is not None
    assert plan.compute_domain == "kimi-3"
    pods = render_replica(dep, plan, PoolFacts(pool="gb200"))
    for pod in pods:
        assert pod["metadata"]["labels"][COMPUTE_DOMAIN_LABEL] == "kimi-3"
        assert pod["spec"]["resourceClaims"] == [
            {"name": "scratch", "resourceClaimName": "scratch"},
            {"name": CHANNEL_CLAIM, "resourceClaimTemplateName": "kimi-3-channel"},
        ]
        server, shipper = pod["spec"]["containers"]
        assert server["resources"]["claims"] == [{"name": CHANNEL_CLAIM}]
        assert "claims" not in shipper.get("resources", {})  # it holds no GPU
    domain = render_compute_domain(dep, 3)
    assert domain["apiVersion"] == "resource.nvidia.com/v1beta1"
    assert domain["kind"] == "ComputeDomain"
    assert domain["metadata"]["name"] == "kimi-3"
    assert domain["metadata"]["namespace"] == "research"
    assert domain["metadata"]["ownerReferences"][0]["kind"] == "InferenceDeployment"
    assert domain["spec"] == {
        "numNodes": 0,
        "channel": {"resourceClaimTemplate": {"name": "kimi-3-channel"}},
    }


def test_the_compute_domain_rendered_is_the_one_the_plan_names() -> None:
    # Render reads the plan, not the spec: a contrived plan naming a group's domain for a
    # deployment without roles gets that domain, labelled with that group.
    dep = deployment("d", tensor=8, gpusPerPod=4)
    pods = (PodPlan(0, "n0", 4, 0, "r0"), PodPlan(1, "n1", 4, 4, "r0"))
    own = ReplicaPlan(2, "Rack", ("r0",), pods, "d-2", None, True)
    shared = ReplicaPlan(2, "Rack", ("r0",), pods, "elsewhere-g7", 7, True)
    assert compute_domain_of(dep, own)["metadata"]["labels"][REPLICA_LABEL] == "2"
    rendered = compute_domain_of(dep, shared)
    assert rendered["metadata"]["name"] == "elsewhere-g7"
    assert rendered["metadata"]["labels"][GROUP_LABEL] == "7"
    assert REPLICA_LABEL not in rendered["metadata"]["labels"]
    # and a plan naming none gets no ComputeDomain and no channel, whatever its pool wants
    snapshot = build_snapshot(nvl72(1, trays=2), [], [pool(gpusPerRack=8)], compute_domains=True)
    bare = ReplicaPlan(2, "Rack", ("r0",), pods)
    objects = plan_objects(snapshot, [DeploymentPlan("d", [Decision(2, bare)])], [dep])
    assert [o["kind"] for o in objects if o["kind"] != "Service"] == ["Pod", "Pod"]
    assert all("resourceClaims" not in o["spec"] for o in objects if o["kind"] == "Pod")
