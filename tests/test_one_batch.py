"""One batch: the operator's pass, `rackscale explain` and `rackscale plan --together` place the
same cluster the same way, replica by replica: serving groups, a replica that needs a
ComputeDomain, one that must wait, and (operator and explain: `plan` places only what waits
whole) a group growing by a scaled role."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from rackscale.api import InferenceDeployment, RackPool
from rackscale.cli import explain
from rackscale.cli.plan import place_all
from rackscale.controller.reconcile import Reconciler
from rackscale.placement import DeploymentPlan
from rackscale.planner.step import owned_pods, role_number_of
from rackscale.topology import PodInfo, build_snapshot
from tests.factory import nvl72
from tests.fakeapi import POOL, FakeAPI
from tests.test_reconcile_roles import apply_disagg

Where = tuple[tuple[str, ...], str | None]  # nodes by shard, ComputeDomain
Placements = dict[tuple[str, int], Where | None]  # (deployment, replica) -> where (None: waits)


def bodies(api: FakeAPI) -> list[dict[str, Any]]:
    return [copy.deepcopy(b) for (b,) in api.deployments.values()]


def operator(api: FakeAPI, models: list[InferenceDeployment]) -> Placements:
    """Where the operator's pods are, replica by replica."""
    infos = [
        PodInfo.from_body(p)
        for (p,) in api.pods.values()
        if not p["metadata"].get("deletionTimestamp")
    ]
    out: Placements = {}
    for model in models:
        by_replica: dict[int, list[PodInfo]] = {}
        for pod in owned_pods(model, infos):
            number = (
                role_number_of(model, pod)
                if model.spec.roles
                else int(pod.labels["rackscale.dev/replica"])
            )
            assert number is not None
            by_replica.setdefault(number, []).append(pod)
        for number in model.spec.replica_numbers():
            pods = sorted(
                by_replica.get(number, []), key=lambda p: int(p.labels["rackscale.dev/shard"])
            )
            out[(model.key, number)] = (
                (
                    tuple(str(p.pinned) for p in pods),
                    pods[0].labels.get("rackscale.dev/compute-domain"),
                )
                if pods
                else None
            )
    return out


def explained(api: FakeAPI, nodes: list[dict[str, Any]]) -> Placements:
    """What `rackscale explain` says the operator's next pass does, for every waiting replica."""
    everything = bodies(api)
    cluster = explain.Cluster(
        deployment=everything[0],
        deployments=everything,
        nodes=nodes,
        pods=[copy.deepcopy(p) for (p,) in api.pods.values()],
        pools=[copy.deepcopy(POOL)],
        compute_domains=True,
    )
    decisions = explain._next_pass(cluster, explain._snapshot(cluster))
    return {
        key: (tuple(str(p.node) for p in d.plan.pods), d.plan.compute_domain) if d.plan else None
        for key, d in decisions.items()
    }


def planned(plans: list[DeploymentPlan], models: list[InferenceDeployment]) -> Placements:
    out: Placements = {}
    for plan, model in zip(plans, models, strict=True):
        placed = {r.replica: r for r in plan.replicas}
        for number in model.spec.replica_numbers():
            r = placed.get(number)
            out[(model.key, number)] = (
                (tuple(str(p.node) for p in r.pods), r.compute_domain) if r else None
            )
    return out


def test_operator_explain_and_plan_place_a_cluster_alike() -> None:
    nodes = nvl72(2)
    api = FakeAPI(copy.deepcopy(nodes), domains_served=True)
    apply_disagg(api)  # a serving group of 40 GPUs, sharing a ComputeDomain
    api.apply("span", replicas=1, tensor=8, data=2, fallback="Never")  # 16 GPUs over 4 trays
    api.apply("big", replicas=2, tensor=8, data=8, fallback="Never")  # 64 each: one must wait
    models = [InferenceDeployment.model_validate(b) for b in bodies(api)]

    before = explained(api, nodes)
    snapshot = build_snapshot(nodes, [], [RackPool.model_validate(POOL)], compute_domains=True)
    together = planned(place_all(snapshot, models, together=True), models)
    asyncio.run(Reconciler(api.view(), api).reconcile_all())
    done = operator(api, models)

    assert done == before == together
    waiting = [key for key, where in done.items() if where is None]
    assert waiting == [("llm/big", 1)]
    assert done[("llm/span", 0)] is not None
    assert done[("llm/span", 0)][1] == "span-0"
    group = [where for (name, _), where in done.items() if name == "llm/ds"]
    assert len(group) == 2
    assert all(where is not None and where[1] == "ds-g0" for where in group)


def test_operator_and_explain_grow_a_group_alike() -> None:
    nodes = nvl72(2)
    api = FakeAPI(copy.deepcopy(nodes), domains_served=True)
    apply_disagg(api)
    reconciler = Reconciler(api.view(), api)
    asyncio.run(reconciler.reconcile_all())
    api.edit("ds", lambda spec: spec["roles"][1].update(replicas=2))  # one more decode
    models = [InferenceDeployment.model_validate(b) for b in bodies(api)]
    before = explained(api, nodes)
    assert list(before) == [("llm/ds", 101)]  # only the new decode waits
    asyncio.run(reconciler.reconcile_all())
    done = operator(api, models)
    assert before[("llm/ds", 101)] is not None
    assert done[("llm/ds", 101)] == before[("llm/ds", 101)]
    assert before[("llm/ds", 101)][1] == "ds-g0"  # it joins its group's ComputeDomain
