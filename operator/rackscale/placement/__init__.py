"""The pure placement engine: snapshot and deployment in, placements or explained reasons out."""

from rackscale.placement.batch import (
    Batch,
    Beside,
    Placed,
    place,
    place_batch,
    place_deployment,
    place_pass,
    place_together,
)
from rackscale.placement.engine import (
    Decision,
    DeploymentPlan,
    NoRoom,
    Placeable,
    PodPlan,
    ReplicaPlan,
    intended_mode,
    mode_of,
    pass_order,
    place_replica,
)
from rackscale.placement.ledger import Reservation
from rackscale.placement.reasons import REASON_CODES, Note, Reason, ReasonCode
from rackscale.placement.shape import Shape, shape_of

__all__ = [
    "REASON_CODES",
    "Batch",
    "Beside",
    "Decision",
    "DeploymentPlan",
    "NoRoom",
    "Note",
    "Placeable",
    "Placed",
    "PodPlan",
    "Reason",
    "ReasonCode",
    "ReplicaPlan",
    "Reservation",
    "Shape",
    "intended_mode",
    "mode_of",
    "pass_order",
    "place",
    "place_batch",
    "place_deployment",
    "place_pass",
    "place_replica",
    "place_together",
    "shape_of",
]
