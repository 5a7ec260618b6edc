"""The examples would start: every shard's engine command line, expanded as the kubelet expands it
and parsed as the pinned engine version parses it, obeys that version's rules and agrees with the
other shards of its replica.

The engines' facts live in tests/engines/, one fixture per engine image version the examples pin
(`<engine>-<version>.yaml`: option strings, aliases, defaults, deprecations, and the rules that
decide a multi-node launch, each with the file and line of the engine's source it was read from),
plus tests/engines/models.yaml (checkpoint shapes). The parsers are built from the fixture; an
example whose image tag has no fixture fails, naming the fixture to write.

Each example is placed alone on examples/cluster.yaml by the engine and rendered as the operator
renders it. A disaggregated example (spec.roles) is placed group by group and each role replica
checked against its role's shape. Every rule is also shown to fail on a mutated example.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

import router as pd_router
from rackscale.api import InferenceDeployment, RackPool
from rackscale.api.environment import COORDINATION_PORT
from rackscale.placement import place_deployment
from rackscale.render import pool_facts, render_replica
from rackscale.topology import build_snapshot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENGINES = Path(__file__).resolve().parent / "engines"


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


NODES = _documents("cluster.yaml")[0]["items"]
POOLS = [RackPool.model_validate(d) for d in _documents("rackpool-gb200.yaml")]
ARCH_LABEL = "kubernetes.io/arch"
NODE_ARCH = {n["metadata"]["name"]: n["metadata"]["labels"].get(ARCH_LABEL) for n in NODES}
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


def argv(pod: dict[str, Any], container: dict[str, Any] | None = None) -> list[str]:
    """A container's command line as the kubelet runs it: by default the first, the engine that
    holds the GPUs."""
    container = container or pod["spec"]["containers"][0]
    env = container_env(pod, container)
    return [expand(a, env) for a in [*container.get("command", []), *container.get("args", [])]]


# --- the engines: parsers and rules from their fixtures -----------------------------------------


@cache
def fixtures() -> dict[tuple[str, str], dict[str, Any]]:
    """(image repository, version) -> the engine fixture."""
    out = {}
    for path in sorted(ENGINES.glob("*.yaml")):
        if path.name == "models.yaml":
            continue
        fixture = yaml.safe_load(path.read_text())
        assert path.stem == f"{fixture['engine']}-{fixture['version']}", path
        out[fixture["image"]["repository"], fixture["version"]] = fixture
    return out


@cache
def models() -> dict[str, Any]:
    return dict(yaml.safe_load((ENGINES / "models.yaml").read_text()))


TAG = re.compile(r"(?P<repository>[\w./-]+):v(?P<version>\d+\.\d+\.\d+)(?P<suffix>-[\w.-]+)?")


def fixture_for(image: str) -> tuple[dict[str, Any], str]:
    """The fixture of the engine version an image runs, and the image's tag suffix (`-aarch64`,
    `-cu130`, ...); an image with no fixture fails, naming the file to write."""
    match = TAG.fullmatch(image)
    assert match, f"{image}: pin an engine release tag (v<major>.<minor>.<patch>[-suffix])"
    repository, version = match["repository"], match["version"]
    fixture = fixtures().get((repository, version))
    if fixture is None:
        engines = {f["engine"] for (repo, _), f in fixtures().items() if repo == repository}
        engine = engines.pop() if engines else repository.rsplit("/", 1)[-1]
        raise AssertionError(
            f"{image}: no engine fixture tests/engines/{engine}-{version}.yaml; read that "
            f"version's source and write one (see tests/engines/)"
        )
    suffix = match["suffix"] or ""
    assert suffix in fixture["image"]["arm64"], (
        f"{image}: tag suffix {suffix!r} is not one {repository} publishes for v{version} "
        f"(known: {sorted(fixture['image']['arm64'])}; {fixture['image']['source']})"
    )
    return fixture, suffix


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise AssertionError(f"{self.prog}: {message}")


def _dest(names: list[str]) -> str:
    long = next((n for n in names if n.startswith("--")), names[0])
    return long.lstrip("-").replace("-", "_")


def parser_of(fixture: dict[str, Any]) -> _Parser:
    """The engine's command line as the fixture records it: only its options, with its
    aliases, types and defaults; anything else is refused as the engine refuses it."""
    prog = f"{' '.join(fixture['command'])} ({fixture['engine']} {fixture['version']})"
    p = _Parser(prog=prog, allow_abbrev=False)
    types: dict[str, Callable[[str], Any]] = {"int": int, "str": str, "json": json.loads}
    for option in fixture["options"]:
        names = option["names"]
        kind = option["type"]
        if option.get("positional"):
            p.add_argument(
                names[0],
                nargs="?" if option.get("optional") else None,
                type=types[kind],
                default=option.get("default"),
            )
            continue
        kwargs: dict[str, Any] = {"dest": _dest(names)}
        if kind == "store_true":
            kwargs["action"] = "store_true"
        elif kind == "boolean_optional":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = types[kind]
            if "choices" in option:
                kwargs["choices"] = option["choices"]
        if option.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = option.get("default")
        p.add_argument(*names, **kwargs)
    return p


def test_parsers_follow_the_fixture() -> None:
    vllm = fixtures()["vllm/vllm-openai", "0.33.0"]
    args = parser_of(vllm).parse_args(["m", "-tp", "2", "--no-enable-expert-parallel"])
    assert (args.model_tag, args.tensor_parallel_size, args.enable_expert_parallel) == (
        "m",
        2,
        False,
    )
    assert args.data_parallel_start_rank is None, "vLLM's default is None, not 0"
    assert args.api_server_count is None
    sglang = fixtures()["lmsysorg/sglang", "0.5.23"]
    args = parser_of(sglang).parse_args(["--model", "m", "--tensor-parallel-size", "8"])
    assert (args.model_path, args.tp_size, args.attn_dp_size) == ("m", 8, 1)
    with pytest.raises(AssertionError, match="unrecognized arguments: --tp"):
        parser_of(sglang).parse_args(["--model-path", "m", "--tp", "8"])
    with pytest.raises(AssertionError, match="--model-path"):
        parser_of(sglang).parse_args([])


SOURCE = re.compile(r"[\w./-]+\.(py|md|sh|yml|yaml)(@\w+)?(:\d+|\s\()")


def test_every_fixture_fact_says_where_it_was_read() -> None:
    for fixture in fixtures().values():
        entries = [fixture["image"], *fixture["options"], *(fixture.get("deprecated") or [])]
        entries += [r for r in fixture["rules"].values() if isinstance(r, dict)]
        for entry in entries:
            assert SOURCE.search(entry["source"]), (fixture["engine"], entry)
        for key in ("dp_source", "moe_dense_source", "headless_source"):
            for holder in (fixture["rules"], fixture["rules"].get("data_parallel_load_balancing")):
                if holder and key in holder:
                    assert SOURCE.search(holder[key]), (fixture["engine"], key)


def given(line: list[str], option: str) -> bool:
    return any(a == option or a.startswith(f"{option}=") for a in line)


def check_deprecations(fixture: dict[str, Any], line: list[str], args: argparse.Namespace) -> None:
    for entry in fixture.get("deprecated") or []:
        option = entry["option"]
        if "key" not in entry:
            assert not given(line, option), (
                f"{option} is deprecated in {fixture['engine']} {fixture['version']}: use "
                f"{entry['instead']} ({entry['source']})"
            )
            continue
        value = getattr(args, _dest([option]), None) or {}
        if value.get(entry["key"]) == entry["value"] and all(
            value.get(k) == v for k, v in (entry.get("when") or {}).items()
        ):
            raise AssertionError(
                f"{option} {entry['key']}={entry['value']} with {entry.get('when')} is deprecated "
                f"in {fixture['engine']} {fixture['version']}: {entry['instead']} "
                f"({entry['source']})"
            )


def check_block_fp8(
    fixture: dict[str, Any], model: str | None, attention_tp: int, dense_tp: int
) -> None:
    """A block-FP8 checkpoint's weight shards must hold whole blocks, or loading fails."""
    shape = models().get(model or "")
    if not shape:
        return
    block_n, block_k = shape["weight_block_size"]
    source = fixture["rules"]["block_fp8_load"]["source"]
    if attention_tp > 1:
        q_b = shape["num_attention_heads"] * shape["qk_head_dim"]
        whole = q_b % attention_tp == 0 and (q_b // attention_tp) % block_n == 0
        assert whole, (
            f"{model}: q_b_proj shard {q_b}/{attention_tp} is not a whole number of {block_n}-wide "
            f"FP8 blocks at attention TP {attention_tp}; loading fails ({source}). Use attention "
            f"data parallelism with expert parallelism, or TP 16 x PP"
        )
    if dense_tp > 1:
        dense = shape["intermediate_size"]
        whole = dense % dense_tp == 0 and (dense // dense_tp) % block_k == 0
        assert whole, (
            f"{model}: dense MLP shard {dense}/{dense_tp} is not a whole number of {block_k}-wide "
            f"FP8 blocks at TP {dense_tp}; loading fails ({source}). Replicate it "
            f"(SGLang --moe-dense-tp-size 1) or keep its TP at 16 or below"
        )


def vllm_lb_mode(fixture: dict[str, Any], args: argparse.Namespace) -> str:
    """The data-parallel load-balancing mode one `vllm serve` process runs in, by the fixture's
    rules: the first mode whose condition holds, then hybrid's downgrades."""
    rules = fixture["rules"]["data_parallel_load_balancing"]

    def holds(condition: Mapping[str, Any]) -> bool:
        ok = True
        if "set" in condition:
            ok &= getattr(args, condition["set"]) is not None
        if "enabled" in condition:
            ok &= bool(getattr(args, condition["enabled"]))
        if "headless" in condition:
            ok &= bool(args.headless) == condition["headless"]
        return ok

    mode = next(
        m["mode"] for m in rules["modes"] if not m["when_any"] or any(map(holds, m["when_any"]))
    )
    if mode == "hybrid" and args.data_parallel_size_local is not None:
        for downgrade in rules["hybrid_downgrades"]:
            local = downgrade["when_size_local"]
            if args.data_parallel_size_local == (
                args.data_parallel_size if local == "all" else local
            ):
                return str(downgrade["to"])
    return str(mode)


# --- the examples, placed and rendered -----------------------------------------------------------


def rendered(
    doc: dict[str, Any],
) -> list[tuple[InferenceDeployment, InferenceDeployment, list[dict[str, Any]]]]:
    """The example's pods, replica by replica, as the operator would create them, each with
    the deployment and what shapes the replica: the deployment, or with spec.roles its role."""
    dep = InferenceDeployment.model_validate(doc)
    snapshot = build_snapshot(NODES, [], POOLS)
    plan = place_deployment(snapshot, dep)
    assert len(plan.replicas) == dep.spec.replica_count, plan.reason
    return [
        (dep, shaped_by(dep, r.replica), render_replica(dep, r, pool_facts(dep, r, snapshot)))
        for r in plan.replicas
    ]


def example(name: str) -> dict[str, Any]:
    (doc,) = _documents(name)
    return doc


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


def check_vllm(
    fixture: dict[str, Any], view: InferenceDeployment, pods: list[dict[str, Any]], args: list[Any]
) -> None:
    par = view.spec.parallelism
    to_leader = leader_of(pods)
    shards = len(pods)
    assert {(a.tensor_parallel_size, a.pipeline_parallel_size) for a in args} == {
        (par.tensor, par.pipeline)
    }
    assert [a.headless for a in args] == [False] + [True] * (shards - 1)
    for a in args[1:]:
        assert not (a.api_server_count or 0) > 0, "a --headless shard runs no API server"
    for a in args:
        check_block_fp8(fixture, a.model_tag, a.tensor_parallel_size, a.tensor_parallel_size)
    dp = {a.data_parallel_size for a in args}
    assert len(dp) == 1
    (size,) = dp
    if size > 1:  # one engine per data-parallel rank, coordinated by the leader
        rules = fixture["rules"]["data_parallel_load_balancing"]
        mode = vllm_lb_mode(fixture, args[0])
        if shards > 1:
            assert mode in rules["remote_engines_headless_in"], (
                f"{pods[0]['metadata']['name']}: the API-serving shard runs in {mode} "
                f"data-parallel load balancing ({rules['modes'][2]['source']}) and refuses the "
                f"--headless engines of the other shards ({rules['source']}); leave "
                f"--data-parallel-start-rank off it"
            )
        assert args[0].api_server_count is not None, (
            f"{pods[0]['metadata']['name']}: pin --api-server-count on a data-parallel leader; "
            f"unset it is {fixture['rules']['api_server_count_default'][mode]} "
            f"({fixture['rules']['api_server_count_default']['source']})"
        )
        assert size == par.data
        assert all(to_leader(a.data_parallel_address) for a in args)
        assert len({a.data_parallel_rpc_port for a in args}) == 1
        starts = [
            0 if a.data_parallel_start_rank is None else a.data_parallel_start_rank for a in args
        ]
        held = sorted(
            rank
            for start, a in zip(starts, args, strict=True)
            for rank in range(start, start + a.data_parallel_size_local)
        )
        assert held == list(range(size)), "data-parallel ranks held once each"
        for pod, start, a in zip(pods, starts, args, strict=True):
            assert a.data_parallel_size_local * par.tensor * par.pipeline == gpus(pod)
            assert start * par.tensor * par.pipeline == first_rank(pod)
            assert a.nnodes == 1
        if par.expert > 1:
            assert all(a.enable_expert_parallel for a in args)
            assert par.expert == size * par.tensor, "vLLM's expert-parallel group is DP x TP"
    else:  # one engine over all the pods (or one pod)
        assert {a.nnodes for a in args} == {shards}
        assert [a.node_rank for a in args] == list(range(shards))
        assert par.tensor * par.pipeline == par.gpus
        assert par.gpus % shards == 0, fixture["rules"]["multi_node"]["source"]
        for pod, a in zip(pods, args, strict=True):
            assert a.node_rank * gpus(pod) == first_rank(pod)
            assert par.gpus // a.nnodes == gpus(pod)
            assert a.data_parallel_start_rank is None
        if shards > 1:
            assert all(to_leader(a.master_addr) for a in args)
            assert len({a.master_port for a in args}) == 1


def check_sglang(
    fixture: dict[str, Any], view: InferenceDeployment, pods: list[dict[str, Any]], args: list[Any]
) -> None:
    par = view.spec.parallelism
    rules = fixture["rules"]
    to_leader = leader_of(pods)
    shards = len(pods)
    assert {a.nnodes for a in args} == {shards}
    assert [a.node_rank for a in args] == list(range(shards))
    (tp,) = {a.tp_size for a in args}
    (pp,) = {a.pp_size for a in args}
    (dp,) = {a.dp_size for a in args}
    (attn_dp,) = {a.attn_dp_size for a in args}
    (ep,) = {a.ep_size for a in args}
    (dense,) = {a.moe_dense_tp_size for a in args}
    assert dp == 1 or shards == 1, f"--dp-size {dp} across nodes is refused ({rules['dp_source']})"
    attention = rules["attention_dp"]
    assert tp % attn_dp == 0, (
        f"--tp-size {tp} must divide by --attn-dp-size ({attention['source']})"
    )
    assert dp == 1 or attn_dp == 1, (
        f"--dp-size with --attn-dp-size is refused ({attention['source']})"
    )
    assert dense in (None, 1, tp), f"--moe-dense-tp-size {dense} ({rules['moe_dense_source']})"
    for a in args:
        check_block_fp8(fixture, a.model_path, tp // attn_dp, 1 if dense == 1 else tp)
    assert dp * tp * pp == par.gpus
    assert pp == par.pipeline
    assert ep == par.expert
    (address,) = {a.dist_init_addr for a in args}
    host, _, port = address.rpartition(":")
    assert to_leader(host)
    assert int(port) == COORDINATION_PORT
    for pod in pods:
        assert tp * pp // shards == gpus(pod)


CHECKS = {"vllm": check_vllm, "sglang": check_sglang}


def served_port(pod: dict[str, Any]) -> int:
    """The port the pod is ready on: its readiness probe's, on whichever container has it."""
    ports = {
        c["readinessProbe"]["httpGet"]["port"]
        for c in pod["spec"]["containers"]
        if "readinessProbe" in c
    }
    assert len(ports) == 1, f"{pod['metadata']['name']}: one readiness probe, not {ports}"
    return int(ports.pop())


def check_router(pod: dict[str, Any], engine_port: int, port: int) -> None:
    """A leader whose engine listens off the served port fronts it with the router sidecar
    (examples/pd-router): the router on the served port, the local engine as its decode target,
    the group's prefill leaders as its prefill targets, its program from ConfigMap pd-router."""
    name = pod["metadata"]["name"]
    routers = [c for c in pod["spec"]["containers"] if c["name"] == "router"]
    assert routers, f"{name}: the engine serves {engine_port}, not {port}, and no router fronts it"
    (router,) = routers
    line = argv(pod, router)
    assert line[:2] == ["python3", "/router/router.py"], line
    args = pd_router.parse_args(line[2:])  # the router's own parser
    assert args.port == port == served_port(pod)
    assert [str(b) for b in args.decode] == [f"127.0.0.1:{engine_port}"]
    prefill = [str(b) for b in args.prefill]
    assert ",".join(prefill) == container_env(pod, router)["RACKSCALE_PREFILL_LEADERS"]
    for target in prefill:
        assert re.fullmatch(r"[\w.-]+-prefill-\d+-0\.[\w.-]+\.svc:\d+", target), target
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in router["volumeMounts"]}
    assert volumes[mounts["/router"]]["configMap"]["name"] == "pd-router"
    # The leaders file: the pod's annotation, which lists the same prefill leaders at start.
    folder, _, file = str(args.leaders).rpartition("/")
    (item,) = [i for i in volumes[mounts[folder]]["downwardAPI"]["items"] if i["path"] == file]
    assert item["fieldRef"]["fieldPath"] == "metadata.annotations['rackscale.dev/leaders']"
    annotation = pod["metadata"]["annotations"]["rackscale.dev/leaders"]
    assert [str(b) for b in pd_router.role_leaders(annotation, args.role)] == prefill
    assert {"containerPort": port, "name": "http"}.items() <= router["ports"][0].items()
    assert "startupProbe" in router


def check_example(doc: dict[str, Any]) -> None:
    """Every rule of the pinned engines, on every shard of every rendered replica."""
    connectors = set()
    for dep, view, pods in rendered(doc):
        engines = set()
        parsed = []
        for pod in pods:
            server = pod["spec"]["containers"][0]
            fixture, suffix = fixture_for(server["image"])
            arches = {NODE_ARCH.get(pod["spec"].get("nodeName") or "")} | {
                NODE_ARCH.get(n) for n in pinned_nodes(pod)
            }
            if "arm64" in arches:
                assert fixture["image"]["arm64"][suffix], (
                    f"{server['image']}: no arm64 image under this tag, and the pod runs on arm64 "
                    f"trays ({fixture['image']['source']})"
                )
            line = argv(pod)
            command = fixture["command"]
            assert line[: len(command)] == command, f"{pod['metadata']['name']}: runs {line[:3]}"
            args = parser_of(fixture).parse_args(line[len(command) :])
            check_deprecations(fixture, line, args)
            engines.add(fixture["engine"])
            parsed.append((fixture, line, args))
        assert len(engines) == 1, f"one engine per replica, not {engines}"
        fixture = parsed[0][0]
        shard_args = [a for _, _, a in parsed]
        CHECKS[fixture["engine"]](fixture, view, pods, shard_args)
        port = view.spec.port
        if shard_args[0].port != port:
            check_router(pods[0], shard_args[0].port, port)
        assert served_port(pods[0]) == port, "the leader is ready on the port it serves"
        kv = [getattr(a, "kv_transfer_config", None) for a in shard_args]
        connectors |= {json.dumps(c, sort_keys=True) for c in kv}
        if dep.spec.roles and any(c and c.get("kv_connector") == "NixlConnector" for c in kv):
            check_nixl(dep, view, fixture, pods, parsed)
    if doc["spec"].get("roles"):  # prefill hands its KV cache to decode: one connector
        kinds = {json.loads(c)["kv_connector"] for c in connectors}
        assert kinds == {"NixlConnector"}, kinds


def pinned_nodes(pod: dict[str, Any]) -> list[str]:
    affinity = pod["spec"].get("affinity", {}).get("nodeAffinity", {})
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    return [
        value
        for term in required.get("nodeSelectorTerms", [])
        for expr in term.get("matchFields", []) + term.get("matchExpressions", [])
        for value in expr.get("values", [])
    ]


def check_nixl(
    dep: InferenceDeployment,
    view: InferenceDeployment,
    fixture: dict[str, Any],
    pods: list[dict[str, Any]],
    parsed: list[tuple[dict[str, Any], list[str], Any]],
) -> None:
    """Prefill produces the KV cache, decode consumes it; a group held in one rack (one
    ComputeDomain) moves it over multi-node NVLink."""
    role = pods[0]["metadata"]["labels"]["rackscale.dev/role"]
    want = {"prefill": "kv_producer", "decode": "kv_consumer"}.get(role)
    nvlink = fixture["rules"]["nixl_over_nvlink"]
    for pod, (_, line, args) in zip(pods, parsed, strict=True):
        name = pod["metadata"]["name"]
        if want:
            assert args.kv_transfer_config["kv_role"] == want, f"{name}: kv_role for {role}"
        if dep.spec.colocation == "Rack" and dep.spec.placement.rack_pool:
            env = container_env(pod, pod["spec"]["containers"][0])
            for option in nvlink["options"]:
                assert given(line, option), f"{name}: {option} ({nvlink['source']})"
            for key, value in nvlink["env"].items():
                assert env.get(key) == value, f"{name}: {key}={value} ({nvlink['source']})"
            assert nvlink["ucx_tls_includes"] in env.get("UCX_TLS", "").split(","), (
                f"{name}: UCX_TLS must include {nvlink['ucx_tls_includes']} ({nvlink['source']})"
            )
    assert view.spec.port


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_every_shard_obeys_its_engines_rules_and_agrees_with_its_replica(name: str) -> None:
    check_example(example(name))


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_every_example_is_ready_for_real_hardware(name: str) -> None:
    for dep, view, pods in rendered(example(name)):
        assert served_port(pods[0]) == view.spec.port
        for pod in pods:
            spec = pod["spec"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            (server, *_) = spec["containers"]
            mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert "model-cache" in mounts.values()
            token = next(e for e in server["env"] if e["name"] == "HF_TOKEN")
            assert token["valueFrom"]["secretKeyRef"]["optional"] is True
            values = container_env(pod, server)
            multi_node = len(pods) > 1 and dep.spec.placement.rack_pool is not None
            assert (values.get("NCCL_MNNVL_ENABLE") == "1") is multi_node
            assert (values.get("NCCL_CUMEM_ENABLE") == "1") is multi_node


# --- each rule can fail: the examples, mutated ----------------------------------------------------


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    holders = [spec, *(spec.get("roles") or [])]
    return [
        c
        for h in holders
        for t in ("template", "workerTemplate")
        if h.get(t)
        for c in h[t]["spec"]["containers"]
        if c["name"] != "router"
    ]


def mutated(name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(example(name))
    change(doc)
    return doc


def _args(
    doc: dict[str, Any], edit: Callable[[list[str]], list[str]], leader_only: bool = False
) -> None:
    spec = doc["spec"]
    for holder in [spec, *(spec.get("roles") or [])]:
        for t in ("template",) if leader_only else ("template", "workerTemplate"):
            if holder.get(t):
                server = holder[t]["spec"]["containers"][0]
                server["args"] = edit(list(server["args"]))


def _without(*options: str) -> Callable[[list[str]], list[str]]:
    """A command line without these options and their values (`--x v` or `--x=v`)."""

    def edit(line: list[str]) -> list[str]:
        out: list[str] = []
        skip = False
        for a in line:
            if skip:
                skip = False
            elif a in options:
                skip = True
            elif a.split("=", 1)[0] not in options:
                out.append(a)
        return out

    return edit


def _image(tag: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        for c in _containers(doc):
            c["image"] = c["image"].split(":")[0] + ":" + tag

    return change


MUTATIONS: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    (
        "start rank on the API-serving leader",
        "deepseek-r1.yaml",
        lambda d: _args(d, lambda a: [*a, "--data-parallel-start-rank=0"], leader_only=True),
        "runs in hybrid data-parallel load balancing",
    ),
    (
        "start rank on both roles' leaders",
        "deepseek-r1-disagg.yaml",
        lambda d: _args(d, lambda a: [*a, "-dpr", "0"], leader_only=True),
        "refuses the --headless engines",
    ),
    (
        "no --api-server-count on a data-parallel leader",
        "deepseek-r1.yaml",
        lambda d: _args(d, _without("--api-server-count"), leader_only=True),
        "pin --api-server-count",
    ),
    (
        "Kimi-K2 at pure TP 64",
        "kimi-k2-exclusive.yaml",
        lambda d: _args(d, _without("--attn-dp-size", "--moe-dense-tp-size")),
        "q_b_proj shard 12288/64",
    ),
    (
        "Kimi-K2 at TP 64 with a split dense MLP",
        "kimi-k2-exclusive.yaml",
        lambda d: _args(d, _without("--moe-dense-tp-size")),
        "dense MLP shard 18432/64",
    ),
    (
        "kv_both with NixlConnector",
        "deepseek-r1-disagg.yaml",
        lambda d: _args(
            d,
            lambda a: [
                x.replace("kv_producer", "kv_both").replace("kv_consumer", "kv_both") for x in a
            ],
        ),
        "kv_role=kv_both .* is deprecated",
    ),
    (
        "prefill consuming",
        "deepseek-r1-disagg.yaml",
        lambda d: _args(d, lambda a: [x.replace("kv_producer", "kv_consumer") for x in a]),
        "kv_role for prefill",
    ),
    (
        "KV over TCP: no cumem allocator",
        "deepseek-r1-disagg.yaml",
        lambda d: _args(d, lambda a: [x for x in a if x != "--enable-cumem-allocator"]),
        "--enable-cumem-allocator",
    ),
    (
        "deprecated --enable-dp-attention",
        "kimi-k2-exclusive.yaml",
        lambda d: _args(d, lambda a: [*a, "--enable-dp-attention"]),
        "--enable-dp-attention is deprecated",
    ),
    (
        "--tp is no SGLang alias",
        "kimi-k2-exclusive.yaml",
        lambda d: _args(d, lambda a: ["--tp" if x == "--tp-size" else x for x in a]),
        "unrecognized arguments: --tp",
    ),
    (
        "an image tag with no fixture",
        "deepseek-r1.yaml",
        _image("v0.34.0"),
        "no engine fixture tests/engines/vllm-0.34.0.yaml",
    ),
    (
        "an amd64-only tag on GB200",
        "deepseek-r1.yaml",
        _image("v0.33.0-x86_64"),
        "no arm64 image under this tag",
    ),
    (
        "the decode engine off the served port without a router",
        "deepseek-r1-disagg.yaml",
        lambda d: d["spec"]["roles"][1]["template"]["spec"]["containers"].pop(),
        "no router fronts it",
    ),
]


@pytest.mark.parametrize(
    ("name", "change", "error"),
    [pytest.param(n, c, e, id=label) for label, n, c, e in MUTATIONS],
)
def test_each_rule_fails_on_a_mutated_example(
    name: str, change: Callable[[dict[str, Any]], None], error: str
) -> None:
    with pytest.raises(AssertionError, match=error):
        check_example(mutated(name, change))


@pytest.mark.parametrize(
    ("name", "tag"),
    [("deepseek-r1.yaml", "v0.33.0-aarch64"), ("kimi-k2-exclusive.yaml", "v0.5.23-cu130")],
)
def test_arch_and_cuda_suffixed_tags_map_to_their_fixture(name: str, tag: str) -> None:
    check_example(mutated(name, _image(tag)))


def test_the_data_parallel_modes_follow_vllms_rules() -> None:
    vllm = fixtures()["vllm/vllm-openai", "0.33.0"]
    p = parser_of(vllm)

    def mode(*line: str) -> str:
        return vllm_lb_mode(vllm, p.parse_args(["m", *line]))

    assert mode("-dp", "32", "-dpl", "4") == "internal"
    assert mode("-dp", "32", "-dpl", "4", "-dpr", "0") == "hybrid", "any start rank, even 0"
    assert mode("-dp", "32", "-dpl", "4", "-dpr", "4", "--headless") == "internal"
    assert mode("-dp", "32", "-dpl", "1", "-dpr", "0") == "external"
    assert mode("-dp", "4", "-dpl", "4", "-dpr", "0") == "internal"
    assert mode("-dp", "32", "-dpn", "3") == "external"
