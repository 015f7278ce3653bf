"""overdrive.data_loader across 2 real processes (torchrun, gloo): ranks agree on the shuffle order."""

from __future__ import annotations

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist


def test_two_ranks_partition_every_shuffled_epoch():
    proc = torchrun(WORKERS / "data_loader_shuffle.py", nproc=2, timeout=120)
    out = proc.stdout + proc.stderr
    for rank in range(2):
        assert f"[rank {rank}] DATA_LOADER_OK" in out, out
