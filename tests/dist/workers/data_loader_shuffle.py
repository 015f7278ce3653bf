"""2-rank check of overdrive.data_loader: ranks agree on the shuffle order, so together they see every sample of an
epoch exactly once (even-batches padding dropped with `remainder`), and epochs differ. Run under torchrun."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from overdrive.data_loader import BatchSamplerShard, prepare_data_loader
from overdrive.state import GradientState, PartialState

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
SIZE = 13


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"[rank {RANK}] {message}")


def all_ranks(value):
    out = [None] * WORLD
    dist.all_gather_object(out, value)
    return out


def run_epoch(dl) -> list[list[int]]:
    """This rank's batches of one pass, checking the gradient state on the way."""
    state = GradientState()
    batches = []
    for step, batch in enumerate(dl):
        check(state.active_dataloader is dl, "loader not registered while iterating")
        check(state.end_of_dataloader == (step == len(dl) - 1), f"end_of_dataloader wrong at step {step}")
        check(state.remainder == SIZE % dl.total_batch_size, f"remainder {state.remainder}")
        batches.append(batch.tolist())
    check(not state.in_dataloader, "loader still registered after the pass")
    return batches


def epoch_samples(dl, per_rank: list[list[list[int]]]) -> list[int]:
    """What gather_for_metrics would return over the epoch: steps in order, the last one trimmed to `remainder`."""
    steps = [sum((per_rank[r][s] for r in range(WORLD)), []) for s in range(len(per_rank[0]))]
    return sum(steps[:-1], []) + steps[-1][: dl.remainder]


def check_partition(name: str, dl, epochs: int = 2) -> None:
    orders = []
    for epoch in range(epochs):
        per_rank = all_ranks(run_epoch(dl))
        check(len({len(b) for b in per_rank}) == 1, f"{name}: ranks took different step counts {per_rank}")
        samples = epoch_samples(dl, per_rank)
        check(sorted(samples) == list(range(SIZE)), f"{name} epoch {epoch}: not each sample once: {samples}")
        orders.append(samples)
    check(len({tuple(o) for o in orders}) == epochs, f"{name}: epochs repeat the same order {orders}")
    check(dl.iteration == epochs, f"{name}: iteration={dl.iteration}")


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    state = PartialState()
    check(state.num_processes == WORLD and state.process_index == RANK, "PartialState disagrees with torchrun")
    # Different global RNG per rank: without cross-rank agreement, permutations (and so the shards) would differ.
    torch.manual_seed(1000 + RANK)

    # Control: shards over independently seeded RandomSamplers overlap. Shows the partition check can fail.
    control = BatchSamplerShard(BatchSampler(RandomSampler(range(SIZE)), 2, False), WORLD, RANK)
    seen = sum(all_ranks(sum(list(control), [])), [])
    check(sorted(seen[:SIZE]) != list(range(SIZE)), "control unexpectedly partitions the data")

    dataset = list(range(SIZE))
    check_partition("shuffle", prepare_data_loader(DataLoader(dataset, batch_size=2, shuffle=True)))
    check_partition("split", prepare_data_loader(DataLoader(dataset, batch_size=4, shuffle=True), split_batches=True))
    check_partition(
        "seedable", prepare_data_loader(DataLoader(dataset, batch_size=2, shuffle=True), use_seedable_sampler=True)
    )

    # A pass abandoned on every rank keeps the collectives in step; later passes still partition.
    dl = prepare_data_loader(DataLoader(dataset, batch_size=2, shuffle=True), rng_types=["torch"])
    for _ in dl:
        break
    check(not GradientState().in_dataloader, "loader still registered after break")
    draws = all_ranks(torch.rand(3).tolist())  # rng_types=["torch"] copied rank 0's global RNG at the pass start
    check(draws[0] == draws[1], f"torch RNG not synchronised: {draws}")
    check_partition("after break", dl)

    # A device mesh: ranks along "tp" get the same batches; along "dp_shard" they split the data.
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(2000 + RANK)  # undo the rng_types=["torch"] agreement above: only the loader may agree

    for dim, shared in (("tp", True), ("dp_shard", False)):
        mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=(dim,))
        dl = prepare_data_loader(DataLoader(dataset, batch_size=2, shuffle=True), torch_device_mesh=mesh)
        per_rank = all_ranks([b.tolist() for b in dl])
        if shared:
            check(per_rank[0] == per_rank[1], f"tp ranks got different batches: {per_rank}")
            check(sorted(sum(per_rank[0], [])) == list(range(SIZE)), f"tp rank misses samples: {per_rank}")
        else:
            samples = epoch_samples(dl, per_rank)
            check(sorted(samples) == list(range(SIZE)), f"dp_shard ranks do not partition the data: {per_rank}")

    print(f"[rank {RANK}] DATA_LOADER_OK", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
