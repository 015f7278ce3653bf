"""``is_<package>_available()`` checks at Accelerate's names (``accelerate.utils.imports``).

Package checks look the package up without importing it (``importlib.util.find_spec``), so they stay cheap; device
checks ask torch. Hardware overdrive has no backend for (Ascend NPU, Cambricon MLU, Moore Threads MUSA, Habana HPU,
SDAA, Neuron, TPU) is reported available only when its torch extension is installed, as Accelerate does.

Example:
    >>> from overdrive.utils import is_tensorboard_available, is_cuda_available
    >>> isinstance(is_tensorboard_available(), bool), isinstance(is_cuda_available(), bool)
    (True, True)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a module without a spec
        return False


def _package_check(public: str, module: str) -> Callable[[], bool]:
    def check() -> bool:
        return _installed(module)

    check.__name__ = check.__qualname__ = public
    check.__doc__ = (
        f"True when ``{module}`` is installed (looked up, not imported).\n\n"
        f"Example:\n    >>> isinstance({public}(), bool)\n    True\n"
    )
    return check


# The trackers and libraries scripts test for before importing them: each name looks for one module.
is_aim_available = _package_check("is_aim_available", "aim")
is_amdsmi_available = _package_check("is_amdsmi_available", "amdsmi")
is_boto3_available = _package_check("is_boto3_available", "boto3")
is_clearml_available = _package_check("is_clearml_available", "clearml")
is_comet_ml_available = _package_check("is_comet_ml_available", "comet_ml")
is_datasets_available = _package_check("is_datasets_available", "datasets")
is_deepspeed_available = _package_check("is_deepspeed_available", "deepspeed")
is_dvclive_available = _package_check("is_dvclive_available", "dvclive")
is_import_timer_available = _package_check("is_import_timer_available", "import_timer")
is_lomo_available = _package_check("is_lomo_available", "lomo_optim")
is_matplotlib_available = _package_check("is_matplotlib_available", "matplotlib")
is_megatron_lm_available = _package_check("is_megatron_lm_available", "megatron")
is_mlflow_available = _package_check("is_mlflow_available", "mlflow")
is_msamp_available = _package_check("is_msamp_available", "msamp")
is_pandas_available = _package_check("is_pandas_available", "pandas")
is_peft_available = _package_check("is_peft_available", "peft")
is_pynvml_available = _package_check("is_pynvml_available", "pynvml")
is_pytest_available = _package_check("is_pytest_available", "pytest")
is_rich_available = _package_check("is_rich_available", "rich")
is_sagemaker_available = _package_check("is_sagemaker_available", "sagemaker")
is_schedulefree_available = _package_check("is_schedulefree_available", "schedulefree")
is_swanlab_available = _package_check("is_swanlab_available", "swanlab")
is_tensorboard_available = _package_check("is_tensorboard_available", "tensorboard")
is_timm_available = _package_check("is_timm_available", "timm")
is_torchao_available = _package_check("is_torchao_available", "torchao")
is_torchdata_available = _package_check("is_torchdata_available", "torchdata")
is_torchvision_available = _package_check("is_torchvision_available", "torchvision")
is_trackio_available = _package_check("is_trackio_available", "trackio")
is_transformer_engine_available = _package_check("is_transformer_engine_available", "transformer_engine")
is_transformers_available = _package_check("is_transformers_available", "transformers")
is_triton_available = _package_check("is_triton_available", "triton")
is_wandb_available = _package_check("is_wandb_available", "wandb")


def is_pippy_available() -> bool:
    """True when pipeline parallelism is importable: ``torch.distributed.pipelining`` (torch 2.4+) or ``pippy``.

    Example:
        >>> isinstance(is_pippy_available(), bool)
        True
    """
    return _installed("torch.distributed.pipelining") or _installed("pippy")


def is_torchdata_stateful_dataloader_available() -> bool:
    """True when ``torchdata.stateful_dataloader`` (``StatefulDataLoader``) is installed.

    Example:
        >>> isinstance(is_torchdata_stateful_dataloader_available(), bool)
        True
    """
    return _installed("torchdata") and _installed("torchdata.stateful_dataloader")


def is_bnb_available(min_version: str | None = None) -> bool:
    """True when bitsandbytes is installed (at ``min_version`` or newer when given).

    Example:
        >>> isinstance(is_bnb_available(), bool)
        True
    """
    if not _installed("bitsandbytes"):
        return False
    if min_version is None:
        return True
    from .versions import compare_versions

    return compare_versions("bitsandbytes", ">=", min_version)


def is_4bit_bnb_available() -> bool:
    """True when bitsandbytes supports 4-bit layers (0.39 or newer).

    Example:
        >>> isinstance(is_4bit_bnb_available(), bool)
        True
    """
    return is_bnb_available("0.39.0")


def is_8bit_bnb_available() -> bool:
    """True when bitsandbytes supports 8-bit layers (0.37.2 or newer).

    Example:
        >>> isinstance(is_8bit_bnb_available(), bool)
        True
    """
    return is_bnb_available("0.37.2")


def is_bitsandbytes_multi_backend_available() -> bool:
    """True when the installed bitsandbytes reports several backends (non-CUDA builds).

    Example:
        >>> isinstance(is_bitsandbytes_multi_backend_available(), bool)
        True
    """
    if not is_bnb_available():
        return False
    import bitsandbytes

    return "multi_backend" in getattr(bitsandbytes, "features", set())


# -- devices -------------------------------------------------------------------------------------------------------


def is_cuda_available() -> bool:
    """True when torch sees a CUDA (or ROCm) GPU.

    Example:
        >>> isinstance(is_cuda_available(), bool)
        True
    """
    import torch

    return torch.cuda.is_available()


def is_rocm_available() -> bool:
    """True when torch is a ROCm build.

    Example:
        >>> isinstance(is_rocm_available(), bool)
        True
    """
    import torch

    return getattr(torch.version, "hip", None) is not None


def is_mps_available(min_version: str = "1.12") -> bool:
    """True when Apple's MPS backend is built and usable (torch ``min_version`` or newer).

    Example:
        >>> isinstance(is_mps_available(), bool)
        True
    """
    import torch

    from .versions import is_torch_version

    backend = getattr(torch.backends, "mps", None)
    return bool(is_torch_version(">=", min_version) and backend is not None and backend.is_available()
                and backend.is_built())


def is_xpu_available(check_device: bool = False) -> bool:
    """True when torch has Intel XPU support (and, with ``check_device``, sees a device).

    Example:
        >>> isinstance(is_xpu_available(), bool)
        True
    """
    import torch

    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available() and (not check_device or xpu.device_count() > 0))


def _extension_device(module: str, attribute: str, check_device: bool) -> bool:
    # Devices served by a separate torch extension: available only when it is installed and reports a device.
    if not _installed(module):
        return False
    import torch

    importlib.import_module(module)
    backend: Any = getattr(torch, attribute, None)
    if backend is None or not backend.is_available():
        return False
    return not check_device or backend.device_count() > 0



def _device_check(public: str, module: str, attribute: str, maker: str) -> Callable[..., bool]:
    def check(check_device: bool = False) -> bool:
        return _extension_device(module, attribute, check_device)

    check.__name__ = check.__qualname__ = public
    check.__doc__ = (
        f"True when ``{module}`` ({maker}) is installed and torch sees a ``{attribute}`` device (with "
        f"``check_device``, at least one).\n\nExample:\n    >>> isinstance({public}(), bool)\n    True\n"
    )
    return check


is_npu_available = _device_check("is_npu_available", "torch_npu", "npu", "Ascend")
is_mlu_available = _device_check("is_mlu_available", "torch_mlu", "mlu", "Cambricon")
is_musa_available = _device_check("is_musa_available", "torch_musa", "musa", "Moore Threads")
is_sdaa_available = _device_check("is_sdaa_available", "torch_sdaa", "sdaa", "SDAA")
is_neuron_available = _device_check("is_neuron_available", "torch_neuronx", "neuron", "AWS Neuron")

def is_hpu_available(init_hccl: bool = False) -> bool:
    """True when ``habana_frameworks`` (Gaudi) is installed and torch sees an HPU.

    Example:
        >>> isinstance(is_hpu_available(), bool)
        True
    """
    if not _installed("habana_frameworks"):
        return False
    import torch

    importlib.import_module("habana_frameworks.torch")  # registers torch.hpu
    if init_hccl:
        importlib.import_module("habana_frameworks.torch.distributed.hccl")  # initialises the collective backend
    hpu: Any = getattr(torch, "hpu", None)
    return bool(hpu is not None and hpu.is_available())


def is_habana_gaudi1() -> bool:
    """True on a first-generation Gaudi.

    Example:
        >>> is_habana_gaudi1()
        False
    """
    if not is_hpu_available():
        return False
    import habana_frameworks.torch.utils.experimental as htexp

    return bool(htexp._get_device_type() == htexp.synDeviceType.synDeviceGaudi)


def is_torch_xla_available(check_is_tpu: bool = False, check_is_gpu: bool = False) -> bool:
    """True when ``torch_xla`` is installed (overdrive has no XLA backend; this only reports the package).

    Example:
        >>> isinstance(is_torch_xla_available(), bool)
        True
    """
    if check_is_tpu and check_is_gpu:
        raise ValueError("is_torch_xla_available: check_is_tpu and check_is_gpu cannot both be True")
    if not _installed("torch_xla"):
        return False
    if not (check_is_tpu or check_is_gpu):
        return True
    import torch_xla.runtime as xr

    device = xr.device_type()
    return device == ("TPU" if check_is_tpu else "CUDA")


def is_xccl_available() -> bool:
    """True when this torch build has the XCCL (Intel GPU) collective backend.

    Example:
        >>> isinstance(is_xccl_available(), bool)
        True
    """
    import torch.distributed as dist

    return bool(dist.is_available() and getattr(dist, "is_xccl_available", lambda: False)())


def is_bf16_available(ignore_tpu: bool = False) -> bool:
    """True when bf16 mixed precision can run here: on CUDA when the GPU supports it, always on CPU.

    Example:
        >>> is_bf16_available() in (True, False)
        True
    """
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return True


def is_fp16_available() -> bool:
    """True: fp16 autocast with a loss scaler runs on GPUs and on the CPU (slowly there; see docs).

    Example:
        >>> is_fp16_available()
        True
    """
    return True


def is_fp8_available() -> bool:
    """False: fp8 training is not implemented in overdrive (``mixed_precision="fp8"`` is refused).

    Example:
        >>> is_fp8_available()
        False
    """
    return False


def is_transformer_engine_mxfp8_available() -> bool:
    """False: fp8 recipes are not implemented in overdrive.

    Example:
        >>> is_transformer_engine_mxfp8_available()
        False
    """
    return False


def is_weights_only_available() -> bool:
    """True when ``torch.load(weights_only=True)`` exists (torch 2.4 and newer).

    Example:
        >>> is_weights_only_available()
        True
    """
    from .versions import is_torch_version

    return is_torch_version(">=", "2.4.0")
