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

__all__ = ["extract_model_from_parallel", "save", "wait_for_everyone"]


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
