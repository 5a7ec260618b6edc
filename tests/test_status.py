"""Replica lifecycle decisions and the status a person reads, from pods and pools. No cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rackscale.api.labels import NVLINK_CROSSES_NODES_ANNOTATION
from rackscale.placement import place_deployment
from rackscale.planner import lifecycle
from rackscale.planner.status import Progress, deployment_status, dump, pool_status
from rackscale.render import PoolFacts, render_replica, template_hash
from rackscale.topology import build_snapshot
from tests.factory import deployment, gpu_pod, nvl72, pool

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
STAMP = "2026-01-01T12:00:00Z"


def running(pods: list[dict[str, Any]], *, ready: bool = True) -> list[dict[str, Any]]:
    """What the API server shows once kube-scheduler bound the pods and the kubelet ran them."""
    out = []
    for pod in pods:
        node = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
        out.append(
            {
                **pod,
                "metadata": {**pod["metadata"], "creationTimestamp": "2026-01-01T11:00:00Z"},
                "spec": {**pod["spec"], "nodeName": node},
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                },
            }
        )
    return out


def placed(replicas: int = 2, **kwargs: Any) -> tuple[Any, list[dict[str, Any]], dict[str, bool]]:
    nodes = nvl72(4)
    snapshot = build_snapshot(nodes, [], [pool()])
    dep = deployment("ds", replicas=replicas, tensor=8, data=4, gpusPerPod=4, **kwargs)
    template = {"spec": {"containers": [{"name": "server", "image": "vllm"}]}}
    dep = dep.model_copy(update={"spec": dep.spec.model_copy(update={"template": template})})
    plan = place_deployment(snapshot, dep)
    facts = PoolFacts(
        pool="gb200",
        node_racks={n.name: n.rack.name for n in snapshot.nodes.values() if n.rack},
    )
    pods = [p for r in plan.replicas for p in running(render_replica(dep, r, facts))]
    readiness = {n["metadata"]["name"]: True for n in nodes}
    return dep, pods, readiness


def classify(dep: Any, pods: list[dict[str, Any]], nodes: dict[str, bool], **kw: Any) -> Any:
    return lifecycle.classify(
        pods,
        dep.spec.replicas,
        digest=template_hash(dep),
        nodes=nodes,
        now=kw.get("now", NOW),
        unschedulable_after=60,
    )


def test_healthy_replicas_need_nothing_and_report_ready() -> None:
    dep, pods, nodes = placed()
    states = classify(dep, pods, nodes)
    assert [s.condition for s in states] == ["Running", "Running"]
    actions = lifecycle.decide(states)
    assert (actions.delete, actions.place) == ([], [])
    status = dump(deployment_status(dep, states, Progress(), "nvidia.com/gpu", STAMP))
    assert status["phase"] == "Ready"
    assert status["ready"] == "2/2"
    assert status["mode"] == "Rack"
    assert status["gpus"] == 64
    assert len(status["racks"]) == 2
    assert [p["replica"] for p in status["placements"]] == [0, 1]
    assert status["placements"][0]["pods"][1]["firstRank"] == 4
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {
        "Placed": ("True", "AllReplicasPlaced"),
        "Available": ("True", "ReplicasReady"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
        "Ready": ("True", "AllReplicasReady"),
        "Reconciling": ("False", "Complete"),
        "Stalled": ("False", "AsExpected"),
        "Synced": ("True", "Applied"),
    }


def test_a_replica_is_ready_only_when_every_shard_is_ready() -> None:
    dep, pods, nodes = placed()
    # One worker of replica 1 still starting (its engine not up): the replica does not serve.
    starting = [
        {**p, "status": {**p["status"], "conditions": [{"type": "Ready", "status": "False"}]}}
        if p["metadata"]["name"] == "ds-1-5"
        else p
        for p in pods
    ]
    states = classify(dep, starting, nodes)
    assert [(s.condition, s.ready) for s in states] == [("Running", True), ("Running", False)]
    assert lifecycle.decide(states).delete == []  # not ready is not lost: nothing restarts
    status = dump(deployment_status(dep, states, Progress(), "nvidia.com/gpu", STAMP))
    assert (status["phase"], status["ready"], status["readyReplicas"]) == ("Placed", "1/2", 1)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Available"] == ("True", "ReplicasReady")
    assert conditions["Ready"] == ("False", "Placed")
    # Only the leader not ready: the same.
    leader_down = [
        {**p, "status": {**p["status"], "conditions": [{"type": "Ready", "status": "False"}]}}
        if p["metadata"]["name"] == "ds-0-0"
        else p
        for p in pods
    ]
    assert [s.ready for s in classify(dep, leader_down, nodes)] == [False, True]


def test_a_lost_shard_restarts_only_its_replica() -> None:
    dep, pods, nodes = placed()
    survivors = [p for p in pods if p["metadata"]["name"] != "ds-1-3"]
    states = classify(dep, survivors, nodes)
    actions = lifecycle.decide(states)
    assert [(s.replica, cause) for s, cause in actions.delete] == [(1, "restart")]
    assert "shard 3 of 8 is gone" in (states[1].why or "")
    status = dump(deployment_status(dep, states, Progress(), "nvidia.com/gpu", STAMP))
    assert status["phase"] == "Degraded"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "replica 1" in degraded["message"]


def test_a_failed_pod_or_lost_node_breaks_its_replica() -> None:
    dep, pods, nodes = placed()
    failed = [
        {**p, "status": {"phase": "Failed"}} if p["metadata"]["name"] == "ds-0-2" else p
        for p in pods
    ]
    assert classify(dep, failed, nodes)[0].condition == "Broken"
    node = pods[9]["spec"]["nodeName"]
    gone = {k: v for k, v in nodes.items() if k != node}
    state = classify(dep, pods, gone)[1]
    assert (state.condition, state.node_lost) == ("Broken", True)
    not_ready = {**nodes, node: False}
    assert classify(dep, pods, not_ready)[1].condition == "Broken"


def test_a_pinned_pod_unschedulable_past_the_timeout_sends_its_replica_back() -> None:
    dep, pods, nodes = placed(replicas=1)
    stuck = [dict(p) for p in pods]
    stuck[0] = {
        **stuck[0],
        "spec": {k: v for k, v in stuck[0]["spec"].items() if k != "nodeName"},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
        },
    }
    early = classify(dep, stuck, nodes, now=datetime(2026, 1, 1, 11, 0, 30, tzinfo=UTC))
    assert early[0].condition == "Running"
    assert not early[0].ready
    late = classify(dep, stuck, nodes, now=NOW + timedelta(minutes=5))
    assert late[0].condition == "Broken"
    assert "could not be scheduled" in (late[0].why or "")


def test_scaling_down_removes_the_highest_indexes() -> None:
    dep, pods, nodes = placed(replicas=2)
    smaller = dep.model_copy(update={"spec": dep.spec.model_copy(update={"replicas": 1})})
    actions = lifecycle.decide(classify(smaller, pods, nodes))
    assert [(s.replica, cause) for s, cause in actions.delete] == [(1, "scale-down")]


def test_scaling_up_places_the_missing_indexes() -> None:
    dep, pods, nodes = placed(replicas=2)
    bigger = dep.model_copy(update={"spec": dep.spec.model_copy(update={"replicas": 4})})
    actions = lifecycle.decide(classify(bigger, pods, nodes))
    assert actions.place == [2, 3]
    assert actions.delete == []


def test_a_template_change_replaces_one_replica_at_a_time() -> None:
    dep, pods, nodes = placed(replicas=2)
    spec = dep.spec.model_copy(update={"template": {"spec": {"containers": [{"name": "v2"}]}}})
    changed = dep.model_copy(update={"spec": spec})
    states = classify(changed, pods, nodes)
    assert all(s.outdated for s in states)
    actions = lifecycle.decide(states)
    assert [(s.replica, cause) for s, cause in actions.delete] == [(0, "update")]
    # While replica 0 is being replaced (gone), replica 1 keeps serving.
    rest = [p for p in pods if p["metadata"]["labels"]["rackscale.dev/replica"] == "1"]
    actions = lifecycle.decide(classify(changed, rest, nodes))
    assert actions.place == [0]
    assert actions.delete == []


def test_terminating_pods_are_waited_for_not_replaced() -> None:
    dep, pods, nodes = placed(replicas=1)
    leaving = [{**p, "metadata": {**p["metadata"], "deletionTimestamp": STAMP}} for p in pods]
    actions = lifecycle.decide(classify(dep, leaving, nodes))
    assert (actions.waiting, actions.place, actions.delete) == ([0], [], [])


def test_a_terminating_replica_stuck_on_a_lost_node_is_force_deleted() -> None:
    """Its pods are being deleted (a restart for another cause) when a node goes NotReady: its
    kubelet never confirms, so the pods there would wait for eviction unless forced."""
    dep, pods, nodes = placed(replicas=1)
    leaving = [{**p, "metadata": {**p["metadata"], "deletionTimestamp": STAMP}} for p in pods]
    nodes[leaving[3]["spec"]["nodeName"]] = False
    [state] = classify(dep, leaving, nodes)
    assert state.condition == "Terminating"
    assert state.node_lost
    actions = lifecycle.decide([state])
    assert actions.waiting == [0]
    assert [(s.replica, cause) for s, cause in actions.delete] == [(0, "force")]
    del nodes[leaving[3]["spec"]["nodeName"]]  # a node gone altogether: the same
    assert lifecycle.decide(classify(dep, leaving, nodes)).delete[0][1] == "force"


def test_unplaceable_deployment_says_why_and_is_pending() -> None:
    dep = deployment("big", replicas=1, tensor=8, data=16, gpusPerPod=4, fallback="Never")
    states = classify(dep, [], {})
    reason = "no rack holds 128 free GPUs in one NVLink domain: 4 racks have too few free"
    status = dump(deployment_status(dep, states, Progress(unplaced={0: reason}), "g", STAMP))
    assert status["phase"] == "Pending"
    placed_cond = next(c for c in status["conditions"] if c["type"] == "Placed")
    assert (placed_cond["status"], placed_cond["reason"]) == ("False", "Unplaceable")
    assert reason in placed_cond["message"]
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "Stalled")
    # What kstatus (Flux) reads: not Ready, Stalled with the engine's reason, not Reconciling.
    kstatus = {c["type"]: c for c in status["conditions"]}
    assert (kstatus["Ready"]["status"], kstatus["Ready"]["reason"]) == ("False", "Pending")
    assert reason in kstatus["Ready"]["message"]
    assert (kstatus["Stalled"]["status"], kstatus["Stalled"]["reason"]) == (
        "True",
        "WaitingForCapacity",
    )
    assert kstatus["Reconciling"]["status"] == "False"


def test_a_restarting_replica_is_reconciling_not_ready_not_stalled() -> None:
    dep, pods, nodes = placed()
    states = classify(dep, [p for p in pods if p["metadata"]["name"] != "ds-1-3"], nodes)
    status = dump(deployment_status(dep, states, Progress(), "nvidia.com/gpu", STAMP))
    kstatus = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert kstatus["Ready"] == ("False", "Degraded")
    assert kstatus["Reconciling"] == ("True", "Restarting")
    assert kstatus["Stalled"] == ("False", "AsExpected")


def test_condition_transition_times_survive_an_unchanged_status() -> None:
    dep, pods, nodes = placed()
    states = classify(dep, pods, nodes)
    first = deployment_status(dep, states, Progress(), "nvidia.com/gpu", STAMP)
    again = dep.model_copy(update={"status": first})
    second = deployment_status(again, states, Progress(), "nvidia.com/gpu", "later")
    assert dump(second) == dump(first)


def test_pool_status_counts_racks_gpus_and_deployments() -> None:
    nodes = nvl72(3)
    nodes[0]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    pods = [
        gpu_pod(
            "a", "gb200-0001-00", 4, namespace="llm", labels={"rackscale.dev/deployment": "ds"}
        ),
        gpu_pod("b", "gb200-0001-01", 4, namespace="other"),
    ]
    snapshot = build_snapshot(nodes, pods, [pool()])
    status = dump(pool_status(snapshot.pools["gb200"], snapshot.conflicts, [], STAMP))
    assert status["racks"] == 3
    assert status["healthyRacks"] == 2
    assert status["freeRacks"] == 1
    assert status["nodes"] == 54
    assert status["gpus"] == {"allocatable": 216, "allocated": 8, "free": 208}
    racks = {r["name"]: r for r in status["rackStatuses"]}
    assert racks["clique-0000"]["health"] == "Degraded"
    assert racks["clique-0001"]["deployments"] == ["llm/ds"]
    assert racks["clique-0001"]["gpus"] == {"allocatable": 72, "allocated": 8, "free": 64}
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "SomeRacksUnhealthy")


def test_pool_status_reports_nodes_selected_by_two_pools() -> None:
    nodes = nvl72(1)
    pools = [pool("a"), pool("b")]
    snapshot = build_snapshot(nodes, [], pools)
    status = dump(pool_status(snapshot.pools["a"], snapshot.conflicts, [], STAMP))
    overlap = next(c for c in status["conditions"] if c["type"] == "NodesOverlap")
    assert overlap["status"] == "True"
    assert "RackPool b" in overlap["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoRacks")


def test_the_compute_domains_condition_follows_the_engines_word_on_the_pods() -> None:
    # A pool wanting ComputeDomains the API server does not serve: replicas whose pods the
    # engine said NVLink crosses nodes for (their annotation) make the condition NotInstalled;
    # the same pods without the engine's word do not, wherever they run.
    dep, pods, nodes = placed()
    assert all(
        p["metadata"]["annotations"][NVLINK_CROSSES_NODES_ANNOTATION] == "true" for p in pods
    )

    def domains(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        states = classify(dep, pods, nodes)
        built = deployment_status(
            dep, states, Progress(), "nvidia.com/gpu", STAMP, domains_missing=True
        )
        return [c for c in dump(built)["conditions"] if c["type"] == "ComputeDomains"]

    assert [c["reason"] for c in domains(pods)] == ["NotInstalled"]
    unsaid = [
        {**p, "metadata": {**p["metadata"], "annotations": {
            k: v for k, v in p["metadata"]["annotations"].items()
            if k != NVLINK_CROSSES_NODES_ANNOTATION
        }}}
        for p in pods
    ]  # fmt: skip
    assert domains(unsaid) == []
