"""The cache's assumed pods, as kube-scheduler's cache tests exercise its own: pods assumed at
times, the watch showing them late or never, the clock moving; and a pass that runs between a
write and its watch event. No cluster."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from rackscale.controller.cluster import PENDING_GRACE_SECONDS, ClusterCache
from rackscale.controller.reconcile import Reconciler
from rackscale.topology import NodeInfo, PodInfo
from tests.factory import gpu_pod, nvl72
from tests.fakeapi import FakeAPI, gpus_per_node

GRACE = PENDING_GRACE_SECONDS
NODE_A, NODE_B = "gb200-0000-00", "gb200-0000-01"
PODS = {"p1": (NODE_A, 4), "p2": (NODE_B, 2), "p3": (NODE_A, 0)}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Case:
    """Steps at times: `assume` (a pass booked the pod), `created` (its write returned), `fail`
    (its write failed: forgotten), `shown` (the watch shows it, as created), `gone` (the watch
    shows it deleted), `expire` (a pass begins); after each, the GPUs each node counts."""

    name: str
    steps: list[tuple[float, str, str]]
    used: list[dict[str, int]] = field(default_factory=list)


CASES = [
    Case(
        "the watch confirms a created pod: counted once throughout",
        [(0, "assume", "p1"), (1, "created", "p1"), (2, "shown", "p1"), (GRACE + 10, "expire", "")],
        [{NODE_A: 4}, {NODE_A: 4}, {NODE_A: 4}, {NODE_A: 4}],
    ),
    Case(
        "the watch shows the pod before its write returns: still counted once",
        [(0, "assume", "p1"), (1, "shown", "p1"), (2, "created", "p1"), (GRACE + 10, "expire", "")],
        [{NODE_A: 4}, {NODE_A: 4}, {NODE_A: 4}, {NODE_A: 4}],
    ),
    Case(
        "a refused write is forgotten at once",
        [(0, "assume", "p1"), (0, "assume", "p2"), (1, "fail", "p1")],
        [{NODE_A: 4}, {NODE_A: 4, NODE_B: 2}, {NODE_B: 2}],
    ),
    Case(
        "the watch never shows it: counted until the grace after its write returned",
        [
            (0, "assume", "p1"),
            (10, "created", "p1"),
            (GRACE + 5, "expire", ""),
            (GRACE + 11, "expire", ""),
        ],
        [{NODE_A: 4}, {NODE_A: 4}, {NODE_A: 4}, {}],
    ),
    Case(
        "a write that never returns expires from when it was assumed",
        [(0, "assume", "p2"), (GRACE - 1, "expire", ""), (GRACE + 1, "expire", "")],
        [{NODE_B: 2}, {NODE_B: 2}, {}],
    ),
    Case(
        "the watch shows it after it expired: counted again, as shown",
        [
            (0, "assume", "p1"),
            (1, "created", "p1"),
            (GRACE + 2, "expire", ""),
            (GRACE + 3, "shown", "p1"),
        ],
        [{NODE_A: 4}, {NODE_A: 4}, {}, {NODE_A: 4}],
    ),
    Case(
        "a pod shown and then deleted before the grace: gone",
        [(0, "assume", "p2"), (1, "created", "p2"), (2, "shown", "p2"), (3, "gone", "p2")],
        [{NODE_B: 2}, {NODE_B: 2}, {NODE_B: 2}, {}],
    ),
]


def _used(cache: ClusterCache) -> dict[str, int]:
    nodes = cache.snapshot().nodes
    return {name: node.used for name, node in nodes.items() if node.used}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_assumed_pods(case: Case) -> None:
    clock = Clock()
    cache = ClusterCache(clock=clock)
    cache.load(nodes=[NodeInfo.from_body(n) for n in nvl72(1)], pods=[], pools=[], deployments=[])
    bodies = {
        name: gpu_pod(name, node, gpus, namespace="llm") for name, (node, gpus) in PODS.items()
    }
    uids = {name: f"uid-{name}" for name in PODS}
    for (at, action, name), expected in zip(case.steps, case.used, strict=True):
        clock.now = at
        key = ("llm", name)
        if action == "assume":
            cache.assume([bodies[name]])
        elif action == "created":
            cache.created(key, uids[name])
        elif action == "fail":
            cache.forget(key)
        elif action == "shown":
            shown = {**bodies[name], "metadata": {**bodies[name]["metadata"], "uid": uids[name]}}
            cache.put_pod(key, PodInfo.from_body(shown))
        elif action == "gone":
            cache.put_pod(key, None)
        else:
            cache.expire()
        assert _used(cache) == expected, f"after {action} {name} at {at}s"


def test_a_pass_between_a_write_and_its_watch_event_neither_double_books_nor_loses() -> None:
    api = FakeAPI(nvl72(2))
    clock = Clock()
    reconciler = Reconciler(api.view(ClusterCache(clock=clock)), api)
    api.lagging = True
    api.apply("a", replicas=1, data=4, fallback="Never")  # 32 GPUs
    api.deliver("deployments")
    asyncio.run(reconciler.reconcile_all())  # a's pods created; the watch shows none of them
    created = {k: v[0]["metadata"]["uid"] for k, v in api.pods.items()}
    assert len(created) == 8
    api.apply(
        "b", replicas=2, data=4, fallback="Never"
    )  # 64 GPUs: with a's 32, the two racks hold 128
    api.apply("c", replicas=2, data=4, fallback="Never")  # 64 more: room only on GPUs a holds
    api.deliver("deployments")  # the deployments arrive; a's pods still do not
    clock.now += 1
    asyncio.run(reconciler.reconcile_all())
    assert max(gpus_per_node(api).values()) <= 4, "no GPU booked twice"
    assert {k: v[0]["metadata"]["uid"] for k, v in api.pods.items() if k in created} == created
    assert len([k for k in api.pods if k[1].startswith("a-")]) == 8, "a is not placed again"
    assert len(api.pods) == 8 + 16 + 8, "b whole, one replica of c"
    api.deliver()
    clock.now += 1
    reconciler.cache.mark(None)
    asyncio.run(reconciler.reconcile_all())
    api.deliver()
    assert len(api.pods) == 32, "nothing more fits, nothing is lost"
    assert _used(reconciler.cache) == gpus_per_node(api), "the cache counts what runs"
    assert api.status("a")["placedReplicas"] == 1
    assert api.status("c")["placedReplicas"] == 1
