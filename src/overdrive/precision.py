"""Precision policies: how forward runs (autocast), how loss gradients are scaled, how the optimizer steps.

``"no"`` is a real object that does nothing (:class:`FullPrecision`), so the rest of the library never checks for
``None``. ``"bf16"`` autocasts to bfloat16. ``"fp16"`` autocasts to float16 and scales the loss with
``torch.amp.GradScaler``; it works on CPU too (torch's CPU autocast and CPU GradScaler), about 6x slower than fp32 on
CPU, which is why on CPU bf16 is the recommended low-precision mode. ``"fp8"`` is not implemented.

Example:
    >>> policy = make_precision("bf16", torch.device("cpu"))
    >>> with policy.autocast():
    ...     torch.ones(2, 2) @ torch.ones(2, 2)
    tensor([[2., 2.],
            [2., 2.]], dtype=torch.bfloat16)
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable
from typing import Any

import torch

from .utils.dataclasses import AutocastKwargs, GradScalerKwargs
from .utils.operations import convert_to_fp32

__all__ = ["AutocastPrecision", "FullPrecision", "GradScalerPrecision", "Precision", "make_precision", "remove_autocast_wrapper"]

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16", "fp8")


class Precision:
    """The policy interface; the base class itself is full fp32 precision (every hook is a no-op).

    Example:
        >>> Precision().name
        'no'
    """

    name = "no"
    dtype: torch.dtype | None = None

    def __init__(self, device: torch.device | None = None, autocast_kwargs: AutocastKwargs | None = None) -> None:
        self.device = device or torch.device("cpu")
        self.autocast_kwargs = autocast_kwargs or AutocastKwargs()

    def autocast(self, autocast_handler: AutocastKwargs | None = None) -> contextlib.AbstractContextManager[Any]:
        """Context in which forward computations run in the policy's dtype (a null context for fp32)."""
        return contextlib.nullcontext()

    def wrap_forward(self, model: torch.nn.Module) -> None:
        """Make ``model.forward`` run under :meth:`autocast` and return fp32 outputs (kept as Accelerate does)."""

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Backpropagate ``loss`` (already divided by the accumulation steps)."""
        loss.backward(**kwargs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale before clipping (no-op without loss scaling)."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        """Step ``optimizer``; return False when the step was skipped (inf/nan gradients under fp16)."""
        optimizer.step(closure) if closure is not None else optimizer.step()
        return True

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The loss scaler, if this policy has one."""
        return None


FullPrecision = Precision


class AutocastPrecision(Precision):
    """bf16 (or another dtype) autocast without loss scaling.

    Example:
        >>> AutocastPrecision(torch.device("cpu")).dtype
        torch.bfloat16
    """

    name = "bf16"
    dtype = torch.bfloat16

    def _autocast_arguments(self, handler: AutocastKwargs) -> dict[str, Any]:
        # AutocastKwargs.to_kwargs() builds a default instance to compare with: done once per handler, not per call.
        kwargs = handler.to_kwargs()
        kwargs.pop("enabled", None)
        return {"device_type": self.device.type, "dtype": self.dtype, "enabled": handler.enabled, **kwargs}

    def autocast(self, autocast_handler: AutocastKwargs | None = None) -> contextlib.AbstractContextManager[Any]:
        if autocast_handler is not None:
            return torch.autocast(**self._autocast_arguments(autocast_handler))
        cached = self.__dict__.get("_default_autocast")
        if cached is None:
            cached = self.__dict__["_default_autocast"] = self._autocast_arguments(self.autocast_kwargs)
        return torch.autocast(**cached)

    def wrap_forward(self, model: torch.nn.Module) -> None:
        if hasattr(model, "_overdrive_original_forward"):
            return  # already wrapped (model prepared twice)
        original = model.forward
        arguments = self._autocast_arguments(self.autocast_kwargs)
        half = (torch.float16, torch.bfloat16)

        # One function layer, arguments computed once: this runs on every forward call.
        def forward(self_: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            with torch.autocast(**arguments):
                out = original(*args, **kwargs)
            # fp32 outputs let the user's loss code stay unchanged (Accelerate's convert_outputs_to_fp32); a plain
            # tensor, the common output, skips the walk over nested containers.
            if isinstance(out, torch.Tensor):
                return out.float() if out.dtype in half else out
            return convert_to_fp32(out)

        forward.__wrapped__ = original  # type: ignore[attr-defined]
        model.__dict__["_overdrive_original_forward"] = original  # read back by remove_autocast_wrapper
        model.forward = types.MethodType(forward, model)  # type: ignore[method-assign]


class GradScalerPrecision(AutocastPrecision):
    """fp16 autocast with dynamic loss scaling (``torch.amp.GradScaler``), on GPU and on CPU.

    Example:
        >>> GradScalerPrecision(torch.device("cpu")).scaler.get_scale()
        65536.0
    """

    name = "fp16"
    dtype = torch.float16

    def __init__(
        self,
        device: torch.device | None = None,
        autocast_kwargs: AutocastKwargs | None = None,
        scaler_kwargs: GradScalerKwargs | None = None,
    ) -> None:
        super().__init__(device, autocast_kwargs)
        self._scaler = torch.amp.GradScaler(self.device.type, **(scaler_kwargs or GradScalerKwargs()).to_kwargs())

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self._scaler

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        self._scaler.scale(loss).backward(**kwargs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        # GradScaler remembers per optimizer that it unscaled, so the later step does not unscale twice.
        self._scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        before = self._scaler.get_scale()
        self._scaler.step(optimizer, closure) if closure is not None else self._scaler.step(optimizer)
        self._scaler.update()
        # The scale only shrinks when inf/nan gradients made the scaler skip optimizer.step().
        return self._scaler.get_scale() >= before


def remove_autocast_wrapper(model: torch.nn.Module) -> None:
    """Undo :meth:`AutocastPrecision.wrap_forward` on ``model`` (no-op when it was not wrapped).

    Example:
        >>> m = torch.nn.Linear(1, 1)
        >>> AutocastPrecision(torch.device("cpu")).wrap_forward(m); remove_autocast_wrapper(m)
        >>> "forward" in m.__dict__
        False
    """
    original = model.__dict__.pop("_overdrive_original_forward", None)
    if original is None:
        return
    if getattr(original, "__func__", None) is type(model).forward:
        model.__dict__.pop("forward", None)  # back to the class's own forward
    else:
        model.forward = original  # type: ignore[method-assign]


def make_precision(
    mixed_precision: str,
    device: torch.device,
    autocast_kwargs: AutocastKwargs | None = None,
    scaler_kwargs: GradScalerKwargs | None = None,
) -> Precision:
    """Build the policy for ``mixed_precision`` ('no', 'fp16', 'bf16').

    Example:
        >>> make_precision("no", torch.device("cpu")).name
        'no'
    """
    if mixed_precision == "no":
        return Precision(device, autocast_kwargs)
    if mixed_precision in ("fp16", "bf16"):
        _check_device_supports(mixed_precision, device)
    if mixed_precision == "bf16":
        return AutocastPrecision(device, autocast_kwargs)
    if mixed_precision == "fp16":
        return GradScalerPrecision(device, autocast_kwargs, scaler_kwargs)
    if mixed_precision == "fp8":
        raise NotImplementedError(
            "mixed_precision='fp8' is not implemented yet; use 'bf16' (or 'fp16' with loss scaling) instead"
        )
    raise ValueError(
        f"mixed_precision={mixed_precision!r} is not one of {', '.join(repr(c) for c in MIXED_PRECISION_CHOICES)}"
    )


def _check_device_supports(mixed_precision: str, device: torch.device) -> None:
    """Refuse, before training starts, a precision the device cannot run (instead of a failure inside forward)."""
    from torch.amp.autocast_mode import is_autocast_available

    if not is_autocast_available(device.type):
        raise ValueError(
            f"mixed_precision={mixed_precision!r} needs autocast, which device {str(device)!r} does not support; "
            "use mixed_precision='no' on this device, or run on CPU/GPU"
        )
    if mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"mixed_precision='bf16' needs a GPU with bfloat16 support, and {torch.cuda.get_device_name(device)} lacks "
            "it; use mixed_precision='fp16' (loss scaling) or 'no'"
        )
