"""Resuming with another global batch in one process: load_state converts the saved position through samples, a
stateful loader continues by itself, a plain one accepts only the converted skip, and a position that no whole
number of steps reaches is refused before anything changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from overdrive import Accelerator, DataLoaderConfiguration, skip_first_batches
from overdrive.checkpoint_state import CheckpointError
from overdrive.state import AcceleratorState, GradientState

SIZE = 24


def build(stateful: bool, batch: int) -> tuple[Accelerator, DataLoader]:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    acc = Accelerator(dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=stateful))
    acc.prepare(torch.nn.Linear(1, 1))  # the checkpoint's model: load_state checks every file before changing any
    return acc, acc.prepare(DataLoader(list(range(SIZE)), batch_size=batch, shuffle=True))


def saved_after(folder: Path, stateful: bool, steps: int) -> list[int]:
    """Train epoch 0 with batch 2 for ``steps`` steps, save, and return the whole epoch's order (the reference)."""
    torch.manual_seed(3)
    acc, dl = build(stateful, 2)
    epoch: list[int] = []
    for step, batch in enumerate(dl):
        epoch += batch.tolist()
        if step + 1 == steps:
            acc.save_state(folder)
    return epoch


@pytest.mark.parametrize("stateful", [False, True])
def test_larger_batch_continues_after_the_same_samples(tmp_path: Path, stateful: bool) -> None:
    order = saved_after(tmp_path / "ckpt", stateful, steps=6)  # 12 of 24 samples done
    torch.manual_seed(99)  # a different seed: the order must come from the checkpoint
    acc, dl = build(stateful, 4)
    acc.load_state(tmp_path / "ckpt")
    if not stateful:
        with pytest.raises(ValueError, match="converted the checkpoint's position to 3 batches of 4 samples"):
            skip_first_batches(dl, 6)  # the saving run's count: would repeat samples
    active = skip_first_batches(dl, 3)
    assert (active is dl) == stateful  # a stateful loader positions itself
    rest = [i for batch in active for i in batch.tolist()]
    assert rest == order[12:]
    assert [i for batch in dl for i in batch.tolist()] != order  # the next epoch reshuffles, from the start
    assert sorted(order) == list(range(SIZE))


def test_stateful_loader_continues_without_a_skip(tmp_path: Path) -> None:
    order = saved_after(tmp_path / "ckpt", True, steps=4)  # 8 samples
    acc, dl = build(True, 8)
    acc.load_state(tmp_path / "ckpt")
    assert [i for batch in dl for i in batch.tolist()] == order[8:]
    point_folder = acc.save_state(tmp_path / "again")  # a save right after the resumed epoch: next epoch, batch 0
    assert point_folder.is_dir()


def test_position_no_step_reaches_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    saved_after(tmp_path / "ckpt", False, steps=5)  # 10 samples: not a multiple of 4
    acc, dl = build(False, 4)
    model = acc._models[0]
    torch.nn.init.constant_(model.weight, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"after 5 steps of 2 samples \(10 samples of epoch 0\).*4 samples per "
                                              r"step.*10 is not a multiple of 4"):
        acc.load_state(tmp_path / "ckpt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert dl.iteration == 0
