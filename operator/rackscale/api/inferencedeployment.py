"""InferenceDeployment: a model server whose replicas are placed whole inside NVLink domains."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, field_validator, model_validator

from rackscale.api.common import (
    CONDITIONS_LIST,
    DNS_1035,
    DNS_1123,
    NAME_RULES,
    Condition,
    FieldError,
    Spec,
    Status,
    cel,
    check_name,
)

# `<name>-shards` must stay a DNS label and `<name>-<replica>-<shard>` a hostname (63 characters).
MAX_NAME_LENGTH = 48

Scope = Literal["Node", "Rack", "Block", "Any"]
Colocate = Literal["Rack", "Block", "None"]

# Roles: with them, pod names `<name>-g<group>-<role>-<index>-<shard>` must stay hostnames (63
# characters) for up to 9999 groups, 99 replicas of a role per group and 9999 shards.
MAX_ROLES = 8
MAX_ROLE_NAME_LENGTH = 15
MAX_ROLE_REPLICAS = 99
MAX_NAME_AND_ROLE_LENGTH = 63 - len("-g9999--99-9999")
NAME_AND_ROLE_RULE = (
    f"metadata.name and each role name together may have at most {MAX_NAME_AND_ROLE_LENGTH} "
    "characters: pod names `<name>-g<group>-<role>-<index>-<shard>` are hostnames"
)


class Parallelism(Spec):
    """How one replica is cut: GPUs per replica = tensor x pipeline x data; expert divides it."""

    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "(self.tensor * self.pipeline * self.data) % self.expert == 0",
                    "message": "expert must divide tensor x pipeline x data "
                    "(the GPUs of one replica)",
                    "fieldPath": ".expert",
                }
            ]
        }
    }

    tensor: int = Field(default=1, ge=1, le=1024, description="Tensor-parallel group size.")
    pipeline: int = Field(default=1, ge=1, le=1024, description="Pipeline stages.")
    data: int = Field(default=1, ge=1, le=1024, description="Data-parallel ranks inside a replica.")
    expert: int = Field(default=1, ge=1, le=4096, description="Expert-parallel group size.")

    @property
    def gpus(self) -> int:
        """GPUs of one replica: its world size."""
        return self.tensor * self.pipeline * self.data

    @model_validator(mode="after")
    def _expert_divides(self) -> Parallelism:
        if self.gpus % self.expert:
            raise FieldError(
                "expert",
                f"{self.expert} must divide tensor x pipeline x data = {self.gpus} "
                "(the GPUs of one replica)",
            )
        return self


class Placement(Spec):
    """Where replicas may go and what happens when they do not fit."""

    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(self.rackPool) || "
                    "!format.dns1123Label().validate(self.rackPool).hasValue()",
                    f"rackPool must name a RackPool: at most 63 {NAME_RULES[DNS_1123]}",
                    ".rackPool",
                )
            ]
        }
    }

    rack_pool: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="The RackPool to place into; absent: device-plugin mode on ordinary nodes.",
    )
    replica_scope: Scope = Field(
        default="Rack",
        description="The unit that must hold a whole replica: Node, Rack, Block (needs the "
        "pool's blockLabel) or Any.",
    )
    exclusive: bool = Field(
        default=False, description="Each replica takes whole racks that nothing else shares."
    )
    spread: Literal["Spread", "Pack"] = Field(
        default="Spread",
        description="Spread: replicas on distinct racks where possible. Pack: best fit only.",
    )
    fallback: Literal["DevicePlugin", "Never"] = Field(
        default="DevicePlugin",
        description="When the pool cannot hold a replica: run it in device-plugin mode on "
        "ordinary nodes, or leave it pending.",
    )
    colocate: Colocate | None = Field(
        default=None,
        description="With spec.roles: the unit that holds every role replica of one serving "
        "group, placed whole or not at all: Rack (the default with roles), Block (needs the "
        "pool's blockLabel), or None (each role replica placed on its own). Only with spec.roles.",
    )

    @field_validator("rack_pool")
    @classmethod
    def _pool_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(DNS_1123, value):
            raise ValueError(f"{value!r} must be at most 63 {NAME_RULES[DNS_1123]}")
        return value


Precision = Literal["fp4", "nvfp4", "fp6", "fp8", "int4", "int8", "bf16", "fp16", "fp32"]

# Bytes one weight takes at each precision: what the weights of a model need in GPU memory.
BYTES_PER_PARAMETER: dict[str, Decimal] = {
    "fp4": Decimal("0.5"), "nvfp4": Decimal("0.5"), "int4": Decimal("0.5"),
    "fp6": Decimal("0.75"),
    "fp8": Decimal(1), "int8": Decimal(1),
    "bf16": Decimal(2), "fp16": Decimal(2),
    "fp32": Decimal(4),
}  # fmt: skip
assert set(BYTES_PER_PARAMETER) == set(get_args(Precision))

# What an inference engine holds on every GPU beside weights and KV cache: CUDA context,
# activations, CUDA graphs and communication buffers. A conservative figure for vLLM and SGLang.
RUNTIME_OVERHEAD_MIB_PER_GPU = 2048
MIB = 2**20


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """The GPU memory one replica needs, in MiB: weights, KV cache and runtime overhead."""

    weights_mib: int
    kv_cache_mib: int
    overhead_mib: int
    gpus: int
    precision: str

    @property
    def total_mib(self) -> int:
        return self.weights_mib + self.kv_cache_mib + self.overhead_mib

    @property
    def per_gpu_mib(self) -> int:
        """What each GPU must hold: the replica's need shared evenly, rounded up."""
        return -(-self.total_mib // self.gpus)


class Model(Spec):
    """What is served; with parameters and precision, placement checks that it fits in memory."""

    name: str = Field(
        min_length=1, max_length=253, description="The model, e.g. deepseek-ai/DeepSeek-R1."
    )
    parameters_billions: float | None = Field(
        default=None, gt=0, le=1000000, description="Parameters, in billions."
    )
    precision: Precision | None = Field(
        default=None,
        description="Precision of the served weights: bytes per parameter fp4/nvfp4/int4 0.5, "
        "fp6 0.75, fp8/int8 1, bf16/fp16 2, fp32 4.",
    )
    kv_cache_gib: float | None = Field(
        default=None,
        ge=0,
        le=10000000,
        alias="kvCacheGiB",
        description="GPU memory for the KV cache of one replica, in GiB (default 0). Placement "
        "needs weights + KV cache + 2 GiB of runtime overhead per GPU.",
    )

    def need(self, gpus: int, precision: str | None = None) -> MemoryNeed | None:
        """The replica's memory need on `gpus` GPUs (at another precision if given); None
        without parameters or precision."""
        precision = precision or self.precision
        if self.parameters_billions is None or precision is None:
            return None
        weights = Decimal(str(self.parameters_billions)) * 10**9 * BYTES_PER_PARAMETER[precision]
        kv = Decimal(str(self.kv_cache_gib or 0)) * 1024
        return MemoryNeed(
            weights_mib=_ceil(weights / MIB),
            kv_cache_mib=_ceil(kv),
            overhead_mib=RUNTIME_OVERHEAD_MIB_PER_GPU * gpus,
            gpus=gpus,
            precision=precision,
        )


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


# A PodTemplateSpec kept whole; `spec.containers` is declared so that the CRD can check it is not
# empty.
TEMPLATE_SCHEMA: dict[str, Any] = {
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "metadata": {
            "type": "object",
            "description": "Labels and annotations for every pod.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
        "spec": {
            "type": "object",
            "description": "A PodSpec.",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "containers": {
                    "type": "array",
                    "description": "The containers: at least one.",
                    "items": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    },
                }
            },
        },
    },
}


def _containers_rule(field: str) -> dict[str, Any]:
    return cel(
        f"has(self.{field}.spec) && has(self.{field}.spec.containers) && "
        f"size(self.{field}.spec.containers) > 0",
        "a pod template needs at least one container",
        f".{field}.spec.containers",
    )


def _check_containers(value: dict[str, Any] | None, what: str) -> None:
    if value is None:
        return
    containers = (value.get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        raise FieldError("spec.containers", f"{what} needs at least one container")


class Role(Spec):
    """One role of a serving group (prefill, decode): its replicas in each group and their shape."""

    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!has(self.gpusPerPod) || (self.parallelism.tensor * self.parallelism.pipeline"
                    " * self.parallelism.data) % self.gpusPerPod == 0",
                    "gpusPerPod must divide the role's tensor x pipeline x data "
                    "(the GPUs of one of its replicas)",
                    ".gpusPerPod",
                ),
                cel(
                    "self.replicas >= 1",
                    "a role needs at least one replica in each serving group",
                    ".replicas",
                ),
                _containers_rule("template"),
            ]
        }
    }

    name: str = Field(
        min_length=1,
        max_length=MAX_ROLE_NAME_LENGTH,
        pattern=DNS_1035,
        description="The role, e.g. prefill or decode: a DNS label of at most 15 characters, "
        "unique among the roles. It names the role's pods, its Service `<name>-<role>` and the "
        "variable `RACKSCALE_<ROLE>_LEADERS`.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=MAX_ROLE_REPLICAS,
        description="Replicas of this role in each serving group (spec.replicas counts groups, "
        "so scaling keeps the ratio between roles).",
    )
    parallelism: Parallelism = Field(
        default_factory=Parallelism,
        json_schema_extra={"default": {"tensor": 1, "pipeline": 1, "data": 1, "expert": 1}},
    )
    gpus_per_pod: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="GPUs per pod of this role; default: the GPUs of one node of the chosen nodes.",
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="The port the role's leaders serve on; default: spec.port.",
    )
    template: dict[str, Any] = Field(
        description="A PodTemplateSpec for the role's pods (its leaders' when workerTemplate "
        "is set).",
        json_schema_extra=TEMPLATE_SCHEMA,
    )
    worker_template: dict[str, Any] | None = Field(
        default=None,
        description="A PodTemplateSpec for shards 1..n of each replica of the role, as "
        "spec.workerTemplate.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @model_validator(mode="after")
    def _pods_divide_replica(self) -> Role:
        gpus = self.parallelism.gpus
        if self.gpus_per_pod is not None and gpus % self.gpus_per_pod:
            raise FieldError(
                "gpusPerPod",
                f"{self.gpus_per_pod} must divide the role's tensor x pipeline x data = {gpus} "
                "(the GPUs of one of its replicas)",
            )
        _check_containers(self.template, "a pod template")
        _check_containers(self.worker_template, "a worker pod template")
        return self


# A role replica's number in the deployment: `group x 1000 + role position x 100 + index`. It
# depends on nothing but the replica's own identity, so scaling one role renumbers no other.
GROUP_NUMBERS = 1000
ROLE_NUMBERS = 100
assert MAX_ROLES * ROLE_NUMBERS <= GROUP_NUMBERS
assert MAX_ROLE_REPLICAS < ROLE_NUMBERS


@dataclass(frozen=True, slots=True)
class RoleReplica:
    """One replica of a role in one serving group. `replica` numbers it in the deployment
    (`group x 1000 + role position x 100 + index`), unique and stable while roles are scaled:
    it is `rackscale.dev/replica`."""

    group: int
    role: str
    index: int  # 0 .. the role's replicas - 1, inside the group
    replica: int


# What makes no sense beside spec.roles, each refused naming its field (the models say the same).
ROLE_RULES: list[dict[str, Any]] = [
    cel(
        "!has(self.roles) || self.roles.all(r, self.roles.exists_one(s, s.name == r.name))",
        "role names must be unique",
        ".roles",
    ),
    cel(
        "!has(self.roles) || (self.parallelism.tensor == 1 && self.parallelism.pipeline == 1 "
        "&& self.parallelism.data == 1 && self.parallelism.expert == 1)",
        "with spec.roles, parallelism is set per role (spec.roles[].parallelism)",
        ".parallelism",
    ),
    cel(
        "!has(self.roles) || !has(self.gpusPerPod)",
        "with spec.roles, gpusPerPod is set per role (spec.roles[].gpusPerPod)",
        ".gpusPerPod",
    ),
    cel(
        "!has(self.roles) || !has(self.template) || "
        "(!has(self.template.spec) && !has(self.template.metadata))",
        "with spec.roles, each role has its own template (spec.roles[].template)",
        ".template",
    ),
    cel(
        "!has(self.roles) || !has(self.workerTemplate)",
        "with spec.roles, workerTemplate is set per role (spec.roles[].workerTemplate)",
        ".workerTemplate",
    ),
    cel(
        "!has(self.serviceRole) || (has(self.roles) && "
        "self.roles.exists(r, r.name == self.serviceRole))",
        "serviceRole must name one of spec.roles",
        ".serviceRole",
    ),
    cel(
        "!has(self.roles) || !has(self.placement.exclusive) || !self.placement.exclusive",
        "exclusive is not available with spec.roles yet: a serving group shares its racks",
        ".placement.exclusive",
    ),
    cel(
        "!has(self.placement.colocate) || has(self.roles)",
        "colocate places the roles of a serving group together: it needs spec.roles",
        ".placement.colocate",
    ),
]


# The Gateway API Inference Extension's names for what an InferencePool references (its v1 API,
# inference.networking.k8s.io): the same bounds, so the pool rackscale writes is never refused.
DNS_1123_SUBDOMAIN = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KIND_NAME = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
PORT_RULE = "port is needed when kind is Service (the default)"


class PortNumber(Spec):
    """A port, as the InferencePool API writes one."""

    number: int = Field(ge=1, le=65535, description="The port number.")


class EndpointPickerRef(Spec):
    """The endpoint picker (EPP) the InferencePool names: the extension a gateway asks which
    endpoint of the pool takes each request. Fields as InferencePool v1 names them."""

    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.kind != 'Service' || has(self.port)", PORT_RULE, ".port")
            ]
        }
    }

    group: str = Field(
        default="",
        max_length=253,
        pattern=DNS_1123_SUBDOMAIN,
        description="API group of the picker's object; empty (the default) for the core group.",
    )
    kind: str = Field(
        default="Service",
        min_length=1,
        max_length=63,
        pattern=KIND_NAME,
        description="Kind of the picker's object; default Service.",
    )
    name: str = Field(
        min_length=1,
        max_length=253,
        description="Name of the picker's object, in the deployment's namespace.",
    )
    port: PortNumber | None = Field(
        default=None,
        description="The port the picker listens on (its gRPC ext-proc port); needed when kind "
        "is Service.",
    )
    failure_mode: Literal["FailOpen", "FailClose"] = Field(
        default="FailClose",
        description="What the gateway does when the picker does not answer: FailClose refuses "
        "the request (the default), FailOpen sends it on without the picker's choice.",
    )

    @model_validator(mode="after")
    def _port_for_services(self) -> EndpointPickerRef:
        if self.kind == "Service" and self.port is None:
            raise FieldError("port", PORT_RULE)
        return self


class InferencePoolSpec(Spec):
    """An InferencePool (Gateway API Inference Extension, v1) that fronts the deployment's
    serving pods for an inference gateway."""

    endpoint_picker_ref: EndpointPickerRef = Field(
        description="The endpoint picker the pool references: name and port (kind Service by "
        "default), as the InferencePool API names it.",
    )


class InferenceDeploymentSpec(Spec):
    """What the user asks for."""

    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.gpusPerPod) || (self.parallelism.tensor * "
                    "self.parallelism.pipeline * self.parallelism.data) % self.gpusPerPod == 0",
                    "message": "gpusPerPod must divide tensor x pipeline x data "
                    "(the GPUs of one replica)",
                    "fieldPath": ".gpusPerPod",
                },
                {
                    "rule": "!has(self.placement) || !has(self.placement.exclusive) || "
                    "!self.placement.exclusive || has(self.placement.rackPool)",
                    "message": "exclusive needs placement.rackPool: only racks can be exclusive",
                    "fieldPath": ".placement.exclusive",
                },
                cel(
                    "!has(self.template) || (!has(self.template.spec) && "
                    "!has(self.template.metadata)) || (has(self.template.spec) && "
                    "has(self.template.spec.containers) && "
                    "size(self.template.spec.containers) > 0)",
                    "a pod template needs at least one container",
                    ".template.spec.containers",
                ),
                *ROLE_RULES,
            ]
        }
    }

    replicas: int = Field(
        default=1,
        ge=0,
        le=10000,
        description="Model replicas; with spec.roles, serving groups (one of each role at its "
        "count).",
    )
    parallelism: Parallelism = Field(
        default_factory=Parallelism,
        # The API server checks CEL rules against defaults: give every key the rule reads.
        json_schema_extra={"default": {"tensor": 1, "pipeline": 1, "data": 1, "expert": 1}},
    )
    gpus_per_pod: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="GPUs per pod (shard); default: the GPUs of one node of the chosen nodes.",
    )
    placement: Placement = Field(default_factory=Placement, json_schema_extra={"default": {}})
    model: Model | None = None
    port: int = Field(default=8000, ge=1, le=65535, description="The port the leader serves on.")
    template: dict[str, Any] = Field(
        default_factory=dict,
        description="A PodTemplateSpec: the user's containers.",
        json_schema_extra=TEMPLATE_SCHEMA,
    )
    worker_template: dict[str, Any] | None = Field(
        default=None,
        description="A PodTemplateSpec for shards 1..n (the workers), as LeaderWorkerSet's "
        "workerTemplate: spec.template is then the leader's (shard 0). Absent: every shard is "
        "rendered from spec.template, workers without its readiness, liveness and startup "
        "probes (they probe the leader's server on spec.port).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    roles: list[Role] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ROLES,
        description="Disaggregated serving: the roles of a serving group (for example prefill "
        "and decode), each with its own replicas per group, parallelism and template. Absent: "
        "one role, the deployment itself. With roles, parallelism, gpusPerPod, template and "
        "workerTemplate are set per role.",
    )
    service_role: str | None = Field(
        default=None,
        description="With spec.roles: the role whose leaders the Service `<name>` selects; "
        "default: the role named decode, else the last role.",
    )
    inference_pool: InferencePoolSpec | None = Field(
        default=None,
        description="An InferencePool `<name>` (inference.networking.k8s.io/v1) for an "
        "inference gateway, selecting the pods that serve requests (the leaders; with "
        "spec.roles, those of the serving role) on the port they serve on. Absent: none.",
    )

    @property
    def gpus_per_replica(self) -> int:
        """GPUs of one replica; with roles, of one serving group (all its role replicas)."""
        if self.roles:
            return sum(r.replicas * r.parallelism.gpus for r in self.roles)
        return self.parallelism.gpus

    @property
    def serving_role(self) -> str | None:
        """The role the Service `<name>` serves: spec.serviceRole, else decode, else the last."""
        if not self.roles:
            return None
        names = [r.name for r in self.roles]
        return self.service_role or ("decode" if "decode" in names else names[-1])

    @property
    def colocation(self) -> Colocate | None:
        """What holds a serving group: placement.colocate, Rack by default; None without roles."""
        if not self.roles:
            return None
        return self.placement.colocate or "Rack"

    @property
    def group_size(self) -> int:
        """Role replicas in one serving group."""
        return sum(r.replicas for r in self.roles or ())

    @property
    def replica_count(self) -> int:
        """Replicas the engine places and the pods number: `replicas`, or with roles the role
        replicas of every serving group."""
        return self.replicas * (self.group_size or 1)

    def role(self, name: str) -> Role:
        for role in self.roles or ():
            if role.name == name:
                return role
        raise KeyError(name)

    def role_replicas(self, group: int) -> list[RoleReplica]:
        """The role replicas of one serving group, roles in spec order."""
        return [
            RoleReplica(group, role.name, index, self.role_number(group, position, index))
            for position, role in enumerate(self.roles or ())
            for index in range(role.replicas)
        ]

    @staticmethod
    def role_number(group: int, position: int, index: int) -> int:
        """The deployment-wide number of replica `index` of the role at `position`."""
        return group * GROUP_NUMBERS + position * ROLE_NUMBERS + index

    def role_replica(self, replica: int) -> RoleReplica:
        """Which group, role and index the deployment-wide replica number `replica` is (the
        index may lie beyond the role's replicas: a replica scaled away)."""
        group, rest = divmod(replica, GROUP_NUMBERS)
        position, index = divmod(rest, ROLE_NUMBERS)
        return RoleReplica(group, (self.roles or [])[position].name, index, replica)

    def group_of(self, replica: int) -> int:
        """The serving group of role replica `replica`."""
        return replica // GROUP_NUMBERS

    def replica_numbers(self) -> list[int]:
        """Every wanted replica's number: `0 .. replicas - 1`, or with roles every role
        replica of every serving group."""
        if not self.roles:
            return list(range(self.replicas))
        return [m.replica for g in range(self.replicas) for m in self.role_replicas(g)]

    def wants(self, replica: int) -> bool:
        """Whether replica number `replica` is wanted by the spec."""
        if not self.roles:
            return 0 <= replica < self.replicas
        group, rest = divmod(replica, GROUP_NUMBERS)
        position, index = divmod(rest, ROLE_NUMBERS)
        roles = self.roles
        return group < self.replicas and position < len(roles) and index < roles[position].replicas

    @model_validator(mode="after")
    def _roles_make_sense(self) -> InferenceDeploymentSpec:
        if self.roles is None:
            if self.service_role is not None:
                raise FieldError("serviceRole", "serviceRole must name one of spec.roles")
            if self.placement.colocate is not None:
                raise FieldError(
                    "placement.colocate",
                    "colocate places the roles of a serving group together: it needs spec.roles",
                )
            return self
        names = [r.name for r in self.roles]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise FieldError("roles", f"role names must be unique: {', '.join(twice)} given twice")
        if self.placement.exclusive:
            raise FieldError(
                "placement.exclusive",
                "exclusive is not available with spec.roles yet: a serving group shares its racks",
            )
        beside = {
            "parallelism": self.parallelism != Parallelism(),
            "gpusPerPod": self.gpus_per_pod is not None,
            "template": bool(self.template),
            "workerTemplate": self.worker_template is not None,
        }
        for name, given in beside.items():
            if given:
                raise FieldError(
                    name, f"with spec.roles, {name} is set per role (spec.roles[].{name})"
                )
        if self.service_role is not None and self.service_role not in names:
            raise FieldError(
                "serviceRole", f"serviceRole must name one of spec.roles ({', '.join(names)})"
            )
        return self

    @model_validator(mode="after")
    def _pods_divide_replica(self) -> InferenceDeploymentSpec:
        gpus = self.parallelism.gpus
        if self.gpus_per_pod is not None and gpus % self.gpus_per_pod:
            raise FieldError(
                "gpusPerPod",
                f"{self.gpus_per_pod} must divide tensor x pipeline x data = {gpus} "
                "(the GPUs of one replica)",
            )
        if self.placement.exclusive and self.placement.rack_pool is None:
            raise FieldError(
                "placement.exclusive", "needs placement.rackPool: only racks can be exclusive"
            )
        return self

    @field_validator("template")
    @classmethod
    def _template_has_containers(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            return value
        containers = (value.get("spec") or {}).get("containers")
        if not isinstance(containers, list) or not containers:
            raise FieldError("spec.containers", "a pod template needs at least one container")
        return value

    @field_validator("worker_template")
    @classmethod
    def _worker_template_has_containers(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        containers = (value.get("spec") or {}).get("containers")
        if not isinstance(containers, list) or not containers:
            raise FieldError(
                "spec.containers", "a worker pod template needs at least one container"
            )
        return value


class ReplicaPod(Status):
    """One shard of a placed replica."""

    name: str = Field(description="The pod, `<deployment>-<replica>-<shard>`.")
    node: str | None = Field(
        default=None, description="Its node; in device-plugin mode empty until it is bound."
    )
    gpus: int = Field(description="GPUs the pod requests.")
    first_rank: int = Field(description="Rank of its first GPU in the replica's world.")


class ReplicaPlacement(Status):
    """Where one replica went."""

    replica: int = Field(description="The replica index.")
    group: int | None = Field(
        default=None, description="With spec.roles: the replica's serving group."
    )
    role: str | None = Field(default=None, description="With spec.roles: the replica's role.")
    mode: Literal["Rack", "DevicePlugin"] = Field(
        description="Rack: pinned to nodes of the pool. DevicePlugin: kube-scheduler places it."
    )
    racks: list[str] = Field(default_factory=list, description="Its racks (Rack mode).")
    pods: list[ReplicaPod] = Field(default_factory=list, description="Its pods, shard order.")
    compute_domain: str | None = Field(
        default=None,
        description="Its NVIDIA ComputeDomain (`<name>-<replica>`), when its pods span trays.",
    )
    compute_domain_ready: bool | None = Field(
        default=None,
        description="Whether that ComputeDomain reports Ready; the replica is not ready before.",
    )
    gpu_memory_mib: int | None = Field(
        default=None,
        alias="gpuMemoryMiB",
        description="Summed memory of its GPUs in MiB (Rack mode, when every node's is known).",
    )


Phase = Literal["Pending", "Placing", "Placed", "Ready", "Degraded", "Failed"]
Mode = Literal["Rack", "DevicePlugin", "Mixed"]


class InferenceDeploymentStatus(Status):
    """What the operator did and sees."""

    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status was computed for."
    )
    phase: Phase = Field(
        default="Pending",
        description="Pending: nothing placed, the engine says why. Placing. Placed: all placed, "
        "not all ready. Ready. Degraded: a replica restarting or unplaced while others run. "
        "Failed: a spec the operator cannot use.",
    )
    mode: Mode | None = Field(
        default=None, description="The replicas' common mode, or Mixed when they differ."
    )
    replicas: int = Field(
        default=0,
        description="Replicas that exist now (those with pods): the scale subresource's count.",
    )
    selector: str = Field(
        default="",
        description="The label selector of the leader pods (shard 0 of each replica), as a "
        "string: what a HorizontalPodAutoscaler reads through the scale subresource.",
    )
    placed_replicas: int = Field(default=0, description="Replicas whose pods all exist.")
    ready_replicas: int = Field(default=0, description="Replicas whose pods are all Ready.")
    ready: str = Field(default="0/0", description="readyReplicas/replicas, for kubectl get.")
    gpus: int = Field(default=0, description="GPUs held by the placed replicas.")
    racks: list[str] = Field(default_factory=list, description="Racks the replicas use.")
    memory_needed_mib: int | None = Field(
        default=None,
        alias="memoryNeededMiB",
        description="GPU memory one replica needs in MiB: weights (spec.model) + KV cache + "
        "runtime overhead; compare each placement's gpuMemoryMiB.",
    )
    cost_per_hour: str | None = Field(
        default=None,
        description="What the placed replicas' GPUs cost per hour (RackPool spec.pricing; "
        "device-plugin GPUs only with the operator's ordinary-node price), a decimal string.",
    )
    currency: str | None = Field(default=None, description="The currency of costPerHour.")
    rack_list: str = Field(default="", description="The same racks, comma-separated: kubectl get.")
    placements: list[ReplicaPlacement] = Field(
        default_factory=list, description="Where each replica went."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Placed, Available, Progressing, Degraded, and Ready, Reconciling, Stalled "
        "for kstatus (docs/operator.md, docs/gitops.md); ComputeDomains when a replica spans "
        "trays of a pool that uses them.",
        json_schema_extra=CONDITIONS_LIST,
    )


class InferenceDeployment(BaseModel):
    """An InferenceDeployment object: namespaced, short name `idep`."""

    model_config = {"populate_by_name": True, "extra": "ignore"}

    api_version: Literal["rackscale.dev/v1alpha1"] = Field(
        default="rackscale.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["InferenceDeployment"] = "InferenceDeployment"
    metadata: dict[str, Any]
    spec: InferenceDeploymentSpec = Field(default_factory=InferenceDeploymentSpec)
    status: InferenceDeploymentStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _named(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_name(value, max_length=MAX_NAME_LENGTH, pattern=DNS_1035)

    @model_validator(mode="after")
    def _role_names_fit(self) -> InferenceDeployment:
        for role in self.spec.roles or ():
            if len(self.name) + len(role.name) > MAX_NAME_AND_ROLE_LENGTH:
                raise FieldError("metadata.name", NAME_AND_ROLE_RULE)
        return self

    def role_view(self, role: str) -> InferenceDeployment:
        """The deployment as the engine sees one role: its replicas (over all groups), shape,
        templates and port, with the deployment's name, namespace, placement and model. Each
        role replica is then placed under every per-replica rule, like a replica of its own."""
        spec = self.spec
        got = spec.role(role)
        view = InferenceDeploymentSpec(
            replicas=spec.replicas * got.replicas,
            parallelism=got.parallelism,
            gpus_per_pod=got.gpus_per_pod,
            placement=spec.placement.model_copy(update={"colocate": None}),
            model=spec.model,
            port=got.port or spec.port,
            template=got.template,
            worker_template=got.worker_template,
        )
        return InferenceDeployment(metadata=self.metadata, spec=view)

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")

    @property
    def key(self) -> str:
        """`namespace/name`: how reasons and pool status name the deployment."""
        return f"{self.namespace}/{self.name}"
