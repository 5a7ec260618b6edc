"""Per-deployment exponential back-off after a pass whose writes failed, as controller-runtime's
work queue rate-limits an item: `BASE_SECONDS` doubling with each failed pass in a row, capped
at `CAP_SECONDS`, reset by a pass with no failure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Key = tuple[str, str]  # (namespace, name)

BASE_SECONDS = 0.005
# controller-runtime's default cap: a raised quota or a freed service range is noticed at most
# this long after it happens (about 17 minutes); a spec edit is reconciled at once.
CAP_SECONDS = 1000.0


def delay(failures: int) -> float:
    """Seconds to wait after `failures` failed passes in a row (1: the first)."""
    if failures <= 0:
        return 0.0
    return min(BASE_SECONDS * 2.0 ** min(failures - 1, 64), CAP_SECONDS)


@dataclass(slots=True)
class Backoff:
    """Deployments whose last pass failed, each with when it may be tried again."""

    clock: Callable[[], float]
    _failures: dict[Key, int] = field(default_factory=dict)
    _due: dict[Key, float] = field(default_factory=dict)

    def failed(self, key: Key) -> float:
        """One more failed pass in a row: when the deployment is due again."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self._due[key] = due = self.clock() + delay(failures)
        return due

    def succeeded(self, key: Key) -> None:
        self._failures.pop(key, None)
        self._due.pop(key, None)

    def holds(self, key: Key) -> bool:
        """Whether the deployment is backing off now: only its own changes reconcile it."""
        due = self._due.get(key)
        return due is not None and due > self.clock()

    def due(self, key: Key) -> float | None:
        return self._due.get(key)

    def failures(self, key: Key) -> int:
        return self._failures.get(key, 0)

    def keep(self, live: Iterable[Key]) -> None:
        """Forget deployments no longer there."""
        live = set(live)
        for key in [k for k in self._failures if k not in live]:
            self.succeeded(key)

    def __len__(self) -> int:
        return len(self._failures)
