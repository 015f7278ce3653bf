"""Mid-epoch resume in one process: save_state records each loader's position, load_state restores the epoch and
seed, and a loader restored by load_state is never skipped twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from overdrive import Accelerator, DataLoaderConfiguration
from overdrive.state import AcceleratorState, GradientState

SIZE, BATCH = 24, 2  # 12 batches per epoch


def build(stateful: bool) -> tuple[Accelerator, DataLoader]:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    acc = Accelerator(dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=stateful))
    dl = acc.prepare(DataLoader(list(range(SIZE)), batch_size=BATCH, shuffle=True))
    return acc, dl


def batches(dl: DataLoader) -> list[list[int]]:
    return [b.tolist() for b in dl]


def reference() -> list[list[list[int]]]:
    """Epochs 0, 1 and 2 of an uninterrupted run."""
    _, dl = build(False)
    return [batches(dl), batches(dl), batches(dl)]


@pytest.mark.parametrize("stop", [3, 11, 12])
def test_save_state_records_position_and_load_state_restores_epoch(tmp_path: Path, stop: int) -> None:
    torch.manual_seed(5)
    expected = reference()
    torch.manual_seed(5)
    acc, dl = build(False)
    batches(dl)  # epoch 0
    for step, _ in enumerate(dl):  # epoch 1, interrupted after `stop` batches (12: its last batch)
        if step + 1 == stop:
            acc.save_state(tmp_path / "ckpt")
            break
    saved = json.loads((tmp_path / "ckpt" / "overdrive_loaders_0.json").read_text())["loaders"]
    done = stop % 12
    assert saved == [{"iteration": 1 + stop // 12, "batches_done": done, "seed": 5, "global_batch": 2, "world_size": 1}]

    torch.manual_seed(999)  # a fresh process would have another seed: load_state restores it
    acc, dl = build(False)
    acc.load_state(tmp_path / "ckpt")
    assert dl.iteration == 1 + stop // 12
    if stop == 12:  # saved after the epoch's last batch: resume at the start of the next epoch
        assert batches(dl) == expected[2]
        return
    resumed = acc.skip_first_batches(dl, done)
    assert batches(resumed) == expected[1][done:]
    assert dl.iteration == 2  # finishing the skipped pass moves the loader itself to the next epoch


def test_skip_loader_reports_to_the_prepared_loader(tmp_path: Path) -> None:
    acc, dl = build(False)
    skipped = acc.skip_first_batches(dl, 4)
    for step, _ in enumerate(skipped):
        if step == 1:
            acc.save_state(tmp_path / "ckpt")  # the Accelerator saves `dl`; the position is the skip loader's
            break
    saved = json.loads((tmp_path / "ckpt" / "overdrive_loaders_0.json").read_text())["loaders"]
    assert saved[0]["iteration"] == 0 and saved[0]["batches_done"] == 6


def test_stateful_loader_is_not_skipped_twice(tmp_path: Path) -> None:
    torch.manual_seed(3)
    expected = reference()
    torch.manual_seed(3)
    acc, dl = build(True)
    for step, _ in enumerate(dl):
        if step == 4:
            acc.save_state(tmp_path / "ckpt")  # 5 batches of epoch 0 done
            break

    acc, dl = build(True)
    acc.load_state(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"num_batches=3.*restored this loader to batch 5.*num_batches=5"):
        acc.skip_first_batches(dl, 3)
    same = acc.skip_first_batches(dl, 5)  # the absolute position: continue from there, no second skip
    assert same is dl
    assert batches(same) == expected[0][5:]
    assert batches(dl) == expected[1]
    assert len(acc.skip_first_batches(dl, 2)) == 10  # nothing restored any more: an ordinary skip


def test_stateful_plain_iteration_resumes(tmp_path: Path) -> None:
    torch.manual_seed(4)
    expected = reference()
    torch.manual_seed(4)
    acc, dl = build(True)
    batches(dl)
    for step, _ in enumerate(dl):
        if step == 6:
            acc.save_state(tmp_path / "ckpt")
            break
    acc, dl = build(True)
    acc.load_state(tmp_path / "ckpt")
    assert batches(dl) == expected[1][7:]
