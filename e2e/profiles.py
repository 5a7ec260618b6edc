"""Cluster profiles: YAML descriptions of racks and GPU nodes, expanded into Node objects.

python -m e2e.profiles render default > nodes.yaml     # a kind: List of Nodes, for `rackscale plan`
python -m e2e.profiles apply scale-1000                # create the nodes in $KUBECONFIG's cluster
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
BLOCK_LABEL = "topology.rackscale.dev/block"
RACK_LABEL = "topology.rackscale.dev/rack"
CLIQUE_LABEL = "nvidia.com/gpu.clique"
POOL_TAINT = "rackscale.dev/pool"
PODS_PER_NODE = "110"
_NODE_INFO_FILLED_BY_KWOK = (
    "bootID",
    "containerRuntimeVersion",
    "kernelVersion",
    "kubeProxyVersion",
    "kubeletVersion",
    "machineID",
    "osImage",
    "systemUUID",
)

# Clique UUIDs are derived, not random, so that a profile always renders the same nodes.
_CLIQUE_NAMESPACE = uuid.UUID("6f1c2a4e-7d1b-4f3a-9c55-2b8e0d3c9a10")


class ProfileError(ValueError):
    """A profile that cannot be found or does not make sense."""


@dataclass(frozen=True)
class RackGroup:
    """Identical NVLink racks of one pool, each a set of trays sharing one clique."""

    pool: str
    count: int
    trays: int
    gpus_per_tray: int
    product: str
    gpu_memory_mib: int
    cpu: str
    memory: str
    blocks: int = 1
    architecture: str = "amd64"
    pool_taint: bool = False


@dataclass(frozen=True)
class NodeGroup:
    """Identical stand-alone nodes (HGX servers, CPU-only nodes)."""

    prefix: str
    count: int
    cpu: str
    memory: str
    gpus: int = 0
    product: str | None = None
    gpu_memory_mib: int | None = None
    architecture: str = "amd64"


@dataclass(frozen=True)
class Profile:
    """A whole fake cluster: its rack groups, its other nodes and control-plane settings."""

    name: str
    racks: tuple[RackGroup, ...] = ()
    nodes: tuple[NodeGroup, ...] = ()
    node_lease_duration_seconds: int = 40
    source: Path | None = field(default=None, compare=False)

    @property
    def node_count(self) -> int:
        return sum(r.count * r.trays for r in self.racks) + sum(n.count for n in self.nodes)


def available() -> list[str]:
    """Names of the profiles shipped in e2e/profiles/."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """The file of a profile given by name (e.g. `default`) or by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    named = PROFILES_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    raise ProfileError(
        f"no cluster profile {name_or_path!r}: "
        f"give a YAML file path or one of {', '.join(available())}"
    )


def _take(spec: dict[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in spec:
        if default is ...:
            raise ProfileError(f"{where}: missing required field {key!r}")
        return default
    value = spec.pop(key)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProfileError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    if kind is int and isinstance(value, int) and value < 0:
        raise ProfileError(f"{where}.{key}: must not be negative, got {value}")
    return value


def _no_leftovers(spec: dict[str, Any], where: str) -> None:
    if spec:
        raise ProfileError(f"{where}: unknown field(s) {', '.join(sorted(spec))}")


def _rack_group(raw: Any, where: str) -> RackGroup:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping")
    spec = dict(raw)
    group = RackGroup(
        pool=_take(spec, "pool", str, where),
        count=_take(spec, "count", int, where),
        trays=_take(spec, "trays", int, where),
        gpus_per_tray=_take(spec, "gpusPerTray", int, where),
        product=_take(spec, "product", str, where),
        gpu_memory_mib=_take(spec, "gpuMemoryMiB", int, where),
        cpu=_take(spec, "cpu", str, where),
        memory=_take(spec, "memory", str, where),
        blocks=_take(spec, "blocks", int, where, 1),
        architecture=_take(spec, "architecture", str, where, "amd64"),
        pool_taint=_take(spec, "poolTaint", bool, where, False),
    )
    _no_leftovers(spec, where)
    if group.blocks < 1 or group.blocks > max(group.count, 1):
        raise ProfileError(
            f"{where}.blocks: must be between 1 and count ({group.count}), got {group.blocks}"
        )
    return group


def _node_group(raw: Any, where: str) -> NodeGroup:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping")
    spec = dict(raw)
    group = NodeGroup(
        prefix=_take(spec, "prefix", str, where),
        count=_take(spec, "count", int, where),
        cpu=_take(spec, "cpu", str, where),
        memory=_take(spec, "memory", str, where),
        gpus=_take(spec, "gpus", int, where, 0),
        product=_take(spec, "product", str, where, None),
        gpu_memory_mib=_take(spec, "gpuMemoryMiB", int, where, None),
        architecture=_take(spec, "architecture", str, where, "amd64"),
    )
    _no_leftovers(spec, where)
    if group.gpus and group.product is None:
        raise ProfileError(f"{where}: a node group with gpus needs a product (e.g. NVIDIA-H200)")
    return group


def load(name_or_path: str) -> Profile:
    """Read and check a profile."""
    path = resolve(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping at the top level")
    spec = dict(raw)
    where = str(path)
    cluster = dict(_take(spec, "cluster", dict, where, {}))
    profile = Profile(
        name=_take(spec, "name", str, where, path.stem),
        racks=tuple(
            _rack_group(r, f"{where}: racks[{i}]")
            for i, r in enumerate(_take(spec, "racks", list, where, []))
        ),
        nodes=tuple(
            _node_group(n, f"{where}: nodes[{i}]")
            for i, n in enumerate(_take(spec, "nodes", list, where, []))
        ),
        node_lease_duration_seconds=_take(
            cluster, "nodeLeaseDurationSeconds", int, f"{where}: cluster", 40
        ),
        source=path,
    )
    _no_leftovers(cluster, f"{where}: cluster")
    _no_leftovers(spec, where)
    return profile


def _node(
    name: str,
    *,
    labels: dict[str, str],
    cpu: str,
    memory: str,
    gpus: int,
    architecture: str,
    taints: list[dict[str, str]],
) -> dict[str, Any]:
    resources = {"cpu": cpu, "memory": memory, "pods": PODS_PER_NODE}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": architecture,
                **labels,
            },
            # kwok manages exactly the nodes carrying this annotation.
            "annotations": {KWOK_ANNOTATION: "fake"},
        },
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            # kwok fills in the versions; the API's NodeSystemInfo has no optional fields.
            "nodeInfo": {
                "architecture": architecture,
                "operatingSystem": "linux",
                **dict.fromkeys(_NODE_INFO_FILLED_BY_KWOK, ""),
            },
        },
    }
    if taints:
        node["spec"]["taints"] = [dict(t) for t in taints]
    return node


def _gpu_labels(product: str, gpus: int, memory_mib: int | None) -> dict[str, str]:
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(gpus),
    }
    if memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    return labels


def rack_nodes(profile: Profile, group: RackGroup) -> list[dict[str, Any]]:
    """The trays of every rack of one group; racks are spread over blocks in contiguous runs."""
    width = max(2, len(str(group.count - 1)))
    tray_width = max(2, len(str(group.trays - 1)))
    taints = (
        [{"key": POOL_TAINT, "value": group.pool, "effect": "NoSchedule"}]
        if group.pool_taint
        else []
    )
    nodes = []
    for r in range(group.count):
        rack = f"r{r:0{width}d}"
        block = f"b{r * group.blocks // group.count}"
        clique = uuid.uuid5(_CLIQUE_NAMESPACE, f"{profile.name}/{group.pool}/{rack}")
        labels = {
            **_gpu_labels(group.product, group.gpus_per_tray, group.gpu_memory_mib),
            CLIQUE_LABEL: f"{clique}.1",
            BLOCK_LABEL: block,
            RACK_LABEL: rack,
        }
        for t in range(group.trays):
            nodes.append(
                _node(
                    f"{group.pool}-{rack}-t{t:0{tray_width}d}",
                    labels=labels,
                    cpu=group.cpu,
                    memory=group.memory,
                    gpus=group.gpus_per_tray,
                    architecture=group.architecture,
                    taints=taints,
                )
            )
    return nodes


def group_nodes(group: NodeGroup) -> list[dict[str, Any]]:
    """The nodes of one stand-alone group."""
    width = max(2, len(str(group.count - 1)))
    labels = _gpu_labels(group.product, group.gpus, group.gpu_memory_mib) if group.product else {}
    return [
        _node(
            f"{group.prefix}-{i:0{width}d}",
            labels=labels,
            cpu=group.cpu,
            memory=group.memory,
            gpus=group.gpus,
            architecture=group.architecture,
            taints=[],
        )
        for i in range(group.count)
    ]


def nodes(profile: Profile) -> list[dict[str, Any]]:
    """Every Node of a profile, as the API server takes it."""
    out = [n for g in profile.racks for n in rack_nodes(profile, g)]
    out += [n for g in profile.nodes for n in group_nodes(g)]
    names = [n["metadata"]["name"] for n in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise ProfileError(f"profile {profile.name!r} names some nodes twice: {', '.join(dup)}")
    return out


def render(profile: Profile) -> str:
    """The profile's nodes as one `kind: List` YAML document."""
    return yaml.safe_dump(
        {"apiVersion": "v1", "kind": "List", "items": nodes(profile)}, sort_keys=False
    )


def create(
    api_client: ApiClient, node_objects: list[dict[str, Any]], workers: int = 16
) -> tuple[int, int]:
    """Create nodes concurrently; return (created, already there). Other API errors are raised."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)

    def one(node: dict[str, Any]) -> bool:
        try:
            core.create_node(body=node, _preload_content=False)  # type: ignore[arg-type]  # a plain manifest
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            name = node["metadata"]["name"]
            raise RuntimeError(
                f"creating node {name} failed: {err.status} {err.reason}: {err.body}"
            ) from err

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, node_objects))
    created = sum(results)
    return created, len(results) - created


def api_client_for(kubeconfig: str | None, pool_size: int = 32) -> ApiClient:
    """An ApiClient for a kubeconfig with a connection pool big enough for concurrent writes."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]  # the config loaders are not annotated
        config_file=kubeconfig, client_configuration=configuration
    )
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def main(argv: list[str] | None = None) -> int:
    """`render` or `apply` a profile."""
    parser = argparse.ArgumentParser(
        prog="python -m e2e.profiles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="print the profile's nodes as a kind: List YAML")
    r.add_argument("profile", nargs="?", default="default", help="name in e2e/profiles/ or a path")
    a = sub.add_parser("apply", help="create the profile's nodes in a cluster")
    a.add_argument("profile", nargs="?", default="default", help="name in e2e/profiles/ or a path")
    a.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG")
    a.add_argument("--workers", type=int, default=16, help="concurrent create requests")
    args = parser.parse_args(argv)
    try:
        profile = load(args.profile)
        if args.command == "render":
            sys.stdout.write(render(profile))
            return 0
        objs = nodes(profile)
        start = time.monotonic()
        created, existing = create(
            api_client_for(args.kubeconfig, args.workers), objs, args.workers
        )
        took = time.monotonic() - start
        print(
            f"profile {profile.name}: {created} nodes created, {existing} already there, "
            f"in {took:.1f}s ({len(objs) / max(took, 1e-9):.0f} nodes/s)"
        )
        return 0
    except ProfileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
