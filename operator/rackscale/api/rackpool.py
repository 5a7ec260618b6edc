"""RackPool: the racks of one NVLink fabric, discovered from node labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from rackscale.api.common import (
    CONDITIONS_LIST,
    LABEL_KEY,
    Condition,
    FieldError,
    GpuCounts,
    Spec,
    Status,
    cel,
    check_name,
    qualified_name_rule,
)
from rackscale.api.labels import DEFAULT_RACK_LABEL
from rackscale.api.pricing import Pricing

DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


class LabelSelectorRequirement(Spec):
    """One `matchExpressions` entry of a standard label selector."""

    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.operator in ['In', 'NotIn'] ? "
                    "(has(self.values) && size(self.values) > 0) : "
                    "(!has(self.values) || size(self.values) == 0)",
                    "message": "values must be non-empty for In and NotIn, "
                    "and empty for Exists and DoesNotExist",
                    "fieldPath": ".values",
                },
                cel(
                    qualified_name_rule("self.key"),
                    "key must be a label key: an optional DNS subdomain and '/', then at most 63 "
                    "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                    ".key",
                ),
            ]
        }
    }

    key: str = Field(min_length=1, max_length=317, description="The node label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the label's value relates to values."
    )
    values: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Label values: at least one for In and NotIn, none for Exists and "
        "DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        if not LABEL_KEY.match(self.key):
            raise FieldError("key", f"{self.key!r} is not a valid label key")
        if self.operator in ("In", "NotIn") and not self.values:
            raise FieldError("values", f"must be non-empty for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise FieldError("values", f"must be empty for operator {self.operator}")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        inside = present and labels[self.key] in self.values
        return inside if self.operator == "In" else not inside


class LabelSelector(Spec):
    """A standard Kubernetes LabelSelector; empty selects every node."""

    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(self.matchLabels) || self.matchLabels.all(k, "
                    + qualified_name_rule("k")
                    + ")",
                    "matchLabels keys must be label keys: an optional DNS subdomain and '/', then "
                    "at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
                    "letter or digit",
                    ".matchLabels",
                )
            ]
        }
    }

    match_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels a node must carry with exactly these values.",
        json_schema_extra={"maxProperties": 64},
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list,
        max_length=32,
        description="Further requirements on node labels; all must hold.",
    )

    @field_validator("match_labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not LABEL_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid label key")
        return value

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            e.matches(labels) for e in self.match_expressions
        )


_LABEL_KEY_WORDS = (
    "a label key: an optional DNS subdomain and '/', then at most 63 letters, digits, '-', '_' "
    "or '.', starting and ending with a letter or digit"
)


class RackPoolSpec(Spec):
    """Which nodes form the pool, how racks and NVLink domains are named, and the GPU resource."""

    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(self.rackLabel) || " + qualified_name_rule("self.rackLabel"),
                    f"rackLabel must be {_LABEL_KEY_WORDS}",
                    ".rackLabel",
                ),
                cel(
                    "!has(self.blockLabel) || " + qualified_name_rule("self.blockLabel"),
                    f"blockLabel must be {_LABEL_KEY_WORDS}",
                    ".blockLabel",
                ),
                cel(
                    "!has(self.gpuResource) || (self.gpuResource.contains('/') && "
                    + qualified_name_rule("self.gpuResource")
                    + " && !self.gpuResource.startsWith('kubernetes.io/'))",
                    "gpuResource must be an extended resource name: a domain outside "
                    "kubernetes.io, '/', then a name (such as nvidia.com/gpu)",
                    ".gpuResource",
                ),
            ]
        }
    }

    node_selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="The nodes of the pool (a LabelSelector).",
        json_schema_extra={"default": {}},
    )
    rack_label: str = Field(
        default=DEFAULT_RACK_LABEL,
        min_length=1,
        max_length=317,
        description="Node label whose value names the rack (its NVLink domain on NVL72).",
    )
    block_label: str | None = Field(
        default=None,
        min_length=1,
        max_length=317,
        description="Optional node label naming the block: racks behind one spine.",
    )
    nvlink_domain: Literal["Rack", "Node"] = Field(
        default="Rack",
        description="Rack: all GPUs of a rack share NVLink (NVL72). Node: NVLink ends at the node.",
    )
    gpu_resource: str = Field(
        default=DEFAULT_GPU_RESOURCE,
        min_length=1,
        max_length=317,
        description="The extended resource the device plugin advertises.",
    )
    gpus_per_rack: int = Field(
        default=72,
        ge=1,
        le=100000,
        description="GPUs a healthy rack offers; a rack with fewer schedulable is Degraded.",
    )
    tenancy: Literal["Shared", "Exclusive"] = Field(
        default="Shared",
        description="Exclusive: a rack holds pods of one namespace at a time.",
    )
    compute_domains: Literal["Auto", "Off"] = Field(
        default="Auto",
        description="Auto: a replica whose pods span nodes gets an NVIDIA ComputeDomain (IMEX "
        "channels, for NVLink across trays) when the API server serves "
        "computedomains.resource.nvidia.com. Off: never. Applies only to pools of nvidia.com/gpu "
        "with nvlinkDomain Rack.",
    )
    gpu_memory_mib: int | None = Field(
        default=None,
        ge=1,
        le=100000000,
        alias="gpuMemoryMiB",
        description="Memory of one GPU in MiB; default: each node's nvidia.com/gpu.memory label "
        "(GPU Feature Discovery). Set it for GPUs that carry no such label.",
    )
    pricing: Pricing | None = Field(
        default=None, description="Price per GPU-hour: cost per deployment and of idle GPUs."
    )

    @property
    def wants_compute_domains(self) -> bool:
        """Whether replicas spanning nodes here need ComputeDomains: NVLink crosses nodes only
        with `nvlinkDomain: Rack`, and the DRA driver that serves them is NVIDIA's."""
        return (
            self.compute_domains == "Auto"
            and self.nvlink_domain == "Rack"
            and self.gpu_resource == DEFAULT_GPU_RESOURCE
        )

    @field_validator("rack_label", "block_label")
    @classmethod
    def _valid_label_key(cls, value: str | None) -> str | None:
        if value is not None and not LABEL_KEY.match(value):
            raise ValueError(f"{value!r} is not a valid label key")
        return value

    @field_validator("gpu_resource")
    @classmethod
    def _extended_resource(cls, value: str) -> str:
        if "/" not in value or not LABEL_KEY.match(value) or value.startswith("kubernetes.io/"):
            raise ValueError(
                f"{value!r} is not an extended resource name: a domain outside kubernetes.io, "
                "'/', then a name (such as nvidia.com/gpu)"
            )
        return value


class RackStatus(Status):
    """One rack as the pool sees it."""

    name: str = Field(description="The rack: its rackLabel value, `<block>/<rack>` with blocks.")
    block: str | None = Field(default=None, description="Its blockLabel value, if any.")
    nodes: int = Field(default=0, description="Nodes of the rack.")
    health: Literal["Healthy", "Degraded", "Unavailable"] = Field(
        default="Healthy",
        description="Healthy: gpusPerRack schedulable GPUs. Degraded: fewer. Unavailable: none.",
    )
    gpus: GpuCounts = Field(default_factory=GpuCounts, description="GPUs of the rack.")
    held_by: str | None = Field(
        default=None, description="The exclusive deployment (namespace/name) holding the rack."
    )
    deployments: list[str] = Field(
        default_factory=list, description="InferenceDeployments (namespace/name) with pods here."
    )


class PoolCost(Status):
    """What the pool's unused GPUs cost per hour, from spec.pricing."""

    currency: str = Field(description="The currency of the figures.")
    per_gpu_hour: str = Field(description="The price of one GPU-hour (spec.pricing).")
    idle_per_hour: str = Field(description="Free GPUs (gpus.free) times the price.")
    fragmented_per_hour: str = Field(
        description="Fragmented GPUs (fragmentedGpus) times the price: part of idlePerHour."
    )


class RackPoolStatus(Status):
    """What the operator last saw of the pool."""

    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status was computed for."
    )
    racks: int = Field(default=0, description="Racks in the pool.")
    healthy_racks: int = Field(default=0, description="Racks whose health is Healthy.")
    free_racks: int = Field(
        default=0, description="Healthy racks with no GPU in use: what a whole-rack replica takes."
    )
    nodes: int = Field(default=0, description="Nodes in the pool's racks.")
    gpus: GpuCounts = Field(default_factory=GpuCounts, description="GPUs of all its racks.")
    fragmented_gpus: int = Field(
        default=0,
        description="Free GPUs on racks that hold work: idle, and no whole-rack replica can use "
        "them.",
    )
    cost: PoolCost | None = Field(
        default=None, description="Cost per hour of idle and fragmented GPUs (with spec.pricing)."
    )
    rack_statuses: list[RackStatus] = Field(default_factory=list, description="One per rack.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready (the pool has healthy racks), NodesOverlap (another pool selects "
        "some of its nodes), Reconciling and Stalled (for kstatus) and, where computeDomains "
        "apply, ComputeDomains (whether the API server serves them).",
        json_schema_extra=CONDITIONS_LIST,
    )


class RackPool(BaseModel):
    """A RackPool object: cluster-scoped, short name `rp`."""

    model_config = {"populate_by_name": True, "extra": "ignore"}

    api_version: Literal["rackscale.dev/v1alpha1"] = Field(
        default="rackscale.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["RackPool"] = "RackPool"
    metadata: dict[str, Any]
    spec: RackPoolSpec = Field(default_factory=RackPoolSpec)
    status: RackPoolStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _named(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_name(value, max_length=63)

    @property
    def name(self) -> str:
        return str(self.metadata["name"])
