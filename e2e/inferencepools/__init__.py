"""The InferencePool CRD (Gateway API Inference Extension, v1) for the local test cluster."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from kubernetes import client

CRD_FILE = Path(__file__).with_name("crd.yaml")
CRD_NAME = "inferencepools.inference.networking.k8s.io"
GROUP, VERSION, PLURAL = "inference.networking.k8s.io", "v1", "inferencepools"


def install(api: client.ApiClient, timeout: float = 60.0) -> None:
    """Apply the CRD (server-side, so a changed file updates a reused cluster) and wait until
    it is served."""
    ext = client.ApiextensionsV1Api(api)
    ext.patch_custom_resource_definition(
        CRD_NAME,
        yaml.safe_load(CRD_FILE.read_text()),
        field_manager="rackscale-e2e",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(CRD_NAME)
        conditions = (crd.status and crd.status.conditions) or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.2)
    raise RuntimeError(f"CRD {CRD_NAME} was not Established within {timeout:.0f}s")
