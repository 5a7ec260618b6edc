"""A GitOps sync sees no drift: the operator writes status, never spec or metadata.

Applies a manifest with the cluster's own kubectl, lets the operator reconcile it to Ready, then
`kubectl diff` of the same manifest must show nothing and the object's spec and generation must be
what was applied. The status must carry what Argo CD and Flux health checks read.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.support import (
    condition,
    get,
    inference_deployment,
    ready,
)
from tests.test_argocd_health import health


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, **kwargs
    )


@pytest.mark.usefixtures("operator")
def test_a_reconciled_deployment_shows_no_drift(
    kube: client.ApiClient,
    kubectl: list[str],
    pool: str,
    llm: str,
    tmp_path: Path,
) -> None:
    manifest = inference_deployment("synced", pool, replicas=2, data=2, fallback="Never")
    manifest["metadata"]["namespace"] = llm
    path = tmp_path / "synced.yaml"
    path.write_text(yaml.safe_dump(manifest))

    applied = run([*kubectl, "apply", "--server-side", "--field-manager=gitops", "-f", str(path)])
    assert applied.returncode == 0, applied.stderr
    before = get(kube, llm, "synced")
    body = ready(kube, llm, "synced", 2)

    status = body["status"]
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert condition(body, "Available")["status"] == "True"
    assert condition(body, "Progressing")["status"] == "False"
    assert condition(body, "Degraded")["status"] == "False"
    assert condition(body, "Ready")["status"] == "True"  # what kstatus (Flux) reads
    assert condition(body, "Stalled")["status"] == "False"
    assert condition(body, "Reconciling")["status"] == "False"
    assert health(body) == ("Healthy", "2/2 replicas ready")  # docs/argocd-health.lua
    assert body["spec"] == before["spec"]
    assert body["metadata"]["generation"] == before["metadata"]["generation"] == 1
    assert "finalizers" not in body["metadata"]
    annotations = body["metadata"].get("annotations") or {}
    assert not [a for a in annotations if a.startswith("kopf.")], annotations

    diff = run([*kubectl, "diff", "--server-side", "--field-manager=gitops", "-f", str(path)])
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr
    client_diff = run([*kubectl, "diff", "-f", str(path)])
    assert (client_diff.returncode, client_diff.stdout) == (0, ""), client_diff.stdout

    # Only the operator's status writes: the spec fields belong to the GitOps manager alone.
    managers = {
        entry["manager"]: entry
        for entry in body["metadata"]["managedFields"]
        if entry.get("operation") in ("Apply", "Update")
    }
    for name, entry in managers.items():
        if name != "gitops":
            assert entry.get("subresource") == "status", (name, json.dumps(entry))
