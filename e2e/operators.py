"""Operators as child processes (`python -m rackscale run`), each with its own probe and metrics
ports, sharing one leader Lease: what the leader-election test and the failover bench run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from e2e.controlplane.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Operator:
    """One `rackscale run -A` child; `name` is its POD_NAME, which begins its Lease identity."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    liveness: int
    readiness: int
    metrics: int
    out: IO[bytes] | None = field(default=None, repr=False)

    def get(self, port: int, path: str) -> int | None:
        """The HTTP status of a probe; None while nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def live(self) -> int | None:
        return self.get(self.liveness, "/healthz")

    def ready(self) -> int | None:
        return self.get(self.readiness, "/readyz")

    def metric(self, name: str) -> float | None:
        """One unlabelled sample from the metrics endpoint; None while it does not answer."""
        try:
            url = f"http://127.0.0.1:{self.metrics}/metrics"
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        return None

    def kill(self) -> None:
        """SIGKILL: no release, no cleanup, as when a node dies."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as the kubelet stops a pod; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.close()
        return int(self.process.returncode)

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def start(
    name: str,
    kubeconfig: str,
    lease: tuple[str, str],
    logs: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Operator:
    """Start one operator on the Lease (namespace, name), logging to logs/NAME.log."""
    liveness, readiness, metrics = free_port(), free_port(), free_port()
    namespace, lease_name = lease
    argv = [
        sys.executable, "-m", "rackscale", "run", "--all-namespaces",
        f"--liveness=http://127.0.0.1:{liveness}/healthz",
        f"--readiness=http://127.0.0.1:{readiness}/readyz",
        f"--metrics-port={metrics}",
        f"--lease-name={lease_name}",
        f"--lease-namespace={namespace}",
        "--log-format=plain",
        *extra,
    ]  # fmt: skip
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    out = log.open("ab")
    environ = {**os.environ, **(env or {}), "KUBECONFIG": kubeconfig, "POD_NAME": name}
    environ["PYTHONPATH"] = str(ROOT / "operator")
    process = subprocess.Popen(
        argv, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Operator(name, process, log, liveness, readiness, metrics, out)


def _lease(api: client.ApiClient, lease: tuple[str, str]) -> dict[str, Any] | None:
    namespace, name = lease
    coordination: Any = client.CoordinationV1Api(api)
    try:
        answer = coordination.read_namespaced_lease(name, namespace, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(json.loads(answer.data))


def holder(api: client.ApiClient, lease: tuple[str, str]) -> str | None:
    """The Lease's holderIdentity now; None when there is no Lease or no holder."""
    body = _lease(api, lease)
    found = ((body or {}).get("spec") or {}).get("holderIdentity")
    return str(found) if found else None


def acquired_at(api: client.ApiClient, lease: tuple[str, str]) -> float | None:
    """The Lease's acquireTime as a Unix time (microseconds), None without one."""
    body = _lease(api, lease)
    stamp = ((body or {}).get("spec") or {}).get("acquireTime")
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def wait_for(probe: Any, what: str, timeout: float, every: float = 0.1) -> Any:
    """Poll `probe` until it returns something truthy; TimeoutError naming what never came."""
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout:.0f}s still waiting for {what}")
        time.sleep(every)
    return result
