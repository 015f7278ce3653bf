"""Strategy selection: a pure function from the run's facts to the strategy class.

Example:
    >>> select_strategy(num_processes=2).__name__
    'DDPStrategy'
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from .base import Strategy, unwrap_compiled
from .ddp import DDPStrategy
from .single import SingleDeviceStrategy

__all__ = ["DDPStrategy", "SingleDeviceStrategy", "Strategy", "select_strategy", "unwrap_compiled", "unwrap_parallel"]


def select_strategy(
    num_processes: int, fsdp_plugin: Any = None, deepspeed_plugin: Any = None, use_fsdp: bool = False,
    use_deepspeed: bool = False,
) -> type[Strategy]:
    """Choose the strategy class. Pure: no process group, no environment reads.

    Sharded strategies (FSDP, DeepSpeed) are requested through their plugins or the ``use_*`` flags and are not
    implemented in this version: asking for one raises instead of silently training with DDP.

    Example:
        >>> select_strategy(num_processes=1, fsdp_plugin=None).__name__
        'SingleDeviceStrategy'
    """
    if fsdp_plugin is not None or use_fsdp:
        raise NotImplementedError(
            "fsdp_plugin / ACCELERATE_USE_FSDP: FSDP sharded training is not implemented yet in this version of "
            "overdrive; remove the plugin to train with DDP"
        )
    if deepspeed_plugin is not None or use_deepspeed:
        raise NotImplementedError(
            "deepspeed_plugin / ACCELERATE_USE_DEEPSPEED: DeepSpeed is not implemented yet in this version of "
            "overdrive; remove the plugin to train with DDP"
        )
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be at least 1")
    return DDPStrategy if num_processes > 1 else SingleDeviceStrategy


def unwrap_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """Strip every data-parallel wrapper any strategy may have added (the compile wrapper is kept).

    Example:
        >>> m = torch.nn.Linear(1, 1)
        >>> unwrap_parallel(m) is m
        True
    """
    while isinstance(model, DistributedDataParallel):
        model = model.module
    return model
