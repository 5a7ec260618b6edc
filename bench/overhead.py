"""Operator overhead: the real reconciler's pass latency and memory on an in-memory cluster view.

Run as `python -m bench.overhead RACKS DEPLOYMENTS PASSES` in its own process, so that its RSS is
the operator's state at that size alone; it prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

from bench.stats import percentile

# The old controller's names (bench/baseline_code.py's OLD_COMMIT, first on the path when this
# runs): today's controller has none of them, so mypy, reading today's code, cannot find them.
from rackscale.controller.cluster import (  # type: ignore[attr-defined]
    ClusterView,
    slim_node,
    slim_pod,
)
from rackscale.controller.reconcile import Reconciler
from tests.factory import nvl72

POOL = {
    "apiVersion": "rackscale.dev/v1alpha1",
    "kind": "RackPool",
    "metadata": {"name": "gb200", "generation": 1, "resourceVersion": "1"},
    "spec": {"nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-GB200"}}},
}


def rss_kib() -> int:
    """This process's resident set size now, from /proc."""
    for line in open("/proc/self/status", encoding="ascii"):  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class MemoryAPI:
    """The kopf indices and the API writes kept in dicts; kube-scheduler binds pins at once."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = {n["metadata"]["name"]: [slim_node(n)] for n in nodes}
        self.pods: dict[Any, list[dict[str, Any]]] = {}
        self.pools: dict[Any, list[dict[str, Any]]] = {"gb200": [POOL]}
        self.deployments: dict[Any, list[dict[str, Any]]] = {}
        self.writes = 0

    def view(self) -> ClusterView:
        view = ClusterView()
        view.bind(self.nodes, self.pods, self.pools, self.deployments)
        return view

    def apply(self, name: str) -> None:
        """A 64-GPU MoE deployment: TP 8 x DP 8, 16 pods of 4 GPUs, one replica."""
        self.deployments[("llm", name)] = [
            {
                "apiVersion": "rackscale.dev/v1alpha1",
                "kind": "InferenceDeployment",
                "metadata": {"name": name, "namespace": "llm", "uid": f"uid-{name}"},
                "spec": {
                    "replicas": 1,
                    "parallelism": {"tensor": 8, "data": 8, "expert": 64},
                    "gpusPerPod": 4,
                    "placement": {"rackPool": "gb200", "fallback": "Never"},
                    "template": {"spec": {"containers": [{"name": "server", "image": "vllm"}]}},
                },
            }
        ]

    async def create_pod(self, body: dict[str, Any]) -> str:
        self.writes += 1
        terms = body["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        pod = {**body, "metadata": {**body["metadata"], "uid": str(uuid.uuid4())}}
        pod["spec"] = {**body["spec"], "nodeName": terms[0]["matchFields"][0]["values"][0]}
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        self.pods[(body["metadata"]["namespace"], body["metadata"]["name"])] = [slim_pod(pod)]
        return str(pod["metadata"]["uid"])

    async def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> None:
        self.pods.pop((namespace, name), None)

    async def ensure_service(self, body: dict[str, Any]) -> None:
        self.writes += 1

    async def patch_deployment_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        self.writes += 1
        self.deployments[(namespace, name)][0]["status"] = status

    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        self.writes += 1
        self.pools[name][0]["status"] = status

    async def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.writes += 1


def _pct(values: list[float], q: float) -> float:
    return round(percentile(values, q), 2)


async def measure(racks: int, deployments: int, passes: int) -> dict[str, Any]:
    """Fill the racks with `deployments` one-rack replicas, then time passes of the reconciler."""
    before = rss_kib()
    api = MemoryAPI(nvl72(racks, blocks=max(1, racks // 20)))
    # MemoryAPI implements the old controller's Writer, not today's.
    reconciler = Reconciler(api.view(), api)  # type: ignore[arg-type]
    started = time.perf_counter()
    for i in range(deployments):
        api.apply(f"fill-{i}")
    await reconciler.reconcile_all()
    await reconciler.refresh_pools()
    fill_s = time.perf_counter() - started

    steady, placing = [], []
    for i in range(passes):
        t0 = time.perf_counter()
        await reconciler.reconcile_all()
        steady.append((time.perf_counter() - t0) * 1000)
        api.apply(f"new-{i}")  # one more 64-GPU deployment: the pass that places it
        t0 = time.perf_counter()
        await reconciler.reconcile_all()
        placing.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    await reconciler.refresh_pools()
    pool_ms = (time.perf_counter() - t0) * 1000
    placed = sum(
        1 for (d,) in api.deployments.values() if (d.get("status") or {}).get("placedReplicas")
    )
    return {
        "racks": racks,
        "nodes": len(api.nodes),
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
