"""A shard of a test replica on kind: shards find their leader and form a group, as a real
inference server's workers would (torch.distributed, vLLM's Ray cluster), with nothing to compute.

Every container reads the RACKSCALE_* variables the operator sets. A follower resolves
RACKSCALE_LEADER_ADDRESS through cluster DNS, connects to the leader's check-in port and reports its
shard, first rank, rank count and world size, then stays connected; it exits when the leader goes.
Every shard serves HTTP on the deployment's port, the leader's answering through the Service:

  GET /ready   the readiness probe: on the leader 200 only once every shard of the replica has
               checked in with consistent ranks, on a follower once it has checked in; 503 before
  GET /        the group as JSON: replica, world size, the members and their ranks
  GET /health  as /ready: what a router asks of the engine behind it

The leader also stands in for an inference engine of a disaggregated deployment (spec.roles;
there are no GPUs here, so nothing is computed): it answers POST /v1/completions and
/v1/chat/completions in vLLM's NixlConnector protocol.

  as prefill   a request whose kv_transfer_params ask for remote decode is answered with
               kv_transfer_params naming this pod as where the KV cache waits: remote_host its
               pod IP, remote_engine_id its pod name, and (for the tests) its pod, group and role
  as decode    any other request is answered with which prefill pod and which decode pod (and
               their serving groups) served it, and the kv_transfer_params it received; with
               `stream: true` as server-sent events. Each one is logged.

A follower whose leader goes exits with status 1; a leader whose member leaves turns unready.
SIGUSR1 makes any shard exit with status 3, a crash on demand for the tests. With `restartPolicy:
Never` an exit leaves the pod Failed, which is what makes the operator restart the whole replica.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHECKIN_PORT = int(os.environ.get("SHARD_CHECKIN_PORT", "29400"))
COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
NIXL_SIDE_CHANNEL_PORT = 5600  # vLLM's default; nothing listens on it here


def log(message: str, **fields: Any) -> None:
    print(json.dumps({"time": round(time.time(), 3), "msg": message, **fields}), flush=True)


def ranks_of(env: Any, default: int) -> int:
    """One rank per GPU the device plugin handed this container, else an equal share."""
    devices = [d for d in env.get("NVIDIA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if devices and devices[0] not in ("all", "none", "void"):
        return len(devices)
    return default


@dataclass(frozen=True)
class Identity:
    replica: int
    shard: int
    shards: int
    world_size: int
    first_rank: int
    ranks: int
    leader: str
    pod: str
    role: str | None
    group: int | None
    ip: str

    @classmethod
    def from_env(cls) -> Identity:
        env = os.environ
        missing = [
            n
            for n in (
                "RACKSCALE_REPLICA",
                "RACKSCALE_SHARD",
                "RACKSCALE_SHARDS",
                "RACKSCALE_WORLD_SIZE",
                "RACKSCALE_FIRST_RANK",
                "RACKSCALE_LEADER_ADDRESS",
            )
            if n not in env
        ]
        if missing:
            sys.exit(f"shard: missing environment {', '.join(missing)} (set by the operator)")
        shards = int(env["RACKSCALE_SHARDS"])
        world = int(env["RACKSCALE_WORLD_SIZE"])
        return cls(
            replica=int(env["RACKSCALE_REPLICA"]),
            shard=int(env["RACKSCALE_SHARD"]),
            shards=shards,
            world_size=world,
            first_rank=int(env["RACKSCALE_FIRST_RANK"]),
            ranks=ranks_of(env, world // shards),
            leader=env["RACKSCALE_LEADER_ADDRESS"],
            pod=env.get("HOSTNAME", socket.gethostname()),
            role=env.get("RACKSCALE_ROLE"),
            group=int(env["RACKSCALE_GROUP"]) if "RACKSCALE_GROUP" in env else None,
            ip=env.get("POD_IP") or socket.gethostbyname(socket.gethostname()),
        )

    def engine(self) -> dict[str, Any]:
        """Who served a request, as the stand-in engine reports it."""
        return {"pod": self.pod, "group": self.group, "role": self.role, "host": self.ip}

    def report(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "shard": self.shard,
            "shards": self.shards,
            "world_size": self.world_size,
            "first_rank": self.first_rank,
            "ranks": self.ranks,
            "pod": self.pod,
            "devices": os.environ.get("NVIDIA_VISIBLE_DEVICES", ""),
        }


class Group:
    """The leader's view of its replica: who checked in, and whether the ranks tile the world."""

    def __init__(self, me: Identity) -> None:
        self.me = me
        self.lock = threading.Lock()
        self.members: dict[int, dict[str, Any]] = {0: me.report()}
        self.formed = False

    def problem(self, report: dict[str, Any]) -> str | None:
        for key in ("replica", "shards", "world_size"):
            if report.get(key) != getattr(self.me, key):
                return f"{key} {report.get(key)} differs from the leader's {getattr(self.me, key)}"
        if not 0 < report["shard"] < self.me.shards:
            return f"shard {report['shard']} is outside 1..{self.me.shards - 1}"
        if report["shard"] in self.members:
            return f"shard {report['shard']} is already checked in"
        return None

    def complete(self) -> bool:
        if len(self.members) != self.me.shards:
            return False
        ranks = sorted(
            r
            for m in self.members.values()
            for r in range(m["first_rank"], m["first_rank"] + m["ranks"])
        )
        return ranks == list(range(self.me.world_size))

    def join(self, report: dict[str, Any]) -> str | None:
        with self.lock:
            problem = self.problem(report)
            if problem:
                return problem
            self.members[report["shard"]] = report
            log("check-in", **report, checked_in=len(self.members), of=self.me.shards)
            if self.complete() and not self.formed:
                self.formed = True
                log(
                    "group formed",
                    replica=self.me.replica,
                    world_size=self.me.world_size,
                    shards=sorted(self.members),
                )
            return None

    def leave(self, shard: int) -> None:
        with self.lock:
            self.members.pop(shard, None)
            was = self.formed
            self.formed = False
        # Unready until the replica is restarted: the operator decides that (a Failed member pod,
        # or its node lost), not the leader, so that a lost node is seen as one.
        log("shard left", shard=shard, group_was_formed=was)

    def view(self) -> dict[str, Any]:
        with self.lock:
            return {
                "replica": self.me.replica,
                "world_size": self.me.world_size,
                "formed": self.formed,
                "members": [self.members[k] for k in sorted(self.members)],
            }


def serve_checkins(group: Group) -> None:
    server = socket.create_server(("", CHECKIN_PORT), reuse_port=True)
    log("leader listening for check-ins", port=CHECKIN_PORT, shards=group.me.shards)

    def handle(conn: socket.socket, peer: Any) -> None:
        file = conn.makefile("rwb")
        line = file.readline()
        try:
            report = json.loads(line)
        except ValueError:
            log("bad check-in", peer=str(peer), line=line.decode(errors="replace"))
            conn.close()
            return
        problem = group.join(report)
        file.write((json.dumps({"ok": problem is None, "problem": problem}) + "\n").encode())
        file.flush()
        if problem:
            log("check-in refused", problem=problem, **report)
            conn.close()
            return
        # A connection held open is the member's liveness: EOF means it is gone.
        while file.readline():
            pass
        group.leave(report["shard"])

    while True:
        conn, peer = server.accept()
        threading.Thread(target=handle, args=(conn, peer), daemon=True).start()


class StandInEngine:
    """The leader's stand-in for a vLLM engine behind NixlConnector, prefill or decode as each
    request asks: there are no GPUs on kind, so nothing is computed and no KV cache moves."""

    def __init__(self, me: Identity) -> None:
        self.me = me

    def prefill(self, body: dict[str, Any]) -> dict[str, Any]:
        """Where the request's KV cache would wait: this pod."""
        request_id = f"cmpl-{uuid.uuid4().hex}"
        params = {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_engine_id": self.me.pod,
            "remote_request_id": request_id,
            "remote_block_ids": [[0]],
            "remote_host": self.me.ip,
            "remote_port": NIXL_SIDE_CHANNEL_PORT,
            "tp_size": self.me.world_size,
            # Not vLLM's keys: what the kind tests read back from decode.
            "remote_pod": self.me.pod,
            "remote_group": self.me.group,
            "remote_role": self.me.role,
            "prefill_max_tokens": body.get("max_tokens"),
            "prefill_stream": body.get("stream"),
        }
        log("prefilled", id=request_id, max_tokens=body.get("max_tokens"))
        return {
            "id": request_id,
            "object": "text_completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "text": "", "finish_reason": "length"}],
            "kv_transfer_params": params,
        }

    def decode(self, body: dict[str, Any]) -> dict[str, Any]:
        """Which prefill and which decode pod served the request, and what it carried."""
        params = body.get("kv_transfer_params") or {}
        prefill = (
            {k: params.get(f"remote_{k}") for k in ("pod", "group", "role", "host")}
            if params
            else None
        )
        served = {"prefill": prefill, "decode": self.me.engine()}
        log("decoded", served=served, kv_transfer_params=params)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "text": "(stand-in: nothing generated)",
                    "finish_reason": "stop",
                }
            ],
            "served": served,
            "kv_transfer_params_received": params,
            "max_tokens": body.get("max_tokens"),
        }


def serve_http(
    view_of: Callable[[], dict[str, Any]], port: int, engine: StandInEngine | None = None
) -> None:
    """/ready and /health (200 once formed, or checked in for a follower), / (the view as
    JSON), and on the leader the stand-in engine's completions."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            view = view_of()
            if self.path in ("/ready", "/health"):
                code, body = (200, b"ready\n") if view["formed"] else (503, b"forming\n")
            else:
                code, body = 200, (json.dumps(view) + "\n").encode()
            self.send(code, body)

        def do_POST(self) -> None:
            if engine is None or self.path not in COMPLETION_PATHS:
                self.send(404, b"no such path\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                self.send(400, b"the body is not JSON\n")
                return
            if (body.get("kv_transfer_params") or {}).get("do_remote_decode"):
                self.send(200, json.dumps(engine.prefill(body)).encode(), "application/json")
                return
            answer = engine.decode(body)
            if not body.get("stream"):
                self.send(200, json.dumps(answer).encode(), "application/json")
                return
            # Server-sent events with no length: the body ends when the connection closes.
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(f"data: {json.dumps(answer)}\n\n".encode())
            self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

        def send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass  # the probe every few seconds would drown the check-ins

    ThreadingHTTPServer(("", port), Handler).serve_forever()


def follow(me: Identity, checked_in: threading.Event) -> None:
    deadline = time.monotonic() + float(os.environ.get("SHARD_RESOLVE_TIMEOUT", "300"))
    while True:
        try:
            address = socket.getaddrinfo(me.leader, CHECKIN_PORT, type=socket.SOCK_STREAM)[0][4]
            conn = socket.create_connection((str(address[0]), int(address[1])), timeout=5)
            break
        except OSError as err:
            if time.monotonic() > deadline:
                log("leader not reachable", leader=me.leader, error=str(err))
                sys.exit(1)
            time.sleep(1)
    log("leader resolved", leader=me.leader, address=address[0])
    conn.settimeout(None)
    file = conn.makefile("rwb")
    file.write((json.dumps(me.report()) + "\n").encode())
    file.flush()
    answer = json.loads(file.readline() or b"{}")
    if not answer.get("ok"):
        log("check-in refused", problem=answer.get("problem"))
        sys.exit(1)
    log("checked in", **me.report())
    checked_in.set()
    if not file.readline():
        log("leader gone")
        sys.exit(1)


def main() -> None:
    me = Identity.from_env()
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 8000
    signal.signal(signal.SIGUSR1, lambda *_: os._exit(3))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    log("starting", **me.report(), leader=me.leader)
    if me.shard == 0:
        group = Group(me)
        if group.complete():  # a replica of one shard
            group.formed = True
            log("group formed", replica=me.replica, world_size=me.world_size, shards=[0])
        threading.Thread(target=serve_checkins, args=(group,), daemon=True).start()
        serve_http(group.view, port, StandInEngine(me))
    else:
        checked_in = threading.Event()

        def view() -> dict[str, Any]:
            return {**me.report(), "formed": checked_in.is_set()}

        threading.Thread(target=serve_http, args=(view, port), daemon=True).start()
        follow(me, checked_in)


if __name__ == "__main__":
    main()
