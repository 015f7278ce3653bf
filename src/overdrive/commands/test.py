"""``overdrive test``: a short real multi-process run of the installed library, like ``accelerate test``.

Starts :mod:`overdrive.commands.sanity` through ``overdrive launch`` on two CPU processes (or with the settings of
``--config_file``), which trains a tiny model on every rank and compares it with a plain PyTorch loop.

Example:
    >>> test_argv(None)[:4]
    ['--num_processes', '2', '--cpu', '--quiet']
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from . import command_parser

__all__ = ["test_argv", "test_command_parser", "test_main"]


def test_argv(config_file: str | None) -> list[str]:
    """``overdrive launch`` arguments of the sanity run."""
    head = ["--config_file", config_file] if config_file else ["--num_processes", "2", "--cpu"]
    return [*head, "--quiet", "-m", "overdrive.commands.sanity"]


def test_command_parser(subparsers: Any = None) -> argparse.ArgumentParser:
    """The ``test`` parser.

    Example:
        >>> test_command_parser().parse_args([]).config_file is None
        True
    """
    text = "Check the installation: a short two-process training run compared with plain PyTorch."
    parser = command_parser(subparsers, "test", text)
    parser.add_argument("--config_file", "--config-file", default=None, metavar="PATH",
                        help="launch with this config file (default: two CPU processes, ignoring any default file)")
    return parser


def test_main(argv: Sequence[str]) -> int:
    """``overdrive test [--config_file PATH]``; returns 0 when every rank passed."""
    from . import UsageError
    from .launch import launch_command, launch_command_parser, parse_launch_args

    args = test_command_parser().parse_args(list(argv))
    try:
        # No --config_file: an empty config, so a default file written for another machine cannot change the test.
        launch_args = parse_launch_args(test_argv(args.config_file), config=None if args.config_file else {})
    except UsageError as err:
        launch_command_parser().error(str(err))
    code = launch_command(launch_args)
    print("overdrive test: " + ("passed" if code == 0 else f"FAILED (exit code {code}); see the output above"))
    return code
