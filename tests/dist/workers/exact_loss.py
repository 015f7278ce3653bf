"""Worker: backward(loss_sum, num_items=n) gives the exact global token-mean gradient.

Variable-length sequences padded per batch, a per-token loss. For accumulation 1, 2 and 4 over one epoch (the last
window shorter when the loader length does not divide), each window's gradients and the weights after every
optimizer step are compared with a hand-written single-process loop that computes the token mean over the window's
whole global batch (every micro-step, every rank) in one go. Then fp16 and bf16 runs with clipping. Each check
prints an OK line.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from torch import nn

from overdrive import Accelerator, GradScalerKwargs, InitProcessGroupKwargs
from overdrive.state import AcceleratorState

WORLD = int(os.environ.get("WORLD_SIZE", "1"))
RANK = int(os.environ.get("RANK", "0"))
B, T, F = 2, 7, 5
# Per-rank loader lengths: world 1 -> 22, world 2 -> 11, world 4 -> 5 micro-batches (shorter last windows).
N = {1: 44, 2: 44, 4: 40}.get(WORLD, 8 * WORLD)
HANDLERS = [InitProcessGroupKwargs(timeout=timedelta(seconds=60))]


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    x = torch.randn(N, T, F, generator=g)
    y = torch.randn(N, T, generator=g)
    return x, y, lengths


class Seqs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x, self.y, self.lengths = make_data()

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(self.lengths[i])
        return self.x[i, :n], self.y[i, :n]


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    longest = max(x.shape[0] for x, _ in items)  # pad to the batch's longest: batches differ in width
    xs = torch.zeros(len(items), longest, F)
    ys = torch.zeros(len(items), longest)
    mask = torch.zeros(len(items), longest)
    for i, (x, y) in enumerate(items):
        xs[i, : len(x)], ys[i, : len(y)], mask[i, : len(x)] = x, y, 1.0
    return xs, ys, mask


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(F, 16), nn.Tanh(), nn.Linear(16, 1))


def token_loss_sum(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (((model(xs).squeeze(-1) - ys) ** 2) * mask).sum()


def reference(accum: int, clip: float | None) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Single process: window w = micro-steps [w*accum, (w+1)*accum); micro-step j = global samples
    [j*B*WORLD, (j+1)*B*WORLD), rank r's share [j*B*WORLD + r*B, ...). One token-mean loss per window."""
    ds = Seqs()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    micro = N // (B * WORLD)
    grads, params = [], []
    for start in range(0, micro, accum):
        total_sum, total_n = 0.0, 0.0
        for j in range(start, min(start + accum, micro)):
            for r in range(WORLD):
                first = j * B * WORLD + r * B
                xs, ys, mask = collate([ds[i] for i in range(first, first + B)])
                total_sum = total_sum + token_loss_sum(model, xs, ys, mask)
                total_n += float(mask.sum())
        (total_sum / total_n).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
        params.append([p.detach().clone() for p in model.parameters()])
    return grads, params


def run(accum: int, clip: float | None = None, mp: str = "no", mean_of_means: bool = False) -> tuple[list, list]:
    AcceleratorState._reset_state()  # a new precision in the same process (the process group stays)
    # Loss sums reach ~50: a 2**8 initial scale keeps fp16 backward finite, so no step is skipped.
    handlers = [*HANDLERS, GradScalerKwargs(init_scale=2.0**8)]
    acc = Accelerator(gradient_accumulation_steps=accum, mixed_precision=mp, kwargs_handlers=handlers)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    dl = torch.utils.data.DataLoader(Seqs(), batch_size=B, collate_fn=collate)
    model, opt, dl = acc.prepare(model, opt, dl)
    assert len(dl) == N // (B * WORLD), len(dl)
    grads, params = [], []
    for xs, ys, mask in dl:
        with acc.accumulate(model):
            if mean_of_means:  # Accelerate's recipe: this micro-batch's token mean, divided by the accumulation
                acc.backward(token_loss_sum(model, xs, ys, mask) / mask.sum())
            else:
                acc.backward(token_loss_sum(model, xs, ys, mask), num_items=mask.sum())
            if acc.sync_gradients:
                if clip is not None:
                    acc.clip_grad_norm_(model.parameters(), clip)
                grads.append([p.grad.clone() for p in acc.unwrap_model(model).parameters()])
            opt.step()
            assert not acc.optimizer_step_was_skipped
            opt.zero_grad()
            if acc.sync_gradients:
                params.append([p.detach().clone() for p in acc.unwrap_model(model).parameters()])
    return grads, params


def max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Relative error of the whole flattened vector (all parameters), the usual meaning for a gradient."""
    x, y = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float((x - y).norm() / y.norm().clamp_min(1e-30))


if __name__ == "__main__":
    for accum in (1, 2, 4):
        grads, params = run(accum)
        ref_grads, ref_params = reference(accum, None)
        assert len(grads) == len(ref_grads), (len(grads), len(ref_grads))
        g_err = max(max_rel(g, r) for g, r in zip(grads, ref_grads))
        p_err = max(max_rel(p, r) for p, r in zip(params[:3], ref_params[:3]))
        assert g_err <= 1e-6 and p_err <= 1e-6, (accum, g_err, p_err)
        print(f"EXACT OK rank={RANK} world={WORLD} accum={accum} windows={len(grads)} "
              f"micro={N // (B * WORLD)} grad_rel={g_err:.1e} param_rel={p_err:.1e}", flush=True)
    # The ordinary backward(mean loss) path (kept exactly as Accelerate's) is measurably off on the same data.
    grads, _ = run(4, mean_of_means=True)
    ref_grads, _ = reference(4, None)
    err = max(max_rel(g, r) for g, r in zip(grads, ref_grads))
    assert err > 1e-2, err
    print(f"MEAN_OF_MEANS DIFFERS rank={RANK} world={WORLD} accum=4 grad_rel={err:.1e}", flush=True)
    ref_grads, _ = reference(2, 0.1)
    for mp, tol in (("no", 1e-6), ("bf16", 5e-2), ("fp16", 5e-3)):
        grads, _ = run(2, clip=0.1, mp=mp)
        err = max(max_rel(g, r) for g, r in zip(grads, ref_grads))
        assert err <= tol, (mp, err)
        print(f"PRECISION OK rank={RANK} world={WORLD} mp={mp} clip=0.1 grad_rel={err:.1e} tol={tol}", flush=True)
    print(f"ALL OK rank={RANK}", flush=True)
