"""`make demo`: the operator on the local control plane, placing the examples on fake GB200 racks.

python -m e2e.demo up      # cluster, CRDs, operator, examples; then the rack view
python -m e2e.demo down    # stop the operator and the cluster (make cluster-down)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from e2e import cluster as local
from e2e.controlplane import processes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
APPLY = [
    "rackpool-gb200.yaml",
    "deepseek-r1.yaml",
    "kimi-k2-exclusive.yaml",
    "llama-8b.yaml",
]
NAMESPACES = ("llm", "research")
OPERATOR = "operator"
# The operator runs as `python -m rackscale`: its /proc/PID/exe is the real interpreter.
PYTHON = os.path.realpath(sys.executable)


def _say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def _kubectl(kubectl: Path, *args: str, check: bool = True, quiet: bool = False) -> str:
    done = subprocess.run(
        [str(kubectl), *args], capture_output=True, text=True, check=False, env=os.environ
    )
    if check and done.returncode:
        raise SystemExit(f"demo: kubectl {' '.join(args)} failed:\n{done.stderr.strip()}")
    if not quiet:
        print(done.stdout, end="", flush=True)
    return done.stdout


def _start_operator(state: Path) -> int:
    running = processes.read_pid(state / "pids", OPERATOR)
    if running and processes.alive(running, PYTHON):
        print(f"the operator already runs (pid {running})")
        return running
    argv = [sys.executable, "-m", "rackscale", "run", "--all-namespaces"]
    pid = processes.start(OPERATOR, argv, state / "pids", state / "logs")
    print(f"started the operator (pid {pid}); its log: {state / 'logs' / 'operator.log'}")
    return pid


def _wait_placed(kubectl: Path, pid: int, state: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not processes.alive(pid, PYTHON):
            log = (state / "logs" / "operator.log").read_text()[-3000:]
            raise SystemExit(f"demo: the operator exited; the end of its log:\n{log}")
        phases = _kubectl(
            kubectl, "get", "idep", "-A", "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase}{'\\n'}{end}",
            quiet=True,
        )  # fmt: skip
        pending = [line for line in phases.split() if line.split("=")[1] in ("", "Pending")]
        if phases and not pending:
            return
        time.sleep(1)
    raise SystemExit(f"demo: not all InferenceDeployments were placed in {timeout:.0f}s")


def up(profile: str) -> int:
    _say(f"starting the local control plane (profile {profile})")
    cl = local.up(profile, wait=True)
    os.environ["KUBECONFIG"] = str(cl.kubeconfig)
    kubectl = cl.kubectl
    _say("installing the CRDs")
    _kubectl(kubectl, "apply", "-f", str(ROOT / "crds"))
    _kubectl(kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    _say("starting the operator")
    pid = _start_operator(cl.state)
    _say("applying the examples: " + ", ".join(APPLY))
    for ns in NAMESPACES:
        _kubectl(kubectl, "create", "namespace", ns, check=False, quiet=True)
    _kubectl(kubectl, "apply", *(arg for name in APPLY for arg in ("-f", str(EXAMPLES / name))))
    _say("waiting until every InferenceDeployment is placed")
    _wait_placed(kubectl, pid, cl.state)
    _say("the racks, as the operator sees them (rackscale racks)")
    subprocess.run([sys.executable, "-m", "rackscale", "racks"], check=False)
    _say("kubectl get idep,rp")
    _kubectl(kubectl, "get", "idep", "-A")
    _kubectl(kubectl, "get", "rp")
    _say("kubectl get computedomains -A: IMEX channels of the replicas spanning trays")
    _kubectl(
        kubectl, "get", "computedomains", "-A", "-o",
        "custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,"
        "STATUS:.status.status,CLAIM-TEMPLATE:.spec.channel.resourceClaimTemplate.name",
    )  # fmt: skip
    print(
        f"""
The operator keeps running against the local cluster. Try:

  export KUBECONFIG={cl.kubeconfig}
  alias kubectl={kubectl}
  kubectl get pods -n llm -o wide -l rackscale.dev/deployment=deepseek-r1
  kubectl describe idep -n llm deepseek-r1          # conditions and events
  kubectl scale idep -n llm deepseek-r1 --replicas=3 # a third replica, on another rack
  kubectl delete pod -n llm deepseek-r1-0-3          # the whole replica 0 is placed again
  kubectl apply -f examples/llama-405b-block.yaml    # spans two racks of a block, or says why not
  kubectl apply -k examples/pd-router               # the disaggregated example's router
  kubectl apply -f examples/deepseek-r1-disagg.yaml  # prefill and decode, one rack per group
  kubectl scale idep -n llm deepseek-r1-disagg --replicas=2  # a second group: the ratio kept
  .venv/bin/rackscale racks                          # the rack view again

Stop everything with: make cluster-down   (operator log: {cl.state / "logs" / "operator.log"})"""
    )
    return 0


def down() -> int:
    state = local.state_dir()
    pid = processes.read_pid(state / "pids", OPERATOR)
    if pid and processes.alive(pid, PYTHON):
        processes.stop(pid)
        print(f"stopped the operator (pid {pid})")
    print(
        "stopped the local cluster and removed its state"
        if local.down()
        else f"no local cluster in {state}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="cluster, CRDs, operator and examples, then the rack view")
    u.add_argument("--profile", default="default")
    sub.add_parser("down", help="stop the operator and the cluster")
    args = parser.parse_args(argv)
    return up(args.profile) if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
