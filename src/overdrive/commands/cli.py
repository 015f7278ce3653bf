"""The ``overdrive`` console entry point: ``overdrive <command> [options]``.

Commands: ``launch``, ``config``, ``env``, ``test``, ``merge-weights`` and ``estimate-memory`` (one module each in :mod:`overdrive.commands`). This module
and the command modules import only the standard library and :mod:`overdrive.settings` at module level, so
``overdrive --help`` and ``overdrive config`` never import torch.

Example:
    >>> main(["launch", "--no_python", "true"])
    0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .config import config_command_parser, config_main
from .env import env_command_parser, env_main
from .estimate import estimate_command_parser, estimate_main
from .launch import launch_command_parser, launch_main
from .merge import merge_command_parser, merge_main
from .test import test_command_parser, test_main

__all__ = ["COMMANDS", "build_parser", "main"]

# Each command runs from its own arguments exactly as typed (a script's "--" must survive), so dispatch is by name.
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "launch": launch_main,
    "config": config_main,
    "env": env_main,
    "test": test_main,
    "merge-weights": merge_main,
    "estimate-memory": estimate_main,
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("overdrive")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``overdrive`` parser, listing one subparser per command (for ``--help`` and unknown commands).

    Example:
        >>> build_parser().parse_args(["launch", "train.py"]).training_script
        'train.py'
    """
    parser = argparse.ArgumentParser(
        prog="overdrive",
        description="Train PyTorch models on one or many devices and machines with your own loop.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"overdrive {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    launch_command_parser(commands)
    config_command_parser(commands)
    env_command_parser(commands)
    test_command_parser(commands)
    merge_command_parser(commands)
    estimate_command_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``overdrive`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Usage errors (unknown option, bad value, missing script) print the command's usage line and a message naming the
    input and the fix, then exit with code 2 before anything is started; ``--help`` exits with 0.

    Example:
        >>> main(["launch", "--no_python", "true"])
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        try:
            return int(COMMANDS[argv[0]](argv[1:]))
        except KeyboardInterrupt:  # Ctrl-C: the children got it too; no traceback, the shell's code for SIGINT
            return 130
    parser = build_parser()
    parser.parse_args(argv)  # --help, --version or a wrong command: argparse answers and exits
    parser.print_help(sys.stderr)  # no command given
    return 1


if __name__ == "__main__":
    sys.exit(main())
