"""How a replica is cut into pods and which of its ranks must share one NVLink domain."""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd, lcm

from rackscale.api.inferencedeployment import InferenceDeploymentSpec


@dataclass(frozen=True, slots=True)
class Shape:
    """Ranks are numbered tensor-fastest: rank = t + tensor * (d + data * p).

    So a tensor-parallel group is `tensor` consecutive ranks, an expert-parallel group `expert`
    consecutive ranks, a pipeline stage `tensor * data` consecutive ranks, and pod `i` holds ranks
    `[i * pod_gpus, (i + 1) * pod_gpus)`.
    """

    gpus: int  # world size of one replica
    pod_gpus: int
    tensor: int
    expert: int
    stage_gpus: int

    @property
    def pods(self) -> int:
        return self.gpus // self.pod_gpus

    @property
    def domain_gpus(self) -> int:
        """The smallest run of ranks that no NVLink boundary may cut: TP groups, EP groups and
        pods chained together where they overlap."""
        return lcm(self.tensor, self.expert, self.pod_gpus)

    @property
    def unit_gpus(self) -> int:
        """The smallest run of ranks a multi-rack replica may give one rack: whole NVLink
        groups (`domain_gpus`)."""
        return self.domain_gpus

    @property
    def units(self) -> int:
        return self.gpus // self.unit_gpus

    @property
    def part_gpus(self) -> int:
        """Whole pipeline stages made of whole NVLink groups: what a multi-rack replica gives
        each rack when that costs no extra rack."""
        return lcm(self.stage_gpus, self.domain_gpus)

    @property
    def parts(self) -> int:
        return self.gpus // self.part_gpus


def shape_of(spec: InferenceDeploymentSpec, node_gpus: int) -> Shape:
    """The replica's shape; without `gpusPerPod`, a pod takes a node's GPUs (or all it needs)."""
    par = spec.parallelism
    gpus = par.gpus
    pod_gpus = spec.gpus_per_pod or (gcd(gpus, node_gpus) if node_gpus else gpus)
    return Shape(gpus, pod_gpus, par.tensor, par.expert, par.tensor * par.data)
