"""The local control plane: etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kwok,
and a stand-in for the node side of NVIDIA's DRA driver for ComputeDomains (e2e/computedomains);
with the InferencePool CRD of the Gateway API Inference Extension installed (e2e/inferencepools).

    python -m e2e.cluster up [--profile NAME_OR_PATH] [--wait]
    python -m e2e.cluster status
    python -m e2e.cluster down

State (kubeconfig, certificates, etcd data, logs, pid files) lives in .cluster/ at the repository
root, or in $RACKSCALE_CLUSTER_DIR. Binaries come from e2e/controlplane/build.sh and its cache.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2e import inferencepools, profiles
from e2e.controlplane import pki, processes

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTROLPLANE = Path(__file__).resolve().parent / "controlplane"
BUILD_SCRIPT = CONTROLPLANE / "build.sh"
KWOK_STAGES = CONTROLPLANE / "kwok-stages.yaml"
KWOK_CONFIG = CONTROLPLANE / "kwok-config.yaml"

# Start order; `down` stops them in reverse.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-scheduler",
    "kube-controller-manager",
    "kwok",
    "dra-standin",
)
# As large as a real cluster's. Only the API server allocates from it (no traffic goes there); a
# /24 held 254 Service IPs, one per InferenceDeployment, and refused Services past that.
SERVICE_CIDR = "10.0.0.0/16"
POD_CIDR = "10.64.0.0/10"
CLUSTER_NAME = "rackscale-local"
# Set, it names another cluster's kubeconfig for the e2e suite: nothing local is started.
EXTERNAL_KUBECONFIG = "RACKSCALE_E2E_KUBECONFIG"


class ClusterError(RuntimeError):
    """The local control plane could not be brought up, inspected or torn down."""


@dataclass(frozen=True)
class Cluster:
    """A running local control plane, as `up` leaves it."""

    state: Path
    kubeconfig: Path
    server: str
    kubectl: Path
    started: bool  # False when `up` found it already running and reused it


def state_dir() -> Path:
    """Where the cluster's state lives."""
    return Path(os.environ.get("RACKSCALE_CLUSTER_DIR") or REPO_ROOT / ".cluster").resolve()


def _log(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(state: Path) -> Iterator[None]:
    # Outside the state dir, because `down` deletes that; keyed by it, so clusters don't contend.
    key = hashlib.sha256(str(state).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"rackscale-cluster-{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pinned_kubernetes_version() -> str:
    """The k8s.io/kubernetes version the wrapper module pins (what the API server reports)."""
    gomod = CONTROLPLANE / "kubernetes" / "go.mod"
    for line in gomod.read_text().splitlines():
        words = line.replace("require ", "").split()
        if len(words) >= 2 and words[0] == "k8s.io/kubernetes":
            return words[1]
    raise ClusterError(f"{gomod} requires no k8s.io/kubernetes; regenerate it")


def binaries() -> dict[str, Path]:
    """Paths of every control plane binary, building them first if the cache lacks them."""
    try:
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
    except FileNotFoundError as err:
        raise ClusterError("bash is needed to run e2e/controlplane/build.sh") from err
    except subprocess.CalledProcessError as err:
        raise ClusterError(
            f"building the control plane binaries failed (exit {err.returncode}); "
            "see the build output above, fix it and rerun `bash e2e/controlplane/build.sh`"
        ) from err
    dirs = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    try:
        kube, etcd, kwok = (Path(dirs[k]) for k in ("KUBE_BIN_DIR", "ETCD_BIN_DIR", "KWOK_BIN_DIR"))
    except KeyError as err:
        raise ClusterError(f"build.sh did not report {err}; its output was:\n{out}") from err
    return {
        "etcd": etcd / "etcd",
        "kube-apiserver": kube / "kube-apiserver",
        "kube-scheduler": kube / "kube-scheduler",
        "kube-controller-manager": kube / "kube-controller-manager",
        "kubectl": kube / "kubectl",
        "kwok": kwok / "kwok",
        "dra-standin": Path(sys.executable),  # the driver stand-in runs in this Python
    }


def _ssl_context(state: Path | None) -> ssl.SSLContext:
    if state is None:
        # Scheduler and controller manager serve health on self-signed certs; 127.0.0.1 only.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(state / "pki" / "admin.crt"), str(state / "pki" / "admin.key"))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def _log_tail(state: Path, name: str, lines: int = 15) -> str:
    path = state / "logs" / f"{name}.log"
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join("    " + line for line in text)


def _wait_healthy(
    state: Path,
    *,
    name: str,
    pid: int,
    binary: Path,
    url: str,
    ctx: ssl.SSLContext | None,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not processes.alive(pid, str(binary)):
            raise ClusterError(f"{name} exited during start-up\n{_log_tail(state, name)}")
        status, _ = _get(url, ctx)
        if status == 200:
            return
        time.sleep(0.2)
    raise ClusterError(
        f"{name} was not healthy at {url} after {timeout:.0f}s\n{_log_tail(state, name)}"
    )


def _read_info(state: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((state / "cluster.json").read_text()))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise ClusterError(
            f"{state / 'cluster.json'} is corrupt ({err}); stop the processes listed in "
            f"{state / 'pids'} and remove {state}"
        ) from err


def _write_info(state: Path, info: dict[str, Any]) -> None:
    tmp = state / "cluster.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(state / "cluster.json")


def _running(info: dict[str, Any]) -> dict[str, bool]:
    return {
        name: bool(pid) and processes.alive(int(pid), info["binaries"].get(name))
        for name, pid in info.get("pids", {}).items()
    }


def _args(name: str, state: Path, ports: dict[str, int], lease_seconds: int) -> list[str]:
    p = state / "pki"
    kc = state / "kubeconfigs"
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    if name == "etcd":
        peer = f"http://127.0.0.1:{ports['etcd-peer']}"
        return [
            "--name=rackscale",
            f"--data-dir={state / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=rackscale={peer}",
            "--initial-cluster-state=new",
            # A throwaway test store: durability buys nothing and fsync costs seconds.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=8589934592",
            "--log-level=warn",
        ]
    if name == "kube-apiserver":
        return [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['kube-apiserver']}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--requestheader-client-ca-file={p / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--allow-privileged=true",
            # There is no kube-proxy or real endpoint behind the `kubernetes` service here.
            "--endpoint-reconciler-type=none",
            # One user (the tests) and thousands of fake kubelets: throttling would only slow
            # loading big profiles.
            "--max-requests-inflight=0",
            "--max-mutating-requests-inflight=0",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ]
    if name == "kube-scheduler":
        k = kc / "kube-scheduler.kubeconfig"
        return [
            f"--kubeconfig={k}",
            f"--authentication-kubeconfig={k}",
            f"--authorization-kubeconfig={k}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['kube-scheduler']}",
            "--leader-elect=false",
        ]
    if name == "kube-controller-manager":
        k = kc / "kube-controller-manager.kubeconfig"
        return [
            f"--kubeconfig={k}",
            f"--authentication-kubeconfig={k}",
            f"--authorization-kubeconfig={k}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['kube-controller-manager']}",
            "--leader-elect=false",
            # Each controller acts as its own service account, so the built-in RBAC roles apply.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            f"--cluster-signing-cert-file={p / 'ca.crt'}",
            f"--cluster-signing-key-file={p / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # kwok renews each fake node's lease every quarter of its duration; a new node gets as
            # long for its first Ready, or thousands flip to Unknown while kwok works through them.
            f"--node-monitor-grace-period={max(40, lease_seconds)}s",
            f"--node-startup-grace-period={max(60, lease_seconds)}s",
            "--kube-api-qps=500",
            "--kube-api-burst=1000",
        ]
    if name == "kwok":
        return [
            f"--kubeconfig={kc / 'kwok.kubeconfig'}",
            f"--config={KWOK_CONFIG}",
            f"--config={KWOK_STAGES}",
            f"--manage-nodes-with-annotation-selector={profiles.KWOK_ANNOTATION}=fake",
            f"--node-lease-duration-seconds={lease_seconds}",
            f"--cidr={POD_CIDR}",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ]
    if name == "dra-standin":
        return [
            "-m",
            "e2e.computedomains.standin",
            f"--kubeconfig={state / 'kubeconfig'}",
            f"--port={ports['dra-standin']}",
        ]
    raise AssertionError(name)


def _health_url(name: str, ports: dict[str, int]) -> str:
    port = ports[name]
    if name == "etcd":
        return f"http://127.0.0.1:{port}/health"
    if name in ("kwok", "dra-standin"):
        return f"http://127.0.0.1:{port}/healthz"
    return (
        f"https://127.0.0.1:{port}/readyz"
        if name == "kube-apiserver"
        else f"https://127.0.0.1:{port}/healthz"
    )


def _start(
    state: Path, bins: dict[str, Path], lease_seconds: int, timeout: float
) -> dict[str, Any]:
    if state.exists():
        shutil.rmtree(state)
    (state / "kubeconfigs").mkdir(parents=True)
    (state / "bin").mkdir()
    pki.create(state / "pki")
    ports: dict[str, int] = {}
    for name in (*COMPONENTS, "etcd-peer"):
        port = processes.free_port()
        while port in ports.values():
            port = processes.free_port()
        ports[name] = port
    server = f"https://127.0.0.1:{ports['kube-apiserver']}"
    pki.write_kubeconfig(state / "kubeconfig", state / "pki", "admin", server, CLUSTER_NAME)
    for client in pki.CLIENTS:
        pki.write_kubeconfig(
            state / "kubeconfigs" / f"{client.name}.kubeconfig",
            state / "pki",
            client.name,
            server,
            CLUSTER_NAME,
        )
    (state / "bin" / "kubectl").symlink_to(bins["kubectl"])
    info: dict[str, Any] = {
        "server": server,
        "ports": ports,
        "binaries": {k: str(v) for k, v in bins.items()},
        "nodeLeaseDurationSeconds": lease_seconds,
        "pids": {},
    }
    _write_info(state, info)
    for name in COMPONENTS:
        argv = [str(bins[name]), *_args(name, state, ports, lease_seconds)]
        pid = processes.start(name, argv, state / "pids", state / "logs", cwd=REPO_ROOT)
        info["pids"][name] = pid
        # Recorded before waiting, so that `down` can stop a component that never got healthy.
        _write_info(state, info)
        ctx = (
            _ssl_context(state if name == "kube-apiserver" else None)
            if name not in ("etcd", "kwok", "dra-standin")
            else None
        )
        _wait_healthy(
            state,
            name=name,
            pid=pid,
            binary=bins[name],
            url=_health_url(name, ports),
            ctx=ctx,
            timeout=timeout,
        )
        _log(f"{name} is up (pid {pid})")
    return info


def _api(state: Path) -> ApiClient:
    return profiles.api_client_for(str(state / "kubeconfig"))


def _nodes(state: Path) -> dict[str, bool] | None:
    """Every node's name and whether it is Ready; None if the API server does not answer."""
    info = _read_info(state) or {}
    # resourceVersion=0 is served from the watch cache: cheap even with 18,000 nodes.
    url = f"{info.get('server')}/api/v1/nodes?resourceVersion=0"
    code, body = _get(url, _ssl_context(state), 60)
    if code != 200:
        return None
    return {
        n["metadata"]["name"]: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
        for n in json.loads(body)["items"]
    }


def _wait_ready(state: Path, names: set[str], timeout: float) -> None:
    """Wait until every named node is Ready and the default ServiceAccount exists."""
    deadline = time.monotonic() + timeout
    # Listing is cheap for a few nodes and costs seconds for many: poll in proportion.
    interval = max(0.2, len(names) / 5000)
    missing = set(names)
    while time.monotonic() < deadline:
        nodes = _nodes(state)
        missing = names - {n for n, ready in (nodes or {}).items() if ready}
        if not missing:
            break
        time.sleep(interval)
    if missing:
        raise ClusterError(
            f"{len(missing)} of {len(names)} profile nodes were not Ready after {timeout:.0f}s "
            f"(e.g. {', '.join(sorted(missing)[:3])})\n{_log_tail(state, 'kwok')}"
        )
    info = _read_info(state) or {}
    url = f"{info.get('server')}/api/v1/namespaces/default/serviceaccounts/default"
    while time.monotonic() < deadline:
        if _get(url, _ssl_context(state))[0] == 200:
            return
        time.sleep(0.2)
    raise ClusterError(
        f"the default ServiceAccount did not appear after {timeout:.0f}s: kube-controller-manager "
        f"is not working\n{_log_tail(state, 'kube-controller-manager')}"
    )


def up(profile: str = "default", wait: bool = False, timeout: float = 120.0) -> Cluster:
    """Start the local control plane (or reuse a running one) and create the profile's nodes."""
    prof = profiles.load(profile)
    state = state_dir()
    with _lock(state):
        info = _read_info(state)
        started = True
        if info is not None:
            running = _running(info)
            api_ok = (
                all(running.values())
                and _get(f"{info['server']}/readyz", _ssl_context(state))[0] == 200
            )
            if api_ok and set(running) == set(COMPONENTS):
                started = False
                _log(f"reusing the running cluster in {state}")
                if info.get("nodeLeaseDurationSeconds") != prof.node_lease_duration_seconds:
                    _log(
                        "note: it runs with node leases of "
                        f"{info.get('nodeLeaseDurationSeconds')}s, "
                        f"profile {prof.name} asks for {prof.node_lease_duration_seconds}s; "
                        "`down` and `up` again to apply that"
                    )
            else:
                dead = sorted(n for n, ok in running.items() if not ok) or [
                    "kube-apiserver (not ready)"
                ]
                _log(
                    f"found a broken cluster in {state} ({', '.join(dead)} not running); "
                    "restarting it"
                )
                _down(state)
                info = None
        if info is None:
            bins = binaries()
            t0 = time.monotonic()
            try:
                info = _start(state, bins, prof.node_lease_duration_seconds, timeout)
            except BaseException:
                _log(f"start-up failed; stopping what was started (logs stay in {state / 'logs'})")
                _down(state, keep_logs=True)
                raise
            _log(f"control plane started in {time.monotonic() - t0:.1f}s")
        objs = profiles.nodes(prof)
        t0 = time.monotonic()
        there = set(_nodes(state) or ())
        created, existing = profiles.create(
            _api(state), [n for n in objs if n["metadata"]["name"] not in there]
        )
        existing = len(objs) - created
        _log(
            f"profile {prof.name}: {created} nodes created, {existing} already there "
            f"({time.monotonic() - t0:.1f}s)"
        )
        inferencepools.install(_api(state))  # the CRD only: no gateway runs here
        if wait:
            t0 = time.monotonic()
            _wait_ready(state, {n["metadata"]["name"] for n in objs}, timeout + len(objs) / 50)
            _log(f"{len(objs)} nodes Ready ({time.monotonic() - t0:.1f}s)")
    return Cluster(
        state=state,
        kubeconfig=state / "kubeconfig",
        server=info["server"],
        kubectl=state / "bin" / "kubectl",
        started=started,
    )


def _down(state: Path, keep_logs: bool = False) -> None:
    info = _read_info(state) or {}
    pids = {n: processes.read_pid(state / "pids", n) for n in COMPONENTS}
    pids.update({n: int(p) for n, p in info.get("pids", {}).items()})
    bins = info.get("binaries", {})
    left = []
    for name in reversed(COMPONENTS):
        pid = pids.get(name)
        # A recorded pid that now runs some other program was reused: never signal it.
        if pid and processes.alive(pid, bins.get(name, name)) and not processes.stop(pid):
            left.append(f"{name} (pid {pid})")
    if left:
        raise ClusterError(f"could not stop {', '.join(left)}; kill them by pid and rerun `down`")
    if keep_logs:
        for entry in state.iterdir():
            if entry.name != "logs":
                shutil.rmtree(
                    entry
                ) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    elif state.exists():
        shutil.rmtree(state)


def down() -> bool:
    """Stop every process of the local cluster and remove its state; False if there was none."""
    state = state_dir()
    with _lock(state):
        if not state.exists():
            return False
        _down(state)
        return True


def status() -> dict[str, Any]:
    """Which components run, and what the API server says about its version and nodes."""
    state = state_dir()
    info = _read_info(state)
    if info is None:
        return {"state": str(state), "up": False}
    running = _running(info)
    out: dict[str, Any] = {
        "state": str(state),
        "server": info["server"],
        "kubeconfig": str(state / "kubeconfig"),
        "components": {
            n: {"pid": info["pids"].get(n), "running": running.get(n, False)} for n in COMPONENTS
        },
    }
    code, body = _get(f"{info['server']}/version", _ssl_context(state))
    out["up"] = code == 200 and all(running.get(n) for n in COMPONENTS)
    if code == 200:
        out["version"] = json.loads(body).get("gitVersion")
        code, body = _get(f"{info['server']}/api/v1/nodes", _ssl_context(state), timeout=30)
        if code == 200:
            items = json.loads(body)["items"]
            out["nodes"] = len(items)
            out["readyNodes"] = sum(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n["status"].get("conditions", [])
                )
                for n in items
            )
    return out


def _usage(cluster: Cluster) -> str:
    return (
        f"export KUBECONFIG={cluster.kubeconfig}\n"
        f"{cluster.kubectl} get nodes   # kubectl matching the API server's version"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="start the cluster (or reuse it) and create the profile's nodes")
    u.add_argument("--profile", default="default", help="a name in e2e/profiles/ or a YAML path")
    u.add_argument("--wait", action="store_true", help="wait until every profile node is Ready")
    u.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each step")
    sub.add_parser("down", help="stop every process and remove the state")
    sub.add_parser("status", help="show what runs")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            cluster = up(args.profile, wait=args.wait, timeout=args.timeout)
            print(_usage(cluster))
        elif args.command == "down":
            print(
                "stopped the local cluster and removed its state"
                if down()
                else f"no local cluster in {state_dir()}"
            )
        else:
            s = status()
            print(json.dumps(s, indent=2))
            return 0 if s["up"] else 1
        return 0
    except (ClusterError, profiles.ProfileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
