"""Metric labels stay bounded, and the pool gauges say what the pool status says. No cluster."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rackscale.cli import main as cli
from rackscale.controller import metrics
from rackscale.placement import REASON_CODES, place_deployment
from rackscale.planner import lifecycle
from rackscale.planner.status import pool_status
from rackscale.render import pool_facts, render_replica, template_hash
from rackscale.topology import build_snapshot
from rackscale.topology import pinned_node as pod_node
from tests.factory import deployment, nvl72, pool


def test_engine_reasons_are_counted_by_their_code() -> None:
    nodes = nvl72(2)
    snapshot = build_snapshot(nodes, [], [pool()])
    huge = deployment("huge", replicas=1, tensor=8, data=16, gpusPerPod=4, fallback="Never")
    why = place_deployment(snapshot, huge).decisions[0].why
    assert why is not None
    assert why.code == "no-rack-with-room"
    assert "no rack holds 128 free GPUs" in why.text  # the words, rendered from the code
    missing = deployment("x", replicas=1, rackPool="nowhere", fallback="Never")
    why = place_deployment(snapshot, missing).decisions[0].why
    assert why is not None
    assert why.code == "pool-missing"
    assert set(REASON_CODES) <= set(metrics.REASON_CATEGORIES)


def test_restart_causes_come_from_what_lifecycle_says_was_lost() -> None:
    now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    dep = deployment("ds", replicas=1, tensor=8, data=2, gpusPerPod=4)
    nodes = nvl72(1)
    snapshot = build_snapshot(nodes, [], [pool()])
    plan = place_deployment(snapshot, dep).replicas[0]
    pods = render_replica(dep, plan, pool_facts(dep, plan, snapshot))
    ready = {n["metadata"]["name"]: True for n in nodes}
    for pod in pods:
        pod["spec"]["nodeName"] = pod_node(pod)

    def cause(pods: list[dict[str, Any]], readiness: dict[str, bool]) -> str | None:
        (state,) = lifecycle.classify(
            pods, 1, digest=template_hash(dep), nodes=readiness, now=now, unschedulable_after=60
        )
        return state.loss

    assert cause(pods, ready) is None
    assert cause(pods[1:], ready) == "lost-shard"
    node = str(pods[0]["spec"]["nodeName"])
    assert cause(pods, {**ready, node: False}) == "node-not-ready"
    assert cause(pods, {k: v for k, v in ready.items() if k != node}) == "node-gone"
    failed = [{**pods[0], "status": {"phase": "Failed"}}, *pods[1:]]
    assert cause(failed, ready) == "pod-failed"
    assert set(lifecycle.LOSSES) | {"template-change"} == set(metrics.RESTART_CAUSES)


def test_pool_gauges_equal_the_pool_status() -> None:
    nodes = nvl72(3)
    snapshot = build_snapshot(nodes, [], [pool()])
    place_deployment(snapshot, deployment("ds", replicas=2, tensor=8, data=4, gpusPerPod=4))
    status = pool_status(snapshot.pools["gb200"], snapshot.conflicts, [], "")
    collector = metrics.PoolCollector()
    collector.update({"gb200": status})
    registry = CollectorRegistry()
    registry.register(collector)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert samples[("rackscale_pool_gpus_allocatable", (("pool", "gb200"),))] == 3 * 72
    assert samples[("rackscale_pool_gpus_allocated", (("pool", "gb200"),))] == 64
    assert samples[("rackscale_pool_gpus_free", (("pool", "gb200"),))] == 3 * 72 - 64
    racks = {k: v for k, v in samples.items() if k[0] == "rackscale_rack_gpus_allocated"}
    assert len(racks) == 3
    assert sum(racks.values()) == 64
    assert samples[("rackscale_pool_racks", (("health", "Healthy"), ("pool", "gb200")))] == 3
    assert samples[("rackscale_pool_racks", (("health", "Degraded"), ("pool", "gb200")))] == 0
    assert samples[("rackscale_pool_free_racks", (("pool", "gb200"),))] == status.free_racks

    collector.update({})  # the pool is gone: so are its series
    assert "rackscale_pool_gpus_allocated{" not in generate_latest(registry).decode()


def test_unplaced_gauge_counts_every_category_and_resets() -> None:
    def unplaced(reason: str) -> float | None:
        return REGISTRY.get_sample_value("rackscale_unplaced_replicas", {"reason": reason})

    metrics.count_unplaced(["no-rack-with-room", "no-rack-with-room", "pool-missing"])
    assert unplaced("no-rack-with-room") == 2
    assert unplaced("pool-missing") == 1
    metrics.count_unplaced([])
    for category in metrics.REASON_CATEGORIES:
        assert unplaced(category) == 0


def test_run_says_when_the_metrics_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["run", "--metrics-port", str(port), "--liveness", "none"])
    assert code == 1
    assert f"cannot serve metrics on port {port}" in capsys.readouterr().err
