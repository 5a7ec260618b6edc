"""Fixtures for the kind tests (`make test-kind`): the cluster e2e/kind/up.sh brought up, with the
operator installed from charts/rackscale. Nothing here starts an operator: every pod these tests
see is created by the one in the cluster, under the chart's ServiceAccount."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from e2e import objects
from e2e.support import GROUP, eventually

KUBECONFIG_ENV = "RACKSCALE_KIND_KUBECONFIG"
OPERATOR_NAMESPACE = "rackscale-system"
CNI_SCRIPT = Path(__file__).parent / "cni.sh"


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: run the kind tests with `make test-kind` "
            "(e2e/kind/test.sh brings the cluster up and sets it)",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    path = _required(KUBECONFIG_ENV)
    if not os.path.isfile(path):
        pytest.fail(f"{KUBECONFIG_ENV}={path} is not a file: is the cluster up?", pytrace=False)
    return path


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> list[str]:
    return [_required("RACKSCALE_KIND_KUBECTL"), "--kubeconfig", kubeconfig]


@pytest.fixture(scope="session")
def shard_image() -> str:
    return _required("RACKSCALE_KIND_SHARD_IMAGE")


@pytest.fixture(scope="session")
def crds(kube: client.ApiClient) -> None:
    """The chart installed the CRDs; the operator it runs must be available."""
    ext = client.ApiextensionsV1Api(kube)
    for plural in ("inferencedeployments", "rackpools"):
        ext.read_custom_resource_definition(f"{plural}.{GROUP}")
    apps = client.AppsV1Api(kube)
    deployments = apps.list_namespaced_deployment(OPERATOR_NAMESPACE).items
    if not deployments:
        pytest.fail(f"no operator Deployment in {OPERATOR_NAMESPACE}: was the chart installed?")
    for d in deployments:
        if ((d.status.available_replicas if d.status else None) or 0) < 1:
            pytest.fail(f"the operator Deployment {objects.name(d)} is unavailable", pytrace=False)


@pytest.fixture
def stopped_nodes(
    kube: client.ApiClient, kubeconfig: str, kubectl: list[str]
) -> Iterator[list[str]]:
    """Nodes the test stopped with `docker stop`: started again afterwards, their pod network
    set up again (it lives in the node's network namespace) and their GPUs back."""
    stopped: list[str] = []
    yield stopped
    for node in stopped:
        subprocess.run(["docker", "start", node], check=True, capture_output=True, timeout=120)
    if stopped:
        env = {**os.environ, "KUBECONFIG": kubeconfig, "KUBECTL": kubectl[0]}
        subprocess.run(["bash", str(CNI_SCRIPT)], check=True, env=env, timeout=300)
    for node in stopped:
        wait_gpus(kube, node, 4)


def wait_gpus(kube: client.ApiClient, node: str, gpus: int, timeout: float = 180) -> None:
    core = client.CoreV1Api(kube)

    def probe() -> bool:
        n = core.read_node(node)
        return objects.node_ready(n) and objects.allocatable(n).get("nvidia.com/gpu") == str(gpus)

    eventually(probe, f"node {node} Ready with {gpus} nvidia.com/gpu", timeout=timeout)
