"""Part 6: the old and the new operator, live, on a 20-rack kwok cluster holding 150 deployments.

Each side in turn, on the same local control plane (`bench-20`: 20 NVL72 racks, 360 kwok nodes,
1,440 GPUs): its CRDs are applied, its operator runs as a subprocess (`python -m rackscale run
--all-namespaces`, with `bench.baseline_code`'s PYTHONPATH), fills a namespace of its own with
small deployments until every one is Ready, then is measured: apply -> all pods created, CPU while
nothing changes, RSS. The namespace is deleted and waited out before the other side starts.
"""

from __future__ import annotations

import functools
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client, watch

from bench import apply, baseline_code
from bench.stats import percentile
from e2e import cluster, profiles

GROUP, VERSION, PLURAL = "rackscale.dev", "v1alpha1", "inferencedeployments"
PROFILE = apply.PROFILE
POOL = "bench"  # the apply part's pool: two pools selecting the same nodes would own none
IMAGE = apply.IMAGE
# Replica sizes (GPUs) of the fill, in a cycle of 75: 40 x 4, 25 x 8, 7 x 16, 3 x 32, 568 GPUs;
# 150 of them hold 1,136 of the 1,440 GPUs (79%), so a trial replica still fits.
FILL_SIZES = (4,) * 40 + (8,) * 25 + (16,) * 7 + (32,) * 3
TRIAL_GPUS = 16  # TP 8 x DP 2: four pods of 4 GPUs
POD_GPUS = 4
SETTLE_S = 1.0  # after a trial's pods are gone, so the pass the deletion woke is over
IDLE_SETTLE_S = 15.0  # before the idle window: longer than a resync period (10 s)
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
MEASUREMENT = {
    "apply_to_pods_created": "a pod watch (label rackscale.dev/deployment=<name>) is opened "
    "before the InferenceDeployment is created; the clock (time.perf_counter) starts when the "
    "create call returns and stops when the watch has delivered the last of its pods (an ADDED "
    "event each); the deployment is then deleted and its pods waited out before the next trial",
    "idle_cpu": "utime + stime of the operator process from /proc/<pid>/stat, read at the start "
    "and end of a window with nothing applied or deleted (after a settle longer than one resync), "
    "over the window's wall time: percent of one core",
    "rss": "VmRSS (and VmHWM, the peak) of the operator process from /proc/<pid>/status, after "
    "the idle window",
}


def _wait(probe: Callable[[], Any], what: str, timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout:.0f}s still waiting for {what}")
        time.sleep(every)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deployment(name: str, namespace: str, gpus: int) -> dict[str, Any]:
    """A replica of `gpus` GPUs in pods of 4: TP up to 8, the rest data parallel."""
    tensor = min(gpus, 8)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "parallelism": {"tensor": tensor, "data": gpus // tensor},
            "gpusPerPod": POD_GPUS,
            "placement": {"rackPool": POOL, "fallback": "Never"},
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "server", "image": IMAGE}],
                }
            },
        },
    }


def fill_sizes(count: int, seed: int = 7) -> list[int]:
    """The first `count` replica sizes of the fill, in a fixed shuffled order."""
    cycle = list(FILL_SIZES)
    random.Random(seed).shuffle(cycle)
    return [cycle[i % len(cycle)] for i in range(count)]


# ---- the cluster ------------------------------------------------------------------------------


def _apply_crds(api: client.ApiClient, side: baseline_code.Side) -> None:
    ext = client.ApiextensionsV1Api(api)
    for path in sorted(baseline_code.crd_dir(side).glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        ext.patch_custom_resource_definition(
            name,
            body,
            field_manager="rackscale-bench",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        _wait(functools.partial(_established, ext, name), f"CRD {name} to be Established", 60)


def _established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    status = ext.read_custom_resource_definition(name).status
    conditions = (status.conditions if status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def _pools(objects: client.CustomObjectsApi) -> list[dict[str, Any]]:
    listed = cast(dict[str, Any], objects.list_cluster_custom_object(GROUP, VERSION, "rackpools"))
    return list(listed["items"])


def _pool(api: client.ApiClient) -> None:
    objects = client.CustomObjectsApi(api)
    for p in _pools(objects):
        objects.delete_cluster_custom_object(GROUP, VERSION, "rackpools", p["metadata"]["name"])
    _wait(lambda: not _pools(objects), "the old RackPools to go", 60)
    spec = {
        "nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-GB200"}},
        "rackLabel": profiles.CLIQUE_LABEL,
        "blockLabel": profiles.BLOCK_LABEL,
        "gpusPerRack": 72,
    }
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RackPool", "metadata": {"name": POOL}}
    objects.create_cluster_custom_object(GROUP, VERSION, "rackpools", {**body, "spec": spec})


def _no_namespace(core: client.CoreV1Api, namespace: str) -> bool:
    return not any(n.metadata and n.metadata.name == namespace for n in core.list_namespace().items)


def _drop_namespace(core: client.CoreV1Api, namespace: str) -> None:
    if not _no_namespace(core, namespace):
        core.delete_namespace(namespace)
    _wait(lambda: _no_namespace(core, namespace), f"namespace {namespace} to go", 300, 0.5)


# ---- the operator -----------------------------------------------------------------------------


class Operator:
    """One operator subprocess of one side, logging to a file, ready once its readiness says so."""

    def __init__(self, side: baseline_code.Side, kubeconfig: Path, log: Path) -> None:
        self.side = side
        self.metrics_port, ready_port = _free_port(), _free_port()
        self.ready_url = f"http://127.0.0.1:{ready_port}/readyz"
        env = baseline_code.environ(side, {**os.environ, "KUBECONFIG": str(kubeconfig)})
        command = [sys.executable, "-m", "rackscale", "run", "--all-namespaces",
                   "--liveness", "none", "--readiness", self.ready_url,
                   "--metrics-port", str(self.metrics_port), "--log-format", "plain"]  # fmt: skip
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log
        self.log = log.open("w")
        self.process = subprocess.Popen(
            command,
            cwd=baseline_code.workdir(side),
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the {self.side} operator exited; see {self.log_path}")
        try:
            with urllib.request.urlopen(self.ready_url, timeout=2) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120) -> None:
        _wait(self._ready, f"the {self.side} operator's first pass", timeout, 0.2)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime

    def passes(self) -> int | None:
        try:
            return int(apply._reconcile_metrics(self.metrics_port)["passes"])
        except (OSError, KeyError, ValueError):
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


# ---- the measurements -------------------------------------------------------------------------


class PodsSeen:
    """A pod watch on one deployment's pods, opened now; stamps when each is first seen."""

    def __init__(self, core: client.CoreV1Api, namespace: str, name: str, pods: int) -> None:
        self.core, self.namespace, self.pods = core, namespace, pods
        self.selector = f"rackscale.dev/deployment={name}"
        self.seen: dict[str, float] = {}
        self.done = threading.Event()
        listed = core.list_namespaced_pod(namespace, label_selector=self.selector)
        self.watch = watch.Watch()  # type: ignore[no-untyped-call]
        args = (listed.metadata.resource_version if listed.metadata else None,)
        self.thread = threading.Thread(target=self._follow, args=args, daemon=True)
        self.thread.start()

    def _follow(self, rv: str | None) -> None:
        stream = self.watch.stream(  # type: ignore[no-untyped-call]
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=self.selector,
            resource_version=rv,
            timeout_seconds=120,
        )
        for event in stream:
            now = time.perf_counter()
            self.seen.setdefault(event["object"].metadata.name, now)
            if len(self.seen) >= self.pods:
                self.done.set()
                self.watch.stop()  # type: ignore[no-untyped-call]
                return

    def wait(self, timeout: float = 60) -> float:
        """The time the last pod was first seen."""
        if not self.done.wait(timeout):
            self.watch.stop()  # type: ignore[no-untyped-call]
            raise TimeoutError(f"{self.selector}: {len(self.seen)}/{self.pods} pods created")
        return max(self.seen.values())


def _pods_gone(core: client.CoreV1Api, namespace: str, selector: str) -> bool:
    return not core.list_namespaced_pod(namespace, label_selector=selector).items


def _ready_count(objects: client.CustomObjectsApi, namespace: str) -> int:
    listed = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    items: list[dict[str, Any]] = cast(dict[str, Any], listed)["items"]
    return sum(1 for d in items if (d.get("status") or {}).get("phase") == "Ready")


def _fill(api: client.ApiClient, namespace: str, count: int) -> dict[str, Any]:
    objects = client.CustomObjectsApi(api)
    sizes = fill_sizes(count)
    t0 = time.monotonic()
    for i, gpus in enumerate(sizes):
        body = deployment(f"fill-{i:03d}", namespace, gpus)
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    _wait(
        lambda: _ready_count(objects, namespace) == count,
        f"{count} deployments Ready",
        600,
        1.0,
    )
    return {"deployments": count, "gpus": sum(sizes), "ready_s": round(time.monotonic() - t0, 1)}


def _trial(api: client.ApiClient, namespace: str, i: int) -> float:
    core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
    name = f"trial-{i:02d}"
    seen = PodsSeen(core, namespace, name, TRIAL_GPUS // POD_GPUS)
    body = deployment(name, namespace, TRIAL_GPUS)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    t0 = time.perf_counter()
    last = seen.wait()
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    _wait(lambda: _pods_gone(core, namespace, seen.selector), f"the pods of {name} to go", 120)
    time.sleep(SETTLE_S)
    return last - t0


def _spread(samples: list[float]) -> dict[str, Any]:
    return {
        "p50": round(percentile(samples, 0.5), 4),
        "p90": round(percentile(samples, 0.9), 4),
        "max": round(max(samples), 4),
        "samples": [round(s, 4) for s in samples],
    }


def _idle(operator: Operator, seconds: float) -> dict[str, Any]:
    time.sleep(IDLE_SETTLE_S)
    passes0, cpu0, t0 = operator.passes(), operator.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    cpu1, t1, passes1 = operator.cpu_seconds(), time.monotonic(), operator.passes()
    return {
        "window_s": round(t1 - t0, 1),
        "cpu_s": round(cpu1 - cpu0, 3),
        "percent_of_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "passes": None if passes0 is None or passes1 is None else passes1 - passes0,
    }


def _side(
    api: client.ApiClient,
    kubeconfig: Path,
    side: baseline_code.Side,
    params: dict[str, Any],
    logs: Path,
) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    namespace = f"bench-operator-{side}"
    _drop_namespace(core, namespace)  # a run that was interrupted may have left it
    _apply_crds(api, side)
    _pool(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    operator = Operator(side, kubeconfig, logs / f"operator-{side}.log")
    try:
        operator.wait_ready()
        fill = _fill(api, namespace, params["deployments"])
        samples = [_trial(api, namespace, i) for i in range(params["trials"])]
        idle = _idle(operator, params["idle_seconds"])
        memory = apply._rss(operator.pid)
    finally:
        operator.stop()
        _drop_namespace(core, namespace)
    return {
        "fill": fill,
        "apply_to_pods_created_s": _spread(samples),
        "idle_cpu": idle,
        **memory,
        "log": str(operator.log_path),
        "rackscale_from": str(baseline_code.source_root(side)),
    }


def run(params: dict[str, Any], logs: Path, stop_cluster: bool | None = None) -> dict[str, Any]:
    """Both sides, old first; a side that fails is recorded as its error, the other still runs.
    The cluster is stopped at the end if `stop_cluster`, or (None) if it was started here."""
    t0 = time.monotonic()
    local = cluster.up(PROFILE, wait=True, timeout=300)
    up_s = time.monotonic() - t0
    stop = local.started if stop_cluster is None else stop_cluster
    api = profiles.api_client_for(str(local.kubeconfig))
    result: dict[str, Any] = {
        "profile": PROFILE,
        "nodes": len(client.CoreV1Api(api).list_node().items),
        "cluster_up_s": round(up_s, 1),
        "code": baseline_code.describe(),
        "trial_gpus": TRIAL_GPUS,
        "trial_pods": TRIAL_GPUS // POD_GPUS,
        "parameters": params,
        "measurement": MEASUREMENT,
    }
    try:
        for side in baseline_code.SIDES:
            print(f"--> the {side} operator", flush=True)
            try:
                result[side] = _side(api, local.kubeconfig, side, params, logs)
            except Exception as error:
                result[side] = {"error": f"{type(error).__name__}: {error}"}
            print(f"    {result[side]}", flush=True)
    finally:
        api.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated
        if stop:
            cluster.down()
    result["cluster_stopped"] = stop
    failed = [side for side in baseline_code.SIDES if "error" in result[side]]
    if failed:
        result["error"] = f"the live operator part failed for {', '.join(failed)} (see each side)"
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.live [--quick] [--keep-cluster]`: this part alone, JSON to bench/out/."""
    import argparse
    import json

    from bench.__main__ import FULL, QUICK, QUICK_OUT

    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 deployments, 3 trials, 10 s idle")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster up")
    args = parser.parse_args(argv)
    os.environ.setdefault("RACKSCALE_CLUSTER_DIR", str(Path(__file__).parent / ".cluster"))
    params = (QUICK if args.quick else FULL)["operator"]
    result = run(params, Path(__file__).parent / ".logs", False if args.keep_cluster else None)
    QUICK_OUT.mkdir(parents=True, exist_ok=True)
    out = QUICK_OUT / "operator-live.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
