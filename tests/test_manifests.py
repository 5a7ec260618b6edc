"""The fast reader of large cluster files: the same objects as libyaml, less what it skips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.plan_speed import _node
from rackscale.cli.manifests import SafeLoader, Unsupported, _Reader
from rackscale.cli.plan import read
from rackscale.topology import NodeInfo
from tests.factory import gpu_pod

ROOT = Path(__file__).resolve().parent.parent


def kubectl_yaml(nodes: int) -> str:
    """Nodes as `kubectl get nodes -o yaml` lays them out (block style, keys sorted)."""
    items = [_node(f"n-{i:03d}", i // 18, i % 18, 2, max(nodes // 18, 1)) for i in range(nodes)]
    items[3]["spec"]["unschedulable"] = True
    items[4]["spec"]["taints"] = [{"key": "k", "value": "it's", "effect": "NoSchedule"}]
    items[5]["metadata"]["labels"]["odd"] = 'a "quoted" value: yes'
    listing = {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {}}
    return yaml.safe_dump(listing, width=1000)


def test_unpruned_it_reads_what_libyaml_reads() -> None:
    text = kubectl_yaml(40)
    assert _Reader(text, prune=False).documents() == list(yaml.load_all(text, Loader=SafeLoader))
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        body = example.read_text()
        try:
            fast = _Reader(body, prune=False).documents()
        except Unsupported:
            continue  # comments after values, block scalars: libyaml reads those
        assert fast == list(yaml.load_all(body, Loader=SafeLoader)), example


def test_pruned_it_keeps_everything_the_snapshot_reads() -> None:
    text = kubectl_yaml(40)
    [full] = yaml.load_all(text, Loader=SafeLoader)
    [fast] = _Reader(text, prune=True).documents()
    assert [NodeInfo.from_body(n) for n in fast["items"]] == [
        NodeInfo.from_body(n) for n in full["items"]
    ]
    assert "annotations" not in fast["items"][0]["metadata"]
    assert "nodeInfo" not in fast["items"][0]["status"]
    assert fast["items"][0]["status"]["conditions"][-1] == {"status": "True", "type": "Ready"}


def test_pods_keep_their_placement_and_requests() -> None:
    pod = gpu_pod("p", "n-001", 4)
    pod["metadata"]["annotations"] = {"a": "b"}
    pod["status"] = {"phase": "Running", "podIP": "10.0.0.1"}
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [pod]})
    [fast] = _Reader(text, prune=True).documents()
    [item] = fast["items"]
    assert item["spec"]["nodeName"] == "n-001"
    assert item["spec"]["containers"][0]["resources"] == pod["spec"]["containers"][0]["resources"]
    assert item["status"] == {"phase": "Running"}
    assert "annotations" not in item["metadata"]


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",
        "a: |\n  block\n",
        "a: 1 # comment\n",
        "a: [1, 2]\n",
        "a:\n\t- 1\n",
        'a: "\\x41"\n',
        "a: plain\n  continued\n",
    ],
)
def test_what_it_does_not_read_it_leaves_to_libyaml(text: str) -> None:
    with pytest.raises(Unsupported):
        _Reader(text, prune=False).documents()


def test_large_files_keep_only_the_labels_the_pools_read(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    text = kubectl_yaml(400)
    assert len(text) > 1 << 20  # large enough for the fast reader
    nodes.write_text(text)
    pool = tmp_path / "pool.yaml"
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
    loaded = read([nodes, pool], [])
    labels = loaded.nodes[0].labels
    assert set(labels) == {
        "nvidia.com/gpu.clique",
        "nvidia.com/gpu.product",
        "topology.rackscale.dev/block",
    }
    assert len(loaded.nodes) == 400
    assert loaded.nodes[3].unschedulable is True


@pytest.mark.parametrize(
    "text",
    [
        # A quoted value goes on at any indentation: `name` is inside the annotation.
        'kind: Node\nmetadata:\n  annotations:\n    a: "x\nname: y"\n  name: n\n',
        "kind: Node\nmetadata:\n  annotations:\n    a: 'x\nname: y'\n  name: n\n",
        # So does a flow collection.
        "kind: Node\nmetadata:\n  annotations:\n    a: [x,\nname]\n  name: n\n",
        # And a quoted key.
        "kind: Node\nmetadata:\n  annotations:\n    'a\nname: y': z\n  name: n\n",
        # YAML 1.1 reads CR, NEL and the Unicode separators as line breaks.
        "kind: Node\r\nmetadata:\r\n  name: n\r\n",
        "kind: Node\nmetadata:\n  name: n\x85  x\n",
        "kind: Node\nmetadata:\n  name: n\u2028  x\n",
    ],
)
def test_values_that_reach_past_their_line_are_left_to_libyaml(text: str) -> None:
    """Each of these, read line by line while skipping annotations, would give other objects
    than libyaml gives."""
    with pytest.raises(Unsupported):
        _Reader(text, prune=True).documents()
    with pytest.raises(Unsupported):
        _Reader(text, prune=False).documents()


def test_a_large_file_with_a_quoted_value_over_two_lines_reads_as_libyaml_reads_it(
    tmp_path: Path,
) -> None:
    text = kubectl_yaml(400)
    # An annotation whose double-quoted value spans two lines, the second less indented.
    text = text.replace(
        "      kwok.x-k8s.io/node: fake\n", '      kwok.x-k8s.io/node: "fake\n  name: n-999"\n', 1
    )
    assert len(text) > 1 << 20
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(text)
    [full] = yaml.load_all(text, Loader=SafeLoader)
    loaded = read([nodes], [])
    assert [n.name for n in loaded.nodes] == [n["metadata"]["name"] for n in full["items"]]
