"""The machine and the versions a benchmark ran with, so its figures can be read in context."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        return None
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _kubernetes() -> str | None:
    try:
        from e2e import cluster

        return cluster.pinned_kubernetes_version()
    except Exception:  # the control plane is optional for most parts
        return None


def describe() -> dict[str, Any]:
    """nproc, memory, load average, platform and versions, read now."""
    return {
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "rackscale_commit": _commit(),
        "kubernetes": _kubernetes(),
        "packages": {
            p: _version(p) for p in ("rackscale", "kopf", "kubernetes", "ortools", "matplotlib")
        },
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
