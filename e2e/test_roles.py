"""Serving groups (spec.roles) on a real API server, kube-scheduler and kwok: the disaggregated
DeepSeek-R1 example placed whole in one rack, scaled by whole groups, and a lost decode shard
restarting its whole group when the group shares a ComputeDomain, only its role replica when
not, and scaling one role growing and shrinking each group in place, with and without
ComputeDomains."""

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
from e2e.test_compute_domains import domains
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


def scale_prefill(kube: client.ApiClient, namespace: str, name: str, replicas: int) -> None:
    """Patch spec.roles[0].replicas (prefill; a merge patch replaces the whole list)."""
    roles = get(kube, namespace, name)["spec"]["roles"]
    assert roles[0]["name"] == "prefill"
    roles[0]["replicas"] = replicas
    patch(kube, namespace, name, {"roles": roles})


def prefill_index(pod_name: str, name: str) -> str:
    """`1` of `<name>-g0-prefill-1-0`."""
    return pod_name.removeprefix(name).split("-")[3]


def two_groups(pool: str) -> dict[str, Any]:
    body = example(pool)
    body["spec"]["replicas"] = 2
    return body


def scale_prefill_in_place(
    kube: client.ApiClient, namespace: str, name: str, *, shared: bool
) -> None:
    """Two serving groups; prefill 1 -> 2 per group, then back to 1: each group changes in
    place, in its rack, and no other pod restarts. `shared`: each group shares a ComputeDomain,
    which the added prefill replicas join."""
    body = ready(kube, namespace, name, 2)
    racks = racks_of(body)
    assert all(len(held) == 1 for held in racks.values())
    before = member_uids(kube, namespace, name)
    found = {n: d["metadata"]["uid"] for n, d in domains(kube, namespace).items()}
    assert found.keys() == ({f"{name}-g0", f"{name}-g1"} if shared else set())

    scale_prefill(kube, namespace, name, 2)
    grown = {"0": Counter(prefill=4, decode=8), "1": Counter(prefill=4, decode=8)}
    eventually(lambda: groups(kube, namespace, name) == grown, "each group to grow by a prefill")
    body = ready(kube, namespace, name, 2)
    assert body["status"]["ready"] == "2/2"
    after = member_uids(kube, namespace, name)
    for group in ("0", "1"):
        assert after[(group, "decode")] == before[(group, "decode")], "no decode pod restarted"
        assert before[(group, "prefill")] < after[(group, "prefill")], "the prefill pods kept"
    assert racks_of(body) == racks, "each group grew in its own rack"
    eventually(
        lambda: told_prefills(kube, namespace, name) == {"0", "1"},
        "every pod to be told both prefill leaders of its group",
    )
    now = {n: d["metadata"]["uid"] for n, d in domains(kube, namespace).items()}
    assert now == found, "no ComputeDomain created or deleted"
    for pod in live(kube, namespace, name):
        group = pod["metadata"]["labels"]["rackscale.dev/group"]
        claims = [
            c.get("resourceClaimTemplateName") for c in pod["spec"].get("resourceClaims") or []
        ]
        assert claims == ([f"{name}-g{group}-channel"] if shared else []), pod["metadata"]["name"]
    check_guarantees(kube)

    scale_prefill(kube, namespace, name, 1)
    shrunk = {"0": Counter(prefill=2, decode=8), "1": Counter(prefill=2, decode=8)}
    eventually(lambda: groups(kube, namespace, name) == shrunk, "prefill 1 of each group to go")
    body = ready(kube, namespace, name, 2)
    assert member_uids(kube, namespace, name) == before, "only the prefill-1 pods were deleted"
    assert {
        prefill_index(p["metadata"]["name"], name)
        for p in live(kube, namespace, name)
        if p["metadata"]["labels"]["rackscale.dev/role"] == "prefill"
    } == {"0"}
    assert {n: d["metadata"]["uid"] for n, d in domains(kube, namespace).items()} == found
    eventually(
        lambda: told_prefills(kube, namespace, name) == {"0"},
        "every pod to be told its group's one prefill leader",
    )
    check_guarantees(kube)


def told_prefills(kube: client.ApiClient, namespace: str, name: str) -> set[str] | None:
    """The prefill indexes every live pod's `rackscale.dev/leaders` names, checked to be of the
    pod's own group; None while the pods disagree."""
    told: set[frozenset[str]] = set()
    for pod in live(kube, namespace, name):
        group = pod["metadata"]["labels"]["rackscale.dev/group"]
        text = pod["metadata"]["annotations"].get("rackscale.dev/leaders", "")
        lines = dict(line.split("=", 1) for line in text.splitlines())
        hosts = [h.split(".", 1)[0] for h in lines.get("prefill", "").split(",") if h]
        assert all(h.startswith(f"{name}-g{group}-prefill-") for h in hosts), (group, hosts)
        told.add(frozenset(prefill_index(h, name) for h in hosts))
    return set(next(iter(told))) if len(told) == 1 else None


@pytest.mark.usefixtures("operator")
def test_scaling_prefill_grows_each_group_in_place_into_its_compute_domain(
    kube: client.ApiClient, pool: str, llm: str
) -> None:
    apply(kube, llm, two_groups(pool))
    scale_prefill_in_place(kube, llm, "deepseek-r1-disagg", shared=True)


@pytest.mark.usefixtures("operator")
def test_scaling_prefill_grows_each_group_in_place_without_compute_domains(
    kube: client.ApiClient, crds: None, llm: str
) -> None:
    with gb200_pool(kube, "e2e-off", computeDomains="Off") as pool:
        apply(kube, llm, two_groups(pool))
        scale_prefill_in_place(kube, llm, "deepseek-r1-disagg", shared=False)
