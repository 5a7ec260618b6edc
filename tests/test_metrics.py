"""Metric labels stay bounded, and the pool gauges say what the pool status says. No cluster."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rackscale.cli import main as cli
from rackscale.controller import metrics
from rackscale.controller.status import pool_status
from rackscale.placement import place_deployment
from rackscale.topology import build_snapshot
from tests.factory import deployment, nvl72, pool


def test_engine_reasons_map_to_a_fixed_set_of_categories() -> None:
    nodes = nvl72(2)
    snapshot = build_snapshot(nodes, [], [pool()])
    huge = deployment("huge", replicas=1, tensor=8, data=16, gpusPerPod=4, fallback="Never")
    reason = place_deployment(snapshot, huge).decisions[0].reason
    assert metrics.reason_category(reason) == "no-rack-with-room"
    missing = deployment("x", replicas=1, rackPool="nowhere", fallback="Never")
    reason = place_deployment(snapshot, missing).decisions[0].reason
    assert metrics.reason_category(reason) == "pool-missing"
    assert metrics.reason_category("something new the engine may say one day") == "other"
    assert metrics.reason_category(None) == "other"
    assert set(map(metrics.reason_category, ["a", "no block holds 9"])) <= set(
        metrics.REASON_CATEGORIES
    )


def test_restart_causes_come_from_what_lifecycle_says_was_lost() -> None:
    cases = {
        "pod ds-0-1 failed": "pod-failed",
        "node gb200-a-01 of pod ds-0-1 is gone": "lost-shard",
        "shard 3 of 8 is gone": "lost-shard",
        "node gb200-a-01 of pod ds-0-1 is NotReady": "node-not-ready",
        "pod ds-0-1 could not be scheduled on node n1 for 60s (0/1 nodes are available)": (
            "unschedulable-pin"
        ),
        "": "other",
    }
    for why, cause in cases.items():
        assert metrics.restart_cause(why) == cause, why
        assert cause in metrics.RESTART_CAUSES


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

    metrics.count_unplaced(
        ["no rack holds 64 free GPUs", "no rack holds 8 free GPUs", "RackPool x does not exist"]
    )
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
