"""overdrive.metrics in one process: the padding mask for rank r of n (simulated with prepare_data_loader, no
process group) and WeightedMean against a float64 reference computed here over the whole dataset."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from overdrive import Accelerator
from overdrive.data_loader import prepare_data_loader, skip_first_batches
from overdrive.metrics import WeightedMean, padding_mask
from overdrive.state import GradientState


def rank_steps(size: int, batch_size: int, world: int, rank: int, **kwargs) -> list[tuple[list[int], list[bool]]]:
    """(indices, mask) of every batch rank ``rank`` of ``world`` gets in one pass over range(size)."""
    dl = prepare_data_loader(DataLoader(list(range(size)), batch_size=batch_size), num_processes=world,
                             process_index=rank, **kwargs)
    return [(batch.tolist(), padding_mask(len(batch)).tolist()) for batch in dl]


SIZES = (*range(1, 26), 101)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("even", [True, False])
def test_masked_samples_cover_the_dataset_exactly_once(world, split, even):
    for size in SIZES:
        for bs in (1, 2, 3, 4, 8):
            if split and bs % world:
                continue
            case = dict(size=size, batch_size=bs, world=world, split_batches=split, even_batches=even)
            per_rank = [rank_steps(size, bs, world, r, split_batches=split, even_batches=even) for r in range(world)]
            real = Counter(i for steps in per_rank for batch, mask in steps for i, m in zip(batch, mask) if m)
            assert real == Counter(range(size)), (case, per_rank)
            for steps in per_rank:  # padding is only ever at the end of the last batch
                for step, (_, mask) in enumerate(steps):
                    assert mask == sorted(mask, reverse=True), (case, per_rank)
                    assert all(mask) or step == len(steps) - 1, (case, per_rank)
            if even:
                # The samples gather_for_metrics keeps: the last gathered step (rank 0's batch, rank 1's, ...)
                # trimmed to the loader's remainder.
                last = [i for steps in per_rank for i in steps[-1][0]]
                kept = [i for steps in per_rank for i, m in zip(*steps[-1]) if m]
                remainder = size % (bs if split else bs * world)
                assert kept == (last[:remainder] if remainder else last), (case, per_rank)


def test_mask_outside_a_loader_and_with_drop_last_is_all_true():
    assert padding_mask(3).tolist() == [True] * 3
    assert padding_mask(0).shape == (0,)
    for rank in range(2):  # drop_last: remainder is -1, the incomplete round is dropped, nothing is padding
        dl = prepare_data_loader(DataLoader(list(range(7)), batch_size=2, drop_last=True), num_processes=2,
                                 process_index=rank)
        assert [padding_mask(len(b)).tolist() for b in dl] == [[True, True]]


def test_mask_after_skip_first_batches_still_finds_the_shard():
    dl = prepare_data_loader(DataLoader(list(range(11)), batch_size=2), num_processes=2, process_index=1)
    skipped = skip_first_batches(dl, 1)
    got = [(b.tolist(), padding_mask(len(b)).tolist()) for b in skipped]
    # rank 1 gets [2,3] (skipped), [6,7], then [10, 0] of the padded last round
    assert got == [([6, 7], [True, True]), ([10, 0], [True, False])]


class Stream(IterableDataset):
    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self):
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


@pytest.mark.parametrize("split", [False, True])
def test_mask_on_a_sharded_iterable_dataset(split):
    for size in (1, 2, 5, 7, 12, 13, 25):
        per_rank = []
        for rank in range(3):
            try:
                dl = prepare_data_loader(DataLoader(Stream(size), batch_size=6 if split else 2), num_processes=3,
                                         process_index=rank, split_batches=split)
            except NotImplementedError:
                pytest.skip("this overdrive does not shard IterableDatasets yet")
            per_rank.append([(b.tolist(), padding_mask(len(b)).tolist()) for b in dl])
        real = Counter(i for steps in per_rank for batch, mask in steps for i, m in zip(batch, mask) if m)
        assert real == Counter(range(size)), (size, per_rank)


def test_mask_device_argument():
    assert padding_mask(2, device="cpu").device == torch.device("cpu")


def dyadic_data(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Values k/8 and integer weights 1..9: every float64 sum below is exact, so results compare with ==."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-80, 80, (size,), generator=g).double() / 8
    weights = torch.randint(1, 10, (size,), generator=g)
    return values, weights


def reference(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    v, w = values.double(), weights.double()
    return (v * w).sum() / w.sum()


@pytest.mark.parametrize("size", [1, 7, 101])
def test_weighted_mean_at_world_1_equals_the_float64_reference(size):
    values, weights = dyadic_data(size)
    loader = Accelerator().prepare(DataLoader(TensorDataset(values.float(), weights), batch_size=4))
    metric = WeightedMean()
    for v, w in loader:
        metric.update(v, w)
    got = metric.compute()
    assert got.dtype == torch.float64 and got.shape == ()
    assert got == reference(values, weights)


def test_weighted_mean_of_random_floats_matches_to_float64_rounding():
    g = torch.Generator().manual_seed(1)
    values, weights = torch.randn(37, generator=g), torch.rand(37, generator=g)
    loader = Accelerator().prepare(DataLoader(TensorDataset(values, weights), batch_size=5))
    metric = WeightedMean()
    for v, w in loader:
        metric.update(v, w)
    torch.testing.assert_close(metric.compute(), reference(values, weights), rtol=1e-14, atol=0)


@pytest.mark.parametrize("size,world,split", [(1, 3, False), (7, 2, False), (101, 3, False), (10, 4, True)])
def test_weighted_mean_over_simulated_ranks_equals_the_reference(size, world, split):
    # One metric fed by every simulated rank is what compute()'s all-reduce of the per-rank sums amounts to.
    values, weights = dyadic_data(size, seed=size)
    metric = WeightedMean()
    naive = []
    for rank in range(world):
        dl = prepare_data_loader(DataLoader(TensorDataset(values, weights), batch_size=4), num_processes=world,
                                 process_index=rank, split_batches=split)
        for v, w in dl:
            metric.update(v, w)
            naive.append(reference(v, w))
    assert metric.compute() == reference(values, weights)
    if size == 7:  # averaging per-batch means counts the padded copy of sample 0 and weighs batches alike
        assert torch.stack(naive).mean() != reference(values, weights)


def test_unweighted_and_multi_dimensional_values():
    metric = WeightedMean()
    metric.update(torch.tensor([[1.0, 3.0], [5.0, 7.0]]))  # per-sample means 2 and 6
    metric.update(torch.tensor([True, False]))  # booleans count as 1 and 0 (accuracy)
    assert metric.compute() == torch.tensor((2 + 6 + 1 + 0) / 4, dtype=torch.float64)
    metric.reset()
    metric.update(torch.tensor([4.0]), torch.tensor([2]))
    assert metric.compute() == 4.0


def test_weighted_mean_errors_name_the_inputs():
    metric = WeightedMean()
    with pytest.raises(ValueError, match=r"total weight .* is 0"):
        metric.compute()
    with pytest.raises(ValueError, match=r"weights has shape \(3,\) but values has 2 samples"):
        metric.update(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"one value per sample"):
        metric.update(torch.tensor(1.5))
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        metric.update([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="weights must be a torch.Tensor"):
        metric.update(torch.ones(2), [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch_len=-1 must be an int >= 0"):
        padding_mask(-1)
    metric.update(torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"total weight over all 1 process\(es\) is 0"):
        metric.compute()


def test_batch_length_that_does_not_match_the_loader_is_an_error():
    dl = prepare_data_loader(DataLoader(list(range(7)), batch_size=4), num_processes=2, process_index=1)
    metric = WeightedMean()
    for batch in dl:  # one batch: [4, 5, 6, 0]
        with pytest.raises(ValueError, match=r"batch_len=8 is larger than .* batch size on this process \(4\)"):
            metric.update(torch.ones(8))
        with pytest.raises(ValueError, match=r"batch_len=3 does not match .* last batch on process 1, which has "
                                             r"4 samples"):
            padding_mask(3)
        metric.update(batch.float())
    assert metric.compute() == 5.0  # (4 + 5 + 6) / 3: the padded copy of sample 0 is left out
    assert not GradientState().in_dataloader
