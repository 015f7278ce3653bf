"""The prepared optimizer: steps and zeroes gradients only on synchronisation steps.

Example:
    >>> import torch
    >>> from overdrive.precision import Precision
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = AcceleratedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), precision=Precision())
    >>> opt.step_was_skipped
    False
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .precision import Precision
from .state import GradientState

__all__ = ["AcceleratedOptimizer", "DeepSpeedOptimizerWrapper"]


class AcceleratedOptimizer(torch.optim.Optimizer):
    """Wraps a user optimizer; ``step``/``zero_grad`` act only when ``GradientState().sync_gradients`` is True.

    On accumulation micro-steps both are no-ops, so a loop that calls them every micro-batch accumulates exactly
    ``gradient_accumulation_steps`` micro-batches per update. Under fp16 the step goes through the loss scaler and
    :attr:`step_was_skipped` says whether inf/nan gradients made it skip.
    """

    # Deliberately not calling Optimizer.__init__: this object shares the wrapped optimizer's state, it owns none.
    def __init__(  # noqa: D107
        self,
        optimizer: torch.optim.Optimizer,
        device_placement: bool = True,
        scaler: Any = None,
        precision: Precision | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.precision = precision or Precision()
        self.scaler = self.precision.scaler if scaler is None else scaler
        self.device_placement = device_placement
        self.gradient_state = GradientState()
        self._is_overflow = False

    # -- the wrapped optimizer's public state --------------------------------------------------------------------

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, state: Any) -> None:
        self.optimizer.state = state

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, param_groups: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = param_groups

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults: dict[str, Any]) -> None:
        self.optimizer.defaults = defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    # -- gated actions ---------------------------------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.gradient_state.sync_gradients:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        if self.gradient_state.sync_gradients:
            self._is_overflow = not self.precision.optimizer_step(self.optimizer, closure)

    def train(self) -> None:
        """Switch schedule-free optimizers to training mode (no-op for others)."""
        if hasattr(self.optimizer, "train"):
            self.optimizer.train()

    def eval(self) -> None:
        """Switch schedule-free optimizers to evaluation mode (no-op for others)."""
        if hasattr(self.optimizer, "eval"):
            self.optimizer.eval()

    @property
    def step_was_skipped(self) -> bool:
        """True when the last optimizer step was skipped because of inf/nan gradients (fp16 only)."""
        return self._is_overflow

    @property
    def is_overflow(self) -> bool:
        """Alias of :attr:`step_was_skipped` (older Accelerate name)."""
        return self._is_overflow

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"AcceleratedOptimizer({self.optimizer!r})"


class DeepSpeedOptimizerWrapper(AcceleratedOptimizer):
    """The optimizer ``prepare`` returns under DeepSpeed: ``step``/``zero_grad`` do nothing, because
    ``accelerator.backward`` already ran the engine's step (which steps and zeroes at the end of each accumulation
    window). State, param groups and ``state_dict`` are the DeepSpeed optimizer's.

    Example:
        >>> import torch
        >>> opt = DeepSpeedOptimizerWrapper(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1))
        >>> opt.step(); opt.zero_grad(); opt.step_was_skipped
        False
    """

    def __init__(self, optimizer: Any) -> None:  # noqa: D107
        super().__init__(optimizer, device_placement=False, precision=Precision())

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass  # the engine zeroes gradients in its step

    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        pass  # the engine stepped inside accelerator.backward

    @property
    def step_was_skipped(self) -> bool:
        """True when the engine's last step was skipped for inf/nan gradients (fp16 loss scaling)."""
        return bool(getattr(self.optimizer, "overflow", False))

    @property
    def is_overflow(self) -> bool:
        """Alias of :attr:`step_was_skipped`."""
        return self.step_was_skipped
