"""Percentiles by the nearest-rank method, the one every figure in the report uses."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The smallest value with at least `q` of the values at or below it (q in 0..1)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
