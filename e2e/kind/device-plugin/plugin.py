"""A fake-GPU device plugin for kind: a stand-in for the NVIDIA device plugin and GPU Feature
Discovery on nodes that have no GPU. Nothing here touches hardware; no device it hands out exists.

It speaks the kubelet's device-plugin gRPC API (v1beta1) like the real plugin: it serves
GetDevicePluginOptions, ListAndWatch, GetPreferredAllocation, Allocate and PreStartContainer on a
socket in /var/lib/kubelet/device-plugins/, registers `nvidia.com/gpu` with the kubelet, advertises
GPUS_PER_NODE healthy devices, and on Allocate sets NVIDIA_VISIBLE_DEVICES to the IDs it was given.
It registers again whenever the kubelet restarts (the kubelet then removes the plugin's socket).

Like GPU Feature Discovery it labels its node: nvidia.com/gpu.present, .product, .count, .memory
(MiB) and nvidia.com/gpu.clique. On real trays the clique (the NVLink domain) comes from the GPU
fabric; here it is derived from the rack the node was created in, the node label named by
RACK_LABEL (topology.rackscale.dev/rack), in the `<cluster uuid>.<clique id>` shape GFD publishes.

Settings (environment): NODE_NAME (from the downward API), GPUS_PER_NODE (4), PRODUCT
(NVIDIA-GB200), GPU_MEMORY_MIB (189471), RESOURCE (nvidia.com/gpu), RACK_LABEL.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.request
from concurrent import futures
from pathlib import Path
from typing import Any

import deviceplugin_pb2 as api  # generated from deviceplugin.proto when the image is built
import deviceplugin_pb2_grpc as rpc
import grpc

PLUGIN_DIR = Path(os.environ.get("DEVICE_PLUGIN_DIR", "/var/lib/kubelet/device-plugins"))
KUBELET_SOCKET = PLUGIN_DIR / "kubelet.sock"
SOCKET_NAME = "rackscale-fake-gpu.sock"
API_VERSION = "v1beta1"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def log(message: str, **fields: Any) -> None:
    print(json.dumps({"time": round(time.time(), 3), "msg": message, **fields}), flush=True)


def uuid_of(text: str) -> str:
    """A stable UUID-shaped id, as GPU UUIDs and clique cluster ids are."""
    h = hashlib.sha1(text.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def device_ids(node: str, count: int) -> list[str]:
    return [f"GPU-{uuid_of(f'{node}/gpu{i}')}" for i in range(count)]


def clique_of(rack: str) -> str:
    return f"{uuid_of(f'rackscale/{rack}')}.1"


class FakeGPUs(rpc.DevicePluginServicer):  # type: ignore[misc]  # rpc is generated in the image
    """The DevicePlugin service: a fixed set of healthy devices."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.stopped = threading.Event()

    def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:  # noqa: N802
        return api.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def ListAndWatch(self, request: Any, context: Any) -> Any:  # noqa: N802
        devices = [api.Device(ID=i, health="Healthy") for i in self.ids]
        log("list-and-watch", devices=len(devices))
        yield api.ListAndWatchResponse(devices=devices)
        # The set never changes; the stream stays open until the kubelet or this plugin ends it.
        while not self.stopped.wait(5) and context.is_active():
            pass

    def GetPreferredAllocation(self, request: Any, context: Any) -> Any:  # noqa: N802
        answers = []
        for req in request.container_requests:
            chosen = list(req.must_include_deviceIDs)
            for d in sorted(req.available_deviceIDs, key=self.ids.index):
                if len(chosen) >= req.allocation_size:
                    break
                if d not in chosen:
                    chosen.append(d)
            answers.append(api.ContainerPreferredAllocationResponse(deviceIDs=chosen))
        return api.PreferredAllocationResponse(container_responses=answers)

    def Allocate(self, request: Any, context: Any) -> Any:  # noqa: N802
        answers = []
        for req in request.container_requests:
            unknown = [d for d in req.devices_ids if d not in self.ids]
            if unknown:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown devices {unknown}")
            visible = ",".join(req.devices_ids)
            log("allocate", devices=list(req.devices_ids))
            answers.append(
                api.ContainerAllocateResponse(
                    envs={"NVIDIA_VISIBLE_DEVICES": visible},
                    annotations={"rackscale.dev/fake-gpus": visible},
                )
            )
        return api.AllocateResponse(container_responses=answers)

    def PreStartContainer(self, request: Any, context: Any) -> Any:  # noqa: N802
        return api.PreStartContainerResponse()


def serve(plugin: FakeGPUs) -> grpc.Server:
    socket_path = PLUGIN_DIR / SOCKET_NAME
    socket_path.unlink(missing_ok=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_DevicePluginServicer_to_server(plugin, server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    return server


def register(resource: str) -> None:
    with grpc.insecure_channel(f"unix://{KUBELET_SOCKET}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        rpc.RegistrationStub(channel).Register(
            api.RegisterRequest(
                version=API_VERSION,
                endpoint=SOCKET_NAME,
                resource_name=resource,
                options=api.DevicePluginOptions(get_preferred_allocation_available=True),
            ),
            timeout=30,
        )


def kube(method: str, path: str, body: Any = None, content_type: str = "") -> Any:
    """One call to the API server with the pod's ServiceAccount (no client library needed)."""
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token = (SERVICE_ACCOUNT / "token").read_text()
    request = urllib.request.Request(
        f"https://{host}:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
        | ({"Content-Type": content_type} if content_type else {}),
    )
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:
        return json.load(answer)


def label_node(node: str, count: int, product: str, memory_mib: str, rack_label: str) -> None:
    """The labels GPU Feature Discovery would publish for this tray."""
    labels = kube("GET", f"/api/v1/nodes/{node}")["metadata"].get("labels") or {}
    rack = labels.get(rack_label)
    ours = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(count),
        "nvidia.com/gpu.memory": memory_mib,
    }
    if rack:
        ours["nvidia.com/gpu.clique"] = clique_of(rack)
    kube(
        "PATCH",
        f"/api/v1/nodes/{node}",
        {"metadata": {"labels": ours}},
        "application/merge-patch+json",
    )
    log("labelled node", node=node, labels=ours, rack=rack)


def main() -> None:
    node = os.environ.get("NODE_NAME") or sys.exit("plugin: NODE_NAME is not set (downward API)")
    count = int(os.environ.get("GPUS_PER_NODE", "4"))
    resource = os.environ.get("RESOURCE", "nvidia.com/gpu")
    label_node(
        node,
        count,
        os.environ.get("PRODUCT", "NVIDIA-GB200"),
        os.environ.get("GPU_MEMORY_MIB", "189471"),
        os.environ.get("RACK_LABEL", "topology.rackscale.dev/rack"),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    plugin = FakeGPUs(device_ids(node, count))
    server = None
    while not stop.is_set():
        socket_path = PLUGIN_DIR / SOCKET_NAME
        if server is None or not socket_path.exists():
            # First start, or the kubelet restarted and cleared the directory: serve, register.
            if server is not None:
                log("kubelet restarted; registering again")
                plugin.stopped.set()
                server.stop(grace=1)
                plugin = FakeGPUs(plugin.ids)
            server = serve(plugin)
            try:
                register(resource)
            except (grpc.RpcError, grpc.FutureTimeoutError) as err:
                log("registration failed; retrying", error=str(err))
                server.stop(grace=0)
                server = None
                stop.wait(2)
                continue
            log("registered", resource=resource, devices=count, node=node)
        stop.wait(2)
    plugin.stopped.set()
    if server is not None:
        server.stop(grace=1)


if __name__ == "__main__":
    main()
