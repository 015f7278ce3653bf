"""Real torchrun launches (gloo, CPU): overdrive equals a hand-written single-process loop."""

from __future__ import annotations

import pytest

from launching import WORKERS, torchrun


@pytest.mark.parametrize("nproc", [1, 2])
def test_training_parity_and_gather_for_metrics(nproc: int) -> None:
    out = torchrun(WORKERS / "train_parity.py", nproc=nproc, timeout=180).stdout
    for rank in range(nproc):
        assert f"ALL OK rank={rank}" in out, out
        for accum in (1, 2, 4):
            assert f"PARITY OK rank={rank} world={nproc} accum={accum}" in out, out
        assert f"GATHER_FOR_METRICS OK rank={rank} world={nproc} n=101" in out, out
