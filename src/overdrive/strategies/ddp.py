"""Data parallelism with ``torch.nn.parallel.DistributedDataParallel`` (gloo on CPU, nccl on GPU).

Every rank holds the whole model; DDP all-reduces (averages) gradients during backward, bucketed and overlapped
with computation. ``no_sync`` skips that all-reduce on accumulation micro-steps.

Example:
    >>> DDPStrategy.__name__
    'DDPStrategy'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..state import register_wrapper
from ..utils.dataclasses import DDPCommunicationHookType, DistributedType
from .base import Strategy

__all__ = ["DDPStrategy"]


class DDPStrategy(Strategy):
    """Wraps models in DistributedDataParallel with the user's :class:`DistributedDataParallelKwargs`."""

    @property
    def distributed_type(self) -> DistributedType:  # type: ignore[override]
        """MULTI_GPU on GPU, MULTI_CPU on CPU (what Accelerate reports)."""
        return DistributedType.MULTI_CPU if self.state.device.type == "cpu" else DistributedType.MULTI_GPU

    @property
    def gradient_average_divisor(self) -> int:
        """DDP (and its compression hooks) average gradients over all ranks."""
        return self.state.num_processes

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        device = self.state.device
        # device_ids must be None for CPU modules; a single GPU index otherwise.
        device_ids = None if device.type == "cpu" else [device.index]
        ddp = DistributedDataParallel(model, device_ids=device_ids, **self.ddp_kwargs.ddp_kwargs())
        self._register_comm_hook(ddp)
        register_wrapper(ddp)  # released before the process group is destroyed at exit
        return ddp

    def _register_comm_hook(self, ddp: DistributedDataParallel) -> None:
        hook_type = DDPCommunicationHookType(self.ddp_kwargs.comm_hook)
        if hook_type == DDPCommunicationHookType.NO:
            return
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        if hook_type in (DDPCommunicationHookType.FP16, DDPCommunicationHookType.BF16):
            compress_hook = default_hooks.fp16_compress_hook if hook_type == "fp16" else default_hooks.bf16_compress_hook
            ddp.register_comm_hook(None, compress_hook)
            return
        state = powerSGD_hook.PowerSGDState(process_group=None, **self.ddp_kwargs.comm_state_option)
        hook: Any = (
            powerSGD_hook.powerSGD_hook
            if hook_type == DDPCommunicationHookType.POWER_SGD
            else powerSGD_hook.batched_powerSGD_hook
        )
        wrapper = DDPCommunicationHookType(self.ddp_kwargs.comm_wrapper)
        if wrapper != DDPCommunicationHookType.NO:
            compress = default_hooks.fp16_compress_wrapper if wrapper == "fp16" else default_hooks.bf16_compress_wrapper
            hook = compress(hook)
        ddp.register_comm_hook(state, hook)

    def join(self, joinables: list[Any], enable: bool) -> contextlib.AbstractContextManager[Any]:
        """torch's Join: ranks that ran out of data shadow the others' collectives instead of hanging."""
        from torch.distributed.algorithms.join import Join

        return Join(joinables, enable=enable, throw_on_early_termination=False)

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        if isinstance(model, DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()  # an unwrapped (evaluation) model has nothing to synchronise

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def force_sync(model: torch.nn.Module) -> Iterator[None]:
    """Context in which ``model``'s next backward all-reduces gradients although its forward ran under ``no_sync``
    (``Accelerator.trigger_sync_in_backward``); a no-op for anything but a ``DistributedDataParallel`` wrapper.

    Example:
        >>> with force_sync(torch.nn.Linear(1, 1)):
        ...     pass
    """
    if not isinstance(model, DistributedDataParallel):
        yield
        return
    # A forward under no_sync did not arm the reducer for the next backward; arming it by hand (what a synchronising
    # forward does) makes that backward all-reduce every gradient accumulated so far.
    saved = model.require_backward_grad_sync, model.require_forward_param_sync
    model.require_backward_grad_sync = True
    model.require_forward_param_sync = True
    model.reducer.prepare_for_backward([])
    try:
        yield
    finally:
        model.require_backward_grad_sync, model.require_forward_param_sync = saved
