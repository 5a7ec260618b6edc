"""The kube-scheduler model checked against the real kube-scheduler on a short churn stream."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

from bench import churn
from e2e import objects, profiles

NAMESPACE = "bench-validate"
IMAGE = "pause:3.10"  # kwok runs no container: the image is never pulled


class RealKubeScheduler:
    """A churn system whose pods are created on the kwok cluster and bound by kube-scheduler."""

    name = "kube-scheduler (real)"

    def __init__(self, api: client.ApiClient, nodes: list[dict[str, Any]]) -> None:
        self.core = client.CoreV1Api(api)
        self.rack_of = {
            n["metadata"]["name"]: n["metadata"]["labels"][profiles.CLIQUE_LABEL] for n in nodes
        }
        self.gpus = {
            n["metadata"]["name"]: int(n["status"]["allocatable"][profiles.GPU_RESOURCE])
            for n in nodes
        }
        self.used: dict[str, int] = dict.fromkeys(self.gpus, 0)
        self.jobs: dict[int, list[str]] = {}

    def free_by_rack(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for node, gpus in self.gpus.items():
            out.setdefault(self.rack_of[node], []).append(gpus - self.used[node])
        return out

    def _pods(self, job: int) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(NAMESPACE, label_selector=f"job={job}").items

    def arrive(self, job: int, gpus: int) -> list[str] | None:
        pods = gpus // churn.POD_GPUS
        for shard in range(pods):  # in shard order, as a controller creating them would
            self.core.create_namespaced_pod(NAMESPACE, _pod(job, shard))  # type: ignore[arg-type]  # a plain manifest
        deadline = time.monotonic() + 30
        while True:
            items = self._pods(job)
            if len(items) == pods and all(objects.pod_spec(p).node_name for p in items):
                break
            if any(_unschedulable(p) for p in items) or time.monotonic() > deadline:
                self._delete(job)  # refused whole, as the model does
                return None
            time.sleep(0.05)
        by_shard = sorted(items, key=lambda p: int(objects.labels(p)["shard"]))
        nodes = [node for p in by_shard if (node := objects.pod_spec(p).node_name)]
        for node in nodes:
            self.used[node] += churn.POD_GPUS
        self.jobs[job] = nodes
        return [self.rack_of[n] for n in nodes]

    def _delete(self, job: int) -> None:
        self.core.delete_collection_namespaced_pod(
            NAMESPACE, label_selector=f"job={job}", grace_period_seconds=0
        )
        deadline = time.monotonic() + 60
        while self._pods(job) and time.monotonic() < deadline:
            time.sleep(0.05)

    def depart(self, job: int) -> None:
        for node in self.jobs.pop(job, []):
            self.used[node] -= churn.POD_GPUS
        self._delete(job)


def _pod(job: int, shard: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"job-{job}-{shard}",
            "namespace": NAMESPACE,
            "labels": {"job": str(job), "shard": str(shard)},
        },
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "image": IMAGE,
                    "resources": {"limits": {profiles.GPU_RESOURCE: str(churn.POD_GPUS)}},
                }
            ],
            "terminationGracePeriodSeconds": 0,
        },
    }


def _unschedulable(pod: client.V1Pod) -> bool:
    return any(
        c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
        for c in objects.pod_status(pod).conditions or []
    )


KEYS = ("placed", "refused", "tp_in_domain_share", "in_one_rack_share", "avoidable_splits")


def run(
    api: client.ApiClient, nodes: list[dict[str, Any]], events: int, seed: int
) -> dict[str, Any]:
    """The same stream through the real kube-scheduler and through the model, on 20 racks."""
    core = client.CoreV1Api(api)
    if not any(objects.name(n) == NAMESPACE for n in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": NAMESPACE}})  # type: ignore[arg-type]  # a plain manifest
    racks = len({n["metadata"]["labels"][profiles.CLIQUE_LABEL] for n in nodes})
    capacity = racks * churn.RACK_GPUS
    stream = churn.stream(capacity, events, seed)
    started = time.monotonic()
    real = RealKubeScheduler(api, nodes)
    try:
        measured = churn.simulate(real, stream, capacity, max(1, len(stream) // 20))
    finally:
        core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
    models = {
        f"{name} (model)": churn.simulate(
            churn.KubeSchedulerModel(racks, seed, random_ties=name == churn.RANDOM_TIES),
            stream,
            capacity,
            max(1, len(stream) // 20),
        )
        for name in churn.MODELS
    }
    engine = churn.simulate(churn.Rackscale(racks), stream, capacity, max(1, len(stream) // 20))
    return {
        "racks": racks,
        "events": len(stream),
        "arrivals": sum(e.arrival for e in stream),
        "seconds": round(time.monotonic() - started, 1),
        "kube-scheduler (real)": {k: measured[k] for k in KEYS},
        **{name: {k: m[k] for k in KEYS} for name, m in models.items()},
        "rackscale (engine)": {k: engine[k] for k in KEYS},
    }
