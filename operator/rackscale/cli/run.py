"""`rackscale run`: the operator, in this process, against the current kubeconfig or in-cluster."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from rackscale.api.pricing import Price, parse_price

HANDLERS = "rackscale.controller.handlers"


def register(commands: Any) -> None:
    cmd = commands.add_parser(
        "run",
        help="run the operator against the current cluster",
        description="Run the rackscale operator: keep RackPool status true and place, heal, scale "
        "and update InferenceDeployments. Uses in-cluster credentials in a pod, else the current "
        "kubeconfig ($KUBECONFIG). Several operators may run: the one holding the leader Lease "
        "(coordination.k8s.io/v1) acts and the others stand by, taking over within seconds when "
        "it stops or dies.",
    )
    scope = cmd.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="serve InferenceDeployments in NS only (repeatable; globs allowed). The GPU "
        "ledger then counts only pods of these namespaces: prefer --all-namespaces unless no "
        "other namespace runs GPU pods on pool nodes",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    cmd.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        metavar="URL",
        help="liveness endpoint (default %(default)s; 'none' to disable)",
    )
    cmd.add_argument(
        "--readiness",
        default="none",
        metavar="URL",
        help="readiness endpoint, such as http://0.0.0.0:8081/readyz (the chart's): 200 once a "
        "reconcile pass has completed, 503 before (default: none)",
    )
    cmd.add_argument(
        "--pool-grace",
        type=float,
        default=float(os.environ.get("RACKSCALE_POOL_GRACE", "300")),
        metavar="SECONDS",
        help="a RackPool matching no rack this long turns Stalled (default %(default)s)",
    )
    cmd.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("RACKSCALE_METRICS_PORT", "9090")),
        metavar="PORT",
        help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics (default %(default)s; "
        "0 to disable)",
    )
    cmd.add_argument(
        "--unschedulable-timeout",
        type=float,
        default=float(os.environ.get("RACKSCALE_UNSCHEDULABLE_TIMEOUT", "60")),
        metavar="SECONDS",
        help="a pinned pod unschedulable this long sends its replica back to placement "
        "(default %(default)s)",
    )
    cmd.add_argument(
        "--compute-domain-timeout",
        type=float,
        default=float(os.environ.get("RACKSCALE_COMPUTE_DOMAIN_TIMEOUT", "300")),
        metavar="SECONDS",
        help="a replica whose ComputeDomain is not Ready this long restarts with a fresh one "
        "(default %(default)s)",
    )
    cmd.add_argument(
        "--device-plugin-gpu-hour",
        type=_price,
        default=os.environ.get("RACKSCALE_DEVICE_PLUGIN_GPU_HOUR") or None,
        metavar="PRICE",
        help="price of one GPU-hour on ordinary nodes, e.g. 2.10 or '2.10 USD': device-plugin "
        "replicas count in a deployment's status.costPerHour (default: they are left out)",
    )
    cmd.add_argument(
        "--resync",
        type=float,
        default=float(os.environ.get("RACKSCALE_RESYNC", "300")),
        metavar="SECONDS",
        help="reconcile every deployment at least this often; in between, a pass reconciles "
        "only the deployments whose objects, pods, nodes or timers changed (default %(default)s)",
    )
    cmd.add_argument(
        "--log-format",
        choices=("json", "plain", "full"),
        default="json",
        help="log lines as JSON objects (default) or text",
    )
    cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _election_flags(cmd)
    cmd.set_defaults(handler=run)


def _election_flags(cmd: Any) -> None:
    from rackscale.controller import lease

    cmd.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=lease.election_enabled(os.environ),
        help="act only while holding the leader Lease, so that two operators never both act "
        "(default: on; RACKSCALE_LEADER_ELECTION=false turns it off)",
    )
    cmd.add_argument(
        "--lease-name",
        default=os.environ.get("RACKSCALE_LEASE_NAME") or lease.LEASE_NAME,
        metavar="NAME",
        help="the Lease the operators share (default %(default)s)",
    )
    cmd.add_argument(
        "--lease-namespace",
        default=lease.lease_namespace(os.environ, os.environ.get("RACKSCALE_LEASE_NAMESPACE")),
        metavar="NS",
        help="the Lease's namespace (default: $POD_NAMESPACE, else default; now %(default)s)",
    )
    cmd.add_argument(
        "--lease-duration",
        type=float,
        default=float(os.environ.get("RACKSCALE_LEASE_DURATION") or lease.LEASE_DURATION),
        metavar="SECONDS",
        help="a Lease not renewed this long may be taken by a standby; the leader renews it "
        f"every {lease.RENEW_EVERY:g}s (default %(default)s, at least "
        f"{3 * lease.RENEW_EVERY:g})",
    )
    cmd.add_argument(
        "--liveness-bound",
        type=float,
        default=float(os.environ["RACKSCALE_LIVENESS_BOUND"])
        if os.environ.get("RACKSCALE_LIVENESS_BOUND")
        else None,
        metavar="SECONDS",
        help="the liveness probe fails when the leader has completed no reconcile pass, or a "
        "standby has made no attempt at the Lease, this long (default: 6 loop periods, the "
        "shorter of --resync and 10 s, at least 60)",
    )


def _price(text: str) -> Price:
    try:
        return parse_price(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _election(args: argparse.Namespace) -> Any:
    """The Lease settings from the flags (None: election off); ValueError names the flag."""
    from rackscale.controller import lease

    if not args.leader_election:
        return None
    try:
        return lease.LeaseSettings(
            name=args.lease_name,
            namespace=args.lease_namespace,
            identity=lease.default_identity(os.environ),
            duration=args.lease_duration,
        )
    except ValueError as error:
        raise ValueError(f"--lease-duration: {error}") from error


def run(args: argparse.Namespace) -> int:
    try:
        election = _election(args)
    except ValueError as error:
        print(f"rackscale run: {error}", file=sys.stderr)
        return 2
    if args.liveness_bound is not None and args.liveness_bound <= 0:
        print("rackscale run: --liveness-bound must be positive", file=sys.stderr)
        return 2
    if args.metrics_port:
        from rackscale.controller import metrics

        try:
            metrics.serve(args.metrics_port)
        except OSError as error:
            message = f"cannot serve metrics on port {args.metrics_port}: {error}"
            print(f"rackscale run: {message} (--metrics-port 0 turns them off)", file=sys.stderr)
            return 1

    if args.readiness not in ("", "none"):
        from rackscale.controller import readiness

        try:
            readiness.serve(args.readiness)
        except OSError as error:
            message = f"cannot serve readiness at {args.readiness}: {error}"
            print(f"rackscale run: {message} (--readiness none turns it off)", file=sys.stderr)
            return 1

    import asyncio

    import kopf

    from rackscale.controller import liveness
    from rackscale.controller.reconcile import Options
    from rackscale.controller.worker import period

    formats = {
        "json": kopf.LogFormat.JSON,
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
    }
    kopf.configure(debug=args.verbose, verbose=args.verbose, log_format=formats[args.log_format])
    if not args.verbose:
        # kopf logs every watch event it hands to a handler; rackscale logs what it does.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("kubernetes").setLevel(logging.WARNING)
    importlib.import_module(HANDLERS)  # registers the handlers with kopf
    options = Options(
        unschedulable_timeout=args.unschedulable_timeout,
        compute_domain_timeout=args.compute_domain_timeout,
        resync=args.resync,
        ordinary_price=args.device_plugin_gpu_hour,
        pool_grace=args.pool_grace,
    )
    # Set when the leader Lease is lost: kopf stops, the process exits. An asyncio.Event (bound
    # to kopf's loop when first awaited): kopf waits for a threading.Event in a thread of the
    # default executor, which a clean stop would then wait for forever.
    stop = asyncio.Event()
    memo = kopf.Memo(
        options=options,
        election=election,
        stop=stop.set,
        liveness_bound=args.liveness_bound or liveness.default_bound(period(args.resync)),
    )
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=None if args.liveness in ("", "none") else args.liveness,
        memo=memo,
        stop_flag=stop,
    )
    if memo.get("lost"):
        print("rackscale run: the leader Lease was lost; stopped", file=sys.stderr)
        return 1
    return 0
