"""Names Accelerate users import from ``accelerate.utils``, at the same path.

Example:
    >>> from overdrive.utils import set_seed, gather, DistributedType
    >>> set_seed(0)
"""

from __future__ import annotations

from ..checkpointing import convert_file_size_to_int
from .dataclasses import (
    AutocastKwargs,
    DataLoaderConfiguration,
    DDPCommunicationHookType,
    DeepSpeedPlugin,
    DistributedDataParallelKwargs,
    DistributedType,
    DynamoBackend,
    FullyShardedDataParallelPlugin,
    GradientAccumulationPlugin,
    GradScalerKwargs,
    InitProcessGroupKwargs,
    KwargsHandler,
    LoggerType,
    PrecisionType,
    ProfileKwargs,
    ProjectConfiguration,
    RNGType,
    TorchDynamoPlugin,
)
from .fsdp_utils import merge_fsdp_weights
from .memory import find_executable_batch_size, release_memory
from .operations import (
    broadcast,
    broadcast_object_list,
    concatenate,
    convert_outputs_to_fp32,
    convert_to_fp32,
    find_batch_size,
    gather,
    gather_object,
    honor_type,
    pad_across_processes,
    recursively_apply,
    reduce,
    send_to_device,
    slice_tensors,
)
from .other import extract_model_from_parallel, save, wait_for_everyone
from .random import set_seed, synchronize_rng_state, synchronize_rng_states
from .tqdm import tqdm

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
    "ProfileKwargs",
    "ProjectConfiguration",
    "RNGType",
    "TorchDynamoPlugin",
    "broadcast",
    "broadcast_object_list",
    "concatenate",
    "convert_file_size_to_int",
    "convert_outputs_to_fp32",
    "convert_to_fp32",
    "extract_model_from_parallel",
    "find_batch_size",
    "find_executable_batch_size",
    "gather",
    "gather_object",
    "honor_type",
    "merge_fsdp_weights",
    "pad_across_processes",
    "recursively_apply",
    "reduce",
    "release_memory",
    "save",
    "send_to_device",
    "set_seed",
    "slice_tensors",
    "synchronize_rng_state",
    "synchronize_rng_states",
    "tqdm",
    "wait_for_everyone",
]

# Big-model helpers (docs/big-models.md) at Accelerate's ``accelerate.utils`` names, loaded on first use: state.py
# imports this package while it loads, and these modules need not come with it.
_LAZY_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "align_module_device", "calculate_maximum_sizes", "check_device_map",
            "check_tied_parameters_on_same_device", "compute_module_sizes", "dtype_byte_size", "find_tied_parameters",
            "get_balanced_memory", "get_max_layer_size", "get_max_memory", "has_offloaded_params",
            "infer_auto_device_map", "load_checkpoint_in_model", "load_offloaded_weights", "load_state_dict",
            "named_module_tensors", "retie_parameters", "set_module_tensor_to_device",
        ),
        "overdrive.utils.modeling",
    ),
    **dict.fromkeys(
        (
            "OffloadedWeightsLoader", "PrefixedDataset", "extract_submodules_state_dict", "load_offloaded_weight",
            "offload_state_dict", "offload_weight", "save_offload_index",
        ),
        "overdrive.utils.offload",
    ),
    # DeepSpeed placeholders for an optimizer/scheduler the DeepSpeed config defines (as in accelerate.utils)
    **dict.fromkeys(("DummyOptim", "DummyScheduler"), "overdrive.utils.deepspeed"),
}
__all__ += sorted(_LAZY_EXPORTS)


def __getattr__(name: str) -> object:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'overdrive.utils' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
