"""Operations on nested structures of tensors (lists, tuples, dicts, namedtuples), and collectives over them.

Every collective is a no-op (returns its input) when no process group spans more than one process.

Example:
    >>> import torch
    >>> send_to_device({"x": torch.ones(2)}, "cpu")["x"].device.type
    'cpu'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["honor_type", "is_tensor_like", "recursively_apply", "send_to_device"]


def is_tensor_like(obj: Any) -> bool:
    """True for tensors and objects that behave like one for device moves (have ``.to``)."""
    return isinstance(obj, torch.Tensor) or (hasattr(obj, "to") and callable(obj.to) and not isinstance(obj, type))


def honor_type(obj: Any, generator: Any) -> Any:
    """Build a sequence of ``obj``'s type (tuple, list, namedtuple) from ``generator``."""
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple: positional constructor
        return type(obj)(*list(generator))
    return type(obj)(generator)


def recursively_apply(
    func: Callable[..., Any],
    data: Any,
    *args: Any,
    test_type: Callable[[Any], bool] = lambda t: isinstance(t, torch.Tensor),
    error_on_other_type: bool = False,
    **kwargs: Any,
) -> Any:
    """Apply ``func`` to every leaf of ``data`` that passes ``test_type``, keeping the container structure.

    Example:
        >>> import torch
        >>> recursively_apply(lambda t: t * 2, [torch.tensor(1), {"a": torch.tensor(2)}])
        [tensor(2), {'a': tensor(4)}]
    """
    if isinstance(data, (tuple, list)):
        return honor_type(
            data,
            (
                recursively_apply(func, o, *args, test_type=test_type, error_on_other_type=error_on_other_type, **kwargs)
                for o in data
            ),
        )
    if isinstance(data, Mapping):
        return type(data)(
            {
                k: recursively_apply(func, v, *args, test_type=test_type, error_on_other_type=error_on_other_type, **kwargs)
                for k, v in data.items()
            }
        )
    if test_type(data):
        return func(data, *args, **kwargs)
    if error_on_other_type:
        raise TypeError(
            f"{func.__name__} only works on tensors and nested lists/tuples/dicts of tensors; got {type(data).__name__}"
        )
    return data


def send_to_device(
    tensor: Any, device: torch.device | str | int, non_blocking: bool = False, skip_keys: list[str] | str | None = None
) -> Any:
    """Move every tensor in a nested structure to ``device``; other leaves are returned unchanged.

    ``skip_keys`` names dict keys whose values are left where they are.

    Example:
        >>> import torch
        >>> send_to_device([torch.ones(1), "label"], "cpu")
        [tensor([1.]), 'label']
    """
    if isinstance(skip_keys, str):
        skip_keys = [skip_keys]
    if isinstance(tensor, (tuple, list)):
        return honor_type(tensor, (send_to_device(t, device, non_blocking, skip_keys) for t in tensor))
    if isinstance(tensor, Mapping):
        skip = skip_keys or ()
        return type(tensor)(
            {k: v if k in skip else send_to_device(v, device, non_blocking, skip_keys) for k, v in tensor.items()}
        )
    if isinstance(tensor, torch.Tensor):
        return tensor.to(device, non_blocking=non_blocking)
    if is_tensor_like(tensor) and not isinstance(tensor, (str, bytes, int, float, bool)):
        try:
            return tensor.to(device, non_blocking=non_blocking)
        except TypeError:
            return tensor.to(device)
    return tensor
