"""A model of kube-scheduler's default placement of GPU pods, one pod at a time, blind to racks.

What it models, for pods that request only `nvidia.com/gpu` (the device-plugin baseline):

- Filter (NodeResourcesFit): a node fits when its free GPUs cover the pod's request.
- Feasible-node sampling (percentageOfNodesToScore, adaptive default): the search starts where
  the previous pod's search stopped and ends after `max(100, n * (50 - n // 125) // 100)`
  feasible nodes (the percentage at least 5); smaller clusters are searched whole. The next
  search starts after every node this one examined.
- Score: NodeResourcesFit with the default LeastAllocated strategy over CPU and memory (weight 1
  each), where a pod with no requests counts 100 millicores and 200 MiB; an integer in 0-100.
  Extended resources are not in the default scoring, so GPUs only filter.
  NodeResourcesBalancedAllocation skips pods without CPU or memory requests, as these are.
- Ties: without a scheduler extender no random tie-breaker is drawn, so among the best scores
  the node found first in the search wins. The real filter runs in parallel and finds nodes
  in nearly, not exactly, that order: the model has no such jitter.

Left out because they score every node alike here: TaintToleration, NodeAffinity, ImageLocality,
InterPodAffinity and default topology spreading (the pods belong to no Service or ReplicaSet).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MILLICORES_PER_POD = 100  # the scheduler's non-zero default request for a pod without one
MEMORY_PER_POD = 200 * 1024 * 1024
MIN_FEASIBLE = 100
MAX_SCORE = 100


@dataclass(slots=True)
class Node:
    """A GPU node as the scheduler scores it."""

    name: str
    rack: str
    gpus: int
    cpu_millis: int = 144_000
    memory: int = 960 * 1024**3
    used_gpus: int = 0
    pods: int = 0  # pods on the node, each counted with the non-zero default requests

    @property
    def free(self) -> int:
        return self.gpus - self.used_gpus


def feasible_to_find(nodes: int) -> int:
    """How many feasible nodes the scheduler looks for before scoring (adaptive percentage)."""
    if nodes < MIN_FEASIBLE:
        return nodes
    percentage = max(5, 50 - nodes // 125)
    return max(MIN_FEASIBLE, nodes * percentage // 100)


def _least_allocated(node: Node) -> int:
    cpu = (node.cpu_millis - node.pods * MILLICORES_PER_POD) * MAX_SCORE // node.cpu_millis
    mem = (node.memory - node.pods * MEMORY_PER_POD) * MAX_SCORE // node.memory
    return (cpu + mem) // 2


@dataclass(slots=True)
class KubeScheduler:
    """The model: place pods one by one on `nodes`, like kube-scheduler with default plugins."""

    nodes: list[Node]
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    start: int = 0  # where the next feasible-node search begins
    random_ties: bool = False  # True: as with an extender, which draws a random tie-breaker

    def schedule(self, gpus: int) -> Node | None:
        """Bind one pod requesting `gpus`; None when no node fits (the pod stays Pending)."""
        n = len(self.nodes)
        want = feasible_to_find(n)
        feasible: list[Node] = []
        examined = 0
        for i in range(n):
            node = self.nodes[(self.start + i) % n]
            examined += 1
            if node.free >= gpus:
                feasible.append(node)
                if len(feasible) >= want:
                    break
        self.start = (self.start + examined) % n
        if not feasible:
            return None
        scores = [_least_allocated(node) for node in feasible]
        best = max(scores)
        if self.random_ties:
            chosen = self.rng.choice(
                [n for n, s in zip(feasible, scores, strict=True) if s == best]
            )
        else:
            chosen = feasible[scores.index(best)]
        chosen.used_gpus += gpus
        chosen.pods += 1
        return chosen

    def release(self, node: Node, gpus: int) -> None:
        """A pod that requested `gpus` on `node` is gone."""
        node.used_gpus -= gpus
        node.pods -= 1

    def place_all(self, pods: list[int]) -> list[Node] | None:
        """Pods created at once, bound one at a time; None (and nothing kept) if one stays
        Pending. A real cluster would keep the bound ones holding GPUs: the model is kinder."""
        bound: list[tuple[Node, int]] = []
        for gpus in pods:
            node = self.schedule(gpus)
            if node is None:
                for held, g in bound:
                    self.release(held, g)
                return None
            bound.append((node, gpus))
        return [node for node, _ in bound]
