"""Operator overhead on the one-state-per-pass controller: the real reconciler's pass latency and
memory on an in-memory API whose watch feeds its cache (tests/fakeapi.py).

Run as `python -m bench.passes RACKS DEPLOYMENTS PASSES` in its own process, so that its RSS is
the operator's state at that size alone; it prints one JSON object. The old side of the
side-by-side figures runs the old commit's own copy of this module (bench/baseline_code.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.stats import percentile
from rackscale.controller.reconcile import Reconciler
from rackscale.topology import PodInfo
from tests.factory import nvl72
from tests.fakeapi import FakeAPI


def rss_kib() -> int:
    """This process's resident set size now, from /proc."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class MemoryAPI(FakeAPI):
    """FakeAPI keeping only what a watch delivers to the operator, so the process's RSS is the
    operator's: each pod's metadata, node and status, and statuses without copies."""

    async def create_pod(self, body: dict[str, Any]) -> str:
        meta = body["metadata"]
        terms = body["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        pod = {
            "metadata": {**meta, "uid": f"uid-{self.created}"},
            "spec": {**body["spec"], "nodeName": terms[0]["matchFields"][0]["values"][0]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
        self.created += 1
        key = (meta["namespace"], meta["name"])
        info = PodInfo.from_body(pod)
        self.pods[key] = []  # counted, not kept: the cache holds what the watch delivers
        for cache in self._caches:
            cache.put_pod(key, info)
        return str(info.uid)

    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        body = {**self.pools[name][0], "status": status}
        self.pools[name] = [body]
        for cache in self._caches:
            cache.put_pool(name, body)


def _moe(api: FakeAPI, name: str) -> None:
    """A 64-GPU MoE deployment: TP 8 x DP 8, 16 pods of 4 GPUs, one replica."""
    body = api.apply(name, replicas=1, tensor=8, data=8, fallback="Never")
    body["spec"]["parallelism"]["expert"] = 64
    api.touch("deployments", ("llm", name))


def _pct(values: list[float], q: float) -> float:
    return round(percentile(values, q), 2)


async def measure(racks: int, deployments: int, passes: int) -> dict[str, Any]:
    """Fill the racks with `deployments` one-rack replicas, then time passes of the reconciler."""
    before = rss_kib()
    api = MemoryAPI(nvl72(racks, blocks=max(1, racks // 20)))
    reconciler = Reconciler(api.view(), api)
    api.nodes.clear()  # the watch keeps no bodies: the cache's slim nodes are all there is
    started = time.perf_counter()
    for i in range(deployments):
        _moe(api, f"fill-{i}")
    await reconciler.reconcile_all()
    await reconciler.reconcile_all()  # the statuses written come back through the watch
    fill_s = time.perf_counter() - started

    steady, placing = [], []
    for i in range(passes):
        t0 = time.perf_counter()
        await reconciler.reconcile_all()
        steady.append((time.perf_counter() - t0) * 1000)
        _moe(api, f"new-{i}")  # one more 64-GPU deployment: the pass that places it
        t0 = time.perf_counter()
        await reconciler.reconcile_all()
        placing.append((time.perf_counter() - t0) * 1000)
        await reconciler.reconcile_all()  # its status, shown back by the watch
    t0 = time.perf_counter()
    await reconciler.refresh_pools(force=True)
    pool_ms = (time.perf_counter() - t0) * 1000
    placed = sum(
        1 for (d,) in api.deployments.values() if (d.get("status") or {}).get("placedReplicas")
    )
    return {
        "racks": racks,
        "nodes": len(reconciler.cache.nodes),
        "deployments": len(api.deployments),
        "placed_deployments": placed,
        "pods": len(api.pods),
        "first_pass_s": round(fill_s, 2),
        "passes": passes,
        "steady_pass_ms": {"p50": _pct(steady, 0.5), "p99": _pct(steady, 0.99)},
        "placing_pass_ms": {"p50": _pct(placing, 0.5), "p99": _pct(placing, 0.99)},
        "pool_status_ms": round(pool_ms, 2),
        "rss_mib": round(rss_kib() / 1024, 1),
        "rss_before_view_mib": round(before / 1024, 1),
    }


if __name__ == "__main__":
    racks_, deps_, passes_ = (int(a) for a in sys.argv[1:4])
    print(json.dumps(asyncio.run(measure(racks_, deps_, passes_))))
