"""The leader Lease as data: its settings, what a Lease says, and what a candidate writes.

Pure: no API calls, no clock of its own (the caller gives `now`); controller/leader.py does the
I/O. Also what `rackscale run` reads for its flags' defaults, without importing a client.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

LEASE_NAME = "rackscale"
LEASE_DURATION = 10.0  # seconds a Lease holds without renewal
RENEW_EVERY = 2.0  # seconds between a leader's renewals
RETRY_EVERY = 2.0  # seconds between a standby's attempts
MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # a Lease's acquireTime and renewTime (metav1.MicroTime)


def default_identity(environ: Mapping[str, str]) -> str:
    """The pod's name ($POD_NAME, from the downward API) or the host's, its pid and a random
    suffix: a container restarted with the same name and pid 1 is still a new candidate."""
    name = environ.get("POD_NAME") or socket.gethostname()
    return f"{name}_{os.getpid()}_{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Which Lease, who asks for it, and how often; `rackscale run` sets them from its flags."""

    name: str = LEASE_NAME
    namespace: str = "default"
    identity: str = "rackscale"
    duration: float = LEASE_DURATION
    renew_every: float = RENEW_EVERY
    retry_every: float = RETRY_EVERY

    def __post_init__(self) -> None:
        if self.renew_every <= 0 or self.retry_every <= 0:
            raise ValueError("the lease's renew and retry periods must be positive")
        if self.duration < 3 * self.renew_every:
            raise ValueError(
                f"lease duration {self.duration:g}s must be at least 3 x the renew period "
                f"({3 * self.renew_every:g}s): a leader must be able to miss a renewal"
            )

    @property
    def renew_deadline(self) -> float:
        """Seconds after its last renewal a leader that cannot renew stops acting: two renew
        periods before the Lease expires for the others."""
        return self.duration - 2 * self.renew_every

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LeaseSettings:
        """Defaults, overridden by RACKSCALE_LEASE_NAME, RACKSCALE_LEASE_NAMESPACE (else
        $POD_NAMESPACE, else `default`) and RACKSCALE_LEASE_DURATION."""
        return cls(
            name=environ.get("RACKSCALE_LEASE_NAME") or LEASE_NAME,
            namespace=lease_namespace(environ, environ.get("RACKSCALE_LEASE_NAMESPACE")),
            identity=default_identity(environ),
            duration=float(environ.get("RACKSCALE_LEASE_DURATION") or LEASE_DURATION),
        )


def lease_namespace(environ: Mapping[str, str], given: str | None = None) -> str:
    """The namespace given, else the pod's own ($POD_NAMESPACE), else `default`."""
    return given or environ.get("POD_NAMESPACE") or "default"


def election_enabled(environ: Mapping[str, str]) -> bool:
    """RACKSCALE_LEADER_ELECTION: on unless it says false, 0, no or off."""
    value = environ.get("RACKSCALE_LEADER_ELECTION", "true").strip().lower()
    return value not in ("false", "0", "no", "off")


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a Lease says: who holds it, since when, until when."""

    holder: str | None
    duration: float
    renewed: datetime | None
    acquired: datetime | None
    transitions: int
    version: str

    def expired(self, now: datetime) -> bool:
        return self.renewed is None or self.renewed + timedelta(seconds=self.duration) < now

    def free(self, now: datetime) -> bool:
        """Nobody holds it: released, never held, or not renewed in time."""
        return not self.holder or self.expired(now)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    stamp = datetime.fromisoformat(value)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def parse_lease(body: Mapping[str, Any]) -> LeaseRecord:
    spec = body.get("spec") or {}
    return LeaseRecord(
        holder=spec.get("holderIdentity") or None,
        duration=float(spec.get("leaseDurationSeconds") or 0),
        renewed=_time(spec.get("renewTime")),
        acquired=_time(spec.get("acquireTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        version=str((body.get("metadata") or {}).get("resourceVersion") or ""),
    )


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(MICROTIME)


class Step(Enum):
    """What a candidate does with the Lease it read."""

    CREATE = "create"  # there is no Lease yet
    ACQUIRE = "acquire"  # free or expired: take it
    RENEW = "renew"  # ours: renew it
    STANDBY = "standby"  # someone else holds it


def decide(record: LeaseRecord | None, identity: str, now: datetime) -> Step:
    if record is None:
        return Step.CREATE
    if record.holder == identity:
        return Step.RENEW
    return Step.ACQUIRE if record.free(now) else Step.STANDBY


def lease_body(
    settings: LeaseSettings, record: LeaseRecord | None, step: Step, now: datetime
) -> dict[str, Any]:
    """The Lease to write for `step`: ours from now, with the resourceVersion that was read."""
    acquired = record.acquired if step is Step.RENEW and record and record.acquired else now
    transitions = record.transitions if record else 0
    if step is Step.ACQUIRE:
        transitions += 1
    metadata: dict[str, Any] = {"name": settings.name, "namespace": settings.namespace}
    if record is not None:
        metadata["resourceVersion"] = record.version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": settings.identity,
            "leaseDurationSeconds": max(1, round(settings.duration)),
            "acquireTime": stamp(acquired),
            "renewTime": stamp(now),
            "leaseTransitions": transitions,
        },
    }


def released_body(settings: LeaseSettings, record: LeaseRecord, now: datetime) -> dict[str, Any]:
    """The Lease given back on a clean stop: no holder, so a standby takes it at once."""
    body = lease_body(settings, record, Step.RENEW, now)
    del body["spec"]["holderIdentity"]
    return body
