"""Typed reads of what the kubernetes client returns to the e2e tests.

The client's models declare every field Optional, and its custom-object calls return a bare
`object`. These name the fields a test relies on, and fail naming the object when one is missing.
"""

from __future__ import annotations

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
