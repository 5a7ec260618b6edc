"""`rackscale plan`: the documented JSON, a readable table, and one clear line for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rackscale.cli.main import main
from tests.factory import BLOCK, hgx, nvl72

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    pool = yaml.safe_load((EXAMPLES / "rackpool-gb200.yaml").read_text())
    items = nvl72(2, blocks=1) + hgx(2)
    nodes = {"apiVersion": "v1", "kind": "List", "items": items}
    for item in items:
        if "nvidia.com/gpu.clique" in item["metadata"]["labels"]:
            item["metadata"]["labels"][BLOCK] = "b0"
    return write(tmp_path / "cluster.yaml", nodes, pool)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_is_the_documented_shape(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "plan", "--cluster", cluster, "-o", "json", EXAMPLES / "deepseek-r1.yaml"
    )
    assert code == 0
    result = json.loads(out)
    [placement] = result["placements"]
    assert set(placement) == {
        *("deployment", "mode", "replicas", "reason"),
        *("memoryNeededMiB", "costPerHour", "currency"),
    }
    assert (placement["deployment"], placement["mode"], placement["reason"]) == (
        "llm/deepseek-r1",
        "Rack",
        None,
    )
    assert [r["replica"] for r in placement["replicas"]] == [0, 1]
    first = placement["replicas"][0]
    assert set(first) == {
        "replica",
        "mode",
        "racks",
        "computeDomain",
        "nvlinkCrossesNodes",
        "pods",
        "gpuMemoryMiB",
    }
    assert first["mode"] == "Rack"
    assert first["computeDomain"] == "deepseek-r1-0"  # 8 trays of one NVLink domain
    assert first["nvlinkCrossesNodes"] is True
    assert len(first["pods"]) == 8
    assert first["pods"][0] == {"shard": 0, "node": "gb200-0000-00", "gpus": 4, "firstRank": 0}
    assert [p["firstRank"] for p in first["pods"]] == list(range(0, 32, 4))
    # Spread: the two replicas on distinct racks.
    assert placement["replicas"][0]["racks"] != placement["replicas"][1]["racks"]


def test_deployments_see_the_ones_before_them(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "plan", "--cluster", cluster, "-o", "json",
        EXAMPLES / "kimi-k2-exclusive.yaml",
        EXAMPLES / "llama-405b-block.yaml",
        EXAMPLES / "llama-8b.yaml",
    )  # fmt: skip
    assert code == 3  # llama-405b is left unplaced
    kimi, llama405, llama8 = json.loads(out)["placements"]
    assert kimi["mode"] == "Rack"
    assert llama405["mode"] == "Unplaced"
    assert llama405["replicas"] == []
    assert "held exclusively by research/kimi-k2" in llama405["reason"]
    assert llama8["mode"] == "DevicePlugin"
    assert all(p["node"] is None for r in llama8["replicas"] for p in r["pods"])


def test_table_names_modes_racks_and_reasons(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "plan",
        "--cluster",
        cluster,
        EXAMPLES / "deepseek-r1.yaml",
        EXAMPLES / "llama-405b-block.yaml",
    )
    assert code == 3  # one replica unplaced: exit code 3, the table printed first
    lines = out.splitlines()
    # The examples name their models, so the memory column shows; no pool has a price.
    assert lines[0].split() == ["DEPLOYMENT", "MODE", "PLACED", "GPUS", "MEMORY", "RACKS"]
    assert lines[1].split()[:4] == ["llm/deepseek-r1", "Rack", "2/2", "64"]
    assert lines[2].split()[:4] == ["llm/llama-405b", "Unplaced", "0/1", "0"]
    assert "8 pods x 4 GPUs, 1 per node: gb200-0000-00 .. gb200-0000-07" in out
    assert "reason: replica 0: no block holds 144 free GPUs" in out


def test_cluster_may_come_in_several_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = write(tmp_path / "nodes.yaml", *nvl72(1))
    code, out, _ = run(
        capsys, "plan", "--cluster", nodes, "--cluster", EXAMPLES / "rackpool-gb200.yaml",
        "-o", "json", EXAMPLES / "kimi-k2-exclusive.yaml",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["placements"][0]["mode"] == "Rack"


def test_together_places_as_one_operator_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = write(tmp_path / "nodes.yaml", *nvl72(1))
    small, large = (
        write(tmp_path / f"{name}.yaml", {
            "apiVersion": "rackscale.dev/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name, "namespace": "llm"},
            "spec": {"parallelism": {"tensor": 8, "data": data}, "gpusPerPod": 4,
                     "placement": {"rackPool": "gb200", "fallback": "Never"}},
        })
        for name, data in (("small", 1), ("large", 9))
    )  # fmt: skip
    args: list[str | Path] = [
        "plan", "--cluster", nodes, "--cluster", EXAMPLES / "rackpool-gb200.yaml", "-o", "json"
    ]  # fmt: skip

    def modes(*extra: str | Path) -> list[tuple[str, str]]:
        code, out, _ = run(capsys, *args, *extra, small, large)
        assert code == 3  # one of the two is left out either way
        return [(p["deployment"], p["mode"]) for p in json.loads(out)["placements"]]

    # One after another, the small one opens the only rack; together, the large one gets it.
    assert modes() == [("llm/small", "Rack"), ("llm/large", "Unplaced")]
    assert modes("--together") == [("llm/small", "Unplaced"), ("llm/large", "Rack")]


BAD_DEPLOYMENT = {
    "apiVersion": "rackscale.dev/v1alpha1",
    "kind": "InferenceDeployment",
    "metadata": {"name": "bad", "namespace": "llm"},
    "spec": {"parallelism": {"tensor": 8, "expert": 3}},
}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a: [unclosed", "not valid YAML (line "),
        ("- just\n- a list\n", "document 1 is not a Kubernetes object (no kind)"),
        (yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}),
         "Service s: unexpected kind 'Service' (expected InferenceDeployment)"),
        (yaml.safe_dump(BAD_DEPLOYMENT),
         "InferenceDeployment llm/bad: spec.parallelism.expert: 3 must divide"),
        (yaml.safe_dump({**BAD_DEPLOYMENT, "apiVersion": "rackscale.dev/v1"}),
         "InferenceDeployment llm/bad: apiVersion: expected rackscale.dev/v1alpha1"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_file_object_and_field(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    code, out, err = run(capsys, "plan", "--cluster", cluster, bad)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {bad}: ")
    assert expected in err


def test_a_bad_pool_in_the_cluster_file_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = {"apiVersion": "rackscale.dev/v1alpha1", "kind": "RackPool", "metadata": {"name": "p"},
            "spec": {"gpusPerRack": 0}}  # fmt: skip
    cluster = write(tmp_path / "c.yaml", *nvl72(1), pool)
    code, _, err = run(capsys, "plan", "--cluster", cluster, EXAMPLES / "deepseek-r1.yaml")
    assert code == 2
    assert (
        f"{cluster}: RackPool p: spec.gpusPerRack: Input should be greater than or equal to 1"
        in err
    )


def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "plan", "--cluster", tmp_path / "nope.yaml", EXAMPLES / "deepseek-r1.yaml"
    )
    assert code == 2
    assert f"{tmp_path / 'nope.yaml'}: cannot read" in err


def test_nodes_selected_by_two_pools_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pools = [
        {
            "apiVersion": "rackscale.dev/v1alpha1",
            "kind": "RackPool",
            "metadata": {"name": name},
            "spec": {},
        }
        for name in ("gb200", "other")
    ]
    cluster = write(tmp_path / "c.yaml", *nvl72(1), *pools)
    code, out, _ = run(
        capsys, "plan", "--cluster", cluster, "-o", "json", EXAMPLES / "deepseek-r1.yaml"
    )
    assert code == 3
    result = json.loads(out)
    assert (
        "node gb200-0000-00 is selected by RackPools gb200, other and belongs to none"
        in result["warnings"]
    )
    assert result["placements"][0]["mode"] == "Unplaced"
    assert (
        "RackPool gb200 has no racks: its 18 matching nodes are selected by another RackPool too"
        in (result["placements"][0]["reason"])
    )


def test_python_dash_m_works_like_the_console_script(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("rackscale ")


# ---- a CI gate: exit codes, bad files, output formats, fast reading ----------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "not a text file (it holds binary data)"),
        (b"kind: Node\nmetadata: {name: caf\xe9}\n", "not UTF-8 text (invalid byte at offset"),
        (b"", "no objects found"),
        (b"# only a comment\n---\n", "no objects found"),
    ],
)
def test_unreadable_and_empty_files_are_one_line(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    invocations: tuple[list[str | Path], ...] = (
        ["--cluster", bad, EXAMPLES / "deepseek-r1.yaml"],
        ["--cluster", cluster, bad],
    )
    for args in invocations:
        code, out, err = run(capsys, "plan", *args)
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1
        assert err.startswith(f"error: {bad}: {expected}")


def test_an_empty_list_is_valid_input(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kubectl get pods -A -o json` of a cluster with no pods is an empty List: nothing runs."""
    empty = tmp_path / "pods.json"
    empty.write_text('{"apiVersion": "v1", "kind": "List", "items": []}')
    code, out, err = run(capsys, "plan", "--cluster", cluster, "--cluster", empty, "-o", "json",
                         EXAMPLES / "deepseek-r1.yaml")  # fmt: skip
    assert (code, err) == (0, "")
    [placement] = json.loads(out)["placements"]
    assert len(placement["replicas"]) == 2
    code, out, err = run(capsys, "plan", "--cluster", cluster, "-o", "json", empty)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"placements": []}


def test_a_reader_closing_the_pipe_ends_the_command_quietly() -> None:
    """`rackscale plan ... | head -c 1`: no traceback, the shell's SIGPIPE status. The YAML is
    over 200 kB, more than a pipe holds, so the reader is gone before it is all written."""
    script = (
        f"{sys.executable} -m rackscale plan -o yaml --cluster {EXAMPLES / 'cluster.yaml'} "
        f"--cluster {EXAMPLES / 'rackpool-gb200.yaml'} "
        + " ".join(str(EXAMPLES / n) for n in ("deepseek-r1.yaml", "llama-405b-block.yaml"))
        + " | head -c 1; exit ${PIPESTATUS[0]}"
    )
    done = subprocess.run(
        ["/bin/bash", "-c", script], capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (141, "a")
    assert "Traceback" not in done.stderr


def test_a_rack_pool_missing_from_the_cluster_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = write(tmp_path / "nodes.yaml", *nvl72(1))
    code, out, err = run(capsys, "plan", "--cluster", nodes, EXAMPLES / "deepseek-r1.yaml")
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {EXAMPLES / 'deepseek-r1.yaml'}: InferenceDeployment llm/")
    assert "spec.placement.rackPool: RackPool 'gb200' is not in the cluster files" in err


def test_the_exit_code_says_whether_everything_fits(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "plan", "--cluster", cluster, EXAMPLES / "deepseek-r1.yaml")
    assert (code, err) == (0, "")
    code, out, err = run(
        capsys, "plan", "--cluster", cluster, "-o", "json",
        EXAMPLES / "deepseek-r1.yaml", EXAMPLES / "llama-405b-block.yaml",
    )  # fmt: skip
    assert code == 3
    assert json.loads(out)["placements"][1]["mode"] == "Unplaced"  # printed first, whole
    assert err == "error: 1 replica left unplaced\n"


def test_wide_and_no_headers(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "plan", "--cluster", cluster, "-o", "wide", "--no-headers",
        EXAMPLES / "deepseek-r1.yaml",
    )  # fmt: skip
    assert code == 0
    first = out.splitlines()[0].split()
    assert first[:4] == ["llm/deepseek-r1", "Rack", "2/2", "64"]
    assert first[-3:] == ["Rack", "16", "16"]  # scope, pods, nodes


def test_yaml_prints_the_pods_and_services_the_operator_would_create(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "plan", "--cluster", cluster, "-o", "yaml", EXAMPLES / "deepseek-r1.yaml"
    )
    assert code == 0
    listing = yaml.safe_load(out)
    assert listing["kind"] == "List"
    kinds = [(o["kind"], o["metadata"]["name"]) for o in listing["items"]]
    pods = [name for kind, name in kinds if kind == "Pod"]
    assert len(pods) == 16
    assert pods[0] == "deepseek-r1-0-0"
    assert [name for kind, name in kinds if kind == "Service"] == [
        "deepseek-r1-shards",
        "deepseek-r1",
    ]
    # Each replica's ComputeDomain comes before its pods, as the operator creates them.
    assert kinds[0] == ("ComputeDomain", "deepseek-r1-0")
    assert [name for kind, name in kinds if kind == "ComputeDomain"] == [
        "deepseek-r1-0",
        "deepseek-r1-1",
    ]
    assert kinds.index(("ComputeDomain", "deepseek-r1-1")) == 9  # after replica 0's 8 pods
    first = listing["items"][1]
    claims = first["spec"]["resourceClaims"]
    assert claims == [
        {"name": "compute-domain-channel", "resourceClaimTemplateName": "deepseek-r1-0-channel"}
    ]
    term = first["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["nodeSelectorTerms"][0]  # pinned to the node the engine chose
    env = {e["name"]: e.get("value") for e in first["spec"]["containers"][0]["env"]}
    assert env["RACKSCALE_WORLD_SIZE"] == "32"


def test_nodes_as_kubectl_prints_them_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": nvl72(1)}))
    code, out, _ = run(
        capsys, "plan", "--cluster", nodes, "--cluster", EXAMPLES / "rackpool-gb200.yaml",
        "-o", "json", EXAMPLES / "kimi-k2-exclusive.yaml",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["placements"][0]["mode"] == "Rack"


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = capsys.readouterr().out
    for line in ("0  every replica", "2  bad input", "3  some replica is left unplaced"):
        assert line in text


def test_a_replica_spanning_racks_without_rdma_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 405B pipeline spans two racks of a block; its pods request no RDMA device, so NCCL
    would use TCP between the racks. Given an RDMA resource, the warning goes."""
    cluster = [EXAMPLES / "cluster.yaml", EXAMPLES / "rackpool-gb200.yaml"]
    flags = [a for c in cluster for a in ("--cluster", c)]
    example = EXAMPLES / "llama-405b-block.yaml"
    code, out, _ = run(capsys, "plan", *flags, example)
    assert code == 0
    [warning] = [line for line in out.splitlines() if line.startswith("warning:")]
    assert "llm/llama-405b: replica 0 spans racks b0/" in warning
    assert "requests no RDMA resource" in warning
    assert "fall back to TCP sockets" in warning
    code, out, _ = run(capsys, "plan", *flags, "-o", "json", example)
    assert json.loads(out)["warnings"] == [warning.removeprefix("warning: ")]
    code, out, err = run(capsys, "plan", *flags, "-o", "yaml", example)
    assert yaml.safe_load(out)["kind"] == "List"
    assert err.strip() == warning

    doc = yaml.safe_load(example.read_text())
    for template in (doc["spec"]["template"], doc["spec"]["workerTemplate"]):
        limits = template["spec"]["containers"][0]["resources"].setdefault("limits", {})
        limits["rdma/rdma_shared_device_a"] = 1
    with_rdma = write(tmp_path / "rdma.yaml", doc)
    code, out, _ = run(capsys, "plan", *flags, with_rdma)
    assert code == 0
    assert "warning:" not in out
    # One template without it is enough for the warning.
    del doc["spec"]["workerTemplate"]["spec"]["containers"][0]["resources"]["limits"]
    code, out, _ = run(capsys, "plan", *flags, write(tmp_path / "half.yaml", doc))
    assert "requests no RDMA resource" in out


def test_a_replica_in_one_rack_needs_no_rdma(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "plan", "--cluster", cluster, EXAMPLES / "deepseek-r1.yaml")
    assert code == 0
    assert "warning:" not in out
