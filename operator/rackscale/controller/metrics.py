"""The operator's Prometheus metrics: every definition, and the few words that bound their labels.

Pool and rack figures are read at scrape time from the last statuses the operator computed, so a
rack or pool that disappears leaves no stale series. Everything else is a counter, a histogram or
a gauge updated where the event happens. Labels take values from small fixed sets (or from pool
and rack names, which the cluster bounds): an engine reason is counted by its code, a restart by
its cause, never by their words.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rackscale.api.rackpool import RackPoolStatus
from rackscale.placement import REASON_CODES
from rackscale.planner.lifecycle import LOSSES

HEALTHS = ("Healthy", "Degraded", "Unavailable")

PLACEMENT_DECISIONS = Counter(
    "rackscale_placement_decisions",
    "Replica placement decisions by result: placed (in the pool, or device-plugin mode when no "
    "pool is asked for), fallback (device-plugin mode because the pool could not hold it), "
    "unplaced (left pending)",
    ["result"],
)
PLACEMENT_SECONDS = Histogram(
    "rackscale_placement_duration_seconds",
    "Time the placement engine took to decide the replicas waiting in one pass",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
UNPLACED_REPLICAS = Gauge(
    "rackscale_unplaced_replicas",
    "Replicas wanted and not placed after the last reconcile pass, by reason category",
    ["reason"],
)
REPLICA_RESTARTS = Counter(
    "rackscale_replica_restarts",
    "Replicas deleted to be placed again, by cause",
    ["cause"],
)
RECONCILE_ERRORS = Counter(
    "rackscale_reconcile_errors",
    "Reconcile failures: a whole pass (scope=pass) or one InferenceDeployment (scope=deployment)",
    ["scope"],
)
WRITE_FAILURES = Counter(
    "rackscale_write_failures",
    "Writes of a deployment's pass the API server refused (or that failed on the way), by the "
    "kind of object written: Pod, Service, ComputeDomain, InferencePool, Event, status",
    ["kind"],
)
BACKING_OFF = Gauge(
    "rackscale_deployments_backing_off",
    "InferenceDeployments whose last pass had a write refused: each is tried again after an "
    "exponential back-off (5 ms doubling to 1,000 s), or at once when its own objects change",
)
RECONCILE_PASSES = Counter("rackscale_reconcile_passes", "Reconcile passes completed")
LEADER = Gauge(
    "rackscale_leader",
    "1 while this operator holds the leader Lease and acts (always 1 with leader election off), "
    "0 while it stands by",
)
RECONCILE_SECONDS = Histogram(
    "rackscale_reconcile_duration_seconds",
    "Time one reconcile pass over every pool and deployment took",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

# Label values: the engine's reason codes, and lifecycle's causes of a restart.
REASON_CATEGORIES: tuple[str, ...] = (*REASON_CODES, "other")
RESTART_CAUSES: tuple[str, ...] = (*LOSSES, "template-change")


def count_unplaced(codes: Iterable[str]) -> None:
    """Set the unplaced gauge from every pending replica's reason code; absent ones read 0."""
    tally = Tally(c if c in REASON_CATEGORIES else "other" for c in codes)
    for category in REASON_CATEGORIES:
        UNPLACED_REPLICAS.labels(reason=category).set(tally.get(category, 0))


class PoolCollector(Collector):
    """GPUs and racks of every RackPool, from the statuses of the last pass."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, RackPoolStatus] = {}

    def update(self, pools: Mapping[str, RackPoolStatus]) -> None:
        with self._lock:
            self._pools = dict(pools)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            pools = dict(self._pools)
        pool_gpus = {
            kind: GaugeMetricFamily(
                f"rackscale_pool_gpus_{kind}",
                f"GPUs {kind} in the racks of a RackPool",
                labels=["pool"],
            )
            for kind in ("allocatable", "allocated", "free")
        }
        rack_gpus = {
            kind: GaugeMetricFamily(
                f"rackscale_rack_gpus_{kind}",
                f"GPUs {kind} in one rack",
                labels=["pool", "rack"],
            )
            for kind in ("allocatable", "allocated", "free")
        }
        racks = GaugeMetricFamily(
            "rackscale_pool_racks", "Racks of a RackPool by health", labels=["pool", "health"]
        )
        fragmented = GaugeMetricFamily(
            "rackscale_pool_fragmented_gpus",
            "Free GPUs on racks of a RackPool that hold work: no whole-rack replica can use them",
            labels=["pool"],
        )
        costs = {
            kind: GaugeMetricFamily(
                f"rackscale_pool_{kind}_cost_per_hour",
                f"What the {kind} GPUs of a RackPool cost per hour (spec.pricing)",
                labels=["pool", "currency"],
            )
            for kind in ("idle", "fragmented")
        }
        free_racks = GaugeMetricFamily(
            "rackscale_pool_free_racks",
            "Healthy racks of a RackPool with no GPU in use (what a whole-rack replica can take)",
            labels=["pool"],
        )
        for name, status in sorted(pools.items()):
            for kind, family in pool_gpus.items():
                family.add_metric([name], getattr(status.gpus, kind))
            for rack in status.rack_statuses:
                for kind, family in rack_gpus.items():
                    family.add_metric([name, rack.name], getattr(rack.gpus, kind))
            healths = Tally(str(rack.health) for rack in status.rack_statuses)
            for health in HEALTHS:
                racks.add_metric([name, health], healths[health])
            free_racks.add_metric([name], status.free_racks)
            fragmented.add_metric([name], status.fragmented_gpus)
            if status.cost is not None:
                currency = status.cost.currency
                costs["idle"].add_metric([name, currency], float(status.cost.idle_per_hour))
                costs["fragmented"].add_metric(
                    [name, currency], float(status.cost.fragmented_per_hour)
                )
        yield from pool_gpus.values()
        yield from rack_gpus.values()
        yield racks
        yield free_racks
        yield fragmented
        yield from costs.values()


class CostCollector(Collector):
    """Cost per hour of every InferenceDeployment whose GPUs have a price, from the last pass."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._costs: dict[tuple[str, str], tuple[str, str]] = {}

    def update(self, costs: Mapping[tuple[str, str], tuple[str, str]]) -> None:
        """(namespace, name) -> (cost per hour as a decimal string, currency)."""
        with self._lock:
            self._costs = dict(costs)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            costs = dict(self._costs)
        family = GaugeMetricFamily(
            "rackscale_deployment_cost_per_hour",
            "What the placed GPUs of an InferenceDeployment cost per hour (status.costPerHour)",
            labels=["namespace", "deployment", "currency"],
        )
        for (namespace, name), (amount, currency) in sorted(costs.items()):
            family.add_metric([namespace, name, currency], float(amount))
        yield family


POOLS = PoolCollector()
COSTS = CostCollector()
_registered: set[int] = set()


def register(registry: CollectorRegistry = REGISTRY) -> None:
    """Add the pool and cost collectors once (the other metrics register themselves on
    import)."""
    if id(registry) not in _registered:
        registry.register(POOLS)
        registry.register(COSTS)
        _registered.add(id(registry))


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics on `port` from a daemon thread (prometheus-client's own server)."""
    from prometheus_client import start_http_server

    register()
    for category in REASON_CATEGORIES:  # every category shows 0 before the first pending one
        UNPLACED_REPLICAS.labels(reason=category)
    for result in ("placed", "fallback", "unplaced"):
        PLACEMENT_DECISIONS.labels(result=result)
    for scope in ("pass", "deployment"):
        RECONCILE_ERRORS.labels(scope=scope)
    start_http_server(port, addr=address)
