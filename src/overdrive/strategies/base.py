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
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..precision import Precision
from ..state import PartialState
from ..utils.dataclasses import DistributedDataParallelKwargs, DistributedType

__all__ = ["Strategy", "unwrap_compiled"]


def unwrap_compiled(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module inside a ``torch.compile`` wrapper (or ``model`` itself)."""
    return getattr(model, "_orig_mod", model)


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

    def __init__(
        self,
        state: PartialState,
        precision: Precision,
        ddp_kwargs: DistributedDataParallelKwargs | None = None,
    ) -> None:
        self.state = state
        self.precision = precision
        self.ddp_kwargs = ddp_kwargs or DistributedDataParallelKwargs()

    def prepare_model(
        self, model: torch.nn.Module, device_placement: bool = True, evaluation_mode: bool = False
    ) -> torch.nn.Module:
        """Move ``model`` to the device, apply the precision policy and wrap it for this strategy."""
        if device_placement:
            model = model.to(self.state.device)
        self.precision.wrap_forward(model)
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
        """The full (unsharded) state dict of the user's module."""
        return self.unwrap(unwrap_compiled(model)).state_dict()
