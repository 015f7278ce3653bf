"""save_state(async_save=True) in one process: same bytes as a synchronous save, a snapshot that later training cannot
change, exact load, failures reported at the wait with earlier checkpoints intact, rotation, and one save at a time."""

from __future__ import annotations

import collections
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from overdrive import Accelerator, DataLoaderConfiguration
from overdrive.checkpoint_state import COMPLETE_MARKER, CheckpointError, is_complete_checkpoint
from overdrive.state import AcceleratorState, GradientState
from overdrive.utils import ProjectConfiguration


class Gate:
    """Pickling it waits until the test opens the gate: holds the background writer at a known point.

    It sits in the optimizer's param_groups, so the writer stops while pickling optimizer.bin (torch.save pickles
    the whole object before it writes any storage bytes) and everything after it is written only once the test has
    changed the live training state.
    """

    def __init__(self) -> None:
        self.open, self.reached = threading.Event(), threading.Event()

    def __deepcopy__(self, memo: dict[int, Any]) -> Gate:
        return self  # the snapshot keeps the same gate

    def __reduce__(self) -> tuple[Any, ...]:
        self.reached.set()
        assert self.open.wait(60), "the test never opened the gate"
        return (collections.OrderedDict, ())  # loads with weights_only=True


class Tracker:
    """A registered object whose state refers to live training tensors (as an EMA or a metric buffer would)."""

    def __init__(self, model: torch.nn.Module, opt: Any) -> None:
        self.model, self.opt, self.count = model, opt, 0

    def state_dict(self) -> dict[str, Any]:
        weight = next(self.model.parameters())
        adam = self.opt.state[weight]
        return {"count": self.count, "weight": weight.data, "weight_view": weight.data[0],
                "exp_avg": adam["exp_avg"] if adam else None, "note": ["kept", {"as": "is"}]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


def reset() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def build(project: Path | None = None, limit: int | None = None, fp16: bool = False) -> tuple[Any, ...]:
    torch.manual_seed(0)
    config = None
    if project is not None:
        config = ProjectConfiguration(str(project), automatic_checkpoint_naming=True, total_limit=limit)
    acc = Accelerator(mixed_precision="fp16" if fp16 else None, project_config=config,
                      dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    data = torch.utils.data.TensorDataset(torch.randn(40, 6, generator=torch.Generator().manual_seed(1)))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)
    model, opt, sched, loader = acc.prepare(model, opt, sched, loader)
    tracker = Tracker(acc.unwrap_model(model), opt.optimizer)
    acc.register_for_checkpointing(tracker)
    return acc, model, opt, sched, loader, tracker


def batch(step: int) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(100 + step))


def train(acc: Any, model: Any, opt: Any, sched: Any, tracker: Tracker, steps: range) -> None:
    for step in steps:
        with acc.autocast():
            loss = model(batch(step)).float().pow(2).mean()
        acc.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        tracker.count += 1
        acc.step += 1


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("safe", [True, False])
def test_async_files_equal_a_sync_save_at_the_same_point_despite_training_on(tmp_path: Path, safe: bool) -> None:
    acc, model, opt, sched, loader, tracker = build(fp16=True)
    train(acc, model, opt, sched, tracker, range(3))
    for i, _ in enumerate(loader):  # a mid-epoch loader position and sampler state go into the checkpoint too
        if i == 2:
            break
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    gate = Gate()
    opt.optimizer.param_groups[0]["gate"] = gate
    gate.open.set()
    sync = acc.save_state(tmp_path / "sync", safe_serialization=safe)
    assert acc.wait_for_checkpoint() is None

    gate.open.clear()
    folder = acc.save_state(tmp_path / "async", safe_serialization=safe, async_save=True)
    assert folder == tmp_path / "async" and not folder.exists()  # visible only once committed
    assert gate.reached.wait(60)  # the writer is now stuck inside optimizer.bin
    # Change everything the checkpoint holds, in place and by training, before the writer may go on.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for state in opt.optimizer.state.values():
        state["exp_avg"].mul_(3.0)
        state["exp_avg_sq"].add_(1.0)
    train(acc, model, opt, sched, tracker, range(3, 6))
    next(iter(loader))
    acc.scaler.update(7.0)
    torch.rand(3), random.random()
    gate.open.set()

    assert acc.wait_for_checkpoint() == folder
    assert acc.wait_for_checkpoint() is None
    assert folder.is_dir() and (folder / COMPLETE_MARKER).is_file()
    assert not list(tmp_path.glob(".async.tmp-*"))
    sync_files, async_files = files(sync), files(folder)
    assert sorted(async_files) == sorted(sync_files)
    expected = {"optimizer.bin", "scheduler.bin", "sampler.bin", "scaler.pt", "random_states_0.pkl",
                "custom_checkpoint_0.pkl", "overdrive_loaders_0.json", COMPLETE_MARKER,
                "model.safetensors" if safe else "pytorch_model.bin"}
    assert set(async_files) == expected
    for name in sync_files:
        assert async_files[name] == sync_files[name], f"{name} differs from the synchronous save's"


def reference_weights(steps: int) -> list[torch.Tensor]:
    """A hand-written loop over the same batches: plain torch, no overdrive."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for step in range(steps):
        loss = model(batch(step)).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_async_checkpoint_loads_exactly_and_training_continues_like_the_reference(tmp_path: Path) -> None:
    acc, model, opt, sched, loader, tracker = build()
    train(acc, model, opt, sched, tracker, range(4))
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    at_save = {
        "params": [p.detach().clone() for p in model.parameters()],
        "adam": {k: {n: v.clone() for n, v in s.items()} for k, s in opt.state_dict()["state"].items()},
        "sched": sched.state_dict(), "count": tracker.count, "step": acc.step,
    }
    acc.save_state(tmp_path / "ckpt", async_save=True)
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    train(acc, model, opt, sched, tracker, range(50, 53))  # keeps training on other data while the files are written
    assert acc.wait_for_checkpoint() == tmp_path / "ckpt"

    reset()
    acc, model, opt, sched, loader, tracker = build()
    train(acc, model, opt, sched, tracker, range(70, 72))
    acc.load_state(tmp_path / "ckpt")
    for p, q in zip(model.parameters(), at_save["params"]):
        assert torch.equal(p, q)
    state = opt.state_dict()["state"]
    assert state.keys() == at_save["adam"].keys()
    for k in state:
        for n in state[k]:
            assert torch.equal(state[k][n], at_save["adam"][k][n]), (k, n)
    assert sched.state_dict() == at_save["sched"]
    assert tracker.count == at_save["count"] and acc.step == at_save["step"]
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == draws[:2] and torch.equal(got[2], draws[2])
    train(acc, model, opt, sched, tracker, range(4, 8))
    for p, q in zip(model.parameters(), reference_weights(8)):
        assert torch.equal(p, q)


class Unpicklable:
    """A registered object whose state holds a lambda (a schedule function, say): torch.save cannot write it."""

    def __init__(self) -> None:
        self.schedule = lambda step: 0.5 ** step

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule = state["schedule"]


def test_a_failed_background_write_raises_at_the_wait_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    acc, model, opt, sched, loader, tracker = build(tmp_path, limit=1)
    train(acc, model, opt, sched, tracker, range(2))
    good = acc.save_state(async_save=True)
    assert acc.wait_for_checkpoint() == tmp_path / "checkpoints" / "checkpoint_0" == good
    saved = [p.detach().clone() for p in model.parameters()]
    train(acc, model, opt, sched, tracker, range(2, 4))
    acc.register_for_checkpointing(Unpicklable())
    assert acc.save_state(async_save=True) == tmp_path / "checkpoints" / "checkpoint_1"  # the snapshot is fine
    with pytest.raises(CheckpointError, match=r"checkpoint_1.*in the background failed .*lambda.*earlier checkpoints"):
        acc.wait_for_checkpoint()
    assert acc.wait_for_checkpoint() is None  # reported once
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_0"]  # no leftovers
    assert is_complete_checkpoint(good) and acc.save_iteration == 1

    acc._custom_objects.pop()
    acc.load_state()  # the newest complete checkpoint: the one before the failure
    for p, q in zip(model.parameters(), saved):
        assert torch.equal(p, q)
    assert acc.save_state(async_save=True) == tmp_path / "checkpoints" / "checkpoint_1"  # the number is reused
    acc.end_training()  # commits, and total_limit=1 then removes checkpoint_0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_1"]


def test_rotation_with_total_limit_under_async_saves(tmp_path: Path) -> None:
    acc, model, opt, sched, loader, tracker = build(tmp_path, limit=2)
    for step in range(5):
        train(acc, model, opt, sched, tracker, range(step, step + 1))
        acc.save_state(async_save=True)  # each save first commits (and rotates) the one before
        names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith("."))
        assert names == [f"checkpoint_{i}" for i in range(max(0, step - 2), step)]
    assert acc.wait_for_checkpoint() == tmp_path / "checkpoints" / "checkpoint_4"
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_3", "checkpoint_4"]
    assert all(is_complete_checkpoint(root / n) for n in ("checkpoint_3", "checkpoint_4"))
    assert acc.save_iteration == 5


def test_a_second_save_waits_for_the_pending_one(tmp_path: Path) -> None:
    acc, model, opt, sched, loader, tracker = build(tmp_path)
    gate = Gate()
    opt.optimizer.param_groups[0]["gate"] = gate
    first = acc.save_state(async_save=True)
    assert gate.reached.wait(60) and not first.exists()
    assert acc.save_iteration == 0  # the number is taken when the save commits
    opener = threading.Timer(0.3, gate.open.set)
    opener.start()
    second = acc.save_state()  # synchronous: first commits checkpoint_0, then writes checkpoint_1
    assert gate.open.is_set()  # it could only return after the first save's writer was let go
    assert first == tmp_path / "checkpoints" / "checkpoint_0" and second == tmp_path / "checkpoints" / "checkpoint_1"
    assert is_complete_checkpoint(first) and is_complete_checkpoint(second)
    assert files(first).keys() == files(second).keys()
    assert acc.wait_for_checkpoint() is None and acc.save_iteration == 2


def test_load_state_commits_a_pending_save_before_reading_it(tmp_path: Path) -> None:
    acc, model, opt, sched, loader, tracker = build(tmp_path)
    train(acc, model, opt, sched, tracker, range(2))
    saved = [p.detach().clone() for p in model.parameters()]
    acc.save_state(async_save=True)
    train(acc, model, opt, sched, tracker, range(2, 4))
    acc.load_state()  # automatic naming: finds checkpoint_0 only because the pending save committed first
    for p, q in zip(model.parameters(), saved):
        assert torch.equal(p, q)


def test_bad_async_save_value_is_refused_before_any_file(tmp_path: Path) -> None:
    acc = build()[0]
    with pytest.raises(TypeError, match=r"async_save='yes'.*True .*or False"):
        acc.save_state(tmp_path / "ckpt", async_save="yes")
    assert not list(tmp_path.iterdir())


def test_exit_handler_leaves_the_save_uncommitted_when_a_rank_never_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The exit path never hangs: the writer waits a bounded time for every rank's done-file, then gives up."""
    from overdrive import checkpoint_state

    acc = build()[0]
    folder = acc.save_state(tmp_path / "ckpt", async_save=True)
    (save,) = [s for s in checkpoint_state._PENDING if s.owner() is acc]
    save.world = 2  # as if a second rank had saved too and died before its background write finished
    monkeypatch.setattr(checkpoint_state, "_EXIT_WAIT_S", 0.3)
    checkpoint_state._finish_pending_at_exit()  # returns (after 0.3 s) instead of waiting for rank 1
    assert not folder.exists() and acc.wait_for_checkpoint() is None
    (tmp,) = tmp_path.glob(".ckpt.tmp-*")
    assert (tmp / ".overdrive_done_0.json").is_file()  # this rank's part is written, the commit is not
    assert "rank(s) [1] did not finish" in caplog.text and "left uncommitted" in caplog.text


def test_exit_handler_commits_a_pending_save(tmp_path: Path) -> None:
    from overdrive import checkpoint_state

    acc, model, opt, sched, loader, tracker = build()
    train(acc, model, opt, sched, tracker, range(2))
    sync = acc.save_state(tmp_path / "sync")
    folder = acc.save_state(tmp_path / "async", async_save=True)
    train(acc, model, opt, sched, tracker, range(2, 4))
    checkpoint_state._finish_pending_at_exit()  # what interpreter exit runs
    assert files(folder) == files(sync)  # committed, without the done-file, and with the same bytes
