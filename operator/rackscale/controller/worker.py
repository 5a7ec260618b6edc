"""The operator's one reconcile loop: woken by watch events, or by a resync tick when quiet."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from rackscale.controller import metrics, readiness
from rackscale.controller.cluster import Index
from rackscale.controller.liveness import Loop
from rackscale.controller.reconcile import Reconciler

log = logging.getLogger("rackscale.worker")


class Worker:
    """Runs passes over every pool and deployment; bursts of events make one pass, not many."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.wake = asyncio.Event()
        self.passes = 0
        self.last_pass: float | None = None
        self.last_duration = 0.0
        self.started = time.monotonic()
        self.bound_at: float | None = None  # when the cluster view was bound

    def observe(
        self,
        nodes: Index,
        pods: Index,
        pools: Index,
        deployments: Index,
        *,
        domains: Index | None = None,
        crds: Index | None = None,
    ) -> None:
        """Called on every watch event: bind kopf's live indices once, then ask for a pass."""
        view = self.reconciler.view
        if not view.bound:
            view.bind(nodes, pods, pools, deployments, domains=domains, crds=crds)
            self.bound_at = time.monotonic()
            readiness.WATCHING.set()
        view.version += 1
        self.wake.set()

    async def run(self) -> None:
        options = self.reconciler.options
        while not self.reconciler.view.bound:
            await self.wake.wait()
            self.wake.clear()
        log.info("cluster view ready; reconciling")
        self.wake.set()  # the first pass at once: what happened before binding needs one
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=options.resync)
            await asyncio.sleep(options.debounce)
            self.wake.clear()
            started = time.monotonic()
            try:
                await self.reconciler.refresh_pools()
                await self.reconciler.reconcile_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.RECONCILE_ERRORS.labels(scope="pass").inc()
                log.exception("reconcile pass failed; retrying on the next event or tick")
            self.passes += 1
            self.last_pass = time.monotonic()
            self.last_duration = self.last_pass - started
            metrics.RECONCILE_PASSES.inc()
            readiness.PASSED.set()
            metrics.RECONCILE_SECONDS.observe(self.last_duration)
            log.debug("reconcile pass %d took %.2fs", self.passes, self.last_duration)

    def loop(self) -> Loop:
        """For the liveness probe: when the loop last turned."""
        return Loop(self.started, self.bound_at, self.last_pass, self.passes)

    def health(self) -> dict[str, Any]:
        """For the liveness probe: passes so far and seconds since the last one."""
        age = None if self.last_pass is None else round(time.monotonic() - self.last_pass, 1)
        return {
            "passes": self.passes,
            "secondsSinceLastPass": age,
            "lastPassSeconds": round(self.last_duration, 2),
        }
