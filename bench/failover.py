"""Failover: the leader killed, a new deployment applied, its pods created by the standby.

On the local control plane (the `bench-20` profile, as part 2), two operators (`python -m rackscale
run -A`, each with its own probe and metrics ports) share one Lease; a deployment placed before
the first kill stays throughout, to check that a takeover moves nothing. Each trial waits for the
standby to be ready (its cluster view loaded), SIGKILLs the leader (no release: the Lease must
expire), at once creates a new InferenceDeployment (one replica of 16 pods, 64 GPUs) and times,
with a pod watch opened before the kill, the seconds from the kill to the last of its 16 pods
created. Then a fresh standby is started for the next trial. Also recorded: the seconds from the
kill to the Lease's new acquireTime (the takeover alone).

`python -m bench.failover [--trials N]` runs it alone and writes bench/out/failover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from bench import apply
from bench.stats import percentile
from e2e import cluster, operators, profiles
from e2e.operators import Operator

NAMESPACE = "bench-failover"
LEASE = (NAMESPACE, "rackscale-bench")
GROUP, VERSION = apply.GROUP, apply.VERSION
TARGET_S = 20.0


class Created:
    """Stamps when each pod whose name starts with `prefix` is first seen by a pod watch."""

    def __init__(self, core: Any, prefix: str, count: int) -> None:
        self.core, self.prefix, self.count = core, prefix, count
        self.seen: dict[str, float] = {}
        self.done = threading.Event()
        rv = core.list_namespaced_pod(NAMESPACE).metadata.resource_version
        self.watch: Any = watch.Watch()  # type: ignore[no-untyped-call]
        self.thread = threading.Thread(target=self._follow, args=(rv,), daemon=True)
        self.thread.start()

    def _follow(self, rv: str) -> None:
        for event in self.watch.stream(
            self.core.list_namespaced_pod, NAMESPACE, resource_version=rv, timeout_seconds=120
        ):
            name = event["object"].metadata.name
            if name.startswith(self.prefix):
                self.seen.setdefault(name, time.perf_counter())
            if len(self.seen) >= self.count:
                self.done.set()
                self.watch.stop()
                return

    def wait(self, timeout: float) -> float:
        """Stamp of the last pod created."""
        if not self.done.wait(timeout):
            self.watch.stop()
            raise TimeoutError(
                f"{self.prefix}: {len(self.seen)}/{self.count} pods after {timeout}s"
            )
        return max(self.seen.values())


def _deployment(name: str) -> dict[str, Any]:
    body = apply._deployment(name)
    body["metadata"]["namespace"] = NAMESPACE
    return body


def _create(api: client.ApiClient, name: str) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "inferencedeployments", _deployment(name)
    )


def _pods(core: Any, name: str) -> dict[str, tuple[str, str]]:
    listed = core.list_namespaced_pod(NAMESPACE, label_selector=f"rackscale.dev/deployment={name}")
    return {
        p.metadata.name: (p.metadata.uid, p.spec.node_name or "")
        for p in listed.items
        if not p.metadata.deletion_timestamp
    }


def _bound(core: Any, name: str) -> dict[str, tuple[str, str]] | None:
    """The deployment's pods once all are there and bound."""
    placed = _pods(core, name)
    return placed if len(placed) == apply.PODS and all(n for _, n in placed.values()) else None


def _remove(api: client.ApiClient, name: str) -> None:
    core: Any = client.CoreV1Api(api)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "inferencedeployments", name
    )
    operators.wait_for(lambda: not _pods(core, name), f"the pods of {name} to go", 120)


def _namespace(api: client.ApiClient) -> None:
    core: Any = client.CoreV1Api(api)
    if not any(n.metadata.name == NAMESPACE for n in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    objects: Any = client.CustomObjectsApi(api)
    for item in objects.list_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "inferencedeployments"
    )["items"]:
        _remove(api, item["metadata"]["name"])


def _leader(api: client.ApiClient, running: list[Operator]) -> Operator:
    holder = operators.wait_for(lambda: operators.holder(api, LEASE), "a Lease holder", 60)
    return next(op for op in running if holder.startswith(f"{op.name}_"))


def _ready(op: Operator) -> None:
    operators.wait_for(lambda: op.ready() == 200, f"{op.name} ready (log {op.log})", 120)


def _trial(
    api: client.ApiClient, running: list[Operator], i: int, steady: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    core: Any = client.CoreV1Api(api)
    for op in running:
        _ready(op)
    leader = _leader(api, running)
    name = f"after-{i}"
    created = Created(core, f"{name}-", apply.PODS)
    killed_wall, killed = time.time(), time.perf_counter()
    leader.kill()
    running.remove(leader)
    _create(api, name)
    last = created.wait(TARGET_S * 3)
    acquired = operators.acquired_at(api, LEASE)
    new = _leader(api, running)
    moved = sum(1 for pod, where in _pods(core, "steady").items() if steady.get(pod) != where)
    result = {
        "pods_created_s": round(last - killed, 3),
        "lease_taken_s": None if acquired is None else round(acquired - killed_wall, 3),
        "new_leader": new.name,
        "steady_pods_moved": moved + len(set(steady) - set(_pods(core, "steady"))),
    }
    _remove(api, name)
    return result


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 0.5), 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


def _run_trials(
    api: client.ApiClient, kubeconfig: str, trials: int, logs: Path
) -> list[dict[str, Any]]:
    started = 0

    def fresh() -> Operator:
        nonlocal started
        started += 1
        return operators.start(f"op-{started}", kubeconfig, LEASE, logs)

    running = [fresh(), fresh()]
    try:
        for op in running:
            _ready(op)
        _create(api, "steady")
        core: Any = client.CoreV1Api(api)
        steady = operators.wait_for(
            lambda: _bound(core, "steady"), "the steady deployment's pods bound", 120
        )
        out = []
        for i in range(trials):
            out.append(_trial(api, running, i, steady))
            print(f"  trial {i}: {out[-1]}", flush=True)
            running.append(fresh())
        _remove(api, "steady")
        return out
    finally:
        for op in running:
            op.stop()


def run(trials: int, logs: Path, keep: bool = False) -> dict[str, Any]:
    """Bring the bench cluster up (or reuse it), run the trials; a cluster started here is
    stopped at the end unless `keep`."""
    t0 = time.monotonic()
    local = cluster.up(apply.PROFILE, wait=True, timeout=300)
    up_s = time.monotonic() - t0
    api = profiles.api_client_for(str(local.kubeconfig))
    try:
        apply._setup(api)
        _namespace(api)
        results = _run_trials(api, str(local.kubeconfig), trials, logs)
    finally:
        api.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated
        if local.started and not keep:
            cluster.down()
    created = [r["pods_created_s"] for r in results]
    taken = [r["lease_taken_s"] for r in results if r["lease_taken_s"] is not None]
    figures = {
        "profile": apply.PROFILE,
        "cluster_up_s": round(up_s, 1),
        "trials": len(results),
        "pods": apply.PODS,
        "lease": {"duration_s": 10, "renew_every_s": 2, "retry_every_s": 2},
        "measurement": "SIGKILL of the Lease holder to the last of the new deployment's pods "
        "seen by a pod watch opened before the kill (time.perf_counter); the Lease's acquireTime "
        "against the wall clock at the kill for the takeover alone",
        "pods_created_s": _summary(created),
        "lease_taken_s": _summary(taken) if taken else None,
        "steady_pods_moved": sum(r["steady_pods_moved"] for r in results),
        "target_s": TARGET_S,
        "samples": results,
    }
    show(figures)
    return figures


def show(figures: dict[str, Any]) -> None:
    c, t = figures["pods_created_s"], figures["lease_taken_s"] or {}
    print(
        f"failover, {figures['trials']} trials: leader killed -> new deployment's "
        f"{figures['pods']} pods created p50 {c['p50']:.2f} s, max {c['max']:.2f} s "
        f"(target <= {figures['target_s']:.0f} s); Lease taken over p50 {t.get('p50', 0):.2f} s; "
        f"pods of the standing deployment moved: {figures['steady_pods_moved']}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)
    os.environ.setdefault("RACKSCALE_CLUSTER_DIR", str(Path(__file__).parent / ".cluster"))
    figures = run(args.trials, Path(__file__).parent / ".logs" / "failover", args.keep_cluster)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written: {args.out / 'failover.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
