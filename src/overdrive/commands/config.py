"""``overdrive config``: write, find, load and update ``default_config.yaml`` files, with Accelerate's keys.

Files use Accelerate's ``default_config.yaml`` keys (``distributed_type``, ``num_processes``, ``mixed_precision``,
``fsdp_config``, ...), so a file written by ``accelerate config`` loads unchanged and a file written here loads in
Accelerate. The default location follows Accelerate's convention under an overdrive-named folder::

    $HF_HOME/overdrive/default_config.yaml          (HF_HOME defaults to $XDG_CACHE_HOME/huggingface,
                                                    XDG_CACHE_HOME to ~/.cache)

When that file does not exist, Accelerate's own default (``$HF_HOME/accelerate/default_config.yaml``) is read.
Nothing here imports torch (the GPU count for defaults is read from the driver's ``/proc`` entries), and PyYAML is
imported only when a file is read or written.

Example:
    >>> default_config_path({"HF_HOME": "/data/hf"})
    PosixPath('/data/hf/overdrive/default_config.yaml')
    >>> basic_config("bf16", gpus=0)["distributed_type"]
    'NO'
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import UsageError, command_parser

__all__ = [
    "ACCELERATE_KEYS",
    "accelerate_config_path",
    "ask_questions",
    "basic_config",
    "config_command_parser",
    "config_main",
    "default_config_path",
    "find_config_file",
    "load_config",
    "save_config",
    "visible_gpu_count",
]

# Every top-level key Accelerate 1.x's ClusterConfig accepts (read for behaviour: such files must load here), plus
# the keys overdrive reads on top. Unknown keys draw a warning with the closest known one, not an error, so a file
# from a newer Accelerate still loads.
ACCELERATE_KEYS = frozenset({
    "compute_environment", "distributed_type", "mixed_precision", "use_cpu", "debug", "num_processes",
    "machine_rank", "num_machines", "gpu_ids", "main_process_ip", "main_process_port", "rdzv_backend",
    "same_network", "main_training_function", "enable_cpu_affinity", "fp8_config", "deepspeed_config",
    "fsdp_config", "parallelism_config", "megatron_lm_config", "mpirun_config", "downcast_bf16", "tpu_name",
    "tpu_zone", "tpu_use_cluster", "tpu_use_sudo", "command_file", "commands", "tpu_vm", "tpu_env", "dynamo_config",
    "ipex_config",  # written by older Accelerate versions
})
OVERDRIVE_KEYS = frozenset({"gradient_accumulation_steps", "max_restarts", "monitor_interval",
                            "num_cpu_threads_per_process"})
DISTRIBUTED_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU", "FSDP", "DEEPSPEED")


def _cache_home(environ: Mapping[str, str]) -> Path:
    default = os.path.join(environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(environ.get("HF_HOME", default)))


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``overdrive config`` writes and ``overdrive launch`` looks first.

    Example:
        >>> default_config_path({"XDG_CACHE_HOME": "/c"})
        PosixPath('/c/huggingface/overdrive/default_config.yaml')
    """
    return _cache_home(os.environ if environ is None else environ) / "overdrive" / "default_config.yaml"


def accelerate_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Accelerate's default file, read when overdrive has none of its own.

    Example:
        >>> accelerate_config_path({"HF_HOME": "/h"})
        PosixPath('/h/accelerate/default_config.yaml')
    """
    return _cache_home(os.environ if environ is None else environ) / "accelerate" / "default_config.yaml"


def find_config_file(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
                     ) -> Path | None:
    """The config file to use: ``path`` (must exist), else overdrive's default, else Accelerate's, else ``None``.

    Example:
        >>> find_config_file(None, {"HF_HOME": "/nonexistent"}) is None
        True
    """
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            raise UsageError(f"--config_file {str(path)!r} does not exist; check the path, or run `overdrive config "
                             f"--config_file {path}` to write one")
        return given
    for candidate in (default_config_path(environ), accelerate_config_path(environ)):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | os.PathLike[str], warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read a config file (YAML, or JSON as Accelerate also writes) into a dict with Accelerate's current keys.

    Old spellings are converted as Accelerate does (``fp16: true`` -> ``mixed_precision: fp16``, a top-level
    ``dynamo_backend`` -> ``dynamo_config``); unknown keys are reported through ``warn`` (default: stderr).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d, "c.yaml"); _ = p.write_text("distributed_type: MULTI_CPU\\nfp16: true\\n")
        ...     load_config(p)["mixed_precision"]
        'fp16'
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml  # lazy: only commands that read a file pay for it

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parse error becomes one message naming the file
        raise UsageError(f"config file {str(path)!r} is not valid YAML/JSON: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(path)!r} must hold a mapping of keys (like `num_processes: 2`), "
                         f"not a {type(data).__name__}")
    # YAML 1.1 reads an unquoted NO/no as false: in these keys it can only have meant the word.
    for key, word in (("distributed_type", "NO"), ("mixed_precision", "no"), ("downcast_bf16", "no")):
        if data.get(key) is False:
            data[key] = word
    if "fp16" in data:  # Accelerate's old spelling
        fp16 = data.pop("fp16")
        data.setdefault("mixed_precision", "fp16" if fp16 else "no")
    if "dynamo_backend" in data:
        backend = data.pop("dynamo_backend")
        data.setdefault("dynamo_config", {} if str(backend).upper() == "NO" else {"dynamo_backend": backend})
    warn = warn or (lambda msg: print(f"overdrive: {msg}", file=sys.stderr))
    known = ACCELERATE_KEYS | OVERDRIVE_KEYS
    for key in sorted(set(data) - known):
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warn(f"config file {str(path)!r}: ignoring unknown key {key!r}{hint}")
    dtype = data.get("distributed_type")
    if dtype is not None and str(dtype).upper() not in (*DISTRIBUTED_TYPES, "XLA", "MEGATRON_LM") and \
            not str(dtype).upper().startswith("MULTI_"):
        raise UsageError(f"config file {str(path)!r}: distributed_type {dtype!r} is not one of "
                         f"{', '.join(DISTRIBUTED_TYPES)}")
    return data


def save_config(config: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``config`` (``None`` values and empty sections left out, as Accelerate does) atomically to ``path``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_config({"distributed_type": "NO", "gpu_ids": None, "fsdp_config": {}}, Path(d, "c.yaml"))
        ...     p.read_text()
        "distributed_type: 'NO'\\n"
    """
    path = Path(path).expanduser()
    clean = {k: v for k, v in config.items() if v is not None and v != {}}
    if path.suffix == ".json":
        text = json.dumps(clean, indent=2, sort_keys=True) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(clean, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def visible_gpu_count(environ: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use, from the NVIDIA driver's ``/proc`` entries and ``CUDA_VISIBLE_DEVICES``.

    Why not torch: ``overdrive config`` must start instantly, and importing torch takes a second or more.

    Example:
        >>> visible_gpu_count({"CUDA_VISIBLE_DEVICES": ""})
        0
    """
    env = os.environ if environ is None else environ
    try:
        present = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        present = 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    ids = [x for x in visible.split(",") if x.strip() and x.strip() != "-1"]
    return min(present, len(ids))


def basic_config(mixed_precision: str = "no", gpus: int | None = None) -> dict[str, Any]:
    """A working single-machine config: every visible GPU, or one CPU process when there is none.

    Example:
        >>> basic_config("no", gpus=4)["num_processes"], basic_config("no", gpus=4)["distributed_type"]
        (4, 'MULTI_GPU')
    """
    from ..settings import SETTINGS

    mixed_precision = SETTINGS["mixed_precision"].parse_text(mixed_precision, "--mixed_precision")
    gpus = visible_gpu_count() if gpus is None else gpus
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if gpus > 1 else "NO",
        "mixed_precision": mixed_precision,
        "use_cpu": gpus == 0,
        "num_processes": max(gpus, 1),
        "num_machines": 1,
        "machine_rank": 0,
        "debug": False,
        "enable_cpu_affinity": False,
    }


def write_basic_config(mixed_precision: str = "no", save_location: str | None = None) -> Path | bool:
    """Write :func:`basic_config` to ``save_location`` (default: the default config file) unless a file is there.

    Accelerate's ``write_basic_config`` (notebooks call it before launching). An existing file is never replaced:
    the function then says so and returns ``False``; otherwise it returns the path written.

    Example:
        >>> import contextlib, io, tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = write_basic_config("bf16", save_location=str(Path(d, "c.yaml")))
        ...     first = path.is_file()
        ...     with contextlib.redirect_stdout(io.StringIO()):
        ...         again = write_basic_config(save_location=str(path))
        >>> first, again
        (True, False)
    """
    path = Path(save_location).expanduser() if save_location is not None else default_config_path()
    if path.exists():
        print(f"Configuration already exists at {path}, not replaced; run `overdrive config` or pass another "
              "save_location")
        return False
    return save_config(basic_config(mixed_precision), path)


# -- the questionnaire --------------------------------------------------------------------------------------------


class _Asker:
    """Asks one question at a time through ``read``/``write``; re-asks on invalid input, naming what is allowed."""

    def __init__(self, read: Callable[[str], str], write: Callable[[str], None]) -> None:
        self.read, self.write = read, write

    def choice(self, question: str, options: Sequence[tuple[str, str]], default: int = 0) -> str:
        """Numbered choice; returns the option's value. ``options`` are (value, description)."""
        self.write(question)
        for i, (_, text) in enumerate(options):
            self.write(f"  [{i}] {text}")
        while True:
            answer = self.read(f"Enter a number [{default}]: ").strip()
            if answer == "":
                return options[default][0]
            if answer.isdigit() and int(answer) < len(options):
                return options[int(answer)][0]
            self.write(f"  {answer!r} is not one of 0..{len(options) - 1}; type a number, or Enter for {default}")

    def value(self, question: str, parse: Callable[[str], Any], default: Any, required: bool = False) -> Any:
        """Free value with a default (shown in brackets); ``parse`` raises ValueError for a bad answer."""
        while True:
            shown = "" if default is None else str(default)
            answer = self.read(f"{question} [{shown}]: ").strip()
            if answer == "":
                if default is None and required:
                    self.write("  an answer is required here")
                    continue
                return default
            try:
                return parse(answer)
            except ValueError as err:
                self.write(f"  {answer!r} is invalid: {err}")

    def yes_no(self, question: str, default: bool) -> bool:
        from ..settings import parse_bool

        return bool(self.value(f"{question} (yes/no)", parse_bool, "yes" if default else "no") in (True, "yes"))


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(f"must be at least {low}")
        return value

    return parse


def ask_questions(read: Callable[[str], str] = input, write: Callable[[str], None] = print,
                  gpus: int | None = None) -> dict[str, Any]:
    """Ask for a configuration (numbered choices, Enter keeps the default) and return it with Accelerate's keys.

    Example:
        >>> answers = iter(["1", "", "4", "", "2", ""])
        >>> cfg = ask_questions(lambda prompt: next(answers), lambda line: None, gpus=0)
        >>> cfg["distributed_type"], cfg["num_processes"], cfg["mixed_precision"], cfg["use_cpu"]
        ('MULTI_CPU', 4, 'bf16', True)
    """
    ask = _Asker(read, write)
    gpus = visible_gpu_count() if gpus is None else gpus
    kinds = [("NO", "one process (no distributed training)"),
             ("MULTI_CPU", "several CPU processes (gloo)"),
             ("MULTI_GPU", f"several GPUs, data parallel (DDP){'' if gpus else ' - no GPU found here'}"),
             ("FSDP", "several GPUs, sharded parameters (FSDP2)"),
             ("DEEPSPEED", "DeepSpeed ZeRO")]
    dtype = ask.choice("Which kind of run?", kinds, default=2 if gpus > 1 else 0)
    cfg: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "distributed_type": dtype, "num_machines": 1,
                           "machine_rank": 0}
    if dtype != "NO":
        machines = ask.value("How many machines take part?", _int_at_least(1), 1)
        cfg["num_machines"] = machines
        if machines > 1:
            cfg["machine_rank"] = ask.value(f"Rank of this machine (0..{machines - 1})?",
                                            _machine_rank(machines), 0)
            cfg["main_process_ip"] = ask.value("IP address or host name of machine 0?", str, None, required=True)
            cfg["main_process_port"] = ask.value("Port on machine 0?", _port, 29500)
            cfg["rdzv_backend"] = ask.choice("How should the machines meet?",
                                             [("static", "static: machine 0 hosts the rendezvous"),
                                              ("c10d", "c10d: torchrun's elastic rendezvous")])
            cfg["same_network"] = ask.yes_no("Are all machines on the same local network?", True)
        per_machine = gpus if dtype != "MULTI_CPU" and gpus > 0 else 2
        cfg["num_processes"] = ask.value("How many processes in total, over all machines?", _int_at_least(1),
                                         per_machine * machines)
    else:
        cfg["num_processes"] = 1
    cfg["use_cpu"] = dtype == "MULTI_CPU" or gpus == 0
    if dtype in ("MULTI_GPU", "FSDP", "DEEPSPEED") and gpus > 0:
        cfg["gpu_ids"] = ask.value("Which GPUs of this machine (e.g. 0,1)?", str, "all")
    if dtype == "FSDP":
        wrap = ask.choice("FSDP: which blocks become shards?",
                          [("TRANSFORMER_BASED_WRAP", "each transformer block (by class name)"),
                           ("SIZE_BASED_WRAP", "modules above a parameter count"),
                           ("NO_WRAP", "the whole model as one shard")])
        cfg["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": wrap,
            "fsdp_offload_params": ask.yes_no("FSDP: offload parameters to CPU?", False),
            "fsdp_reshard_after_forward": ask.yes_no("FSDP: free gathered parameters after forward?", True),
            "fsdp_state_dict_type": ask.choice("FSDP: checkpoint format?",
                                               [("SHARDED_STATE_DICT", "sharded (each rank writes its part)"),
                                                ("FULL_STATE_DICT", "full (gathered on rank 0)")]),
        }
    if dtype == "DEEPSPEED":
        cfg["deepspeed_config"] = {
            "zero_stage": int(ask.choice("DeepSpeed: ZeRO stage?",
                                         [("0", "0"), ("1", "1"), ("2", "2"), ("3", "3")], default=2)),
            "offload_optimizer_device": ask.choice("DeepSpeed: offload optimizer state to?",
                                                   [("none", "nowhere"), ("cpu", "CPU memory")]),
            "gradient_accumulation_steps": ask.value("DeepSpeed: gradient accumulation steps?", _int_at_least(1), 1),
        }
    backend = ask.choice("Compile the model with torch.compile?",
                         [("NO", "no"), ("INDUCTOR", "yes, inductor"), ("AOT_EAGER", "yes, aot_eager (debugging)")])
    cfg["dynamo_config"] = {} if backend == "NO" else {"dynamo_backend": backend}
    cfg["mixed_precision"] = ask.choice("Mixed precision?",
                                        [("no", "no (fp32)"), ("fp16", "fp16 (autocast + loss scaling)"),
                                         ("bf16", "bf16 (autocast)"), ("fp8", "fp8")])
    cfg["debug"] = ask.yes_no("Run extra cross-rank checks of collectives (slower)?", False)
    cfg["enable_cpu_affinity"] = False
    return cfg


def _machine_rank(machines: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not 0 <= value < machines:
            raise ValueError(f"must be in 0..{machines - 1}")
        return value

    return parse


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("a TCP port is 1..65535")
    return value


# -- the command ----------------------------------------------------------------------------------------------


def config_command_parser(subparsers: Any = None) -> argparse.ArgumentParser:
    """The ``config`` parser (with its ``default`` and ``update`` subcommands).

    Example:
        >>> config_command_parser().parse_args(["default", "--mixed_precision", "bf16"]).mixed_precision
        'bf16'
    """
    text = "Write a config file for `overdrive launch` by answering a few questions."
    parser = command_parser(subparsers, "config", text)
    where = f"file to write (default {_shown(default_config_path())})"
    parser.add_argument("--config_file", "--config-file", default=None, metavar="PATH", help=where)
    commands = parser.add_subparsers(dest="subcommand", metavar="{default,update}")
    default = commands.add_parser("default", help="write a working file without questions", allow_abbrev=False,
                                  description="Write a working config for this machine without questions: every "
                                  "GPU, or one CPU process when there is none.")
    default.add_argument("--config_file", "--config-file", default=None, metavar="PATH", help=where)
    default.add_argument("--mixed_precision", "--mixed-precision", default="no", metavar="{no,fp16,bf16,fp8}",
                         help="mixed precision to record (default no)")
    default.add_argument("--force", action="store_true", help="replace an existing file")
    update = commands.add_parser("update", help="rewrite a file with every key spelled the current way",
                                 allow_abbrev=False, description="Load a config file (overdrive's or Accelerate's), "
                                 "convert old spellings and fill missing keys, and write it back. Accelerate's default "
                                 "file is never changed: its update goes to overdrive's default location.")
    update.add_argument("--config_file", "--config-file", default=None, metavar="PATH",
                        help="file to update (default: the file `overdrive launch` would read)")
    return parser


def _shown(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text.startswith(home + os.sep) else text


def _normalised(config: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the keys Accelerate fills when it loads a file, so the written file is complete and explicit."""
    out = dict(config)
    if "distributed_type" not in out:
        raise UsageError("the config file has no distributed_type; add one of "
                         f"{', '.join(DISTRIBUTED_TYPES)} (or run `overdrive config`)")
    out.setdefault("compute_environment", "LOCAL_MACHINE")
    out.setdefault("mixed_precision", "no")
    out.setdefault("use_cpu", False)
    out.setdefault("debug", False)
    out.setdefault("enable_cpu_affinity", False)
    if str(out["distributed_type"]).upper() == "NO":
        out.setdefault("num_processes", 1)
    return out


def config_main(argv: Sequence[str]) -> int:
    """``overdrive config [default|update] ...``; returns the exit code (usage errors exit with 2).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     config_main(["default", "--config_file", f"{d}/c.yaml"])
        Wrote ...
        0
    """
    parser = config_command_parser()
    args = parser.parse_args(list(argv))
    try:
        if args.subcommand == "default":
            path = Path(args.config_file).expanduser() if args.config_file else default_config_path()
            if path.exists() and not args.force:
                raise UsageError(f"{_shown(path)} already exists; pass --force to replace it, or --config_file "
                                 "to write elsewhere")
            save_config(basic_config(args.mixed_precision), path)
            print(f"Wrote {_shown(path)}; `overdrive launch` reads it"
                  + ("" if not args.config_file else f" with --config_file {args.config_file}"))
            return 0
        if args.subcommand == "update":
            source = find_config_file(args.config_file)
            if source is None:
                raise UsageError(f"no config file to update: neither {_shown(default_config_path())} nor "
                                 f"{_shown(accelerate_config_path())} exists; run `overdrive config` first")
            target = source if args.config_file or source != accelerate_config_path() else default_config_path()
            save_config(_normalised(load_config(source)), target)
            print(f"Updated {_shown(source)}" + ("" if target == source else f" into {_shown(target)}"))
            return 0
        path = Path(args.config_file).expanduser() if args.config_file else default_config_path()
        print(f"Writing {_shown(path)}; press Enter to keep a default.")
        try:
            config = ask_questions()
        except EOFError:
            print("\nNo answer (end of input); nothing was written.", file=sys.stderr)
            return 1
        save_config(config, path)
        print(f"Saved {_shown(path)}. Start a job with `overdrive launch "
              + ("" if not args.config_file else f"--config_file {args.config_file} ") + "train.py`.")
        return 0
    except UsageError as err:
        parser.error(str(err))
    return 2  # not reached: parser.error exits
