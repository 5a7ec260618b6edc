"""Serving groups (spec.roles) on a real API server, kube-scheduler and kwok: the disaggregated
DeepSeek-R1 example placed whole in one rack, scaled by whole groups, and a lost decode shard
restarting its whole group when the group shares a ComputeDomain, only its role replica when
not."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.support import (
    apply,
    check_guarantees,
    eventually,
    gb200_pool,
    get,
    patch,
    pods,
    ready,
)
from e2e.test_explain import plugin

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "deepseek-r1-disagg.yaml"


def example(pool: str) -> dict[str, Any]:
    """The example's InferenceDeployment, on the test's pool."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    [body] = [d for d in docs if d.get("kind") == "InferenceDeployment"]
    body = copy.deepcopy(body)
    body["metadata"].pop("namespace", None)
    body["spec"]["placement"]["rackPool"] = pool
    return dict(body)


def live(kube: client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    return [p for p in pods(kube, namespace, name) if not p["metadata"].get("deletionTimestamp")]


def groups(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Counter[str]]:
    """Serving group -> role -> pods."""
    out: dict[str, Counter[str]] = {}
    for pod in live(kube, namespace, name):
        labels = pod["metadata"]["labels"]
        out.setdefault(labels["rackscale.dev/group"], Counter())[labels["rackscale.dev/role"]] += 1
    return out


def racks_of(body: dict[str, Any]) -> dict[int, set[str]]:
    """Serving group -> the racks its role replicas hold, from the status."""
    out: dict[int, set[str]] = {}
    for placement in body["status"]["placements"]:
        out.setdefault(placement["group"], set()).update(placement["racks"])
    return out


def member_uids(
    kube: client.ApiClient, namespace: str, name: str
) -> dict[tuple[str, str], set[str]]:
    """(serving group, role) -> the uids of its live pods."""
    out: dict[tuple[str, str], set[str]] = {}
    for pod in live(kube, namespace, name):
        labels = pod["metadata"]["labels"]
        key = (labels["rackscale.dev/group"], labels["rackscale.dev/role"])
        out.setdefault(key, set()).add(pod["metadata"]["uid"])
    return out


def lose_decode_shard(
    kube: client.ApiClient, namespace: str, name: str, replaced: set[tuple[str, str]]
) -> dict[str, Any]:
    """Delete shard 3 of group 0's decode replica; wait until exactly the role replicas in
    `replaced` run on new pods (every other pod kept) and the deployment is Ready again."""
    before = member_uids(kube, namespace, name)
    client.CoreV1Api(kube).delete_namespaced_pod(f"{name}-g0-decode-0-3", namespace)

    def settled() -> dict[str, Any] | None:
        now = member_uids(kube, namespace, name)
        if now.keys() != before.keys() or any(
            len(now[k]) != len(before[k]) or bool(now[k] & before[k]) != (k not in replaced)
            for k in now
        ):
            return None
        body = get(kube, namespace, name)
        return body if (body.get("status") or {}).get("phase") == "Ready" else None

    what = f"role replicas {sorted(replaced)} placed again, and nothing else"
    return eventually(settled, what)


@pytest.mark.usefixtures("operator")
def test_the_disaggregated_example_keeps_each_serving_group_in_one_rack(
    kube: client.ApiClient, pool: str, llm: str, kubectl: list[str]
) -> None:
    """On the local cluster's ComputeDomains (the DRA stand-in): each group shares one, so a
    lost decode shard restarts its whole group, with a fresh ComputeDomain."""
    name = "deepseek-r1-disagg"
    apply(kube, llm, example(pool))
    body = ready(kube, llm, name, 1)
    assert groups(kube, llm, name) == {"0": Counter(prefill=2, decode=8)}
    assert len(racks_of(body)[0]) == 1
    assert {(p["group"], p["role"]) for p in body["status"]["placements"]} == {
        (0, "prefill"),
        (0, "decode"),
    }
    assert {p.get("computeDomain") for p in body["status"]["placements"]} == {f"{name}-g0"}
    assert body["status"]["gpus"] == 40
    check_guarantees(kube)
    shown = plugin(kubectl, "racks")
    assert shown.returncode == 0, shown.stderr
    assert f"{llm}/{name} (group 0: decode, prefill)" in shown.stdout

    # Scaling counts serving groups: one more group of one prefill and one decode, whole.
    patch(kube, llm, name, {"replicas": 2})
    body = ready(kube, llm, name, 2)
    assert groups(kube, llm, name) == {
        "0": Counter(prefill=2, decode=8),
        "1": Counter(prefill=2, decode=8),
    }
    assert all(len(racks) == 1 for racks in racks_of(body).values())
    assert body["status"]["ready"] == "2/2"
    check_guarantees(kube)

    # A lost decode shard of group 0: group 0 restarts whole, group 1 keeps serving.
    body = lose_decode_shard(kube, llm, name, {("0", "prefill"), ("0", "decode")})
    assert all(len(racks) == 1 for racks in racks_of(body).values())
    check_guarantees(kube)

    # Scaling down removes the highest group whole.
    patch(kube, llm, name, {"replicas": 1})
    eventually(
        lambda: groups(kube, llm, name) == {"0": Counter(prefill=2, decode=8)},
        "group 1 to be removed",
    )
    ready(kube, llm, name, 1)


@pytest.mark.usefixtures("operator")
def test_a_lost_decode_shard_restarts_only_its_role_replica_without_a_compute_domain(
    kube: client.ApiClient, crds: None, llm: str
) -> None:
    name = "deepseek-r1-disagg"
    with gb200_pool(kube, "e2e-off", computeDomains="Off") as pool:
        apply(kube, llm, example(pool))
        body = ready(kube, llm, name, 1)
        [rack] = racks_of(body)[0]
        assert not any(p.get("computeDomain") for p in body["status"]["placements"])
        body = lose_decode_shard(kube, llm, name, {("0", "decode")})
        assert racks_of(body)[0] == {rack}, "placed again beside its prefill replica"
        check_guarantees(kube)
