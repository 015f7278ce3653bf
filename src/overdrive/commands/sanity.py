"""The worker of ``overdrive test``: a short real multi-process run of the installed library, checked against torch.

Run by ``overdrive test`` through ``overdrive launch`` (two CPU processes by default). Each rank checks the process
group, a gather and a reduce, then trains a tiny linear model with gradient accumulation through
``Accelerator.prepare`` and compares the weights with a plain single-process PyTorch loop over the same global
batches. Every rank prints ``overdrive test: rank R of N OK`` or raises.

Example:
    >>> reference_weights(steps=1, micro=2, accumulation=1, world=1).shape
    torch.Size([1, 4])
"""

from __future__ import annotations

import gc
import sys

from typing import Any

import torch

__all__ = ["main", "reference_weights"]

FEATURES = 4


def _data(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, FEATURES, generator=gen)
    return x, x @ torch.arange(1.0, FEATURES + 1).unsqueeze(1) + 0.5


def _model() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(FEATURES, 1)


def reference_weights(steps: int, micro: int, accumulation: int, world: int) -> torch.Tensor:
    """Plain PyTorch: SGD on the mean loss of each global batch (world x micro samples, ``accumulation`` times).

    Example:
        >>> reference_weights(steps=2, micro=2, accumulation=2, world=2).dtype
        torch.float32
    """
    x, y = _data(steps * accumulation * world * micro)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    per_step = world * micro
    for step in range(steps):
        opt.zero_grad()
        for k in range(accumulation):
            start = (step * accumulation + k) * per_step
            loss = torch.nn.functional.mse_loss(model(x[start : start + per_step]), y[start : start + per_step])
            (loss / accumulation).backward()
        opt.step()
    return model.weight.detach().clone()


def main() -> int:
    """Run the checks on this rank; returns 0 (a failed check raises)."""
    from overdrive import Accelerator

    steps, micro, accumulation = 3, 2, 2
    accelerator = Accelerator(gradient_accumulation_steps=accumulation)
    rank, world = accelerator.process_index, accelerator.num_processes
    gathered = accelerator.gather(torch.tensor([rank]))
    assert gathered.tolist() == list(range(world)), f"rank {rank}: gather gave {gathered.tolist()}"
    total = accelerator.reduce(torch.tensor([rank + 1.0]), reduction="sum")
    assert total.item() == world * (world + 1) / 2, f"rank {rank}: reduce gave {total.item()}"

    x, y = _data(steps * accumulation * world * micro)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=micro)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    prepared: Any = accelerator.prepare(model, opt, loader)
    model, opt, loader = prepared
    for xb, yb in loader:
        with accelerator.accumulate(model):
            accelerator.backward(torch.nn.functional.mse_loss(model(xb), yb))
            opt.step()
            opt.zero_grad()
    weights = torch.as_tensor(accelerator.unwrap_model(model).get_parameter("weight")).detach()
    expected = reference_weights(steps, micro, accumulation, world)
    assert torch.allclose(weights, expected, atol=1e-6), f"rank {rank}: {weights.tolist()} != {expected.tolist()}"
    sys.stdout.write(f"overdrive test: rank {rank} of {world} OK ({accelerator.distributed_type}, "
                     f"{accelerator.device}, mixed_precision={accelerator.mixed_precision})\n")
    sys.stdout.flush()
    del model, opt, loader  # no DDP reference may outlive the group (gloo's exit abort)
    gc.collect()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
