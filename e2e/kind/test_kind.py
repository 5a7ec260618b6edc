"""On kind, with real kubelets: the in-cluster operator's replicas run as shard groups that find
their leader through cluster DNS, restart as a unit, move off a stopped worker, and get devices
from the fake-GPU device plugin when no pool places them; and serving groups of stand-in prefill
and decode engines serve disaggregated through the example's router."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
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


# ---- disaggregated serving: the example's router in front of stand-in engines --------------

ROUTER = Path(__file__).resolve().parents[2] / "examples" / "pd-router"
ENGINE_PORT = 8200  # the decode engine's, behind the router on the role's port
# The group's leaders as the pod's annotation shows them, through a downward API volume.
LEADERS_FILE = "/etc/rackscale/leaders"
LEADERS_ITEM = {
    "path": "leaders",
    "fieldRef": {"fieldPath": "metadata.annotations['rackscale.dev/leaders']"},
}
ROUTED = 40


def stand_in(image: str, port: int, probe: bool) -> dict[str, Any]:
    """shard.py as a prefill or decode engine (it stands in for vLLM: there are no GPUs)."""
    container: dict[str, Any] = {
        "name": "engine",
        "image": image,
        "imagePullPolicy": "Never",
        "args": ["--port", str(port)],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "engine", "containerPort": port}],
        "resources": {"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"memory": "64Mi"}},
    }
    if probe:
        container["readinessProbe"] = {
            "httpGet": {"path": "/health", "port": port},
            "periodSeconds": 1,
        }
    return container


def disaggregated_deployment(name: str, image: str, pool: str) -> dict[str, Any]:
    """Two serving groups, each a prefill and a decode replica of 4 GPUs in one rack; the decode
    leader runs the example's router on the served port, its engine on 8200, as
    examples/deepseek-r1-disagg.yaml wires them."""
    router = {
        "name": "router",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python3", "/router/router.py"],
        "args": [
            "--port=8000",
            "--prefill=$(RACKSCALE_PREFILL_LEADERS)",
            f"--decode=127.0.0.1:{ENGINE_PORT}",
            f"--leaders={LEADERS_FILE}",
        ],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 1},
        "volumeMounts": [
            {"name": "router", "mountPath": "/router", "readOnly": True},
            {"name": "leaders", "mountPath": LEADERS_FILE.rpartition("/")[0]},
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"memory": "64Mi"}},
    }

    def role(role: str, containers: list[dict[str, Any]], **pod: Any) -> dict[str, Any]:
        spec = {"terminationGracePeriodSeconds": 2, "containers": containers, **pod}
        return {
            "name": role,
            "parallelism": {"tensor": GPUS_PER_NODE},
            "gpusPerPod": GPUS_PER_NODE,
            "template": {"spec": spec},
        }

    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "placement": {"rackPool": pool, "colocate": "Rack", "fallback": "Never"},
            "port": 8000,
            "roles": [
                role("prefill", [stand_in(image, 8000, probe=True)]),
                role(
                    "decode",
                    [stand_in(image, ENGINE_PORT, probe=False), router],
                    volumes=[
                        {"name": "router", "configMap": {"name": "pd-router"}},
                        {"name": "leaders", "downwardAPI": {"items": [LEADERS_ITEM]}},
                    ],
                ),
            ],
        },
    }


def router_config_map(kubectl: list[str], namespace: str) -> dict[str, Any]:
    """ConfigMap pd-router as `kubectl apply -k examples/pd-router` makes it, in `namespace`."""
    [body] = [d for d in yaml.safe_load_all(kubectl_out(kubectl, "kustomize", str(ROUTER))) if d]
    assert body["kind"] == "ConfigMap"
    assert body["metadata"]["name"] == "pd-router", "no hash suffix: the pods name it"
    assert body["data"]["router.py"] == (ROUTER / "router.py").read_text()
    body["metadata"]["namespace"] = namespace
    return dict(body)


# Run inside a pod: completions through Service <name> (cluster DNS, kube-proxy); first until
# both groups answered once (kube-proxy routes endpoints a moment after they turn Ready), then
# `count` counted ones, half chat, every fourth streamed. Prints what each answer said.
CLIENT = """
import json, sys, time, urllib.error, urllib.request
url, count = sys.argv[1], int(sys.argv[2])

def post(i, path, stream):
    body = {"model": "stand-in", "max_tokens": 8 + i, "stream": stream}
    body.update({"messages": [{"role": "user", "content": f"q{i}"}]} if "chat" in path
                else {"prompt": f"q{i}"})
    request = urllib.request.Request(url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read().decode()
    if stream:
        events = [line[6:] for line in raw.split("\\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]", raw
        raw = events[0]
    return {"path": path, "stream": stream, "max_tokens": body["max_tokens"], **json.loads(raw)}

warmup, groups, deadline = [], set(), time.monotonic() + 60
while len(groups) < 2 and time.monotonic() < deadline:
    try:
        answer = post(0, "/v1/completions", False)
    except (urllib.error.URLError, ConnectionError):
        time.sleep(0.5)
        continue
    warmup.append(answer)
    groups.add(answer["served"]["decode"]["group"])
paths = ["/v1/completions", "/v1/chat/completions"]
counted = [post(i, paths[i % 2], i % 4 == 3) for i in range(count)]
print(json.dumps({"warmup": warmup, "counted": counted}))
"""


def test_disaggregated_requests_go_to_prefill_then_to_decode_of_the_same_group(
    kind: Kind, pool: str
) -> None:
    core = client.CoreV1Api(kind.kube)
    config_map = router_config_map(kind.kubectl, kind.namespace)
    core.create_namespaced_config_map(kind.namespace, config_map)  # type: ignore[arg-type]
    apply(kind.kube, kind.namespace, disaggregated_deployment(kind.name, kind.image, pool))
    ready(kind.kube, kind.namespace, kind.name, 2)

    # The leaders of each (group, role), as the API shows them; each group inside one rack.
    leaders: dict[tuple[int, str], dict[str, Any]] = {}
    for pod in kind.live():
        labels = pod["metadata"]["labels"]
        assert labels["rackscale.dev/leader"] == "true", "one pod per role replica here"
        leaders[int(labels["rackscale.dev/group"]), labels["rackscale.dev/role"]] = pod
    assert sorted(leaders) == [(0, "decode"), (0, "prefill"), (1, "decode"), (1, "prefill")]
    for group in (0, 1):
        nodes = {leaders[group, r]["spec"]["nodeName"] for r in ("prefill", "decode")}
        assert len({objects.labels(kind.node(n))[CLIQUE] for n in nodes}) == 1

    url = f"http://{kind.name}.{kind.namespace}.svc:8000"
    out = kubectl_out(
        kind.kubectl,
        "-n",
        kind.namespace,
        "exec",
        leaders[0, "prefill"]["metadata"]["name"],
        "--",
        "python3",
        "-c",
        CLIENT,
        url,
        str(ROUTED),
        timeout=180,
    )
    seen = json.loads(out)
    counted: list[dict[str, Any]] = seen["counted"]
    assert len(counted) == ROUTED

    hops: Counter[tuple[int, str, str]] = Counter()
    for answer in [*seen["warmup"], *counted]:
        prefill, decode = answer["served"]["prefill"], answer["served"]["decode"]
        group = decode["group"]
        assert prefill is not None, f"decode got no kv_transfer_params: {answer}"
        assert prefill["group"] == group, f"prefill and decode of different groups: {answer}"
        assert prefill["role"] == "prefill"
        assert decode["role"] == "decode"
        assert prefill["pod"] == leaders[group, "prefill"]["metadata"]["name"]
        assert decode["pod"] == leaders[group, "decode"]["metadata"]["name"]
        params = answer["kv_transfer_params_received"]
        assert params["remote_engine_id"] == prefill["pod"]
        assert params["remote_host"] == leaders[group, "prefill"]["status"]["podIP"]
        assert params["do_remote_prefill"] is True
        assert params["prefill_max_tokens"] == 1
        assert params["prefill_stream"] is False
        hops[group, prefill["pod"], decode["pod"]] += 1
    # Decode got the client's own max_tokens, not prefill's one token (shard.py echoes it).
    assert [a["max_tokens"] for a in counted] == list(range(8, 8 + ROUTED))
    per_group = Counter(a["served"]["decode"]["group"] for a in counted)
    assert set(per_group) == {0, 1}, f"both groups serve through Service {kind.name}"

    # Each decode leader's router logged exactly the requests its group answered.
    for group in (0, 1):
        pod = leaders[group, "decode"]["metadata"]["name"]
        lines = kubectl_out(kind.kubectl, "-n", kind.namespace, "logs", pod, "-c", "router")
        routed = [json.loads(x) for x in lines.splitlines() if x.startswith("{")]
        requests = [r for r in routed if r["msg"] == "request"]
        assert len(requests) == sum(n for (g, _, _), n in hops.items() if g == group)
        assert all(r["status"] == 200 for r in requests)
        # The kubelet showed the pod's rackscale.dev/leaders as a file: the router took its
        # group's prefill leader from there.
        told = [r for r in routed if r["msg"] == "prefill leaders"]
        assert told, f"{pod}: the router never read {LEADERS_FILE}"
        assert told[-1]["source"] == LEADERS_FILE
        (address,) = told[-1]["prefill"]
        assert address.startswith(f"{kind.name}-g{group}-prefill-0-0."), address

    print(
        f"\nthrough Service {kind.name}: {ROUTED} requests counted "
        f"(+{len(seen['warmup'])} until both groups answered), "
        f"{sum(a['stream'] for a in counted)} streamed, "
        f"{sum('chat' in a['path'] for a in counted)} chat"
    )
    for (group, prefill_pod, decode_pod), n in sorted(hops.items()):
        print(f"  group {group}: {n} requests  {prefill_pod} (prefill) -> {decode_pod} (decode)")
    print(f"  counted requests per group: {dict(sorted(per_group.items()))}")
