"""The one place that writes to the API server: pods, services, ComputeDomains, InferencePools,
statuses and Events."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from rackscale.api import GROUP, VERSION
from rackscale.render import (
    COMPUTE_DOMAIN_GROUP,
    COMPUTE_DOMAIN_PLURAL,
    COMPUTE_DOMAIN_VERSION,
    INFERENCE_POOL_GROUP,
    INFERENCE_POOL_PLURAL,
    INFERENCE_POOL_VERSION,
)

log = logging.getLogger("rackscale.kube")


class Writer(Protocol):
    """What reconciling needs from the API; tests give an in-memory one."""

    async def create_pod(self, body: dict[str, Any]) -> str: ...
    async def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> None: ...
    async def apply_service(self, body: dict[str, Any]) -> None: ...
    async def annotate_pod(
        self, namespace: str, name: str, annotations: dict[str, str]
    ) -> None: ...
    async def create_compute_domain(self, body: dict[str, Any]) -> bool: ...
    async def delete_compute_domain(self, namespace: str, name: str) -> None: ...
    async def apply_inference_pool(self, body: dict[str, Any]) -> None: ...
    async def delete_inference_pool(self, namespace: str, name: str) -> None: ...
    async def patch_deployment_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> None: ...
    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None: ...
    async def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None: ...


def refusal_message(error: BaseException) -> str:
    """The API server's own words for a refused write: the `message` of the Status it answered
    with (e.g. `exceeded quota: ...`), else the error as it reads."""
    if isinstance(error, ApiException):
        try:
            body = json.loads(error.body) if error.body else None
        except (TypeError, ValueError):
            body = None
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
        return f"{error.status} {error.reason}"
    return str(error) or type(error).__name__


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the current kubeconfig."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # $KUBECONFIG read now: the client's own default was fixed when it was imported.
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


class Kube:
    """Writes through the official client, each call in a worker thread."""

    def __init__(self, api: client.ApiClient, component: str = "rackscale") -> None:
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.component = component

    async def create_pod(self, body: dict[str, Any]) -> str:
        created = await asyncio.to_thread(
            self.core.create_namespaced_pod, body["metadata"]["namespace"], body
        )
        return str(created.metadata.uid)

    async def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> None:
        # A pod on a lost node never hears from its kubelet: only a forced delete removes it.
        try:
            await asyncio.to_thread(
                self.core.delete_namespaced_pod,
                name,
                namespace,
                grace_period_seconds=0 if force else None,
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Set annotations on a running pod (a merge patch: its other metadata stays); a pod
        gone meanwhile needs none."""
        try:
            await asyncio.to_thread(
                self.core.patch_namespaced_pod,
                name,
                namespace,
                {"metadata": {"annotations": annotations}},
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def apply_service(self, body: dict[str, Any]) -> None:
        """Server-side apply: the Service becomes what rackscale renders (its port included),
        and fields others own (clusterIP, annotations of other managers) stay theirs."""
        meta = body["metadata"]
        await asyncio.to_thread(
            self.core.patch_namespaced_service,
            meta["name"],
            meta["namespace"],
            body,
            field_manager=self.component,
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    async def create_compute_domain(self, body: dict[str, Any]) -> bool:
        """Create a replica's ComputeDomain; False when one of that name still exists (the last
        one of its replica is being deleted: the replica waits for it)."""
        try:
            await asyncio.to_thread(
                self.custom.create_namespaced_custom_object,
                COMPUTE_DOMAIN_GROUP,
                COMPUTE_DOMAIN_VERSION,
                body["metadata"]["namespace"],
                COMPUTE_DOMAIN_PLURAL,
                body,
            )
        except ApiException as error:
            if error.status != 409:
                raise
            return False
        return True

    async def delete_compute_domain(self, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(
                self.custom.delete_namespaced_custom_object,
                COMPUTE_DOMAIN_GROUP,
                COMPUTE_DOMAIN_VERSION,
                namespace,
                COMPUTE_DOMAIN_PLURAL,
                name,
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def apply_inference_pool(self, body: dict[str, Any]) -> None:
        """Server-side apply, as for Services: the pool's selector, ports and picker become what
        rackscale renders; status and fields other managers own stay theirs."""
        meta = body["metadata"]
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object,
            INFERENCE_POOL_GROUP,
            INFERENCE_POOL_VERSION,
            meta["namespace"],
            INFERENCE_POOL_PLURAL,
            meta["name"],
            body,
            field_manager=self.component,
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    async def delete_inference_pool(self, namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(
                self.custom.delete_namespaced_custom_object,
                INFERENCE_POOL_GROUP,
                INFERENCE_POOL_VERSION,
                namespace,
                INFERENCE_POOL_PLURAL,
                name,
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def patch_deployment_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                "inferencedeployments",
                name,
                {"status": status},
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(
                self.custom.patch_cluster_custom_object_status,
                GROUP,
                VERSION,
                "rackpools",
                name,
                {"status": status},
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        prefix = f"{meta.get('name') or 'rackscale'}."
        stamp = now()
        body = {
            "metadata": {"generateName": prefix, "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.component},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await asyncio.to_thread(self.core.create_namespaced_event, namespace, body)
