"""Automatic recovery: a rank SIGKILLed mid-run, ``overdrive launch --max_restarts 1`` restarts the group, and
``accelerator.maybe_resume()`` continues from the newest complete checkpoint. The final weights must be bitwise
those of an uninterrupted run (computed in the same test by the same script with no kill)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from launching import WORKERS, overdrive_launch

SCRIPT = str(WORKERS / "recover_train.py")
TOTAL_STEPS = 16  # 2 epochs x 8 batches per rank


def launch(tmp: Path, name: str, kill_step: int, where: str) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    out = tmp / f"{name}.pt"
    overdrive_launch("--num_processes", "2", "--max_restarts", "1", "--monitor_interval", "0.5", SCRIPT,
                     str(tmp / name), str(out), str(kill_step), where, timeout=150)
    return torch.load(out, weights_only=True), json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    weights, info = launch(tmp_path_factory.mktemp("ref"), "ref", -1, "before-save")
    assert info == {"attempt": 0, "resumed": None, "steps": TOTAL_STEPS}
    return weights


# Seeded kill steps: one kill between an optimizer step and its save, one while rank 0 writes a checkpoint.
_RNG = random.Random(20240)
TRIALS = [(_RNG.randint(2, TOTAL_STEPS - 1), "before-save"), (_RNG.randint(2, TOTAL_STEPS - 1), "in-save")]


@pytest.mark.parametrize("kill_step,where", TRIALS)
def test_killed_rank_recovers_bitwise(reference: dict[str, torch.Tensor], tmp_path: Path, kill_step: int,
                                      where: str) -> None:
    weights, info = launch(tmp_path, "run", kill_step, where)
    # The launcher exited 0 (overdrive_launch checks it); the restart really happened and resumed from a checkpoint.
    assert info["attempt"] == 1 and info["steps"] == TOTAL_STEPS, info
    # Step k's save never finished, so the newest complete checkpoint is after step k-1 (checkpoint_{k-2}).
    assert info["resumed"] == f"checkpoint_{kill_step - 2}", info
    assert weights.keys() == reference.keys()
    for key in reference:
        assert torch.equal(weights[key], reference[key]), f"{key} differs after recovery (kill at step {kill_step})"
