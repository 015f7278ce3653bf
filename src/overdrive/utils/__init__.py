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

_IMPORT_CHECKS = (
    "is_4bit_bnb_available", "is_8bit_bnb_available", "is_aim_available", "is_amdsmi_available", "is_bf16_available",
    "is_bitsandbytes_multi_backend_available", "is_bnb_available", "is_boto3_available", "is_clearml_available",
    "is_comet_ml_available", "is_cuda_available", "is_datasets_available", "is_deepspeed_available",
    "is_dvclive_available", "is_fp16_available", "is_fp8_available", "is_habana_gaudi1", "is_hpu_available",
    "is_import_timer_available", "is_lomo_available", "is_matplotlib_available", "is_megatron_lm_available",
    "is_mlflow_available", "is_mlu_available", "is_mps_available", "is_msamp_available", "is_musa_available",
    "is_neuron_available", "is_npu_available", "is_pandas_available", "is_peft_available", "is_pippy_available",
    "is_pynvml_available", "is_pytest_available", "is_rich_available", "is_rocm_available", "is_sagemaker_available",
    "is_schedulefree_available", "is_sdaa_available", "is_swanlab_available", "is_tensorboard_available",
    "is_timm_available", "is_torch_xla_available", "is_torchao_available", "is_torchdata_available",
    "is_torchdata_stateful_dataloader_available", "is_torchvision_available", "is_trackio_available",
    "is_transformer_engine_available", "is_transformer_engine_mxfp8_available", "is_transformers_available",
    "is_triton_available", "is_wandb_available", "is_weights_only_available", "is_xccl_available",
    "is_xpu_available",
)

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
    # Availability checks, versions, environment helpers, checkpoint file names, small helpers (Accelerate's names)
    **dict.fromkeys(_IMPORT_CHECKS, "overdrive.utils.imports"),
    **dict.fromkeys(("compare_versions", "is_torch_version"), "overdrive.utils.versions"),
    **dict.fromkeys(
        ("clear_environment", "get_int_from_env", "parse_choice_from_env", "parse_flag_from_env", "patch_environment",
         "str_to_bool"),
        "overdrive.utils.environment",
    ),
    **dict.fromkeys(
        ("MODEL_NAME", "OPTIMIZER_NAME", "PROFILE_PATTERN_NAME", "RNG_STATE_NAME", "SAFE_MODEL_NAME",
         "SAFE_WEIGHTS_INDEX_NAME", "SAFE_WEIGHTS_NAME", "SAFE_WEIGHTS_PATTERN_NAME", "SAMPLER_NAME", "SCALER_NAME",
         "SCHEDULER_NAME", "WEIGHTS_INDEX_NAME", "WEIGHTS_NAME", "WEIGHTS_PATTERN_NAME"),
        "overdrive.utils.constants",
    ),
    **dict.fromkeys(
        ("convert_bytes", "get_pretty_name", "id_tensor_storage", "is_compiled_module", "is_peft_model",
         "is_port_in_use", "merge_dicts", "recursive_getattr"),
        "overdrive.utils.other",
    ),
    **dict.fromkeys(("is_namedtuple", "is_torch_tensor", "listify"), "overdrive.utils.operations"),
    "write_basic_config": "overdrive.commands.config",
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
