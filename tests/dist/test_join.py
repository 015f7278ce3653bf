"""join_uneven_inputs: ranks with different numbers of batches finish together, with Join's averaging rule."""

from __future__ import annotations

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist


def test_join_uneven_inputs() -> None:
    out = torchrun(WORKERS / "join_uneven.py", timeout=120).stdout
    assert "JOIN OK rank=0 steps=4" in out and "JOIN OK rank=1 steps=3" in out, out
