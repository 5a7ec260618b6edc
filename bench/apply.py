"""Apply to bound and Running on a kwok cluster: the operator's 16 pinned pods vs 16 plain pods.

Both sides run on the same local control plane (the `bench-20` profile: 20 NVL72 racks), one trial
after the other. Times come from a pod watch opened before the objects are created, stamped on
receipt with the monotonic clock, so they include the watch's delivery delay.
"""

from __future__ import annotations

import functools
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from prometheus_client.parser import text_string_to_metric_families

from bench import baseline, validate
from bench.stats import percentile
from e2e import cluster, objects, profiles
from rackscale.api import crd

GROUP, VERSION = "rackscale.dev", "v1alpha1"
PROFILE = "bench-20"
NAMESPACE = "bench-apply"
PODS, POD_GPUS = 16, 4
IMAGE = "pause:3.10"  # kwok runs no container: the image is never pulled
OPERATOR = [sys.executable, "-m", "rackscale", "run", "--all-namespaces"]


def _wait(probe: Callable[[], Any], what: str, timeout: float = 120.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout:.0f}s still waiting for {what}")
        time.sleep(every)
    return result


class PodClock:
    """Watches the namespace's pods and stamps when each is first bound and first Running."""

    def __init__(self, core: client.CoreV1Api, prefix: str) -> None:
        self.core, self.prefix = core, prefix
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.nodes: dict[str, str] = {}
        self.done = threading.Event()
        listed = core.list_namespaced_pod(NAMESPACE).metadata
        if listed is None or not listed.resource_version:
            raise RuntimeError(f"the pod list of namespace {NAMESPACE} has no resourceVersion")
        rv = listed.resource_version
        self.watch = watch.Watch()  # type: ignore[no-untyped-call]  # watch is unannotated
        self.thread = threading.Thread(target=self._follow, args=(rv,), daemon=True)
        self.thread.start()

    def _follow(self, rv: str) -> None:
        for event in self.watch.stream(  # type: ignore[no-untyped-call]  # watch is unannotated
            self.core.list_namespaced_pod, NAMESPACE, resource_version=rv, timeout_seconds=120
        ):
            now = time.perf_counter()
            pod = event["object"]
            name = pod.metadata.name
            if not name.startswith(self.prefix):
                continue
            if pod.spec.node_name and name not in self.bound:
                self.bound[name] = now
                self.nodes[name] = pod.spec.node_name
            if pod.status.phase == "Running" and name not in self.running:
                self.running[name] = now
            if len(self.running) >= PODS:
                self.done.set()
                self.watch.stop()  # type: ignore[no-untyped-call]  # watch is unannotated
                return

    def wait(self, timeout: float = 90.0) -> None:
        if not self.done.wait(timeout):
            self.watch.stop()  # type: ignore[no-untyped-call]  # watch is unannotated
            raise TimeoutError(f"{self.prefix}: {len(self.running)}/{PODS} pods Running")


def _deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "parallelism": {"tensor": 8, "data": 8, "expert": 64},
            "gpusPerPod": POD_GPUS,
            "placement": {"rackPool": "bench", "fallback": "Never"},
            "template": {"spec": {"containers": [{"name": "server", "image": IMAGE}]}},
        },
    }


def _plain_pod(name: str) -> dict[str, Any]:
    limits = {profiles.GPU_RESOURCE: str(POD_GPUS)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "containers": [{"name": "server", "image": IMAGE, "resources": {"limits": limits}}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def _established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    status = ext.read_custom_resource_definition(name).status
    conditions = (status.conditions if status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def _no_pods(core: client.CoreV1Api) -> bool:
    return not core.list_namespaced_pod(NAMESPACE).items


def _trial_rackscale(api: client.ApiClient, i: int) -> dict[str, Any]:
    core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
    name = f"moe-{i}"
    clock = PodClock(core, f"{name}-")
    t0 = time.perf_counter()
    objects.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "inferencedeployments", _deployment(name)
    )
    clock.wait()
    result = _figures(clock, t0)
    objects.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "inferencedeployments", name)
    core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
    _wait(lambda: _no_pods(core), "the MoE pods to go")
    return result


def _trial_baseline(api: client.ApiClient, i: int) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    prefix = f"plain-{i}-"
    clock = PodClock(core, prefix)
    bodies = [_plain_pod(f"{prefix}{s}") for s in range(PODS)]
    t0 = time.perf_counter()
    # "At once": 16 concurrent creates, as a client with a pool of connections would.
    threads = [
        threading.Thread(target=core.create_namespaced_pod, args=(NAMESPACE, b)) for b in bodies
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    clock.wait()
    result = _figures(clock, t0)
    core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
    _wait(lambda: _no_pods(core), "the plain pods to go")
    return result


def _figures(clock: PodClock, t0: float) -> dict[str, Any]:
    shard = {n: int(n.rsplit("-", 1)[1]) for n in clock.nodes}
    nodes = [clock.nodes[n] for n in sorted(clock.nodes, key=shard.__getitem__)]
    return {
        "bound_s": round(max(clock.bound.values()) - t0, 4),
        "running_s": round(max(clock.running.values()) - t0, 4),
        "first_bound_s": round(min(clock.bound.values()) - t0, 4),
        "nodes": nodes,
    }


def _locality(trials: list[dict[str, Any]], rack_of: dict[str, str]) -> dict[str, Any]:
    """Racks spanned and TP groups (shards 2g, 2g+1) inside one rack, over the trials."""
    spans, groups, inside = [], 0, 0
    for t in trials:
        racks = [rack_of[n] for n in t["nodes"]]
        spans.append(len(set(racks)))
        for g in range(0, len(racks), 2):
            groups += 1
            inside += racks[g] == racks[g + 1]
    return {
        "racks_spanned_mean": round(statistics.fmean(spans), 2),
        "racks_spanned_max": max(spans),
        "tp_in_domain_share": round(inside / groups, 4),
    }


def _model_locality(
    node_list: list[dict[str, Any]], trials: int, seed: int, random_ties: bool
) -> dict[str, Any]:
    """The same 16 pods on the same empty racks, placed by bench.baseline's model."""
    order = [n["metadata"]["name"] for n in node_list]
    rack_of = {
        n["metadata"]["name"]: n["metadata"]["labels"][profiles.CLIQUE_LABEL] for n in node_list
    }
    rng = random.Random(seed)
    out = []
    for _ in range(trials):
        nodes = [baseline.Node(name, rack_of[name], 4) for name in order]
        model = baseline.KubeScheduler(
            nodes, rng, start=rng.randrange(len(nodes)), random_ties=random_ties
        )
        # 16 concurrent creates reach the scheduling queue in no particular shard order.
        shards = list(range(PODS))
        rng.shuffle(shards)
        bound = model.place_all([POD_GPUS] * PODS) or []
        by_shard = dict(zip(shards, bound, strict=True))
        out.append({"nodes": [by_shard[s].name for s in range(PODS)]})
    return _locality(out, rack_of)


def _pct(values: list[float], q: float) -> float:
    return round(percentile(values, q), 4)


def _stats(trials: list[dict[str, Any]]) -> dict[str, Any]:
    bound = [t["bound_s"] for t in trials]
    running = [t["running_s"] for t in trials]
    return {
        "trials": len(trials),
        "bound_s": {"p50": _pct(bound, 0.5), "p99": _pct(bound, 0.99), "max": max(bound)},
        "running_s": {"p50": _pct(running, 0.5), "p99": _pct(running, 0.99), "max": max(running)},
        "samples_bound_s": bound,
        "samples_running_s": running,
    }


def _setup(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for definition in crd.definitions().values():
        ext.patch_custom_resource_definition(
            definition["metadata"]["name"],
            definition,
            field_manager="rackscale-bench",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        _wait(functools.partial(_established, ext, definition["metadata"]["name"]), "the CRDs")
    custom = client.CustomObjectsApi(api)
    for p in objects.custom_items(custom.list_cluster_custom_object(GROUP, VERSION, "rackpools")):
        custom.delete_cluster_custom_object(GROUP, VERSION, "rackpools", p["metadata"]["name"])
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "rackpools",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RackPool",
            "metadata": {"name": "bench"},
            "spec": {
                "nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-GB200"}},
                "rackLabel": profiles.CLIQUE_LABEL,
                "blockLabel": profiles.BLOCK_LABEL,
                "gpusPerRack": 72,
            },
        },
    )
    core = client.CoreV1Api(api)
    if not any(objects.name(n) == NAMESPACE for n in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": NAMESPACE}})  # type: ignore[arg-type]  # a plain manifest
    core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
    _wait(lambda: _no_pods(core), "an empty namespace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reconcile_metrics(port: int) -> dict[str, Any]:
    """The operator's own reconcile-pass histogram, read from its metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "rackscale_reconcile_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    buckets.sort()

    def bound(q: float) -> float | None:
        # The histogram gives only bucket bounds: the smallest bound holding q of the passes.
        return next((le for le, n in buckets if count and n >= q * count), None)

    def ms(q: float) -> float | None:
        le = bound(q)
        return None if le is None or le == float("inf") else 1000 * le

    return {
        "passes": int(count),
        "mean_ms": round(1000 * total / count, 1) if count else None,
        "p50_at_most_ms": ms(0.5),
        "p99_at_most_ms": ms(0.99),
        "buckets_s": [le for le, _ in buckets if le != float("inf")],
    }


def _rss(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": out.get("VmRSS", 0.0), "peak_rss_mib": out.get("VmHWM", 0.0)}


def run(
    trials: int, seed: int, logs: Path, validate_events: int = 0, keep: bool = False
) -> dict[str, Any]:
    """Bring the bench cluster up (or reuse it), run the operator, alternate the two sides;
    a cluster started here is stopped at the end unless `keep`."""
    t0 = time.monotonic()
    local = cluster.up(PROFILE, wait=True, timeout=300)
    up_s = time.monotonic() - t0
    api = profiles.api_client_for(str(local.kubeconfig))
    try:
        _setup(api)
        node_list = [objects.serialized(api, n) for n in client.CoreV1Api(api).list_node().items]
        rack_of = {
            n["metadata"]["name"]: n["metadata"]["labels"][profiles.CLIQUE_LABEL] for n in node_list
        }
        logs.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        log = (logs / "operator.log").open("w")
        env = {**os.environ, "KUBECONFIG": str(local.kubeconfig)}
        operator = subprocess.Popen(
            [*OPERATOR, "--liveness", "none", "--metrics-port", str(port), "--log-format", "plain"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(3)  # kopf fills its indices before the first trial is timed
            if operator.poll() is not None:
                raise RuntimeError(f"the operator exited; see {logs / 'operator.log'}")
            ours, theirs = [], []
            for i in range(trials):
                ours.append(_trial_rackscale(api, i))
                theirs.append(_trial_baseline(api, i))
            memory = _rss(operator.pid)
            reconcile = _reconcile_metrics(port)
        finally:
            operator.terminate()
            operator.wait(30)
            log.close()
        checked = validate.run(api, node_list, validate_events, seed) if validate_events else None
    finally:
        api.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated
        if local.started and not keep:
            cluster.down()
    return {
        "profile": PROFILE,
        "racks": 20,
        "nodes": len(node_list),
        "cluster_up_s": round(up_s, 1),
        "cluster_started_here": local.started,
        "pods": PODS,
        "gpus_per_pod": POD_GPUS,
        "measurement": "pod watch opened before the create, stamped on receipt "
        "(time.perf_counter, sub-microsecond clock; figures include watch delivery)",
        "rackscale": {**_stats(ours), "locality": _locality(ours, rack_of)},
        "kube-scheduler": {
            **_stats(theirs),
            "locality": _locality(theirs, rack_of),
            "model_locality": {
                "first found": _model_locality(node_list, max(trials, 20), seed, False),
                "random ties": _model_locality(node_list, max(trials, 20), seed, True),
            },
        },
        "operator_memory_20_racks": memory,
        "operator_reconcile_20_racks": reconcile,
        "model_check_stream": checked,
        "cluster_stopped": local.started and not keep,
    }
