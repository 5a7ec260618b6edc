"""The pure placement engine: snapshot and deployment in, placements or explained reasons out."""

from rackscale.placement.engine import (
    Decision,
    DeploymentPlan,
    NoRoom,
    PodPlan,
    ReplicaPlan,
    Waiting,
    pass_order,
    place,
    place_deployment,
    place_pass,
    place_replica,
    place_together,
)
from rackscale.placement.ledger import Reservation
from rackscale.placement.reasons import REASON_CODES, Note, Reason, ReasonCode
from rackscale.placement.shape import Shape, shape_of

__all__ = [
    "REASON_CODES",
    "Decision",
    "DeploymentPlan",
    "NoRoom",
    "Note",
    "PodPlan",
    "Reason",
    "ReasonCode",
    "ReplicaPlan",
    "Reservation",
    "Shape",
    "Waiting",
    "pass_order",
    "place",
    "place_deployment",
    "place_pass",
    "place_replica",
    "place_together",
    "shape_of",
]
