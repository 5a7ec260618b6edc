"""`rackscale` entry point: one subcommand per module, each adding its own arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rackscale import __version__
from rackscale.cli import explain, plan, racks, run


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="rackscale",
        description="Place LLM inference replicas on NVLink racks as one schedulable unit.",
    )
    root.add_argument("--version", action="version", version=f"rackscale {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (plan, run, racks, explain):  # each module adds its own subcommand
        module.register(commands)
    return root


def plugin_parser() -> argparse.ArgumentParser:
    """`kubectl rackscale`: the read-only subcommands, named as kubectl shows them."""
    root = argparse.ArgumentParser(
        prog="kubectl rackscale",
        description="Look at NVLink racks and InferenceDeployments: racks, plan, explain.",
    )
    root.add_argument("--version", action="version", version=f"kubectl-rackscale {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (racks, plan, explain):
        module.register(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.handler(args))


def kubectl_plugin(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kubectl-rackscale` script: kubectl runs it for `kubectl rackscale`."""
    args = plugin_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
