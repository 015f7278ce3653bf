"""Worker: join_uneven_inputs lets rank 0 train on more batches than rank 1 without a hang.

14 samples, batch 2, 2 ranks, even_batches overridden to False: rank 0 gets batches 0, 2, 4, 6, rank 1 gets 1, 3,
5. torch's Join makes rank 1 shadow rank 0's last all-reduce with zeros (divided by the initial world size), so the
last update is rank 0's gradient / 2. Weights are compared with that rule computed by hand in one process.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.nn.functional as F
from torch import nn

from overdrive import Accelerator, InitProcessGroupKwargs

RANK = int(os.environ["RANK"])


def make() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(14, 4, generator=g), torch.randn(14, 1, generator=g)
    torch.manual_seed(0)
    return nn.Linear(4, 1), x, y


def reference() -> list[torch.Tensor]:
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 14, 2)]
    for step in range(4):
        grads = []
        for rank in (0, 1):
            k = 2 * step + rank
            if k < len(batches):
                model.zero_grad()
                F.mse_loss(model(batches[k][0]), batches[k][1]).backward()
                grads.append([p.grad.clone() for p in model.parameters()])
        for i, p in enumerate(model.parameters()):
            p.grad = sum(g[i] for g in grads) / 2  # a joined rank contributes zeros; divisor stays 2
        opt.step()
    return [p.detach() for p in model.parameters()]


if __name__ == "__main__":
    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=30))])
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    model, opt, dl = acc.prepare(model, opt, dl)
    steps = 0
    with acc.join_uneven_inputs([model], even_batches=False):
        for xb, yb in dl:
            acc.backward(F.mse_loss(model(xb), yb))
            opt.step()
            opt.zero_grad()
            steps += 1
    assert steps == (4 if RANK == 0 else 3), steps
    assert dl.batch_sampler.even_batches is True  # restored after the block
    for p, q in zip(acc.unwrap_model(model).parameters(), reference()):
        torch.testing.assert_close(p.detach(), q, rtol=1e-6, atol=1e-7)
    print(f"JOIN OK rank={RANK} steps={steps}", flush=True)
