"""The examples would start: every shard's engine command line, expanded as the kubelet expands it
and parsed as the engine parses it, agrees with the other shards of its replica.

Each example is placed alone on examples/cluster.yaml by the engine and rendered as the operator
renders it. The flags are those the engines document for running one model over several nodes:
vLLM (`vllm serve`: --nnodes/--node-rank/--master-addr/--headless, and data parallelism with
--data-parallel-size/-size-local/-start-rank/-address/-rpc-port) and SGLang
(`sglang.launch_server`: --nnodes/--node-rank/--dist-init-addr). A disaggregated example
(spec.roles) is placed group by group and each role replica checked against its role's shape;
every role names the same KV connector (--kv-transfer-config).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from rackscale.api import InferenceDeployment, RackPool
from rackscale.api.environment import COORDINATION_PORT
from rackscale.placement import place_deployment
from rackscale.placement.groups import place_deployment_groups
from rackscale.render import pool_facts, render_replica
from rackscale.topology import build_snapshot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


NODES = _documents("cluster.yaml")[0]["items"]
POOLS = [RackPool.model_validate(d) for d in _documents("rackpool-gb200.yaml")]
ALL_DEPLOYMENTS = sorted(
    p.name
    for p in EXAMPLES.glob("*.yaml")
    if any(d.get("kind") == "InferenceDeployment" for d in _documents(p.name))
)
# Examples for `rackscale plan` only: one refused for memory on purpose, one for another
# vendor's pool (not in cluster.yaml). Every other example must start on the GB200 cluster.
PLANNING_ONLY = ("llama-405b-tp4.yaml", "llama-405b-trn2.yaml")
DEPLOYMENTS = [name for name in ALL_DEPLOYMENTS if name not in PLANNING_ONLY]


def test_every_example_is_checked_or_named_planning_only() -> None:
    assert set(PLANNING_ONLY) <= set(ALL_DEPLOYMENTS)
    assert len(DEPLOYMENTS) >= 4


# --- the kubelet: $(VAR) expansion --------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """`$(NAME)` replaced by its value, `$$` by `$`; an unknown or unclosed reference is kept as
    written, and `$` before anything else is copied with that character: Kubernetes' rules for
    command, args and env values."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
            elif following == "(":
                close = text.find(")", i + 2)
                if close == -1:
                    out.append("$(")
                    i += 2
                else:
                    name = text[i + 2 : close]
                    out.append(env.get(name, f"$({name})"))
                    i = close + 1
            else:
                out.append(text[i : i + 2])
                i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def test_expansion_follows_the_kubelets_rules() -> None:
    env = {"A": "1", "B": "x y"}
    assert expand("$(A)", env) == "1"
    assert expand("$(B):$(A)", env) == "x y:1"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("$$$(A)", env) == "$1"
    assert expand("$(C)", env) == "$(C)"
    assert expand("$(A", env) == "$(A"
    assert expand("$A$", env) == "$A$"
    assert expand("$()", env) == "$()"


def container_env(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet gives the container: each value expanded with the variables
    defined before it. Values the kubelet reads at run time (downward API, Secrets) stand as
    `<what of pod>`; the Service variables it adds for the namespace are left out."""
    env: dict[str, str] = {}
    name = pod["metadata"]["name"]
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = expand(str(entry["value"]), env)
        elif field := (entry.get("valueFrom") or {}).get("fieldRef"):
            env[entry["name"]] = f"<{field['fieldPath']} of {name}>"
        elif secret := (entry.get("valueFrom") or {}).get("secretKeyRef"):
            env[entry["name"]] = f"<secret {secret['name']}/{secret['key']}>"
        else:
            env[entry["name"]] = ""
    return env


def argv(pod: dict[str, Any]) -> list[str]:
    """The first container's command line as the kubelet runs it."""
    container = pod["spec"]["containers"][0]
    env = container_env(pod, container)
    return [expand(a, env) for a in [*container.get("command", []), *container.get("args", [])]]


# --- the engines: their documented flags, parsed as argparse parses them ------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(f"{self.prog}: {message}")


def _vllm() -> _Parser:
    p = _Parser(prog="vllm serve", allow_abbrev=False)
    p.add_argument("model")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    p.add_argument("--data-parallel-size-local", "-dpl", type=int)
    p.add_argument("--data-parallel-start-rank", "-dpr", type=int, default=0)
    p.add_argument("--data-parallel-address", "-dpa")
    p.add_argument("--data-parallel-rpc-port", "-dpp", type=int)
    p.add_argument("--enable-expert-parallel", "-ep", action="store_true")
    p.add_argument("--nnodes", "-n", type=int, default=1)
    p.add_argument("--node-rank", "-r", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1")
    p.add_argument("--master-port", type=int, default=29501)
    p.add_argument("--headless", action="store_true")
    p.add_argument("--host")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--kv-transfer-config", type=json.loads)
    return p


def _sglang() -> _Parser:
    p = _Parser(prog="sglang.launch_server", allow_abbrev=False)
    p.add_argument("--model-path", required=True)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--tp-size", "--tp", type=int, default=1)
    p.add_argument("--pp-size", type=int, default=1)
    p.add_argument("--dp-size", "--dp", type=int, default=1)
    p.add_argument("--enable-dp-attention", action="store_true")
    p.add_argument("--ep-size", "--ep", type=int, default=1)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--dist-init-addr")
    p.add_argument("--tool-call-parser")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    return p


ENGINES: dict[tuple[str, ...], tuple[str, Callable[[], _Parser]]] = {
    ("vllm", "serve"): ("vllm", _vllm),
    ("python3", "-m", "sglang.launch_server"): ("sglang", _sglang),
}


def parse(pod: dict[str, Any]) -> tuple[str, argparse.Namespace]:
    line = argv(pod)
    for prefix, (engine, parser) in ENGINES.items():
        if tuple(line[: len(prefix)]) == prefix:
            return engine, parser().parse_args(line[len(prefix) :])
    raise AssertionError(f"{pod['metadata']['name']}: no known engine runs {line[:3]}")


# --- the examples, placed and rendered -----------------------------------------------------------


def rendered(name: str) -> list[tuple[InferenceDeployment, list[dict[str, Any]]]]:
    """The example's pods, replica by replica, as the operator would create them, each with
    what shapes it: the deployment, or with spec.roles the replica's role (`role_view`)."""
    (doc,) = _documents(name)
    dep = InferenceDeployment.model_validate(doc)
    snapshot = build_snapshot(NODES, [], POOLS)
    if dep.spec.roles:
        plan = place_deployment_groups(snapshot, dep)
        assert len(plan.replicas) == dep.spec.replicas * dep.spec.group_size, plan.reason
    else:
        plan = place_deployment(snapshot, dep)
        assert len(plan.replicas) == dep.spec.replicas, plan.reason
    return [
        (shaped_by(dep, r.replica), render_replica(dep, r, pool_facts(dep, r, snapshot)))
        for r in plan.replicas
    ]


def shaped_by(dep: InferenceDeployment, replica: int) -> InferenceDeployment:
    if not dep.spec.roles:
        return dep
    return dep.role_view(dep.spec.role_replica(replica).role)


def gpus(pod: dict[str, Any]) -> int:
    return int(pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])


def first_rank(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["annotations"]["rackscale.dev/first-rank"])


def leader_of(pods: list[dict[str, Any]]) -> Callable[[str | None], bool]:
    """Whether an address reaches the replica's leader: its DNS name under the headless Service,
    or, on the leader itself, its own pod IP."""
    leader = pods[0]
    spec, meta = leader["spec"], leader["metadata"]
    names = {
        f"{spec['hostname']}.{spec['subdomain']}.{meta['namespace']}.svc",
        f"<status.podIP of {meta['name']}>",
    }
    return lambda address: address in names


def check_vllm(dep: InferenceDeployment, pods: list[dict[str, Any]], args: list[Any]) -> None:
    par = dep.spec.parallelism
    to_leader = leader_of(pods)
    shards = len(pods)
    assert {(a.tensor_parallel_size, a.pipeline_parallel_size) for a in args} == {
        (par.tensor, par.pipeline)
    }
    assert [a.headless for a in args] == [False] + [True] * (shards - 1)
    dp = {a.data_parallel_size for a in args}
    assert len(dp) == 1
    (size,) = dp
    if size > 1:  # one engine per data-parallel rank, coordinated by the leader
        assert size == par.data
        assert all(to_leader(a.data_parallel_address) for a in args)
        assert len({a.data_parallel_rpc_port for a in args}) == 1
        held = sorted(
            rank
            for a in args
            for rank in range(
                a.data_parallel_start_rank, a.data_parallel_start_rank + a.data_parallel_size_local
            )
        )
        assert held == list(range(size)), "data-parallel ranks held once each"
        for pod, a in zip(pods, args, strict=True):
            assert a.data_parallel_size_local * par.tensor * par.pipeline == gpus(pod)
            assert a.data_parallel_start_rank * par.tensor * par.pipeline == first_rank(pod)
            assert a.nnodes == 1
        if par.expert > 1:
            assert all(a.enable_expert_parallel for a in args)
            assert par.expert == size * par.tensor, "vLLM's expert-parallel group is DP x TP"
    else:  # one engine over all the pods (or one pod)
        assert {a.nnodes for a in args} == {shards}
        assert [a.node_rank for a in args] == list(range(shards))
        assert par.tensor * par.pipeline == par.gpus
        for pod, a in zip(pods, args, strict=True):
            assert a.node_rank * gpus(pod) == first_rank(pod)
            assert par.gpus // a.nnodes == gpus(pod)
        if shards > 1:
            assert all(to_leader(a.master_addr) for a in args)
            assert len({a.master_port for a in args}) == 1
    assert args[0].port == dep.spec.port


def check_sglang(dep: InferenceDeployment, pods: list[dict[str, Any]], args: list[Any]) -> None:
    par = dep.spec.parallelism
    to_leader = leader_of(pods)
    shards = len(pods)
    assert {a.nnodes for a in args} == {shards}
    assert [a.node_rank for a in args] == list(range(shards))
    (tp,) = {a.tp_size for a in args}
    (pp,) = {a.pp_size for a in args}
    (dp,) = {a.dp_size for a in args}
    (ep,) = {a.ep_size for a in args}
    attention_dp = {a.enable_dp_attention for a in args}
    assert len(attention_dp) == 1
    assert tp * pp == par.gpus
    assert pp == par.pipeline
    assert dp == par.data
    assert dp == 1 or attention_dp == {True}
    assert tp == par.tensor * (par.data if attention_dp == {True} else 1)
    assert ep == par.expert
    (address,) = {a.dist_init_addr for a in args}
    host, _, port = address.rpartition(":")
    assert to_leader(host)
    assert int(port) == COORDINATION_PORT
    for pod in pods:
        assert tp * pp // shards == gpus(pod)
    assert args[0].port == dep.spec.port


CHECKS = {"vllm": check_vllm, "sglang": check_sglang}


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_every_shards_engine_command_line_agrees_with_its_replica(name: str) -> None:
    connectors = set()
    for dep, pods in rendered(name):
        parsed = [parse(p) for p in pods]
        engines = {engine for engine, _ in parsed}
        assert len(engines) == 1, f"one engine per replica, not {engines}"
        CHECKS[engines.pop()](dep, pods, [a for _, a in parsed])
        connectors |= {
            json.dumps(getattr(a, "kv_transfer_config", None), sort_keys=True) for _, a in parsed
        }
    if name.endswith("-disagg.yaml"):  # prefill hands its KV cache to decode: one connector
        (connector,) = connectors
        assert json.loads(connector)["kv_connector"] == "NixlConnector"


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_every_example_is_ready_for_real_hardware(name: str) -> None:
    for dep, pods in rendered(name):
        port = dep.spec.port
        leader, workers = pods[0], pods[1:]
        probe = leader["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        assert probe["port"] == port
        for worker in workers:
            assert "readinessProbe" not in worker["spec"]["containers"][0]
        for pod in pods:
            spec = pod["spec"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            (server, *_) = spec["containers"]
            mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert "model-cache" in mounts.values()
            token = next(e for e in server["env"] if e["name"] == "HF_TOKEN")
            assert token["valueFrom"]["secretKeyRef"]["optional"] is True
            assert re.fullmatch(r"[\w./-]+:v\d+\.\d+\.\d+", server["image"]), server["image"]
            values = container_env(pod, server)
            multi_node = len(pods) > 1 and dep.spec.placement.rack_pool is not None
            assert (values.get("NCCL_MNNVL_ENABLE") == "1") is multi_node
            assert (values.get("NCCL_CUMEM_ENABLE") == "1") is multi_node
