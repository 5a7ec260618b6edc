"""The readiness endpoint: 200 once the operator can do its part, 503 before.

The leader is ready once it has completed a reconcile pass (it has read the cluster and acted on
it); a standby once its cluster view is bound (kopf's indices are filled, so it can take over at
once), which lets a rollout of several replicas complete. Liveness is kopf's `/healthz`, a
separate probe (controller/liveness.py)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

PASSED = threading.Event()  # set by the worker after its first completed pass
WATCHING = threading.Event()  # set by the worker once its cluster view is bound
STANDBY = threading.Event()  # set while this operator stands by for the leader Lease


def answer(*, passed: bool, watching: bool, standby: bool) -> tuple[int, bytes]:
    """The status code and body of a readiness request."""
    if passed:
        return 200, b"ok\n"
    if standby:
        if watching:
            return 200, b"ok: standing by for the leader Lease\n"
        return 503, b"standing by, cluster view not loaded yet\n"
    return 503, b"no reconcile pass completed yet\n"


class _Handler(BaseHTTPRequestHandler):
    path_served = "/readyz"

    def do_GET(self) -> None:
        if urlparse(self.path).path != self.path_served:
            self.send_error(404)
            return
        code, body = answer(
            passed=PASSED.is_set(), watching=WATCHING.is_set(), standby=STANDBY.is_set()
        )
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return  # probes every few seconds: not worth a log line


def serve(url: str) -> ThreadingHTTPServer:
    """Serve readiness at `url` (such as http://0.0.0.0:8081/readyz) from a daemon thread."""
    parsed = urlparse(url)
    handler = type("Readiness", (_Handler,), {"path_served": parsed.path or "/readyz"})
    server = ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 8081), handler)
    threading.Thread(target=server.serve_forever, name="readiness", daemon=True).start()
    return server
