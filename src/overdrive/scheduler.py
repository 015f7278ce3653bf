"""The prepared learning-rate scheduler: steps in step with the optimizer.

Example:
    >>> import torch
    >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    >>> sched = AcceleratedScheduler(torch.optim.lr_scheduler.StepLR(opt, 1), opt, step_with_optimizer=False)
    >>> opt.step(); sched.step(); sched.get_last_lr()
    [0.1]
"""

from __future__ import annotations

from typing import Any

from .state import GradientState, PartialState

__all__ = ["AcceleratedScheduler", "DeepSpeedSchedulerWrapper"]


class AcceleratedScheduler:
    """Wraps an LR scheduler so that its schedule counts optimizer updates across processes, as Accelerate does.

    With ``step_with_optimizer=True`` (the default): on accumulation micro-steps the scheduler does not step; on a
    sync step it steps once per process (``num_processes`` times) unless ``split_batches`` is set, so a schedule
    written for single-process sample counts stays correct when each update sees ``num_processes`` batches. When
    the optimizer skipped its step (fp16 overflow), the scheduler does not step either.
    """

    def __init__(  # noqa: D107
        self,
        scheduler: Any,
        optimizers: Any,
        step_with_optimizer: bool = True,
        split_batches: bool = False,
    ) -> None:
        self.scheduler = scheduler
        self.optimizers = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
        self.split_batches = split_batches
        self.step_with_optimizer = step_with_optimizer
        self.gradient_state = GradientState()

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Advance the schedule according to the rules above."""
        if not self.step_with_optimizer:
            self.scheduler.step(*args, **kwargs)
            return
        if not self.gradient_state.sync_gradients:
            if self.gradient_state.adjust_scheduler:
                # Keeps torch's "optimizer.step() before lr_scheduler.step()" check quiet on micro-steps.
                self.scheduler._step_count += 1
            return
        if any(getattr(opt, "step_was_skipped", False) for opt in self.optimizers):
            return
        repeats = 1 if self.split_batches else PartialState().num_processes
        for _ in range(repeats):
            total = getattr(self.scheduler, "total_steps", None)
            # OneCycleLR raises past its total; stop at the end of the schedule instead.
            if total is not None and self.scheduler.last_epoch >= total:
                break
            self.scheduler.step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)

    def get_lr(self) -> list[float]:
        return self.scheduler.get_lr()

    def print_lr(self, *args: Any, **kwargs: Any) -> Any:
        return self.scheduler.print_lr(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Anything else (last_epoch, base_lrs, ...) is the wrapped scheduler's.
        if name == "scheduler":
            raise AttributeError(name)
        return getattr(self.scheduler, name)


class DeepSpeedSchedulerWrapper(AcceleratedScheduler):
    """The scheduler ``prepare`` returns for a scheduler DeepSpeed owns (one from the DeepSpeed config, a
    ``DummyScheduler`` callable or a ``deepspeed.runtime.lr_schedules`` object): ``step`` does nothing because the
    engine steps it in its own step.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        >>> sched = DeepSpeedSchedulerWrapper(torch.optim.lr_scheduler.StepLR(opt, 1), [opt])
        >>> sched.step(); sched.get_last_lr()
        [1.0]
    """

    def step(self, *args: Any, **kwargs: Any) -> None:
        pass  # the engine stepped it inside accelerator.backward
