"""Strategy selection: a pure function from the run's facts to the strategy class.

Example:
    >>> select_strategy(num_processes=2).__name__
    'DDPStrategy'
    >>> select_strategy(num_processes=2, use_fsdp=True).__name__
    'FSDP2Strategy'
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..precision import Precision
from ..state import PartialState
from ..utils.dataclasses import DistributedDataParallelKwargs, FullyShardedDataParallelPlugin
from .base import Strategy, compile_model, is_compiled, repeated_blocks, unwrap_compiled
from .ddp import DDPStrategy
from .deepspeed import DeepSpeedStrategy, is_deepspeed_engine
from .fsdp import FSDP2Strategy
from .single import SingleDeviceStrategy

__all__ = [
    "DDPStrategy", "DeepSpeedStrategy", "FSDP2Strategy", "SingleDeviceStrategy", "Strategy", "make_strategy", "select_strategy",
    "compile_model", "is_compiled", "repeated_blocks", "unwrap_compiled", "unwrap_parallel",
]


def select_strategy(
    num_processes: int, fsdp_plugin: Any = None, deepspeed_plugin: Any = None, use_fsdp: bool = False,
    use_deepspeed: bool = False,
) -> type[Strategy]:
    """Choose the strategy class. Pure: no process group, no environment reads.

    FSDP (a ``fsdp_plugin`` or ``use_fsdp``) selects :class:`FSDP2Strategy` at any number of processes, so that
    a one-process run shards (trivially) too and loads sharded checkpoints. DeepSpeed (a ``deepspeed_plugin`` or
    ``use_deepspeed``) selects :class:`DeepSpeedStrategy`, also at one process (DeepSpeed is imported only later).

    Example:
        >>> select_strategy(num_processes=1, fsdp_plugin=None).__name__
        'SingleDeviceStrategy'
    """
    wants_fsdp = fsdp_plugin is not None or use_fsdp
    wants_deepspeed = deepspeed_plugin is not None or use_deepspeed
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be at least 1")
    if fsdp_plugin is not None and not isinstance(fsdp_plugin, FullyShardedDataParallelPlugin):
        raise TypeError(
            f"fsdp_plugin must be a FullyShardedDataParallelPlugin, got {type(fsdp_plugin).__name__}; build one with "
            "overdrive.FullyShardedDataParallelPlugin(...)"
        )
    if wants_fsdp and wants_deepspeed:
        raise ValueError(
            "FSDP and DeepSpeed were both requested (fsdp_plugin / ACCELERATE_USE_FSDP together with deepspeed_plugin "
            "/ ACCELERATE_USE_DEEPSPEED); they are two ways to shard the same model, choose one"
        )
    if wants_fsdp:
        return FSDP2Strategy
    if wants_deepspeed:
        from ..utils.dataclasses import DeepSpeedPlugin

        if deepspeed_plugin is not None and not isinstance(deepspeed_plugin, DeepSpeedPlugin):
            raise TypeError(
                f"deepspeed_plugin must be a DeepSpeedPlugin, got {type(deepspeed_plugin).__name__}; build one with "
                "overdrive.DeepSpeedPlugin(...) (a dict of several named plugins is not supported)"
            )
        return DeepSpeedStrategy
    return DDPStrategy if num_processes > 1 else SingleDeviceStrategy


def make_strategy(
    strategy_cls: type[Strategy], state: PartialState, precision: Precision,
    ddp_kwargs: DistributedDataParallelKwargs | None = None, fsdp_plugin: Any = None, deepspeed_plugin: Any = None,
    dynamo_plugin: Any = None,
) -> Strategy:
    """Build the chosen strategy, handing each the settings it owns (the FSDP plugin goes to FSDP2 only).

    ``dynamo_plugin`` (a :class:`~overdrive.utils.TorchDynamoPlugin`) makes ``prepare_model`` compile each model
    before wrapping it.

    Example:
        >>> make_strategy(SingleDeviceStrategy, PartialState(), Precision()).distributed_type
        <DistributedType.NO: 'NO'>
    """
    strategy: Strategy
    if strategy_cls is FSDP2Strategy:
        strategy = FSDP2Strategy(state, precision, ddp_kwargs, fsdp_plugin=fsdp_plugin)
    elif strategy_cls is DeepSpeedStrategy:
        strategy = DeepSpeedStrategy(state, precision, ddp_kwargs, deepspeed_plugin=deepspeed_plugin)
    else:
        strategy = strategy_cls(state, precision, ddp_kwargs)  # type: ignore[call-arg]
    strategy.dynamo_plugin = dynamo_plugin
    return strategy


def unwrap_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """Strip every data-parallel wrapper any strategy may have added (the compile wrapper is kept).

    FSDP2 adds no wrapper (the sharded module is the user's module), so only DDP and DeepSpeed's engine are stripped.

    Example:
        >>> m = torch.nn.Linear(1, 1)
        >>> unwrap_parallel(m) is m
        True
    """
    while isinstance(model, DistributedDataParallel) or is_deepspeed_engine(model):
        model = model.module  # type: ignore[assignment]
    return model
