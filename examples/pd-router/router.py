"""The router of rackscale's disaggregated serving example: a sidecar beside each decode leader.

It serves the OpenAI API on the decode leader's port and sends every completion in two hops, as
vLLM's NixlConnector expects from the process in front of a prefill and a decode engine:

1. to a prefill leader of the pod's serving group (taken round-robin from --prefill, or from the
   `--leaders` file that rackscale keeps current as the group's prefill role scales), with
   `kv_transfer_params: {do_remote_decode: true}`, one output token and no streaming: the prefill
   engine computes the prompt's KV cache, keeps it, and answers with the `kv_transfer_params` that
   say where the cache waits (engine id, block ids, side-channel host and port, ...);
2. to the decode engine (--decode, on the same pod), with the client's ORIGINAL request plus
   those `kv_transfer_params`: decode reads the cache from prefill over NIXL and generates. Its
   answer, streamed or not, goes back to the client as it comes.

`GET /health` answers 200 only while the decode engine's own /health does, so a readiness probe on
the router's port means "router and decode engine up". Every other path goes to the decode engine
as it is. An error from a hop reaches the client with that hop's status; a hop that cannot be
reached is a 502.

    python3 router.py --port 8000 --prefill "$RACKSCALE_PREFILL_LEADERS" --decode 127.0.0.1:8200 \
        --leaders /etc/rackscale/leaders

`--leaders` is the pod's annotation `rackscale.dev/leaders` as a downward API volume shows it:
one line `<role>=host:port,...` per role of the serving group. rackscale keeps the annotation
current when a role of the group scales; the kubelet rewrites the file within a minute or so, and
the router reads it again when it changed. Until it holds a `prefill=` line, --prefill is used.
A prefill leader that cannot be reached is skipped for the next one, once each per request.

Python's standard library only, so that it runs with the python3 of any engine image. rackscale
ships it as ConfigMap `pd-router` (`kubectl apply -k examples/pd-router`).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPLETION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
CHAT_PATH = "/v1/chat/completions"
# Request fields a prefill engine must not see: it answers once, unstreamed, with one token.
PREFILL_DROPPED = ("stream_options", "min_tokens", "min_completion_tokens")
# Hop-by-hop headers (RFC 9110 section 7.6.1) and those the router sets itself.
NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
REQUEST_ID = "X-Request-Id"
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Backend:
    """An engine's HTTP endpoint."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Backend:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{text!r} is not host:port")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def backends(text: str) -> list[Backend]:
    """A comma-separated `host:port` list, as RACKSCALE_<ROLE>_LEADERS holds."""
    found = [Backend.parse(part) for part in text.split(",") if part.strip()]
    if not found:
        raise ValueError(f"{text!r} names no host:port")
    return found


def backends_argument(text: str) -> list[Backend]:
    """`backends` for argparse, whose message then says what was wrong."""
    try:
        return backends(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


class RoundRobin:
    """The next backend of a list, safe to call from the server's threads."""

    def __init__(self, items: Sequence[Backend]) -> None:
        self.items = tuple(items)
        self._cycle: Iterator[Backend] = itertools.cycle(self.items)
        self._lock = threading.Lock()

    def next(self) -> Backend:
        with self._lock:
            return next(self._cycle)


class LiveLeaders:
    """The prefill leaders to use: those of `role` in the leaders file while it names some, else
    the fixed list. The file is read again when it changed, checked at most once a second."""

    RECHECK_SECONDS = 1.0

    def __init__(self, fixed: Sequence[Backend], path: str | None, role: str = "prefill") -> None:
        self.fixed = RoundRobin(fixed)
        self.current = self.fixed
        self.path, self.role = path, role
        self._stamp: tuple[float, int] | None = None
        self._source = "--prefill"
        self._checked = float("-inf")
        self._lock = threading.Lock()

    @property
    def items(self) -> tuple[Backend, ...]:
        self._refresh()
        return self.current.items

    def next(self) -> Backend:
        self._refresh()
        return self.current.next()

    def _refresh(self) -> None:
        if self.path is None:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._checked < self.RECHECK_SECONDS:
                return
            self._checked = now
            try:
                info = os.stat(self.path)
                stamp = (info.st_mtime, info.st_size)
                if stamp == self._stamp:
                    return
                with open(self.path, encoding="utf-8") as leaders:
                    found = role_leaders(leaders.read(), self.role)
            except (OSError, ValueError) as err:
                if self._stamp is not None or self._source != "--prefill":
                    log("leaders file not used", path=self.path, error=str(err))
                self._stamp, self.current, self._source = None, self.fixed, "--prefill"
                return
            self._stamp = stamp
            source = self.path if found else "--prefill"
            if (tuple(found) or self.fixed.items, source) == (self.current.items, self._source):
                return
            self.current, self._source = (RoundRobin(found) if found else self.fixed), source
            log("prefill leaders", prefill=[str(b) for b in self.current.items], source=source)


def role_leaders(text: str, role: str) -> list[Backend]:
    """The backends of one role in a leaders file (`<role>=host:port,...` a line); none when
    the role has no line or an empty one."""
    for line in text.splitlines():
        name, sep, hosts = line.partition("=")
        if sep and name.strip() == role and hosts.strip():
            return backends(hosts)
    return []


class HopError(Exception):
    """A hop that failed: what the client gets back, with the hop's status."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "router_error"}}).encode()


def prefill_request(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """Hop 1: the request with remote decode asked for, one output token, not streamed."""
    body = {k: v for k, v in request.items() if k not in PREFILL_DROPPED}
    body["kv_transfer_params"] = {"do_remote_decode": True, "do_remote_prefill": False}
    body["stream"] = False
    body["max_tokens"] = 1
    if path == CHAT_PATH:
        body["max_completion_tokens"] = 1
    return body


def decode_request(request: dict[str, Any], kv_transfer_params: dict[str, Any]) -> dict[str, Any]:
    """Hop 2: the client's own request, with what prefill said about where its KV cache waits."""
    return {**request, "kv_transfer_params": kv_transfer_params}


def log(message: str, **fields: Any) -> None:
    print(json.dumps({"time": round(time.time(), 3), "msg": message, **fields}), flush=True)


class Router:
    """Where the hops go, and how long a hop may take."""

    def __init__(
        self,
        prefill: Sequence[Backend] | LiveLeaders,
        decode: Sequence[Backend],
        timeout: float,
    ) -> None:
        self.prefill = prefill if isinstance(prefill, LiveLeaders) else LiveLeaders(prefill, None)
        self.decode = RoundRobin(decode)
        self.timeout = timeout

    def connect(self, backend: Backend) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(backend.host, backend.port, timeout=self.timeout)

    def send(
        self,
        backend: Backend,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """The backend's response, its body unread; HopError 502 when it cannot be reached."""
        conn = self.connect(backend)
        try:
            conn.request(method, path, body=body, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise HopError(502, error_body(f"{backend} did not answer {path}: {err}")) from err

    def prefill_hop(
        self, path: str, request: dict[str, Any], headers: dict[str, str]
    ) -> tuple[Backend, dict[str, Any]]:
        """Hop 1: the prefill leader's `kv_transfer_params` for this request. A leader that
        cannot be reached (being removed as its role scales down, or restarting) gives way to
        the next, each tried once."""
        payload = json.dumps(prefill_request(path, request)).encode()
        tries = len(self.prefill.items)
        for attempt in range(tries):
            target = self.prefill.next()
            try:
                conn, response = self.send(target, "POST", path, payload, json_headers(headers))
                break
            except HopError:
                if attempt == tries - 1:
                    raise
                log("prefill unreachable, trying the next", prefill=str(target))
        try:
            raw = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            content_type = response.getheader("Content-Type", "application/json")
            raise HopError(response.status, raw, content_type)
        try:
            answer = json.loads(raw)
        except ValueError as err:
            message = f"prefill {target} answered {path} with no JSON: {err}"
            raise HopError(502, error_body(message)) from err
        params = answer.get("kv_transfer_params") if isinstance(answer, dict) else None
        if not isinstance(params, dict) or not params:
            # Decode would prefill the prompt again itself: served, but not disaggregated.
            message = (
                f"prefill {target} answered {path} without kv_transfer_params: is it started "
                "with a KV connector (--kv-transfer-config with NixlConnector, kv_producer)?"
            )
            raise HopError(502, error_body(message))
        return target, params


def json_headers(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Content-Type": "application/json"}


class Handler(BaseHTTPRequestHandler):
    """One client request: the two hops for completions, a pass-through otherwise."""

    protocol_version = "HTTP/1.1"
    server_version = "rackscale-pd-router"
    router: Router  # set on the subclass serve() makes

    def do_GET(self) -> None:
        if self.path == "/health":
            self.health()
        else:
            self.pass_through()

    def do_POST(self) -> None:
        if self.path in COMPLETION_PATHS:
            self.disaggregated()
        else:
            self.pass_through()

    def do_PUT(self) -> None:
        self.pass_through()

    def do_DELETE(self) -> None:
        self.pass_through()

    # -- the three ways a request goes -----------------------------------------------------------

    def disaggregated(self) -> None:
        started = time.monotonic()
        headers = self.forwarded_headers()
        try:
            request = json.loads(self.body() or b"null")
            if not isinstance(request, dict):
                raise HopError(400, error_body("the request body must be a JSON object"))
            prefill, params = self.router.prefill_hop(self.path, request, headers)
            payload = json.dumps(decode_request(request, params)).encode()
            decode = self.router.decode.next()
            conn, response = self.router.send(
                decode, "POST", self.path, payload, json_headers(headers)
            )
        except HopError as err:
            self.reply(err.status, err.body, err.content_type)
            log("request failed", path=self.path, status=err.status, id=headers[REQUEST_ID])
            return
        except ValueError as err:
            self.reply(400, error_body(f"the request body is not JSON: {err}"))
            return
        try:
            self.relay(response)
        finally:
            conn.close()
        log(
            "request",
            path=self.path,
            id=headers[REQUEST_ID],
            prefill=str(prefill),
            decode=str(decode),
            status=response.status,
            stream=bool(request.get("stream")),
            seconds=round(time.monotonic() - started, 3),
        )

    def health(self) -> None:
        decode = self.router.decode.next()
        try:
            conn, response = self.router.send(decode, "GET", "/health", None, {})
            try:
                response.read()
            finally:
                conn.close()
        except HopError as err:
            self.reply(503, err.body)
            return
        if response.status == 200:
            self.reply(200, b"ok\n", "text/plain")
        else:
            message = f"decode engine {decode} /health answered {response.status}"
            self.reply(503, error_body(message))

    def pass_through(self) -> None:
        decode = self.router.decode.next()
        body = self.body()
        try:
            conn, response = self.router.send(
                decode, self.command, self.path, body, self.forwarded_headers()
            )
        except HopError as err:
            self.reply(err.status, err.body, err.content_type)
            return
        try:
            self.relay(response)
        finally:
            conn.close()

    # -- plumbing --------------------------------------------------------------------------------

    def body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def forwarded_headers(self) -> dict[str, str]:
        """The client's end-to-end headers (Authorization among them), and one request id
        shared by both hops, so that the engines' logs can be matched up."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in NOT_FORWARDED}
        ids = [v for k, v in headers.items() if k.lower() == REQUEST_ID.lower()]
        headers = {k: v for k, v in headers.items() if k.lower() != REQUEST_ID.lower()}
        headers[REQUEST_ID] = ids[0] if ids else uuid.uuid4().hex
        return headers

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def relay(self, response: http.client.HTTPResponse) -> None:
        """The backend's response to the client as it arrives: with its length when it gave
        one, else in chunks (a stream of server-sent events)."""
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in NOT_FORWARDED:
                self.send_header(key, value)
        length = response.getheader("Content-Length")
        if length is not None:
            self.send_header("Content-Length", length)
            self.end_headers()
            self.wfile.write(response.read())
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while data := response.read1(CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *_: Any) -> None:
        pass  # one JSON line per completion instead; a probe every few seconds says nothing


def server(address: tuple[str, int], router: Router) -> ThreadingHTTPServer:
    """The router's HTTP server, not yet serving (serve_forever, or a thread in tests)."""
    handler = type("RouterHandler", (Handler,), {"router": router})
    httpd = ThreadingHTTPServer(address, handler)
    httpd.daemon_threads = True
    return httpd


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Send each completion to a prefill engine, then to the decode engine "
        "with the prefill's KV transfer parameters."
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--prefill",
        type=backends_argument,
        required=True,
        help="prefill engines, host:port,host:port (RACKSCALE_PREFILL_LEADERS); round-robin",
    )
    parser.add_argument(
        "--decode",
        type=backends_argument,
        required=True,
        help="decode engines, host:port,... (the one on this pod: 127.0.0.1:8200)",
    )
    parser.add_argument(
        "--leaders",
        default=None,
        metavar="FILE",
        help="the pod's rackscale.dev/leaders annotation as a downward API file, read again "
        "when it changes: its prefill line replaces --prefill as the group's prefill role scales",
    )
    parser.add_argument(
        "--role", default="prefill", help="the role in the --leaders file to send prefills to"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a hop may stay silent"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    router = Router(LiveLeaders(args.prefill, args.leaders, args.role), args.decode, args.timeout)
    httpd = server((args.host, args.port), router)
    log(
        "router listening",
        port=args.port,
        prefill=[str(b) for b in router.prefill.items],
        decode=[str(b) for b in router.decode.items],
    )
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
