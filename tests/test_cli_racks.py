"""`rackscale racks` output, from a snapshot built like the live command builds it."""

from __future__ import annotations

from rackscale.cli.racks import as_json, as_table, bar, role_notes, statuses
from rackscale.placement import place_deployment
from rackscale.render import plan_objects
from rackscale.topology import Snapshot, build_snapshot
from tests.factory import gpu_pod, nvl72, pool
from tests.test_render_roles import disagg


def snapshot_with_a_deployment() -> Snapshot:
    pods = [
        gpu_pod(
            f"ds-0-{i}",
            f"gb200-0000-{i:02d}",
            4,
            namespace="llm",
            labels={"rackscale.dev/deployment": "deepseek-r1"},
        )
        for i in range(8)
    ]
    return build_snapshot(nvl72(2), pods, [pool()])


def test_one_line_per_rack_with_health_bar_and_deployments() -> None:
    text = as_table(statuses(snapshot_with_a_deployment()))
    lines = text.splitlines()
    assert lines[0] == "gb200: 2 racks, 2 healthy, 1 free, 32/144 GPUs in use"
    assert lines[1].split() == [
        "clique-0000",
        "Healthy",
        "[########----------]",
        "32/72",
        "llm/deepseek-r1",
    ]
    assert lines[2].split() == ["clique-0001", "Healthy", "[------------------]", "0/72", "-"]


def test_json_lists_pools_and_racks() -> None:
    out = as_json(statuses(snapshot_with_a_deployment()))
    (gb200,) = out["pools"]
    assert gb200["name"] == "gb200"
    assert gb200["freeRacks"] == 1
    assert gb200["rackStatuses"][0]["deployments"] == ["llm/deepseek-r1"]
    assert gb200["rackStatuses"][0]["gpus"] == {"allocatable": 72, "allocated": 32, "free": 40}


def test_bar_shows_any_use_and_never_overflows() -> None:
    assert bar(0, 72) == "[" + "-" * 18 + "]"
    assert bar(1, 72).startswith("[#-")
    assert bar(72, 72) == "[" + "#" * 18 + "]"
    assert bar(0, 0) == "[" + "-" * 18 + "]"


def test_no_pools_says_what_to_do() -> None:
    assert "no RackPools" in as_table({})


def test_a_rack_shows_the_serving_groups_and_roles_it_holds() -> None:
    dep = disagg()  # two groups of two prefill and one decode replica
    empty = build_snapshot(nvl72(2), [], [pool()])
    plan = place_deployment(empty, dep)
    pods = [o for o in plan_objects(empty, [plan], [dep]) if o["kind"] == "Pod"]
    snapshot = build_snapshot(nvl72(2), pods, [pool()])
    text = as_table(statuses(snapshot), roles=role_notes(snapshot, pods))
    racks = [line.split(None, 4)[-1] for line in text.splitlines()[1:]]
    assert sorted(racks) == [
        "llm/ds (group 0: decode, prefill)",
        "llm/ds (group 1: decode, prefill)",
    ]
