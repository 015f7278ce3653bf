"""backward(loss_sum, num_items=n): the exact global token-mean gradient for world 1, 2 and 4 (oversubscribed on
this 2-core machine) and accumulation 1, 2 and 4, checked against a single-process reference in the worker."""

from __future__ import annotations

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist


@pytest.mark.parametrize("world", [1, 2, 4])
def test_exact_token_mean_gradient(world: int) -> None:
    out = torchrun(WORKERS / "exact_loss.py", nproc=world, timeout=240).stdout
    for rank in range(world):
        assert f"ALL OK rank={rank}" in out, out
        for accum in (1, 2, 4):
            assert f"EXACT OK rank={rank} world={world} accum={accum}" in out, out
        for mp in ("no", "bf16", "fp16"):
            assert f"PRECISION OK rank={rank} world={world} mp={mp}" in out, out
        assert f"MEAN_OF_MEANS DIFFERS rank={rank} world={world}" in out, out
