"""DeepSpeed ZeRO: one ``deepspeed.initialize`` engine owns the model, the optimizer, precision, accumulation and
clipping.

Reading order: :meth:`DeepSpeedStrategy.prepare_together` (called by ``Accelerator.prepare``: loaders first, then
the config's ``"auto"`` entries are filled in :mod:`overdrive.utils.deepspeed`, then the engine is built from the
model, optimizer and scheduler together), :meth:`DeepSpeedStrategy.engine_backward` (``Accelerator.backward``: the
engine's backward, then its step at the end of an accumulation window). The optimizer and scheduler handed back
have no-op ``step``/``zero_grad``, so an unchanged Accelerate loop trains the same way. DeepSpeed is imported here
only when a run uses it.

Example:
    >>> DeepSpeedStrategy.__name__
    'DeepSpeedStrategy'
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import gc
import logging
import os
import sys
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..optimizer import DeepSpeedOptimizerWrapper
from ..precision import Precision
from ..scheduler import AcceleratedScheduler, DeepSpeedSchedulerWrapper
from ..state import PartialState
from ..utils.dataclasses import DeepSpeedPlugin, DistributedDataParallelKwargs, DistributedType
from ..utils.deepspeed import (
    DummyOptim,
    DummyScheduler,
    auto_values,
    fill_auto,
    finalize_config,
    get_value,
    set_mixed_precision,
)
from .base import Strategy, unwrap_compiled

if TYPE_CHECKING:
    from ..accelerator import Accelerator

__all__ = ["DeepSpeedStrategy", "import_deepspeed", "is_deepspeed_engine", "zero3_init_context"]

logger = logging.getLogger(__name__)

MODEL_NAME = "pytorch_model"  # Accelerate's checkpoint tag: {output_dir}/pytorch_model/ holds the engine's files

INSTALL_HINT = 'pip install "overdrive[deepspeed]"  (on a machine without CUDA: DS_BUILD_OPS=0 pip install deepspeed)'


def import_deepspeed() -> Any:
    """``import deepspeed``, or an ImportError saying how to install it.

    Example:
        >>> callable(import_deepspeed)  # imports DeepSpeed only when called
        True
    """
    try:
        import deepspeed
    except ImportError as err:
        raise ImportError(f"DeepSpeed is not installed (DeepSpeedPlugin / --use_deepspeed needs it): {INSTALL_HINT}") \
            from err
    return deepspeed


def is_deepspeed_engine(model: Any) -> bool:
    """Whether ``model`` is a ``DeepSpeedEngine`` (without importing DeepSpeed when it was never imported).

    Example:
        >>> is_deepspeed_engine(torch.nn.Linear(1, 1))
        False
    """
    engine_module = sys.modules.get("deepspeed.runtime.engine")
    return engine_module is not None and isinstance(model, engine_module.DeepSpeedEngine)


def init_deepspeed_comm() -> None:
    """Let DeepSpeed's communication layer use the process group the Accelerator formed (gloo on CPU).

    A one-process run has no group; DeepSpeed needs one, so a single-rank group on a free local port is formed.
    """
    deepspeed = import_deepspeed()
    if deepspeed.comm.is_initialized():
        return
    dist = torch.distributed
    if dist.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False)
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it to pick its device
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, verbose=False, init_method=f"tcp://127.0.0.1:{port}",
        rank=0, world_size=1,
    )


def zero3_init_context(config: dict[str, Any]) -> Any:
    """``deepspeed.zero.Init`` for ``config``: modules created inside are partitioned across ranks at creation.

    The config's batch-size ``"auto"`` entries (not known before ``prepare``) are set to placeholders that
    ``zero.Init`` ignores; the dtype follows the Accelerator's ``mixed_precision`` when an Accelerator exists.
    """
    deepspeed = import_deepspeed()
    init_deepspeed_comm()
    cfg = copy.deepcopy(config)
    for key in ("gradient_accumulation_steps", "train_micro_batch_size_per_gpu"):
        if cfg.get(key, "auto") == "auto":
            cfg[key] = 1
    if cfg.get("train_batch_size") == "auto":
        del cfg["train_batch_size"]
    from ..state import AcceleratorState

    state = AcceleratorState._shared_state
    if "partial" in state:
        set_mixed_precision(cfg, str(state["mixed_precision"]))
    fill_auto(cfg, auto_values(cfg, None, 1, 1), strict=False)
    _drop_auto(cfg)
    return deepspeed.zero.Init(config_dict_or_path=cfg)


def _drop_auto(config: dict[str, Any]) -> None:
    for key in list(config):
        if isinstance(config[key], dict):
            _drop_auto(config[key])
        elif config[key] == "auto":
            del config[key]


class DeepSpeedStrategy(Strategy):
    """Trains one model through a DeepSpeed engine built from a :class:`~overdrive.DeepSpeedPlugin`.

    The Accelerator's precision policy is replaced by the null one: the engine casts to fp16/bf16 and scales
    losses itself (as in Accelerate, ``accelerator.autocast()`` does nothing under DeepSpeed).
    """

    # checkpoint_state: this strategy writes and reads the model and optimizer files itself (engine checkpoints).
    owns_checkpoint_files = True
    # ZeRO-3's partitioning hooks run inside every submodule's forward; compiling through them is untested here.
    supports_compile = False

    def __init__(
        self,
        state: PartialState,
        precision: Precision,
        ddp_kwargs: DistributedDataParallelKwargs | None = None,
        deepspeed_plugin: DeepSpeedPlugin | None = None,
    ) -> None:
        super().__init__(state, Precision(state.device), ddp_kwargs)
        if deepspeed_plugin is not None and not isinstance(deepspeed_plugin, DeepSpeedPlugin):
            raise TypeError(
                f"deepspeed_plugin must be a DeepSpeedPlugin, got {type(deepspeed_plugin).__name__}; build one with "
                "overdrive.DeepSpeedPlugin(...) (several named plugins are not supported)"
            )
        self.plugin = deepspeed_plugin or DeepSpeedPlugin()
        self.engine: Any = None
        self._loader_batch_sizes: list[int | None] = []
        self._warned_max_norm = False

    @property
    def distributed_type(self) -> DistributedType:  # type: ignore[override]
        return DistributedType.DEEPSPEED

    @property
    def config(self) -> dict[str, Any]:
        """The DeepSpeed config (final after ``prepare``; ``accelerator.deepspeed_config`` in Accelerate)."""
        return self.plugin.deepspeed_config

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage the engine runs (DeepSpeed's default 0 when the config leaves it out)."""
        return int(get_value(self.config, "zero_optimization.stage", 0))

    @property
    def gradient_average_divisor(self) -> int:
        return self.state.num_processes

    # -- prepare ---------------------------------------------------------------------------------------------------

    def prepare_together(self, accelerator: Accelerator, args: tuple[Any, ...], device_placement: Any) -> Any:
        """Prepare ``args`` as ``Accelerator.prepare`` does, building the engine from the model, optimizer and
        scheduler together (DeepSpeed needs all three at once)."""
        if device_placement is not None and any(d is not None for d in device_placement):
            raise ValueError(
                "prepare(device_placement=...) cannot be used with DeepSpeed: the engine places the model itself; "
                "remove the argument"
            )
        result = list(args)
        batch_sizes: list[int | None] = []
        for i, obj in enumerate(args):
            if isinstance(obj, torch.utils.data.DataLoader):
                batch_sizes.append(obj.batch_size)
                result[i] = accelerator.prepare_data_loader(obj)
        self._loader_batch_sizes.extend(batch_sizes)
        models = [obj for obj in args if isinstance(obj, torch.nn.Module)]
        optimizers = [obj for obj in args if isinstance(obj, (torch.optim.Optimizer, DummyOptim))]
        schedulers = [obj for obj in args if _is_ds_scheduler(obj)]
        if len(models) > 1 or (models and self.engine is not None):
            raise ValueError(
                "DeepSpeed trains one model per Accelerator: prepare() got "
                f"{len(models) + (self.engine is not None)} models; create one Accelerator per model"
            )
        if len(optimizers) > 1 or len(schedulers) > 1:
            raise ValueError("DeepSpeed takes one optimizer and one scheduler, prepared with their model in one call")
        if not models:
            if optimizers or schedulers:
                raise ValueError(
                    "under DeepSpeed, pass the model, its optimizer and its scheduler to the same "
                    "accelerator.prepare() call (the engine is built from all of them at once)"
                )
            return result[0] if len(result) == 1 else tuple(result)
        optimizer = optimizers[0] if optimizers else None
        scheduler = schedulers[0] if schedulers else None
        config = self._final_config(accelerator, models[0], optimizer, scheduler, batch_sizes or self._loader_batch_sizes)
        engine, ds_optimizer, ds_scheduler = self._initialize(models[0], optimizer, scheduler, config)
        self.engine = engine
        wrapped_optimizer = DeepSpeedOptimizerWrapper(ds_optimizer) if ds_optimizer is not None else None
        wrapped_scheduler: Any = None
        if scheduler is not None:
            if ds_scheduler is None:  # a torch scheduler on the user's optimizer: it follows the engine's steps
                wrapped_scheduler = AcceleratedScheduler(
                    scheduler, [wrapped_optimizer], step_with_optimizer=accelerator.step_scheduler_with_optimizer,
                    split_batches=accelerator.split_batches,
                )
            else:
                wrapped_scheduler = DeepSpeedSchedulerWrapper(ds_scheduler, [wrapped_optimizer])
        for i, obj in enumerate(args):
            if obj is models[0]:
                result[i] = engine
            elif obj is optimizer:
                result[i] = wrapped_optimizer
            elif obj is scheduler:
                result[i] = wrapped_scheduler
        accelerator._models.append(engine)
        if wrapped_optimizer is not None:
            accelerator._optimizers.append(wrapped_optimizer)
        if wrapped_scheduler is not None:
            accelerator._schedulers.append(wrapped_scheduler)
        return result[0] if len(result) == 1 else tuple(result)

    def _final_config(
        self, accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, scheduler: Any,
        batch_sizes: list[int | None],
    ) -> dict[str, Any]:
        """Fill the plugin's config in place (Accelerate users read it back) and return it."""
        config, steps = finalize_config(
            self.plugin, accelerator.mixed_precision, accelerator.gradient_accumulation_steps,
            accelerator.num_processes, batch_sizes, model=model, optimizer=optimizer, scheduler=scheduler,
            split_batches=accelerator.split_batches,
        )
        if steps != accelerator.gradient_accumulation_steps:
            logger.warning(
                f"gradient_accumulation_steps: the Accelerator has {accelerator.gradient_accumulation_steps}, the "
                f"DeepSpeed config {steps}; using DeepSpeed's value"
            )
            accelerator.gradient_accumulation_steps = steps
        return config

    def _initialize(self, model: torch.nn.Module, optimizer: Any, scheduler: Any, config: dict[str, Any]) -> Any:
        deepspeed = import_deepspeed()
        init_deepspeed_comm()
        self.plugin.set_moe_leaf_modules(model)
        kwargs: dict[str, Any] = {"model": model, "config_params": config}
        if isinstance(optimizer, DummyOptim):
            kwargs["model_parameters"] = optimizer.params
            if isinstance(scheduler, DummyScheduler) and scheduler.lr_scheduler_callable is not None:
                kwargs["lr_scheduler"] = scheduler.lr_scheduler_callable
        elif optimizer is not None:
            offload = get_value(config, "zero_optimization.offload_optimizer.device", "none")
            if offload not in (None, "none") and config.get("zero_force_ds_cpu_optimizer", True):
                optimizer = _cpu_optimizer(optimizer)  # DeepSpeed steps offloaded states with its own CPU kernels
            kwargs["optimizer"] = optimizer
            if scheduler is not None and type(scheduler).__name__ in deepspeed.runtime.lr_schedules.VALID_LR_SCHEDULES:
                kwargs["lr_scheduler"] = scheduler
        engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(**kwargs)
        _release_at_exit(engine)
        return engine, ds_optimizer, ds_scheduler

    def prepare_model(
        self, model: torch.nn.Module, device_placement: bool = True, evaluation_mode: bool = False
    ) -> torch.nn.Module:
        raise ValueError(
            "under DeepSpeed, prepare the model with accelerator.prepare(model, optimizer, dataloader, ...) (the engine "
            "is built from them together), not with prepare_model()"
        )

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # unused: prepare_together builds the engine

    # -- training step ---------------------------------------------------------------------------------------------

    def _engine(self) -> Any:
        if self.engine is None:
            raise RuntimeError(
                "no DeepSpeed engine yet: call accelerator.prepare(model, optimizer, dataloader) before backward()"
            )
        return self.engine

    def engine_backward(self, loss: torch.Tensor, sync_gradients: bool, **kwargs: Any) -> None:
        """Backward through the engine (which divides by the accumulation steps and scales fp16 losses); at the
        end of an accumulation window also reduce, clip and step (``engine.step``)."""
        engine = self._engine()
        engine.set_gradient_accumulation_boundary(is_boundary=sync_gradients)
        engine.backward(loss, **kwargs)
        if sync_gradients:
            engine.step()  # clips, steps the optimizer (and a DeepSpeed scheduler), zeroes gradients

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        # ZeRO-2/3 reduce-scatter gradients as they are produced: the engine refuses no_sync there (as in Accelerate).
        if is_deepspeed_engine(model) and self.zero_stage < 2:
            return model.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.module if is_deepspeed_engine(model) else model  # type: ignore[return-value]

    def clip_grad_norm_(
        self, parameters: Iterable[torch.nn.Parameter] | torch.Tensor, max_norm: float, norm_type: float = 2.0
    ) -> torch.Tensor:
        """The engine clips inside its step (at the config's ``gradient_clipping``); this returns the total norm
        it measured before clipping in the last step (NaN before the first one)."""
        engine = self._engine()
        clip = float(engine.gradient_clipping() or 0.0)
        if not self._warned_max_norm and float(max_norm) != clip:
            self._warned_max_norm = True
            logger.warning(
                f"clip_grad_norm_(max_norm={max_norm}): under DeepSpeed the engine clips at the config's "
                f"gradient_clipping={clip} inside its step; set DeepSpeedPlugin(gradient_clipping={max_norm}) to "
                "clip at that value"
            )
        norm = engine.get_global_grad_norm()
        return torch.as_tensor(float("nan") if norm is None else float(norm))

    def clip_grad_value_(self, parameters: Iterable[torch.nn.Parameter] | torch.Tensor, clip_value: float) -> None:
        raise ValueError(
            "clip_grad_value_ is not available under DeepSpeed (the engine clips by norm); use "
            "accelerator.clip_grad_norm_ or DeepSpeedPlugin(gradient_clipping=...)"
        )

    # -- weights and checkpoints -----------------------------------------------------------------------------------

    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict. ZeRO-3 gathers it: in 16 bits onto rank 0 (others get ``{}``) when
        ``zero3_save_16bit_model`` is set, else the fp32 master weights onto every rank. Collective under ZeRO-3."""
        engine: Any = unwrap_compiled(model)
        if not is_deepspeed_engine(engine):
            return self.unwrap(engine).state_dict()
        if self.zero_stage < 3:
            return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        if engine.zero_gather_16bit_weights_on_model_save():
            return engine._zero3_consolidated_16bit_state_dict() or {}
        return _zero3_fp32_state_dict(engine)

    def save_checkpoint_files(
        self, models: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer],
        folder: str | os.PathLike[str], safe_serialization: bool = True, **kwargs: Any,
    ) -> None:
        """Every rank writes its engine shards into ``{folder}/pytorch_model/`` (``pytorch_model_{i}`` for model
        ``i > 0``), Accelerate's layout; the optimizer states are inside. ``kwargs`` go to ``engine.save_checkpoint``."""
        for i, model in enumerate(models):
            engine: Any = unwrap_compiled(model)
            engine.save_checkpoint(os.fspath(folder), tag=_tag(i), **kwargs)

    def check_checkpoint_files(self, folder: str | os.PathLike[str], num_models: int, num_optimizers: int) -> None:
        """Every model's engine folder exists (DeepSpeed checks the files inside when it loads)."""
        from ..checkpoint_state import CheckpointError

        for i in range(num_models):
            path = Path(folder) / _tag(i)
            if not path.is_dir():
                raise CheckpointError(
                    f"{str(folder)!r} has no DeepSpeed checkpoint for model {i}: expected the folder {str(path)!r} "
                    "written by save_state under DeepSpeed"
                )

    def load_checkpoint_files(
        self, models: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer],
        folder: str | os.PathLike[str], strict: bool = True, **kwargs: Any,
    ) -> None:
        """Load what :meth:`save_checkpoint_files` wrote (model and optimizer states); ``kwargs`` go to
        ``engine.load_checkpoint`` (e.g. ``load_optimizer_states=False``)."""
        self.check_checkpoint_files(folder, len(models), len(optimizers))
        for i, model in enumerate(models):
            engine: Any = unwrap_compiled(model)
            load_path, _ = engine.load_checkpoint(os.fspath(folder), tag=_tag(i), load_module_strict=strict, **kwargs)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load the checkpoint in {str(Path(folder) / _tag(i))!r}")


_ENGINES: weakref.WeakSet[Any] = weakref.WeakSet()
_exit_hook_installed = False


def _release_at_exit(engine: Any) -> None:
    """Destroy live engines at interpreter exit, before overdrive's teardown destroys the process group.

    Why: ZeRO launches collectives from backward hooks and keeps their work handles; if the last reference to one
    is dropped by gloo's thread during interpreter finalisation the process aborts ("terminate called without an
    active exception") after training succeeded. atexit runs last-registered first, so this runs before the
    teardown that :class:`~overdrive.PartialState` registered earlier.
    """
    global _exit_hook_installed
    if not _exit_hook_installed:
        atexit.register(_destroy_engines)
        _exit_hook_installed = True
    _ENGINES.add(engine)


def _destroy_engines() -> None:
    for engine in list(_ENGINES):
        with contextlib.suppress(Exception):
            engine.destroy()
    _ENGINES.clear()
    gc.collect()


def _tag(index: int) -> str:
    return MODEL_NAME if index == 0 else f"{MODEL_NAME}_{index}"


def _is_ds_scheduler(obj: Any) -> bool:
    if isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, DummyScheduler)):
        return True
    lr_schedules = sys.modules.get("deepspeed.runtime.lr_schedules")
    return lr_schedules is not None and type(obj).__name__ in lr_schedules.VALID_LR_SCHEDULES


def _cpu_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The DeepSpeed CPU optimizer matching a torch one (Adam/AdamW -> DeepSpeedCPUAdam, Adagrad -> CPUAdagrad),
    over the same parameter groups (so a scheduler built on the torch optimizer still sets their ``lr``)."""
    defaults = {k: v for k, v in optimizer.defaults.items() if k in ("lr", "weight_decay")}
    if isinstance(optimizer, torch.optim.Adagrad):
        from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad

        return DeepSpeedCPUAdagrad(optimizer.param_groups, **defaults)  # type: ignore[no-any-return]
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    adamw = isinstance(optimizer, torch.optim.AdamW)
    return DeepSpeedCPUAdam(optimizer.param_groups, adamw_mode=adamw, **defaults)  # type: ignore[no-any-return]


def _zero3_fp32_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a ZeRO-3 engine on every rank (the optimizer's master copies; collective)."""
    from deepspeed.utils import safe_get_full_fp32_param

    deepspeed = import_deepspeed()
    state: dict[str, torch.Tensor] = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        if full is None:  # no optimizer (inference engine): gather the module's own copy
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                full = param.detach().clone()
        state[name] = full.detach().cpu().clone()
    for name, buf in engine.module.named_buffers():
        state[name] = buf.detach().cpu().clone()
    # named_parameters/named_buffers skip non-persistent buffers' exclusion; keep the state_dict's key set.
    keys = engine.module.state_dict().keys()
    return {k: state[k] for k in keys if k in state}
