"""What `rackscale plan --together` computes from the live cluster before the operator runs is
what the operator then does, replica by replica and pod by pod.

The cluster's Nodes, Pods and the RackPool are read with kubectl, as a user would for the plan;
the deployments are applied while no operator runs, then the operator starts and places them in
its first pass, as one batch. Serving groups (one of them sharing a ComputeDomain), replicas
spanning trays (ComputeDomains), a block-scoped replica over two racks, a device-plugin
deployment, and a replica that cannot fit are among them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client

from e2e.support import (
    OPERATOR,
    UNSCHEDULABLE_TIMEOUT,
    apply,
    condition,
    eventually,
    get,
    inference_deployment,
)

Placement = dict[int, list[tuple[int, str]]]  # replica -> (first rank, node) of each pod


def _kubectl_json(kubectl: list[str], *args: str) -> str:
    done = subprocess.run(
        [*kubectl, *args, "-o", "json"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _roles(name: str, pool: str) -> dict[str, Any]:
    """A serving group of a prefill replica of 8 GPUs and a decode replica of 16, in one rack."""
    base = inference_deployment(name, pool, replicas=2, fallback="Never")
    template = base["spec"].pop("template")
    del base["spec"]["parallelism"], base["spec"]["gpusPerPod"]
    base["spec"]["placement"]["colocate"] = "Rack"
    base["spec"]["roles"] = [
        {"name": "prefill", "parallelism": {"data": 8, "expert": 8}, "gpusPerPod": 4,
         "template": template},
        {"name": "decode", "parallelism": {"data": 16, "expert": 16}, "gpusPerPod": 4,
         "template": template},
    ]  # fmt: skip
    return base


def deployments(pool: str, namespace: str) -> list[dict[str, Any]]:
    """Sizes all different, so that no order between equals decides anything."""
    bodies = [
        _roles("groups", pool),  # 2 groups x 24 GPUs, each sharing a ComputeDomain
        inference_deployment("wide", pool, replicas=2, data=4, fallback="Never"),  # 32 GPUs
        inference_deployment("pipe", pool, replicas=1, tensor=8, data=10, fallback="Never"),
        inference_deployment("small", pool, replicas=3, tensor=4, gpus_per_pod=4),  # 4 GPUs
        inference_deployment("huge", pool, replicas=1, data=40, fallback="Never"),  # 320: waits
        inference_deployment("ordinary", None, replicas=1, tensor=1, gpus_per_pod=1),
    ]
    bodies[2]["spec"]["placement"]["replicaScope"] = "Block"  # 80 GPUs: two racks of a block
    for body in bodies:
        body["metadata"]["namespace"] = namespace
    return bodies


def planned(plan: dict[str, Any]) -> dict[str, Placement]:
    out: dict[str, Placement] = {}
    for item in plan["placements"]:
        name = item["deployment"].split("/", 1)[1]
        out[name] = {
            r["replica"]: sorted((p["firstRank"], p["node"]) for p in r["pods"])
            for r in item["replicas"]
            if r["mode"] == "Rack"
        }
    return out


def placed(kube: client.ApiClient, namespace: str, name: str) -> Placement:
    status = get(kube, namespace, name).get("status") or {}
    return {
        p["replica"]: sorted((q["firstRank"], q["node"]) for q in p["pods"])
        for p in status.get("placements") or []
        if p.get("mode", "Rack") == "Rack"
    }


def placed_as(
    kube: client.ApiClient, namespace: str, name: str, wanted: set[int]
) -> Callable[[], bool]:
    """A probe: whether every replica of `wanted` (and no other) is placed."""
    return lambda: set(placed(kube, namespace, name)) == wanted


def test_the_plan_made_before_the_operator_runs_is_what_it_does(
    *,
    kube: client.ApiClient,
    kubectl: list[str],
    kubeconfig: str,
    pool: str,
    llm: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = {
        "nodes.json": _kubectl_json(kubectl, "get", "nodes"),
        "pods.json": _kubectl_json(kubectl, "get", "pods", "-A"),
        "pool.json": _kubectl_json(kubectl, "get", "rackpools", pool),
    }
    for file, text in cluster.items():
        (tmp_path / file).write_text(text)
    bodies = deployments(pool, llm)
    (tmp_path / "deployments.yaml").write_text(yaml.safe_dump_all(bodies))
    flags = [a for f in cluster for a in ("--cluster", str(tmp_path / f))]
    done = subprocess.run(
        [sys.executable, "-m", "rackscale", "plan", "--together", "-o", "json", *flags,
         str(tmp_path / "deployments.yaml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr  # huge waits
    plan = planned(json.loads(done.stdout))
    assert plan["huge"] == {}
    assert [len(plan[n]) for n in ("groups", "wide", "small")] == [4, 2, 3]
    [pipe] = plan["pipe"].values()
    assert len({n for _, n in pipe}) == 20

    for body in bodies:  # all waiting when the operator starts: its first pass is one batch
        apply(kube, llm, body)
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setenv("RACKSCALE_UNSCHEDULABLE_TIMEOUT", str(UNSCHEDULABLE_TIMEOUT))
    with KopfRunner(OPERATOR, timeout=60) as runner:
        for name, replicas in plan.items():
            if replicas:
                eventually(placed_as(kube, llm, name, set(replicas)), f"{name} to be placed")
        eventually(
            lambda: condition(get(kube, llm, "huge"), "Placed").get("reason") == "Unplaceable",
            "huge to be refused",
        )
        actual = {name: placed(kube, llm, name) for name in plan}
    assert runner.exception is None, runner.output
    for name, replicas in plan.items():
        assert actual[name] == replicas, f"{name}: the operator placed it otherwise than planned"
