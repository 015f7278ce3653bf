"""``overdrive launch``: run a training script on one or many processes and machines, through torchrun.

Accelerate's flag names (``--num_processes``; the dash spelling ``--num-processes`` works too) become torchrun's
arguments, and torchrun's elastic agent (``torch.distributed.run``, in this process) starts and watches the workers.
One process on one machine needs no agent: the script runs as a plain child process and its exit code is returned.

Precedence for each launch option: command-line flag > config file (the ``config`` mapping of
:func:`resolve_launch_args`) > built-in default. The training settings declared with a ``flag`` in
:mod:`overdrive.settings` reach the workers as their ``OVERDRIVE_*`` variable, e.g. ``--mixed_precision bf16`` →
``OVERDRIVE_MIXED_PRECISION=bf16``; a setting not given is not exported, so the worker's own environment still counts.

Example:
    >>> args = parse_launch_args(["--num_processes", "2", "--mixed_precision", "bf16", "-m", "pkg.train", "--lr", "1"])
    >>> build_torchrun_argv(args)
    ['--nproc-per-node', '2', '--standalone', '--max-restarts', '0', '--module', 'pkg.train', '--lr', '1']
    >>> build_env(args)
    {'OVERDRIVE_MIXED_PRECISION': 'bf16', 'ACCELERATE_MIXED_PRECISION': 'bf16'}
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..settings import SETTINGS, Setting
from . import UsageError, unknown_option_message

__all__ = [
    "LAUNCH_DEFAULTS",
    "build_env",
    "build_single_process_cmd",
    "build_torchrun_argv",
    "launch_command",
    "launch_command_parser",
    "launch_main",
    "parse_launch_args",
    "resolve_launch_args",
]

# Built-in defaults of the launch-only options; flags are parsed with default None so "not given" stays visible.
LAUNCH_DEFAULTS: dict[str, Any] = {
    "num_processes": None,  # None: one process per machine
    "num_machines": 1,
    "machine_rank": 0,
    "main_process_ip": None,
    "main_process_port": None,
    "multi_gpu": False,
    "max_restarts": 0,
    "monitor_interval": None,  # None: torchrun's own default
    "module": False,
    "no_python": False,
    "quiet": False,
}
DEFAULT_MAIN_PROCESS_PORT = 29500  # Accelerate's and torchrun's default for multi-machine jobs


def _setting_flags() -> dict[str, Setting]:
    """The training settings that have a launch flag, keyed by the flag's argparse destination."""
    return {s.flag.lstrip("-").replace("-", "_"): s for s in SETTINGS.values() if s.flag}


class _HelpFormatter(argparse.HelpFormatter):
    """Lists each option once, in Accelerate's underscore spelling; the dash alias still parses."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if len(action.option_strings) > 1:
            shown = [s for s in action.option_strings if "-" not in s[2:]] or action.option_strings
            action = argparse.Action(shown, action.dest, nargs=action.nargs, metavar=action.metavar)
        return super()._format_action_invocation(action)


def _option(group: Any, *flags: str, **kwargs: Any) -> None:
    """Add an option under its given spellings plus the dash spelling of each ``--long_name``."""
    dashed = [f"--{f[2:].replace('_', '-')}" for f in flags if f.startswith("--") and "_" in f]
    group.add_argument(*flags, *dashed, default=None, **kwargs)


def launch_command_parser(subparsers: Any = None) -> argparse.ArgumentParser:
    """The ``launch`` argument parser; added to ``subparsers`` (from ``add_subparsers``) when given.

    Example:
        >>> launch_command_parser().parse_args(["--num-processes", "2", "train.py"]).num_processes
        2
    """
    text = "Run a training script on one or many processes and machines (through torchrun)."
    options: dict[str, Any] = {"description": text, "allow_abbrev": False, "formatter_class": _HelpFormatter}
    if subparsers is not None:
        parser = subparsers.add_parser("launch", help=text, **options)
        parser.set_defaults(func=launch_command)
    else:
        parser = argparse.ArgumentParser(prog="overdrive launch", **options)

    procs = parser.add_argument_group("processes and machines")
    _option(procs, "--num_processes", type=int, metavar="N", help="processes over all machines (default 1 per machine)")
    _option(procs, "--num_machines", type=int, metavar="N", help="machines taking part (default 1)")
    _option(procs, "--machine_rank", type=int, metavar="R", help="this machine's rank, 0..num_machines-1")
    _option(procs, "--main_process_ip", metavar="IP", help="address of machine 0 (needed with num_machines > 1)")
    _option(procs, "--main_process_port", type=int, metavar="PORT",
            help=f"port on machine 0 (default {DEFAULT_MAIN_PROCESS_PORT} on many machines; a free one on one)")
    _option(procs, "--multi_gpu", action="store_true", help="accepted for Accelerate compatibility; the process "
            "count alone decides, and without a GPU the processes run on CPU")
    _option(procs, "--max_restarts", type=int, metavar="N", help="restart the whole group up to N times (default 0)")
    _option(procs, "--monitor_interval", type=float, metavar="S", help="seconds between torchrun's health checks")

    training = parser.add_argument_group("training settings (reach the script as OVERDRIVE_* variables)")
    for dest, setting in _setting_flags().items():
        help_text = f"{setting.help} Exported as {setting.env[0]}."
        if isinstance(setting.default, bool):
            _option(training, f"--{dest}", action="store_true", help=help_text)
        else:
            plain = "N" if isinstance(setting.default, int) else "VALUE"
            metavar = "{" + ",".join(map(str, setting.choices)) + "}" if setting.choices else plain
            _option(training, f"--{dest}", metavar=metavar, help=help_text)

    script = parser.add_argument_group("what to run")
    _option(script, "-m", "--module", action="store_true", help="run the target as a module, like `python -m`")
    _option(script, "--no_python", action="store_true", help="run the target as an executable, without python")
    _option(script, "-q", "--quiet", action="store_true", help="hide torchrun's warnings and notices")
    # nargs="?": a missing script is reported after unknown options, with its own message.
    script.add_argument("training_script", nargs="?", metavar="script_or_module", help="the script to run")
    script.add_argument("training_script_args", nargs=argparse.REMAINDER, metavar="...",
                        help="arguments for the script, passed unchanged (even those that look like options)")
    return parser


def parse_launch_args(argv: Sequence[str], config: Mapping[str, Any] | None = None) -> argparse.Namespace:
    """Parse ``overdrive launch`` arguments, then fill and check them with :func:`resolve_launch_args`.

    Raises :class:`~overdrive.commands.UsageError` for an unknown option or a bad value.

    Example:
        >>> parse_launch_args(["--num_machines", "2", "--main_process_ip", "10.0.0.1", "-m", "pkg.train"]).machine_rank
        0
    """
    parser = launch_command_parser()
    head, script_args = _split_at_script(parser, list(argv))
    args, unknown = parser.parse_known_args(head)
    if unknown:
        raise UsageError(unknown_option_message(parser, unknown[0]))
    args.training_script_args = script_args
    return resolve_launch_args(args, config)


def _split_at_script(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` into (launcher options + script, the script's arguments exactly as given).

    Why: argparse's REMAINDER drops a ``--`` that directly follows the script, so the script's part is cut off here.
    """
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # explicit end of launcher options: the next token is the script
            return argv[:i] + argv[i + 1 : i + 2], argv[i + 2 :]
        if not token.startswith("-") or token == "-":
            return argv[: i + 1], argv[i + 1 :]
        action = parser._option_string_actions.get(token)  # argparse's option table; unknown ones take no value
        i += 2 if action is not None and action.nargs != 0 else 1
    return argv, []


def launch_main(argv: Sequence[str]) -> int:
    """``overdrive launch ARGV``: parse, validate (usage errors exit with code 2 before anything starts), run.

    Example:
        >>> launch_main(["--no_python", "true"])
        0
    """
    try:
        args = parse_launch_args(argv)
    except UsageError as err:
        launch_command_parser().error(str(err))
    return launch_command(args)


def resolve_launch_args(args: argparse.Namespace, config: Mapping[str, Any] | None = None) -> argparse.Namespace:
    """Fill options the command line left out (``config`` first, then :data:`LAUNCH_DEFAULTS`) and validate them.

    Setting flags are parsed with their :class:`~overdrive.settings.Setting` (``"BF16"`` becomes ``"bf16"``).

    Example:
        >>> ns = launch_command_parser().parse_args(["-m", "pkg.train"])
        >>> resolve_launch_args(ns, {"num_processes": 4}).num_processes
        4
    """
    config = config or {}
    for key, default in LAUNCH_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, config.get(key, default))
    if args.num_processes is None:
        args.num_processes = args.num_machines
    for dest, setting in _setting_flags().items():
        raw = getattr(args, dest, None)
        raw = config.get(dest) if raw is None else raw
        setattr(args, dest, None if raw is None else _parse_setting(setting, dest, raw))
    _validate(args)
    return args


def _parse_setting(setting: Setting, dest: str, raw: Any) -> Any:
    try:
        value = setting.parse(raw) if isinstance(raw, str) else raw
        return setting.check(value, f"--{dest}")
    except ValueError as err:
        if setting.choices:  # check()'s message already names the value and every allowed one
            raise UsageError(f"{err}; pass one of those") from None
        raise UsageError(f"--{dest} {raw!r} is invalid: {err}; expected: {setting.help}") from None


def _validate(args: argparse.Namespace) -> None:
    n, machines, rank = args.num_processes, args.num_machines, args.machine_rank
    if machines < 1:
        raise UsageError(f"--num_machines={machines} must be at least 1")
    if n < 1:
        raise UsageError(f"--num_processes={n} must be at least 1 (the total over all machines), e.g. 2")
    if not 0 <= rank < machines:
        raise UsageError(f"--machine_rank={rank} must be in 0..{machines - 1} (--num_machines={machines}); "
                         "number the machines from 0")
    if n % machines:
        raise UsageError(f"--num_processes={n} is the total over all machines and must be a multiple of "
                         f"--num_machines={machines}; e.g. --num_processes {machines * max(1, n // machines)}")
    port = args.main_process_port
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--main_process_port={port} is not a TCP port; use 1..65535 (or 0 for a free one)")
    if machines > 1 and not args.main_process_ip:
        raise UsageError(f"--num_machines={machines} needs --main_process_ip, the address of machine 0")
    if machines > 1 and port == 0:
        raise UsageError("--main_process_port=0 (pick a free port) only works on one machine; the other "
                         f"machines must know the port: pass one, e.g. {DEFAULT_MAIN_PROCESS_PORT}")
    if args.max_restarts < 0:
        raise UsageError(f"--max_restarts={args.max_restarts} must be 0 or more")
    if args.monitor_interval is not None and args.monitor_interval <= 0:
        raise UsageError(f"--monitor_interval={args.monitor_interval} must be a positive number of seconds")
    if args.module and args.no_python:
        raise UsageError("--module and --no_python exclude each other: a module needs python; pass one of them")
    target = args.training_script
    if target is None:
        raise UsageError("missing the script to run: overdrive launch [options] train.py [script arguments]")
    if args.no_python and not (Path(target).exists() or shutil.which(target)):
        raise UsageError(f"executable {target!r} was not found (as a path or on PATH); check the name")
    if not args.module and not args.no_python and not Path(target).exists():
        raise UsageError(f"script {target!r} does not exist (relative to {os.getcwd()}); check the path, "
                         "or pass -m to run a module")


def build_env(args: argparse.Namespace) -> dict[str, str]:
    """The variables the workers get for the setting flags that were given (or came from a config).

    Each flag sets every name of its setting, ``OVERDRIVE_*`` and the ``ACCELERATE_*`` alias, so the flag beats a
    value the user exported under either name and scripts that read Accelerate's variable directly see it too.

    Example:
        >>> build_env(parse_launch_args(["--cpu", "-m", "pkg.train"]))
        {'OVERDRIVE_USE_CPU': 'true', 'ACCELERATE_USE_CPU': 'true'}
    """
    env: dict[str, str] = {}
    for dest, setting in _setting_flags().items():
        value = getattr(args, dest)
        if value is not None:
            for var in setting.env:
                env[var] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def build_single_process_cmd(args: argparse.Namespace) -> list[str]:
    """The command that runs the target directly, for one process on one machine (no torchrun).

    Example:
        >>> build_single_process_cmd(parse_launch_args(["-m", "pkg.train", "--lr", "1"]))[1:]
        ['-m', 'pkg.train', '--lr', '1']
    """
    if args.no_python:
        prefix: list[str] = []
    else:
        prefix = [sys.executable, "-m"] if args.module else [sys.executable]
    return [*prefix, args.training_script, *args.training_script_args]


def build_torchrun_argv(args: argparse.Namespace) -> list[str]:
    """torchrun's arguments (without the program name) for the resolved launch ``args``.

    One machine uses a free port (``--standalone``) unless ``--main_process_port`` names one; many machines use
    torchrun's static rendezvous at ``main_process_ip:main_process_port``.

    Example:
        >>> build_torchrun_argv(parse_launch_args(
        ...     ["--num_processes", "4", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
        ...      "-m", "pkg.train"]))[:6]
        ['--nproc-per-node', '2', '--nnodes', '2', '--node-rank', '1']
    """
    argv = ["--nproc-per-node", str(args.num_processes // args.num_machines)]
    port = args.main_process_port
    if args.num_machines > 1:
        argv += ["--nnodes", str(args.num_machines), "--node-rank", str(args.machine_rank),
                 "--master-addr", args.main_process_ip, "--master-port", str(port or DEFAULT_MAIN_PROCESS_PORT)]
    elif port:  # a port chosen by the user on one machine: static rendezvous on it
        argv += ["--master-addr", args.main_process_ip or "127.0.0.1", "--master-port", str(port)]
    else:  # torchrun picks a free port itself, so two jobs on one host never clash
        argv += ["--standalone"]
    argv += ["--max-restarts", str(args.max_restarts)]
    if args.monitor_interval is not None:
        argv += ["--monitor-interval", str(args.monitor_interval)]
    if args.module:
        argv.append("--module")
    if args.no_python:
        argv.append("--no-python")
    return [*argv, args.training_script, *args.training_script_args]


def launch_command(args: argparse.Namespace) -> int:
    """Resolve ``args`` (from :func:`launch_command_parser`), start the job and return its exit code.

    Example:
        >>> launch_command(launch_command_parser().parse_args(["--no_python", "true"]))
        0
    """
    args = resolve_launch_args(args)  # idempotent: already-resolved args pass through unchanged
    env = build_env(args)
    if args.num_processes == 1 and args.num_machines == 1:
        code = subprocess.call(build_single_process_cmd(args), env={**os.environ, **env})
        return code if code >= 0 else 128 - code  # killed by signal N: the shell's 128+N
    return _run_torchrun(args, env)


def _run_torchrun(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    # torch is imported here only, so `overdrive --help` stays fast.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import parse_args, run

    argv = build_torchrun_argv(args)
    torchrun_args = parse_args(argv[: len(argv) - len(args.training_script_args)])
    torchrun_args.training_script_args = list(args.training_script_args)  # verbatim, see _split_at_script
    if args.quiet:
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.ERROR)
    with _environ(env):  # the agent's workers inherit this process's environment
        try:
            run(torchrun_args)
        except ChildFailedError as err:
            if args.debug:
                print(err, file=sys.stderr)
            print(f"overdrive launch: {_failure_summary(err.failures)}", file=sys.stderr)
            return 1
        except RendezvousError as err:
            print(f"overdrive launch: the processes could not meet (rendezvous failed): {err}", file=sys.stderr)
            return 1
    return 0


def _failure_summary(failures: Mapping[int, Any]) -> str:
    """One line naming the rank that failed first, how it ended, and the ranks that went down after it."""

    def describe(rank: int) -> str:
        failure = failures[rank]
        code = failure.exitcode
        how = f"was killed by {failure.signal_name()}" if code < 0 else f"exited with code {code}"
        return f"rank {rank} (local rank {failure.local_rank}) {how}"

    first, *others = sorted(failures, key=lambda rank: failures[rank].timestamp)
    line = f"{describe(first)}" + "".join(f"; then {describe(rank)}" for rank in others)
    return f"{line}. See the ranks' output above; --debug adds torchrun's report."


@contextlib.contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    """Set ``extra`` in ``os.environ`` for the block, then restore what was there."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
