"""Every user-facing setting, declared once, with one precedence.

Each :class:`Setting` names its type (``parse``), default, ``overdrive launch`` flag, environment variables
(``OVERDRIVE_*`` first, Accelerate's ``ACCELERATE_*`` name as an alias), and its keys in a ``default_config.yaml``
(Accelerate's key names, so Accelerate's files load unchanged). Precedence (highest first), applied by
:func:`resolve` and nowhere else::

    explicit argument     Accelerator(mixed_precision="bf16")              source "argument"
    > CLI flag            overdrive launch --mixed_precision bf16          source "flag --mixed_precision"
    > environment         OVERDRIVE_MIXED_PRECISION, ACCELERATE_MIXED_PRECISION, or a value derived from a
                          scheduler's variables (SLURM_NNODES, ...)        source "env OVERDRIVE_MIXED_PRECISION"
    > config file         mixed_precision: bf16 in default_config.yaml     source "file /path/default_config.yaml"
    > default                                                              source "default"

The launcher resolves flag > env > file > default once and hands the winners of the training settings to its
workers as their ``OVERDRIVE_*``/``ACCELERATE_*`` variables, together with :data:`SOURCES_VAR`, a record of where
each came from; a worker therefore reports "flag --mixed_precision" rather than "env", and an explicit argument
that overrides a launcher-set value gives one warning naming both. A script run without the launcher reads no
config file (as with Accelerate): files are the launcher's layer. This module imports only the standard library:
the CLI reads it without importing torch.

Example:
    >>> resolve("mixed_precision", None, {"ACCELERATE_MIXED_PRECISION": "bf16"})
    ('bf16', 'env ACCELERATE_MIXED_PRECISION')
    >>> resolve("mixed_precision", None, {}, file={"mixed_precision": "fp16"}, file_path="cfg.yaml")
    ('fp16', 'file cfg.yaml')
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SETTINGS",
    "SOURCES_VAR",
    "Setting",
    "file_lookup",
    "parse_bool",
    "resolve",
    "resolve_all",
    "resolve_value",
]

# The launcher's record of where each exported setting came from: JSON {name: [source, exported text]}.
SOURCES_VAR = "OVERDRIVE_SETTING_SOURCES"

# Groups: "training" settings reach the workers through their environment variables; "launch" settings shape the
# job and stay in the launcher; "fsdp" / "deepspeed" settings are exported only when that engine is selected.
GROUPS = ("training", "launch", "fsdp", "deepspeed")


def parse_bool(text: str) -> bool:
    """Parse the truthy/falsy spellings Accelerate accepts in its environment variables.

    Example:
        >>> parse_bool("yes"), parse_bool("0")
        (True, False)
    """
    low = text.strip().lower()
    if low in ("1", "true", "yes", "y", "on"):
        return True
    if low in ("0", "false", "no", "n", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} is not a positive integer")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{text.strip()} is not a number of seconds >= 0")
    return value


def _lower(text: str) -> str:
    return text.strip().lower()


def _text(text: str) -> str:
    return text.strip()


def _flag_text(text: str) -> str:
    """A boolean-like plugin option kept as the lower-case text Accelerate exports (``true``/``false``)."""
    return str(parse_bool(text)).lower()


@dataclass(frozen=True)
class Setting:
    """One setting: its type, default, allowed values, flag, environment names, config-file keys and help.

    ``file_keys`` are dotted paths into the config file (``dynamo_config.dynamo_backend``), the first present one
    wins; ``from_file`` converts a file value first (``distributed_type: FSDP`` -> ``use_fsdp=True``) and may
    return ``None`` for "not set here" (Accelerate writes ``num_processes: -1`` to mean that).

    Example:
        >>> SETTINGS["cpu"].env
        ('OVERDRIVE_USE_CPU', 'ACCELERATE_USE_CPU')
        >>> SETTINGS["cpu"].file_keys
        ('use_cpu',)
    """

    name: str
    parse: Callable[[str], Any]
    default: Any
    env: tuple[str, ...]
    help: str
    choices: tuple[Any, ...] | None = None
    flag: str | None = None  # the `overdrive launch` flag that sets it, if any
    file_keys: tuple[str, ...] = ()
    group: str = "training"
    from_file: Callable[[Any], Any] | None = None
    boolean_flag: bool = False  # the flag is a switch (`--cpu`), not `--flag VALUE`

    def check(self, value: Any, origin: str) -> Any:
        """Validate ``value`` (already parsed) against ``choices``; ``origin`` names where it came from."""
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices if c is not None)
            raise ValueError(f"{self.name}={value!r} (from {origin}) is not one of {allowed}")
        return value

    def parse_text(self, raw: Any, origin: str) -> Any:
        """Parse ``raw`` (text, or a YAML scalar) from ``origin`` and check it; errors name both.

        Example:
            >>> SETTINGS["gradient_accumulation_steps"].parse_text(4, "file x.yaml")
            4
        """
        try:
            value = self.parse(str(raw))
        except ValueError as err:
            raise ValueError(f"{origin} {raw!r} is invalid: {err}; expected: {self.help}") from None
        return self.check(value, origin)


def _distributed_type_is(*names: str) -> Callable[[Any], Any]:
    """``from_file`` for use_fsdp/use_deepspeed: Accelerate files say ``distributed_type: FSDP`` instead."""

    def convert(raw: Any) -> Any:
        return None if raw is None else str(raw).upper() in names

    return convert


def _set_count(raw: Any) -> Any:
    return None if raw is None or str(raw).strip() in ("-1", "") else raw


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a TCP port; use 1..65535 (or 0 for a free one)")
    return value


def _launch(name: str, parse: Callable[[str], Any], default: Any, help: str, **kw: Any) -> Setting:
    kw.setdefault("file_keys", (name,))
    return Setting(name, parse, default, (), help, flag=f"--{name}", group="launch", **kw)


def _plugin(group: str, name: str, var: str, parse: Callable[[str], Any], help: str, keys: tuple[str, ...]) -> Setting:
    return Setting(name, parse, None, (var,), help, flag=f"--{name}", group=group, file_keys=keys)


def _fsdp(name: str, var: str, parse: Callable[[str], Any], help: str) -> Setting:
    # Accelerate's fsdp_config keys carry the prefix; keys without it are read too, as Accelerate does.
    return _plugin("fsdp", name, var, parse, help, (f"fsdp_config.{name}", f"fsdp_config.{name[len('fsdp_'):]}"))


def _deepspeed(name: str, var: str, parse: Callable[[str], Any], help: str) -> Setting:
    return _plugin("deepspeed", name, var, parse, help, (f"deepspeed_config.{name}",))


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        # -- training settings: reach the script as OVERDRIVE_* (and ACCELERATE_*) variables ------------------------
        Setting(
            "mixed_precision",
            _lower,
            "no",
            ("OVERDRIVE_MIXED_PRECISION", "ACCELERATE_MIXED_PRECISION"),
            "Autocast and loss-scaling policy: 'no' (fp32), 'fp16' (autocast + GradScaler) or 'bf16' (autocast).",
            choices=("no", "fp16", "bf16", "fp8"),
            flag="--mixed_precision",
            file_keys=("mixed_precision",),
        ),
        Setting(
            "cpu",
            parse_bool,
            False,
            ("OVERDRIVE_USE_CPU", "ACCELERATE_USE_CPU"),
            "Run on CPU even when a GPU is present (gloo process group).",
            flag="--cpu",
            file_keys=("use_cpu",),
            boolean_flag=True,
        ),
        Setting(
            "gradient_accumulation_steps",
            _positive_int,
            1,
            ("OVERDRIVE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"),
            "Micro-batches accumulated before each optimizer step (a positive integer).",
            flag="--gradient_accumulation_steps",
            # Accelerate keeps it under deepspeed_config; a top-level key is overdrive's own.
            file_keys=("gradient_accumulation_steps", "deepspeed_config.gradient_accumulation_steps"),
        ),
        Setting(
            "dynamo_backend",
            _lower,
            "no",
            ("OVERDRIVE_DYNAMO_BACKEND", "ACCELERATE_DYNAMO_BACKEND"),
            "torch.compile backend ('no' disables compilation).",
            flag="--dynamo_backend",
            file_keys=("dynamo_config.dynamo_backend", "dynamo_backend"),
        ),
        # The other torch.compile options: read by TorchDynamoPlugin from these variables (Accelerate's names).
        Setting(
            "dynamo_mode",
            _lower,
            None,
            ("OVERDRIVE_DYNAMO_MODE", "ACCELERATE_DYNAMO_MODE"),
            "torch.compile mode (default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs).",
            choices=(None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
            flag="--dynamo_mode",
            file_keys=("dynamo_config.dynamo_mode",),
        ),
        Setting(
            "dynamo_use_fullgraph",
            parse_bool,
            None,
            ("OVERDRIVE_DYNAMO_USE_FULLGRAPH", "ACCELERATE_DYNAMO_USE_FULLGRAPH"),
            "torch.compile(fullgraph=True): fail on a graph break instead of running that part eagerly.",
            flag="--dynamo_use_fullgraph",
            file_keys=("dynamo_config.dynamo_use_fullgraph",),
            boolean_flag=True,
        ),
        Setting(
            "dynamo_use_dynamic",
            parse_bool,
            None,
            ("OVERDRIVE_DYNAMO_USE_DYNAMIC", "ACCELERATE_DYNAMO_USE_DYNAMIC"),
            "torch.compile(dynamic=True): compile for changing input shapes.",
            flag="--dynamo_use_dynamic",
            file_keys=("dynamo_config.dynamo_use_dynamic",),
            boolean_flag=True,
        ),
        Setting(
            "dynamo_use_regional_compilation",
            parse_bool,
            None,
            ("OVERDRIVE_DYNAMO_USE_REGIONAL_COMPILATION", "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION"),
            "Compile each block of a repeated stack (ModuleList/Sequential) instead of the whole model.",
            flag="--dynamo_use_regional_compilation",
            file_keys=("dynamo_config.dynamo_use_regional_compilation",),
            boolean_flag=True,
        ),
        Setting(
            "debug",
            parse_bool,
            False,
            ("OVERDRIVE_DEBUG", "ACCELERATE_DEBUG_MODE"),
            "Extra cross-rank checks of collectives.",
            flag="--debug",
            file_keys=("debug",),
            boolean_flag=True,
        ),
        Setting(
            "debug_timeout",
            _seconds,
            10.0,
            ("OVERDRIVE_DEBUG_TIMEOUT",),
            "Seconds debug mode waits for the other ranks' description of a collective before reporting them.",
            flag="--debug_timeout",
        ),
        Setting(
            "watchdog_timeout",
            _seconds,
            None,
            ("OVERDRIVE_WATCHDOG_TIMEOUT",),
            "Seconds a rank may wait in one collective before every rank dumps its stacks and the job fails "
            "(0 disables; default 600, or 0.9 x an explicit process-group timeout).",
            flag="--watchdog_timeout",
        ),
        Setting(
            "log_level",
            lambda t: t.strip().upper(),
            None,
            ("OVERDRIVE_LOG_LEVEL", "ACCELERATE_LOG_LEVEL"),
            "Level set by get_logger() on its logger and the root logger (DEBUG, INFO, WARNING, ERROR, CRITICAL).",
            choices=(None, "CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET"),
        ),
        Setting(
            "use_fsdp",
            parse_bool,
            False,
            ("OVERDRIVE_USE_FSDP", "ACCELERATE_USE_FSDP"),
            "Shard the model with FSDP2.",
            flag="--use_fsdp",
            file_keys=("distributed_type",),
            from_file=_distributed_type_is("FSDP"),
            boolean_flag=True,
        ),
        Setting(
            "use_deepspeed",
            parse_bool,
            False,
            ("OVERDRIVE_USE_DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"),
            "Train with DeepSpeed ZeRO.",
            flag="--use_deepspeed",
            file_keys=("distributed_type",),
            from_file=_distributed_type_is("DEEPSPEED"),
            boolean_flag=True,
        ),
        # -- launch settings: shape the job; the launcher turns them into torchrun's arguments ----------------------
        _launch("num_processes", int, None, "processes over all machines (default: one per machine, or the GPUs "
                "per node under SLURM)", from_file=_set_count),
        _launch("num_machines", int, 1, "machines taking part"),
        _launch("machine_rank", int, 0, "this machine's rank, 0..num_machines-1"),
        _launch("main_process_ip", _text, None, "address of machine 0 (needed with num_machines > 1)"),
        _launch("main_process_port", _port, None, "port on machine 0 (default 29500 on many machines; a free one on "
                "one machine)"),
        _launch("rdzv_backend", _lower, "static", "how the machines meet: 'static' (machine 0 hosts the store at "
                "main_process_ip:main_process_port) or 'c10d' (torchrun's elastic rendezvous at the same address)",
                choices=("static", "c10d", "etcd", "etcd-v2")),
        _launch("same_network", parse_bool, False, "accepted for Accelerate compatibility (the machines share a "
                "network); the rendezvous does not depend on it", boolean_flag=True),
        _launch("gpu_ids", _text, None, "GPUs to use on this machine, e.g. '0,1' (exported as CUDA_VISIBLE_DEVICES); "
                "'all' for every GPU"),
        _launch("num_cpu_threads_per_process", _positive_int, None, "threads per process (exported as "
                "OMP_NUM_THREADS); torchrun's default is 1"),
        _launch("max_restarts", int, 0, "restart the whole group up to N times"),
        _launch("monitor_interval", float, None, "seconds between torchrun's health checks of the workers"),
        _launch("preflight_timeout", float, 6.0, "seconds machines wait for each other in the pre-flight check "
                "before anything is spawned (machine 0 listens within a fraction of a second)",
                file_keys=()),
        # -- FSDP: Accelerate's FSDP_* variables, read by FullyShardedDataParallelPlugin ------------------------
        _fsdp("fsdp_version", "FSDP_VERSION", _text, "FSDP version (overdrive implements 2: fully_shard)"),
        _fsdp("fsdp_offload_params", "FSDP_OFFLOAD_PARAMS", _flag_text, "offload parameters to CPU (true/false)"),
        _fsdp("fsdp_min_num_params", "FSDP_MIN_NUM_PARAMS", _text, "size-based wrapping threshold"),
        _fsdp("fsdp_sharding_strategy", "FSDP_SHARDING_STRATEGY", _text, "FSDP1 sharding strategy name"),
        _fsdp("fsdp_reshard_after_forward", "FSDP_RESHARD_AFTER_FORWARD", _lower, "free gathered parameters after "
              "forward (true/false)"),
        _fsdp("fsdp_auto_wrap_policy", "FSDP_AUTO_WRAP_POLICY", _text, "TRANSFORMER_BASED_WRAP, SIZE_BASED_WRAP or "
              "NO_WRAP"),
        _fsdp("fsdp_transformer_layer_cls_to_wrap", "FSDP_TRANSFORMER_CLS_TO_WRAP", _text, "block class names to "
              "shard, comma-separated"),
        _fsdp("fsdp_backward_prefetch", "FSDP_BACKWARD_PREFETCH", _text, "BACKWARD_PRE, BACKWARD_POST or NO_PREFETCH"),
        _fsdp("fsdp_state_dict_type", "FSDP_STATE_DICT_TYPE", _text, "SHARDED_STATE_DICT or FULL_STATE_DICT"),
        _fsdp("fsdp_forward_prefetch", "FSDP_FORWARD_PREFETCH", _flag_text, "prefetch the next block in forward"),
        _fsdp("fsdp_use_orig_params", "FSDP_USE_ORIG_PARAMS", _flag_text, "FSDP1 use_orig_params"),
        _fsdp("fsdp_cpu_ram_efficient_loading", "FSDP_CPU_RAM_EFFICIENT_LOADING", _flag_text, "load weights on rank 0 "
              "only"),
        _fsdp("fsdp_sync_module_states", "FSDP_SYNC_MODULE_STATES", _flag_text, "broadcast rank 0's weights"),
        _fsdp("fsdp_activation_checkpointing", "FSDP_ACTIVATION_CHECKPOINTING", _flag_text, "checkpoint activations "
              "of each wrapped block"),
        # -- DeepSpeed: Accelerate's ACCELERATE_DEEPSPEED_* variables, read by DeepSpeedPlugin ----------------------
        _deepspeed("zero_stage", "ACCELERATE_DEEPSPEED_ZERO_STAGE", _text, "ZeRO stage 0, 1, 2 or 3"),
        _deepspeed("offload_optimizer_device", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", _lower,
                   "none, cpu or nvme"),
        _deepspeed("offload_param_device", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", _lower, "none, cpu or nvme"),
        _deepspeed("gradient_clipping", "ACCELERATE_GRADIENT_CLIPPING", _lower, "gradient clipping value"),
        _deepspeed("zero3_init_flag", "ACCELERATE_DEEPSPEED_ZERO3_INIT", _flag_text, "zero.Init for ZeRO-3"),
        _deepspeed("zero3_save_16bit_model", "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", _flag_text,
                   "save 16-bit weights under ZeRO-3"),
        _deepspeed("deepspeed_config_file", "ACCELERATE_DEEPSPEED_CONFIG_FILE", _text, "a DeepSpeed JSON config"),
        _deepspeed("deepspeed_moe_layer_cls_names", "ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES", _text,
                   "MoE layer class names, comma-separated"),
    )
}


def file_lookup(config: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` in a loaded config file, or ``None`` when absent.

    Example:
        >>> file_lookup({"dynamo_config": {"dynamo_backend": "INDUCTOR"}}, "dynamo_config.dynamo_backend")
        'INDUCTOR'
    """
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _recorded_sources(env: Mapping[str, str]) -> dict[str, list[str]]:
    raw = env.get(SOURCES_VAR)
    if not raw:
        return {}
    try:
        record = json.loads(raw)
    except ValueError:  # a mangled record only costs the nicer source name, never the value
        return {}
    return record if isinstance(record, dict) else {}


def _below_argument(
    setting: Setting,
    env: Mapping[str, str],
    flag: Any,
    file: Mapping[str, Any] | None,
    file_path: str | None,
    derived: Mapping[str, tuple[Any, str]] | None,
) -> tuple[Any, str] | None:
    """The winner among flag > env (variables, then scheduler-derived values) > file, or ``None`` if none is set."""
    if flag is not None:
        origin = setting.flag or f"--{setting.name}"
        return setting.parse_text(flag, origin), f"flag {origin}"
    for var in setting.env:
        raw = env.get(var)
        if raw is not None and raw != "":
            try:
                value = setting.parse(raw)
            except ValueError as err:
                raise ValueError(f"environment variable {var}={raw!r} is invalid for {setting.name}: {err}") from None
            value = setting.check(value, f"env {var}={raw!r}")
            recorded = _recorded_sources(env).get(setting.name)
            if isinstance(recorded, list) and len(recorded) == 2 and recorded[1] == raw:
                return value, str(recorded[0])  # exported by `overdrive launch`: report where it came from there
            return value, f"env {var}"
    if derived is not None and setting.name in derived:
        return derived[setting.name]
    if file:
        for key in setting.file_keys:
            raw = file_lookup(file, key)
            if setting.from_file is not None:
                raw = setting.from_file(raw)
            if raw is None:
                continue
            where = f"file {file_path}" if file_path else "file"
            value = raw if isinstance(raw, bool) and setting.from_file else setting.parse_text(raw, f"{where}: {key}")
            return value, where
    return None


_WARNED: set[tuple[str, str, str]] = set()


def _launcher_set(source: str) -> bool:
    """Sources a user chose for this run: a launch flag, a config file, an ``OVERDRIVE_*`` variable.

    Plain ``ACCELERATE_*`` variables are left out: ``accelerate launch`` exports every one of them whether the user
    asked or not, so a conflict with them says nothing about intent.
    """
    return source.startswith(("flag ", "file", "env OVERDRIVE_"))


def resolve(
    name: str,
    explicit: Any = None,
    environ: Mapping[str, str] | None = None,
    *,
    flag: Any = None,
    file: Mapping[str, Any] | None = None,
    file_path: str | None = None,
    derived: Mapping[str, tuple[Any, str]] | None = None,
) -> tuple[Any, str]:
    """Return ``(value, source)`` for setting ``name``; ``None`` for any layer means "not given there".

    ``flag`` is the raw launch-flag value, ``file`` the loaded config file (from ``file_path``), ``derived`` values
    worked out from a scheduler's variables (``{name: (value, "env SLURM_NNODES")}``, at the environment level).
    An explicit argument that overrides a value set by a launch flag, a config file or an ``OVERDRIVE_*`` variable
    gives one :class:`UserWarning` naming both.

    Example:
        >>> resolve("gradient_accumulation_steps", 4, {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"})
        (4, 'argument')
        >>> resolve("gradient_accumulation_steps", None, {}, flag="3", file={"gradient_accumulation_steps": 5})
        (3, 'flag --gradient_accumulation_steps')
    """
    setting = SETTINGS[name]
    env = os.environ if environ is None else environ
    below = _below_argument(setting, env, flag, file, file_path, derived)
    if explicit is None:
        return below if below is not None else (setting.default, "default")
    value = setting.check(explicit, "argument")
    # A file that merely states the default (as `config default` writes it) chose nothing worth a warning.
    stated_default = below is not None and below[1].startswith("file") and below[0] == setting.default
    if below is not None and below[0] != value and _launcher_set(below[1]) and not stated_default:
        key = (name, repr(value), f"{below[0]!r} {below[1]}")
        if key not in _WARNED:  # one warning per conflict, however often the setting is resolved
            _WARNED.add(key)
            warnings.warn(
                f"{name}: the explicit argument {name}={value!r} (Accelerator/PartialState) overrides "
                f"{name}={below[0]!r} from {below[1]}; the argument wins. Drop one of the two to silence this.",
                UserWarning,
                stacklevel=3,
            )
    return value, "argument"


def resolve_value(name: str, explicit: Any = None, environ: Mapping[str, str] | None = None) -> Any:
    """Like :func:`resolve` but returns only the value.

    Example:
        >>> resolve_value("cpu", None, {})
        False
    """
    return resolve(name, explicit, environ)[0]


def resolve_all(
    names: Iterable[str] | None = None,
    *,
    explicit: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    file: Mapping[str, Any] | None = None,
    file_path: str | None = None,
    derived: Mapping[str, tuple[Any, str]] | None = None,
) -> dict[str, tuple[Any, str]]:
    """:func:`resolve` for many settings at once (default: all), keyed by name.

    Example:
        >>> out = resolve_all(["cpu", "num_machines"], environ={}, flags={"cpu": True}, file={"num_machines": 2})
        >>> out["cpu"], out["num_machines"]
        ((True, 'flag --cpu'), (2, 'file'))
    """
    explicit = explicit or {}
    flags = flags or {}
    return {
        name: resolve(name, explicit.get(name), environ, flag=flags.get(name), file=file, file_path=file_path,
                      derived=derived)
        for name in (SETTINGS if names is None else names)
    }
