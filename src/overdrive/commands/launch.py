"""``overdrive launch``: run a training script on one or many processes and machines, through torchrun.

Accelerate's flag names (``--num_processes``; the dash spelling ``--num-processes`` works too) become torchrun's
arguments, and torchrun's elastic agent (``torch.distributed.run``, in this process) starts and watches the workers.
One process on one machine needs no agent: the script runs as a plain child process and its exit code is returned.
torchrun's own options that overdrive does not derive itself (``--log-dir``, ``--tee``, ``--redirects``,
``--local-addr``, ...) pass through unchanged.

Every option is a setting of :mod:`overdrive.settings`, resolved there with one precedence: flag > environment
(``OVERDRIVE_*``/``ACCELERATE_*``, or values derived from SLURM's variables, see :mod:`overdrive.commands.slurm`) >
config file (``--config_file``, else the default file, see :mod:`overdrive.commands.config`) > default. Training
settings that came from a flag or the file reach the workers as their variables (``--mixed_precision bf16`` ->
``OVERDRIVE_MIXED_PRECISION=bf16`` and ``ACCELERATE_MIXED_PRECISION=bf16``), with a record of where each came from.

Before anything is spawned, a multi-machine launch runs the pre-flight meeting of
:mod:`overdrive.commands.preflight`, and torchrun gets a short rendezvous join timeout, so a missing machine, a
busy port or a mismatched world size fails in seconds rather than after torch's 600-900 s.

Example:
    >>> args = parse_launch_args(["--num_processes", "2", "--mixed_precision", "bf16", "-m", "pkg.train", "--lr", "1"],
    ...                          config={})
    >>> build_torchrun_argv(args)
    ['--nproc-per-node', '2', '--standalone', '--max-restarts', '0', '--module', 'pkg.train', '--lr', '1']
    >>> {k: v for k, v in build_env(args).items() if k != SOURCES_VAR}
    {'OVERDRIVE_MIXED_PRECISION': 'bf16', 'ACCELERATE_MIXED_PRECISION': 'bf16'}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..settings import SETTINGS, SOURCES_VAR, Setting, resolve
from . import UsageError, command_parser, unknown_option_message

__all__ = [
    "DEFAULT_MAIN_PROCESS_PORT",
    "JOIN_TIMEOUT_S",
    "build_env",
    "build_single_process_cmd",
    "build_torchrun_argv",
    "dry_run_plan",
    "launch_command",
    "launch_command_parser",
    "launch_main",
    "parse_launch_args",
    "resolve_launch_args",
]

DEFAULT_MAIN_PROCESS_PORT = 29500  # Accelerate's and torchrun's default for multi-machine jobs
# torchrun's rendezvous join timeout when the user gives none: every machine already checked in during pre-flight,
# so this only has to cover torchrun's own start (and re-joining after a restart), not 600-900 s.
JOIN_TIMEOUT_S = 60
# Launch options that are behaviour switches of this command, not settings (no config key, no variable).
SWITCHES = ("multi_gpu", "module", "no_python", "quiet", "dry_run")
# torchrun options that overdrive derives itself: passing them too would contradict the derived ones.
DERIVED_TORCHRUN = {
    "--nnodes": "--num_machines", "--nproc-per-node": "--num_processes (the total over all machines)",
    "--nproc_per_node": "--num_processes (the total over all machines)", "--node-rank": "--machine_rank",
    "--node_rank": "--machine_rank", "--master-addr": "--main_process_ip", "--master_addr": "--main_process_ip",
    "--master-port": "--main_process_port", "--master_port": "--main_process_port",
    "--rdzv-backend": "--rdzv_backend", "--rdzv-endpoint": "--main_process_ip/--main_process_port",
    "--rdzv_endpoint": "--main_process_ip/--main_process_port", "--rdzv-conf": "--rdzv_conf",
    "--standalone": "(nothing: one machine without --main_process_port is standalone)",
    "--max-restarts": "--max_restarts", "--monitor-interval": "--monitor_interval", "--no-python": "--no_python",
}
BATCH_FLAGS = ("--per_device_train_batch_size", "--micro_batch_size", "--batch_size", "--train_batch_size")


def _launch_settings() -> dict[str, Setting]:
    """The settings that have a launch flag, keyed by name (= the flag's argparse destination)."""
    return {s.name: s for s in SETTINGS.values() if s.flag}


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


GROUP_TITLES = {
    "launch": "processes and machines",
    "training": "training settings (reach the script as OVERDRIVE_* and ACCELERATE_* variables)",
    "fsdp": "FSDP, with --use_fsdp (exported as Accelerate's FSDP_* variables)",
    "deepspeed": "DeepSpeed, with --use_deepspeed (exported as ACCELERATE_DEEPSPEED_* variables)",
}


def launch_command_parser(subparsers: Any = None) -> argparse.ArgumentParser:
    """The ``launch`` argument parser; added to ``subparsers`` (from ``add_subparsers``) when given.

    Example:
        >>> launch_command_parser().parse_args(["--num-processes", "2", "train.py"]).num_processes
        '2'
    """
    text = "Run a training script on one or many processes and machines (through torchrun)."
    epilog = ("Precedence of every setting: flag > environment (OVERDRIVE_*, ACCELERATE_*, SLURM_*) > config file > "
              "default; `overdrive env` shows where each value comes from. torchrun's own options (--log-dir, "
              "--tee, --redirects, ...) pass through.")
    parser = command_parser(subparsers, "launch", text, epilog=epilog, formatter_class=_HelpFormatter)
    if subparsers is not None:
        parser.set_defaults(func=launch_command)

    groups = {name: parser.add_argument_group(title) for name, title in GROUP_TITLES.items()}
    procs = groups["launch"]
    _option(procs, "--config_file", metavar="PATH", help="config file (default: overdrive's default file, else "
            "Accelerate's; see `overdrive config`)")
    _option(procs, "--multi_gpu", action="store_true", help="accepted for Accelerate compatibility; the process "
            "count alone decides, and without a GPU the processes run on CPU")
    _option(procs, "--rdzv_conf", metavar="K=V,...", help=f"torchrun rendezvous options (default join timeout "
            f"{JOIN_TIMEOUT_S} s: timeout= for static, join_timeout= for c10d)")
    for name, setting in _launch_settings().items():
        group = groups[setting.group]
        if setting.group == "training":
            help_text = f"{setting.help} Exported as {setting.env[0]}."
        elif setting.env:
            help_text = f"{setting.help} (exported as {setting.env[0]})"
        else:
            default = "" if setting.default is None else f" (default {setting.default})"
            help_text = setting.help + default
        if setting.boolean_flag:
            _option(group, f"--{name}", action="store_true", help=help_text)
        else:
            metavar = "{" + ",".join(map(str, setting.choices)) + "}" if setting.choices else _metavar(setting)
            _option(group, f"--{name}", metavar=metavar, help=help_text)

    script = parser.add_argument_group("what to run")
    _option(script, "-m", "--module", action="store_true", help="run the target as a module, like `python -m`")
    _option(script, "--no_python", action="store_true", help="run the target as an executable, without python")
    _option(script, "-q", "--quiet", action="store_true", help="hide torchrun's warnings and notices")
    _option(script, "--dry_run", action="store_true", help="print the resolved settings and, per rank, the device, "
            "batch sizes and the exact torchrun command; start nothing")
    # nargs="?": a missing script is reported after unknown options, with its own message.
    script.add_argument("training_script", nargs="?", metavar="script_or_module", help="the script to run")
    script.add_argument("training_script_args", nargs=argparse.REMAINDER, metavar="...",
                        help="arguments for the script, passed unchanged (even those that look like options)")
    return parser


def _metavar(setting: Setting) -> str:
    kind = {int: "N", float: "SECONDS"}.get(type(setting.default))
    return kind or ("PORT" if setting.name.endswith("port") else "N" if setting.name.startswith("num_") else "VALUE")


_TORCHRUN_ACTIONS: dict[str, argparse.Action] | None = None


def _torchrun_actions() -> dict[str, argparse.Action]:
    """torchrun's option table; imports torch, so it is only consulted for options overdrive does not know."""
    global _TORCHRUN_ACTIONS
    if _TORCHRUN_ACTIONS is None:
        from torch.distributed.run import get_args_parser

        _TORCHRUN_ACTIONS = dict(get_args_parser()._option_string_actions)  # argparse's own table
    return _TORCHRUN_ACTIONS


def parse_launch_args(argv: Sequence[str], config: Mapping[str, Any] | None = None,
                      environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Parse ``overdrive launch`` arguments, then resolve and check them with :func:`resolve_launch_args`.

    ``config`` is a loaded config file (``None``: find and read one as ``overdrive launch`` does), ``environ`` the
    environment to read (default ``os.environ``). Raises :class:`~overdrive.commands.UsageError` for an unknown
    option or a bad value.

    Example:
        >>> parse_launch_args(["--num_machines", "2", "--main_process_ip", "10.0.0.1", "-m", "pkg.train"],
        ...                   config={}, environ={}).machine_rank
        0
    """
    parser = launch_command_parser()
    head, passthrough, script_args = _split_at_script(parser, list(argv))
    args, unknown = parser.parse_known_args(head)
    if unknown:
        raise UsageError(unknown_option_message(parser, unknown[0]))
    args.training_script_args = script_args
    args.torchrun_args = passthrough
    return resolve_launch_args(args, config, environ=environ)


def _split_at_script(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Split ``argv`` into (launcher options + script, torchrun pass-through options, the script's arguments).

    Why by hand: argparse's REMAINDER drops a ``--`` that directly follows the script, and an option argparse does
    not know would take its value for the script; torchrun's table tells which of those take a value.
    """
    ours = parser._option_string_actions  # argparse's option table
    head: list[str] = []
    passthrough: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # explicit end of launcher options: the next token is the script
            return head + argv[i + 1 : i + 2], passthrough, argv[i + 2 :]
        if not token.startswith("-") or token == "-":
            return head + [token], passthrough, argv[i + 1 :]
        name = token.split("=", 1)[0]
        action = ours.get(name)
        if action is None and name not in ("-h", "--help"):
            theirs = _torchrun_actions().get(name)
            if theirs is None:  # unknown everywhere: the error names the closest option of ours
                raise UsageError(unknown_option_message(parser, token))
            if name in DERIVED_TORCHRUN:
                raise UsageError(f"torchrun's {name} is derived by overdrive launch; pass {DERIVED_TORCHRUN[name]} "
                                 "instead")
            width = 1 if "=" in token or theirs.nargs == 0 else 2
            passthrough += argv[i : i + width]
            i += width
            continue
        width = 1 if "=" in token or action is None or action.nargs == 0 else 2
        head += argv[i : i + width]
        i += width
    return head, passthrough, []


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


def resolve_launch_args(args: argparse.Namespace, config: Mapping[str, Any] | None = None,
                        config_path: str | None = None, environ: Mapping[str, str] | None = None
                        ) -> argparse.Namespace:
    """Resolve every setting (flag > env/SLURM > config file > default) onto ``args`` and validate them.

    Sets ``args.<setting>`` to the value, ``args.sources`` to ``{setting: source}`` and ``args.derived`` to what
    SLURM's variables gave. With ``config=None`` the config file is found (``--config_file`` or the default
    locations) and read. Resolving twice changes nothing.

    Example:
        >>> ns = launch_command_parser().parse_args(["-m", "pkg.train"])
        >>> resolve_launch_args(ns, {"num_processes": 4}, environ={}).num_processes
        4
    """
    if getattr(args, "sources", None) is not None:
        return args  # already resolved
    from .config import find_config_file, load_config
    from .slurm import slurm_settings

    env = os.environ if environ is None else environ
    if config is None:
        found = find_config_file(getattr(args, "config_file", None), env)
        config, config_path = (load_config(found), str(found)) if found is not None else ({}, None)
    args.config_path = config_path
    args.derived = slurm_settings(env)
    args.sources = {}
    for name in _launch_settings():
        flag = getattr(args, name, None)
        flag = None if flag is False else flag  # an unset switch is "not given", not False
        try:
            value, source = resolve(name, None, env, flag=flag, file=config, file_path=config_path,
                                    derived=args.derived)
        except ValueError as err:
            raise UsageError(f"{err}; pass one of those" if "is not one of" in str(err) else str(err)) from None
        setattr(args, name, value)
        args.sources[name] = source
    for name in SWITCHES:
        if getattr(args, name, None) is None:
            setattr(args, name, False)
    if not args.multi_gpu and str(config.get("distributed_type", "")).upper() == "MULTI_GPU":
        args.multi_gpu = True
    if args.num_processes is None:
        args.num_processes = args.num_machines
        args.sources["num_processes"] = "default (one per machine)"
    if getattr(args, "torchrun_args", None) is None:
        args.torchrun_args = []
    _validate(args)
    return args


def _validate(args: argparse.Namespace) -> None:
    n, machines, rank = args.num_processes, args.num_machines, args.machine_rank
    host = socket.gethostname()
    if machines < 1:
        raise UsageError(f"--num_machines={machines} must be at least 1")
    if n < 1:
        raise UsageError(f"--num_processes={n} must be at least 1 (the total over all machines), e.g. 2")
    if not 0 <= rank < machines:
        raise UsageError(f"--machine_rank={rank} (host {host}) must be in 0..{machines - 1} "
                         f"(--num_machines={machines}); number the machines from 0")
    if n % machines:
        raise UsageError(f"--num_processes={n} is the total over all machines and must be a multiple of "
                         f"--num_machines={machines}; e.g. --num_processes {machines * max(1, n // machines)}")
    port = args.main_process_port
    if machines > 1 and not args.main_process_ip:
        raise UsageError(f"--num_machines={machines} needs --main_process_ip, the address of machine 0")
    if machines > 1 and port == 0:
        raise UsageError("--main_process_port=0 (pick a free port) only works on one machine; the other "
                         f"machines must know the port: pass one, e.g. {DEFAULT_MAIN_PROCESS_PORT}")
    if args.max_restarts < 0:
        raise UsageError(f"--max_restarts={args.max_restarts} must be 0 or more")
    if args.monitor_interval is not None and args.monitor_interval <= 0:
        raise UsageError(f"--monitor_interval={args.monitor_interval} must be a positive number of seconds")
    if args.preflight_timeout <= 0:
        raise UsageError(f"--preflight_timeout={args.preflight_timeout} must be a positive number of seconds")
    for group, switch in (("fsdp", "use_fsdp"), ("deepspeed", "use_deepspeed")):
        given = [s.flag for s in SETTINGS.values() if s.group == group and args.sources[s.name].startswith("flag")]
        if given and not getattr(args, switch):
            raise UsageError(f"{given[0]} only applies with --{switch}; add --{switch} (or drop {given[0]})")
    if args.use_fsdp and args.use_deepspeed:
        raise UsageError("--use_fsdp and --use_deepspeed exclude each other; pick one engine")
    if args.module and args.no_python:
        raise UsageError("--module and --no_python exclude each other: a module needs python; pass one of them")
    target = args.training_script
    if target is None:
        raise UsageError("missing the script to run: overdrive launch [options] train.py [script arguments]")
    if args.dry_run:
        return  # a plan may be made on a login node where the script's path is not the same
    if args.no_python and not (Path(target).exists() or shutil.which(target)):
        raise UsageError(f"executable {target!r} was not found (as a path or on PATH); check the name")
    if not args.module and not args.no_python and not Path(target).exists():
        raise UsageError(f"script {target!r} does not exist (relative to {os.getcwd()}); check the path, "
                         "or pass -m to run a module")


def _exported(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def build_env(args: argparse.Namespace) -> dict[str, str]:
    """The variables the workers get: settings that came from a flag or the config file, and their record.

    Each such setting sets every name it has (``OVERDRIVE_*`` and the ``ACCELERATE_*`` alias), so it beats a value
    the user exported under either name and scripts that read Accelerate's variable directly see it too; values
    from the environment are already there and are not repeated. FSDP/DeepSpeed options are exported only with
    their engine on. :data:`~overdrive.settings.SOURCES_VAR` records where each exported value came from.

    Example:
        >>> env = build_env(parse_launch_args(["--cpu", "-m", "pkg.train"], config={}, environ={}))
        >>> env["OVERDRIVE_USE_CPU"], env["ACCELERATE_USE_CPU"], json.loads(env[SOURCES_VAR])
        ('true', 'true', {'cpu': ['flag --cpu', 'true']})
    """
    env: dict[str, str] = {}
    record: dict[str, list[str]] = {}
    engines = {"training": True, "fsdp": bool(args.use_fsdp), "deepspeed": bool(args.use_deepspeed)}
    for name, setting in _launch_settings().items():
        source = args.sources[name]
        if not engines.get(setting.group, False) or not source.startswith(("flag", "file")):
            continue
        text = _exported(getattr(args, name))
        for var in setting.env:
            env[var] = text
        record[name] = [source, text]
    if args.gpu_ids is not None and args.gpu_ids.lower() != "all":
        env["CUDA_VISIBLE_DEVICES"] = args.gpu_ids
    if args.num_cpu_threads_per_process is not None:
        env["OMP_NUM_THREADS"] = str(args.num_cpu_threads_per_process)
    if record:
        env[SOURCES_VAR] = json.dumps(record, sort_keys=True)
    return env


def build_single_process_cmd(args: argparse.Namespace) -> list[str]:
    """The command that runs the target directly, for one process on one machine (no torchrun).

    Example:
        >>> build_single_process_cmd(parse_launch_args(["-m", "pkg.train", "--lr", "1"], config={}))[1:]
        ['-m', 'pkg.train', '--lr', '1']
    """
    if args.no_python:
        prefix: list[str] = []
    else:
        prefix = [sys.executable, "-m"] if args.module else [sys.executable]
    return [*prefix, args.training_script, *args.training_script_args]


def _rdzv_conf(args: argparse.Namespace) -> str:
    """The user's ``--rdzv_conf`` plus a short join timeout unless they set one."""
    conf = [item for item in (args.rdzv_conf or "").split(",") if item.strip()]
    key = "timeout" if args.rdzv_backend == "static" else "join_timeout"
    if not any(item.split("=", 1)[0].strip() == key for item in conf):
        conf.append(f"{key}={JOIN_TIMEOUT_S}")
    return ",".join(conf)


def _main_port(args: argparse.Namespace) -> int:
    return int(args.main_process_port or DEFAULT_MAIN_PROCESS_PORT)


def build_torchrun_argv(args: argparse.Namespace, machine_rank: int | None = None) -> list[str]:
    """torchrun's arguments (without the program name) for the resolved launch ``args``.

    One machine uses a free port (``--standalone``) unless ``--main_process_port`` names one; many machines meet at
    ``main_process_ip:main_process_port`` through torchrun's static rendezvous (``--rdzv_backend c10d``: its elastic
    one), with a short join timeout. ``machine_rank`` builds another machine's command (for ``--dry_run``).

    Example:
        >>> build_torchrun_argv(parse_launch_args(
        ...     ["--num_processes", "4", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
        ...      "-m", "pkg.train"], config={}, environ={}))[:6]
        ['--nproc-per-node', '2', '--nnodes', '2', '--node-rank', '1']
    """
    rank = args.machine_rank if machine_rank is None else machine_rank
    argv = ["--nproc-per-node", str(args.num_processes // args.num_machines)]
    port = args.main_process_port
    if args.num_machines > 1:
        argv += ["--nnodes", str(args.num_machines)]
        if args.rdzv_backend == "static":
            argv += ["--node-rank", str(rank), "--master-addr", args.main_process_ip, "--master-port",
                     str(_main_port(args))]
        else:  # elastic backends rank the machines themselves; the run id is the job's, else tied to the address
            run_id = os.environ.get("SLURM_JOB_ID") or f"overdrive-{_main_port(args)}"
            argv += ["--rdzv-backend", args.rdzv_backend, "--rdzv-endpoint",
                     f"{args.main_process_ip}:{_main_port(args)}", "--rdzv-id", run_id]
        argv += ["--rdzv-conf", _rdzv_conf(args)]
    elif port:  # a port chosen by the user on one machine: static rendezvous on it
        argv += ["--master-addr", args.main_process_ip or "127.0.0.1", "--master-port", str(port)]
    else:  # torchrun picks a free port itself, so two jobs on one host never clash
        argv += ["--standalone"]
    argv += ["--max-restarts", str(args.max_restarts)]
    if args.monitor_interval is not None:
        argv += ["--monitor-interval", str(args.monitor_interval)]
    argv += list(args.torchrun_args)
    if args.module:
        argv.append("--module")
    if args.no_python:
        argv.append("--no-python")
    return [*argv, args.training_script, *args.training_script_args]


def _micro_batch(script_args: Sequence[str]) -> int | None:
    """The per-process batch size, if the script takes it as one of :data:`BATCH_FLAGS`."""
    for i, token in enumerate(script_args):
        name, _, inline = token.partition("=")
        if name in BATCH_FLAGS:
            text = inline or (script_args[i + 1] if i + 1 < len(script_args) else "")
            return int(text) if text.isdigit() else None
    return None


def dry_run_plan(args: argparse.Namespace, gpus: int | None = None) -> str:
    """The ``--dry_run`` report: settings with sources, then per rank its machine, device and batch sizes, and each
    machine's exact torchrun command. Needs no process group, so any size can be planned on any machine.

    Example:
        >>> plan = dry_run_plan(parse_launch_args(["--dry_run", "--num_processes", "64", "--num_machines", "8",
        ...     "--main_process_ip", "10.0.0.1", "train.py", "--batch_size", "16"], config={}, environ={}), gpus=8)
        >>> "global batch 1024 = micro-batch 16 x 64 processes x 1 accumulation step(s)" in plan
        True
        >>> [line.split()[:4] for line in plan.splitlines() if line.startswith("   63 ")]
        [['63', '7', '7', 'cuda:7']]
    """
    from .config import visible_gpu_count

    gpus = visible_gpu_count() if gpus is None else gpus
    per_machine = args.num_processes // args.num_machines
    if args.gpu_ids and args.gpu_ids.lower() != "all":
        ids = [x.strip() for x in args.gpu_ids.split(",") if x.strip()]
        gpus = min(gpus, len(ids))
    on_gpu = not args.cpu and gpus > 0
    micro = _micro_batch(args.training_script_args)
    accumulation = int(args.gradient_accumulation_steps)
    lines = ["overdrive launch --dry_run: nothing is started.", "", "settings (value, source):"]
    for name in _launch_settings():
        value, source = getattr(args, name), args.sources[name]
        if source == "default" and value is None:
            continue
        lines.append(f"  {name:<34} {value!s:<20} {source}")
    for name, (value, source) in args.derived.items():
        lines.append(f"  (from SLURM) {name} = {value} ({source})")
    lines.append("")
    where = ("one machine" if args.num_machines == 1 else
             f"{args.num_machines} machines, {args.rdzv_backend} rendezvous at {args.main_process_ip}:{_main_port(args)}")
    lines.append(f"plan: {args.num_processes} process(es), {per_machine} per machine, on {where}")
    if micro is None:
        lines.append(f"global batch: unknown (the script sets its batch size; pass it one of {', '.join(BATCH_FLAGS)} "
                     "to see it here)")
    else:
        lines.append(f"global batch {micro * args.num_processes * accumulation} = micro-batch {micro} x "
                     f"{args.num_processes} processes x {accumulation} accumulation step(s)")
    if on_gpu and gpus < per_machine:
        lines.append(f"warning: {per_machine} processes per machine but {gpus} GPU(s) visible here")
    lines.append("")
    lines.append(f"{'rank':>5} {'machine':>7} {'local':>5} {'device':<8} {'micro-batch':>11} {'accumulation':>12}")
    for rank in range(args.num_processes):
        local = rank % per_machine
        device = f"cuda:{local % gpus}" if on_gpu else "cpu"
        shown = "?" if micro is None else str(micro)
        lines.append(f"{rank:>5} {rank // per_machine:>7} {local:>5} {device:<8} {shown:>11} {accumulation:>12}")
    lines.append("")
    env = build_env(args)
    if env:
        lines.append("environment for the workers: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
    if args.num_processes == 1 and args.num_machines == 1:
        lines.append("command (one process, no torchrun): " + shlex.join(build_single_process_cmd(args)))
    else:
        for machine in range(args.num_machines):
            cmd = [sys.executable, "-m", "torch.distributed.run", *build_torchrun_argv(args, machine)]
            lines.append(f"torchrun command on machine {machine}: {shlex.join(cmd)}")
    return "\n".join(lines)


def _say(line: str) -> None:
    sys.stderr.write(f"overdrive launch: {line}\n")
    sys.stderr.flush()


def launch_command(args: argparse.Namespace) -> int:
    """Resolve ``args`` (from :func:`launch_command_parser`), check, start the job and return its exit code.

    Example:
        >>> launch_command(launch_command_parser().parse_args(["--no_python", "true"]))
        0
    """
    args = resolve_launch_args(args)  # idempotent: already-resolved args pass through unchanged
    if args.dry_run:
        print(dry_run_plan(args))
        return 0
    if args.derived and not args.quiet:
        used = [f"{name}={getattr(args, name)} ({args.sources[name][4:]})" for name in args.derived
                if args.sources.get(name) == args.derived[name][1]]
        if used:
            _say("from SLURM: " + ", ".join(used))
    from .preflight import PreflightError, check_port_free, meet

    host = socket.gethostname()
    try:
        if args.num_machines > 1:
            view = {"machine_rank": args.machine_rank, "host": host, "num_machines": args.num_machines,
                    "num_processes": args.num_processes, "rdzv_backend": args.rdzv_backend}
            meet(view, args.main_process_ip, _main_port(args), args.preflight_timeout,
                 log=(lambda line: None) if args.quiet else _say)
        elif args.main_process_port:
            check_port_free(args.main_process_port, host, 0)
    except PreflightError as err:
        _say(f"pre-flight check failed: {err}")
        return 1
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
            _say(_failure_summary(err.failures))
            return 1
        except RendezvousError as err:
            _say(f"the machines could not meet (rendezvous failed, machine_rank {args.machine_rank} on host "
                 f"{socket.gethostname()}): {err}. Check that every machine was started with the same "
                 "--num_machines/--main_process_ip/--main_process_port, or raise the join timeout with --rdzv_conf")
            return 1
        except Exception as err:  # noqa: BLE001 - e.g. the store's DistStoreError when a machine vanished
            if type(err).__name__ not in ("DistStoreError", "DistNetworkError"):
                raise
            _say(f"machine_rank {args.machine_rank} on host {socket.gethostname()} lost the other machines: {err}")
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
