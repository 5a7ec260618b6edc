"""Fixtures for tests against a real API server: the local one, or $RACKSCALE_E2E_KUBECONFIG."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from e2e import cluster, profiles

EXTERNAL_KUBECONFIG = cluster.EXTERNAL_KUBECONFIG


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
    api.close()


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    core = client.CoreV1Api(kube)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        body={"metadata": {"name": name, "labels": {"rackscale.dev/e2e": "true"}}}
    )
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except client.exceptions.ApiException as err:
        if err.status != 404:
            raise
