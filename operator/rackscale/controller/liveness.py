"""What the liveness probe answers: live while the loop this operator runs keeps turning.

kopf's `/healthz` runs the `@kopf.on.probe` handlers; one that raises `kopf.PermanentError`
makes kopf answer 500 at once (a plain exception would be retried after a back-off first), and
the kubelet restarts the pod after its failure threshold. The leader is live while it completes
reconcile passes: the last one (or its takeover, or the binding of its cluster view, whichever
came last) is at most `bound` seconds old. Before its cluster view is bound it is live: kopf is
still listing the cluster, and readiness says so. A standby is live while its lease loop runs:
its last attempt at the Lease is at most `bound` seconds old. An operator that lost the Lease
is never live again: it has stopped acting and must be restarted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rackscale.controller.leader import Leadership


def default_bound(period: float) -> float:
    """Seconds without a pass before the leader counts as wedged: six loop periods (the longest
    the loop sleeps), at least 60."""
    return max(60.0, 6 * period)


def bound_from(environ: Mapping[str, str], period: float) -> float:
    """RACKSCALE_LIVENESS_BOUND, else the default for this loop period."""
    value = environ.get("RACKSCALE_LIVENESS_BOUND")
    return float(value) if value else default_bound(period)


class Unhealthy(Exception):
    """The loop has not turned within the bound; the message says which and for how long."""


@dataclass(frozen=True, slots=True)
class Loop:
    """What the probe reads of the reconcile loop (monotonic seconds)."""

    started: float  # the operator started
    bound_at: float | None  # its cluster view was bound
    last_pass: float | None  # its last reconcile pass completed
    passes: int = 0


def _age(now: float, *stamps: float | None) -> float:
    return now - max(s for s in stamps if s is not None)


def check(loop: Loop, leadership: Leadership, *, bound: float, now: float) -> dict[str, Any]:
    """The probe's report when live; raises Unhealthy when not."""
    report: dict[str, Any] = {**leadership.status(), "passes": loop.passes}
    if leadership.lost:
        raise Unhealthy("the leader Lease was lost: this operator stopped acting")
    if leadership.election:
        lease_age = _age(now, loop.started, leadership.last_attempt)
        report["secondsSinceLeaseAttempt"] = round(lease_age, 1)
        if lease_age > bound:
            raise Unhealthy(f"the lease loop has not run for {lease_age:.0f}s (bound {bound:g}s)")
    if not leadership.leading:
        return report
    if loop.bound_at is None:
        report["waiting"] = "for kopf to fill the cluster view"
        return report
    pass_age = _age(now, loop.bound_at, leadership.leading_since, loop.last_pass)
    report["secondsSinceLastPass"] = round(pass_age, 1)
    if pass_age > bound:
        raise Unhealthy(f"no reconcile pass completed for {pass_age:.0f}s (bound {bound:g}s)")
    return report
