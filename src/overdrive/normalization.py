"""Exact loss normalisation over an accumulation window: ``accelerator.backward(loss_sum, num_items=n)``.

The usual recipe (each micro-batch's *mean* loss divided by the accumulation steps, then averaged over ranks) is a
mean of means: with variable-length batches it weights a token of a short batch more than a token of a long one,
so the update is not the gradient of the global-batch mean. Here each rank backpropagates the *sum* of its per-item
losses, unscaled, and counts its items; on the window's synchronisation step one scalar all-reduce gives the global
item count N and the summed gradients are rescaled once:

    grad = (sum over ranks and micro-steps of d loss_sum) / N

which is exactly the gradient of the global-batch mean, whatever the lengths, also for a shorter last window.
Scaling happens before clipping and the optimizer step; it is linear, so it composes with fp16 loss scaling.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(1))
    >>> window = ItemWindow()
    >>> (w * 3.0).sum().backward(); window.add(2)
    >>> (w * 5.0).sum().backward(); window.add(2)
    >>> window.finish([w], average_divisor=1); w.grad
    tensor([2.])
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = ["ItemWindow"]


class ItemWindow:
    """Counts items over one accumulation window and rescales the accumulated gradients at its end."""

    def __init__(self) -> None:
        self.count: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        """True between the first ``add`` of a window and its ``finish``."""
        return self.count is not None

    def add(self, num_items: int | float | torch.Tensor, device: torch.device | str = "cpu") -> None:
        """Add this micro-step's item count (an int, float or tensor; kept on its device, no host sync)."""
        if isinstance(num_items, bool) or not isinstance(num_items, (int, float, torch.Tensor)):
            raise TypeError(f"num_items must be an int or a tensor, got {type(num_items).__name__}")
        if isinstance(num_items, torch.Tensor):
            if num_items.numel() != 1:
                raise ValueError(f"num_items must be a single count, got a tensor of shape {tuple(num_items.shape)}")
            value = num_items.detach().reshape(()).to(torch.float64)
        else:
            if num_items < 0:
                raise ValueError(f"num_items={num_items} must be >= 0 (the number of items summed in the loss)")
            value = torch.tensor(float(num_items), dtype=torch.float64, device=device)
        self.count = value if self.count is None else self.count + value.to(self.count.device)

    def finish(self, parameters: Iterable[torch.nn.Parameter], average_divisor: int) -> None:
        """Rescale gradients to the global per-item mean and start a new window.

        ``average_divisor`` is what the strategy's gradient synchronisation already divided by (DDP averages over
        ranks, so it is the world size; 1 without data parallelism).
        """
        if self.count is None:
            return
        total = self.count
        self.count = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            total = total.clone()
            dist.all_reduce(total)  # the one extra collective per optimizer step: a float64 scalar
        # An empty window (no items anywhere) has zero gradients; keep them zero rather than 0/0.
        factor = torch.where(total > 0, average_divisor / total.clamp_min(1e-300), torch.zeros_like(total))
        grads = [p.grad for p in parameters if p.grad is not None]
        for dtype in {g.dtype for g in grads}:
            same = [g for g in grads if g.dtype == dtype]
            torch._foreach_mul_(same, factor.to(device=same[0].device, dtype=dtype))
