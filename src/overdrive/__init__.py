"""overdrive: train PyTorch models on one or many devices and machines with your own training loop.

A drop-in for Accelerate's API: ``from overdrive import Accelerator`` runs an Accelerate training script unchanged.
Public names are loaded on first use (PEP 562), so ``import overdrive`` and the ``overdrive`` CLI's ``--help`` stay
fast; nothing here imports an optional dependency.

Example:
    >>> from overdrive import Accelerator
    >>> accelerator = Accelerator()
    >>> accelerator.num_processes >= 1
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Accelerator": "overdrive.accelerator",
    "PartialState": "overdrive.state",
    "AcceleratorState": "overdrive.state",
    "GradientState": "overdrive.state",
    "DataLoaderConfiguration": "overdrive.utils.dataclasses",
    "DistributedDataParallelKwargs": "overdrive.utils.dataclasses",
    "InitProcessGroupKwargs": "overdrive.utils.dataclasses",
    "GradScalerKwargs": "overdrive.utils.dataclasses",
    "AutocastKwargs": "overdrive.utils.dataclasses",
    "ProfileKwargs": "overdrive.utils.dataclasses",
    "GradientAccumulationPlugin": "overdrive.utils.dataclasses",
    "ProjectConfiguration": "overdrive.utils.dataclasses",
    "FullyShardedDataParallelPlugin": "overdrive.utils.dataclasses",
    "DeepSpeedPlugin": "overdrive.utils.dataclasses",
    "DistributedType": "overdrive.utils.dataclasses",
    "skip_first_batches": "overdrive.data_loader",
    "set_seed": "overdrive.utils.random",
    "find_executable_batch_size": "overdrive.utils.memory",
    "get_logger": "overdrive.logging",
    "send_to_device": "overdrive.utils.operations",
    "notebook_launcher": "overdrive.launchers",
    "debug_launcher": "overdrive.launchers",
    # big-model inference (docs/big-models.md)
    "init_empty_weights": "overdrive.big_modeling",
    "init_on_device": "overdrive.big_modeling",
    "cpu_offload": "overdrive.big_modeling",
    "cpu_offload_with_hook": "overdrive.big_modeling",
    "disk_offload": "overdrive.big_modeling",
    "dispatch_model": "overdrive.big_modeling",
    "load_checkpoint_and_dispatch": "overdrive.big_modeling",
    "infer_auto_device_map": "overdrive.utils.modeling",
    "load_checkpoint_in_model": "overdrive.utils.modeling",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'overdrive' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .accelerator import Accelerator
    from .big_modeling import (
        cpu_offload,
        cpu_offload_with_hook,
        disk_offload,
        dispatch_model,
        init_empty_weights,
        init_on_device,
        load_checkpoint_and_dispatch,
    )
    from .data_loader import skip_first_batches
    from .launchers import debug_launcher, notebook_launcher
    from .logging import get_logger
    from .state import AcceleratorState, GradientState, PartialState
    from .utils.dataclasses import (
        AutocastKwargs,
        DataLoaderConfiguration,
        DeepSpeedPlugin,
        DistributedDataParallelKwargs,
        DistributedType,
        FullyShardedDataParallelPlugin,
        GradientAccumulationPlugin,
        GradScalerKwargs,
        InitProcessGroupKwargs,
        ProfileKwargs,
        ProjectConfiguration,
    )
    from .utils.memory import find_executable_batch_size
    from .utils.modeling import infer_auto_device_map, load_checkpoint_in_model
    from .utils.operations import send_to_device
    from .utils.random import set_seed
