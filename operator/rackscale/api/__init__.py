"""The two custom resources, RackPool and InferenceDeployment: models, validation, CRDs."""

from rackscale.api.common import API_VERSION, GROUP, VERSION, Condition, FieldError, format_errors
from rackscale.api.inferencedeployment import (
    InferenceDeployment,
    InferenceDeploymentSpec,
    InferenceDeploymentStatus,
    Parallelism,
    Placement,
)
from rackscale.api.rackpool import LabelSelector, RackPool, RackPoolSpec, RackPoolStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "FieldError",
    "InferenceDeployment",
    "InferenceDeploymentSpec",
    "InferenceDeploymentStatus",
    "LabelSelector",
    "Parallelism",
    "Placement",
    "RackPool",
    "RackPoolSpec",
    "RackPoolStatus",
    "format_errors",
]
