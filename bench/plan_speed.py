"""`rackscale plan` at scale: 2,000 replicas on 1,000 NVL72 racks (18,000 nodes), as a CI gate.

The cluster file is what `kubectl get nodes -o yaml` prints for the local control plane's nodes
(kwok fills the same status fields: conditions, addresses, nodeInfo, daemon endpoints), plus the
GPU Feature Discovery labels a GB200 tray carries. The figures are the whole command's wall time
(a fresh `rackscale plan` process, as CI runs it) and, in this process, its parts: reading the
files, building the snapshot, placing, printing.

python -m bench.plan_speed            # 1,000 racks, 2,000 replicas; figures to bench/out/
python -m bench.plan_speed --quick    # 20 racks, 40 replicas
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from rackscale.cli import plan

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "out"
TRAYS = 18
GPUS_PER_TRAY = 4
TARGET_SECONDS = 10.0
_UUIDS = uuid.UUID("0b5d3f9e-2c1a-4e57-8d36-7a4f1c9e2b60")
STAMP = "2026-11-30T09:00:00Z"

# (replicas per deployment, parallelism): replicas of 4 to 64 GPUs, 20 GPUs on average, so
# 2,000 replicas take about 55% of 1,000 racks and every one fits.
MIX: list[dict[str, Any]] = [
    {"tensor": 4},
    {"tensor": 8, "gpusPerPod": 4},
    {"tensor": 8, "data": 2, "gpusPerPod": 4},
    {"tensor": 8, "data": 4, "expert": 32, "gpusPerPod": 4},
    {"tensor": 4},
    {"tensor": 8, "gpusPerPod": 4},
    {"tensor": 8, "data": 8, "expert": 64, "gpusPerPod": 4},
    {"tensor": 4},
]
REPLICAS_PER_DEPLOYMENT = 4


def _node(name: str, rack: int, tray: int, blocks: int, racks: int) -> dict[str, Any]:
    clique = uuid.uuid5(_UUIDS, f"r{rack}")
    resources = {
        "cpu": "144",
        "ephemeral-storage": "3750000000Ki",
        "hugepages-2Mi": "0",
        "memory": "960Gi",
        "nvidia.com/gpu": str(GPUS_PER_TRAY),
        "pods": "110",
    }
    labels = {
        "beta.kubernetes.io/arch": "arm64",
        "beta.kubernetes.io/os": "linux",
        "feature.node.kubernetes.io/cpu-model.vendor_id": "ARM",
        "feature.node.kubernetes.io/kernel-version.full": "6.8.0-1021-nvidia-64k",
        "feature.node.kubernetes.io/pci-10de.present": "true",
        "feature.node.kubernetes.io/rdma.available": "true",
        "kubernetes.io/arch": "arm64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "gb200-nvl72-tray",
        "nvidia.com/cuda.driver-version.full": "570.124.06",
        "nvidia.com/cuda.runtime-version.full": "12.8",
        "nvidia.com/gpu.clique": f"{clique}.1",
        "nvidia.com/gpu.count": str(GPUS_PER_TRAY),
        "nvidia.com/gpu.family": "blackwell",
        "nvidia.com/gpu.machine": "GB200-NVL72",
        "nvidia.com/gpu.memory": "189471",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-GB200",
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/mig.capable": "true",
        "topology.rackscale.dev/block": f"b{rack * blocks // racks}",
        "topology.rackscale.dev/rack": f"r{rack:04d}",
    }
    condition = {"lastHeartbeatTime": STAMP, "lastTransitionTime": STAMP}
    conditions = [
        {**condition, "message": f"kubelet has {what}", "reason": reason, "status": "False",
         "type": kind}
        for kind, reason, what in (
            ("MemoryPressure", "KubeletHasSufficientMemory", "sufficient memory available"),
            ("DiskPressure", "KubeletHasNoDiskPressure", "no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "sufficient PID available"),
        )
    ]  # fmt: skip
    conditions.append(
        {**condition, "message": "kubelet is posting ready status", "reason": "KubeletReady",
         "status": "True", "type": "Ready"}
    )  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": {
                "kwok.x-k8s.io/node": "fake",
                "node.alpha.kubernetes.io/ttl": "0",
                "nfd.node.kubernetes.io/feature-labels": "cpu-model.vendor_id,kernel-version."
                "full,pci-10de.present,rdma.available",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "creationTimestamp": STAMP,
            "labels": labels,
            "name": name,
            "resourceVersion": str(1000 + rack),
            "uid": str(uuid.uuid5(_UUIDS, name)),
        },
        "spec": {"providerID": f"kwok://{name}"},
        "status": {
            "addresses": [
                {"address": f"10.{rack // 250}.{rack % 250}.{tray + 1}", "type": "InternalIP"},
                {"address": name, "type": "Hostname"},
            ],
            "allocatable": resources,
            "capacity": dict(resources),
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "arm64",
                "bootID": "",
                "containerRuntimeVersion": "containerd://1.7.27",
                "kernelVersion": "6.8.0-1021-nvidia-64k",
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.36.3",
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": "Ubuntu 24.04.2 LTS",
                "systemUUID": "",
            },
        },
    }


def cluster_files(directory: Path, racks: int) -> tuple[Path, Path, Path]:
    """Nodes (YAML and JSON, as kubectl prints them) and the RackPool; written once per size."""
    directory.mkdir(parents=True, exist_ok=True)
    nodes_yaml = directory / f"nodes-{racks}.yaml"
    nodes_json = directory / f"nodes-{racks}.json"
    pool = directory / "rackpool.yaml"
    if not nodes_yaml.exists() or not nodes_json.exists():
        blocks = max(1, racks // 20)
        items = [
            _node(f"gb200-r{r:04d}-t{t:02d}", r, t, blocks, racks)
            for r in range(racks)
            for t in range(TRAYS)
        ]
        listing = {"apiVersion": "v1", "items": items, "kind": "List",
                   "metadata": {"resourceVersion": ""}}  # fmt: skip
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        nodes_yaml.write_text(yaml.dump(listing, Dumper=dumper, width=1000))
        nodes_json.write_text(json.dumps(listing, indent=4))
    pool.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "rackscale.dev/v1alpha1",
                "kind": "RackPool",
                "metadata": {"name": "gb200"},
                "spec": {
                    "nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-GB200"}},
                    "blockLabel": "topology.rackscale.dev/block",
                },
            }
        )
    )
    return nodes_yaml, nodes_json, pool


def deployments_file(directory: Path, replicas: int) -> Path:
    docs = []
    for n in range(-(-replicas // REPLICAS_PER_DEPLOYMENT)):
        shape = dict(MIX[n % len(MIX)])
        gpus_per_pod = shape.pop("gpusPerPod", None)
        spec: dict[str, Any] = {
            "replicas": min(REPLICAS_PER_DEPLOYMENT, replicas - n * REPLICAS_PER_DEPLOYMENT),
            "parallelism": shape,
            "placement": {"rackPool": "gb200", "fallback": "Never"},
            "template": {"spec": {"containers": [{"name": "server", "image": "vllm:latest"}]}},
        }
        if gpus_per_pod:
            spec["gpusPerPod"] = gpus_per_pod
        docs.append(
            {
                "apiVersion": "rackscale.dev/v1alpha1",
                "kind": "InferenceDeployment",
                "metadata": {"name": f"model-{n:04d}", "namespace": f"team-{n % 9}"},
                "spec": spec,
            }
        )
    path = directory / f"deployments-{replicas}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def parts(cluster: list[Path], deployments: Path) -> dict[str, float]:
    """The command's work in this process, in seconds: read, snapshot, place, print."""
    started = time.perf_counter()
    loaded = plan.read(cluster, [deployments])
    read = time.perf_counter()
    snapshot, deps = plan.snapshot_of(loaded)
    built = time.perf_counter()
    plans = plan.place_all(snapshot, deps, together=False)
    placed = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        print(plan.as_table(snapshot, plans, deps))
    printed = time.perf_counter()
    unplaced = sum(d.spec.replicas - len(p.replicas) for p, d in zip(plans, deps, strict=True))
    return {
        "read_s": round(read - started, 3),
        "snapshot_s": round(built - read, 3),
        "placement_s": round(placed - built, 3),
        "print_s": round(printed - placed, 3),
        "replicas": sum(d.spec.replicas for d in deps),
        "unplaced": unplaced,
    }


def wall(
    cluster: list[Path],
    deployments: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> tuple[float, float, int]:
    """A fresh `rackscale plan` process, as a CI job runs it: wall and CPU seconds, exit code.
    Other work on a loaded machine stretches the wall time; the CPU time less so. `env` and
    `cwd` choose the code it runs (by default this process's environment, this checkout)."""
    command = [sys.executable, "-m", "rackscale", "plan"]
    for path in cluster:
        command += ["--cluster", str(path)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [*command, str(deployments)], cwd=cwd, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(seconds, 3), round(cpu, 3), done.returncode


def run(racks: int, replicas: int, directory: Path) -> dict[str, Any]:
    nodes_yaml, nodes_json, pool = cluster_files(directory, racks)
    deployments = deployments_file(directory, replicas)
    result: dict[str, Any] = {"racks": racks, "nodes": racks * TRAYS, "replicas": replicas}
    for label, nodes in (("yaml", nodes_yaml), ("json", nodes_json)):
        seconds, cpu, code = wall([nodes, pool], deployments)
        result[label] = {
            "file_mb": round(nodes.stat().st_size / 1e6, 1),
            "wall_s": seconds,
            "cpu_s": cpu,
            "exit_code": code,
            **parts([nodes, pool], deployments),
        }
    result["target_wall_s"] = TARGET_SECONDS
    result["met"] = all(result[k]["wall_s"] <= TARGET_SECONDS for k in ("yaml", "json"))
    return result


def commands(
    racks: int, replicas: int, directory: Path, env: dict[str, str], cwd: Path
) -> dict[str, Any]:
    """The whole command only (wall, CPU, exit code), with the code `env` and `cwd` choose, on
    the same files `run` writes: how another commit's `rackscale plan` does on them."""
    nodes_yaml, nodes_json, pool = cluster_files(directory, racks)
    deployments = deployments_file(directory, replicas)
    result: dict[str, Any] = {}
    for label, nodes in (("yaml", nodes_yaml), ("json", nodes_json)):
        seconds, cpu, code = wall([nodes, pool], deployments, env, cwd)
        result[label] = {"wall_s": seconds, "cpu_s": cpu, "exit_code": code}
    return result


def show_old(result: dict[str, Any]) -> None:
    for label in ("yaml", "json"):
        r = result[label]
        print(
            f"  old {label:<6}{r['wall_s']:>9.2f} s wall{r['cpu_s']:>8.2f} s CPU, "
            f"exit {r['exit_code']}"
        )


def show(result: dict[str, Any]) -> None:
    print(
        f"rackscale plan: {result['replicas']} replicas on {result['racks']} racks "
        f"({result['nodes']} nodes), target <= {result['target_wall_s']:.0f} s wall"
    )
    print(
        f"  {'input':<6}{'file MB':>9}{'wall s':>9}{'cpu s':>8}{'exit':>6}{'read s':>9}"
        f"{'snapshot s':>12}"
        f"{'place s':>9}{'print s':>9}{'unplaced':>10}"
    )
    for label in ("yaml", "json"):
        r = result[label]
        print(
            f"  {label:<6}{r['file_mb']:>9}{r['wall_s']:>9.2f}{r['cpu_s']:>8.2f}{r['exit_code']:>6}"
            f"{r['read_s']:>9.2f}{r['snapshot_s']:>12.2f}{r['placement_s']:>9.2f}"
            f"{r['print_s']:>9.2f}{r['unplaced']:>10}"
        )
    print(
        f"  target {'met' if result['met'] else 'MISSED'} (load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs: other work stretches the wall time)"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.plan_speed", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 racks, 40 replicas")
    parser.add_argument("--racks", type=int, default=None)
    parser.add_argument("--replicas", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT, help="directory for the JSON figures")
    args = parser.parse_args(argv)
    racks = args.racks or (20 if args.quick else 1000)
    replicas = args.replicas or (40 if args.quick else 2000)
    result = run(racks, replicas, args.out / "plan-speed")
    show(result)
    figures = {
        "benchmark": "plan_speed",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "libyaml": bool(getattr(yaml, "__with_libyaml__", False)),
        "load_average": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"plan-speed-{datetime.now(UTC):%Y-%m-%d}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {path}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
