"""The Services the operator owns follow the spec: server-side applied on a real API server."""

from __future__ import annotations

import pytest
from kubernetes import client

from e2e.support import apply, eventually, inference_deployment, patch, ready


def _ports(kube: client.ApiClient, namespace: str, name: str) -> dict[str, int]:
    core = client.CoreV1Api(kube)
    out = {}
    for service in (name, f"{name}-shards"):
        spec = core.read_namespaced_service(service, namespace).spec
        assert spec is not None, f"service {service} has no spec"
        assert spec.ports, f"service {service} has no ports"
        out[service] = int(spec.ports[0].port)
    return out


@pytest.mark.usefixtures("operator")
def test_a_port_change_reaches_both_services(kube: client.ApiClient, pool: str, llm: str) -> None:
    apply(kube, llm, inference_deployment("srv", pool, replicas=1, fallback="Never"))
    ready(kube, llm, "srv", 1)
    assert _ports(kube, llm, "srv") == {"srv": 8000, "srv-shards": 8000}
    patch(kube, llm, "srv", {"port": 9000})
    eventually(
        lambda: _ports(kube, llm, "srv") == {"srv": 9000, "srv-shards": 9000} or None,
        "both Services on port 9000",
    )
    ready(kube, llm, "srv", 1)  # its replica replaced: the port is in the template hash
