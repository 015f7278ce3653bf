"""``overdrive env``: versions, devices, backends, and the resolved configuration with the source of every value.

Paste its output into a bug report. The configuration part resolves every setting exactly as ``overdrive launch``
would here (environment, SLURM's variables, the config file, defaults) and names where each value comes from.

Example:
    >>> text = env_report(environ={}, config={}, config_path=None, probe_torch=False)
    >>> [line.split() for line in text.splitlines() if line.strip().startswith("mixed_precision")]
    [['mixed_precision', 'no', 'default']]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import UsageError, command_parser

__all__ = ["env_command_parser", "env_main", "env_report"]


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _torch_facts() -> list[tuple[str, str]]:
    import torch
    import torch.distributed as dist

    facts = [("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})")]
    cuda = torch.cuda.is_available()
    facts.append(("CUDA devices", str(torch.cuda.device_count()) if cuda else "0"))
    if cuda:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            facts.append((f"  cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
        facts.append(("bf16 on GPU", str(torch.cuda.is_bf16_supported())))
    backends = [name for name, ok in (("gloo", dist.is_gloo_available()), ("nccl", dist.is_nccl_available()),
                                      ("mpi", dist.is_mpi_available())) if ok]
    facts.append(("process-group backends", ", ".join(backends) or "none"))
    facts.append(("CPU threads (torch)", str(torch.get_num_threads())))
    return facts


def env_report(environ: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None,
               config_path: str | None = None, probe_torch: bool = True) -> str:
    """The ``overdrive env`` text. ``config=None`` finds and reads the config file as ``overdrive launch`` does.

    Example:
        >>> "cpu" in env_report(environ={"ACCELERATE_USE_CPU": "1"}, config={}, probe_torch=False)
        True
    """
    from ..settings import SETTINGS, resolve_all
    from .config import find_config_file, load_config
    from .slurm import slurm_settings

    env = os.environ if environ is None else environ
    if config is None:
        found = find_config_file(None, env)
        config, config_path = (load_config(found), str(found)) if found is not None else ({}, None)
    rows: list[tuple[str, str]] = [
        ("overdrive", _version("overdrive")),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("CPUs", str(os.cpu_count())),
    ]
    if probe_torch:
        rows += _torch_facts()
    rows.append(("config file", config_path or "none (defaults apply; `overdrive config` writes one)"))
    derived = slurm_settings(env)
    rows.append(("scheduler", "SLURM" if derived else "none detected"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += ["", "Resolved configuration (precedence: flag > environment > config file > default):",
              f"  {'setting':<34} {'value':<20} source"]
    resolved = resolve_all(environ=env, file=config, file_path=config_path, derived=derived)
    for name, (value, source) in resolved.items():
        if SETTINGS[name].group in ("fsdp", "deepspeed") and value is None:
            continue  # engine options nobody set: noise
        lines.append(f"  {name:<34} {value!s:<20} {source}")
    return "\n".join(lines)


def env_command_parser(subparsers: Any = None) -> argparse.ArgumentParser:
    """The ``env`` parser.

    Example:
        >>> env_command_parser().parse_args(["--config_file", "c.yaml"]).config_file
        'c.yaml'
    """
    text = "Print versions, devices, backends and every setting's value with where it comes from."
    parser = command_parser(subparsers, "env", text)
    parser.add_argument("--config_file", "--config-file", default=None, metavar="PATH",
                        help="config file to resolve with (default: the one `overdrive launch` would read)")
    return parser


def env_main(argv: Sequence[str]) -> int:
    """``overdrive env [--config_file PATH]``; returns the exit code.

    Example:
        >>> env_main(["--config_file", "/no/such.yaml"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    parser = env_command_parser()
    args = parser.parse_args(list(argv))
    try:
        from .config import find_config_file, load_config

        config: Mapping[str, Any] | None = None
        path = None
        if args.config_file is not None:
            found = find_config_file(args.config_file)
            config, path = load_config(found) if found else {}, str(found)
        print(env_report(config=config, config_path=path))
    except (UsageError, ValueError) as err:
        parser.error(str(err))
    return 0
