"""`rackscale` entry point: one subcommand per module, each adding its own arguments."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rackscale import __version__
from rackscale.cli import explain, kubectl, plan, racks, run

EXIT_CODES = """exit codes: 0 done; 1 the cluster could not be read; 2 bad input or arguments;
3 `plan` left some replica unplaced (the plan is printed first). Errors are one line on stderr
starting `error: `."""


def _version(name: str) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        if args.output in ("json", "yaml"):
            print(kubectl.dump({"name": name, "version": __version__}, args.output))
        else:
            print(f"{name} {__version__}")
        return kubectl.OK

    return show


def _add_version(commands: Any, name: str) -> None:
    cmd = commands.add_parser("version", help="print the version", description="Print the version.")
    cmd.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    cmd.set_defaults(handler=_version(name))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="rackscale",
        description="Place LLM inference replicas on NVLink racks as one schedulable unit.",
        epilog=EXIT_CODES,
    )
    root.add_argument("--version", action="version", version=f"rackscale {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (plan, run, racks, explain):  # each module adds its own subcommand
        module.register(commands)
    _add_version(commands, "rackscale")
    return root


def plugin_parser() -> argparse.ArgumentParser:
    """`kubectl rackscale`: the read-only subcommands, named as kubectl shows them."""
    root = argparse.ArgumentParser(
        prog="kubectl rackscale",
        description="Look at NVLink racks and InferenceDeployments: racks, plan, explain.",
        epilog=EXIT_CODES,
    )
    root.add_argument("--version", action="version", version=f"kubectl-rackscale {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (racks, plan, explain):
        module.register(commands)
    _add_version(commands, "kubectl-rackscale")
    return root


# What a shell reports for a command ended by SIGPIPE: 128 + 13.
CLOSED_PIPE = 141


def _handle(args: argparse.Namespace) -> int:
    """Run the subcommand; a reader that closed the pipe early (`| head`) ends it quietly."""
    try:
        code = int(args.handler(args))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the unflushed output again at exit: point stdout at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return _handle(parser().parse_args(argv))


def kubectl_plugin(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kubectl-rackscale` script: kubectl runs it for `kubectl rackscale`."""
    return _handle(plugin_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
