"""Part 7: the operator at fleet size: 1,000 InferenceDeployments applied at once, live.

On the local control plane with the `bench-100` profile (100 GB200 NVL72 racks, 1,800 kwok nodes,
7,200 GPUs), each side in turn (old, then new): its CRDs are applied, its operator runs as a
subprocess (as in part 6), and 1,000 deployments of 1 to 64 GPUs (about 76% of the GPUs) are
created at once in a namespace of its own. The run then polls until every deployment has a status
for its generation and is Ready, or until a deadline, and reads what happened: how long each
stage took, the deployments left without a status or with a condition saying something failed,
the Services created, the writes the API server refused, the operator's CPU and memory. The
namespace is deleted and waited out before the other side starts.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from bench import apply, baseline_code, live
from e2e import cluster, profiles

GROUP, VERSION, PLURAL = live.GROUP, live.VERSION, live.PLURAL
PROFILE = "bench-100"
GPUS_PER_RACK = 72
# Replica sizes (GPUs) in a cycle of 100: 30 x 1, 20 x 2, 25 x 4, 15 x 8, 6 x 16, 3 x 32, 1 x 64;
# 546 GPUs and 169 pods a cycle, so 1,000 of them hold 5,460 of 7,200 GPUs (76%) in 1,690 pods.
FLEET_SIZES = (1,) * 30 + (2,) * 20 + (4,) * 25 + (8,) * 15 + (16,) * 6 + (32,) * 3 + (64,)
POD_GPUS = 4  # a node's GPUs: replicas of fewer take one pod of their size
POLL_S = 2.0
CREATE_WORKERS = 16
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
MEASUREMENT = {
    "clock": "time.monotonic, started just before the first create call; the creates run on "
    f"{CREATE_WORKERS} threads ('applied_s' is when the last returned); every {POLL_S:.0f} s the "
    "deployments and pods of the namespace are listed (from the API server's watch cache), and "
    "each time below is the first poll at which it held",
    "observed_s": "every deployment has status.observedGeneration equal to its generation",
    "pods_created_s": "every pod the deployments ask for exists",
    "ready_s": "every deployment has status.phase Ready (its replicas placed and their pods Ready)",
    "failed": "deployments at the end with phase Failed or Degraded, or a condition saying "
    "something went wrong: Degraded True, Placed False with reason Unplaceable, Progressing False "
    "with reason Stalled, or any reason starting with Failed",
    "refused_writes": "the API server's own apiserver_request_total for write verbs answered with "
    "a 4xx or 5xx code, read before the creates and at the end (every client's writes: the "
    "operator's, but also the scheduler's, kwok's and the controllers'), without 409 (a "
    "conflict, or a create of what exists: the writer reads and goes on) and 404 (a delete of "
    "what is gone); 'write_errors_by_kind' lists them all",
    "reconcile_errors": "the operator's rackscale_reconcile_errors_total at the end, all scopes",
    "cpu": "utime + stime of the operator process from /proc/<pid>/stat, from the first create "
    "to the end of the run",
    "rss": "VmRSS and VmHWM (the peak) of the operator process at the end",
}


def fleet_sizes(count: int, seed: int = 7) -> list[int]:
    """The first `count` replica sizes, in a fixed shuffled order."""
    cycle = list(FLEET_SIZES)
    random.Random(seed).shuffle(cycle)
    return [cycle[i % len(cycle)] for i in range(count)]


def pods_of(gpus: int) -> int:
    """The pods one replica of `gpus` GPUs takes: pods of 4 GPUs, or one pod of fewer."""
    return max(1, gpus // POD_GPUS)


def deployment(name: str, namespace: str, gpus: int) -> dict[str, Any]:
    """Part 6's deployment, with one pod of its size when it needs fewer GPUs than a node has."""
    body = live.deployment(name, namespace, gpus)
    body["spec"]["gpusPerPod"] = min(gpus, POD_GPUS)
    return body


def profile_for(racks: int, where: Path) -> str:
    """`bench-100` for 100 racks, else a profile of that many racks written under `where`."""
    if racks == 100:
        return PROFILE
    spec = yaml.safe_load(profiles.resolve(PROFILE).read_text())
    spec["name"] = f"bench-{racks}"
    spec["racks"][0]["count"] = racks
    spec["racks"][0]["blocks"] = max(1, min(10, racks // 10))
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"bench-{racks}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


# ---- what the cluster says ----------------------------------------------------------------------


def _get(api: client.ApiClient, path: str) -> bytes:
    """One GET with the kubeconfig's client certificate, the body as it came."""
    cfg = api.configuration
    tls = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    tls.load_cert_chain(cfg.cert_file, cfg.key_file)
    with urllib.request.urlopen(f"{cfg.host}{path}", timeout=60, context=tls) as response:
        return bytes(response.read())


def _list(api: client.ApiClient, path: str) -> list[dict[str, Any]]:
    """A list from the API server's watch cache (resourceVersion=0), as plain JSON: 1,000
    objects every poll, too many to turn into the client's models."""
    return list(json.loads(_get(api, f"{path}?resourceVersion=0"))["items"])


def _deployments(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    return _list(api, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")


def _pods(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    return _list(api, f"/api/v1/namespaces/{namespace}/pods")


def _observed(d: dict[str, Any]) -> bool:
    status = d.get("status") or {}
    return bool(status.get("observedGeneration") == d["metadata"].get("generation"))


def _phase(d: dict[str, Any]) -> str:
    return str((d.get("status") or {}).get("phase") or "no status")


def _says_failed(d: dict[str, Any]) -> bool:
    if _phase(d) in ("Failed", "Degraded"):
        return True
    for c in (d.get("status") or {}).get("conditions") or []:
        kind, status, reason = c.get("type"), c.get("status"), str(c.get("reason") or "")
        if (
            (kind == "Degraded" and status == "True")
            or (kind == "Placed" and status == "False" and reason == "Unplaceable")
            or (kind == "Progressing" and status == "False" and reason == "Stalled")
            or reason.startswith("Failed")
        ):
            return True
    return False


def writes_answered_with_errors(api: client.ApiClient) -> Counter[str]:
    """Writes the API server answered with 4xx or 5xx so far, by `VERB resource code`."""
    tally: Counter[str] = Counter()
    for family in text_string_to_metric_families(_get(api, "/metrics").decode()):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "apiserver_request_total"
                and labels.get("verb") in WRITE_VERBS
                and labels.get("code", "").startswith(("4", "5"))
            ):
                what = labels.get("resource", "?") + (
                    f"/{labels['subresource']}" if labels.get("subresource") else ""
                )
                tally[f"{labels['verb']} {what} {labels['code']}"] += int(sample.value)
    return tally


def refused(tally: Counter[str]) -> int:
    """The writes refused: every error but a 409 (a conflict or a create of what exists, which
    the writer reads and retries) and a 404 (a delete of what is gone)."""
    return sum(n for key, n in tally.items() if key.rsplit(" ", 1)[1] not in ("404", "409"))


def _reconcile_errors(port: int) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        families = text_string_to_metric_families(text.read().decode())
        return sum(
            s.value
            for f in families
            if f.name == "rackscale_reconcile_errors"
            for s in f.samples
            if s.name == "rackscale_reconcile_errors_total"
        )
    except OSError:
        return None


def _warnings(core: client.CoreV1Api, namespace: str) -> dict[str, int]:
    """Warning Events in the namespace, by reason (each counted as often as it happened)."""
    tally: Counter[str] = Counter()
    for event in core.list_namespaced_event(namespace).items:
        if event.type == "Warning":
            tally[str(event.reason)] += int(event.count or 1)
    return dict(tally.most_common())


def _log_lines(path: Path) -> dict[str, int]:
    lines = path.read_text(errors="replace").splitlines()
    return {
        "lines": len(lines),
        "errors": sum(1 for line in lines if "ERROR" in line),
        "range_is_full": sum(1 for line in lines if "range is full" in line),
    }


# ---- one side -----------------------------------------------------------------------------------


def _create_all(api: client.ApiClient, namespace: str, sizes: list[int]) -> list[str]:
    """Every deployment, created concurrently; the errors of creates the API refused."""
    objects = client.CustomObjectsApi(api)

    def one(item: tuple[int, int]) -> str | None:
        i, gpus = item
        body = deployment(f"fleet-{i:04d}", namespace, gpus)
        try:
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        except client.ApiException as error:
            return f"fleet-{i:04d}: {error.status} {error.reason}"
        return None

    with ThreadPoolExecutor(CREATE_WORKERS) as pool:
        return [e for e in pool.map(one, enumerate(sizes)) if e]


def _follow(
    api: client.ApiClient,
    namespace: str,
    want: int,
    want_pods: int,
    *,
    deadline_s: float,
    t0: float,
) -> tuple[dict[str, float | None], list[dict[str, Any]], list[dict[str, Any]]]:
    """Poll until every deployment is Ready or the deadline; the first time each stage held,
    a coarse timeline, and the deployments as last seen."""
    firsts: dict[str, float | None] = {"observed_s": None, "pods_created_s": None, "ready_s": None}
    timeline: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    while True:
        items, pods = _deployments(api, namespace), _pods(api, namespace)
        now = round(time.monotonic() - t0, 1)
        counts = {
            "t": now,
            "observed": sum(map(_observed, items)),
            "ready": sum(1 for d in items if _phase(d) == "Ready" and _observed(d)),
            "pods": len(pods),
        }
        if not timeline or {k: v for k, v in counts.items() if k != "t"} != {
            k: v for k, v in timeline[-1].items() if k != "t"
        }:
            timeline.append(counts)
        for key, held in (
            ("observed_s", counts["observed"] >= want),
            ("pods_created_s", counts["pods"] >= want_pods),
            ("ready_s", counts["ready"] >= want),
        ):
            if held and firsts[key] is None:
                firsts[key] = now
        if firsts["ready_s"] is not None or now > deadline_s:
            return firsts, timeline, items
        time.sleep(POLL_S)


def _side(
    api: client.ApiClient,
    kubeconfig: Path,
    side: baseline_code.Side,
    params: dict[str, Any],
    logs: Path,
) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    namespace = f"bench-fleet-{side}"
    live._drop_namespace(core, namespace)  # a run that was interrupted may have left it
    live._apply_crds(api, side)
    live._pool(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    sizes = fleet_sizes(params["deployments"])
    want_pods = sum(pods_of(g) for g in sizes)
    operator = live.Operator(side, kubeconfig, logs / f"operator-fleet-{side}.log")
    try:
        operator.wait_ready()
        errors0, cpu0 = writes_answered_with_errors(api), operator.cpu_seconds()
        t0 = time.monotonic()
        create_errors = _create_all(api, namespace, sizes)
        applied_s = round(time.monotonic() - t0, 1)
        want = len(sizes) - len(create_errors)
        firsts, timeline, items = _follow(
            api, namespace, want, want_pods, deadline_s=params["deadline_s"], t0=t0
        )
        elapsed = round(time.monotonic() - t0, 1)
        cpu = round(operator.cpu_seconds() - cpu0, 1)
        answered = writes_answered_with_errors(api) - errors0
        memory = apply._rss(operator.pid)
        errors = _reconcile_errors(operator.metrics_port)
        services = len(_list(api, f"/api/v1/namespaces/{namespace}/services"))
        pods = _pods(api, namespace)
        warnings = _warnings(core, namespace)
    finally:
        operator.stop()
    drop0 = time.monotonic()
    live._drop_namespace(core, namespace)
    return {
        "deployments": len(sizes),
        "gpus": sum(sizes),
        "pods_wanted": want_pods,
        "create_errors": create_errors[:10],
        "created": want,
        "applied_s": applied_s,
        **firsts,
        "finished": firsts["ready_s"] is not None,
        "elapsed_s": elapsed,
        "at_the_end": {
            "observed": sum(map(_observed, items)),
            "ready": sum(1 for d in items if _phase(d) == "Ready" and _observed(d)),
            "no_status": sum(1 for d in items if not (d.get("status") or {}).get("phase")),
            "failed": sum(map(_says_failed, items)),
            "phases": dict(Counter(map(_phase, items)).most_common()),
            "pods": len(pods),
            "pods_ready": sum(
                any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (p.get("status") or {}).get("conditions") or []
                )
                for p in pods
            ),
            "services": services,
        },
        "services_wanted": 2 * want,
        "refused_writes": refused(answered),
        "write_errors_by_kind": dict(answered.most_common()),
        "reconcile_errors": errors,
        "warning_events": warnings,
        "operator_log": _log_lines(operator.log_path),
        "cpu_s": cpu,
        "cpu_percent_of_core": round(100 * cpu / max(elapsed, 1e-9), 1),
        **memory,
        "namespace_deleted_s": round(time.monotonic() - drop0, 1),
        "timeline": timeline,
        "log": str(operator.log_path),
        "rackscale_from": str(baseline_code.source_root(side)),
    }


def run(params: dict[str, Any], logs: Path, stop_cluster: bool | None = None) -> dict[str, Any]:
    """The sides params["sides"] names, in turn; a side that fails is recorded as its error, the
    others still run. The cluster is stopped at the end if `stop_cluster`, or (None) if it was
    started here."""
    profile = profile_for(params["racks"], logs)
    t0 = time.monotonic()
    local = cluster.up(profile, wait=True, timeout=300)
    up_s = time.monotonic() - t0
    stop = local.started if stop_cluster is None else stop_cluster
    api = profiles.api_client_for(str(local.kubeconfig))
    nodes = client.CoreV1Api(api).list_node().items
    racks = {(n.metadata.labels or {}).get(profiles.CLIQUE_LABEL) for n in nodes if n.metadata}
    racks.discard(None)
    result: dict[str, Any] = {
        "profile": Path(profile).stem,
        "nodes": len(nodes),
        "racks": len(racks),
        "cluster_up_s": round(up_s, 1),
        "code": baseline_code.describe(),
        "sizes": dict(sorted(Counter(fleet_sizes(params["deployments"])).items())),
        "gpus_in_racks": GPUS_PER_RACK * len(racks),
        "parameters": params,
        "measurement": MEASUREMENT,
    }
    sides: list[baseline_code.Side] = list(params.get("sides", baseline_code.SIDES))
    try:
        for side in sides:
            print(f"--> the {side} operator, {params['deployments']} deployments", flush=True)
            try:
                result[side] = _side(api, local.kubeconfig, side, params, logs)
            except Exception as error:
                result[side] = {"error": f"{type(error).__name__}: {error}"}
            shown = {k: v for k, v in result[side].items() if k != "timeline"}
            print(f"    {shown}", flush=True)
    finally:
        api.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated
        if stop:
            cluster.down()
    result["cluster_stopped"] = stop
    failed = [side for side in sides if "error" in result[side]]
    if failed:
        result["error"] = f"the fleet part failed for {', '.join(failed)} (see each side)"
    return result


def show(result: dict[str, Any]) -> None:
    """The figures of each side, one line each."""
    for side in baseline_code.SIDES:
        f = result.get(side)
        if f is None:
            continue
        if "error" in f:
            print(f"  {side}: failed: {f['error']}")
            continue
        end = f["at_the_end"]
        print(
            f"  {side}: {f['created']} deployments on {result['racks']} racks; observed "
            f"{_seconds(f['observed_s'])}, pods created {_seconds(f['pods_created_s'])}, "
            f"all Ready {_seconds(f['ready_s'])} (deadline {result['parameters']['deadline_s']:.0f}"
            f" s); at the end {end['ready']} Ready, {end['no_status']} without status, "
            f"{end['failed']} failed; {end['services']}/{f['services_wanted']} Services; "
            f"{f['refused_writes']} refused writes; operator CPU {f['cpu_s']} s, "
            f"RSS {f['rss_mib']} MiB (peak {f['peak_rss_mib']} MiB)",
            flush=True,
        )


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.fleet [--quick] [--racks N] [--deployments N] [--sides ...]`: this part
    alone, JSON to bench/out/fleet.json."""
    import argparse

    from bench.__main__ import FULL, QUICK, QUICK_OUT

    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the quick sizes")
    parser.add_argument("--racks", type=int, help="racks of the cluster")
    parser.add_argument("--deployments", type=int, help="deployments applied at once")
    parser.add_argument("--deadline", type=float, help="seconds a side may take")
    parser.add_argument("--sides", nargs="+", choices=baseline_code.SIDES, help="old, new")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster up")
    args = parser.parse_args(argv)
    os.environ.setdefault("RACKSCALE_CLUSTER_DIR", str(Path(__file__).parent / ".cluster"))
    params = dict((QUICK if args.quick else FULL)["fleet"])
    for key, value in (
        ("racks", args.racks),
        ("deployments", args.deployments),
        ("deadline_s", args.deadline),
        ("sides", args.sides),
    ):
        if value is not None:
            params[key] = value
    logs = Path(__file__).parent / ".logs" / "fleet"
    result = run(params, logs, False if args.keep_cluster else None)
    show(result)
    QUICK_OUT.mkdir(parents=True, exist_ok=True)
    out = QUICK_OUT / "fleet.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
