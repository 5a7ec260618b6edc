"""Which pod templates get an RDMA device, so NCCL can cross racks without TCP."""

from __future__ import annotations

from typing import Any

import pytest

from rackscale.render.network import requests_rdma


def template(resources: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "server", "image": "vllm"}
    if resources is not None:
        container["resources"] = resources
    return {"spec": {"containers": [container], **spec}}


@pytest.mark.parametrize(
    ("given", "rdma"),
    [
        (template(), False),
        (template({"limits": {"nvidia.com/gpu": 4, "cpu": "8"}}), False),
        (template({"limits": {"rdma/rdma_shared_device_a": 1}}), True),
        (template({"requests": {"nvidia.com/rdma_shared_device_b": 1}}), True),
        (template({"limits": {"nvidia.com/hostdev": 2}}), True),
        (template({"limits": {"vpc.amazonaws.com/efa": 32}}), True),
        (template(resourceClaims=[{"name": "nic", "resourceClaimTemplateName": "nic"}]), True),
        (
            template(initContainers=[{"name": "i", "resources": {"limits": {"rdma/ib": 1}}}]),
            True,
        ),
    ],
)
def test_an_rdma_device_comes_from_a_resource_or_a_claim(given: dict[str, Any], rdma: bool) -> None:
    assert requests_rdma(given) is rdma
