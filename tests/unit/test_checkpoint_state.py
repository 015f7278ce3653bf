"""save_state / load_state in one process: layout, exact round trip, Accelerate interop, crash safety, safe loading."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import overdrive
from overdrive import Accelerator
from overdrive.checkpoint_state import COMPLETE_MARKER, CheckpointError
from overdrive.state import AcceleratorState, GradientState
from overdrive.utils import ProjectConfiguration


class Counter:
    """A registered custom object (state_dict / load_state_dict)."""

    def __init__(self) -> None:
        self.count = 0
        self.history = torch.zeros(3)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "history": self.history.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.history = state["count"], state["history"].clone()


def build(lib: Any, **kwargs: Any) -> tuple[Any, ...]:
    """A fresh accelerator of ``lib`` with two models, Adam, a scheduler and a custom object, all prepared."""
    torch.manual_seed(0)
    acc = lib.Accelerator(**kwargs)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    head = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model, head, opt, sched = acc.prepare(model, head, opt, sched)
    counter = Counter()
    acc.register_for_checkpointing(counter)
    return acc, model, head, opt, sched, counter


def train(acc: Any, model: Any, head: Any, opt: Any, sched: Any, counter: Counter, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(5, 3, generator=gen)
        loss = head(model(x)).pow(2).mean()
        acc.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        counter.count += 1
        counter.history += 1


def snapshot(model: Any, head: Any, opt: Any, sched: Any, counter: Counter) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in list(model.parameters()) + list(head.parameters())],
        "adam": {k: {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in v.items()}
                 for k, v in opt.state_dict()["state"].items()},
        "sched": dict(sched.state_dict()),
        "counter": (counter.count, counter.history.clone()),
    }


def rng_draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(4)


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert len(a["params"]) == len(b["params"])
    for x, y in zip(a["params"], b["params"]):
        assert torch.equal(x, y)
    assert a["adam"].keys() == b["adam"].keys()
    for k in a["adam"]:
        for n in a["adam"][k]:
            assert torch.equal(torch.as_tensor(a["adam"][k][n]), torch.as_tensor(b["adam"][k][n])), (k, n)
    assert a["sched"] == b["sched"]
    assert a["counter"][0] == b["counter"][0] and torch.equal(a["counter"][1], b["counter"][1])


def reset_overdrive() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def reset_accelerate() -> None:
    import accelerate.state

    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


EXPECTED = {"model.safetensors", "model_1.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
            "custom_checkpoint_0.pkl", COMPLETE_MARKER}


@pytest.mark.parametrize("safe", [True, False])
def test_layout_and_exact_round_trip(tmp_path: Path, safe: bool) -> None:
    objs = build(overdrive, mixed_precision="fp16")
    acc = objs[0]
    train(*objs, steps=3, seed=1)
    seed_all(5)
    acc.step = 7
    saved = snapshot(*objs[1:])
    scale = acc.scaler.get_scale()
    folder = acc.save_state(tmp_path / "ckpt", safe_serialization=safe)
    expected_draws = rng_draws()

    names = {p.name for p in folder.iterdir()}
    weights = {"model.safetensors", "model_1.safetensors"} if safe else {"pytorch_model.bin", "pytorch_model_1.bin"}
    assert names == (EXPECTED - {"model.safetensors", "model_1.safetensors"}) | weights | {"scaler.pt"}
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    assert set(marker["files"]) == names - {COMPLETE_MARKER}
    assert acc.save_iteration == 1

    # A fresh accelerator, trained differently and with other RNG streams, comes back to the saved values exactly.
    reset_overdrive()
    objs2 = build(overdrive, mixed_precision="fp16")
    train(*objs2, steps=5, seed=2)
    objs2[0].scaler.update(123.0)
    seed_all(9)
    objs2[0].load_state(str(folder))
    assert_same(saved, snapshot(*objs2[1:]))
    assert objs2[0].scaler.get_scale() == scale
    assert objs2[0].step == 7
    got = rng_draws()
    assert got[:2] == expected_draws[:2] and torch.equal(got[2], expected_draws[2])


@pytest.mark.parametrize("direction", ["accelerate->overdrive", "overdrive->accelerate"])
def test_interop_with_accelerate(tmp_path: Path, direction: str) -> None:
    import accelerate

    writer, reader = (accelerate, overdrive) if direction.startswith("accelerate") else (overdrive, accelerate)
    reset_w, reset_r = (reset_accelerate, reset_overdrive) if writer is accelerate else (reset_overdrive, reset_accelerate)
    reset_w()
    objs = build(writer, cpu=True)
    train(*objs, steps=3, seed=1)
    seed_all(3)
    objs[0].step = 4
    saved = snapshot(*objs[1:])
    objs[0].save_state(str(tmp_path / "ckpt"))
    expected_draws = rng_draws()
    reset_w()

    reset_r()
    objs2 = build(reader, cpu=True)
    train(*objs2, steps=2, seed=2)
    seed_all(11)
    objs2[0].load_state(str(tmp_path / "ckpt"))
    assert_same(saved, snapshot(*objs2[1:]))
    assert objs2[0].step == 4
    got = rng_draws()
    assert got[:2] == expected_draws[:2] and torch.equal(got[2], expected_draws[2])
    # Training continues identically after the load.
    reset_r()


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {os.environ['EVIL_FLAG']}",))


@pytest.mark.parametrize("victim", ["random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin"])
def test_malicious_pickle_is_refused_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    objs = build(overdrive)
    folder = objs[0].save_state(tmp_path / "ckpt")
    flag = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_FLAG", str(flag))
    torch.save({"payload": Evil()}, folder / victim)
    (folder / COMPLETE_MARKER).unlink()  # as a tampered Accelerate-style folder
    before = snapshot(*objs[1:])
    with pytest.raises(CheckpointError, match=rf"refused to load .*{victim}.*nothing in it was executed"):
        objs[0].load_state(str(folder))
    assert not flag.exists()
    assert_same(before, snapshot(*objs[1:]))


def test_truncated_and_corrupt_files_are_named_and_nothing_changes(tmp_path: Path) -> None:
    objs = build(overdrive)
    acc = objs[0]
    folder = acc.save_state(tmp_path / "ckpt")
    train(*objs, steps=2, seed=3)
    before = snapshot(*objs[1:])
    data = (folder / "optimizer.bin").read_bytes()
    (folder / "optimizer.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"optimizer\.bin.*truncated"):
        acc.load_state(str(folder))
    (folder / COMPLETE_MARKER).unlink()  # without the marker the reader itself must notice
    with pytest.raises(CheckpointError, match=r"optimizer\.bin.*truncated or corrupt"):
        acc.load_state(str(folder))
    (folder / "optimizer.bin").write_bytes(data)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:40])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        acc.load_state(str(folder))
    assert_same(before, snapshot(*objs[1:]))  # model and optimizer were read in full before anything was changed


def test_checkpoint_of_another_model_names_the_key(tmp_path: Path) -> None:
    acc = Accelerator()
    model = acc.prepare(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    acc.save_state(tmp_path / "a")
    reset_overdrive()
    acc2 = Accelerator()
    acc2.prepare(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*no '1\.weight'"):
        acc2.load_state(str(tmp_path / "a"))
    reset_overdrive()
    acc3 = Accelerator()
    acc3.prepare(torch.nn.Sequential(torch.nn.Linear(2, 5)))
    with pytest.raises(CheckpointError, match=r"'0\.weight' has shape \(2, 2\) in the file but \(5, 2\)"):
        acc3.load_state(str(tmp_path / "a"))
    del model


def test_bad_paths_and_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"total_limit=0.*>= 1"):
        Accelerator(project_config=ProjectConfiguration(project_dir=str(tmp_path), total_limit=0))
    acc = Accelerator()
    acc.prepare(torch.nn.Linear(1, 1))
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=rf"{missing}.*does not exist"):
        acc.load_state(str(missing))
    afile = tmp_path / "file.txt"
    afile.write_text("keep me")
    with pytest.raises(ValueError, match=r"file\.txt.*is a file"):
        acc.save_state(str(afile))
    assert afile.read_text() == "keep me"
    with pytest.raises(ValueError, match="needs input_dir"):
        acc.load_state()
    with pytest.raises(ValueError, match="weights_only"):
        acc.save_state(tmp_path / "ok")
        acc.load_state(str(tmp_path / "ok"), load_kwargs={"weights_only": False})
    with pytest.raises(ValueError, match=r"#0 int"):
        acc.register_for_checkpointing(3)


def test_failed_save_leaves_previous_checkpoint_untouched(tmp_path: Path) -> None:
    objs = build(overdrive)
    acc = objs[0]
    folder = acc.save_state(tmp_path / "ckpt")
    (folder / "notes.txt").write_text("user file")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    class Broken:
        def state_dict(self) -> dict[str, Any]:
            raise RuntimeError("cannot serialise me")

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

    acc.register_for_checkpointing(Broken())
    with pytest.raises(RuntimeError, match="cannot serialise me"):
        acc.save_state(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left behind
    acc._custom_objects.pop()
    acc.save_state(folder)  # a good save replaces the state files and keeps the user's file
    assert (folder / "notes.txt").read_text() == "user file"


def test_automatic_naming_rotation_and_newest_complete(tmp_path: Path) -> None:
    config = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True, total_limit=2)
    objs = build(overdrive, project_config=config)
    acc = objs[0]
    root = tmp_path / "checkpoints"
    snaps = []
    for i in range(4):
        train(*objs, steps=1, seed=i)
        snaps.append(snapshot(*objs[1:]))
        assert acc.save_state() == root / f"checkpoint_{i}"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_2", "checkpoint_3"]
    with pytest.raises(ValueError, match="already exists"):
        acc.project_configuration.iteration = 3
        acc.save_state()

    # A newer folder that never finished (no marker, files missing) is neither loaded nor counted.
    (root / "checkpoint_9").mkdir()
    (root / "checkpoint_9" / "model.safetensors").write_bytes(b"partial")
    train(*objs, steps=1, seed=7)
    acc.load_state()
    assert_same(snaps[3], snapshot(*objs[1:]))
    acc.project_configuration.iteration = 4
    acc.save_state()
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_3", "checkpoint_4", "checkpoint_9"]

    # A markerless but complete folder (as Accelerate writes them) counts as a checkpoint.
    (root / "checkpoint_4" / COMPLETE_MARKER).unlink()
    train(*objs, steps=1, seed=8)
    acc.load_state()
    assert sorted(p.name for p in root.iterdir())[:2] == ["checkpoint_3", "checkpoint_4"]
    assert acc.save_state() == root / "checkpoint_5"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_4", "checkpoint_5", "checkpoint_9"]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_interrupted_saves_are_swept_and_nothing_else(tmp_path: Path) -> None:
    config = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True)
    acc = build(overdrive, project_config=config)[0]
    root = tmp_path / "checkpoints"
    root.mkdir()
    dead, old = _dead_pid(), 1_000_000_000.0  # a finished process; a 2001 timestamp
    folders = {
        "stale_tmp": root / f".checkpoint_0.tmp-{dead}",  # crashed writer, untouched for long: swept
        "stale_old": root / f".checkpoint_0.old-{dead}",  # crashed inside a commit: swept
        "fresh": root / f".checkpoint_1.tmp-{dead}",  # dead writer but written to a moment ago: kept
        "alive": root / f".checkpoint_2.tmp-{os.getpid()}",  # its writer runs: kept
        "other": root / ".notes.tmp-x",  # not named as a save's folder: kept
        "user": root / "my_data",
    }
    for folder in folders.values():
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "model.safetensors").write_bytes(b"partial")
    for key in ("stale_tmp", "stale_old", "alive", "other", "user"):
        for path in (folders[key] / "sub" / "model.safetensors", folders[key] / "sub", folders[key]):
            os.utime(path, (old, old))
    assert acc.save_state() == root / "checkpoint_0"
    left = {key for key, folder in folders.items() if folder.exists()}
    assert left == {"fresh", "alive", "other", "user"}
    assert (root / "checkpoint_0" / COMPLETE_MARKER).is_file()


def test_hooks_see_models_weights_and_folder(tmp_path: Path) -> None:
    acc = Accelerator()
    model = acc.prepare(torch.nn.Linear(2, 2))
    seen: list[Any] = []

    def save_hook(models: list[Any], weights: list[Any], folder: str) -> None:
        seen.append(("save", models[0] is model, sorted(weights[0]), folder))
        Path(folder, "extra.json").write_text("{}")  # a hook's files become part of the checkpoint

    def load_hook(models: list[Any], folder: str) -> None:
        seen.append(("load", len(models), folder))
        models.pop()  # the hook loads this model itself

    handle = acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)
    folder = acc.save_state(tmp_path / "c")
    assert seen[0][:3] == ("save", True, ["bias", "weight"]) and (folder / "extra.json").is_file()
    os.remove(folder / "model.safetensors")
    os.remove(folder / COMPLETE_MARKER)
    acc.load_state(str(folder))  # the hook took the model, so the missing weights file is fine
    assert seen[1] == ("load", 1, str(folder))
    handle.remove()
    acc.save_state(tmp_path / "d")
    assert len(seen) == 2
