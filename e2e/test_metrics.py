"""`rackscale run` serves Prometheus metrics that agree with the cluster it manages.

The operator runs as `python -m rackscale run` in a child process, so the metrics start from zero
and the scrape goes through the same HTTP server the chart's Service points at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from e2e import objects
from e2e.controlplane.processes import free_port
from e2e.support import (
    GPU,
    apply,
    condition,
    eventually,
    get,
    inference_deployment,
    pods,
    ready,
)

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples | None:
    """Every sample as {(name, labels): value}; None while the server does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def metrics_port(kubeconfig: str, crds: None, tmp_path: Path) -> Iterator[int]:
    """The operator in a child process with metrics on a free port; its log is kept on failure."""
    port = free_port()
    log = tmp_path / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "PYTHONPATH": str(ROOT / "operator"),
    }
    command = [
        sys.executable,
        "-m",
        "rackscale",
        "run",
        "--all-namespaces",
        "--metrics-port",
        str(port),
        "--liveness",
        "none",
        "--resync",
        "3",
        "--unschedulable-timeout",
        "30",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        eventually(
            lambda: process.poll() is None and scrape(port) is not None,
            f"the operator's metrics on port {port} (log: {log})",
            timeout=30,
        )
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _pinned_node(spec: client.V1PodSpec) -> str | None:
    """The node a required `metadata.name` node-affinity term names, as rackscale pins pods."""
    affinity = spec.affinity
    pinned = None
    if affinity and affinity.node_affinity:
        required = affinity.node_affinity.required_during_scheduling_ignored_during_execution
        for term in (required.node_selector_terms if required else None) or []:
            for expression in term.match_fields or []:
                if expression.key == "metadata.name" and expression.values:
                    pinned = expression.values[0]
    return pinned


def pool_gpus_in_use(kube: client.ApiClient, pool_name: str) -> int:
    """GPUs that running, pending or bound pods request on the nodes the pool's status lists,
    counted from the pods themselves."""
    rp = objects.custom(
        client.CustomObjectsApi(kube).get_cluster_custom_object(
            "rackscale.dev", "v1alpha1", "rackpools", pool_name
        )
    )
    assert (rp.get("status") or {}).get("racks"), "the pool has no status yet"
    core = client.CoreV1Api(kube)
    nodes = {
        objects.name(n)
        for n in core.list_node(label_selector="nvidia.com/gpu.product=NVIDIA-GB200").items
    }
    total = 0
    for pod in core.list_pod_for_all_namespaces().items:
        if objects.pod_status(pod).phase in ("Succeeded", "Failed"):
            continue
        spec = objects.pod_spec(pod)
        node = spec.node_name or _pinned_node(spec)
        if node not in nodes:
            continue
        for container in spec.containers:
            requests = (container.resources.requests if container.resources else None) or {}
            total += int(requests.get(GPU, 0))
    return total


def test_metrics_match_the_cluster(
    kube: client.ApiClient,
    metrics_port: int,
    pool: str,
    llm: str,
) -> None:
    apply(
        kube,
        llm,
        inference_deployment(
            "moe", pool, replicas=2, tensor=8, data=4, expert=32, fallback="Never"
        ),
    )
    apply(kube, llm, inference_deployment("huge", pool, replicas=1, data=16, fallback="Never"))
    ready(kube, llm, "moe", 2)
    eventually(
        lambda: condition(get(kube, llm, "huge"), "Placed").get("reason") == "Unplaceable",
        "Placed=False on the deployment that cannot fit",
    )

    def agreed() -> tuple[Samples, int] | None:
        samples = scrape(metrics_port)
        in_use = pool_gpus_in_use(kube, pool)
        if samples is None or value(samples, "rackscale_pool_gpus_allocated", pool=pool) != in_use:
            return None
        return samples, in_use

    samples, in_use = eventually(agreed, "the pool's allocated-GPU gauge to equal the pods' GPUs")
    assert in_use >= 64, "the two 32-GPU replicas count"
    allocatable = value(samples, "rackscale_pool_gpus_allocatable", pool=pool)
    assert allocatable == 4 * 72
    assert value(samples, "rackscale_pool_gpus_free", pool=pool) == allocatable - in_use
    rack_allocated = [
        v
        for (name, labels), v in samples.items()
        if name == "rackscale_rack_gpus_allocated" and ("pool", pool) in labels
    ]
    assert len(rack_allocated) == 4
    assert sum(rack_allocated) == in_use
    assert value(samples, "rackscale_pool_racks", pool=pool, health="Healthy") == 4
    assert value(samples, "rackscale_pool_racks", pool=pool, health="Degraded") == 0

    placed = value(samples, "rackscale_placement_decisions_total", result="placed")
    assert placed is not None
    assert placed >= 2
    unplaced = value(samples, "rackscale_placement_decisions_total", result="unplaced")
    assert unplaced is not None
    assert unplaced >= 1
    assert value(samples, "rackscale_unplaced_replicas", reason="no-rack-with-room") == 1
    assert value(samples, "rackscale_unplaced_replicas", reason="other") == 0
    passes = value(samples, "rackscale_reconcile_passes_total")
    assert passes is not None
    # One placement timing per pass that had replicas waiting: the pending one waits in each.
    placing = value(samples, "rackscale_placement_duration_seconds_count")
    assert placing is not None
    assert 1 <= placing <= passes + 1  # the pass running now may have observed, not counted
    assert value(samples, "rackscale_reconcile_errors_total", scope="deployment") == 0

    # A lost shard restarts its replica, and the restart is counted by cause.
    victim = pods(kube, llm, "moe")[0]["metadata"]["name"]
    client.CoreV1Api(kube).delete_namespaced_pod(victim, llm, grace_period_seconds=0)

    def restarted() -> float | None:
        now = scrape(metrics_port) or {}
        return value(now, "rackscale_replica_restarts_total", cause="lost-shard")

    assert eventually(restarted, "a replica restart counted as lost-shard") == 1
    ready(kube, llm, "moe", 2)


def test_pool_series_follow_the_pool(kube: client.ApiClient, metrics_port: int) -> None:
    """A RackPool's series appear with it and go with it: no stale gauges."""
    api = client.CustomObjectsApi(kube)
    name = "metrics-hgx"
    body: dict[str, Any] = {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "RackPool",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-H200"}},
            "rackLabel": "kubernetes.io/hostname",
            "nvlinkDomain": "Node",
            "gpusPerRack": 8,
        },
    }
    api.create_cluster_custom_object("rackscale.dev", "v1alpha1", "rackpools", body)

    def with_pool_series() -> Samples | None:
        s = scrape(metrics_port)
        return s if s and value(s, "rackscale_pool_gpus_allocatable", pool=name) else None

    try:
        samples = eventually(with_pool_series, f"series for RackPool {name}")
        assert value(samples, "rackscale_pool_gpus_allocatable", pool=name) == 4 * 8
        assert value(samples, "rackscale_pool_racks", pool=name, health="Healthy") == 4
    finally:
        api.delete_cluster_custom_object("rackscale.dev", "v1alpha1", "rackpools", name)
    eventually(
        lambda: (
            (s := scrape(metrics_port)) is not None
            and value(s, "rackscale_pool_gpus_allocatable", pool=name) is None
        ),
        f"the series of RackPool {name} to go",
    )
