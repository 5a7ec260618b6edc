"""Plain Node, Pod, RackPool and InferenceDeployment objects for tests and benchmarks."""

from __future__ import annotations

from typing import Any

from rackscale.api import InferenceDeployment, RackPool

CLIQUE = "nvidia.com/gpu.clique"
BLOCK = "topology.rackscale.dev/block"
PRODUCT = "nvidia.com/gpu.product"


def node(
    name: str,
    gpus: int,
    labels: dict[str, str] | None = None,
    *,
    ready: bool = True,
    cordoned: bool = False,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {"unschedulable": cordoned, "taints": list(taints or [])},
        "status": {
            "capacity": {"nvidia.com/gpu": str(gpus), "cpu": "72", "memory": "480Gi"},
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "72", "memory": "480Gi"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def nvl72(
    racks: int, *, trays: int = 18, gpus: int = 4, blocks: int = 0, prefix: str = "gb200"
) -> list[dict[str, Any]]:
    """NVL72 racks of `trays` nodes each; with `blocks`, racks are dealt round-robin to blocks."""
    out: list[dict[str, Any]] = []
    for r in range(racks):
        labels = {CLIQUE: f"clique-{r:04d}", PRODUCT: "NVIDIA-GB200"}
        if blocks:
            labels[BLOCK] = f"block-{r % blocks}"
        out.extend(node(f"{prefix}-{r:04d}-{t:02d}", gpus, labels) for t in range(trays))
    return out


def hgx(
    count: int, *, gpus: int = 8, prefix: str = "hgx", product: str = "NVIDIA-H200"
) -> list[dict[str, Any]]:
    return [node(f"{prefix}-{i:02d}", gpus, {PRODUCT: product}) for i in range(count)]


def pool(name: str = "gb200", **spec: Any) -> RackPool:
    spec.setdefault("nodeSelector", {"matchLabels": {PRODUCT: "NVIDIA-GB200"}})
    return RackPool.model_validate({"metadata": {"name": name}, "spec": spec})


def deployment(
    name: str,
    *,
    namespace: str = "llm",
    replicas: int = 1,
    tensor: int = 1,
    pipeline: int = 1,
    data: int = 1,
    expert: int = 1,
    **placement: Any,
) -> InferenceDeployment:
    gpus_per_pod = placement.pop("gpusPerPod", None)
    placement.setdefault("rackPool", "gb200")
    spec: dict[str, Any] = {
        "replicas": replicas,
        "parallelism": {"tensor": tensor, "pipeline": pipeline, "data": data, "expert": expert},
        "placement": {k: v for k, v in placement.items() if v is not None},
    }
    if gpus_per_pod:
        spec["gpusPerPod"] = gpus_per_pod
    return InferenceDeployment.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    )


def gpu_pod(
    name: str,
    node_name: str,
    gpus: int,
    *,
    namespace: str = "other",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }
