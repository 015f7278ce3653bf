"""Out-of-memory helpers: retry with a smaller batch, release objects, empty the device cache.

With several processes, :func:`find_executable_batch_size` agrees across ranks: an out-of-memory error on any one
rank makes every rank retry with the same smaller batch size, and a non-OOM error on one rank stops the others with
an error naming that rank instead of leaving them waiting in a collective.

Example:
    >>> @find_executable_batch_size(starting_batch_size=8)
    ... def run(batch_size):
    ...     return batch_size
    >>> run()
    8
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from .. import debug as _debug

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

    **Several processes.** An OOM on one rank leaves the others running the same attempt, soon inside a collective
    the failed rank never joins. So while an attempt runs, every rank meets the others at *sync points* -- the end
    of each forward of a model ``prepare()`` wrapped for data parallelism (DDP), each optimizer step, each overdrive collective, and the
    end of the attempt -- with one small all-gather of its status. A rank that hit an OOM meets the others at their
    next sync point; then every rank leaves the attempt, calls ``reduce_batch_size_fn`` (or the 0.9 rule), takes the
    minimum over ranks, and retries with that same size. A non-OOM error is re-raised unchanged on its rank and
    stops the others with a ``RuntimeError`` naming it. The decorated function must build its model, optimizer and
    data loaders from ``batch_size`` inside its body (and may call ``accelerator.free_memory()`` first), so each
    attempt starts from fresh, identical state on every rank. Limit: an OOM *inside* ``backward()`` on one rank,
    while the others are already in DDP's gradient all-reduce, cannot be met there; the hang watchdog then stops the
    job with every rank's stack instead of a silent hang.

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
    if isinstance(starting_batch_size, bool) or not isinstance(starting_batch_size, int) or starting_batch_size < 1:
        raise (ValueError if isinstance(starting_batch_size, int) else TypeError)(
            f"find_executable_batch_size(starting_batch_size={starting_batch_size!r}): it must be an int >= 1, the "
            "first batch size to try (e.g. 128)"
        )
    if reduce_batch_size_fn is not None and not callable(reduce_batch_size_fn):
        raise TypeError(
            f"find_executable_batch_size(reduce_batch_size_fn={reduce_batch_size_fn!r}): it must be a function "
            "taking no argument that returns the next batch size, or None for the 0.9 rule"
        )

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
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        while True:
            if batch_size <= 0:
                raise RuntimeError("No executable batch size found, reached zero.")
            if world == 1:
                try:
                    return function(batch_size, *args, **kwargs)
                except Exception as err:
                    if not should_reduce_batch_size(err):
                        raise
                    del err  # the traceback holds the failed trial's tensors; drop it before collecting
                    clear_device_cache(garbage_collection=True)
                    batch_size = shrink()
                continue
            attempt = _Attempt(world, batch_size)
            try:
                with attempt.running():
                    result = function(batch_size, *args, **kwargs)
            except _PeerStop:
                pass  # another rank failed; the verdict is in `attempt`
            except Exception as err:
                oom = should_reduce_batch_size(err)
                attempt.sync(_OOM if oom else _ERROR)
                if not oom:
                    raise
                del err
            else:
                attempt.sync(_DONE)
                if attempt.verdict == _DONE:
                    return result
                del result
            attempt.raise_if_failed(name)
            clear_device_cache(garbage_collection=True)
            batch_size = attempt.agree_on_size(shrink())

    return decorator


# Statuses exchanged at each sync point of a multi-process attempt.
_RUNNING, _DONE, _OOM, _ERROR = 0, 1, 2, 3


class _PeerStop(Exception):
    """Raised at a sync point on a rank whose attempt must end because another rank failed."""


class _Attempt:
    """One multi-process attempt of find_executable_batch_size: sync points and their verdict."""

    def __init__(self, world: int, batch_size: int) -> None:
        self.world, self.batch_size = world, batch_size
        self.verdict = _RUNNING
        self.statuses: list[int] = []

    def _device(self) -> torch.device:
        from .operations import _comm_device

        return _comm_device(None)

    def sync(self, status: int) -> int:
        """All-gather this rank's status; the verdict is the worst one (error > OOM > done/running)."""
        mine = torch.tensor([status, self.batch_size], dtype=torch.int64, device=self._device())
        rows = [torch.empty_like(mine) for _ in range(self.world)]
        with _debug.waiting("find_executable_batch_size agreement"):
            dist.all_gather(rows, mine)
        table = [r.cpu().tolist() for r in rows]
        self.statuses = [int(r[0]) for r in table]
        sizes = {int(r[1]) for r in table}
        if len(sizes) > 1:
            self.verdict = _ERROR
            raise RuntimeError(
                f"find_executable_batch_size: the ranks are trying different batch sizes {[r[1] for r in table]}; "
                "every rank must decorate the same function with the same starting_batch_size"
            )
        worst = max(self.statuses)
        if worst in (_OOM, _ERROR):
            self.verdict = worst
        elif _DONE in self.statuses and _RUNNING in self.statuses:
            self.verdict = _ERROR
            raise RuntimeError(
                "find_executable_batch_size: rank(s) "
                f"{[r for r, s in enumerate(self.statuses) if s == _DONE]} finished the attempt while rank(s) "
                f"{[r for r, s in enumerate(self.statuses) if s == _RUNNING]} were still running it (they made a "
                "different number of forward passes, optimizer steps or collectives); every rank must run the same "
                "steps"
            )
        else:
            self.verdict = worst
        return self.verdict

    def checkpoint(self) -> None:
        """A sync point inside the attempt: ends this rank's attempt when another rank failed."""
        if self.sync(_RUNNING) in (_OOM, _ERROR):
            raise _PeerStop()

    def _forward_hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        from ..state import _LIVE_WRAPPERS  # the DDP-like wrappers prepare() made: their backward all-reduces

        if module in _LIVE_WRAPPERS:
            self.checkpoint()

    def _step_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.checkpoint()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        forward = torch.nn.modules.module.register_module_forward_hook(self._forward_hook)
        step = register_optimizer_step_post_hook(self._step_hook)
        _debug.set_sync_hook(self.checkpoint)
        try:
            yield
        finally:
            _debug.set_sync_hook(None)
            forward.remove()
            step.remove()

    def raise_if_failed(self, name: str) -> None:
        if self.verdict == _ERROR:
            failed = [r for r, s in enumerate(self.statuses) if s == _ERROR]
            raise RuntimeError(
                f"find_executable_batch_size: rank(s) {failed} raised an error other than out-of-memory while "
                f"running `{name}` with batch size {self.batch_size} (see the traceback on those ranks); this rank "
                f"stops too instead of waiting for them (rank {dist.get_rank()} reporting)"
            )

    def agree_on_size(self, local: int) -> int:
        """The smallest of every rank's next size, so all ranks retry alike."""
        size = torch.tensor([int(local)], dtype=torch.int64, device=self._device())
        with _debug.waiting("find_executable_batch_size agreement"):
            dist.all_reduce(size, dist.ReduceOp.MIN)
        return int(size.item())


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
