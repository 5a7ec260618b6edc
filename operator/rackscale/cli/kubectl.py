"""What every subcommand shares with kubectl: flags, output formats, errors, exit codes.

- `--kubeconfig`, `--context`, `--request-timeout` where a command reads the cluster;
- `-o table|wide|json|yaml` and `--no-headers`;
- errors as one line `error: ...` on stderr, as kubectl prints them;
- exit codes: 0 done, 1 the cluster could not be read, 2 bad input (argparse uses 2 as well),
  3 `plan` left a replica unplaced.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

import yaml

OK, CLUSTER_ERROR, BAD_INPUT, UNPLACED = 0, 1, 2, 3
OUTPUTS = ("table", "wide", "json", "yaml")


class ClusterError(Exception):
    """The cluster could not be read; the message is one line a person can act on."""


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def add_output(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default="table",
        help="table (default), wide (more columns), json or yaml",
    )
    cmd.add_argument(
        "--no-headers", action="store_true", help="table and wide: print no header lines"
    )


def add_cluster(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG or ~/.kube/config")
    cmd.add_argument("--context", default=None, help="the kubeconfig context to use")
    cmd.add_argument(
        "--request-timeout",
        default="0",
        metavar="DURATION",
        help="give up on a request after this long (e.g. 30s, 1m; 0, the default: never)",
    )


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def seconds(duration: str) -> float | None:
    """kubectl's --request-timeout: `30s`, `1m`, `500ms`, a bare number of seconds; 0 is none."""
    match = _DURATION.match(duration.strip())
    if not match:
        raise ValueError(
            f"--request-timeout: {duration!r} is not a duration (such as 30s, 1m or 0)"
        )
    value = (
        float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    )
    return value or None


def dump(data: Any, output: str) -> str:
    if output == "yaml":
        return yaml.safe_dump(data, sort_keys=False, width=120).rstrip("\n")
    return json.dumps(data, indent=2)


def columns(rows: list[tuple[str, ...]], headers: bool) -> list[str]:
    """Rows aligned in columns two spaces apart, the header row first (unless dropped)."""
    shown = rows if headers else rows[1:]
    if not shown:
        return []
    widths = [max(len(r[i]) for r in shown) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in shown
    ]


class Cluster:
    """A client for the cluster a kubeconfig and context name, with kubectl's error messages."""

    def __init__(self, args: argparse.Namespace) -> None:
        from kubernetes import client, config

        try:
            self.timeout = seconds(args.request_timeout)
        except ValueError as error:
            raise ClusterError(str(error)) from error
        configuration = client.Configuration()
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]  # the loaders are unannotated
                config_file=args.kubeconfig,
                context=args.context,
                client_configuration=configuration,
            )
        except Exception as error:  # no file, no such context, unreadable credentials
            raise ClusterError(f"cannot load the kubeconfig: {error}") from error
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.server = configuration.host

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_: object) -> None:
        self.api.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated

    def call(self, what: str, api: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        """One request; `what` says in kubectl's words what it reads (`list nodes`)."""
        if self.timeout:
            kwargs["_request_timeout"] = self.timeout
        try:
            response = getattr(api, method)(*args, _preload_content=False, **kwargs)
        except Exception as error:
            raise ClusterError(self.explain(error, what)) from error
        return json.loads(response.data)

    def serves(self, group: str, version: str) -> bool:
        """Whether the API server serves `group/version` (discovery: every user may ask)."""
        from kubernetes import client

        found = self.call("get --raw /apis", client.ApisApi(self.api), "get_api_versions")
        return any(
            g.get("name") == group and any(v.get("version") == version for v in g["versions"])
            for g in found.get("groups") or []
        )

    def items(self, what: str, api: Any, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return list(self.call(what, api, method, *args, **kwargs).get("items") or [])

    def explain(self, error: Exception, what: str) -> str:
        status = getattr(error, "status", None)
        if status == 403:
            verb, _, resource = what.partition(" ")
            return (
                f"forbidden: you may not {what} (the command reads nodes, pods in all namespaces "
                f"and rackpools.rackscale.dev); check with `kubectl auth can-i {verb} "
                f"{resource.split()[0]}` and ask for get and list on those resources cluster-wide"
            )
        if status == 401:
            return f"unauthorized: the credentials of the kubeconfig were refused ({what})"
        if status == 404:
            return f"not found: {what}"
        if status:
            reason = getattr(error, "reason", "") or ""
            return f"{what}: the API server answered {status} {reason}".rstrip()
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"cannot reach the cluster at {self.server} ({what}): {text}"
