"""2-rank check of overdrive.data_loader's three ways to shard: map-style (BatchSamplerShard), iterable
(IterableDatasetShard) and dispatched (rank 0 reads, broadcasts, each rank slices), each with num_workers 0 and 2.
Together the ranks must see every sample of an epoch exactly once once the padding is dropped. Run under torchrun."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from overdrive.data_loader import DataLoaderDispatcher, DataLoaderShard, IterableDatasetShard, prepare_data_loader
from overdrive.state import GradientState

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
SIZE = 29  # not a multiple of any global batch below: the last one is padded


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"[rank {RANK}] {message}")


def all_ranks(value):
    out = [None] * WORLD
    dist.all_gather_object(out, value)
    return out


class Stream(IterableDataset):
    """range(SIZE) with a payload; splits itself among DataLoader workers, as torch asks of an IterableDataset."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size

    def worker_streams(self, workers: int) -> list[list[int]]:
        return [list(range(w, self.size, workers)) for w in range(max(workers, 1))]

    def __iter__(self):
        info = get_worker_info()
        ids = range(self.size) if info is None else range(info.id, self.size, info.num_workers)
        for i in ids:
            yield {"id": i, "x": torch.full((3,), float(i))}

    def __len__(self) -> int:
        return self.size


def samples(size: int = SIZE) -> list[dict]:
    return [{"id": i, "x": torch.full((3,), float(i))} for i in range(size)]


def run_epoch(dl) -> list[list[int]]:
    """This rank's ids per step of one pass, checking the gradient state and the payload on the way."""
    state = GradientState()
    steps = []
    for step, batch in enumerate(dl):
        check(state.active_dataloader is dl, "loader not registered while iterating")
        check(batch["x"][:, 0].long().tolist() == batch["id"].tolist(), "payload does not follow its id")
        steps.append((batch["id"].tolist(), dl.end_of_dataloader))
    check(not state.in_dataloader, "loader still registered after the pass")
    check([end for _, end in steps] == [False] * (len(steps) - 1) + [True], f"end_of_dataloader wrong: {steps}")
    return [ids for ids, _ in steps]


def gathered(per_rank: list[list[list[int]]], remainder: int) -> list[int]:
    """What gather_for_metrics returns over the epoch: steps in order, the last one trimmed to `remainder`."""
    check(len({len(b) for b in per_rank}) == 1, f"ranks took different step counts {per_rank}")
    steps = [sum((per_rank[r][s] for r in range(WORLD)), []) for s in range(len(per_rank[0]))]
    last = steps[-1][:remainder] if remainder > 0 else steps[-1]
    return sum(steps[:-1], []) + last


def check_exactly_once(name: str, dl, epochs: int = 2) -> None:
    orders = []
    for epoch in range(epochs):
        per_rank = all_ranks(run_epoch(dl))
        seen = gathered(per_rank, dl.remainder)
        check(sorted(seen) == list(range(SIZE)), f"{name} epoch {epoch}: not each sample once: {seen}")
        orders.append(seen)
    check(dl.iteration == epochs, f"{name}: iteration={dl.iteration}")
    return orders


def main() -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    torch.manual_seed(1000 + RANK)  # ranks differ unless the loader makes them agree
    cpu = torch.device("cpu")
    for workers in (0, 2):
        # map-style, shuffled, seedable (the Accelerator's default)
        dl = prepare_data_loader(DataLoader(samples(), batch_size=3, shuffle=True, num_workers=workers),
                                 use_seedable_sampler=True)
        check(isinstance(dl, DataLoaderShard), "map-style loader is not a DataLoaderShard")
        orders = check_exactly_once(f"map/w{workers}", dl)
        check(orders[0] != orders[1], f"map/w{workers}: the epochs have the same order")

        # dispatched: map-style shuffled and an iterable stream; rank 0 reads (with its workers), ranks slice
        dl = prepare_data_loader(DataLoader(samples(), batch_size=3, shuffle=True, num_workers=workers),
                                 put_on_device=True, device=cpu, dispatch_batches=True)
        check(isinstance(dl, DataLoaderDispatcher), "dispatch_batches=True did not give a DataLoaderDispatcher")
        orders = check_exactly_once(f"dispatch-map/w{workers}", dl)
        check(orders[0] != orders[1], f"dispatch-map/w{workers}: the epochs have the same order")
        dl = prepare_data_loader(DataLoader(Stream(), batch_size=3, num_workers=workers), put_on_device=True,
                                 device=cpu)  # dispatch_batches=None: Accelerate's default for a stream
        check(isinstance(dl, DataLoaderDispatcher), "an iterable put on the device is not dispatched by default")
        check_exactly_once(f"dispatch-iterable/w{workers}", dl)
        check(dl.remainder == SIZE % 6 or (SIZE % 6 == 0 and dl.remainder == 6), f"remainder {dl.remainder}")

        # iterable, every rank reads: IterableDatasetShard in every worker
        dl = prepare_data_loader(DataLoader(Stream(), batch_size=3, num_workers=workers), dispatch_batches=False)
        check(isinstance(dl.dataset, IterableDatasetShard), "iterable loader is not sharded")
        per_rank = all_ranks(run_epoch(dl))
        if workers == 0:
            check(dl.remainder == SIZE % 6, f"iterable remainder {dl.remainder}")
            seen = gathered(per_rank, dl.remainder)
            check(sorted(seen) == list(range(SIZE)), f"iterable/w0: not each sample once: {seen}")
        else:
            # Each worker shards its own stream: every sample once, plus the padding of each worker's last round.
            check(dl.remainder == -1, "remainder must be unknown when workers pad their own streams")
            seen = sum((sum(steps, []) for steps in per_rank), [])
            streams = Stream().worker_streams(workers)
            padding = sum(-len(s) % 6 for s in streams)
            check(set(seen) == set(range(SIZE)) and len(seen) == SIZE + padding,
                  f"iterable/w{workers}: {len(seen)} samples for {SIZE} + {padding} padding: {sorted(seen)}")
            repeated = sorted(i for i in set(seen) if seen.count(i) > 1)
            heads = sorted(i for s in streams for i in s[: -len(s) % 6])  # padding cycles each stream's start
            check(repeated == sorted(set(heads)), f"iterable/w{workers}: repeated {repeated}, expected {heads}")

    print(f"[rank {RANK}] DATA_MODES_OK", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
