"""FSDP2 on gloo/CPU with real torchrun launches: parity with a hand-written single-process loop, sharded checkpoints.

One training launch at world 2 runs every training check and writes the checkpoints; two fresh launches (world 1
and world 2) load them and continue. The checks themselves are in workers/fsdp_checks.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from launching import WORKERS, torchrun

TRAIN_LINES = [
    "FP32 PARITY OK", "MEMORY OK", "FULL_STATE_DICT OK", "ACCUM OK sync_each_batch=False", "ACCUM OK sync_each_batch=True",
    "ACTIVATION_CHECKPOINTING OK", "CPU_OFFLOAD OK", "RANK0_WEIGHTS OK", "WRAP_POLICY OK policy=size_based_wrap",
    "WRAP_POLICY OK policy=no_wrap", "CLIP OK", "SAVE OK", "EXACT_LOSS OK", "BF16 OK", "FP16 OK", "ALL OK",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("fsdp")
    out = torchrun(WORKERS / "fsdp_checks.py", "train", str(folder), nproc=2, timeout=240).stdout
    return folder, out


@pytest.mark.parametrize("rank", [0, 1])
def test_fsdp2_training_matches_reference(trained: tuple[Path, str], rank: int) -> None:
    _, out = trained
    for line in TRAIN_LINES:
        assert any(row.startswith(line) and row.endswith(f"rank={rank} world=2") for row in _rows(out)), (line, out)


def test_fsdp2_memory_per_rank_is_half(trained: tuple[Path, str]) -> None:
    ratios = [float(row.split("ratio=")[1].split()[0]) for row in _rows(trained[1]) if row.startswith("MEMORY OK")]
    assert len(ratios) == 2 and max(ratios) <= 0.55, ratios


def test_sharded_checkpoint_layout(trained: tuple[Path, str]) -> None:
    folder, _ = trained
    sharded = folder / "sharded"
    assert sorted(p.name for p in sharded.iterdir()) == ["optimizer_0", "pytorch_model_fsdp_0"]
    for sub in ("optimizer_0", "pytorch_model_fsdp_0"):
        names = sorted(p.name for p in (sharded / sub).iterdir())
        assert names == [".metadata", "__0_0.distcp", "__1_0.distcp"], names  # one shard file per rank
    assert sorted(p.name for p in (folder / "full").iterdir()) == ["model.safetensors", "optimizer.bin"]
    # save_state: the shards in Accelerate's FSDP folder names, no model.safetensors/optimizer.bin, the marker last
    names = sorted(p.name for p in (folder / "state").iterdir())
    assert names == ["optimizer_0", "overdrive_complete.json", "pytorch_model_fsdp_0", "random_states_0.pkl",
                     "random_states_1.pkl"], names


@pytest.mark.parametrize("nproc", [1, 2])
def test_sharded_checkpoint_resumes_at_any_world_size(trained: tuple[Path, str], nproc: int) -> None:
    folder, _ = trained
    out = torchrun(WORKERS / "fsdp_checks.py", "resume", str(folder), nproc=nproc, timeout=180).stdout
    for rank in range(nproc):
        for line in ("RESUME OK kind=sharded", "RESUME OK kind=full", "RESUME OK kind=state", "ALL OK"):
            assert any(row.startswith(line) and row.endswith(f"rank={rank} world={nproc}") for row in _rows(out)), (
                line, out)


def _rows(out: str) -> list[str]:
    # torchrun --tee prefixes each line with "[defaultN]:"; the records start after it.
    return [line.split("]:", 1)[-1].strip() for line in out.splitlines()]


def test_merge_weights_gives_the_full_model(trained: tuple[Path, str], tmp_path: Path) -> None:
    """`overdrive merge-weights` on the sharded checkpoint equals the full-state-dict save of the same moment, and
    loads into a plain (unsharded) module."""
    import sys

    import torch
    from safetensors.torch import load_file

    from launching import run_cmd

    folder, _ = trained
    run_cmd([sys.executable, "-m", "overdrive.commands.cli", "merge-weights", str(folder / "sharded"), str(tmp_path)],
            timeout=60)
    merged = load_file(str(tmp_path / "model.safetensors"))
    full = load_file(str(folder / "full" / "model.safetensors"))
    assert merged.keys() == full.keys() and all(torch.equal(merged[k], full[k]) for k in full)
    sys.path.insert(0, str(WORKERS))
    try:
        from fsdp_checks import make_model  # the worker's model, built plainly in this process
    finally:
        sys.path.remove(str(WORKERS))
    plain = make_model()
    plain.load_state_dict(merged)  # strict: every key of the plain module, no wrapper prefixes
    bad = run_cmd([sys.executable, "-m", "overdrive.commands.cli", "merge-weights", str(tmp_path), str(tmp_path / "x")],
                  timeout=60, check=False)
    assert bad.returncode == 2 and "holds no sharded model checkpoint" in bad.stderr
