"""overdrive.metrics.WeightedMean on 2 and 3 real gloo ranks (torchrun): exact against a single-process float64
reference for dataset sizes 1, 7 and 101, padding excluded, while averaging per-rank means is biased."""

from __future__ import annotations

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist

CASES = ["size1", "size7", "size101", "size101-shuffled", "size1-split", "size7-split", "size101-split"]


@pytest.mark.parametrize("nproc", [2, 3])
def test_weighted_mean_is_exact_at_any_dataset_size(nproc: int) -> None:
    proc = torchrun(WORKERS / "metrics_exact.py", nproc=nproc, timeout=180)
    out = proc.stdout
    missing = [f"METRIC OK rank={r} world={nproc} case={c} " for r in range(nproc) for c in CASES]
    missing = [m for m in missing if m not in out]
    assert not missing, f"missing {missing}\n--- stdout ---\n{out}\n--- stderr ---\n{proc.stderr}"
    for rank in range(nproc):
        assert f"NAIVE BIASED rank={rank} sizes=[" in out, out
        assert f"ALL OK rank={rank}" in out, out
