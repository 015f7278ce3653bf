"""save_state(async_save=True) under torchrun with 2 ranks: committed at wait_for_checkpoint while DDP keeps training,
and committed at interpreter exit when the script never waits (loaded afterwards in a fresh launch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist


def launch(phase: str, project: Path) -> str:
    proc = torchrun(WORKERS / "async_ckpt.py", phase, str(project), nproc=2, timeout=150)
    out = proc.stdout + proc.stderr
    return out


def test_async_save_then_wait_loads_the_state_at_save_time_on_both_ranks(tmp_path: Path) -> None:
    """Then a background write failing on rank 0 only is an error at the wait on both ranks, committing nothing."""
    out = launch("wait", tmp_path)
    for rank in range(2):
        assert f"[rank {rank}] ASYNC_CKPT_WAIT_OK" in out, out
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_0"], out
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (root / "checkpoint_0").iterdir()}


def test_a_script_that_exits_without_waiting_still_commits_its_checkpoint(tmp_path: Path) -> None:
    out = launch("exit", tmp_path)
    for rank in range(2):
        assert f"[rank {rank}] ASYNC_CKPT_EXIT_OK" in out, out
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_0"], out  # committed: no hidden temporary folder
    folder = root / "checkpoint_0"
    names = {p.name for p in folder.iterdir()}
    marker = json.loads((folder / "overdrive_complete.json").read_text())
    assert set(marker["files"]) == names - {"overdrive_complete.json"}  # the exit handler's done-files are gone
    assert {"random_states_0.pkl", "random_states_1.pkl", "custom_checkpoint_0.pkl"} <= names
    out = launch("check", tmp_path)
    for rank in range(2):
        assert f"[rank {rank}] ASYNC_CKPT_CHECK_OK" in out, out
