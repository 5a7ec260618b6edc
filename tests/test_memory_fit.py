"""Memory fit (design, guarantee 14): what a replica needs against its GPUs' memory. No cluster."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rackscale.api import InferenceDeployment, format_errors
from rackscale.api.crd import definitions
from rackscale.api.inferencedeployment import BYTES_PER_PARAMETER, Model
from rackscale.placement import place
from rackscale.placement.reasons import (
    GpuMemory,
    MemoryRefused,
    NoRackWithRoom,
    Note,
    Problem,
    Reason,
)
from rackscale.topology import build_snapshot
from tests.factory import nvl72, pool

GB200_MIB = 189471  # what GPU Feature Discovery reports for a GB200 GPU
A100_MIB = 40960


def model_deployment(
    name: str, params: float, precision: str, *, tensor: int = 8, data: int = 1, **extra: Any
) -> InferenceDeployment:
    kv = extra.pop("kvCacheGiB", None)
    model: dict[str, Any] = {"name": "m", "parametersBillions": params, "precision": precision}
    if kv is not None:
        model["kvCacheGiB"] = kv
    spec = {
        "parallelism": {"tensor": tensor, "data": data},
        "gpusPerPod": 4,
        "model": model,
        "placement": {"rackPool": "gb200", "fallback": "Never", **extra},
    }
    return InferenceDeployment.model_validate(
        {"metadata": {"name": name, "namespace": "llm"}, "spec": spec}
    )


def labelled(racks: int, memory: dict[int, int | None]) -> list[dict[str, Any]]:
    """NVL72 racks whose nodes carry `nvidia.com/gpu.memory`, rack by rack (None: no label)."""
    nodes = nvl72(racks)
    for n in nodes:
        rack = int(n["metadata"]["name"].split("-")[1])
        if memory.get(rack) is not None:
            n["metadata"]["labels"]["nvidia.com/gpu.memory"] = str(memory[rack])
    return nodes


def test_need_is_weights_kv_cache_and_overhead_by_hand() -> None:
    model = Model.model_validate(
        {"name": "m", "parametersBillions": 671, "precision": "fp8", "kvCacheGiB": 100}
    )
    need = model.need(32)
    assert need is not None
    # 671e9 bytes = 639,915.47 MiB, rounded up; 100 GiB = 102,400 MiB; 2 GiB x 32 GPUs.
    assert (need.weights_mib, need.kv_cache_mib, need.overhead_mib) == (639916, 102400, 65536)
    assert need.total_mib == 807852
    assert need.per_gpu_mib == 25246  # 807,852 / 32 = 25,245.375, rounded up
    # Half the bytes at fp4 and nvfp4 (and int4, kept for objects written before), 3/4 at fp6.
    for precision, weights in [("fp4", 319958), ("nvfp4", 319958), ("int4", 319958),
                               ("fp6", 479937), ("int8", 639916), ("bf16", 1279831),
                               ("fp16", 1279831), ("fp32", 2559662)]:  # fmt: skip
        other = model.need(32, precision)
        assert other is not None
        assert other.weights_mib == weights, precision
    assert Model.model_validate({"name": "m", "parametersBillions": 8}).need(8) is None


def test_an_unknown_precision_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        model_deployment("x", 70, "fp2")
    assert any(line.startswith("spec.model.precision") for line in format_errors(error.value))
    crd = definitions()["rackscale.dev_inferencedeployments.yaml"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    precision = schema["properties"]["spec"]["properties"]["model"]["properties"]["precision"]
    assert set(precision["enum"]) == set(BYTES_PER_PARAMETER)
    assert {"fp4", "nvfp4", "fp6", "fp8", "int4", "int8", "bf16", "fp16", "fp32"} == set(
        precision["enum"]
    )


def test_a_model_too_large_for_every_gpu_is_refused_with_what_would_fit() -> None:
    # 405B at bf16 on 8 GPUs: 754.4 GiB of weights + 16 GiB = 96.3 GiB a GPU; A100s have 40.
    snapshot = build_snapshot(labelled(2, {0: A100_MIB, 1: A100_MIB}), [], [pool()])
    [plan] = place(snapshot, [model_deployment("big", 405, "bf16")])
    assert plan.mode == "Unplaced"
    need = Model.model_validate({"name": "m", "parametersBillions": 405, "precision": "bf16"}).need(
        8
    )
    assert need is not None
    memory = GpuMemory("gb200", need, 2, 36, (A100_MIB,), A100_MIB, 20, "fp6")
    assert plan.decisions[0].why == Reason("gpu-memory", memory)
    # As it says: 405B at fp6 is 282.9 GiB of weights, 37.4 GiB a GPU with the overhead.
    [fp6] = place(snapshot, [model_deployment("big", 405, "fp6")])
    assert fp6.mode == "Rack"
    # 1000B at fp32 fits no precision on 8 GPUs of 40 GiB (fp4 is 58.2 GiB a GPU).
    [huge] = place(snapshot, [model_deployment("huge", 1000, "fp32")])
    assert huge.decisions[0].why is not None
    assert isinstance(huge.decisions[0].why.details, GpuMemory)
    assert (huge.decisions[0].why.details.more_gpus, huge.decisions[0].why.details.precision) == (
        99,
        None,
    )


def test_a_replica_goes_only_to_nodes_whose_gpus_hold_it() -> None:
    # Rack 0 (best fit: it is fuller) has 40 GB GPUs, rack 1 GB200s; 405B fp8 needs 49.1 GiB.
    nodes = labelled(2, {0: A100_MIB, 1: GB200_MIB})
    small = model_deployment("small", 8, "bf16", tensor=4)
    large = model_deployment("large", 405, "fp8")
    [first, second] = place(build_snapshot(nodes, [], [pool()]), [small, large])
    assert first.replicas[0].racks == ("clique-0000",)
    assert second.replicas[0].racks == ("clique-0001",)
    # Fill rack 1: the large replica is refused, and the reason counts the small-GPU rack.
    fill = model_deployment("fill", 8, "bf16", tensor=8, data=9)
    snapshot = build_snapshot(nodes, [], [pool()])
    place(snapshot, [small, fill])  # small on rack 0, then all of rack 1
    [refused] = place(snapshot, [large])
    assert refused.mode == "Unplaced"
    assert large.spec.model is not None
    need = large.spec.model.need(8)
    assert need is not None
    assert refused.decisions[0].why == Reason(
        "no-rack-with-room",
        NoRackWithRoom(8, (Problem("memory", A100_MIB), Problem("too-few", 0))),
        (Note("memory-refused", MemoryRefused(((A100_MIB, 18),), need)),),
    )


def test_the_pool_gpu_memory_overrides_the_node_label() -> None:
    nodes = labelled(1, {0: A100_MIB})
    large = model_deployment("large", 405, "fp8")
    [refused] = place(build_snapshot(nodes, [], [pool()]), [large])
    assert refused.mode == "Unplaced"
    [placed] = place(build_snapshot(nodes, [], [pool(gpuMemoryMiB=GB200_MIB)]), [large])
    assert placed.mode == "Rack"
    [unlabelled] = place(build_snapshot(nvl72(1), [], [pool(gpuMemoryMiB=A100_MIB)]), [large])
    assert unlabelled.mode == "Unplaced"


def test_without_a_model_or_a_known_memory_nothing_changes() -> None:
    nodes = labelled(1, {0: A100_MIB})
    plain = model_deployment("plain", 405, "bf16")
    plain = plain.model_copy(update={"spec": plain.spec.model_copy(update={"model": None})})
    [placed] = place(build_snapshot(nodes, [], [pool()]), [plain])
    assert placed.mode == "Rack"
    # Nodes without the label: the memory is unknown, so nothing is refused for it.
    [unknown] = place(build_snapshot(nvl72(1), [], [pool()]), [model_deployment("x", 405, "bf16")])
    assert unknown.mode == "Rack"
