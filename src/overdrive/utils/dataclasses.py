"""Accelerate-named configuration objects: enums, plugins and kwargs handlers.

These are pure data: nothing here reads the environment or touches a process group. The
:class:`~overdrive.Accelerator` resolves settings (see :mod:`overdrive.settings`) and hands these objects to the
strategy and the precision policy.

Example:
    >>> from overdrive.utils import DistributedDataParallelKwargs
    >>> DistributedDataParallelKwargs(find_unused_parameters=True).to_kwargs()
    {'find_unused_parameters': True}
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, Literal

__all__ = [
    "AutocastKwargs",
    "DDPCommunicationHookType",
    "DataLoaderConfiguration",
    "DeepSpeedPlugin",
    "DistributedDataParallelKwargs",
    "DistributedType",
    "DynamoBackend",
    "FullyShardedDataParallelPlugin",
    "GradScalerKwargs",
    "GradientAccumulationPlugin",
    "InitProcessGroupKwargs",
    "KwargsHandler",
    "LoggerType",
    "PrecisionType",
    "ProjectConfiguration",
    "RNGType",
    "TorchDynamoPlugin",
]


class _StrEnum(str, enum.Enum):
    """String enum that compares equal to its value, as Accelerate's enums do."""

    def __str__(self) -> str:
        return str(self.value)


class DistributedType(_StrEnum):
    """How the model is distributed; ``state.distributed_type`` holds one of these.

    Example:
        >>> str(DistributedType("MULTI_CPU"))
        'MULTI_CPU'
    """

    NO = "NO"
    MULTI_CPU = "MULTI_CPU"
    MULTI_GPU = "MULTI_GPU"
    DEEPSPEED = "DEEPSPEED"
    FSDP = "FSDP"


class PrecisionType(_StrEnum):
    """Allowed ``mixed_precision`` values.

    Example:
        >>> PrecisionType("bf16") is PrecisionType.BF16
        True
    """

    NO = "no"
    FP8 = "fp8"
    FP16 = "fp16"
    BF16 = "bf16"


class RNGType(_StrEnum):
    """RNGs that can be synchronised at the start of each epoch (``rng_types``).

    Example:
        >>> RNGType("generator").value
        'generator'
    """

    TORCH = "torch"
    CUDA = "cuda"
    GENERATOR = "generator"


class DynamoBackend(_StrEnum):
    """``torch.compile`` backends accepted by ``dynamo_backend``.

    Example:
        >>> DynamoBackend("INDUCTOR").value
        'INDUCTOR'
    """

    NO = "NO"
    EAGER = "EAGER"
    AOT_EAGER = "AOT_EAGER"
    INDUCTOR = "INDUCTOR"
    CUDAGRAPHS = "CUDAGRAPHS"


class LoggerType(_StrEnum):
    """Names of the built-in experiment trackers (``log_with``).

    Example:
        >>> LoggerType("tensorboard").value
        'tensorboard'
    """

    ALL = "all"
    AIM = "aim"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    COMETML = "comet_ml"
    MLFLOW = "mlflow"
    CLEARML = "clearml"
    DVCLIVE = "dvclive"
    SWANLAB = "swanlab"
    TRACKIO = "trackio"
    JSONL = "jsonl"  # overdrive's dependency-free tracker


class DDPCommunicationHookType(_StrEnum):
    """DDP communication hooks selectable through :class:`DistributedDataParallelKwargs`.

    Example:
        >>> DDPCommunicationHookType("fp16").value
        'fp16'
    """

    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"
    POWER_SGD = "power_sgd"
    BATCHED_POWER_SGD = "batched_power_sgd"


class KwargsHandler:
    """Mixin for dataclasses whose non-default fields become keyword arguments of a torch call.

    Example:
        >>> GradScalerKwargs(init_scale=1024.0).to_kwargs()
        {'init_scale': 1024.0}
    """

    def to_dict(self) -> dict[str, Any]:
        """All fields as a (deep-copied) dict."""
        return copy.deepcopy(self.__dict__)

    def to_kwargs(self) -> dict[str, Any]:
        """Only the fields that differ from the class defaults."""
        default = self.__class__().to_dict()  # type: ignore[call-arg]
        return {k: v for k, v in self.to_dict().items() if default.get(k) != v}


def _check_bool(owner: str, name: str, value: Any, allow_none: bool = False) -> None:
    """Bad input named with its class, its value and what is allowed (called from ``__post_init__``)."""
    if isinstance(value, bool) or (allow_none and value is None):
        return
    allowed = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"{owner}({name}={value!r}): {name} must be {allowed}, got a {type(value).__name__}")


def _check_number(owner: str, name: str, value: Any, rule: str, ok: bool, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{owner}({name}={value!r}): {name} must be {kind} {rule}, got a {type(value).__name__}")
    if not ok:
        raise ValueError(f"{owner}({name}={value!r}): {name} must be {rule}")


@dataclass
class AutocastKwargs(KwargsHandler):
    """Arguments for ``torch.autocast`` (``Accelerator.autocast(autocast_handler=...)``).

    Example:
        >>> AutocastKwargs(enabled=False).enabled
        False
    """

    enabled: bool = True
    cache_enabled: bool | None = None

    def __post_init__(self) -> None:
        _check_bool("AutocastKwargs", "enabled", self.enabled)
        _check_bool("AutocastKwargs", "cache_enabled", self.cache_enabled, allow_none=True)


@dataclass
class ProfileKwargs(KwargsHandler):
    """Settings of ``torch.profiler.profile`` for ``Accelerator.profile()`` (Accelerate's fields).

    ``activities``: names among ``"cpu"``, ``"cuda"``, ``"xpu"`` (``None``: torch's default); ``schedule_option``: the
    keyword arguments of ``torch.profiler.schedule`` (``wait``, ``warmup``, ``active``, ``repeat``, ``skip_first``);
    ``output_trace_dir``: where each process writes ``profile_{process_index}.json`` (a Chrome trace) at the end.

    Example:
        >>> ProfileKwargs(activities=["cpu"], record_shapes=True).to_kwargs()
        {'activities': ['cpu'], 'record_shapes': True}
    """

    activities: list[str] | None = None
    schedule_option: dict[str, int] | None = None
    on_trace_ready: Callable[..., Any] | None = None
    record_shapes: bool = False
    profile_memory: bool = False
    with_stack: bool = False
    with_flops: bool = False
    with_modules: bool = False
    output_trace_dir: str | None = None

    _ACTIVITIES = ("cpu", "cuda", "xpu")

    def __post_init__(self) -> None:
        if self.activities is not None:
            bad = [a for a in self.activities if a not in self._ACTIVITIES]
            if isinstance(self.activities, str) or bad:
                raise ValueError(
                    f"ProfileKwargs(activities={self.activities!r}): each activity must be one of "
                    f"{list(self._ACTIVITIES)}, given as a list, e.g. activities=['cpu']"
                )
        if self.schedule_option is not None:
            allowed = {"wait", "warmup", "active", "repeat", "skip_first"}
            unknown = sorted(set(self.schedule_option) - allowed)
            if unknown:
                raise ValueError(
                    f"ProfileKwargs(schedule_option={self.schedule_option!r}): unknown key(s) {unknown}; "
                    f"torch.profiler.schedule takes {sorted(allowed)}"
                )
        for name in ("record_shapes", "profile_memory", "with_stack", "with_flops", "with_modules"):
            _check_bool("ProfileKwargs", name, getattr(self, name))

    def build(self) -> Any:
        """The ``torch.profiler.profile`` object these settings describe.

        Example:
            >>> with ProfileKwargs(activities=["cpu"]).build() as prof:
            ...     pass
        """
        import torch.profiler

        kinds = {"cpu": "CPU", "cuda": "CUDA", "xpu": "XPU"}
        activities = None
        if self.activities is not None:
            activities = [getattr(torch.profiler.ProfilerActivity, kinds[a]) for a in self.activities]
        schedule = torch.profiler.schedule(**self.schedule_option) if self.schedule_option is not None else None
        return torch.profiler.profile(
            activities=activities, schedule=schedule, on_trace_ready=self.on_trace_ready,
            record_shapes=self.record_shapes, profile_memory=self.profile_memory, with_stack=self.with_stack,
            with_flops=self.with_flops, with_modules=self.with_modules,
        )


@dataclass
class DistributedDataParallelKwargs(KwargsHandler):
    """Arguments for ``torch.nn.parallel.DistributedDataParallel``.

    Example:
        >>> DistributedDataParallelKwargs(bucket_cap_mb=50).to_kwargs()
        {'bucket_cap_mb': 50}
    """

    dim: int = 0
    broadcast_buffers: bool = True
    bucket_cap_mb: int = 25
    find_unused_parameters: bool = False
    check_reduction: bool = False
    gradient_as_bucket_view: bool = False
    static_graph: bool = False
    comm_hook: DDPCommunicationHookType = DDPCommunicationHookType.NO
    comm_wrapper: Literal[DDPCommunicationHookType.NO, DDPCommunicationHookType.FP16, DDPCommunicationHookType.BF16] = (
        DDPCommunicationHookType.NO
    )
    comm_state_option: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        cap = self.bucket_cap_mb
        if cap is not None:  # None: DDP's own default
            _check_number("DistributedDataParallelKwargs", "bucket_cap_mb", cap,
                          "> 0 (megabytes per all-reduce bucket)", isinstance(cap, (int, float)) and cap > 0)
        for name in ("broadcast_buffers", "find_unused_parameters", "gradient_as_bucket_view", "static_graph"):
            _check_bool("DistributedDataParallelKwargs", name, getattr(self, name))

    def ddp_kwargs(self) -> dict[str, Any]:
        """The non-default keyword arguments that ``DistributedDataParallel`` itself accepts."""
        hook_fields = ("comm_hook", "comm_wrapper", "comm_state_option")
        return {k: v for k, v in self.to_kwargs().items() if k not in hook_fields}


@dataclass
class GradScalerKwargs(KwargsHandler):
    """Arguments for ``torch.amp.GradScaler`` used with ``mixed_precision="fp16"``.

    Example:
        >>> GradScalerKwargs(growth_interval=100).to_kwargs()
        {'growth_interval': 100}
    """

    init_scale: float = 65536.0
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    enabled: bool = True

    def __post_init__(self) -> None:
        owner = "GradScalerKwargs"
        num = (int, float)
        _check_number(owner, "init_scale", self.init_scale, "> 0", isinstance(self.init_scale, num) and self.init_scale > 0)
        _check_number(owner, "growth_factor", self.growth_factor, "> 1 (the scale grows by it)",
                      isinstance(self.growth_factor, num) and self.growth_factor > 1)
        _check_number(owner, "backoff_factor", self.backoff_factor, "between 0 and 1 (the scale shrinks by it)",
                      isinstance(self.backoff_factor, num) and 0 < self.backoff_factor < 1)
        _check_number(owner, "growth_interval", self.growth_interval, ">= 1 (steps between growths)",
                      isinstance(self.growth_interval, int) and self.growth_interval >= 1, integer=True)
        _check_bool(owner, "enabled", self.enabled)


@dataclass
class InitProcessGroupKwargs(KwargsHandler):
    """Arguments for ``torch.distributed.init_process_group``.

    ``backend`` defaults to ``"nccl"`` as in Accelerate; overdrive uses it only when the device is a GPU and picks
    ``gloo`` on CPU. ``timeout`` is the process-group timeout (torch's default when ``None``).

    Example:
        >>> from datetime import timedelta
        >>> InitProcessGroupKwargs(timeout=timedelta(seconds=30)).timeout.total_seconds()
        30.0
    """

    backend: str | None = "nccl"
    init_method: str | None = None
    timeout: timedelta | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None and not isinstance(self.timeout, timedelta):
            raise TypeError(
                f"InitProcessGroupKwargs(timeout={self.timeout!r}): timeout must be a datetime.timedelta, got a "
                f"{type(self.timeout).__name__}; write timeout=timedelta(seconds={self.timeout!r})"
            )
        if self.timeout is not None and self.timeout.total_seconds() <= 0:
            raise ValueError(f"InitProcessGroupKwargs(timeout={self.timeout!r}): timeout must be positive")
        if self.backend is not None and not isinstance(self.backend, str):
            raise TypeError(
                f"InitProcessGroupKwargs(backend={self.backend!r}): backend must be a string such as 'gloo' or "
                "'nccl', or None"
            )


@dataclass
class DataLoaderConfiguration:
    """How prepared data loaders shard and iterate (Accelerate's field names and defaults).

    One deliberate difference: ``use_seedable_sampler`` defaults to True (Accelerate: False), so the shuffle order is
    a pure function of (seed, epoch), the basis of exact resume.

    Example:
        >>> DataLoaderConfiguration(split_batches=True).even_batches
        True
    """

    split_batches: bool = False
    dispatch_batches: bool | None = None
    even_batches: bool = True
    use_seedable_sampler: bool = True
    data_seed: int | None = None
    non_blocking: bool = False
    use_stateful_dataloader: bool = False

    def __post_init__(self) -> None:
        for name in ("split_batches", "even_batches", "use_seedable_sampler", "non_blocking", "use_stateful_dataloader"):
            _check_bool("DataLoaderConfiguration", name, getattr(self, name))
        _check_bool("DataLoaderConfiguration", "dispatch_batches", self.dispatch_batches, allow_none=True)
        seed = self.data_seed
        if seed is not None:
            _check_number("DataLoaderConfiguration", "data_seed", seed, "or None", True, integer=True)


@dataclass
class ProjectConfiguration:
    """Where a run writes checkpoints and logs.

    Example:
        >>> ProjectConfiguration(project_dir="runs/a").logging_dir
        'runs/a'
    """

    project_dir: str | None = None
    logging_dir: str | None = None
    automatic_checkpoint_naming: bool = False
    total_limit: int | None = None
    iteration: int = 0
    save_on_each_node: bool = False

    def __post_init__(self) -> None:
        if self.logging_dir is None:
            self.logging_dir = self.project_dir
        limit = self.total_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(
                f"ProjectConfiguration(total_limit={limit!r}): total_limit must be None (keep every checkpoint) or an "
                "int >= 1 (how many checkpoints to keep)"
            )
        it = self.iteration
        _check_number("ProjectConfiguration", "iteration", it, ">= 0 (the next checkpoint_N number)",
                      isinstance(it, int) and it >= 0, integer=True)

    def set_directories(self, project_dir: str | None = None) -> None:
        """Set ``project_dir`` and ``logging_dir`` together (as Accelerate does)."""
        self.project_dir = project_dir
        if self.logging_dir is None:
            self.logging_dir = project_dir


@dataclass
class GradientAccumulationPlugin(KwargsHandler):
    """Gradient accumulation behaviour.

    ``num_steps``: micro-batches per optimizer step. ``adjust_scheduler``: scale scheduler steps by it.
    ``sync_with_dataloader``: force a sync (and an optimizer step) on the last batch of a prepared loader.
    ``sync_each_batch``: all-reduce on every micro-batch (saves memory, costs communication).

    Example:
        >>> GradientAccumulationPlugin(num_steps=4).num_steps
        4
    """

    num_steps: int | None = None
    adjust_scheduler: bool = True
    sync_with_dataloader: bool = True
    sync_each_batch: bool = False

    def __post_init__(self) -> None:
        steps = self.num_steps
        if steps is not None:
            _check_number("GradientAccumulationPlugin", "num_steps", steps, ">= 1 (micro-batches per optimizer step)",
                          isinstance(steps, int) and steps >= 1, integer=True)
        for name in ("adjust_scheduler", "sync_with_dataloader", "sync_each_batch"):
            _check_bool("GradientAccumulationPlugin", name, getattr(self, name))


_COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _dynamo_env(name: str, environ: Any) -> str | None:
    """``OVERDRIVE_DYNAMO_<NAME>`` first, then Accelerate's ``ACCELERATE_DYNAMO_<NAME>``; ``None`` when unset."""
    for var in (f"OVERDRIVE_DYNAMO_{name}", f"ACCELERATE_DYNAMO_{name}"):
        raw = environ.get(var)
        if raw is not None and raw != "":
            return str(raw)
    return None


def _dynamo_env_bool(name: str, environ: Any) -> bool | None:
    from ..settings import parse_bool

    raw = _dynamo_env(name, environ)
    if raw is None:
        return None
    try:
        return parse_bool(raw)
    except ValueError as err:
        raise ValueError(f"environment variable ACCELERATE_DYNAMO_{name} / OVERDRIVE_DYNAMO_{name}: {err}") from None


@dataclass
class TorchDynamoPlugin(KwargsHandler):
    """``torch.compile`` options, with Accelerate's field names and ``ACCELERATE_DYNAMO_*`` variables.

    Like :class:`FullyShardedDataParallelPlugin`, a field left at ``None`` is read from the environment when the
    plugin is built (``OVERDRIVE_DYNAMO_<NAME>`` first, then Accelerate's ``ACCELERATE_DYNAMO_<NAME>``: ``BACKEND``,
    ``MODE``, ``USE_FULLGRAPH``, ``USE_DYNAMIC``, ``USE_REGIONAL_COMPILATION``). ``backend`` becomes a
    :class:`DynamoBackend` member (``NO`` disables compilation); a backend name torch registers but the enum lacks
    is kept as lower-case text. The model is compiled in place (``Module.compile``) before the strategy wraps it,
    so DDP runs the compiled graph and state-dict keys never gain ``_orig_mod.`` (see docs/performance.md).

    Example:
        >>> TorchDynamoPlugin(backend="inductor").backend
        <DynamoBackend.INDUCTOR: 'INDUCTOR'>
        >>> TorchDynamoPlugin(backend="aot_eager", fullgraph=True).compile_kwargs()
        {'backend': 'aot_eager', 'fullgraph': True}
    """

    backend: DynamoBackend | str | None = None
    mode: str | None = None
    fullgraph: bool | None = None
    dynamic: bool | None = None
    options: Any = None
    disable: bool = False
    use_regional_compilation: bool | None = None

    def __post_init__(self) -> None:
        import os

        env = os.environ
        if self.backend is None:
            from ..settings import resolve_value

            self.backend = str(resolve_value("dynamo_backend"))
        self.backend = _dynamo_backend(self.backend)
        if self.mode is None:
            self.mode = _dynamo_env("MODE", env)
        if self.mode is not None and (not isinstance(self.mode, str) or self.mode.lower() not in _COMPILE_MODES):
            allowed = ", ".join(repr(m) for m in _COMPILE_MODES if m is not None)
            raise ValueError(f"TorchDynamoPlugin(mode={self.mode!r}): mode must be one of {allowed} (or None)")
        self.mode = self.mode.lower() if self.mode is not None else None
        if self.fullgraph is None:
            self.fullgraph = bool(_dynamo_env_bool("USE_FULLGRAPH", env))
        if self.dynamic is None:
            self.dynamic = _dynamo_env_bool("USE_DYNAMIC", env)  # None: torch decides (recompiles as dynamic)
        if self.use_regional_compilation is None:
            self.use_regional_compilation = bool(_dynamo_env_bool("USE_REGIONAL_COMPILATION", env))
        _check_bool("TorchDynamoPlugin", "fullgraph", self.fullgraph)
        _check_bool("TorchDynamoPlugin", "dynamic", self.dynamic, allow_none=True)
        _check_bool("TorchDynamoPlugin", "disable", self.disable)
        _check_bool("TorchDynamoPlugin", "use_regional_compilation", self.use_regional_compilation)
        if self.options is not None and not isinstance(self.options, dict):
            raise TypeError(f"TorchDynamoPlugin(options={self.options!r}): options must be a dict of backend options")
        if self.options and self.mode not in (None, "default"):
            raise ValueError(
                f"TorchDynamoPlugin(mode={self.mode!r}, options=...): torch.compile takes a mode or options, not both;"
                " drop one of them"
            )

    @property
    def enabled(self) -> bool:
        """True when a model should be compiled (a backend other than ``NO`` and ``disable`` not set).

        Example:
            >>> TorchDynamoPlugin(backend="no").enabled
            False
        """
        return self.backend != DynamoBackend.NO and not self.disable

    def compile_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``torch.compile`` / ``Module.compile`` (the defaults left out).

        Example:
            >>> TorchDynamoPlugin(backend="INDUCTOR", mode="max-autotune").compile_kwargs()
            {'backend': 'inductor', 'mode': 'max-autotune'}
        """
        kwargs: dict[str, Any] = {"backend": str(self.backend).lower()}
        if self.mode not in (None, "default"):
            kwargs["mode"] = self.mode
        if self.fullgraph:
            kwargs["fullgraph"] = True
        if self.dynamic is not None:
            kwargs["dynamic"] = self.dynamic
        if self.options:
            kwargs["options"] = dict(self.options)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """All fields, ``backend`` as lower-case text (as Accelerate writes it)."""
        out = copy.deepcopy(self.__dict__)
        out["backend"] = str(self.backend).lower()
        return out

    def to_kwargs(self) -> dict[str, Any]:
        """Accelerate's spelling of :meth:`compile_kwargs` (``use_regional_compilation`` is not a compile argument)."""
        return self.compile_kwargs()


def _dynamo_backend(value: Any) -> DynamoBackend | str:
    """A :class:`DynamoBackend` member, or a backend name torch has registered; else a ``ValueError`` naming both."""
    text = str(getattr(value, "value", value)).strip()
    if not isinstance(value, (str, DynamoBackend)) or not text:
        raise TypeError(f"dynamo_backend={value!r}: pass a backend name such as 'inductor' or 'aot_eager' (or 'no')")
    try:
        return DynamoBackend(text.upper())
    except ValueError:
        pass
    import torch._dynamo  # only for names outside the enum: importing dynamo costs ~0.2 s

    known = torch._dynamo.list_backends(exclude_tags=())
    if text.lower() in known:
        return text.lower()
    allowed = ", ".join(sorted({b.value.lower() for b in DynamoBackend} | set(known)))
    raise ValueError(f"dynamo_backend={value!r} is not a torch.compile backend; use one of {allowed}")


@dataclass
class FullyShardedDataParallelPlugin:
    """FSDP2 settings (``torch.distributed.fsdp.fully_shard``), with Accelerate's field names and ``FSDP_*`` variables.

    Unlike the other classes of this module, a field left at ``None`` is read from the environment when the plugin
    is built (the ``FSDP_*`` variable Accelerate uses, e.g. ``FSDP_AUTO_WRAP_POLICY``), then normalised:
    ``reshard_after_forward`` to a bool, ``cpu_offload`` to a torch ``OffloadPolicy``, ``state_dict_type`` to
    ``torch.distributed.fsdp.StateDictType``, ``auto_wrap_policy`` to ``"transformer_based_wrap"``,
    ``"size_based_wrap"``, a callable ``policy(module) -> bool`` or ``None`` (no wrapping: the root only).

    Only ``fsdp_version=2`` is implemented, and it is the default when neither the argument nor ``FSDP_VERSION`` says
    otherwise (Accelerate defaults to 1); asking for version 1 raises. ``mixed_precision_policy=None`` means: take it
    from the Accelerator's ``mixed_precision`` (bf16/fp16 parameters in compute, fp32 gradient reduction).
    See docs/fsdp.md.

    Example:
        >>> plugin = FullyShardedDataParallelPlugin(auto_wrap_policy="transformer_based_wrap",
        ...                                         transformer_cls_names_to_wrap=["Block"])
        >>> plugin.fsdp_version, plugin.reshard_after_forward, plugin.state_dict_type.name
        (2, True, 'SHARDED_STATE_DICT')
    """

    fsdp_version: int | None = None
    sharding_strategy: Any = None
    reshard_after_forward: Any = None
    backward_prefetch: Any = None
    mixed_precision_policy: Any = None
    auto_wrap_policy: Callable | str | None = None
    cpu_offload: Any = None
    ignored_modules: Iterable[Any] | str | None = None
    state_dict_type: Any = None
    state_dict_config: Any = None
    optim_state_dict_config: Any = None
    limit_all_gathers: bool = True
    use_orig_params: bool | None = None
    param_init_fn: Callable[[Any], None] | None = None
    sync_module_states: bool | None = None
    forward_prefetch: bool | None = None
    activation_checkpointing: bool | None = None
    activation_checkpointing_offload: bool | None = None
    cpu_ram_efficient_loading: bool | None = None
    transformer_cls_names_to_wrap: list[str] | None = None
    min_num_params: int | None = None

    def __post_init__(self) -> None:
        import os

        env = os.environ
        if self.fsdp_version is None:
            self.fsdp_version = _fsdp_int("FSDP_VERSION", env.get("FSDP_VERSION") or "2")
        if self.fsdp_version == 1:
            raise ValueError(
                "FullyShardedDataParallelPlugin(fsdp_version=1): FSDP1 (the FullyShardedDataParallel wrapper) is not "
                "implemented in overdrive; use fsdp_version=2 (torch's fully_shard) — the same plugin fields apply "
                "(set FSDP_VERSION=2 or --fsdp_version 2 when the value comes from the environment or the CLI)"
            )
        if self.fsdp_version != 2:
            raise ValueError(f"FullyShardedDataParallelPlugin(fsdp_version={self.fsdp_version!r}): use 2")
        self._init_resharding(env)
        if self.backward_prefetch is None:
            self.backward_prefetch = env.get("FSDP_BACKWARD_PREFETCH") or None
        if isinstance(self.backward_prefetch, str) and self.backward_prefetch.upper() == "NO_PREFETCH":
            self.backward_prefetch = None
        # FSDP2 prefetches the next block's all-gather by itself; Accelerate drops this field for version 2 as well.
        self.backward_prefetch = None
        if self.forward_prefetch:
            raise ValueError(
                "FullyShardedDataParallelPlugin(forward_prefetch=True) is not available with FSDP2 (fully_shard "
                "prefetches by itself); leave it unset"
            )
        self.forward_prefetch = None
        self.use_orig_params = None  # FSDP2 always trains the original parameters
        self.sync_module_states = None  # FSDP2 shards the rank-local weights; see cpu_ram_efficient_loading
        self._init_offload(env)
        self._init_state_dict_type(env)
        self._init_wrap_policy(env)
        if self.activation_checkpointing is None:
            self.activation_checkpointing = _fsdp_bool(env, "FSDP_ACTIVATION_CHECKPOINTING")
        if self.activation_checkpointing_offload is None:
            self.activation_checkpointing_offload = _fsdp_bool(env, "FSDP_ACTIVATION_CHECKPOINTING_OFFLOAD")
        if self.activation_checkpointing_offload and not self.activation_checkpointing:
            raise ValueError(
                "FullyShardedDataParallelPlugin(activation_checkpointing_offload=True) needs "
                "activation_checkpointing=True (FSDP_ACTIVATION_CHECKPOINTING=true)"
            )
        if self.cpu_ram_efficient_loading is None:
            self.cpu_ram_efficient_loading = _fsdp_bool(env, "FSDP_CPU_RAM_EFFICIENT_LOADING")
        if self.ignored_modules is None:
            self.ignored_modules = env.get("FSDP_IGNORED_MODULES") or None
        self.mixed_precision_policy = _fsdp_mixed_precision(self.mixed_precision_policy)

    def _init_resharding(self, env: Any) -> None:
        if self.reshard_after_forward is None and self.sharding_strategy is not None:
            # The FSDP1 spelling: FULL_SHARD frees parameters after forward, SHARD_GRAD_OP keeps them.
            name = str(getattr(self.sharding_strategy, "name", self.sharding_strategy)).upper()
            mapping = {"FULL_SHARD": True, "1": True, "SHARD_GRAD_OP": False, "2": False}
            if name not in mapping:
                raise ValueError(
                    f"FullyShardedDataParallelPlugin(sharding_strategy={self.sharding_strategy!r}) has no FSDP2 "
                    "equivalent here; use FULL_SHARD or SHARD_GRAD_OP, or set reshard_after_forward=True/False"
                )
            self.reshard_after_forward = mapping[name]
        if self.reshard_after_forward is None:
            self.reshard_after_forward = env.get("FSDP_RESHARD_AFTER_FORWARD") or "true"
        if isinstance(self.reshard_after_forward, str):
            text = self.reshard_after_forward.strip().upper()
            spelled = {"FULL_SHARD": True, "SHARD_GRAD_OP": False}
            if text in spelled:
                self.reshard_after_forward = spelled[text]
            else:
                from ..settings import parse_bool

                try:
                    self.reshard_after_forward = parse_bool(text)
                except ValueError:
                    raise ValueError(
                        f"FullyShardedDataParallelPlugin(reshard_after_forward={self.reshard_after_forward!r}) "
                        "(or FSDP_RESHARD_AFTER_FORWARD) must be true or false for FSDP2"
                    ) from None
        if not isinstance(self.reshard_after_forward, bool):
            raise ValueError(
                f"FullyShardedDataParallelPlugin(reshard_after_forward={self.reshard_after_forward!r}) must be a "
                "bool for FSDP2 (True: free gathered parameters after forward, False: keep them until backward)"
            )

    def _init_offload(self, env: Any) -> None:
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

        if self.cpu_offload is None:
            self.cpu_offload = _fsdp_bool(env, "FSDP_OFFLOAD_PARAMS")
        if isinstance(self.cpu_offload, bool):
            # pin_memory needs an accelerator; the strategy turns it off on a CPU-only machine.
            self.cpu_offload = CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy()
        if not isinstance(self.cpu_offload, OffloadPolicy):
            raise ValueError(
                f"FullyShardedDataParallelPlugin(cpu_offload={self.cpu_offload!r}) must be a bool or a "
                "torch.distributed.fsdp.OffloadPolicy (e.g. CPUOffloadPolicy(pin_memory=False))"
            )

    def _init_state_dict_type(self, env: Any) -> None:
        from torch.distributed.fsdp import StateDictType

        if self.state_dict_type is None:
            self.state_dict_type = env.get("FSDP_STATE_DICT_TYPE") or "SHARDED_STATE_DICT"
        if isinstance(self.state_dict_type, str):
            text = self.state_dict_type.strip().upper()
            try:
                self.state_dict_type = StateDictType(int(text)) if text.isdigit() else StateDictType[text]
            except (KeyError, ValueError):
                raise ValueError(
                    f"FullyShardedDataParallelPlugin(state_dict_type={self.state_dict_type!r}) (or "
                    "FSDP_STATE_DICT_TYPE) is not one of 'FULL_STATE_DICT', 'SHARDED_STATE_DICT'"
                ) from None
        if self.state_dict_type not in (StateDictType.FULL_STATE_DICT, StateDictType.SHARDED_STATE_DICT):
            raise ValueError(
                f"FullyShardedDataParallelPlugin(state_dict_type={self.state_dict_type!r}) is not supported by "
                "FSDP2; use 'FULL_STATE_DICT' or 'SHARDED_STATE_DICT'"
            )

    def set_state_dict_type(self, state_dict_type: Any = None) -> None:
        """Switch between ``"FULL_STATE_DICT"`` and ``"SHARDED_STATE_DICT"`` (e.g. a full state dict for the final save).

        Example:
            >>> plugin = FullyShardedDataParallelPlugin()
            >>> plugin.set_state_dict_type("FULL_STATE_DICT"); plugin.state_dict_type.name
            'FULL_STATE_DICT'
        """
        import os

        self.state_dict_type = state_dict_type
        self._init_state_dict_type(os.environ)

    def _init_wrap_policy(self, env: Any) -> None:
        if self.auto_wrap_policy is None:
            self.auto_wrap_policy = env.get("FSDP_AUTO_WRAP_POLICY") or "no_wrap"
        policy = self.auto_wrap_policy
        if callable(policy):
            # torch's FSDP1 policy functions (what Accelerate stores) name the same two policies.
            from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

            func = getattr(policy, "func", policy)
            bound = getattr(policy, "keywords", None) or {}
            if func is transformer_auto_wrap_policy:
                policy = "transformer_based_wrap"
                if bound.get("transformer_layer_cls") and self.transformer_cls_names_to_wrap is None:
                    self.transformer_cls_names_to_wrap = [c.__name__ for c in bound["transformer_layer_cls"]]
            elif func is size_based_auto_wrap_policy:
                policy = "size_based_wrap"
                if "min_num_params" in bound and self.min_num_params is None:
                    self.min_num_params = int(bound["min_num_params"])
            else:
                return  # the user's own policy(module) -> bool
        allowed = ("transformer_based_wrap", "size_based_wrap", "no_wrap")
        if not isinstance(policy, str) or policy.strip().lower() not in allowed:
            raise ValueError(
                f"FullyShardedDataParallelPlugin(auto_wrap_policy={self.auto_wrap_policy!r}) (or "
                f"FSDP_AUTO_WRAP_POLICY) is not one of {', '.join(repr(a) for a in allowed)} or a callable "
                "policy(module) -> bool"
            )
        policy = policy.strip().lower()
        self.auto_wrap_policy = None if policy == "no_wrap" else policy
        if policy == "transformer_based_wrap" and self.transformer_cls_names_to_wrap is None:
            names = env.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or None
            self.transformer_cls_names_to_wrap = names
        if isinstance(self.transformer_cls_names_to_wrap, str):
            self.transformer_cls_names_to_wrap = [
                n.strip() for n in self.transformer_cls_names_to_wrap.split(",") if n.strip()
            ]
        if policy == "size_based_wrap":
            if self.min_num_params is None:
                self.min_num_params = _fsdp_int("FSDP_MIN_NUM_PARAMS", env.get("FSDP_MIN_NUM_PARAMS") or "0")
            if isinstance(self.min_num_params, bool) or not isinstance(self.min_num_params, int) or (
                self.min_num_params < 0
            ):
                raise ValueError(
                    f"FullyShardedDataParallelPlugin(min_num_params={self.min_num_params!r}) must be an integer >= 0"
                )


def _fsdp_bool(env: Any, name: str) -> bool:
    from ..settings import parse_bool

    raw = env.get(name) or "false"
    try:
        return parse_bool(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={raw!r}: {err}") from None


def _fsdp_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _fsdp_mixed_precision(policy: Any) -> Any:
    """None (follow the Accelerator), or a ``torch.distributed.fsdp.MixedPrecisionPolicy`` built from a str/dict."""
    if policy is None:
        return None
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if isinstance(policy, MixedPrecisionPolicy):
        return policy
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "no": torch.float32}
    if isinstance(policy, str):
        if policy.lower() not in dtypes:
            raise ValueError(
                f"FullyShardedDataParallelPlugin(mixed_precision_policy={policy!r}) is not one of 'bf16', 'fp16', "
                "'fp32', a dict of dtypes or a torch.distributed.fsdp.MixedPrecisionPolicy"
            )
        # Parameters in the low dtype for compute; gradients reduced in fp32 (Accelerate reduces in the low dtype).
        return MixedPrecisionPolicy(param_dtype=dtypes[policy.lower()], reduce_dtype=torch.float32)
    if isinstance(policy, dict):
        allowed = {"param_dtype", "reduce_dtype", "output_dtype", "cast_forward_inputs"}
        unknown = sorted(set(policy) - allowed)
        if unknown:
            raise ValueError(
                f"FullyShardedDataParallelPlugin(mixed_precision_policy=...) has unknown keys {unknown}; FSDP2 takes "
                f"{sorted(allowed)}"
            )
        kwargs: dict[str, Any] = {k: dtypes.get(v, v) if isinstance(v, str) else v for k, v in policy.items()}
        return MixedPrecisionPolicy(**kwargs)
    raise ValueError(
        f"FullyShardedDataParallelPlugin(mixed_precision_policy={policy!r}) must be None, 'bf16'/'fp16'/'fp32', a dict "
        "or a torch.distributed.fsdp.MixedPrecisionPolicy"
    )


@dataclass
class DeepSpeedPlugin:
    """DeepSpeed ZeRO settings, with Accelerate's field names and ``ACCELERATE_DEEPSPEED_*`` variables.

    A field left at ``None`` is read from the environment when the plugin is built (``OVERDRIVE_<NAME>`` first,
    then Accelerate's ``ACCELERATE_<NAME>``, e.g. ``ACCELERATE_DEEPSPEED_ZERO_STAGE``), then Accelerate's default:
    ZeRO stage 2, no offload, ``"auto"`` accumulation steps and clipping. ``hf_ds_config`` (a JSON file path, a JSON
    or base64 string, or a dict; ``ACCELERATE_DEEPSPEED_CONFIG_FILE``) is the user's own DeepSpeed config: the
    fields then only fill its ``"auto"`` entries. The result is :attr:`deepspeed_config`; the Accelerator fills its
    remaining ``"auto"`` entries (batch sizes, precision, ...) in ``prepare`` (see :mod:`overdrive.utils.deepspeed`
    and docs/deepspeed.md). Building a plugin needs no DeepSpeed installed.

    Example:
        >>> plugin = DeepSpeedPlugin(zero_stage=3, gradient_clipping=1.0)
        >>> plugin.deepspeed_config["zero_optimization"]["stage"], plugin.zero3_init_flag
        (3, True)
        >>> plugin.is_auto("train_micro_batch_size_per_gpu")
        True
    """

    hf_ds_config: Any = None
    gradient_accumulation_steps: int | str | None = None
    gradient_clipping: float | str | None = None
    zero_stage: int | None = None
    is_train_batch_min: bool = True
    offload_optimizer_device: str | None = None
    offload_param_device: str | None = None
    offload_optimizer_nvme_path: str | None = None
    offload_param_nvme_path: str | None = None
    zero3_init_flag: bool | None = None
    zero3_save_16bit_model: bool | None = None
    transformer_moe_cls_names: str | None = None
    enable_msamp: bool | None = None
    msamp_opt_level: Literal["O1", "O2"] | None = None

    def __post_init__(self) -> None:
        import os
        import warnings

        from .deepspeed import PLUGIN_TO_CONFIG, HfDeepSpeedConfig, get_value, plugin_config

        env = os.environ

        def read(name: str, default: str) -> str:
            return env.get(f"OVERDRIVE_{name}") or env.get(f"ACCELERATE_{name}") or default

        if self.gradient_accumulation_steps is None:
            self.gradient_accumulation_steps = _ds_steps(read("GRADIENT_ACCUMULATION_STEPS", "auto"))
        self.gradient_accumulation_steps = _ds_steps(self.gradient_accumulation_steps)
        if self.gradient_clipping is None:
            self.gradient_clipping = read("GRADIENT_CLIPPING", "auto")
        self.gradient_clipping = _ds_clipping(self.gradient_clipping)
        if self.zero_stage is None:
            self.zero_stage = _ds_stage(read("DEEPSPEED_ZERO_STAGE", "2"), "ACCELERATE_DEEPSPEED_ZERO_STAGE")
        self.zero_stage = _ds_stage(self.zero_stage, "DeepSpeedPlugin(zero_stage=...)")
        for name in ("offload_optimizer_device", "offload_param_device"):
            if getattr(self, name) is None:
                setattr(self, name, read(f"DEEPSPEED_{name.upper()}", "none"))
            value = str(getattr(self, name)).lower()
            if value not in ("none", "cpu", "nvme"):
                raise ValueError(f"DeepSpeedPlugin({name}={getattr(self, name)!r}) is not one of 'none', 'cpu', 'nvme'")
            setattr(self, name, value)
        for name in ("offload_optimizer_nvme_path", "offload_param_nvme_path"):
            if getattr(self, name) is None:
                setattr(self, name, read(f"DEEPSPEED_{name.upper()}", "none"))
        if self.zero3_save_16bit_model is None:
            self.zero3_save_16bit_model = _fsdp_bool(
                {"v": read("DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "false")}, "v"
            )
        if self.enable_msamp is None:
            self.enable_msamp = read("FP8_BACKEND", "").upper() == "MSAMP"
        if self.enable_msamp:
            raise NotImplementedError(
                "DeepSpeedPlugin(enable_msamp=True) / ACCELERATE_FP8_BACKEND=MSAMP: MS-AMP fp8 is not implemented in "
                "overdrive; leave enable_msamp unset"
            )
        if self.msamp_opt_level is None:
            self.msamp_opt_level = read("FP8_OPT_LEVEL", "O1")  # type: ignore[assignment]
        if self.transformer_moe_cls_names is None:
            self.transformer_moe_cls_names = read("DEEPSPEED_MOE_LAYER_CLS_NAMES", "") or None
        if self.hf_ds_config is None:
            self.hf_ds_config = read("DEEPSPEED_CONFIG_FILE", "none")
        from_file = not (isinstance(self.hf_ds_config, str) and self.hf_ds_config == "none")
        config = plugin_config(
            self.hf_ds_config if from_file else None,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            gradient_clipping=self.gradient_clipping,
            zero_stage=self.zero_stage,
            offload_optimizer_device=self.offload_optimizer_device,  # type: ignore[arg-type]
            offload_param_device=self.offload_param_device,  # type: ignore[arg-type]
            offload_optimizer_nvme_path=self.offload_optimizer_nvme_path,  # type: ignore[arg-type]
            offload_param_nvme_path=self.offload_param_nvme_path,  # type: ignore[arg-type]
            zero3_save_16bit_model=self.zero3_save_16bit_model,
        )
        if from_file:
            for name, key in PLUGIN_TO_CONFIG.items():  # the user's explicit values become the plugin's fields
                value = get_value(config, key)
                if value is not None and value != "auto":
                    setattr(self, name, value)
            self.zero_stage = _ds_stage(self.zero_stage, "the DeepSpeed config's zero_optimization.stage")
        if not isinstance(self.hf_ds_config, HfDeepSpeedConfig):
            self.hf_ds_config = HfDeepSpeedConfig({})
        self.hf_ds_config.config = config
        self.deepspeed_config: dict[str, Any] = config
        if self.offload_param_device != "none" and self.zero_stage != 3:
            raise ValueError(
                f"DeepSpeedPlugin(offload_param_device={self.offload_param_device!r}) needs zero_stage=3 (only "
                f"ZeRO-3 partitions parameters), got zero_stage={self.zero_stage}; use zero_stage=3 or "
                "offload_param_device='none'"
            )
        if self.zero3_init_flag is None:
            default = "true" if self.zero_stage == 3 else "false"
            self.zero3_init_flag = _fsdp_bool({"v": read("DEEPSPEED_ZERO3_INIT", default)}, "v")
        if self.zero3_init_flag and self.zero_stage != 3:
            warnings.warn("DeepSpeedPlugin(zero3_init_flag=True) applies to ZeRO stage 3 only; setting it to False")
            self.zero3_init_flag = False

    def is_auto(self, ds_key_long: str) -> bool:
        """Whether the config entry at a dotted key is still ``"auto"``."""
        return self.get_value(ds_key_long) == "auto"

    def get_value(self, ds_key_long: str, default: Any = None) -> Any:
        """The config entry at a dotted key (``"zero_optimization.stage"``), or ``default``."""
        from .deepspeed import get_value

        return get_value(self.deepspeed_config, ds_key_long, default)

    def set_mixed_precision(self, mixed_precision: str) -> None:
        """Enable the config's fp16/bf16 section for the Accelerator's ``mixed_precision``."""
        from .deepspeed import set_mixed_precision

        set_mixed_precision(self.deepspeed_config, mixed_precision)

    def deepspeed_config_process(self, must_match: bool = True, **kwargs: Any) -> None:
        """Fill ``"auto"`` entries from ``kwargs`` (dotted keys); with ``must_match``, explicit entries that differ
        from ``kwargs`` are an error listing each."""
        from .deepspeed import fill_auto, get_value

        if must_match:
            mismatches = [
                f"{key}={get_value(self.deepspeed_config, key)!r} in the config but {value!r} given"
                for key, value in kwargs.items()
                if get_value(self.deepspeed_config, key) not in (None, "auto", value)
            ]
            if mismatches:
                raise ValueError(
                    "DeepSpeed config values disagree with the Accelerator: " + "; ".join(mismatches)
                    + ". Set them to 'auto' in the DeepSpeed config to take the Accelerator's values"
                )
        fill_auto(self.deepspeed_config, kwargs, strict=False)

    def is_zero3_init_enabled(self) -> bool:
        """Whether models built inside :meth:`zero3_init` are partitioned as they are created."""
        return bool(self.zero3_init_flag)

    def zero3_init_context_manager(self, enable: bool = False) -> Any:
        """Context in which ``zero3_init_flag`` is ``enable`` (restored afterwards): e.g. build a small reference
        model whole (``enable=False``) while the trained one is created partitioned.

        Example:
            >>> plugin = DeepSpeedPlugin(zero_stage=3, zero3_init_flag=True)
            >>> with plugin.zero3_init_context_manager(enable=False):
            ...     plugin.is_zero3_init_enabled()
            False
            >>> plugin.is_zero3_init_enabled()
            True
        """
        import contextlib

        @contextlib.contextmanager
        def switched() -> Any:
            saved = self.zero3_init_flag
            self.zero3_init_flag = bool(enable) and self.zero_stage == 3  # ZeRO-3 only, as the constructor rules
            try:
                yield
            finally:
                self.zero3_init_flag = saved

        return switched()

    def set_moe_leaf_modules(self, model: Any) -> None:
        """Mark the module classes named in ``transformer_moe_cls_names`` (comma-separated) as ZeRO-3 leaves
        (``deepspeed.utils.set_z3_leaf_modules``): their parameters are gathered together on entry, which
        mixture-of-experts layers need. ``prepare`` calls it; a name the model lacks is an error naming it.

        Example:
            >>> DeepSpeedPlugin(zero_stage=3).set_moe_leaf_modules(None)  # no names: nothing to do
        """
        names = self.transformer_moe_cls_names
        if not names:
            return
        classes = []
        for name in (n.strip() for n in names.split(",") if n.strip()):
            found = next((type(m) for m in model.modules() if type(m).__name__ == name), None)
            if found is None:
                raise ValueError(
                    f"DeepSpeedPlugin(transformer_moe_cls_names={names!r}): the model has no module class {name!r}"
                )
            classes.append(found)
        from ..strategies.deepspeed import import_deepspeed

        import_deepspeed().utils.set_z3_leaf_modules(model, classes)

    def zero3_init(self) -> Any:
        """Context in which a model is created already partitioned across ranks (``deepspeed.zero.Init``) when
        ``zero3_init_flag`` is set; otherwise nothing happens. Create the Accelerator first (it forms the group).

        Example:
            >>> with DeepSpeedPlugin(zero_stage=2).zero3_init():
            ...     pass
        """
        import contextlib

        if not self.zero3_init_flag:
            return contextlib.nullcontext()
        from ..strategies.deepspeed import zero3_init_context

        return zero3_init_context(self.deepspeed_config)


def _ds_stage(value: Any, where: str) -> int:
    try:
        stage = int(value)
    except (TypeError, ValueError):
        stage = -1
    if isinstance(value, bool) or stage not in (0, 1, 2, 3) or str(value).strip() != str(stage):
        raise ValueError(
            f"{where}: zero_stage={value!r} is not a ZeRO stage; use 0 (plain data parallel), 1 (shard optimizer "
            "states), 2 (+ gradients) or 3 (+ parameters)"
        )
    return stage


def _ds_steps(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"DeepSpeedPlugin(gradient_accumulation_steps={value!r}) (or ACCELERATE_GRADIENT_ACCUMULATION_STEPS) must "
            "be a positive integer or 'auto' (take the Accelerator's)"
        )
    return int(text)


def _ds_clipping(value: Any) -> float | str:
    if value == "auto":
        return "auto"
    try:
        clip = float(value)
    except (TypeError, ValueError):
        clip = -1.0
    if isinstance(value, bool) or not clip >= 0:
        raise ValueError(
            f"DeepSpeedPlugin(gradient_clipping={value!r}) (or ACCELERATE_GRADIENT_CLIPPING) must be a number >= 0 "
            "(0: no clipping) or 'auto' (1.0)"
        )
    return clip


def field_names(cls: type) -> list[str]:
    """Names of a dataclass's fields, in order (used by signature tests and config translation)."""
    return [f.name for f in fields(cls)]
