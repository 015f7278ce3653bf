"""Collectives, seeding and logging on 2 real gloo ranks launched with torchrun (one launch, many checks)."""

from __future__ import annotations

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist

CHECKS = [
    "gather_nested",
    "gather_uneven_dim0",
    "gather_many_tensors",
    "gather_mismatch_errors",
    "gather_object",
    "reduce",
    "broadcast",
    "pad_across_processes",
    "set_seed_device_specific",
    "synchronize_rng_states",
    "logging",
]


def test_collectives_two_ranks(tmp_path):
    shared_log = tmp_path / "shared.log"
    proc = torchrun(WORKERS / "collectives_checks.py", str(shared_log), nproc=2, timeout=180)
    out = proc.stdout
    missing = [f"OK {c} rank {r}" for c in CHECKS for r in (0, 1) if f"OK {c} rank {r}" not in out]
    assert not missing, f"missing {missing}\n--- stdout ---\n{out}\n--- stderr ---\n{proc.stderr}"
    assert "DONE rank 0" in out and "DONE rank 1" in out
    # The worker's own file checks ran on every rank; check the main-process-only line once more from outside.
    lines = shared_log.read_text().splitlines()
    assert [line for line in lines if "default-main-only" in line] == ["[RANK 0] default-main-only"]
