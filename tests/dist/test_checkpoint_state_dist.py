"""save_state / load_state in real torchrun launches: exact round trip in a fresh process at world 1 and 2, and
checkpoints exchanged with the installed Accelerate (its DDP on CPU) in both directions."""

from __future__ import annotations

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist


def run(phase: str, folder: str, world: int, fp16: bool) -> None:
    proc = torchrun(WORKERS / "ckpt_state.py", phase, folder, nproc=world, timeout=150,
                    env={"OD_FP16": "1" if fp16 else "0"})
    out = proc.stdout + proc.stderr
    for rank in range(world):
        assert f"[rank {rank}] CKPT_{phase.upper()}_OK" in out, out


def test_round_trip_in_a_fresh_process_one_rank_fp16(tmp_path):
    """Parameters, Adam, scheduler, fp16 scaler, a registered object, step and RNG streams come back exactly."""
    run("od-save", str(tmp_path), 1, fp16=True)
    run("od-load", str(tmp_path), 1, fp16=True)


def test_two_ranks_round_trip_and_accelerate_interop(tmp_path):
    """overdrive saves (fp16, DDP) → Accelerate loads it and checks every rank, then saves its own → a fresh
    overdrive launch loads both exactly (each rank's RNG streams included)."""
    run("od-save", str(tmp_path), 2, fp16=True)
    names = sorted(p.name for p in (tmp_path / "od").iterdir())
    assert names == ["custom_checkpoint_0.pkl", "model.safetensors", "optimizer.bin", "overdrive_complete.json",
                     "random_states_0.pkl", "random_states_1.pkl", "scaler.pt", "scheduler.bin"]
    run("acc-load-save", str(tmp_path), 2, fp16=False)
    assert not (tmp_path / "acc" / "overdrive_complete.json").exists()
    run("od-load", str(tmp_path), 2, fp16=True)
