"""Worker for tests/dist/test_metrics_dist.py: WeightedMean over a prepared loader equals the single-process float64
reference exactly, at any dataset size, while the naive per-rank mean does not.

Usage: torchrun --nproc-per-node N metrics_exact.py
Values are multiples of 1/8 and weights integers 1..9, so every float64 sum here is exact and results compare with
``==`` whatever the summation order. Every rank prints ``METRIC OK rank=R world=W case=...`` per case, then
``NAIVE BIASED rank=R sizes=[...]`` and ``ALL OK rank=R``; any failure raises (non-zero exit).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from overdrive import Accelerator, InitProcessGroupKwargs
from overdrive.data_loader import prepare_data_loader
from overdrive.metrics import WeightedMean, padding_mask

RANK = int(os.environ["RANK"])
HANDLERS = [InitProcessGroupKwargs(timeout=timedelta(seconds=60))]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"[rank {RANK}] {message}")


def everyone(value):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def dataset(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index, value, weight) per sample; the same on every rank (fixed seed)."""
    g = torch.Generator().manual_seed(1000 + size)
    values = torch.randint(-80, 80, (size,), generator=g).float() / 8
    weights = torch.randint(1, 10, (size,), generator=g)  # e.g. token counts
    return torch.arange(size), values, weights


def reference(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The single-process float64 weighted mean over the whole dataset."""
    v, w = values.double(), weights.double()
    return (v * w).sum() / w.sum()


def run_case(acc: Accelerator, name: str, loader: DataLoader, size: int) -> torch.Tensor:
    """Evaluate one prepared loader three ways; return the naive result (mean of per-rank weighted means)."""
    _, values, weights = dataset(size)
    metric = WeightedMean()
    gathered_idx, kept_idx = [], []
    local_vw, local_w = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for idx, v, w in loader:
        metric.update(v, w)
        gathered_idx.append(acc.gather_for_metrics(idx))
        mask = padding_mask(len(idx))
        kept_idx.append(torch.cat(everyone(idx[mask])))  # this step's real samples, rank 0's first
        local_vw += (v.double() * w.double()).sum()  # the naive way: everything this rank saw, padding included
        local_w += w.double().sum()
    got = metric.compute()
    ref = reference(values, weights)
    check(got.dtype == torch.float64 and got.shape == (), f"{name}: result {got!r} is not a 0-d float64 tensor")
    check(got == ref, f"{name}: WeightedMean {got.item()!r} != reference {ref.item()!r}")
    check(len(set(everyone(got.item()))) == 1, f"{name}: ranks disagree on the result")
    # The mask keeps exactly what gather_for_metrics keeps (the loader's padding, verified against its trimming).
    all_gathered, all_kept = torch.cat(gathered_idx), torch.cat(kept_idx)
    check(torch.equal(all_gathered.sort().values, torch.arange(size)), f"{name}: gather_for_metrics {all_gathered}")
    check(torch.equal(all_kept, all_gathered), f"{name}: mask kept {all_kept.tolist()}, "
                                               f"gather_for_metrics {all_gathered.tolist()}")
    naive = acc.reduce(local_vw / local_w, reduction="mean")
    print(f"METRIC OK rank={RANK} world={acc.num_processes} case={name} value={got.item()!r} "
          f"naive={naive.item()!r}", flush=True)
    return naive


def main() -> None:
    acc = Accelerator(kwargs_handlers=HANDLERS)
    world = acc.num_processes
    check(world == int(os.environ["WORLD_SIZE"]) and dist.is_initialized(), "no process group")
    biased = []
    for size in (1, 7, 101):
        loader = acc.prepare(DataLoader(TensorDataset(*dataset(size)), batch_size=4))
        naive = run_case(acc, f"size{size}", loader, size)
        if naive.item() != reference(*dataset(size)[1:]).item():
            biased.append(size)
    # Shuffled (ranks agree on the order), and split_batches (each rank a contiguous slice of every batch).
    shuffled = acc.prepare(DataLoader(TensorDataset(*dataset(101)), batch_size=4, shuffle=True))
    run_case(acc, "size101-shuffled", shuffled, 101)
    for size in (1, 7, 101):
        split = prepare_data_loader(DataLoader(TensorDataset(*dataset(size)), batch_size=6),
                                    num_processes=world, process_index=RANK, split_batches=True)
        run_case(acc, f"size{size}-split", split, size)
    # A rank that saw nothing still takes part in compute(); a zero total raises on every rank alike.
    try:
        WeightedMean().compute()
    except ValueError as err:
        check(f"all {world} process(es) is 0" in str(err), str(err))
    else:
        check(False, "compute() with no samples anywhere did not raise")
    check(bool(biased), "the naive per-rank mean matched the reference for every size; the test proves nothing")
    print(f"NAIVE BIASED rank={RANK} sizes={biased}", flush=True)
    print(f"ALL OK rank={RANK}", flush=True)


if __name__ == "__main__":
    main()
    dist.destroy_process_group()  # avoids gloo's exit abort (FACTS.md)
