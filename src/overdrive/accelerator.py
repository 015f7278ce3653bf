"""The :class:`Accelerator` facade: Accelerate's API, delegating to a strategy, a precision policy and helpers.

Reading order for a newcomer: :meth:`Accelerator.__init__` (settings → state → precision → strategy),
:meth:`Accelerator.prepare` (each object handed to the strategy or wrapped), :meth:`Accelerator.backward` and
:meth:`Accelerator.accumulate` (gradient synchronisation), then ``strategies/`` for what DDP actually does.

Example:
    >>> import torch
    >>> from overdrive import Accelerator
    >>> accelerator = Accelerator()
    >>> model = torch.nn.Linear(4, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> model, optimizer = accelerator.prepare(model, optimizer)
    >>> loss = model(torch.ones(2, 4)).sum()
    >>> accelerator.backward(loss)
    >>> optimizer.step(); optimizer.zero_grad()
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from . import checkpoint_state, checkpointing
from . import debug as _debug
from .data_loader import prepare_data_loader, skip_first_batches
from .logging import get_logger
from .normalization import ItemWindow
from .optimizer import AcceleratedOptimizer
from .precision import Precision, make_precision
from .scheduler import AcceleratedScheduler
from .settings import resolve_value
from .state import AcceleratorState, GradientState
from .strategies import Strategy, make_strategy, select_strategy
from .utils import operations as ops
from .utils.other import extract_model_from_parallel
from .utils.dataclasses import (
    AutocastKwargs,
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    DistributedType,
    FullyShardedDataParallelPlugin,
    GradientAccumulationPlugin,
    GradScalerKwargs,
    InitProcessGroupKwargs,
    KwargsHandler,
    ProfileKwargs,
    ProjectConfiguration,
    TorchDynamoPlugin,
)

__all__ = ["Accelerator"]

F = TypeVar("F", bound=Callable[..., Any])
logger = get_logger(__name__)

# Sentinel so that an explicit `split_batches=False` can be told apart from "not given" (Accelerate's signature).
_split_batches: Any = object()

_HANDLER_SLOTS: dict[type, str] = {
    DistributedDataParallelKwargs: "ddp_handler",
    GradScalerKwargs: "scaler_handler",
    InitProcessGroupKwargs: "init_handler",
    AutocastKwargs: "autocast_handler",
    ProfileKwargs: "profile_handler",
}


def _not_implemented(name: str, value: Any) -> None:
    if value is not None:
        raise NotImplementedError(
            f"Accelerator({name}={value!r}): {name} is not implemented yet in this version of overdrive; "
            f"remove the argument (or set it to None)"
        )



def _unconfigured_rank(kind: str, error: type[Exception] = RuntimeError) -> property:
    """A read-only ``{kind}_parallel_rank`` property that raises ``error``: overdrive has no ``ParallelismConfig``."""

    def rank(self: Any) -> int:
        raise error(
            f"{kind} parallelism is not configured: overdrive has no ParallelismConfig (parallelism_config is None); "
            "under data parallelism use accelerator.process_index"
        )

    rank.__doc__ = (
        f"Raises {error.__name__}: {kind} parallelism needs a ``ParallelismConfig``, which overdrive does not have "
        "(as Accelerate without one); use :attr:`process_index`.\n\nExample:\n    >>> from overdrive import "
        "Accelerator\n    >>> Accelerator().process_index\n    0\n"
    )
    return property(rank)

_NULL_CONTEXT = contextlib.nullcontext()  # reusable: what accumulate() returns on a synchronising micro-step


class _NoSync:
    """Enters every model's ``no_sync`` context on ``__enter__`` (not when ``accumulate()`` is called)."""

    __slots__ = ("_contexts", "_stack")

    def __init__(self, contexts: list[contextlib.AbstractContextManager[Any]]) -> None:
        self._contexts = contexts
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> None:
        for context in self._contexts:
            self._stack.enter_context(context)

    def __exit__(self, *exc_info: Any) -> bool:
        return bool(self._stack.__exit__(*exc_info))


class Accelerator:
    """Prepares models, optimizers, data loaders and schedulers for training on one or many processes.

    Takes Accelerate 1.x's arguments, in the same order with the same defaults. Settings are resolved with one
    precedence (see :mod:`overdrive.settings`): explicit argument > ``OVERDRIVE_*`` env > ``ACCELERATE_*`` env >
    default. Under ``overdrive launch`` or ``torchrun`` with several processes it always forms a process group
    (gloo on CPU), also without ``cpu=True``.

    Example:
        >>> from overdrive import Accelerator
        >>> accelerator = Accelerator(gradient_accumulation_steps=2)
        >>> accelerator.gradient_accumulation_steps
        2
    """

    def __init__(
        self,
        device_placement: bool = True,
        split_batches: bool = _split_batches,
        mixed_precision: str | None = None,
        gradient_accumulation_steps: int = 1,
        cpu: bool = False,
        dataloader_config: DataLoaderConfiguration | None = None,
        deepspeed_plugin: Any = None,
        fsdp_plugin: Any = None,
        torch_tp_plugin: Any = None,
        megatron_lm_plugin: Any = None,
        rng_types: list[str] | None = None,
        log_with: Any = None,
        project_dir: str | os.PathLike[str] | None = None,
        project_config: ProjectConfiguration | None = None,
        gradient_accumulation_plugin: GradientAccumulationPlugin | None = None,
        step_scheduler_with_optimizer: bool = True,
        kwargs_handlers: list[KwargsHandler] | None = None,
        dynamo_backend: Any = None,
        dynamo_plugin: Any = None,
        deepspeed_plugins: Any = None,
        parallelism_config: Any = None,
    ) -> None:
        # 1. Validate and resolve every input before any process group exists.
        for name, value in (
            ("torch_tp_plugin", torch_tp_plugin),
            ("megatron_lm_plugin", megatron_lm_plugin),
            ("deepspeed_plugins", deepspeed_plugins),
            ("parallelism_config", parallelism_config),
        ):
            _not_implemented(name, value)
        dynamo = _dynamo_plugin(dynamo_backend, dynamo_plugin)
        use_fsdp = bool(resolve_value("use_fsdp"))
        strategy_cls = select_strategy(
            num_processes=int(os.environ.get("WORLD_SIZE", "1") or 1),
            fsdp_plugin=fsdp_plugin,
            deepspeed_plugin=deepspeed_plugin,
            use_fsdp=use_fsdp,
            use_deepspeed=bool(resolve_value("use_deepspeed")),
        )
        if dynamo.enabled and not strategy_cls.supports_compile:
            raise NotImplementedError(
                f"dynamo_backend={str(dynamo.backend).lower()!r} is not supported with {strategy_cls.__name__} yet; "
                "train without compilation (dynamo_backend='no') or use DDP/FSDP"
            )
        if use_fsdp and fsdp_plugin is None:
            fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables now, before any group forms
        if deepspeed_plugin is None and resolve_value("use_deepspeed"):
            from .utils.dataclasses import DeepSpeedPlugin

            deepspeed_plugin = DeepSpeedPlugin()  # reads the ACCELERATE_DEEPSPEED_* variables now, before any group forms
        mixed_precision = _check_str("mixed_precision", mixed_precision)
        resolve_value("mixed_precision", mixed_precision)  # validates argument and env now, before any group forms
        self.gradient_accumulation_plugin = _accumulation_plugin(gradient_accumulation_steps, gradient_accumulation_plugin)
        self.dataloader_config = _dataloader_config(dataloader_config, split_batches)
        handlers = _collect_handlers(kwargs_handlers)
        self.ddp_handler: DistributedDataParallelKwargs | None = handlers.get("ddp_handler")
        self.scaler_handler: GradScalerKwargs | None = handlers.get("scaler_handler")
        self.init_handler: InitProcessGroupKwargs | None = handlers.get("init_handler")
        self.autocast_handler: AutocastKwargs | None = handlers.get("autocast_handler")
        self.profile_handler: ProfileKwargs | None = handlers.get("profile_handler")
        self.project_configuration = project_config or ProjectConfiguration(project_dir=_opt_str(project_dir))
        if project_dir is not None and project_config is not None:
            self.project_configuration.set_directories(_opt_str(project_dir))
        checkpoint_state.validate_project_configuration(self.project_configuration)
        self.log_with: list[Any] = []
        if log_with is not None:  # the module only when asked for: Accelerator() stays a few hundred microseconds
            from . import tracking  # the tracker packages themselves are imported when a tracker starts

            self.log_with = tracking.filter_trackers(log_with, self.project_configuration.logging_dir)
        self.rng_types = list(rng_types) if rng_types is not None else ["generator"]
        self.device_placement = device_placement
        self.step_scheduler_with_optimizer = step_scheduler_with_optimizer
        self.fsdp_plugin, self.deepspeed_plugin = fsdp_plugin, deepspeed_plugin

        # 2. Collaborators: shared state (forms the process group), precision policy, strategy.
        init_kwargs = self.init_handler.to_kwargs() if self.init_handler is not None else {}
        self.state = AcceleratorState(mixed_precision=mixed_precision, cpu=cpu, **init_kwargs)
        self.gradient_state = GradientState(self.gradient_accumulation_plugin)
        self.precision: Precision = make_precision(
            self.state.mixed_precision, self.state.device, self.autocast_handler, self.scaler_handler
        )
        self.strategy: Strategy = make_strategy(
            strategy_cls, self.state.partial, self.precision, self.ddp_handler, fsdp_plugin=fsdp_plugin,
            deepspeed_plugin=deepspeed_plugin, dynamo_plugin=dynamo,
        )
        self.state.dynamo_plugin = dynamo  # AcceleratorState().dynamo_plugin, as in Accelerate
        self.precision = self.strategy.precision  # DeepSpeed's engine owns mixed precision: its strategy holds fp32's
        if deepspeed_plugin is not None:
            self.state.deepspeed_plugin = deepspeed_plugin  # AcceleratorState().deepspeed_plugin, as in Accelerate

        self.step = 0
        self.flag_tensor: torch.Tensor | None = None
        self._models: list[torch.nn.Module] = []
        self._optimizers: list[AcceleratedOptimizer] = []
        self._schedulers: list[AcceleratedScheduler] = []
        self._dataloaders: list[Any] = []
        self.trackers: list[Any] = []
        self._backward_seconds = 0.0  # total time inside backward(), for overdrive.progress
        self._warned_unprepared_accumulation = False
        self._item_window = ItemWindow()
        self._custom_objects: list[Any] = []  # register_for_checkpointing; hook tables keep Accelerate's names
        self._save_model_state_pre_hook: collections.OrderedDict[int, Callable[..., None]] = collections.OrderedDict()
        self._load_model_state_pre_hook: collections.OrderedDict[int, Callable[..., None]] = collections.OrderedDict()

    # -- identity and settings (read from the shared state) ---------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        return self.state.device

    @property
    def distributed_type(self) -> DistributedType:
        """``NO``, ``MULTI_CPU`` or ``MULTI_GPU``."""
        return self.strategy.distributed_type

    @property
    def num_processes(self) -> int:
        """Number of processes taking part in training."""
        return self.state.num_processes

    @property
    def process_index(self) -> int:
        """Global rank of this process."""
        return self.state.process_index

    @property
    def local_process_index(self) -> int:
        """Rank of this process on its node."""
        return self.state.local_process_index

    @property
    def is_main_process(self) -> bool:
        """True on global rank 0."""
        return self.state.is_main_process

    @property
    def is_local_main_process(self) -> bool:
        """True on local rank 0 of each node."""
        return self.state.is_local_main_process

    @property
    def is_last_process(self) -> bool:
        """True on the last global rank."""
        return self.state.is_last_process

    @property
    def use_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.state.use_distributed

    @property
    def multi_device(self) -> bool:
        """True when several accelerator devices (not CPU processes) take part, as Accelerate's ``multi_device``.

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().multi_device
            False
        """
        return self.use_distributed and self.device.type != "cpu"

    @property
    def is_fsdp2(self) -> bool:
        """True when models are sharded with FSDP2 (overdrive's only FSDP version).

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().is_fsdp2
            False
        """
        return self.strategy.is_fsdp2

    @property
    def is_composable_parallelism_enabled(self) -> bool:
        """Accelerate's name for "FSDP2 is used" (composable ``fully_shard``).

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().is_composable_parallelism_enabled
            False
        """
        return self.is_fsdp2

    @property
    def parallelism_config(self) -> None:
        """Always ``None``: N-D parallelism (``ParallelismConfig``) is not implemented; data parallel, FSDP2 and
        DeepSpeed are configured by their plugins.

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().parallelism_config is None
            True
        """
        return None

    @property
    def torch_device_mesh(self) -> None:
        """Always ``None`` (no ``ParallelismConfig``, see :attr:`parallelism_config`).

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().torch_device_mesh is None
            True
        """
        return None

    @property
    def should_save_model(self) -> bool:
        """Whether this process should write model files: each node's local main process, as Accelerate answers
        without a ``ParallelismConfig`` (``save_model`` and ``save_state`` decide for themselves).

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().should_save_model
            True
        """
        return self.is_local_main_process

    @property
    def use_stateful_dataloader(self) -> bool:
        """Whether prepared loaders are ``torchdata`` ``StatefulDataLoader`` s (``DataLoaderConfiguration``).

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().use_stateful_dataloader
            False
        """
        return bool(self.dataloader_config.use_stateful_dataloader)

    # N-D parallelism ranks: without a ParallelismConfig Accelerate raises for each; so does overdrive, naming the fix.
    data_parallel_rank = _unconfigured_rank("data")
    data_parallel_shard_rank = _unconfigured_rank("shard-based data")
    tensor_parallel_rank = _unconfigured_rank("tensor")
    pipeline_parallel_rank = _unconfigured_rank("pipeline", NotImplementedError)
    context_parallel_rank = _unconfigured_rank("context", NotImplementedError)

    def verify_device_map(self, model: torch.nn.Module) -> bool:
        """True when ``model`` (or a submodule) was dispatched over several devices (an ``hf_device_map`` with more
        than one entry): such a model must not be prepared for distributed training.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> Accelerator().verify_device_map(torch.nn.Linear(1, 1))
            False
        """
        return any(len(getattr(m, "hf_device_map", None) or {}) > 1 for m in model.modules())

    @property
    def mixed_precision(self) -> str:
        """``'no'``, ``'fp16'`` or ``'bf16'``."""
        return self.state.mixed_precision

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 loss scaler, or ``None``."""
        return self.precision.scaler

    @property
    def gradient_accumulation_steps(self) -> int:
        """Micro-batches per optimizer step."""
        return self.gradient_state.num_steps

    @gradient_accumulation_steps.setter
    def gradient_accumulation_steps(self, value: int) -> None:
        self.gradient_state.plugin_kwargs["num_steps"] = _positive_int("gradient_accumulation_steps", value)

    @property
    def sync_gradients(self) -> bool:
        """True on the micro-step where gradients are synchronised and the optimizer steps."""
        return self.gradient_state.sync_gradients

    @sync_gradients.setter
    def sync_gradients(self, value: bool) -> None:
        self.gradient_state.sync_gradients = value

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """True when any prepared optimizer skipped its last step (fp16 inf/nan gradients)."""
        return any(opt.step_was_skipped for opt in self._optimizers)

    @property
    def split_batches(self) -> bool:
        """Whether each loader batch is split across processes (instead of one batch per process)."""
        return self.dataloader_config.split_batches

    @property
    def even_batches(self) -> bool:
        """Whether prepared loaders pad the last round so every process gets the same batches."""
        return self.dataloader_config.even_batches

    @even_batches.setter
    def even_batches(self, value: bool) -> None:
        self.dataloader_config.even_batches = value

    @property
    def dispatch_batches(self) -> bool | None:
        """Whether the main process reads batches and sends slices (not implemented yet)."""
        return self.dataloader_config.dispatch_batches

    @property
    def use_seedable_sampler(self) -> bool:
        """Whether shuffling samplers are replaced by a seed-and-epoch deterministic sampler."""
        return self.dataloader_config.use_seedable_sampler

    @property
    def non_blocking(self) -> bool:
        """Whether batches are moved to the device with ``non_blocking=True``."""
        return self.dataloader_config.non_blocking

    @property
    def project_dir(self) -> str | None:
        """The run's project directory."""
        return self.project_configuration.project_dir

    @property
    def logging_dir(self) -> str | None:
        """Where trackers write."""
        return self.project_configuration.logging_dir

    # -- prepare ------------------------------------------------------------------------------------------------

    def prepare(self, *args: Any, device_placement: list[bool] | None = None) -> Any:
        """Prepare models, optimizers, data loaders and schedulers; return them in the order given.

        Other objects pass through unchanged. Schedulers are prepared after the optimizers they drive.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> model = torch.nn.Linear(2, 2)
            >>> model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        """
        together = getattr(self.strategy, "prepare_together", None)
        if together is not None:  # DeepSpeed builds one engine from the model, optimizer and scheduler together
            return together(self, args, device_placement)
        if device_placement is None:
            device_placement = [None] * len(args)  # type: ignore[list-item]
        elif len(device_placement) != len(args):
            raise ValueError(
                f"device_placement has {len(device_placement)} entries but prepare() got {len(args)} objects; "
                "pass one bool per object"
            )
        prepared = [
            obj if _is_scheduler(obj) else self._prepare_one(obj, place)
            for obj, place in zip(args, device_placement)
        ]
        prepared = [self.prepare_scheduler(obj) if _is_scheduler(obj) else obj for obj in prepared]
        return prepared[0] if len(prepared) == 1 else tuple(prepared)

    def _prepare_one(self, obj: Any, device_placement: bool | None) -> Any:
        if isinstance(obj, torch.utils.data.DataLoader):
            return self.prepare_data_loader(obj, device_placement=device_placement)
        if isinstance(obj, torch.nn.Module):
            return self.prepare_model(obj, device_placement=device_placement)
        if isinstance(obj, torch.optim.Optimizer):
            return self.prepare_optimizer(obj, device_placement=device_placement)
        return obj

    def prepare_model(
        self, model: torch.nn.Module, device_placement: bool | None = None, evaluation_mode: bool = False
    ) -> torch.nn.Module:
        """Place ``model`` on the device, apply mixed precision and wrap it for the strategy (e.g. DDP).

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> model = Accelerator().prepare_model(torch.nn.Linear(2, 2))
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"prepare_model expects a torch.nn.Module, got {type(model).__name__}")
        for prepared in self._models:
            # As in Accelerate, preparing a model again never wraps it twice: the same prepared object comes back
            # (whether the prepared wrapper or the original module is passed).
            if prepared is model or self.unwrap_model(prepared, keep_fp32_wrapper=True) is model:
                return prepared
        place = self.device_placement if device_placement is None else device_placement
        prepared = self.strategy.prepare_model(model, device_placement=place, evaluation_mode=evaluation_mode)
        self._models.append(prepared)
        for opt in self._optimizers:  # prepared before this model: FSDP2 re-points them at the new shards
            self._strategy_prepare_optimizer(opt.optimizer)
        return prepared

    def _strategy_prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        # Sharding strategies replace parameters; optimizers built on the originals must follow (FSDP2).
        hook = getattr(self.strategy, "prepare_optimizer", None)
        if hook is not None:
            hook(optimizer)

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer, device_placement: bool | None = None) -> Any:
        """Wrap ``optimizer`` so it steps only on synchronisation steps (and through the fp16 scaler).

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> m = torch.nn.Linear(2, 2)
            >>> opt = Accelerator().prepare_optimizer(torch.optim.SGD(m.parameters(), lr=0.1))
        """
        if isinstance(optimizer, AcceleratedOptimizer):
            self._optimizers.append(optimizer)
            return optimizer
        place = self.device_placement if device_placement is None else device_placement
        self._strategy_prepare_optimizer(optimizer)
        wrapped = AcceleratedOptimizer(optimizer, device_placement=place, precision=self.precision)
        self._optimizers.append(wrapped)
        return wrapped

    def prepare_scheduler(self, scheduler: Any) -> AcceleratedScheduler:
        """Wrap an LR scheduler so it follows optimizer steps (see :class:`AcceleratedScheduler`).

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> opt = acc.prepare(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0))
            >>> sched = acc.prepare_scheduler(torch.optim.lr_scheduler.StepLR(opt, 1))
        """
        # Give the scheduler the prepared optimizer(s) wrapping the optimizer it was built on.
        base = getattr(scheduler, "optimizer", None)
        optimizers: list[Any] = [o for o in self._optimizers if o.optimizer is base] or [base]
        wrapped = AcceleratedScheduler(
            scheduler,
            optimizers,
            step_with_optimizer=self.step_scheduler_with_optimizer,
            split_batches=self.split_batches,
        )
        self._schedulers.append(wrapped)
        return wrapped

    def prepare_data_loader(
        self, data_loader: torch.utils.data.DataLoader, device_placement: bool | None = None,
        slice_fn_for_dispatch: Callable[..., Any] | None = None,
    ) -> torch.utils.data.DataLoader:
        """Shard ``data_loader`` across processes and move its batches to the device.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> dl = Accelerator().prepare_data_loader(torch.utils.data.DataLoader(list(range(8)), batch_size=2))
        """
        place = self.device_placement if device_placement is None else device_placement
        cfg = self.dataloader_config
        prepared = prepare_data_loader(
            data_loader,
            self.device,
            num_processes=self.num_processes,
            process_index=self.process_index,
            split_batches=cfg.split_batches,
            put_on_device=place,
            rng_types=list(self.rng_types),
            dispatch_batches=cfg.dispatch_batches,
            even_batches=cfg.even_batches,
            slice_fn_for_dispatch=slice_fn_for_dispatch,
            use_seedable_sampler=cfg.use_seedable_sampler,
            data_seed=cfg.data_seed,
            non_blocking=cfg.non_blocking,
            use_stateful_dataloader=cfg.use_stateful_dataloader,
        )
        self._dataloaders.append(prepared)
        return prepared

    def skip_first_batches(self, dataloader: Any, num_batches: int = 0) -> Any:
        """A loader that starts after ``num_batches`` batches (for resuming mid-epoch).

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> dl = acc.prepare(torch.utils.data.DataLoader(list(range(8)), batch_size=2))
            >>> len(acc.skip_first_batches(dl, 1))
            3
        """
        return skip_first_batches(dataloader, num_batches=num_batches)

    # -- training step ------------------------------------------------------------------------------------------

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Backpropagate ``loss``, through the fp16 scaler when there is one.

        ``backward(loss)``: Accelerate's semantics, ``loss`` (a per-micro-batch mean) divided by the accumulation
        steps. ``backward(loss_sum, num_items=n)``: ``loss_sum`` is the SUM of this rank's per-item losses (tokens or
        samples) and ``n`` their number; the update then follows the exact mean over every item of the window on
        every rank, whatever the batch lengths (see :mod:`overdrive.normalization`). Use one style per window.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> w = torch.ones(2, requires_grad=True)
            >>> acc.backward((w * 3).sum())
            >>> acc.backward((w * 3).sum(), num_items=2)
        """
        num_items = kwargs.pop("num_items", None)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"backward() needs a tensor loss, got {type(loss).__name__}")
        if loss.numel() != 1 and "gradient" not in kwargs:
            raise ValueError(
                f"backward() needs a scalar loss, got a tensor of shape {tuple(loss.shape)}; "
                "reduce it first, e.g. loss.mean() or loss.sum()"
            )
        started = time.perf_counter()
        try:
            if num_items is None and self.strategy.engine_backward is None and not self._item_window.active:
                # The common step, kept to the few lookups it needs: it runs once per micro-batch.
                steps = self.gradient_state.num_steps
                self.precision.backward(loss / steps if steps != 1 else loss, **kwargs)
            else:
                self._backward(loss, num_items, **kwargs)
        finally:
            # Read by overdrive.progress: under data parallelism ranks wait for a slow one inside backward.
            self._backward_seconds += time.perf_counter() - started
            _debug.note_progress()  # the hang watchdog counts backward passes as progress

    def _backward(self, loss: torch.Tensor, num_items: Any, **kwargs: Any) -> None:
        engine_backward = self.strategy.engine_backward
        if engine_backward is not None:  # DeepSpeed: the engine divides by the accumulation steps and steps itself
            if num_items is not None:
                raise ValueError(
                    "backward(loss, num_items=...) is not supported under DeepSpeed (its engine divides every loss by "
                    "the accumulation steps); pass the per-micro-batch mean loss: backward(loss)"
                )
            engine_backward(loss, sync_gradients=self.sync_gradients, **kwargs)
            return
        if num_items is None:  # backward() handles the plain step itself: here a num_items window is open
            raise ValueError(
                "backward(loss) was called inside an accumulation window that used backward(loss_sum, "
                "num_items=n); use one style for every micro-step of a window"
            )
        self._item_window.add(num_items, self.device)
        self.precision.backward(loss, **kwargs)  # the sum: normalised once, at the window's sync step
        if self.sync_gradients:
            self._item_window.finish(self._trained_parameters(), self.strategy.gradient_average_divisor)

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of the prepared optimizers (else models), each once."""
        seen: dict[int, torch.nn.Parameter] = {}
        groups = [g["params"] for opt in self._optimizers for g in opt.param_groups]
        for params in groups or [list(m.parameters()) for m in self._models]:
            for p in params:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def accumulate(self, *models: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        """Context for one micro-batch: decides whether this step synchronises and skips the all-reduce if not.

        The step synchronises every ``gradient_accumulation_steps`` micro-batches and on the last batch of a
        prepared data loader (``sync_with_dataloader``).

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator(gradient_accumulation_steps=2)
            >>> model = acc.prepare(torch.nn.Linear(2, 1))
            >>> with acc.accumulate(model):
            ...     acc.backward(model(torch.ones(1, 2)).sum())
            >>> acc.sync_gradients
            False
        """
        # A plain function returning a context manager rather than a generator-based one, reading the shared
        # gradient state once: it runs once per micro-batch, and the synchronising step (the common one) then costs
        # one reusable null context.
        gs = self.gradient_state
        if (not self._warned_unprepared_accumulation and gs.num_steps > 1 and not gs.in_dataloader
                and gs.sync_with_dataloader):
            self._warned_unprepared_accumulation = True
            warnings.warn(
                "accumulate() is used while no prepared data loader is being iterated, so the end of an epoch cannot "
                "force the last (incomplete) accumulation window to synchronise and step; iterate a loader returned "
                "by accelerator.prepare(...) (this warning is shown once)", UserWarning, stacklevel=2,
            )
        if gs.sync_with_dataloader and gs.end_of_dataloader:
            self.step = 0
            gs._set_sync_gradients(True)
        else:
            self.step += 1
            gs._set_sync_gradients(self.step % gs.num_steps == 0)
        if gs.sync_gradients or not models or (gs.sync_each_batch and self.use_distributed):
            return _NULL_CONTEXT
        if len(models) == 1:
            return self.strategy.no_sync(models[0])
        return _NoSync([self.strategy.no_sync(model) for model in models])

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module) -> Iterator[None]:
        """Context in which backward does not all-reduce gradients (they accumulate locally).

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> model = acc.prepare(torch.nn.Linear(2, 1))
            >>> with acc.no_sync(model):
            ...     acc.backward(model(torch.ones(1, 2)).sum())
        """
        with self.strategy.no_sync(model):
            yield

    @contextlib.contextmanager
    def join_uneven_inputs(self, joinables: list[Any], even_batches: bool | None = None) -> Iterator[None]:
        """Train on inputs of different lengths per rank: ranks that finish early shadow the others' all-reduces.

        ``even_batches`` overrides the prepared loaders' setting inside the block (``False`` lets each rank stop
        at the end of its own data). Joining is enabled only when batches are not evened out.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> model = acc.prepare(torch.nn.Linear(1, 1))
            >>> with acc.join_uneven_inputs([model], even_batches=False):
            ...     pass
        """
        saved: list[tuple[Any, bool]] = []
        if even_batches is not None:
            for dl in self._dataloaders:
                sampler = getattr(dl, "batch_sampler", None)
                if sampler is not None and hasattr(sampler, "even_batches"):
                    saved.append((sampler, sampler.even_batches))
                    sampler.even_batches = even_batches
        effective = self.even_batches if even_batches is None else even_batches
        try:
            with self.strategy.join(list(joinables), enable=not effective):
                yield
        finally:
            for sampler, value in saved:
                sampler.even_batches = value

    @contextlib.contextmanager
    def profile(self, profile_handler: ProfileKwargs | None = None) -> Iterator[Any]:
        """Run the block under ``torch.profiler.profile`` (settings: ``profile_handler``, else the ``ProfileKwargs``
        passed in ``kwargs_handlers``, else torch's defaults) and yield the profiler. With ``output_trace_dir`` every
        process writes ``profile_{process_index}.json`` there at the end, then the processes wait for each other.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> with Accelerator().profile() as prof:
            ...     _ = torch.ones(4) * 2
            >>> len(prof.key_averages()) > 0
            True
        """
        handler = profile_handler or self.profile_handler or ProfileKwargs()
        with handler.build() as profiler:
            yield profiler
        if handler.output_trace_dir is not None:
            os.makedirs(handler.output_trace_dir, exist_ok=True)
            profiler.export_chrome_trace(os.path.join(handler.output_trace_dir, f"profile_{self.process_index}.json"))
            self.wait_for_everyone()

    @staticmethod
    @contextlib.contextmanager
    def trigger_sync_in_backward(model: torch.nn.Module) -> Iterator[None]:
        """Make the next backward of ``model`` all-reduce gradients although its forward ran under :meth:`no_sync`.

        For loops that run several forwards without synchronisation and then want one backward to reduce everything
        accumulated so far. Without data parallelism (or for other engines) this does nothing.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> model = acc.prepare(torch.nn.Linear(2, 1))
            >>> with acc.no_sync(model):
            ...     loss = model(torch.ones(1, 2)).sum()
            >>> with acc.trigger_sync_in_backward(model):
            ...     acc.backward(loss)
        """
        from .strategies.ddp import force_sync

        with force_sync(model):
            yield

    @contextlib.contextmanager
    def autocast(self, autocast_handler: AutocastKwargs | None = None) -> Iterator[None]:
        """Run the block under the mixed-precision autocast (a no-op for fp32).

        Example:
            >>> from overdrive import Accelerator
            >>> with Accelerator().autocast():
            ...     pass
        """
        with self.precision.autocast(autocast_handler):
            yield

    def unscale_gradients(self, optimizer: Any = None) -> None:
        """Undo fp16 loss scaling on the gradients (done for you by the clipping helpers)."""
        targets = self._optimizers if optimizer is None else optimizer if isinstance(optimizer, list) else [optimizer]
        for opt in targets:
            self.precision.unscale_(opt.optimizer if isinstance(opt, AcceleratedOptimizer) else opt)

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2) -> torch.Tensor:
        """Clip gradients to ``max_norm`` (after fp16 unscaling); return the total norm before clipping.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> w = torch.nn.Parameter(torch.ones(2)); w.grad = torch.tensor([3.0, 4.0])
            >>> acc.clip_grad_norm_([w], 1.0)
            tensor(5.)
        """
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm >= 0:
            # torch accepts a negative max_norm and flips every gradient's sign
            raise ValueError(f"clip_grad_norm_(max_norm={max_norm!r}): pass a number >= 0 (the largest allowed norm)")
        self.unscale_gradients()
        return self.strategy.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)

    def clip_grad_value_(self, parameters: Any, clip_value: float) -> None:
        """Clip each gradient element to ``[-clip_value, clip_value]`` (after fp16 unscaling).

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> w = torch.nn.Parameter(torch.ones(2)); w.grad = torch.tensor([3.0, -4.0])
            >>> Accelerator().clip_grad_value_([w], 1.0); w.grad
            tensor([ 1., -1.])
        """
        if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)) or not clip_value >= 0:
            raise ValueError(f"clip_grad_value_(clip_value={clip_value!r}): pass a number >= 0")
        self.unscale_gradients()
        self.strategy.clip_grad_value_(parameters, clip_value)

    # -- models and their weights ---------------------------------------------------------------------------

    def unwrap_model(
        self, model: torch.nn.Module, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = True
    ) -> torch.nn.Module:
        """The user's module inside the strategy wrapper (DDP) and, optionally, the compile/precision wrappers.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> type(acc.unwrap_model(acc.prepare(torch.nn.Linear(2, 2)))).__name__
            'Linear'
        """
        return extract_model_from_parallel(model, keep_fp32_wrapper, keep_torch_compile)

    def get_state_dict(self, model: torch.nn.Module, unwrap: bool = True) -> dict[str, torch.Tensor]:
        """The model's full state dict (of the unwrapped module by default).

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> sorted(Accelerator().get_state_dict(torch.nn.Linear(1, 1)))
            ['bias', 'weight']
        """
        if unwrap:
            return self.strategy.model_state_dict(model)
        return model.state_dict()

    def save_model(
        self,
        model: torch.nn.Module,
        save_directory: str | os.PathLike[str],
        max_shard_size: int | str = "10GB",
        safe_serialization: bool = True,
    ) -> None:
        """Write the model's weights to ``save_directory`` on the main process (``model.safetensors``, sharded with
        an index when larger than ``max_shard_size``).

        Example:
            >>> import tempfile, torch
            >>> from overdrive import Accelerator
            >>> Accelerator().save_model(torch.nn.Linear(2, 2), tempfile.mkdtemp())
        """
        state_dict = self.get_state_dict(model)
        if self.is_main_process:
            checkpointing.save_model_weights(state_dict, save_directory, max_shard_size, safe_serialization)
        self.wait_for_everyone()

    def save(self, obj: Any, f: str | os.PathLike[str], safe_serialization: bool = False) -> None:
        """Save ``obj`` once (on the main process) with ``torch.save`` or, for tensors dicts, safetensors.

        Example:
            >>> import tempfile, os, torch
            >>> from overdrive import Accelerator
            >>> Accelerator().save({"w": torch.ones(1)}, os.path.join(tempfile.mkdtemp(), "w.pt"))
        """
        if self.is_main_process:
            checkpointing.save_object(obj, f, safe_serialization)

    # -- checkpoints (see overdrive.checkpoint_state for the folder layout and crash safety) -------------------

    @property
    def save_iteration(self) -> int:
        """The number the next automatically named checkpoint gets (``checkpoint_{save_iteration}``)."""
        return self.project_configuration.iteration

    def save_state(
        self, output_dir: str | os.PathLike[str] | None = None, safe_serialization: bool = True,
        async_save: bool = False, **save_model_func_kwargs: Any,
    ) -> Any:
        """Save models, optimizers, schedulers, loaders, scaler, RNG states and registered objects to a folder.

        ``async_save=True`` (overdrive only; Accelerate has no such argument) returns as soon as a copy of the state
        is in CPU memory and writes the files in a background thread; :meth:`wait_for_checkpoint` (or the next
        save_state, load_state, maybe_resume, end_training, or interpreter exit) commits the folder. The files and
        layout are the same as a synchronous save's. Every rank calls it, as for a synchronous save.

        Example:
            >>> import tempfile, torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator(); _ = acc.prepare(torch.nn.Linear(2, 2))
            >>> folder = acc.save_state(tempfile.mkdtemp())
            >>> folder = acc.save_state(tempfile.mkdtemp(), async_save=True)  # returns before the files are written
            >>> acc.wait_for_checkpoint() == folder
            True
        """
        return checkpoint_state.save_state(self, output_dir, safe_serialization, async_save, **save_model_func_kwargs)

    def wait_for_checkpoint(self) -> Any:
        """Wait for the pending ``save_state(async_save=True)`` and commit it; returns its folder (``None`` when
        nothing is pending). Every rank calls it; a failed background write raises here, on every rank, and the
        earlier checkpoints stay untouched.

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().wait_for_checkpoint() is None
            True
        """
        return checkpoint_state.wait_for_checkpoint(self)

    def load_state(
        self, input_dir: str | os.PathLike[str] | None = None, load_kwargs: dict[str, Any] | None = None,
        **load_model_func_kwargs: Any,
    ) -> None:
        """Restore a folder written by :meth:`save_state` (or by Accelerate) into the prepared objects.

        Example:
            >>> import tempfile, torch
            >>> from overdrive import Accelerator
            >>> acc = Accelerator(); _ = acc.prepare(torch.nn.Linear(2, 2))
            >>> acc.load_state(acc.save_state(tempfile.mkdtemp()))
        """
        checkpoint_state.wait_for_checkpoint(self)  # a pending async save commits first (it may be the one loaded)
        checkpoint_state.load_state(self, input_dir, load_kwargs, **load_model_func_kwargs)

    def maybe_resume(self, dataloader: Any = None) -> checkpoint_state.ResumePoint:
        """Load the newest complete automatically named checkpoint, if any (e.g. after a restart); returns a
        ``ResumePoint(checkpoint, epoch, batches)`` for the loop (see :func:`checkpoint_state.maybe_resume`).

        Example:
            >>> import tempfile, torch
            >>> from overdrive import Accelerator, ProjectConfiguration
            >>> config = ProjectConfiguration(tempfile.mkdtemp(), automatic_checkpoint_naming=True)
            >>> Accelerator(project_config=config).maybe_resume().checkpoint is None
            True
        """
        checkpoint_state.wait_for_checkpoint(self)
        return checkpoint_state.maybe_resume(self, dataloader)

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Save and restore ``objects`` (each with ``state_dict``/``load_state_dict``) in save_state/load_state.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> Accelerator().register_for_checkpointing(torch.nn.Linear(1, 1))
        """
        self._custom_objects.extend(checkpoint_state.check_checkpointable(objects))

    def register_save_state_pre_hook(self, hook: Callable[..., None]) -> Any:
        """Call ``hook(models, weights, output_dir)`` before save_state writes; returns a handle with ``remove()``.

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().register_save_state_pre_hook(lambda models, weights, folder: None).remove()
        """
        return checkpoint_state.register_hook(self._save_model_state_pre_hook, hook)

    def register_load_state_pre_hook(self, hook: Callable[..., None]) -> Any:
        """Call ``hook(models, input_dir)`` before load_state reads; returns a handle with ``remove()``.

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().register_load_state_pre_hook(lambda models, folder: None).remove()
        """
        return checkpoint_state.register_hook(self._load_model_state_pre_hook, hook)

    def free_memory(self, *objects: Any) -> list[Any]:
        """Drop references to prepared objects and collect garbage; returns ``objects`` replaced by ``None``.

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().free_memory()
            []
        """
        self._models.clear()
        self._optimizers.clear()
        self._schedulers.clear()
        self._dataloaders.clear()
        self.step = 0
        released = [None for _ in objects]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return released

    clear = free_memory

    # -- collectives ----------------------------------------------------------------------------------------

    def gather(self, tensor: Any) -> Any:
        """Concatenate ``tensor`` (or a nested structure of tensors) from every process along dim 0.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> Accelerator().gather(torch.tensor([1, 2]))
            tensor([1, 2])
        """
        return ops.gather(tensor)

    def gather_for_metrics(self, input_data: Any, use_gather_object: bool = False) -> Any:
        """Gather like :meth:`gather`, then drop the samples duplicated to even out the last batch.

        Non-tensor data (or ``use_gather_object=True``) is gathered as Python objects.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> Accelerator().gather_for_metrics(torch.tensor([1.0, 2.0]))
            tensor([1., 2.])
        """
        try:
            ops.recursively_apply(lambda x: x, input_data, error_on_other_type=True)
            all_tensors = True
        except TypeError:
            all_tensors = False
        as_objects = use_gather_object or not all_tensors
        data = ops.gather_object(input_data) if as_objects else ops.gather(input_data)
        remainder = self.gradient_state.remainder
        if not self.gradient_state.end_of_dataloader or remainder <= 0:
            return data
        if as_objects:
            return data[:remainder]
        return ops.recursively_apply(lambda t: t[:remainder], data)

    def reduce(self, tensor: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
        """Reduce ``tensor`` across processes ('sum', 'mean', or an error for anything else).

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> Accelerator().reduce(torch.tensor(3.0))
            tensor(3.)
        """
        return ops.reduce(tensor, reduction, scale)

    def pad_across_processes(self, tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
        """Pad ``tensor`` along ``dim`` to the largest size across processes.

        Example:
            >>> import torch
            >>> from overdrive import Accelerator
            >>> Accelerator().pad_across_processes(torch.ones(2)).shape
            torch.Size([2])
        """
        return ops.pad_across_processes(tensor, dim=dim, pad_index=pad_index, pad_first=pad_first)

    def set_trigger(self) -> None:
        """Raise a flag on this process that :meth:`check_trigger` sees on every process (e.g. early stopping).

        Example:
            >>> from overdrive import Accelerator
            >>> acc = Accelerator(); acc.set_trigger(); acc.check_trigger()
            True
        """
        self.flag_tensor = torch.tensor(1, device=self.device)

    def check_trigger(self) -> bool:
        """True on every process when any process called :meth:`set_trigger` since the last check (resets it).

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().check_trigger()
            False
        """
        if self.flag_tensor is None:
            self.flag_tensor = torch.tensor(0, device=self.device)
        flag = ops.reduce(self.flag_tensor, "sum")
        if int(flag.item()) >= 1:
            self.flag_tensor = torch.tensor(0, device=self.device)
            return True
        return False

    # -- process control (delegated to the shared state) -----------------------------------------------------

    def wait_for_everyone(self) -> None:
        """Barrier across all processes.

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().wait_for_everyone()
        """
        self.state.wait_for_everyone()

    def main_process_first(self) -> contextlib.AbstractContextManager[None]:
        """Context: the main process runs the block first, then the others.

        Example:
            >>> from overdrive import Accelerator
            >>> with Accelerator().main_process_first():
            ...     pass
        """
        return self.state.main_process_first()

    def local_main_process_first(self) -> contextlib.AbstractContextManager[None]:
        """Context: each node's local main process runs the block first.

        Example:
            >>> from overdrive import Accelerator
            >>> with Accelerator().local_main_process_first():
            ...     pass
        """
        return self.state.local_main_process_first()

    def on_main_process(self, function: F | None = None) -> F:
        """Decorator: run only on the main process.

        Example:
            >>> from overdrive import Accelerator
            >>> acc = Accelerator()
            >>> @acc.on_main_process
            ... def log(): return 1
        """
        return self.state.on_main_process(function)

    def on_local_main_process(self, function: F | None = None) -> F:
        """Decorator: run only on each node's local main process.

        Example:
            >>> from overdrive import Accelerator
            >>> @Accelerator().on_local_main_process
            ... def log(): return 1
        """
        return self.state.on_local_main_process(function)

    def on_process(self, function: F | None = None, process_index: int | None = None) -> F:
        """Decorator: run only on the process with global rank ``process_index``.

        Example:
            >>> from overdrive import Accelerator
            >>> @Accelerator().on_process(process_index=0)
            ... def log(): return 1
        """
        return self.state.on_process(function, process_index=process_index)

    def on_local_process(self, function: F | None = None, local_process_index: int | None = None) -> F:
        """Decorator: run only on the process with node-local rank ``local_process_index`` (on every node).

        Example:
            >>> from overdrive import Accelerator
            >>> @Accelerator().on_local_process(local_process_index=0)
            ... def log(): return 1
        """
        return self.state.on_local_process(function, local_process_index=local_process_index)

    def on_last_process(self, function: F) -> F:
        """Decorator: run only on the last process.

        Example:
            >>> from overdrive import Accelerator
            >>> @Accelerator().on_last_process
            ... def log(): return 1
        """
        return self.state.on_last_process(function)

    def split_between_processes(
        self, inputs: Any, apply_padding: bool = False
    ) -> contextlib.AbstractContextManager[Any]:
        """Context yielding this process's share of ``inputs``.

        Example:
            >>> from overdrive import Accelerator
            >>> with Accelerator().split_between_processes([1, 2, 3]) as mine:
            ...     mine
            [1, 2, 3]
        """
        return self.state.split_between_processes(inputs, apply_padding=apply_padding)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` once per node (on the local main process).

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().print("hello")
            hello
        """
        self.state.print(*args, **kwargs)

    # -- experiment tracking (overdrive.tracking): trackers write on the main process only ----------------------

    def init_trackers(self, project_name: str, config: dict[str, Any] | None = None,
                      init_kwargs: dict[str, Any] | None = None) -> None:
        """Start the trackers chosen with ``log_with`` and store ``config``; nothing is written before this call.

        ``init_kwargs`` maps a tracker name to keyword arguments for it, e.g. ``{"wandb": {"tags": ["a"]}}``.

        Example:
            >>> import tempfile
            >>> acc = Accelerator(log_with="jsonl", project_dir=tempfile.mkdtemp())
            >>> acc.init_trackers("run", config={"lr": 1e-3}); [t.name for t in acc.trackers]
            ['jsonl']
            >>> acc.end_training()
        """
        from . import tracking

        if not isinstance(project_name, str) or not project_name:
            raise ValueError(f"init_trackers(project_name={project_name!r}): pass a non-empty string")
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise TypeError(f"init_trackers(init_kwargs=...) must map tracker names to dicts, got {init_kwargs!r}")
        self.trackers += tracking.start_trackers(
            self.log_with, project_name, self.logging_dir, config, init_kwargs or {}
        )

    def get_tracker(self, name: str, unwrap: bool = False) -> Any:
        """The started tracker called ``name`` (its package object with ``unwrap=True``).

        Before ``init_trackers`` (or on a rank where nothing is tracked) it returns a blank tracker whose methods do
        nothing, as in Accelerate.

        Example:
            >>> Accelerator().get_tracker("tensorboard").tracker is None
            True
        """
        from . import tracking

        for tracker in self.trackers:
            if tracker.name == name:
                return tracker.tracker if unwrap else tracker
        if self.trackers:
            raise ValueError(f"get_tracker({name!r}): no such tracker; started: {[t.name for t in self.trackers]}")
        return tracking.GeneralTracker(_blank=True)

    def log(self, values: dict[str, Any], step: int | None = None, log_kwargs: dict[str, Any] | None = None) -> None:
        """Log ``values`` (numbers, strings, dicts of numbers) at ``step`` to every tracker, on the main process.

        ``log_kwargs`` maps a tracker name to extra keyword arguments for its ``log``.

        Example:
            >>> Accelerator().log({"loss": 0.1}, step=1)  # no tracker configured: nothing happens
        """
        if not isinstance(values, dict):
            raise TypeError(f"log(values=...) needs a dict of name -> value, got {type(values).__name__}")
        if not self.is_main_process:
            return
        for tracker in self.trackers:
            tracker.log(values, step=step, **(log_kwargs or {}).get(tracker.name, {}))

    def end_training(self) -> None:
        """Commit a pending async checkpoint, finish trackers and release the process group (call once, at the end).

        Example:
            >>> from overdrive import Accelerator
            >>> Accelerator().end_training()
        """
        checkpoint_state.wait_for_checkpoint(self, release_buffers=True)  # collective: before the group goes
        for tracker in self.trackers:
            tracker.finish()
        self.state.destroy_process_group()

    def __repr__(self) -> str:
        return f"Accelerator(distributed_type={self.distributed_type}, num_processes={self.num_processes}, " \
               f"mixed_precision={self.mixed_precision!r}, device={self.device})"


# -- input validation helpers (run before any process group exists) ------------------------------------------


def _check_str(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        value = getattr(value, "value", value)  # PrecisionType enum members
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string such as 'bf16', got {type(value).__name__}")
    return value.lower() if isinstance(value, str) else value


def _dynamo_plugin(backend: Any, plugin: Any) -> TorchDynamoPlugin:
    """The compile settings: ``dynamo_backend`` (argument > env > ``no``) or the user's plugin, never both."""
    if plugin is not None:
        if backend is not None:
            raise ValueError(
                f"dynamo_backend={backend!r} and dynamo_plugin were both given; pass only the plugin (set its backend)"
            )
        if not isinstance(plugin, TorchDynamoPlugin):
            raise TypeError(f"dynamo_plugin must be a TorchDynamoPlugin, got {type(plugin).__name__}")
        return plugin
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"dynamo_backend={backend!r}: pass a backend name such as 'inductor' or 'aot_eager' (or 'no')")
    explicit = None if backend is None else str(backend).lower()  # DynamoBackend members are str too
    return TorchDynamoPlugin(backend=str(resolve_value("dynamo_backend", explicit)))


def _opt_str(value: str | os.PathLike[str] | None, name: str = "project_dir") -> str | None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"Accelerator({name}={value!r}): pass a folder path (str or os.PathLike) or None")
    return None if value is None else os.fspath(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (1 disables accumulation)")
    return value


def _accumulation_plugin(steps: int, plugin: GradientAccumulationPlugin | None) -> GradientAccumulationPlugin:
    _positive_int("gradient_accumulation_steps", steps)
    if plugin is not None:
        if steps != 1:
            raise ValueError(
                f"gradient_accumulation_steps={steps} and gradient_accumulation_plugin were both given; "
                "pass only the plugin (set its num_steps)"
            )
        if plugin.num_steps is not None:
            _positive_int("GradientAccumulationPlugin.num_steps", plugin.num_steps)
        return plugin
    steps = int(resolve_value("gradient_accumulation_steps", steps if steps != 1 else None))  # warns on a conflict
    return GradientAccumulationPlugin(num_steps=steps)


def _dataloader_config(config: DataLoaderConfiguration | None, split_batches: Any) -> DataLoaderConfiguration:
    if config is not None and not isinstance(config, DataLoaderConfiguration):
        raise TypeError(f"dataloader_config must be a DataLoaderConfiguration, got {type(config).__name__}")
    config = config or DataLoaderConfiguration()
    if split_batches is not _split_batches:
        config.split_batches = bool(split_batches)  # the older keyword still works, as in Accelerate
    return config


def _collect_handlers(handlers: Iterable[Any] | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for handler in handlers or ():
        slot = _HANDLER_SLOTS.get(type(handler))
        if slot is None:
            allowed = ", ".join(c.__name__ for c in _HANDLER_SLOTS)
            raise TypeError(f"kwargs_handlers got {handler!r}; supported handlers are {allowed}")
        if slot in found:
            raise ValueError(f"kwargs_handlers got more than one {type(handler).__name__}; pass each kind once")
        found[slot] = handler
    return found


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, torch.optim.lr_scheduler.LRScheduler) or (
        hasattr(obj, "step") and hasattr(obj, "optimizer") and not isinstance(obj, torch.optim.Optimizer)
        and not isinstance(obj, torch.nn.Module)
    )

