"""Fixtures for tests against a real API server (the local one, or $RACKSCALE_E2E_KUBECONFIG):
the cluster, a namespace per test, the CRDs, a RackPool, the operator and kubectl."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import cluster, objects, profiles
from e2e.support import GROUP, OPERATOR, UNSCHEDULABLE_TIMEOUT, VERSION, eventually, gb200_pool
from rackscale.api import crd

EXTERNAL_KUBECONFIG = cluster.EXTERNAL_KUBECONFIG
# The kind tests need their own cluster and run with `make test-kind` (`pytest e2e/kind`).
collect_ignore = ["kind"]


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    """The kubeconfig the tests use: an external cluster's, or the local cluster's."""
    external = os.environ.get(EXTERNAL_KUBECONFIG)
    if external:
        if not os.path.isfile(external):
            pytest.fail(f"{EXTERNAL_KUBECONFIG}={external} is not a file", pytrace=False)
        yield external
        return
    profile = os.environ.get("RACKSCALE_E2E_PROFILE", "default")
    try:
        local = cluster.up(profile, wait=True)
    except (cluster.ClusterError, profiles.ProfileError) as err:
        pytest.fail(
            f"the local control plane did not come up: {err}\n"
            "Run `make cluster-up` to see the whole story, or point "
            f"{EXTERNAL_KUBECONFIG} at a running cluster.",
            pytrace=False,
        )
    try:
        yield str(local.kubeconfig)
    finally:
        # Only what this session started: a cluster from `make cluster-up` keeps running.
        if local.started and os.environ.get("RACKSCALE_E2E_KEEP") != "1":
            cluster.down()


@pytest.fixture(scope="session")
def kube(kubeconfig: str) -> Iterator[client.ApiClient]:
    """An ApiClient for the cluster under test."""
    api = profiles.api_client_for(kubeconfig)
    try:
        client.VersionApi(api).get_code()
    except Exception as err:
        pytest.fail(f"the API server behind {kubeconfig} does not answer: {err}", pytrace=False)
    yield api
    api.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    core = client.CoreV1Api(kube)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    body = {"metadata": {"name": name, "labels": {"rackscale.dev/e2e": "true"}}}
    core.create_namespace(body=body)  # type: ignore[arg-type]  # a plain manifest
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except client.exceptions.ApiException as err:
        if err.status != 404:
            raise


@pytest.fixture(scope="session")
def crds(kube: client.ApiClient) -> None:
    """The CRDs generated from the models, applied and Established."""
    ext = client.ApiextensionsV1Api(kube)
    for definition in crd.definitions().values():
        name = definition["metadata"]["name"]
        try:
            ext.patch_custom_resource_definition(
                name,
                definition,
                field_manager="rackscale-e2e",
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as err:
            message = json.loads(err.body).get("message", err.body) if err.body else err.reason
            pytest.fail(f"the API server refuses CRD {name}: {message}", pytrace=False)

        def established(name: str = name) -> bool:
            status = ext.read_custom_resource_definition(name).status
            conditions = (status.conditions if status else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        eventually(established, f"CRD {name} to be Established", timeout=30)


@pytest.fixture
def operator(kubeconfig: str, crds: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The operator running in this process for the length of one test."""
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setenv("RACKSCALE_UNSCHEDULABLE_TIMEOUT", str(UNSCHEDULABLE_TIMEOUT))
    with KopfRunner(OPERATOR, timeout=60) as runner:
        yield
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


@pytest.fixture
def pool(kube: client.ApiClient, crds: None) -> Iterator[str]:
    """A RackPool over the profile's GB200 racks, alone."""
    with gb200_pool(kube, "e2e") as name:
        yield name


@pytest.fixture
def llm(kube: client.ApiClient, namespace: str) -> Iterator[str]:
    """The test's namespace; afterwards its deployments are deleted and their pods waited out,
    so the next test finds the racks free."""
    yield namespace
    api = client.CustomObjectsApi(kube)
    for item in objects.custom_items(
        api.list_namespaced_custom_object(GROUP, VERSION, namespace, "inferencedeployments")
    ):
        api.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencedeployments", item["metadata"]["name"]
        )
    core = client.CoreV1Api(kube)
    eventually(
        lambda: not core.list_namespaced_pod(namespace).items,
        f"the pods of namespace {namespace} to be gone",
        timeout=120,
    )


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> list[str]:
    """The kubectl built with the local API server (else one on PATH), with the kubeconfig."""
    built = cluster.state_dir() / "bin" / "kubectl"
    binary = str(built) if built.exists() else shutil.which("kubectl")
    if binary is None:
        pytest.fail(f"no kubectl: neither {built} nor one on PATH", pytrace=False)
    return [binary, "--kubeconfig", kubeconfig]
