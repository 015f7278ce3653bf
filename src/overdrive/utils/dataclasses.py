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


@dataclass
class AutocastKwargs(KwargsHandler):
    """Arguments for ``torch.autocast`` (``Accelerator.autocast(autocast_handler=...)``).

    Example:
        >>> AutocastKwargs(enabled=False).enabled
        False
    """

    enabled: bool = True
    cache_enabled: bool | None = None


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


@dataclass
class TorchDynamoPlugin(KwargsHandler):
    """``torch.compile`` options (accepted now; compilation is not implemented yet).

    Example:
        >>> TorchDynamoPlugin(backend="inductor").backend
        'inductor'
    """

    backend: DynamoBackend | str | None = None
    mode: str | None = None
    fullgraph: bool | None = None
    dynamic: bool | None = None
    options: Any = None
    disable: bool = False
    use_regional_compilation: bool | None = None


@dataclass
class FullyShardedDataParallelPlugin:
    """FSDP settings, Accelerate's field names (accepted now; sharded training is not implemented yet).

    Example:
        >>> FullyShardedDataParallelPlugin(fsdp_version=2).fsdp_version
        2
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


@dataclass
class DeepSpeedPlugin:
    """DeepSpeed settings, Accelerate's field names (accepted now; DeepSpeed training is not implemented yet).

    Example:
        >>> DeepSpeedPlugin(zero_stage=2).zero_stage
        2
    """

    hf_ds_config: Any = None
    gradient_accumulation_steps: int | None = None
    gradient_clipping: float | None = None
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


def field_names(cls: type) -> list[str]:
    """Names of a dataclass's fields, in order (used by signature tests and config translation)."""
    return [f.name for f in fields(cls)]
