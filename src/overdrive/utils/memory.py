"""Out-of-memory helpers: retry with a smaller batch, release objects, empty the device cache.

Example:
    >>> @find_executable_batch_size(starting_batch_size=8)
    ... def run(batch_size):
    ...     return batch_size
    >>> run()
    8
"""

from __future__ import annotations

import functools
import gc
import inspect
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["clear_device_cache", "find_executable_batch_size", "release_memory", "should_reduce_batch_size"]

# Message fragments of allocator failures that a smaller batch can fix (as torch and its device plugins word them).
_OOM_MESSAGES = (
    " out of memory.",  # CUDA, ROCm and XPU caching allocators
    "MPS backend out of memory",
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED.",  # cuDNN rejects some very large batches
    "DefaultCPUAllocator: can't allocate memory",  # CPU allocator
    "FATAL ERROR :: MODULE:PT_DEVMEM Allocation failed",  # Gaudi
)


def clear_device_cache(garbage_collection: bool = False) -> None:
    """Return cached, unused device memory to the driver (CUDA, XPU or MPS); optionally run ``gc.collect()`` first.

    ``garbage_collection=True`` is slow; use it between trials, not every step.

    Example:
        >>> clear_device_cache(garbage_collection=True)
    """
    if garbage_collection:
        gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    elif hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.empty_cache()
    elif torch.backends.mps.is_available():
        torch.mps.empty_cache()


def release_memory(*objects: Any) -> list[None]:
    """Drop references to ``objects``, collect garbage and empty the device cache; reassign the returned ``None``s.

    Example:
        >>> a, b = torch.ones(4), torch.ones(4)
        >>> a, b = release_memory(a, b)
        >>> a is None and b is None
        True
    """
    released: list[Any] = list(objects)
    for i in range(len(released)):
        released[i] = None
    del objects
    clear_device_cache(garbage_collection=True)
    return released


def should_reduce_batch_size(exception: Exception) -> bool:
    """True when ``exception`` is an out-of-memory error that a smaller batch may avoid.

    Recognises ``torch.OutOfMemoryError`` and ``RuntimeError``s carrying the CUDA/XPU/MPS/CPU allocator or
    cuDNN "not supported" messages.

    Example:
        >>> should_reduce_batch_size(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        True
        >>> should_reduce_batch_size(ValueError("bad shape"))
        False
    """
    if isinstance(exception, torch.OutOfMemoryError):
        return True
    if isinstance(exception, RuntimeError) and len(exception.args) == 1 and isinstance(exception.args[0], str):
        return any(fragment in exception.args[0] for fragment in _OOM_MESSAGES)
    return False


def find_executable_batch_size(
    function: Callable[..., Any] | None = None,
    starting_batch_size: int = 128,
    reduce_batch_size_fn: Callable[[], int] | None = None,
) -> Callable[..., Any]:
    """Decorator: call ``function(batch_size, *args, **kwargs)``, shrinking ``batch_size`` after each OOM error.

    The batch size starts at ``starting_batch_size``; after an error recognised by :func:`should_reduce_batch_size`
    it becomes ``int(batch_size * 0.9)`` (Accelerate 1.15's rule) or whatever ``reduce_batch_size_fn()`` returns.
    At 0 a ``RuntimeError("No executable batch size found, reached zero.")`` is raised. Other errors propagate
    unchanged. Call the decorated function *without* its batch size: the decorator supplies it. The size that
    worked is remembered for the next call.

    Example:
        >>> @find_executable_batch_size(starting_batch_size=64)
        ... def train(batch_size, lr):
        ...     return batch_size, lr
        >>> train(0.1)
        (64, 0.1)
    """
    if function is None:
        return functools.partial(
            find_executable_batch_size,
            starting_batch_size=starting_batch_size,
            reduce_batch_size_fn=reduce_batch_size_fn,
        )
    if not callable(function):
        raise TypeError(f"find_executable_batch_size decorates a function; got {function!r}")

    batch_size = starting_batch_size

    def _shrink() -> int:
        return int(batch_size * 0.9)

    shrink = reduce_batch_size_fn if reduce_batch_size_fn is not None else _shrink
    params = list(inspect.signature(function).parameters.values())
    name = getattr(function, "__name__", "function")

    @functools.wraps(function)
    def decorator(*args: Any, **kwargs: Any) -> Any:
        nonlocal batch_size
        _refuse_explicit_batch_size(name, params, args, kwargs)
        clear_device_cache(garbage_collection=True)
        while True:
            if batch_size <= 0:
                raise RuntimeError("No executable batch size found, reached zero.")
            try:
                return function(batch_size, *args, **kwargs)
            except Exception as err:
                if not should_reduce_batch_size(err):
                    raise
                del err  # the traceback holds the failed trial's tensors; drop it before collecting
                clear_device_cache(garbage_collection=True)
                batch_size = shrink()

    return decorator


def _refuse_explicit_batch_size(
    name: str, params: list[inspect.Parameter], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Raise when the caller passed the batch size the decorator is meant to supply."""
    if not params:
        raise TypeError(f"`{name}` must take the batch size as its first parameter, e.g. def {name}(batch_size, ...)")
    first = params[0].name
    if first in kwargs:
        raise TypeError(
            f"`{name}` was called with {first}={kwargs[first]!r}, but find_executable_batch_size supplies the batch "
            f"size itself; call it without that argument"
        )
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return  # *args accepts any number of positionals, so counting cannot tell
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) + 1 > len(positional):
        shown = ", ".join(f"{p.name}={a!r}" for p, a in zip(positional[1:], args[1:]))
        raise TypeError(
            f"`{name}` got {len(args)} positional argument(s) but takes {len(positional) - 1} besides the batch size: "
            f"the batch size was probably passed as the first argument. find_executable_batch_size supplies it; "
            f"call `{name}({shown})` instead"
        )
