"""Small helpers Accelerate exposes in ``accelerate.utils``: unwrapping, saving, waiting.

Example:
    >>> import torch
    >>> extract_model_from_parallel(torch.nn.Linear(1, 1)).__class__.__name__
    'Linear'
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = [
    "convert_bytes", "extract_model_from_parallel", "get_pretty_name", "id_tensor_storage", "is_compiled_module",
    "is_peft_model", "is_port_in_use", "merge_dicts", "recursive_getattr", "save", "wait_for_everyone",
]


def extract_model_from_parallel(
    model: torch.nn.Module, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = True, recursive: bool = False
) -> torch.nn.Module:
    """The module inside DistributedDataParallel / ``torch.compile`` wrappers.

    With ``recursive=True``, submodules that were wrapped individually are unwrapped in place too.

    Example:
        >>> import torch
        >>> extract_model_from_parallel(torch.nn.Linear(1, 1)).in_features
        1
    """
    from ..precision import remove_autocast_wrapper
    from ..strategies import unwrap_compiled, unwrap_parallel

    outer = unwrap_parallel(unwrap_compiled(model))  # DDP may sit inside or outside torch.compile
    compiled = model if hasattr(model, "_orig_mod") else outer if hasattr(outer, "_orig_mod") else None
    inner = unwrap_compiled(outer)
    if not keep_fp32_wrapper:
        remove_autocast_wrapper(inner)
    if recursive:
        for parent in list(inner.modules()):
            for name, child in list(parent.named_children()):
                unwrapped = unwrap_compiled(unwrap_parallel(child))
                if unwrapped is not child:
                    setattr(parent, name, unwrapped)
    return compiled if keep_torch_compile and compiled is not None else inner


def wait_for_everyone() -> None:
    """Barrier across all processes (nothing when there is only one).

    Example:
        >>> wait_for_everyone()
    """
    from ..state import PartialState

    PartialState().wait_for_everyone()


def save(obj: Any, f: str | os.PathLike[str], save_on_each_node: bool = False, safe_serialization: bool = False) -> None:
    """Save ``obj`` on the main process (or each node's local main process), atomically.

    Example:
        >>> import tempfile, os, torch
        >>> save({"w": torch.ones(1)}, os.path.join(tempfile.mkdtemp(), "w.pt"))
    """
    from ..checkpointing import save_object
    from ..state import PartialState

    state = PartialState()
    if state.is_local_main_process if save_on_each_node else state.is_main_process:
        save_object(obj, f, safe_serialization)


def convert_bytes(size: float) -> str:
    """``size`` bytes in the largest unit below 1024 of it (binary units, two decimals).

    Example:
        >>> convert_bytes(123456789)
        '117.74 MB'
    """
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024.0:
            return f"{round(size, 2)} {unit}"
        size /= 1024.0
    return f"{round(size, 2)} PB"


def get_pretty_name(obj: Any) -> str:
    """The qualified name of a class or function, else of the object's class.

    Example:
        >>> get_pretty_name(convert_bytes), get_pretty_name(3)
        ('convert_bytes', 'int')
    """
    if not hasattr(obj, "__qualname__") and not hasattr(obj, "__name__"):
        obj = getattr(obj, "__class__", obj)
    return str(getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or obj)


def merge_dicts(source: dict[Any, Any], destination: dict[Any, Any]) -> dict[Any, Any]:
    """Merge ``source`` into ``destination`` recursively (nested dicts merged, other values replaced); return it.

    Example:
        >>> merge_dicts({"a": {"b": 1}}, {"a": {"c": 2}, "d": 3})
        {'a': {'c': 2, 'b': 1}, 'd': 3}
    """
    for key, value in source.items():
        if isinstance(value, dict):
            merge_dicts(value, destination.setdefault(key, {}))
        else:
            destination[key] = value
    return destination


def recursive_getattr(obj: Any, attr: str) -> Any:
    """``getattr`` along a dotted path.

    Example:
        >>> recursive_getattr(torch.nn.Sequential(torch.nn.Linear(1, 2)), "0.out_features")
        2
    """
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def is_compiled_module(module: Any) -> bool:
    """True when ``module`` is a ``torch.compile`` wrapper (``OptimizedModule``).

    Example:
        >>> is_compiled_module(torch.nn.Linear(1, 1))
        False
    """
    if not hasattr(torch, "_dynamo"):
        return False
    return isinstance(module, torch._dynamo.eval_frame.OptimizedModule)


def is_port_in_use(port: int | None = None) -> bool:
    """True when something listens on ``localhost:port`` (default 29500, the launchers' main port).

    Example:
        >>> isinstance(is_port_in_use(1), bool)
        True
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("localhost", 29500 if port is None else port)) == 0


def id_tensor_storage(tensor: torch.Tensor) -> tuple[torch.device, int, int]:
    """(device, storage pointer, storage size): equal for tensors that share memory (tied weights).

    Example:
        >>> w = torch.ones(4)
        >>> id_tensor_storage(w) == id_tensor_storage(w[:2])
        True
    """
    storage = tensor.untyped_storage()
    return tensor.device, storage.data_ptr(), storage.nbytes()


def is_peft_model(model: Any) -> bool:
    """True when ``model`` is a ``peft`` model (``PeftModel``); ``False`` when peft is not installed.

    Example:
        >>> is_peft_model(torch.nn.Linear(1, 1))
        False
    """
    from .imports import _installed

    if not _installed("peft"):
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)
