"""The CRDs on the real API server: names of Kubernetes things checked with Kubernetes' own CEL
library, every refusal naming its field; a new object's default status; the wide columns."""

from __future__ import annotations

import functools
import json
import subprocess
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import objects
from e2e.support import GROUP, PAUSE, VERSION, eventually
from tests.test_argocd_health import health
from tests.test_gitops_health import flux


def deployment(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "replicas": 1,
        "parallelism": {"tensor": 4},
        "template": {"spec": {"containers": [{"name": "server", "image": PAUSE}]}},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": body,
    }


def rack_pool(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RackPool",
        "metadata": {"name": name},
        "spec": spec,
    }


def refusal(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> str:
    api = client.CustomObjectsApi(kube)
    if body["kind"] == "RackPool":
        create = functools.partial(
            api.create_cluster_custom_object, GROUP, VERSION, "rackpools", body
        )
    else:
        create = functools.partial(
            api.create_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "inferencedeployments",
            body,
        )
    with pytest.raises(ApiException) as refused:
        create(dry_run="All")
    assert refused.value.status == 422, refused.value.body
    assert refused.value.body, "a refusal without a body"
    return str(json.loads(refused.value.body)["message"])


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (rack_pool("p1", rackLabel="not a key"), "spec.rackLabel", "must be a label key"),
        (rack_pool("p2", blockLabel="a/b/c"), "spec.blockLabel", "must be a label key"),
        (rack_pool("p3", gpuResource="gpu"), "spec.gpuResource", "extended resource name"),
        (rack_pool("p4", gpuResource="kubernetes.io/gpu"), "spec.gpuResource", "extended"),
        (rack_pool("p5", nodeSelector={"matchLabels": {"bad key": "x"}}),
         "spec.nodeSelector.matchLabels", "label keys"),
        (rack_pool("p6", nodeSelector={"matchExpressions": [{"key": "-x", "operator": "Exists"}]}),
         "spec.nodeSelector.matchExpressions[0].key", "label key"),
        (rack_pool("-p7"), "metadata.name", "starting and ending with a letter or digit"),
        (deployment("d1", placement={"rackPool": "GB_200"}), "spec.placement.rackPool",
         "must name a RackPool"),
        (deployment("d2", template={"spec": {"containers": []}}),
         "spec.template.spec.containers", "at least one container"),
        (deployment("d3", template={"metadata": {"labels": {"a": "b"}}}),
         "spec.template.spec.containers", "at least one container"),
    ],
)  # fmt: skip
@pytest.mark.usefixtures("crds")
def test_names_of_kubernetes_things_are_checked_naming_the_field(
    kube: client.ApiClient, namespace: str, body: dict[str, Any], field: str, words: str
) -> None:
    message = refusal(kube, namespace, body)
    assert f"{field}: Invalid value" in message, message
    assert words in message, message


@pytest.mark.parametrize(
    ("pool", "words"),
    [
        ({}, "spec.inferencePool.endpointPickerRef: Required value"),
        ({"endpointPickerRef": {"port": {"number": 9002}}},
         "spec.inferencePool.endpointPickerRef.name: Required value"),
        ({"endpointPickerRef": {"name": "epp"}},
         "spec.inferencePool.endpointPickerRef.port: Invalid value"),
    ],
)  # fmt: skip
@pytest.mark.usefixtures("crds")
def test_an_inference_pool_without_its_endpoint_picker_is_refused_naming_the_field(
    kube: client.ApiClient, namespace: str, pool: dict[str, Any], words: str
) -> None:
    message = refusal(kube, namespace, deployment("gw", inferencePool=pool))
    assert words in message, message


def test_valid_names_pass(kube: client.ApiClient, crds: None, namespace: str) -> None:
    api = client.CustomObjectsApi(kube)
    api.create_cluster_custom_object(
        GROUP, VERSION, "rackpools",
        rack_pool("0-ok", rackLabel="nvidia.com/gpu.clique", gpuResource="example.com/gpu",
                  nodeSelector={"matchLabels": {"kubernetes.io/arch": "arm64"}}),
        dry_run="All",
    )  # fmt: skip
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments",
        deployment("ok", placement={"rackPool": "0-ok"}), dry_run="All",
    )  # fmt: skip
    picker = {"name": "epp", "port": {"number": 9002}}
    created = api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments",
        deployment("gw", inferencePool={"endpointPickerRef": picker}), dry_run="All",
    )  # fmt: skip
    ref = objects.custom(created)["spec"]["inferencePool"]["endpointPickerRef"]
    assert ref == {**picker, "group": "", "kind": "Service", "failureMode": "FailClose"}


def test_a_new_object_reads_in_progress_before_the_operator_writes(
    kube: client.ApiClient, crds: None, namespace: str, kubectl: list[str]
) -> None:
    """No operator runs in this test: the status is the CRD's default."""
    api = client.CustomObjectsApi(kube)
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "inferencedeployments", deployment("fresh")
    )
    body = eventually(
        lambda: objects.custom(
            api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "inferencedeployments", "fresh"
            )
        ),
        "the new object",
    )
    assert body["metadata"]["generation"] == 1
    assert body["status"]["observedGeneration"] == 0
    assert flux(body) == "InProgress"
    assert health(body)[0] == "Progressing"

    # kubectl get shows the rack list only with -o wide.
    def columns(*extra: str) -> list[str]:
        done = subprocess.run(
            [*kubectl, "get", "idep", "-n", namespace, *extra],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout.splitlines()[0].split()

    assert "RACKS" not in columns()
    assert "RACKS" in columns("-o", "wide")


def role(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "parallelism": {"tensor": 4},
        "template": {"spec": {"containers": [{"name": "server", "image": PAUSE}]}},
        **fields,
    }


def disagg(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("roles", [role("prefill"), role("decode", replicas=2)])
    body = deployment(name, **spec)
    del body["spec"]["parallelism"], body["spec"]["template"]
    return body


def with_spec(body: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body["spec"].update(spec)
    return body


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (disagg("r1", roles=[role("decode"), role("decode")]), "spec.roles",
         "role names must be unique"),
        (disagg("r2", roles=[role("prefill", replicas=0)]), "spec.roles[0].replicas",
         "greater than or equal to 1"),
        (with_spec(disagg("r3"), parallelism={"tensor": 8}), "spec.parallelism",
         "parallelism is set per role"),
        (with_spec(disagg("r4"), gpusPerPod=4), "spec.gpusPerPod", "gpusPerPod is set per role"),
        (with_spec(disagg("r5"), serviceRole="router"), "spec.serviceRole",
         "serviceRole must name one of spec.roles"),
        (deployment("r6", placement={"colocate": "Rack"}), "spec.placement.colocate",
         "it needs spec.roles"),
        (disagg("r7-" + "a" * 40, roles=[role("decode-and-more")]), "metadata.name",
         "pod names `<name>-g<group>-<role>-<index>-<shard>` are hostnames"),
    ],
)  # fmt: skip
@pytest.mark.usefixtures("crds")
def test_what_makes_no_sense_beside_roles_is_refused_naming_the_field(
    kube: client.ApiClient, namespace: str, body: dict[str, Any], field: str, words: str
) -> None:
    message = refusal(kube, namespace, body)
    assert f"{field}: Invalid value" in message, message
    assert words in message, message


def test_a_disaggregated_deployment_is_accepted(
    kube: client.ApiClient, crds: None, namespace: str
) -> None:
    api = client.CustomObjectsApi(kube)
    body = with_spec(disagg("ok-disagg"), serviceRole="prefill",
                     placement={"rackPool": "p", "colocate": "Block"})  # fmt: skip
    created = objects.custom(
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencedeployments", body, dry_run="All"
        )
    )
    assert [r["replicas"] for r in created["spec"]["roles"]] == [1, 2]  # the default is 1
