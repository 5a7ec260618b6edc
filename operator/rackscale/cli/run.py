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
        "kubeconfig ($KUBECONFIG). Run one operator per cluster (kopf has no leader election).",
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
        default=float(os.environ.get("RACKSCALE_RESYNC", "10")),
        metavar="SECONDS",
        help="reconcile everything at least this often (default %(default)s)",
    )
    cmd.add_argument(
        "--log-format",
        choices=("json", "plain", "full"),
        default="json",
        help="log lines as JSON objects (default) or text",
    )
    cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    cmd.set_defaults(handler=run)


def _price(text: str) -> Price:
    try:
        return parse_price(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def run(args: argparse.Namespace) -> int:
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

    import kopf

    from rackscale.controller.reconcile import Options

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
    liveness = None if args.liveness in ("", "none") else args.liveness
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
        memo=kopf.Memo(options=options),
    )
    return 0
