"""One process, one device: the null strategy (no wrapping, no communication).

Example:
    >>> import torch
    >>> from overdrive.precision import Precision
    >>> from overdrive.state import PartialState
    >>> s = SingleDeviceStrategy(PartialState(), Precision())
    >>> m = torch.nn.Linear(2, 2)
    >>> s.prepare_model(m) is m
    True
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..utils.dataclasses import DistributedType
from .base import Strategy

__all__ = ["SingleDeviceStrategy"]


class SingleDeviceStrategy(Strategy):
    """Runs the model as it is on the process's device."""

    @property
    def distributed_type(self) -> DistributedType:  # type: ignore[override]
        return DistributedType.NO

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model
