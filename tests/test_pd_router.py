"""The disaggregated example's router (examples/pd-router/router.py) between stand-in engines on
loopback: each completion goes to a prefill engine with remote decode asked for, then to the
decode engine with the client's own request and the prefill's KV transfer parameters."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

import router

TIMEOUT = 5.0


@dataclass
class Seen:
    method: str
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]


@dataclass
class Engine:
    """A stand-in for a vLLM engine behind NixlConnector: what it received, what it answers."""

    name: str
    seen: list[Seen] = field(default_factory=list)
    health: int = 200
    fail: tuple[int, dict[str, Any]] | None = None  # answer completions with this error
    kv_params: bool = True  # a prefill engine answers with kv_transfer_params
    release: threading.Event = field(default_factory=threading.Event)  # ends a stream
    port: int = 0

    def completions(self) -> list[Seen]:
        return [s for s in self.seen if s.path in router.COMPLETION_PATHS]


def handler_for(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            engine.seen.append(Seen("GET", self.path, None, dict(self.headers)))
            if self.path == "/health":
                self.answer(engine.health, {"engine": engine.name})
            else:
                self.answer(200, {"object": "list", "data": [{"id": "m", "by": engine.name}]})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length))
            engine.seen.append(Seen("POST", self.path, body, dict(self.headers)))
            if engine.fail:
                self.answer(*engine.fail)
                return
            params = body.get("kv_transfer_params") or {}
            if params.get("do_remote_decode"):
                self.prefill(body)
            elif body.get("stream"):
                self.stream(params)
            else:
                self.answer(200, {"choices": [{"text": "decoded"}], "served": params})

        def prefill(self, body: dict[str, Any]) -> None:
            answer: dict[str, Any] = {"choices": [{"text": "x"}], "max_tokens": body["max_tokens"]}
            if engine.kv_params:
                answer["kv_transfer_params"] = {
                    "do_remote_prefill": True,
                    "do_remote_decode": False,
                    "remote_engine_id": engine.name,
                    "remote_block_ids": [[3, 4, 5]],
                    "remote_host": "127.0.0.1",
                    "remote_port": 5600,
                    "tp_size": 1,
                }
            self.answer(200, answer)

        def stream(self, params: dict[str, Any]) -> None:
            """Server-sent events with no length: one event, then the rest once released."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            first = {"text": "a", "from": params.get("remote_engine_id")}
            self.wfile.write(f"data: {json.dumps(first)}\n\n".encode())
            self.wfile.flush()
            engine.release.wait(TIMEOUT * 2)
            self.wfile.write(b'data: {"text": "b"}\n\ndata: [DONE]\n\n')

        def answer(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


@dataclass
class Setup:
    prefills: list[Engine]
    decode: Engine
    port: int

    def post(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(
                "POST",
                path,
                json.dumps(body),
                {"Content-Type": "application/json", **(headers or {})},
            )
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def serve(httpd: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return thread


@pytest.fixture
def setup() -> Iterator[Setup]:
    """Two prefill engines, one decode engine and the router, on ephemeral loopback ports."""
    engines = [Engine("prefill-a"), Engine("prefill-b"), Engine("decode")]
    servers = []
    for engine in engines:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(engine))
        httpd.daemon_threads = True
        engine.port = httpd.server_address[1]
        servers.append(httpd)
    prefills, decode = engines[:2], engines[2]
    routing = router.Router(
        [router.Backend("127.0.0.1", e.port) for e in prefills],
        [router.Backend("127.0.0.1", decode.port)],
        timeout=TIMEOUT,
    )
    servers.append(router.server(("127.0.0.1", 0), routing))
    threads = [serve(s) for s in servers]
    try:
        yield Setup(prefills, decode, servers[-1].server_address[1])
    finally:
        for engine in engines:
            engine.release.set()
        for s in servers:
            s.shutdown()
            s.server_close()
        for t in threads:
            t.join(TIMEOUT)


def test_a_completion_goes_to_prefill_then_to_decode_with_the_transfer_params(
    setup: Setup,
) -> None:
    request = {"model": "m", "prompt": "Hello", "max_tokens": 64, "temperature": 0.2}
    status, answer = setup.post(
        "/v1/completions", request, {"Authorization": "Bearer t", "X-Request-Id": "r-1"}
    )

    assert status == 200
    [prefill] = setup.prefills[0].completions()
    assert not setup.prefills[1].completions()
    assert prefill.body is not None
    assert prefill.body["kv_transfer_params"]["do_remote_decode"] is True
    assert prefill.body["max_tokens"] == 1
    assert prefill.body["stream"] is False
    assert prefill.body["prompt"] == "Hello"

    [decode] = setup.decode.completions()
    assert decode.body is not None
    params = decode.body.pop("kv_transfer_params")
    assert decode.body == request, "decode gets the client's own request"
    assert params["remote_engine_id"] == "prefill-a"
    assert params["do_remote_prefill"] is True
    assert params["remote_block_ids"] == [[3, 4, 5]]
    assert answer == {"choices": [{"text": "decoded"}], "served": params}

    for hop in (prefill, decode):
        assert hop.headers["Authorization"] == "Bearer t"
        assert hop.headers["X-Request-Id"] == "r-1"


def test_a_chat_completion_asks_prefill_for_one_token_and_decode_for_what_the_client_asked(
    setup: Setup,
) -> None:
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 40,
        "min_tokens": 5,
        "stream_options": {"include_usage": True},
    }
    status, _ = setup.post("/v1/chat/completions", request)

    assert status == 200
    [prefill] = setup.prefills[0].completions()
    assert prefill.body is not None
    assert prefill.body["max_completion_tokens"] == 1
    assert prefill.body["max_tokens"] == 1
    assert "min_tokens" not in prefill.body
    assert "stream_options" not in prefill.body
    [decode] = setup.decode.completions()
    assert decode.body is not None
    assert {k: v for k, v in decode.body.items() if k != "kv_transfer_params"} == request
    # Both hops carry the same request id, made up when the client sent none.
    assert prefill.headers["X-Request-Id"] == decode.headers["X-Request-Id"]
    assert prefill.headers["X-Request-Id"]


def test_prefill_engines_are_taken_round_robin(setup: Setup) -> None:
    served = []
    for i in range(6):
        status, answer = setup.post("/v1/completions", {"prompt": f"p{i}", "max_tokens": 8})
        assert status == 200
        served.append(answer["served"]["remote_engine_id"])

    assert served == ["prefill-a", "prefill-b"] * 3
    assert [s.body["prompt"] for s in setup.prefills[0].completions() if s.body] == [
        "p0",
        "p2",
        "p4",
    ]
    assert len(setup.prefills[1].completions()) == 3
    assert len(setup.decode.completions()) == 6


def test_health_follows_the_decode_engine(setup: Setup) -> None:
    assert setup.get("/health")[0] == 200
    setup.decode.health = 503
    status, body = setup.get("/health")
    assert status == 503
    assert b"503" in body
    setup.decode.health = 200
    assert setup.get("/health")[0] == 200
    assert not setup.prefills[0].seen, "health never asks prefill"


def test_health_is_503_when_the_decode_engine_does_not_answer() -> None:
    with socket_closed_port() as dead:
        routing = router.Router(
            [router.Backend("127.0.0.1", dead)], [router.Backend("127.0.0.1", dead)], TIMEOUT
        )
        httpd = router.server(("127.0.0.1", 0), routing)
        thread = serve(httpd)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=5)
            conn.request("GET", "/health")
            response = conn.getresponse()
            assert response.status == 503
            assert f"127.0.0.1:{dead}" in response.read().decode()
            conn.close()
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(TIMEOUT)


def test_an_error_from_prefill_reaches_the_client_and_decode_is_not_asked(setup: Setup) -> None:
    setup.prefills[0].fail = (400, {"error": {"message": "prompt too long"}})
    status, answer = setup.post("/v1/completions", {"prompt": "x" * 10, "max_tokens": 4})

    assert status == 400
    assert answer == {"error": {"message": "prompt too long"}}
    assert not setup.decode.completions()


def test_an_error_from_decode_reaches_the_client(setup: Setup) -> None:
    setup.decode.fail = (500, {"error": {"message": "engine dead"}})
    status, answer = setup.post("/v1/completions", {"prompt": "x", "max_tokens": 4})

    assert status == 500
    assert answer == {"error": {"message": "engine dead"}}
    assert len(setup.prefills[0].completions()) == 1


def test_a_prefill_without_transfer_params_is_a_502_saying_so(setup: Setup) -> None:
    setup.prefills[0].kv_params = False
    status, answer = setup.post("/v1/completions", {"prompt": "x", "max_tokens": 4})

    assert status == 502
    assert "kv_transfer_params" in answer["error"]["message"]
    assert f"127.0.0.1:{setup.prefills[0].port}" in answer["error"]["message"]
    assert not setup.decode.completions()


def test_an_unreachable_prefill_is_a_502_naming_it(setup: Setup) -> None:
    with socket_closed_port() as dead:
        routing = router.Router(
            [router.Backend("127.0.0.1", dead)],
            [router.Backend("127.0.0.1", setup.decode.port)],
            TIMEOUT,
        )
        httpd = router.server(("127.0.0.1", 0), routing)
        thread = serve(httpd)
        try:
            alone = Setup([], setup.decode, httpd.server_address[1])
            status, answer = alone.post("/v1/completions", {"prompt": "x"})
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(TIMEOUT)
    assert status == 502
    assert f"127.0.0.1:{dead}" in answer["error"]["message"]
    assert not setup.decode.completions()


def router_on(routing: router.Router) -> tuple[ThreadingHTTPServer, threading.Thread, int]:
    httpd = router.server(("127.0.0.1", 0), routing)
    return httpd, serve(httpd), httpd.server_address[1]


def test_an_unreachable_prefill_gives_way_to_the_next(setup: Setup) -> None:
    """A prefill leader being removed (its role scaled down) or restarting: the request goes
    to the next one instead."""
    with socket_closed_port() as dead:
        routing = router.Router(
            [
                router.Backend("127.0.0.1", dead),
                router.Backend("127.0.0.1", setup.prefills[1].port),
            ],
            [router.Backend("127.0.0.1", setup.decode.port)],
            TIMEOUT,
        )
        httpd, thread, port = router_on(routing)
        try:
            both = Setup(setup.prefills, setup.decode, port)
            answers = [both.post("/v1/completions", {"prompt": str(i)}) for i in range(4)]
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(TIMEOUT)
    assert [status for status, _ in answers] == [200] * 4
    assert len(setup.prefills[1].completions()) == 4
    assert len(setup.decode.completions()) == 4


def test_the_leaders_file_follows_the_prefill_role_as_it_scales(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod's leaders annotation, as a downward API file: until it names prefill leaders the
    fixed list serves; then its prefill line does, and a change to it is read again."""
    monkeypatch.setattr(router.LiveLeaders, "RECHECK_SECONDS", 0.0)
    first, second = (f"127.0.0.1:{e.port}" for e in setup.prefills)
    leaders = tmp_path / "leaders"
    live = router.LiveLeaders([router.Backend.parse(first)], str(leaders))
    routing = router.Router(live, [router.Backend("127.0.0.1", setup.decode.port)], TIMEOUT)
    httpd, thread, port = router_on(routing)
    client = Setup(setup.prefills, setup.decode, port)
    try:
        assert client.post("/v1/completions", {"prompt": "no file yet"})[0] == 200
        leaders.write_text(f"prefill={second}\ndecode=127.0.0.1:1")
        assert client.post("/v1/completions", {"prompt": "one prefill"})[0] == 200
        leaders.write_text(f"prefill={first},{second}\ndecode=127.0.0.1:1\n")
        for i in range(4):
            assert client.post("/v1/completions", {"prompt": f"two {i}"})[0] == 200
        leaders.write_text("decode=127.0.0.1:1\n")  # no prefill line: the fixed list again
        assert client.post("/v1/completions", {"prompt": "fixed"})[0] == 200
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)
    prompts = {
        engine.name: [r.body["prompt"] for r in engine.completions() if r.body]
        for engine in setup.prefills
    }
    assert prompts == {
        "prefill-a": ["no file yet", "two 0", "two 2", "fixed"],
        "prefill-b": ["one prefill", "two 1", "two 3"],
    }


def test_leaders_file_lines_are_read_by_role() -> None:
    text = "decode=d-0.x.svc:8000\nprefill=p-0.x.svc:8000,p-1.x.svc:8000\n"
    assert [str(b) for b in router.role_leaders(text, "prefill")] == [
        "p-0.x.svc:8000",
        "p-1.x.svc:8000",
    ]
    assert router.role_leaders(text, "router") == []
    assert router.role_leaders("prefill=\n", "prefill") == []


def test_a_bad_body_is_a_400(setup: Setup) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=TIMEOUT)
    conn.request("POST", "/v1/completions", b"{not json", {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 400
    assert "not JSON" in json.loads(response.read())["error"]["message"]
    conn.close()
    assert not setup.prefills[0].seen


def test_a_stream_passes_through_as_decode_sends_it(setup: Setup) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=TIMEOUT)
    body = json.dumps({"prompt": "x", "max_tokens": 4, "stream": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"

    # The first event arrives while decode still holds the rest: nothing is buffered whole.
    first = b""
    while b"\n\n" not in first:
        chunk = response.read1(1024)
        assert chunk, "the stream ended before its first event"
        first += chunk
    assert json.loads(first.removeprefix(b"data: ").strip()) == {"text": "a", "from": "prefill-a"}
    assert not setup.decode.release.is_set()
    setup.decode.release.set()
    rest = response.read()
    conn.close()
    assert rest == b'data: {"text": "b"}\n\ndata: [DONE]\n\n'

    [prefill] = setup.prefills[0].completions()
    assert prefill.body is not None
    assert prefill.body["stream"] is False
    [decode] = setup.decode.completions()
    assert decode.body is not None
    assert decode.body["stream"] is True


def test_other_paths_go_to_the_decode_engine(setup: Setup) -> None:
    status, body = setup.get("/v1/models")
    assert status == 200
    assert json.loads(body)["data"][0]["by"] == "decode"
    assert not setup.prefills[0].seen


@pytest.mark.parametrize("text", ["", " , ", "nohost", "host:port", ":8000"])
def test_a_bad_backend_list_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"host:port"):
        router.backends(text)


def test_a_bad_backend_list_is_an_error_naming_the_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        router.parse_args(["--prefill", "nohost", "--decode", "127.0.0.1:8200"])
    assert "--prefill" in capsys.readouterr().err


def test_the_leaders_variable_parses_as_rackscale_writes_it() -> None:
    text = "d-g0-prefill-0-0.d-shards.llm.svc:8000,d-g0-prefill-1-0.d-shards.llm.svc:8000"
    assert [str(b) for b in router.backends(text)] == text.split(",")
    args = router.parse_args(["--prefill", text, "--decode", "127.0.0.1:8200"])
    assert args.decode == [router.Backend("127.0.0.1", 8200)]
    assert args.port == 8000


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port nothing listens on, for as long as the block runs: bound, never
    listening, so a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_the_kustomization_makes_config_map_pd_router_in_llm_without_a_hash() -> None:
    here = Path(router.__file__).parent
    kustomization = yaml.safe_load((here / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "llm"
    assert kustomization["generatorOptions"] == {"disableNameSuffixHash": True}
    assert kustomization["configMapGenerator"] == [{"name": "pd-router", "files": ["router.py"]}]
