"""overdrive.data_loader in one process: sharding math for rank r of n (num_processes/process_index passed
explicitly, no process group), compared with the installed accelerate 1.15 as the reference where it has one."""

from __future__ import annotations

import inspect
import itertools
import random
import sys

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler

import accelerate.data_loader as ref
from overdrive.data_loader import (
    BatchSamplerShard,
    DataLoaderDispatcher,
    DataLoaderShard,
    IterableDatasetShard,
    SeedableRandomSampler,
    SkipBatchSampler,
    SkipDataLoader,
    get_sampler,
    prepare_data_loader,
    skip_first_batches,
)
from overdrive.state import GradientState


@pytest.fixture(autouse=True)
def fresh_gradient_state():
    GradientState._reset_state()
    yield
    GradientState._reset_state()


def indices(loader) -> list[list[int]]:
    return [batch.tolist() for batch in loader]


# -- BatchSamplerShard vs accelerate ------------------------------------------------------------------------------


def test_batch_sampler_shard_grid_matches_accelerate():
    cases = 0
    grid = itertools.product(range(0, 42), range(1, 6), range(1, 5), [False, True], [False, True], [False, True])
    for size, batch_size, n, split, even, drop_last in grid:
        if split and batch_size % n:
            continue  # invalid combination: covered by the error test below
        base = BatchSampler(SequentialSampler(range(size)), batch_size, drop_last)
        for rank in range(n):
            expected = ref.BatchSamplerShard(base, n, rank, split_batches=split, even_batches=even)
            mine = BatchSamplerShard(base, n, rank, split_batches=split, even_batches=even)
            case = dict(size=size, batch_size=batch_size, n=n, rank=rank, split=split, even=even, drop_last=drop_last)
            assert list(mine) == list(expected), case
            assert len(mine) == len(expected), case
            cases += 1
    assert cases > 10_000


class VariableBatches:
    """A batch sampler without batch_size: batches of varying length."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter([list(b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def test_batch_sampler_shard_without_batch_size_matches_accelerate():
    rng = random.Random(0)
    for _ in range(300):
        batches, start = [], 0
        for _ in range(rng.randint(0, 9)):
            length = rng.randint(1, 4)
            batches.append(list(range(start, start + length)))
            start += length
        for n, even in itertools.product(range(1, 5), [False, True]):
            for rank in range(n):
                expected = list(ref.BatchSamplerShard(VariableBatches(batches), n, rank, even_batches=even))
                assert list(BatchSamplerShard(VariableBatches(batches), n, rank, even_batches=even)) == expected


def test_even_batches_wrap_around_gives_every_rank_equal_batches():
    base = BatchSampler(SequentialSampler(range(10)), 3, False)
    shards = [list(BatchSamplerShard(base, 3, r)) for r in range(3)]
    assert shards == [[[0, 1, 2], [9, 0, 1]], [[3, 4, 5], [2, 3, 4]], [[6, 7, 8], [5, 6, 7]]]


def test_batch_sampler_shard_rejects_bad_arguments():
    base = BatchSampler(SequentialSampler(range(10)), 3, False)
    with pytest.raises(ValueError, match=r"num_processes=2.*batch_size is 3"):
        BatchSamplerShard(base, 2, 0, split_batches=True)
    with pytest.raises(ValueError, match=r"process_index=2"):
        BatchSamplerShard(base, 2, 2)


# -- prepare_data_loader: sharding, shuffling, order vs accelerate --------------------------------------------------


def test_prepared_loader_is_a_dataloader_and_keeps_settings():
    def collate(samples):
        return torch.tensor(samples) * 10

    def init_worker(worker_id):
        pass

    generator = torch.Generator()
    original = DataLoader(list(range(8)), batch_size=2, collate_fn=collate, worker_init_fn=init_worker,
                          generator=generator)
    dl = prepare_data_loader(original, num_processes=2, process_index=1)
    assert isinstance(dl, DataLoader) and isinstance(dl, DataLoaderShard)
    assert dl.collate_fn is collate and dl.worker_init_fn is init_worker and dl.generator is generator
    assert dl.dataset is original.dataset
    assert isinstance(dl.batch_sampler, BatchSamplerShard)
    assert indices(dl) == [[20, 30], [60, 70]]
    assert len(dl) == 2 and dl.total_batch_size == 4 and dl.total_dataset_length == 8


def test_single_process_keeps_the_original_batch_sampler():
    original = DataLoader(list(range(5)), batch_size=2)
    dl = prepare_data_loader(original, num_processes=1, process_index=0)
    assert dl.batch_sampler is original.batch_sampler
    assert indices(dl) == indices(original) and dl.total_batch_size == 2


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffled_order_matches_accelerate(split, drop_last):
    """Same global seed -> the same per-rank batches as accelerate, epoch after epoch."""
    for rank in range(2):
        runs = []
        for prepare in (ref.prepare_data_loader, prepare_data_loader):
            torch.manual_seed(1234)
            original = DataLoader(list(range(23)), batch_size=4, shuffle=True, drop_last=drop_last)
            dl = prepare(original, num_processes=2, process_index=rank, split_batches=split)
            runs.append([indices(dl) for _ in range(3)])
        assert runs[0] == runs[1]
        assert runs[1][0] != runs[1][1]  # reshuffled every epoch


def test_seedable_sampler_order_matches_accelerate():
    for rank in range(2):
        runs = []
        for prepare in (ref.prepare_data_loader, prepare_data_loader):
            original = DataLoader(list(range(17)), batch_size=3, shuffle=True)
            dl = prepare(original, num_processes=2, process_index=rank, use_seedable_sampler=True, data_seed=42)
            runs.append([indices(dl) for _ in range(3)])
        assert runs[0] == runs[1]


def test_seedable_sampler_is_deterministic_per_seed_and_epoch():
    def epoch_orders(seed: int | None, epochs: int = 3) -> list[list[int]]:
        sampler = SeedableRandomSampler(range(20), data_seed=seed)
        return [list(sampler) for _ in range(epochs)]

    first = epoch_orders(7)
    assert first == epoch_orders(7)  # deterministic
    assert len({tuple(o) for o in first}) == 3  # a new order each epoch
    assert all(sorted(o) == list(range(20)) for o in first)
    assert first != epoch_orders(8)
    # generator seeded with seed + epoch, RandomSampler's draw: a pure-torch reference
    g = torch.Generator().manual_seed(7 + 2)
    assert first[2] == torch.randperm(20, generator=g).tolist()
    # set_epoch jumps to an epoch
    sampler = SeedableRandomSampler(range(20), data_seed=7)
    sampler.set_epoch(1)
    assert list(sampler) == first[1] and sampler.epoch == 2
    # data_seed=None: the seed torch was seeded with (what set_seed sets)
    torch.manual_seed(99)
    assert SeedableRandomSampler(range(4)).initial_seed == 99


def test_seedable_prepared_ranks_partition_each_epoch():
    """Two simulated ranks with different global RNG states still split every epoch into disjoint halves."""
    epochs = []
    for rank in range(2):
        torch.manual_seed(rank)  # the global RNG must not matter with an explicit data_seed
        original = DataLoader(list(range(16)), batch_size=2, shuffle=True)
        dl = prepare_data_loader(original, num_processes=2, process_index=rank, use_seedable_sampler=True, data_seed=3)
        assert isinstance(dl.get_sampler(), SeedableRandomSampler)
        epochs.append([sum(indices(dl), []) for _ in range(2)])
    for epoch in range(2):
        assert sorted(epochs[0][epoch] + epochs[1][epoch]) == list(range(16))
    assert epochs[0][0] != epochs[0][1]


def test_user_loader_and_sampler_are_not_modified():
    original = DataLoader(list(range(8)), batch_size=2, shuffle=True)
    sampler, batch_sampler = original.sampler, original.batch_sampler
    prepare_data_loader(original, num_processes=2, process_index=0)
    prepare_data_loader(original, num_processes=2, process_index=0, use_seedable_sampler=True)
    assert original.sampler is sampler and original.batch_sampler is batch_sampler
    assert sampler.generator is None and batch_sampler.sampler is sampler


def test_shuffled_sharded_loader_has_a_synchronized_generator():
    original = DataLoader(list(range(8)), batch_size=2, shuffle=True)
    dl = prepare_data_loader(original, num_processes=2, process_index=0)
    assert isinstance(dl.synchronized_generator, torch.Generator)
    assert get_sampler(dl).generator is dl.synchronized_generator
    seedable = prepare_data_loader(original, num_processes=2, process_index=0, use_seedable_sampler=True)
    assert seedable.synchronized_generator is None
    sequential = prepare_data_loader(DataLoader(list(range(8)), batch_size=2), num_processes=2, process_index=0)
    assert sequential.synchronized_generator is None


class ListIndexed(Dataset):
    """A dataset indexed by a whole batch of indices at once (like Hugging Face datasets)."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.tensor(index)


def test_batch_sampler_passed_as_sampler():
    batch_sampler = BatchSampler(SequentialSampler(range(10)), 2, False)
    original = DataLoader(ListIndexed(), sampler=batch_sampler, batch_size=None)
    expected = ref.prepare_data_loader(original, num_processes=2, process_index=1)
    dl = prepare_data_loader(original, num_processes=2, process_index=1)
    assert [b.tolist() for b in dl] == [b.tolist() for b in expected]
    assert dl.total_batch_size == 4


# -- end_of_dataloader, remainder, GradientState ----------------------------------------------------------------------


def test_end_of_dataloader_is_true_exactly_on_the_last_batch():
    dl = prepare_data_loader(DataLoader(list(range(10)), batch_size=2), num_processes=2, process_index=0)
    state = GradientState()
    seen = []
    for _ in dl:
        assert state.active_dataloader is dl and state.in_dataloader
        seen.append((dl.end_of_dataloader, state.end_of_dataloader))
    assert seen == [(False, False), (False, False), (True, True)]
    assert not state.in_dataloader and state.dataloader_references == [None]


def test_empty_loader_registers_and_unregisters():
    dl = prepare_data_loader(DataLoader([], batch_size=2), num_processes=2, process_index=0)
    assert list(dl) == [] and GradientState().dataloader_references == [None]


def test_gradient_state_is_released_after_break_and_exception():
    dl = prepare_data_loader(DataLoader(list(range(10)), batch_size=2), num_processes=1, process_index=0)
    state = GradientState()
    for _ in dl:
        break
    assert state.dataloader_references == [None]
    with pytest.raises(RuntimeError, match="boom"):
        for _ in dl:
            raise RuntimeError("boom")
    assert state.dataloader_references == [None]
    assert dl.iteration == 0  # abandoned passes are not completed epochs


def test_nested_loaders_report_the_innermost():
    outer = prepare_data_loader(DataLoader(list(range(4)), batch_size=2), num_processes=1, process_index=0)
    inner = prepare_data_loader(DataLoader(list(range(6)), batch_size=2), num_processes=1, process_index=0)
    state = GradientState()
    for _ in outer:
        for _ in inner:
            assert state.active_dataloader is inner
        assert state.active_dataloader is outer
    assert state.dataloader_references == [None]


@pytest.mark.parametrize(
    ("size", "batch_size", "n", "split", "drop_last", "expected"),
    [
        (10, 2, 2, False, False, 2),  # 10 % (2 * 2)
        (12, 2, 2, False, False, 0),
        (10, 4, 2, True, False, 2),  # split: the global batch is the loader's batch size
        (10, 2, 2, False, True, -1),  # the last batch is dropped: nothing to trim
        (7, 3, 1, False, False, 1),
    ],
)
def test_remainder(size, batch_size, n, split, drop_last, expected):
    original = DataLoader(list(range(size)), batch_size=batch_size, drop_last=drop_last)
    dl = prepare_data_loader(original, num_processes=n, process_index=0, split_batches=split)
    accel = ref.prepare_data_loader(original, num_processes=n, process_index=0, split_batches=split)
    values = []
    for _ in dl:
        values.append(GradientState().remainder)
    reference = []
    for _ in accel:
        reference.append(accel.remainder)
    assert values[-1] == expected == reference[-1]
    assert GradientState().remainder == -1  # no active loader


def test_remainder_lets_padding_be_dropped():
    """Concatenating the ranks' batches per step and keeping `remainder` of the last step gives the dataset once."""
    size, batch_size, n = 11, 2, 3
    loaders = [
        prepare_data_loader(DataLoader(list(range(size)), batch_size=batch_size), num_processes=n, process_index=r)
        for r in range(n)
    ]
    per_rank = [indices(dl) for dl in loaders]
    steps = [sum((per_rank[r][step] for r in range(n)), []) for step in range(len(per_rank[0]))]
    remainder = loaders[0].remainder
    assert remainder == size % (batch_size * n) == 5
    gathered = sum(steps[:-1], []) + steps[-1][:remainder]
    assert gathered == list(range(size))


def test_iteration_counts_completed_passes_and_sets_epoch():
    class EpochSampler(SequentialSampler):
        def __init__(self, data):
            super().__init__(data)
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    sampler = EpochSampler(range(6))
    dl = prepare_data_loader(DataLoader(list(range(6)), batch_size=2, sampler=sampler), num_processes=2,
                             process_index=0)
    for _ in range(3):
        list(dl)
    assert dl.iteration == 3
    assert get_sampler(dl) is sampler and sampler.epochs == [0, 1, 2]


def test_set_epoch_propagates_to_sampler_or_dataset():
    class EpochDataset(Dataset):
        def __init__(self):
            self.epochs = []

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return i

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    dataset = EpochDataset()
    dl = prepare_data_loader(DataLoader(dataset, batch_size=2, shuffle=True), num_processes=2, process_index=0)
    dl.set_epoch(5)
    assert dl.iteration == 5 and dataset.epochs == [5]
    seeded = prepare_data_loader(DataLoader(dataset, batch_size=2, shuffle=True), num_processes=2, process_index=0,
                                 use_seedable_sampler=True, data_seed=1)
    seeded.set_epoch(4)
    # a sampler that reshuffles per epoch takes the epoch; the dataset is left alone (as in Accelerate)
    assert seeded.get_sampler().epoch == 4 and dataset.epochs == [5]


def test_batches_move_to_device():
    original = DataLoader([{"x": torch.ones(2), "name": "a"}] * 4, batch_size=2)
    dl = prepare_data_loader(original, device=torch.device("meta"), put_on_device=True, num_processes=1,
                             process_index=0)
    batches = list(dl)
    assert all(b["x"].device.type == "meta" and b["name"] == ["a", "a"] for b in batches)
    off = prepare_data_loader(original, device=torch.device("meta"), put_on_device=False, num_processes=1,
                              process_index=0)
    assert all(b["x"].device.type == "cpu" for b in off)


def test_worker_processes():
    original = DataLoader(list(range(9)), batch_size=2, num_workers=1)
    dl = prepare_data_loader(original, num_processes=2, process_index=1)
    ends = []
    batches = []
    for batch in dl:
        batches.append(batch.tolist())
        ends.append(dl.end_of_dataloader)
    assert batches == [[2, 3], [6, 7], [1, 2]] and ends == [False, False, True]


# -- skip_first_batches ---------------------------------------------------------------------------------------------


def test_skip_first_batches_on_a_prepared_loader_yields_the_tail():
    torch.manual_seed(0)
    original = DataLoader(list(range(20)), batch_size=2, shuffle=True)
    dl = prepare_data_loader(original, num_processes=2, process_index=1, use_seedable_sampler=True, data_seed=5)
    full = [indices(dl) for _ in range(2)]  # epochs 0 and 1
    skipped = skip_first_batches(dl, num_batches=2)  # resume in epoch 2 after two batches
    assert isinstance(skipped, DataLoaderShard) and isinstance(skipped.batch_sampler, SkipBatchSampler)
    assert skipped.iteration == 2 and len(skipped) == len(dl) - 2
    assert skipped.total_batch_size == dl.total_batch_size == 4
    epoch2 = indices(dl)
    assert epoch2 not in full
    got, ends = [], []
    for batch in skipped:
        got.append(batch.tolist())
        ends.append(skipped.end_of_dataloader)
        assert GradientState().remainder == 20 % 4
    assert got == epoch2[2:] and ends[-1] and not any(ends[:-1])


def test_skip_first_batches_on_a_plain_loader():
    original = DataLoader(list(range(7)), batch_size=2)
    skipped = skip_first_batches(original, 2)
    assert type(skipped) is DataLoader and indices(skipped) == [[4, 5], [6]] and len(skipped) == 2
    expected = ref.skip_first_batches(original, 2)
    assert indices(skipped) == indices(expected)
    assert indices(skip_first_batches(original, 0)) == indices(original)


def test_skip_first_batches_on_an_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(7))

    skipped = skip_first_batches(DataLoader(Stream(), batch_size=2), 1)
    assert isinstance(skipped, SkipDataLoader) and indices(skipped) == [[2, 3], [4, 5], [6]]
    assert GradientState().dataloader_references == [None]


def test_skip_batch_sampler_and_skip_dataloader():
    base = BatchSampler(SequentialSampler(range(7)), 2, False)
    assert list(SkipBatchSampler(base, 3)) == [[6]] and len(SkipBatchSampler(base, 9)) == 0
    assert indices(SkipDataLoader(list(range(7)), skip_batches=1, batch_size=3)) == [[3, 4, 5], [6]]


# -- errors -----------------------------------------------------------------------------------------------------------


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(4))


def test_split_batches_needs_divisible_batch_size():
    with pytest.raises(ValueError, match=r"num_processes=4.*batch_size=6"):
        prepare_data_loader(DataLoader(list(range(12)), batch_size=6), num_processes=4, process_index=0,
                            split_batches=True)


def test_bad_options_raise_clearly():
    with pytest.raises(ValueError, match=r"dispatch_batches=True needs put_on_device=True"):
        prepare_data_loader(DataLoader(list(range(4))), dispatch_batches=True)
    with pytest.raises(ValueError, match=r"rng_types contains 'xla'"):
        prepare_data_loader(DataLoader(list(range(4))), rng_types=["xla"])
    with pytest.raises(ValueError, match=r"process_index=3"):
        prepare_data_loader(DataLoader(list(range(4))), num_processes=2, process_index=3)
    with pytest.raises(ValueError, match=r"num_batches=-1"):
        skip_first_batches(DataLoader(list(range(4))), -1)
    with pytest.raises(ValueError, match=r"num_processes=2, got batch_size=3"):
        IterableDatasetShard(Stream(), batch_size=3, num_processes=2, split_batches=True)


def test_iterable_dataset_on_one_process_is_dispatched_like_accelerate():
    """put_on_device with an IterableDataset defaults to dispatch_batches=True (also on one process)."""
    runs = []
    for prepare in (ref.prepare_data_loader, prepare_data_loader):
        dl = prepare(DataLoader(Stream(), batch_size=3), num_processes=1, process_index=0, put_on_device=True,
                     device=torch.device("cpu"))
        runs.append((type(dl).__name__, [(b.tolist(), dl.end_of_dataloader) for b in dl], dl.remainder))
    assert runs[0] == runs[1] == ("DataLoaderDispatcher", [([0, 1, 2], False), ([3], True)], 1)


def test_rng_types_list_is_not_modified():
    rng_types = ["generator"]
    prepare_data_loader(DataLoader(list(range(4))), num_processes=2, process_index=0, rng_types=rng_types)
    assert rng_types == ["generator"]


# -- API surface ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["prepare_data_loader", "skip_first_batches", "BatchSamplerShard", "DataLoaderShard", "SkipBatchSampler",
     "SkipDataLoader", "IterableDatasetShard", "DataLoaderDispatcher", "SeedableRandomSampler.set_epoch"],
)
def test_signatures_match_accelerate(name):
    import overdrive.data_loader as mine

    def shape(obj):
        return [(p.name, p.kind, p.default) for p in inspect.signature(obj).parameters.values()]

    def load(module, dotted):
        for part in dotted.split("."):
            module = getattr(module, part)
        return module

    assert shape(load(mine, name)) == shape(load(ref, name))


def test_random_sampler_subclass_is_replaced_only_when_asked():
    original = DataLoader(list(range(6)), batch_size=2, shuffle=True)
    assert type(get_sampler(prepare_data_loader(original, num_processes=1, process_index=0))) is RandomSampler
    seeded = prepare_data_loader(original, num_processes=1, process_index=0, use_seedable_sampler=True, data_seed=0)
    assert isinstance(get_sampler(seeded), SeedableRandomSampler)


# -- IterableDatasetShard and iterable DataLoaderShard ----------------------------------------------------------------


class SizedStream(IterableDataset):
    """An iterable dataset over range(size) that also knows its length."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self):
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


def test_iterable_dataset_shard_grid_matches_accelerate():
    cases = 0
    for size, batch_size, n, split, drop_last in itertools.product(
        range(0, 30), range(1, 5), range(1, 5), [False, True], [False, True]
    ):
        if split and batch_size % n:
            continue  # refused by overdrive (Accelerate yields nothing for batch_size=1): see test_bad_options
        for rank in range(n):
            expected = list(ref.IterableDatasetShard(range(size), batch_size, drop_last, n, rank, split))
            shard = IterableDatasetShard(range(size), batch_size, drop_last, n, rank, split)
            case = dict(size=size, batch_size=batch_size, n=n, rank=rank, split=split, drop_last=drop_last)
            assert list(shard) == expected, case
            assert len(shard) == len(expected), case  # counts what is yielded (also with split_batches)
            cases += 1
    assert cases > 2_000


def test_iterable_dataset_shard_passes_the_epoch_on():
    class EpochStream(SizedStream):
        epochs: list[int] = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    stream = EpochStream(8)
    dl = prepare_data_loader(DataLoader(stream, batch_size=2), num_processes=2, process_index=0)
    assert isinstance(dl.dataset, IterableDatasetShard)
    list(dl)
    list(dl)
    dl.set_epoch(7)
    assert stream.epochs == [0, 1, 7] and dl.dataset.epoch == 7


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("size", [0, 1, 7, 8, 13])
def test_prepared_iterable_loader_matches_accelerate_and_partitions(size, split, drop_last):
    n, batch_size = 2, 4 if split else 2
    per_rank, runs = [], []
    for rank in range(n):
        batches = []
        for prepare in (ref.prepare_data_loader, prepare_data_loader):
            dl = prepare(DataLoader(SizedStream(size), batch_size=batch_size, drop_last=drop_last), num_processes=n,
                         process_index=rank, split_batches=split)
            batches.append(indices(dl))
        assert batches[0] == batches[1]
        per_rank.append(batches[1])
        runs.append(dl)
    dl = runs[0]
    assert dl.total_batch_size == 4  # the global batch (Accelerate reports the per-rank size for iterables)
    steps = [sum((per_rank[r][s] for r in range(n)), []) for s in range(len(per_rank[0]))]
    if drop_last:
        assert dl.remainder == -1
        assert sorted(sum(steps, [])) == list(range(size - size % 4))
    elif steps:
        # remainder is the real count of the last global batch, relative to the whole stream's length
        assert dl.remainder == size % 4
        trimmed = sum(steps[:-1], []) + (steps[-1][: dl.remainder] if dl.remainder else steps[-1])
        assert trimmed == list(range(size))


def test_iterable_loader_end_of_dataloader_and_unknown_remainder():
    state = GradientState()
    dl = prepare_data_loader(DataLoader(Stream(), batch_size=1), num_processes=2, process_index=1)
    seen = []
    for batch in dl:
        assert state.active_dataloader is dl
        seen.append((batch.tolist(), dl.end_of_dataloader, state.remainder))
    # an unsized stream: remainder is unknown (-1), end_of_dataloader is still exact
    assert seen == [([1], False, -1), ([3], True, -1)]
    assert state.dataloader_references == [None] and dl.iteration == 1
    sized = prepare_data_loader(DataLoader(SizedStream(5), batch_size=2), num_processes=2, process_index=0)
    assert [(b.tolist(), sized.end_of_dataloader, sized.remainder) for b in sized] == [
        ([0, 1], False, 1), ([4, 0], True, 1)]


def test_iterable_stream_of_ready_batches_is_dealt_out():
    """batch_size=None: every stream element is already a batch; ranks take every n-th one."""
    dl = prepare_data_loader(DataLoader(Stream(), batch_size=None), num_processes=2, process_index=1)
    assert list(dl) == [1, 3]


# -- DataLoaderDispatcher ---------------------------------------------------------------------------------------------


def dispatched(loader, n=1, rank=0, **kwargs):
    """A dispatcher for simulated rank `rank` of `n` (no process group: every simulated rank reads the data)."""
    if n == 1:
        return prepare_data_loader(loader, put_on_device=True, device=torch.device("cpu"), dispatch_batches=True,
                                   **kwargs)
    return prepare_data_loader(loader, num_processes=n, process_index=rank, put_on_device=True,
                               device=torch.device("cpu"), dispatch_batches=True, **kwargs)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("iterable", [False, True])
def test_dispatcher_on_one_process_matches_accelerate(split, drop_last, iterable):
    dataset = SizedStream(11) if iterable else list(range(11))
    runs = []
    for prepare in (ref.prepare_data_loader, prepare_data_loader):
        dl = prepare(DataLoader(dataset, batch_size=2, drop_last=drop_last), num_processes=1, process_index=0,
                     put_on_device=True, device=torch.device("cpu"), dispatch_batches=True, split_batches=split)
        assert type(dl).__name__ == "DataLoaderDispatcher"
        runs.append(([(b.tolist(), dl.end_of_dataloader) for b in dl], dl.remainder, len(dl)))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("size", [1, 5, 8, 11, 12])
def test_dispatcher_slices_partition_each_global_batch(size, split):
    n, batch_size = 2, 4 if split else 2
    per_rank, loaders = [], []
    for rank in range(n):
        dl = dispatched(DataLoader(list(range(size)), batch_size=batch_size), n, rank, split_batches=split)
        assert isinstance(dl, DataLoaderDispatcher) and dl.total_batch_size == 4
        ends = []
        batches = []
        for batch in dl:
            batches.append(batch.tolist())
            ends.append(dl.end_of_dataloader)
        assert ends == [False] * (len(ends) - 1) + [True] and len(batches) == len(dl)
        per_rank.append(batches)
        loaders.append(dl)
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]]  # ranks get equal shapes every step
    steps = [sum((per_rank[r][s] for r in range(n)), []) for s in range(len(per_rank[0]))]
    remainder = loaders[0].remainder
    assert remainder == len(steps[-1]) - (len(steps[-1]) - (size % 4 or 4))  # the real count of the last step
    assert sum(steps[:-1], []) + steps[-1][:remainder] == list(range(size))


def test_dispatcher_drop_last_and_custom_slice_fn():
    per_rank = [indices(dispatched(DataLoader(list(range(11)), batch_size=2, drop_last=True), 2, r))
                for r in range(2)]
    assert per_rank == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]  # the incomplete round [8, 9] is dropped

    calls = []

    def every_other(batch, tensor_slice, process_index=None, num_processes=None):
        calls.append((process_index, num_processes))
        return batch[process_index::num_processes]

    dl = dispatched(DataLoader(list(range(8)), batch_size=2), 2, 1, slice_fn_for_dispatch=every_other)
    assert indices(dl) == [[1, 3], [5, 7]] and set(calls) == {(1, 2)}


def test_dispatcher_dicts_of_tensors_and_skip_first_batches():
    samples = [{"x": torch.full((3,), float(i)), "y": i} for i in range(10)]
    dl = dispatched(DataLoader(samples, batch_size=2), 2, 1)
    batches = list(dl)
    # the last global batch is [8, 9] only: each rank gets half of it (not a whole loader batch as with a shard)
    assert [b["y"].tolist() for b in batches] == [[2, 3], [6, 7], [9]]
    assert batches[0]["x"].shape == (2, 3)
    skipped = skip_first_batches(dl, 1)
    assert isinstance(skipped, DataLoaderDispatcher) and len(skipped) == 2
    assert [b["y"].tolist() for b in skipped] == [[6, 7], [9]] and skipped.remainder == 2


def test_dispatcher_rejects_batches_that_do_not_concatenate():
    ragged = [torch.zeros(1), torch.zeros(2)]
    dl = dispatched(DataLoader(ragged, batch_size=1), 2, 0)
    with pytest.raises(RuntimeError, match=r"dispatch_batches=True could not join the 2 batches"):
        list(dl)
    assert GradientState().dataloader_references == [None]


# -- workers ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["map", "dispatch"])
def test_workers_do_not_change_the_batches(kind):
    def run(workers):
        out = []
        for rank in range(2):
            loader = DataLoader(list(range(11)), batch_size=2, shuffle=True, num_workers=workers,
                                generator=torch.Generator().manual_seed(3))
            if kind == "map":
                dl = prepare_data_loader(loader, num_processes=2, process_index=rank, use_seedable_sampler=True,
                                         data_seed=5)
            else:
                dl = dispatched(loader, 2, rank, use_seedable_sampler=True, data_seed=5)
            out.append([indices(dl) for _ in range(2)])
        return out

    assert run(0) == run(2)


# -- seedable sampler: the default of the Accelerator -----------------------------------------------------------------


def test_seedable_sampler_is_the_configured_default_and_reshuffles_per_epoch():
    from overdrive import Accelerator
    from overdrive.utils import DataLoaderConfiguration

    assert DataLoaderConfiguration().use_seedable_sampler is True
    assert inspect.signature(prepare_data_loader).parameters["use_seedable_sampler"].default is False  # Accelerate's
    torch.manual_seed(11)
    dl = Accelerator().prepare(DataLoader(list(range(12)), batch_size=3, shuffle=True))
    assert isinstance(dl.get_sampler(), SeedableRandomSampler) and dl.get_sampler().initial_seed == 11
    epochs = [sum(indices(dl), []) for _ in range(3)]  # no set_epoch: a completed pass advances `iteration`
    assert len({tuple(e) for e in epochs}) == 3 and dl.iteration == 3
    for epoch, order in enumerate(epochs):  # (seed, epoch) -> order, a pure-torch reference
        assert order == torch.randperm(12, generator=torch.Generator().manual_seed(11 + epoch)).tolist()
    dl.set_epoch(1)
    assert sum(indices(dl), []) == epochs[1]


# -- stateful loaders (torchdata StatefulDataLoader) ------------------------------------------------------------------


def stateful_loader(workers: int, seedable: bool, n: int = 1, rank: int = 0, size: int = 23):
    loader = DataLoader(list(range(size)), batch_size=2, shuffle=True, num_workers=workers)
    return prepare_data_loader(loader, num_processes=n, process_index=rank, use_stateful_dataloader=True,
                               use_seedable_sampler=seedable, data_seed=17 if seedable else None)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("seedable", [True, False])
def test_stateful_round_trip_resumes_with_the_remaining_batches(workers, seedable, tmp_path):
    torch.manual_seed(0)
    dl = stateful_loader(workers, seedable)
    assert isinstance(dl, DataLoaderShard) and type(dl).__name__ == "StatefulDataLoaderShard"
    from torchdata.stateful_dataloader import StatefulDataLoader

    assert isinstance(dl, StatefulDataLoader)
    first_epoch = indices(dl)  # a full epoch first, so the resumed pass is not epoch 0
    stream, k = [], 4
    for step, batch in enumerate(dl):
        stream.append(batch.tolist())
        if step == k - 1:
            torch.save(dl.state_dict(), tmp_path / "state.pt")
    assert stream != first_epoch
    torch.manual_seed(123)  # a different global RNG: the order must come from the saved state alone
    fresh = stateful_loader(workers, seedable)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    ends = []
    rest = []
    for batch in fresh:
        rest.append(batch.tolist())
        ends.append(fresh.end_of_dataloader)
    assert rest == stream[k:] and ends[-1] and not any(ends[:-1])
    assert fresh.iteration == dl.iteration == 2
    assert indices(fresh) == indices(dl)  # and the following epochs agree too


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_state_after_the_last_batch_starts_the_next_epoch(workers):
    torch.manual_seed(0)
    dl = stateful_loader(workers, seedable=False, size=8)
    for _ in dl:
        state = dl.state_dict()  # the last one is taken after the last batch
    expected_next = indices(dl)
    fresh = stateful_loader(workers, seedable=False, size=8)
    fresh.load_state_dict(state)
    assert fresh.iteration == 1 and indices(fresh) == expected_next


def test_stateful_sharded_ranks_resume_their_own_batches():
    per_rank = []
    for rank in range(2):
        dl = stateful_loader(0, seedable=True, n=2, rank=rank)
        it = iter(dl)
        head = [next(it).tolist() for _ in range(2)]
        state = dl.state_dict()
        tail = [b.tolist() for b in it]
        fresh = stateful_loader(0, seedable=True, n=2, rank=rank)
        fresh.load_state_dict(state)
        assert indices(fresh) == tail
        per_rank.append(head + tail)
    assert per_rank[0] != per_rank[1]


def test_stateful_state_before_iterating_starts_from_the_beginning():
    dl = stateful_loader(0, seedable=True)
    state = dl.state_dict()
    fresh = stateful_loader(0, seedable=True)
    fresh.load_state_dict(state)
    assert indices(fresh) == indices(dl)


def test_stateful_dispatcher_and_iterable_round_trip():
    for make in (
        lambda: dispatched(DataLoader(list(range(13)), batch_size=2), 2, 1, use_stateful_dataloader=True),
        lambda: prepare_data_loader(DataLoader(SizedStream(13), batch_size=2), num_processes=2, process_index=1,
                                    use_stateful_dataloader=True),
    ):
        dl = make()
        whole = indices(dl)
        it = iter(dl)
        next(it)
        state = dl.state_dict()
        it.close()
        fresh = make()
        fresh.load_state_dict(state)
        assert indices(fresh) == whole[1:]


def test_stateful_without_torchdata_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdata.stateful_dataloader", None)  # an import of it now fails
    with pytest.raises(ImportError, match=r"pip install torchdata"):
        prepare_data_loader(DataLoader(list(range(4))), use_stateful_dataloader=True)


def test_plain_loaders_have_no_state_dict():
    dl = prepare_data_loader(DataLoader(list(range(4))), num_processes=1, process_index=0)
    assert not hasattr(dl, "state_dict") and type(dl) is DataLoaderShard
