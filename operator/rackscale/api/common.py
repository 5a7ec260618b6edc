"""Pieces shared by both resources: the API group, model base classes, conditions, errors."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

GROUP = "rackscale.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A Kubernetes label key: optional DNS-subdomain prefix, then a name of at most 63 characters.
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
# A DNS-1035 label: what Service names need, and so what an InferenceDeployment's name needs.
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# What each name pattern asks for, in the words of the refusal (the CRD's and the models').
NAME_RULES = {
    DNS_1035: "lower-case letters, digits and '-', starting with a letter and ending with a "
    "letter or digit",
    DNS_1123: "lower-case letters, digits and '-', starting and ending with a letter or digit",
}


def cel(rule: str, message: str, field_path: str) -> dict[str, Any]:
    """One x-kubernetes-validations entry; the API server's refusal names `field_path`."""
    return {"rule": rule, "message": message, "fieldPath": field_path}


def qualified_name_rule(expr: str) -> str:
    """CEL: `expr` is a label key (optional DNS-subdomain prefix, `/`, a name of at most 63
    characters), checked by Kubernetes' own format library."""
    return f"!format.qualifiedName().validate({expr}).hasValue()"


class FieldError(ValueError):
    """A cross-field rule broken: carries the path of the field to blame, relative to the model."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Spec(BaseModel):
    """Base of user-written models: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Status(BaseModel):
    """Base of operator-written models: camelCase on the wire, unknown fields tolerated."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(Status):
    """A standard Kubernetes condition, as Argo CD, Flux and `kubectl wait` read them."""

    type: str = Field(description="What the condition is about, for example Ready or Placed.")
    status: str = Field(pattern="^(True|False|Unknown)$", description="True, False or Unknown.")
    reason: str = Field(default="", description="One CamelCase word: why it has this status.")
    message: str = Field(default="", description="What happened, for a person to act on.")
    last_transition_time: str | None = Field(
        default=None,
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the condition was computed for."
    )


# `conditions` lists: one entry per type, so server-side apply and kstatus merge them by type.
CONDITIONS_LIST: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class GpuCounts(Status):
    """GPUs of a rack or pool: what the nodes offer, what pods hold, what is left."""

    allocatable: int = Field(default=0, description="GPUs the nodes advertise.")
    allocated: int = Field(
        default=0, description="GPUs requested by non-terminated pods, rackscale's or not."
    )
    free: int = Field(default=0, description="allocatable - allocated, never below 0.")


def format_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """Turn a pydantic error into lines `spec.field.path: message`, one per problem."""
    lines = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        message = item["msg"]
        cause: Any = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            loc = [*loc, cause.field]
            message = str(cause)
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        path = ".".join(p for p in [prefix, *loc] if p)
        lines.append(f"{path}: {message}" if path else message)
    return lines


def check_name(
    metadata: dict[str, Any], max_length: int, pattern: str = DNS_1123
) -> dict[str, Any]:
    """Refuse an object whose `metadata.name` Kubernetes (or the names derived from it) would."""
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError("name", "is required")
    if len(name) > max_length or not re.match(pattern, name):
        raise FieldError("name", f"{name!r} must be at most {max_length} {NAME_RULES[pattern]}")
    return metadata
