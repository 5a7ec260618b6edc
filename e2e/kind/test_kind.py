"""On kind, with real kubelets: the in-cluster operator's replicas run as shard groups that find
their leader through cluster DNS, restart as a unit, move off a stopped worker, and get devices
from the fake-GPU device plugin when no pool places them."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from e2e import objects
from e2e.kind.conftest import wait_gpus
from e2e.support import CLIQUE, GROUP, VERSION, apply, events, eventually, get, pods, ready

pytestmark = pytest.mark.e2e
GPUS_PER_NODE = 4
CHECKIN_PORT = 29400


def shard_deployment(
    name: str, image: str, pool: str | None, *, tensor: int, gpus_per_pod: int
) -> dict[str, Any]:
    """One replica of `tensor` GPUs in shards of `gpus_per_pod`, each running shard.py."""
    placement: dict[str, Any] = {"fallback": "DevicePlugin" if pool is None else "Never"}
    if pool:
        placement["rackPool"] = pool
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "parallelism": {"tensor": tensor},
            "gpusPerPod": gpus_per_pod,
            "placement": placement,
            "port": 8000,
            "template": {
                "spec": {
                    # A shard that exits leaves its pod Failed: the operator's cue to restart
                    # the replica as a unit (a container restarted in place would rejoin alone).
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "server",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": ["--port", "8000"],
                            "ports": [
                                {"name": "serve", "containerPort": 8000},
                                {"name": "checkin", "containerPort": CHECKIN_PORT},
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": 8000},
                                "periodSeconds": 1,
                                "failureThreshold": 1,
                            },
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "24Mi"},
                                "limits": {"memory": "64Mi"},
                            },
                        }
                    ],
                }
            },
        },
    }


def kubectl_out(kubectl: list[str], *args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [*kubectl, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


def leader_log(kubectl: list[str], namespace: str, pod: str) -> list[dict[str, Any]]:
    lines = kubectl_out(kubectl, "-n", namespace, "logs", pod).splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def live_pods(kube: client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    return [p for p in pods(kube, namespace, name) if not p["metadata"].get("deletionTimestamp")]


def by_shard(items: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(p["metadata"]["labels"]["rackscale.dev/shard"]): p for p in items}


def through_service(kubectl: list[str], namespace: str, name: str, from_pod: str) -> dict[str, Any]:
    """GET http://<name>:8000/ from inside the cluster: cluster DNS, the Service, kube-proxy."""
    url = f"http://{name}.{namespace}.svc:8000/"
    code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=10).read().decode())"
    out = kubectl_out(kubectl, "-n", namespace, "exec", from_pod, "--", "python3", "-c", code)
    return dict(json.loads(out))


def formed_group(  # noqa: PLR0917 (one call site, in Kind.group)
    kube: client.ApiClient, kubectl: list[str], namespace: str, name: str, shards: int, world: int
) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """Wait for the replica Ready; check its group as the leader logged it; return pods, log."""
    ready(kube, namespace, name, 1)
    members = by_shard(live_pods(kube, namespace, name))
    assert sorted(members) == list(range(shards))
    log = leader_log(kubectl, namespace, members[0]["metadata"]["name"])
    checkins = [e for e in log if e["msg"] == "check-in"]
    print(f"\nleader {members[0]['metadata']['name']} of {namespace}/{name}:")
    for entry in log:
        print("  ", json.dumps(entry))
    assert sorted(e["shard"] for e in checkins) == list(range(1, shards))
    for e in checkins:
        pod = members[e["shard"]]
        assert e["pod"] == pod["metadata"]["name"]
        assert e["world_size"] == world
        assert e["first_rank"] == int(pod["metadata"]["annotations"]["rackscale.dev/first-rank"])
    formed = [e for e in log if e["msg"] == "group formed"]
    assert len(formed) == 1
    assert formed[0]["world_size"] == world
    assert formed[0]["shards"] == list(range(shards))
    return members, log


@dataclass(frozen=True)
class Kind:
    """What a kind test works with: the API, kubectl, its namespace, the shard image."""

    kube: client.ApiClient
    kubectl: list[str]
    namespace: str
    image: str
    name: str  # the test's InferenceDeployment

    def deploy(self, pool: str | None, *, tensor: int, gpus_per_pod: int) -> None:
        body = shard_deployment(
            self.name, self.image, pool, tensor=tensor, gpus_per_pod=gpus_per_pod
        )
        apply(self.kube, self.namespace, body)

    def group(
        self, shards: int, world: int
    ) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
        return formed_group(self.kube, self.kubectl, self.namespace, self.name, shards, world)

    def live(self) -> list[dict[str, Any]]:
        return live_pods(self.kube, self.namespace, self.name)

    def via_service(self, from_pod: dict[str, Any]) -> dict[str, Any]:
        """Through the Service, once kube-proxy routes it: the leader's endpoint reaches the
        nodes' rules a moment after the pod turns Ready."""

        def answer() -> dict[str, Any] | None:
            try:
                return through_service(
                    self.kubectl, self.namespace, self.name, from_pod["metadata"]["name"]
                )
            except AssertionError as error:
                if "Connection refused" not in str(error):
                    raise
                return None

        return eventually(answer, f"{self.name} answering through its Service", timeout=30)

    def node(self, name: str) -> client.V1Node:
        return client.CoreV1Api(self.kube).read_node(name)


@pytest.fixture
def kind(kube: client.ApiClient, kubectl: list[str], llm: str, shard_image: str) -> Kind:
    return Kind(kube, kubectl, llm, shard_image, f"group-{uuid.uuid4().hex[:6]}")


def test_a_replica_across_trays_forms_its_group_and_serves(kind: Kind, pool: str) -> None:
    kind.deploy(pool, tensor=8, gpus_per_pod=4)
    members, _ = kind.group(shards=2, world=8)

    nodes = {p["spec"]["nodeName"] for p in members.values()}
    assert len(nodes) == 2, "each 4-GPU shard fills one tray"
    cliques = {objects.labels(kind.node(n))[CLIQUE] for n in nodes}
    assert len(cliques) == 1, "a rack-scoped replica stays inside one NVLink domain"

    view = kind.via_service(members[1])
    assert view["formed"] is True
    assert [m["shard"] for m in view["members"]] == [0, 1]
    assert {m["pod"] for m in view["members"]} == {p["metadata"]["name"] for p in members.values()}
    # Each shard holds the 4 devices the fake plugin allocated to it, none shared.
    devices = [d for m in view["members"] for d in m["devices"].split(",")]
    assert len(devices) == 8
    assert len(set(devices)) == 8
    assert all(d.startswith("GPU-") for d in devices)


def test_a_shard_that_exits_restarts_its_whole_replica(kind: Kind, pool: str) -> None:
    kind.deploy(pool, tensor=8, gpus_per_pod=4)
    before, _ = kind.group(shards=2, world=8)
    old = {p["metadata"]["uid"] for p in before.values()}

    # SIGUSR1 makes shard.py exit with status 3: a crash, with restartPolicy Never a Failed pod.
    crash = "import os, signal; os.kill(1, signal.SIGUSR1)"
    follower = before[1]["metadata"]["name"]
    # The exec ends with the container it runs in (status 137): its own result says nothing.
    subprocess.run(
        [*kind.kubectl, "-n", kind.namespace, "exec", follower, "--", "python3", "-c", crash],
        capture_output=True,
        timeout=60,
        check=False,
    )

    def replaced() -> bool:
        now = kind.live()
        return len(now) == 2 and not old & {p["metadata"]["uid"] for p in now}

    eventually(replaced, f"both pods of {kind.name} replaced", timeout=120)
    after, log = kind.group(shards=2, world=8)
    assert not old & {p["metadata"]["uid"] for p in after.values()}
    assert "ReplicaRestarting" in events(kind.kube, kind.namespace, kind.name)
    assert [e["msg"] for e in log].count("group formed") == 1


def test_a_stopped_worker_goes_not_ready_and_its_replica_moves_to_the_other_rack(
    kind: Kind, pool: str, stopped_nodes: list[str]
) -> None:
    kind.deploy(pool, tensor=8, gpus_per_pod=4)
    before, _ = kind.group(shards=2, world=8)
    first_rack = objects.labels(kind.node(before[0]["spec"]["nodeName"]))[CLIQUE]
    victim = before[1]["spec"]["nodeName"]

    subprocess.run(["docker", "stop", victim], check=True, capture_output=True, timeout=120)
    stopped_nodes.append(victim)
    started = time.monotonic()

    def not_ready() -> bool:
        conditions = objects.node_status(kind.node(victim)).conditions or []
        return any(c.type == "Ready" and c.status != "True" for c in conditions)

    eventually(not_ready, f"node {victim} NotReady after docker stop", timeout=180)
    print(f"\n{victim} NotReady {time.monotonic() - started:.0f}s after docker stop")

    def moved() -> bool:
        now = kind.live()
        return (
            len(now) == 2
            and all(p["spec"].get("nodeName") for p in now)
            and all(
                objects.labels(kind.node(p["spec"]["nodeName"]))[CLIQUE] != first_rack for p in now
            )
        )

    eventually(moved, f"{kind.name} placed on the other rack", timeout=240)
    after, _ = kind.group(shards=2, world=8)
    took = time.monotonic() - started
    print(f"{kind.name} Ready on the other rack {took:.0f}s after docker stop")
    assert victim not in {p["spec"]["nodeName"] for p in after.values()}
    assert "ReplicaRestarting" in events(kind.kube, kind.namespace, kind.name)


def test_without_a_pool_the_device_plugin_gives_the_devices(
    kind: Kind, plain_gpu_node: str
) -> None:
    # Two shards of 2 GPUs, placed by kube-scheduler alone on the one GPU node outside any rack.
    kind.deploy(None, tensor=4, gpus_per_pod=2)
    members, _ = kind.group(shards=2, world=4)
    assert {p["spec"]["nodeName"] for p in members.values()} == {plain_gpu_node}
    for p in members.values():
        container = p["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert p["metadata"]["annotations"]["rackscale.dev/mode"] == "DevicePlugin"
    view = kind.via_service(members[1])
    devices = [m["devices"].split(",") for m in view["members"]]
    assert [len(d) for d in devices] == [2, 2]
    assert not set(devices[0]) & set(devices[1]), "the plugin never hands a device out twice"
    assert get(kind.kube, kind.namespace, kind.name)["status"]["phase"] == "Ready"


@pytest.fixture
def plain_gpu_node(kube: client.ApiClient) -> Iterator[str]:
    """One worker taken out of its rack for the test (its clique label removed), as a GPU node
    outside any NVLink domain is; device-plugin pods may only go to such nodes."""
    core = client.CoreV1Api(kube)
    workers = sorted(
        objects.name(n)
        for n in core.list_node(label_selector="!node-role.kubernetes.io/control-plane").items
    )
    node = workers[-1]
    clique = objects.labels(core.read_node(node))[CLIQUE]
    core.patch_node(node, {"metadata": {"labels": {CLIQUE: None}}})
    try:
        yield node
    finally:
        core.patch_node(node, {"metadata": {"labels": {CLIQUE: clique}}})
        wait_gpus(kube, node, GPUS_PER_NODE)
