"""`kubectl rackscale explain` against the live cluster: a placed and an unplaceable deployment.

kubectl finds the plugin on PATH as `kubectl-rackscale`, the console script of this project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client

from e2e.support import (
    apply,
    condition,
    eventually,
    get,
    inference_deployment,
    ready,
)


def plugin_path() -> str:
    """PATH with the directory of the `kubectl-rackscale` script first."""
    script = Path(sys.executable).parent / "kubectl-rackscale"
    found = str(script) if script.exists() else shutil.which("kubectl-rackscale")
    if found is None:
        pytest.fail(
            "no kubectl-rackscale script: reinstall the project (pip install -e .)", pytrace=False
        )
    return os.pathsep.join([str(Path(found).parent), os.environ.get("PATH", "")])


def plugin(kubectl: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl rackscale ARGS`; the plugin reads the kubeconfig from $KUBECONFIG as kubectl's
    plugins do."""
    binary, _, kubeconfig = kubectl
    env = {**os.environ, "PATH": plugin_path(), "KUBECONFIG": kubeconfig}
    return subprocess.run(
        [binary, "rackscale", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def explain(kubectl: list[str], name: str, namespace: str) -> str:
    result = plugin(kubectl, "explain", name, "-n", namespace)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.usefixtures("operator")
def test_explain_says_where_and_why(
    kube: client.ApiClient,
    kubectl: list[str],
    pool: str,
    llm: str,
) -> None:
    apply(kube, llm, inference_deployment("moe", pool, replicas=2, data=4, fallback="Never"))
    apply(kube, llm, inference_deployment("huge", pool, replicas=1, data=16, fallback="Never"))
    body = ready(kube, llm, "moe", 2)
    eventually(
        lambda: condition(get(kube, llm, "huge"), "Placed").get("reason") == "Unplaceable",
        "Placed=False on the deployment that cannot fit",
    )

    text = explain(kubectl, "moe", llm)
    assert text.startswith(f"InferenceDeployment {llm}/moe\n")
    assert "phase Ready, 2/2 replicas ready, 64 GPUs, mode Rack" in text
    for placement in body["status"]["placements"]:
        assert f"replica {placement['replica']}: Rack mode, 8 pods" in text
        for rack in placement["racks"]:
            assert rack in text
        for pod in placement["pods"]:
            assert f"{pod['name']}: {pod['node']}; Running" in text
    assert text.count("why: spread:") == 2
    assert "Placed=True AllReplicasPlaced" in text
    assert "Normal   Placed: replica 0" in text

    text = explain(kubectl, "huge", llm)
    assert "phase Pending" in text
    assert "replica 0: pending" in text
    assert "why: no rack holds 128 free GPUs in one NVLink domain" in text
    assert "Placed=False Unplaceable" in text
    assert "Warning  FailedPlacement: replica 0" in text


def test_explain_names_a_missing_deployment(
    kubectl: list[str],
    crds: None,
    llm: str,
) -> None:
    result = plugin(kubectl, "explain", "nothing", "-n", llm)
    assert result.returncode == 1
    assert f"InferenceDeployment {llm}/nothing not found" in result.stderr
