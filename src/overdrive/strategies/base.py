"""The strategy contract: how a model is placed, wrapped, synchronised, clipped and unwrapped.

A strategy owns everything that depends on the kind of parallelism, so the :class:`~overdrive.Accelerator` facade
never asks which kind it is. One strategy per file; no strategy inherits another.

Example:
    >>> from overdrive.strategies import select_strategy
    >>> select_strategy(num_processes=1).__name__
    'SingleDeviceStrategy'
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..precision import Precision
from ..state import PartialState
from ..utils.dataclasses import DistributedDataParallelKwargs, DistributedType

__all__ = ["Strategy", "compile_model", "is_compiled", "repeated_blocks", "unwrap_compiled"]


def unwrap_compiled(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module inside a ``torch.compile`` wrapper (or ``model`` itself)."""
    return getattr(model, "_orig_mod", model)


def is_compiled(model: torch.nn.Module) -> bool:
    """True for a ``torch.compile`` wrapper and for a module compiled in place with ``Module.compile``.

    Example:
        >>> m = torch.nn.Linear(1, 1)
        >>> is_compiled(m)
        False
    """
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The children of every ``ModuleList``/``Sequential`` made of two or more blocks of one class (outermost only).

    These are what regional compilation compiles: identical blocks share one compiled graph, so the compile cost is
    paid about once instead of once per block.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ModuleList([torch.nn.Linear(2, 2)] * 1))
        >>> repeated_blocks(net)  # a Linear then a ModuleList: not one class, and the inner list has one block
        []
        >>> len(repeated_blocks(torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])))
        3
    """
    found: list[torch.nn.Module] = []
    taken: set[str] = set()
    for name, module in model.named_modules():
        if any(name == t or name.startswith(t + ".") for t in taken):
            continue  # inside a block already chosen: compiled with it
        if not isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)):
            continue
        children = list(module.named_children())
        if len(children) >= 2 and len({type(c) for _, c in children}) == 1:
            found.extend(c for _, c in children)
            taken.update(f"{name}.{n}" if name else n for n, _ in children)
    return found


def compile_model(model: torch.nn.Module, plugin: Any) -> torch.nn.Module:
    """Compile ``model`` in place with ``plugin`` (a :class:`~overdrive.utils.TorchDynamoPlugin`); returns ``model``.

    Called before any data-parallel wrapper exists: ``DDP(compiled)`` runs the compiled graph, whereas
    ``torch.compile(DDP(model))`` graph-breaks inside DDP and silently runs eager. Compiling in place (what
    ``Module.compile`` does, not the ``torch.compile`` wrapper) keeps the module's class and state-dict keys, so compiled and plain checkpoints are
    interchangeable. With ``use_regional_compilation`` only the repeated blocks (see :func:`repeated_blocks`) are
    compiled, the rest runs eager; without repeated blocks the whole model is compiled. A model the user compiled
    already is left as it is.

    Example:
        >>> from overdrive.utils import TorchDynamoPlugin
        >>> m = compile_model(torch.nn.Linear(2, 2), TorchDynamoPlugin(backend="no"))
        >>> is_compiled(m)
        False
    """
    if plugin is None or not plugin.enabled or is_compiled(model):
        return model
    kwargs = plugin.compile_kwargs()
    blocks = repeated_blocks(model) if plugin.use_regional_compilation else []
    for block in blocks:
        if not is_compiled(block):
            _compile_in_place(block, kwargs)
    if not blocks:
        _compile_in_place(model, kwargs)
    return model


def _compile_in_place(module: torch.nn.Module, kwargs: dict[str, Any]) -> None:
    """``Module.compile`` through a trampoline defined here.

    ``module.compile()`` hands dynamo ``Module._call_impl`` itself, a frame of torch.nn that dynamo skips when it is
    the outermost frame: built-in modules (``Sequential``, ``TransformerEncoderLayer``...) then silently run eager.
    Starting the trace in this file makes dynamo inline ``_call_impl`` and capture the graph for any module.
    """

    def call(*args: Any, **kw: Any) -> Any:
        return module._call_impl(*args, **kw)

    module._compiled_call_impl = torch.compile(call, **kwargs)  # what Module.__call__ runs when set


class Strategy(abc.ABC):
    """Base class of every strategy.

    Subclasses implement ``distributed_type``, :meth:`wrap`, :meth:`no_sync` and :meth:`unwrap`.

    Example:
        >>> from overdrive.precision import Precision
        >>> from overdrive.state import PartialState
        >>> from overdrive.strategies.single import SingleDeviceStrategy
        >>> SingleDeviceStrategy(PartialState(), Precision()).distributed_type
        <DistributedType.NO: 'NO'>
    """

    @property
    @abc.abstractmethod
    def distributed_type(self) -> DistributedType:
        """What ``Accelerator.distributed_type`` reports for this strategy."""

    #: True for the FSDP2 strategy (``Accelerator.is_fsdp2``).
    is_fsdp2 = False

    #: False when models cannot be compiled under this strategy (the Accelerator refuses ``dynamo_backend`` early).
    supports_compile = True

    #: Set (as a method) by engines that run backward themselves (DeepSpeed); ``None`` means ``Accelerator.backward``
    #: calls the precision policy. A class attribute, so the per-step check is a plain lookup.
    engine_backward: Callable[..., None] | None = None

    def __init__(
        self,
        state: PartialState,
        precision: Precision,
        ddp_kwargs: DistributedDataParallelKwargs | None = None,
    ) -> None:
        self.state = state
        self.precision = precision
        self.ddp_kwargs = ddp_kwargs or DistributedDataParallelKwargs()
        self.dynamo_plugin: Any = None  # a TorchDynamoPlugin, set by make_strategy; None compiles nothing

    def prepare_model(
        self, model: torch.nn.Module, device_placement: bool = True, evaluation_mode: bool = False
    ) -> torch.nn.Module:
        """Move ``model`` to the device, apply the precision policy and wrap it for this strategy."""
        if device_placement:
            model = model.to(self.state.device)
        self.precision.wrap_forward(model)
        compile_model(model, self.dynamo_plugin)  # before wrap(): DDP(compiled), never compile(DDP)
        if evaluation_mode or not any(p.requires_grad for p in model.parameters()):
            return model  # nothing to synchronise: inference models stay unwrapped
        return self.wrap(model)

    @abc.abstractmethod
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap a model that is already on its device (e.g. in DistributedDataParallel)."""

    @abc.abstractmethod
    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Context in which backward accumulates local gradients without communication."""

    @abc.abstractmethod
    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The user's module inside whatever :meth:`wrap` added."""

    @property
    def gradient_average_divisor(self) -> int:
        """What gradient synchronisation divides summed gradients by (1: no data parallelism)."""
        return 1

    def join(self, joinables: list[Any], enable: bool) -> contextlib.AbstractContextManager[Any]:
        """Context for uneven inputs across ranks (nothing to join without data parallelism)."""
        return contextlib.nullcontext(joinables)

    def clip_grad_norm_(
        self, parameters: Iterable[torch.nn.Parameter] | torch.Tensor, max_norm: float, norm_type: float = 2.0
    ) -> torch.Tensor:
        """Clip the (already synchronised) gradients to ``max_norm``; return the total norm before clipping."""
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)

    def clip_grad_value_(self, parameters: Iterable[torch.nn.Parameter] | torch.Tensor, clip_value: float) -> None:
        """Clip every gradient element to ``[-clip_value, clip_value]``."""
        torch.nn.utils.clip_grad_value_(parameters, clip_value)

    #: True when the strategy writes and reads the model and optimizer files of ``save_state`` itself (sharded
    #: engines: FSDP2's ``torch.distributed.checkpoint`` folders, DeepSpeed's engine checkpoints). The other files of
    #: the checkpoint (scheduler, RNG, loaders, custom objects, the marker) stay with :mod:`overdrive.checkpoint_state`.
    owns_checkpoint_files = False

    def save_checkpoint_files(
        self, models: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer],
        folder: str | os.PathLike[str], safe_serialization: bool = True, **kwargs: Any,
    ) -> None:
        """Write the prepared ``models`` and the torch ``optimizers`` into ``folder`` (a collective: every rank calls).

        Only strategies with :attr:`owns_checkpoint_files` implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} leaves model and optimizer files to save_state")

    def check_checkpoint_files(self, folder: str | os.PathLike[str], num_models: int, num_optimizers: int) -> None:
        """Raise ``CheckpointError`` if ``folder`` lacks a file :meth:`load_checkpoint_files` needs (nothing changes)."""

    def load_checkpoint_files(
        self, models: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer],
        folder: str | os.PathLike[str], strict: bool = True, **kwargs: Any,
    ) -> None:
        """Restore what :meth:`save_checkpoint_files` wrote, at this run's world size (every rank calls)."""
        raise NotImplementedError(f"{type(self).__name__} leaves model and optimizer files to load_state")

    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict of the user's module (no ``module.`` or ``_orig_mod.`` prefix)."""
        return unwrap_compiled(self.unwrap(unwrap_compiled(model))).state_dict()  # compile may sit in or outside DDP
