"""`rackscale` entry point: one subcommand per module, each adding its own arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rackscale import __version__
from rackscale.cli import plan, racks, run


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="rackscale",
        description="Place LLM inference replicas on NVLink racks as one schedulable unit.",
    )
    root.add_argument("--version", action="version", version=f"rackscale {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (plan, run, racks):  # each module adds its own subcommand
        module.register(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
