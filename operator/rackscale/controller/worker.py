"""The operator's one reconcile loop: woken by watch events, by a timer falling due, or by its
tick when quiet. A pass with nothing dirty costs next to nothing, so the loop ticks every
`TICK_SECONDS`, and each completed pass is what liveness counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from rackscale.controller import metrics, readiness
from rackscale.controller.liveness import Loop
from rackscale.controller.reconcile import Reconciler

log = logging.getLogger("rackscale.worker")

TICK_SECONDS = 10.0  # the longest the loop sleeps


def period(resync: float) -> float:
    """The longest the loop goes without a pass: what liveness bounds are counted in."""
    return min(resync, TICK_SECONDS)


class Worker:
    """Runs passes; bursts of events make one pass, not many."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.wake = asyncio.Event()
        self.passes = 0
        self.last_pass: float | None = None
        self.last_duration = 0.0
        self._last_full = time.monotonic()
        self.started = time.monotonic()
        self.loaded_at: float | None = None  # when the cache was loaded

    def loaded(self) -> None:
        """The cache has its first full listing: a standby is ready from now on."""
        self.loaded_at = time.monotonic()
        readiness.WATCHING.set()

    def _timeout(self) -> float:
        due = self.reconciler.next_due()
        full = self._last_full + self.reconciler.options.resync - time.monotonic()
        return max(min(TICK_SECONDS, full, *([due] if due is not None else [])), 0.0)

    async def run(self) -> None:
        cache = self.reconciler.cache
        while not cache.loaded:
            await self.wake.wait()
            self.wake.clear()
        log.info("cluster cache loaded; reconciling")
        while True:
            await self.once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self._timeout())
            await asyncio.sleep(self.reconciler.options.debounce)
            self.wake.clear()

    async def once(self) -> None:
        """One pass: every deployment when the resync is due, else what changed."""
        if time.monotonic() - self._last_full >= self.reconciler.options.resync:
            self.reconciler.cache.mark(None)
            self._last_full = time.monotonic()
        started = time.monotonic()
        busy = self.reconciler.pending
        try:
            await self.reconciler.reconcile_all()
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.RECONCILE_ERRORS.labels(scope="pass").inc()
            log.exception("reconcile pass failed; retrying on the next event or tick")
            self.reconciler.cache.mark(None)
        self.passes += 1
        self.last_pass = time.monotonic()
        self.last_duration = self.last_pass - started
        metrics.RECONCILE_PASSES.inc()
        readiness.PASSED.set()
        if busy:
            metrics.RECONCILE_SECONDS.observe(self.last_duration)
            log.debug("reconcile pass %d took %.3fs", self.passes, self.last_duration)

    def loop(self) -> Loop:
        """For the liveness probe: when the loop last turned."""
        return Loop(self.started, self.loaded_at, self.last_pass, self.passes)
