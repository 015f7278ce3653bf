"""Seeding and cross-process synchronisation of random number generators.

Example:
    >>> import torch
    >>> set_seed(0); a = torch.rand(1)
    >>> set_seed(0); bool((torch.rand(1) == a).all())
    True
"""

from __future__ import annotations

import operator
import random
from collections.abc import Iterable

import torch
import torch.distributed as dist

from .dataclasses import RNGType

__all__ = ["set_seed", "synchronize_rng_state", "synchronize_rng_states"]

_MAX_SEED = 2**64 - 1  # torch.manual_seed's range
_NUMPY_SEED_SPAN = 2**32  # numpy's legacy global seed accepts 0 .. 2**32 - 1


def set_seed(seed: int, device_specific: bool = False, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy (when installed), torch on CPU and every CUDA device.

    Args:
        seed: a non-negative integer (NumPy receives ``seed % 2**32``).
        device_specific: add this process's rank to the seed, so each rank draws different numbers.
        deterministic: also call ``torch.use_deterministic_algorithms(True)`` (slower; on CUDA it may need
            ``CUBLAS_WORKSPACE_CONFIG=:4096:8``).

    Example:
        >>> set_seed(42, device_specific=True)  # rank r uses seed 42 + r
    """
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"set_seed got seed={seed!r} ({type(seed).__name__}); pass an integer such as 42") from None
    if device_specific:
        from ..state import PartialState  # late import: state imports utils

        seed += PartialState().process_index
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"set_seed got seed={seed}; it must be between 0 and 2**64 - 1")
    random.seed(seed)
    try:
        import numpy as np  # optional: seeded only when present
    except ImportError:
        pass
    else:
        np.random.seed(seed % _NUMPY_SEED_SPAN)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)  # queued lazily; harmless without CUDA
    if deterministic:
        torch.use_deterministic_algorithms(True)


def _multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def synchronize_rng_state(rng_type: RNGType | str | None = None, generator: torch.Generator | None = None) -> None:
    """Make this RNG's state on every rank equal to rank 0's (a broadcast; nothing at world size 1).

    ``rng_type`` is ``"torch"`` (the CPU generator), ``"cuda"`` (this device's generator; skipped when CUDA is not
    available) or ``"generator"`` (``generator``'s state).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> synchronize_rng_state("generator", generator=g)
    """
    allowed = ", ".join(repr(t.value) for t in RNGType)
    try:
        kind = RNGType(rng_type)
    except ValueError:
        raise ValueError(f"synchronize_rng_state got rng_type={rng_type!r}; use one of {allowed}") from None
    if kind == RNGType.GENERATOR and generator is None:
        raise ValueError("synchronize_rng_state(rng_type='generator') needs generator=<the torch.Generator to sync>")
    if kind == RNGType.CUDA and not torch.cuda.is_available():
        return  # no CUDA generator exists on this machine, so there is nothing to keep in step
    if not _multi_process():
        return
    if kind == RNGType.TORCH:
        state = torch.get_rng_state()
    elif kind == RNGType.CUDA:
        state = torch.cuda.get_rng_state()
    else:
        assert generator is not None
        state = generator.get_state()
    # The state is a CPU byte tensor; nccl can only move it on the GPU.
    on_gpu = "nccl" in str(dist.get_backend()) and "gloo" not in str(dist.get_backend())
    payload = state.to(torch.device("cuda", torch.cuda.current_device())) if on_gpu else state.clone()
    dist.broadcast(payload, src=0)
    state = payload.cpu()
    if kind == RNGType.TORCH:
        torch.set_rng_state(state)
    elif kind == RNGType.CUDA:
        torch.cuda.set_rng_state(state)
    else:
        assert generator is not None
        generator.set_state(state)


def synchronize_rng_states(rng_types: Iterable[RNGType | str], generator: torch.Generator | None = None) -> None:
    """Call :func:`synchronize_rng_state` for each entry of ``rng_types``.

    Example:
        >>> synchronize_rng_states(["torch"])
    """
    if isinstance(rng_types, str):
        raise TypeError(
            f"synchronize_rng_states needs a list of RNG types; got the string {rng_types!r}; wrap it: [{rng_types!r}]"
        )
    for rng_type in rng_types:
        synchronize_rng_state(rng_type, generator=generator)
