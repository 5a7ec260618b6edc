"""Typed reads of what the kubernetes client returns to the e2e tests.

The client's models declare every field Optional, and its custom-object calls return a bare
`object`. These name the fields a test relies on, and fail naming the object when one is missing.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from kubernetes import client


class Object(Protocol):
    """Any model of a Kubernetes object: it has metadata."""

    @property
    def metadata(self) -> client.V1ObjectMeta | None: ...


def meta(obj: Object) -> client.V1ObjectMeta:
    if obj.metadata is None:
        raise AssertionError(f"a {type(obj).__name__} without metadata")
    return obj.metadata


def name(obj: Object) -> str:
    named = meta(obj).name
    if not named:
        raise AssertionError(f"a {type(obj).__name__} without metadata.name")
    return named


def labels(obj: Object) -> dict[str, str]:
    return meta(obj).labels or {}


def node_status(node: client.V1Node) -> client.V1NodeStatus:
    if node.status is None:
        raise AssertionError(f"node {name(node)} has no status")
    return node.status


def allocatable(node: client.V1Node) -> dict[str, str]:
    return node_status(node).allocatable or {}


def node_ready(node: client.V1Node) -> bool:
    conditions = node_status(node).conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def pod_spec(pod: client.V1Pod) -> client.V1PodSpec:
    if pod.spec is None:
        raise AssertionError(f"pod {name(pod)} has no spec")
    return pod.spec


def pod_status(pod: client.V1Pod) -> client.V1PodStatus:
    if pod.status is None:
        raise AssertionError(f"pod {name(pod)} has no status")
    return pod.status


def custom(value: object) -> dict[str, Any]:
    """A custom object, or a list of them, as the client returns it: the parsed JSON object."""
    if not isinstance(value, dict):
        raise AssertionError(f"expected a JSON object from the API server, got {type(value)}")
    return value


def custom_items(value: object) -> list[dict[str, Any]]:
    """The objects of a custom-object list the client returns."""
    return list(custom(value)["items"])


def raw_items(response: object) -> list[dict[str, Any]]:
    """The objects of a list call made with `_preload_content=False`: the client then returns the
    undecoded HTTP response, whatever its annotation says."""
    data = getattr(response, "data", None)
    if not isinstance(data, bytes):
        raise AssertionError(f"expected an undecoded HTTP response, got {type(response)}")
    return custom_items(json.loads(data))


def service_spec(service: client.V1Service) -> client.V1ServiceSpec:
    if service.spec is None:
        raise AssertionError(f"service {name(service)} has no spec")
    return service.spec


def deployment_spec(deployment: client.V1Deployment) -> client.V1DeploymentSpec:
    if deployment.spec is None:
        raise AssertionError(f"deployment {name(deployment)} has no spec")
    return deployment.spec


def deployment_args(deployment: client.V1Deployment) -> list[str]:
    """The arguments of the first container of a Deployment's pod template."""
    template = deployment_spec(deployment).template.spec
    if template is None:
        raise AssertionError(f"deployment {name(deployment)} has no pod template spec")
    return list(template.containers[0].args or [])


def serialized(kube: client.ApiClient, model: object) -> dict[str, Any]:
    """A client model as the JSON object the API server stores."""
    # The client leaves sanitize_for_serialization unannotated.
    return custom(kube.sanitize_for_serialization(model))  # type: ignore[no-untyped-call]


def rules(
    kube: client.ApiClient, role: client.V1Role | client.V1ClusterRole
) -> list[dict[str, Any]]:
    """A Role's or ClusterRole's rules as the API server stores them."""
    return [serialized(kube, rule) for rule in role.rules or []]
