"""The readiness endpoint: 200 once the operator has completed a reconcile pass, 503 before.

Liveness (kopf's `/healthz`) says the process is up and its probes answer; readiness says it has
read the cluster and acted on it once, so a rollout waits for a working operator."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

PASSED = threading.Event()  # set by the worker after its first completed pass


class _Handler(BaseHTTPRequestHandler):
    path_served = "/readyz"

    def do_GET(self) -> None:
        if urlparse(self.path).path != self.path_served:
            self.send_error(404)
            return
        ready = PASSED.is_set()
        body = b"ok\n" if ready else b"no reconcile pass completed yet\n"
        self.send_response(200 if ready else 503)
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
