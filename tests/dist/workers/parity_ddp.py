"""Worker: overdrive against a hand-written DistributedDataParallel loop, bitwise.

Run under torchrun with 2 processes (gloo). For each mode (fp32, accumulation 4, bf16 autocast on CPU) every rank
trains the same model on the same per-rank batches twice: once with plain torch (DDP, ``no_sync`` on accumulation
micro-steps, ``torch.autocast`` around forward for bf16) and once through ``Accelerator.prepare``/``accumulate``/
``backward``; then a model split in two wrapped parts, ``accumulate(first, second)`` under accumulation 4. The final state dicts must be bitwise equal (``torch.equal``). Any mismatch raises (non-zero exit).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from overdrive import Accelerator, InitProcessGroupKwargs
from overdrive.state import AcceleratorState, GradientState

N, B = 64, 4  # 16 global batches: 8 per rank, two windows of 4 under accumulation
RANK = int(os.environ.get("RANK", "0"))
MODES = {"fp32": (1, "no"), "accum4": (4, "no"), "bf16": (1, "bf16"), "bf16_accum4": (4, "bf16")}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write per line: ranks share stdout
    sys.stdout.flush()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 3))


def make_dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(N, 6, generator=g), torch.randn(N, 3, generator=g))


def hand_written(accum: int, bf16: bool) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The loop a user writes without overdrive: rank r takes global batches r, r + world, ... (no shuffling)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    model = DistributedDataParallel(make_model())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = list(DataLoader(make_dataset(), batch_size=B, shuffle=False))[rank::world]
    seen = []
    for i, (x, y) in enumerate(batches):
        seen.append(x)
        sync = (i + 1) % accum == 0 or i == len(batches) - 1
        with contextlib.nullcontext() if sync else model.no_sync():
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(x)
                out = out.float()
            else:
                out = model(x)
            loss = F.mse_loss(out, y)
            (loss / accum if accum > 1 else loss).backward()
        if sync:
            opt.step()
            opt.zero_grad()
    state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    del model, opt
    gc.collect()
    return state, seen


def with_overdrive(accum: int, mixed_precision: str) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    AcceleratorState._reset_state()  # one mixed_precision per AcceleratorState: start each mode afresh (group kept)
    GradientState._reset_state()
    acc = Accelerator(gradient_accumulation_steps=accum, mixed_precision=mixed_precision,
                      kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt, loader = acc.prepare(model, opt, DataLoader(make_dataset(), batch_size=B, shuffle=False))
    seen = []
    for x, y in loader:
        seen.append(x)
        with acc.accumulate(model):
            loss = F.mse_loss(model(x), y)
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
    state = {k: v.detach().clone() for k, v in acc.get_state_dict(model).items()}
    acc.free_memory()
    del model, opt
    gc.collect()
    return state, seen


def two_models(accum: int, use_overdrive: bool) -> dict[str, torch.Tensor]:
    """The model split in two separately wrapped parts, ``accumulate(first, second)``: ``no_sync`` on both."""
    world, rank = dist.get_world_size(), dist.get_rank()
    full = make_model()
    first, second = full[:2], full[2:]  # slices share the modules and keep their keys ("0.", "2.", "4.")
    opt = torch.optim.AdamW(full.parameters(), lr=1e-2)
    loader = DataLoader(make_dataset(), batch_size=B, shuffle=False)
    if use_overdrive:
        AcceleratorState._reset_state()
        GradientState._reset_state()
        acc = Accelerator(gradient_accumulation_steps=accum,
                          kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
        first, second, opt, loader = acc.prepare(first, second, opt, loader)
        for x, y in loader:
            with acc.accumulate(first, second):
                # On accumulation micro-steps both wrappers must skip their all-reduce.
                assert first.require_backward_grad_sync == second.require_backward_grad_sync == acc.sync_gradients
                acc.backward(F.mse_loss(second(first(x)), y))
                opt.step()
                opt.zero_grad()
        acc.free_memory()
    else:
        first, second = DistributedDataParallel(first), DistributedDataParallel(second)
        batches = list(loader)[rank::world]
        for i, (x, y) in enumerate(batches):
            sync = (i + 1) % accum == 0 or i == len(batches) - 1
            with contextlib.ExitStack() as stack:
                if not sync:
                    stack.enter_context(first.no_sync())
                    stack.enter_context(second.no_sync())
                (F.mse_loss(second(first(x)), y) / accum).backward()
            if sync:
                opt.step()
                opt.zero_grad()
    state = {k: v.detach().clone() for k, v in full.state_dict().items()}
    del first, second, opt
    gc.collect()
    return state


def trigger_sync_check() -> None:
    """Two forwards under no_sync, the second backward under trigger_sync_in_backward: the gradients become the
    all-rank mean of both micro-batches' gradients, as a single-process loop over every rank's batches computes."""
    world, rank = dist.get_world_size(), dist.get_rank()
    AcceleratorState._reset_state()
    GradientState._reset_state()
    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
    model = acc.prepare(make_model())
    xs, ys = make_dataset().tensors

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return xs[i * B:(i + 1) * B], ys[i * B:(i + 1) * B]

    with acc.no_sync(model):
        acc.backward(F.mse_loss(model(batch(rank)[0]), batch(rank)[1]))
    first = model.module[0].weight.grad.clone()
    with acc.no_sync(model):
        loss_b = F.mse_loss(model(batch(world + rank)[0]), batch(world + rank)[1])
    with acc.trigger_sync_in_backward(model):
        acc.backward(loss_b)
    got = [p.grad for p in model.module.parameters()]

    reference = make_model()
    for r in range(world):
        for i in (r, world + r):
            (F.mse_loss(reference(batch(i)[0]), batch(i)[1]) / world).backward()
    ref = [p.grad for p in reference.parameters()]
    worst = max((a - b).abs().max().item() for a, b in zip(got, ref))
    assert worst < 1e-6, f"rank {RANK} trigger_sync_in_backward: max abs diff {worst} to the all-rank reference"
    firsts = [torch.empty_like(first) for _ in range(world)]
    dist.all_gather(firsts, first)
    assert not torch.equal(firsts[0], firsts[1]), "the first backward under no_sync was already synchronised"
    acc.free_memory()
    say(f"TRIGGER SYNC OK rank={RANK} max_abs_diff={worst:.2e}")


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    for name, (accum, mp) in MODES.items():
        ref, ref_seen = hand_written(accum, mp == "bf16")
        got, got_seen = with_overdrive(accum, mp)
        assert len(ref_seen) == len(got_seen) and all(torch.equal(a, b) for a, b in zip(ref_seen, got_seen)), \
            f"rank {RANK} {name}: the prepared loader gave other batches than rank::world"
        assert list(ref) == list(got), f"rank {RANK} {name}: keys {list(ref)} != {list(got)}"
        diff: dict[str, Any] = {k: (ref[k] - got[k]).abs().max().item() for k in ref if not torch.equal(ref[k], got[k])}
        assert not diff, f"rank {RANK} {name}: not bitwise equal, max abs diff per tensor {diff}"
        say(f"PARITY BITWISE OK rank={RANK} mode={name} tensors={len(ref)}")
    ref, got = two_models(4, use_overdrive=False), two_models(4, use_overdrive=True)
    assert list(ref) == list(got) and all(torch.equal(ref[k], got[k]) for k in ref), \
        f"rank {RANK} two models: not bitwise equal"
    say(f"PARITY BITWISE OK rank={RANK} mode=two_models_accum4 tensors={len(ref)}")
    trigger_sync_check()
    dist.barrier()
    dist.destroy_process_group()
    say(f"ALL OK rank={RANK}")


if __name__ == "__main__":
    main()
