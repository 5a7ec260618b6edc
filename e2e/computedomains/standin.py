"""A stand-in for the node side of NVIDIA's DRA driver for ComputeDomains: a test fixture.

There are no GB200 trays and no IMEX daemons here, as kwok stands in for kubelets. This process
does, against the real API server, what the driver's controller and kubelet plugins do there:

- installs the ComputeDomain CRD (`crd.yaml`) and the DeviceClass
  `compute-domain-default-channel.nvidia.com`, as the driver's chart does;
- publishes one ResourceSlice per GB200 node (a node with `nvidia.com/gpu.clique`) holding one
  IMEX channel device, so a node serves one ComputeDomain at a time, as the driver allows;
- creates each ComputeDomain's ResourceClaimTemplate (`spec.channel.resourceClaimTemplate.name`)
  in its namespace, owned by the ComputeDomain, requesting one channel;
- reports the ComputeDomain Ready, as the driver does once its IMEX daemons run, unless its
  namespace carries the label `e2e.rackscale.dev/compute-domains=never-ready` (to test timeouts).

The real kube-scheduler then allocates the claims from the slices and binds the pods.

    python -m e2e.computedomains.standin --kubeconfig PATH --port PORT
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e import objects, profiles

DRIVER = "compute-domain.nvidia.com"
DEVICE_CLASS = "compute-domain-default-channel.nvidia.com"
CRD_FILE = Path(__file__).with_name("crd.yaml")
CRD_NAME = "computedomains.resource.nvidia.com"
GROUP, VERSION, PLURAL = "resource.nvidia.com", "v1beta1", "computedomains"
DRA = ("resource.k8s.io", "v1")
CLIQUE = profiles.CLIQUE_LABEL
NEVER_READY = "e2e.rackscale.dev/compute-domains"

log = logging.getLogger("dra-standin")


def _ignore_conflict(call: Callable[..., object], *args: Any) -> None:
    try:
        call(*args)
    except ApiException as error:
        if error.status != 409:
            raise


def install(api: client.ApiClient) -> None:
    """The CRD (waiting until it is served) and the DeviceClass of channels."""
    ext = client.ApiextensionsV1Api(api)
    _ignore_conflict(ext.create_custom_resource_definition, yaml.safe_load(CRD_FILE.read_text()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(CRD_NAME)
        conditions = (crd.status and crd.status.conditions) or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(f"CRD {CRD_NAME} was not Established within 60s")
    selector = f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'channel'"
    device_class = {
        "apiVersion": "/".join(DRA),
        "kind": "DeviceClass",
        "metadata": {"name": DEVICE_CLASS},
        "spec": {"selectors": [{"cel": {"expression": selector}}]},
    }
    custom = client.CustomObjectsApi(api)
    _ignore_conflict(custom.create_cluster_custom_object, *DRA, "deviceclasses", device_class)


def _slice(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "/".join(DRA),
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{DRIVER}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": "channel-0",
                    "attributes": {"type": {"string": "channel"}, "id": {"int": 0}},
                }
            ],
        },
    }


def serve_nodes(api: client.ApiClient) -> None:
    """One channel slice per GB200 node, for as long as the node exists."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    while True:
        try:
            listed = core.list_node(label_selector=CLIQUE)
            slices = custom.list_cluster_custom_object(
                *DRA, "resourceslices", field_selector=f"spec.driver={DRIVER}"
            )
            have = {s["spec"].get("nodeName") for s in objects.custom_items(slices)}
            for item in listed.items:
                if objects.name(item) not in have:
                    _ignore_conflict(
                        custom.create_cluster_custom_object,
                        *DRA,
                        "resourceslices",
                        _slice(objects.name(item)),
                    )
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]  # watch is unannotated
                core.list_node,
                label_selector=CLIQUE,
                resource_version=listed.metadata.resource_version if listed.metadata else None,
                timeout_seconds=300,
            )
            for event in stream:
                name = event["object"].metadata.name
                if event["type"] == "ADDED":
                    _ignore_conflict(
                        custom.create_cluster_custom_object, *DRA, "resourceslices", _slice(name)
                    )
                elif event["type"] == "DELETED":
                    with contextlib.suppress(ApiException):
                        custom.delete_cluster_custom_object(
                            *DRA, "resourceslices", f"{name}-{DRIVER}"
                        )
        except Exception as error:  # a dropped watch: list again
            log.warning("node watch: %s; listing again", error)
            time.sleep(1)


def _claim_template(domain: dict[str, Any]) -> dict[str, Any]:
    meta = domain["metadata"]
    return {
        "apiVersion": "/".join(DRA),
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": domain["spec"]["channel"]["resourceClaimTemplate"]["name"],
            "namespace": meta["namespace"],
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ComputeDomain",
                    "name": meta["name"],
                    "uid": meta["uid"],
                }
            ],
        },
        "spec": {
            "spec": {
                "devices": {
                    "requests": [{"name": "channel", "exactly": {"deviceClassName": DEVICE_CLASS}}]
                }
            }
        },
    }


def _never_ready(core: client.CoreV1Api, namespace: str) -> bool:
    labels = objects.labels(core.read_namespace(namespace))
    return labels.get(NEVER_READY) == "never-ready"


def serve_domains(api: client.ApiClient) -> None:
    """A claim template for every ComputeDomain, and its status Ready."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    while True:
        try:
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]  # watch is unannotated
                custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, timeout_seconds=300
            )
            for event in stream:
                domain = event["object"]
                meta = domain.get("metadata") or {}
                if event["type"] not in ("ADDED", "MODIFIED") or meta.get("deletionTimestamp"):
                    continue
                _ignore_conflict(
                    custom.create_namespaced_custom_object,
                    *DRA,
                    meta["namespace"],
                    "resourceclaimtemplates",
                    _claim_template(domain),
                )
                ready = (domain.get("status") or {}).get("status") == "Ready"
                if ready or _never_ready(core, meta["namespace"]):
                    continue
                custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    meta["namespace"],
                    PLURAL,
                    meta["name"],
                    {"status": {"status": "Ready", "nodes": []}},
                )
                log.info("ComputeDomain %s/%s: Ready", meta["namespace"], meta["name"])
        except Exception as error:
            log.warning("ComputeDomain watch: %s; watching again", error)
            time.sleep(1)


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *_: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.computedomains.standin")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--port", type=int, required=True, help="health port, 127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    api = profiles.api_client_for(args.kubeconfig)
    install(api)
    for target in (serve_nodes, serve_domains):
        threading.Thread(target=target, args=(api,), daemon=True, name=target.__name__).start()
    log.info("serving ComputeDomains; health on 127.0.0.1:%d", args.port)
    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), _Health).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
