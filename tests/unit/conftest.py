"""Single-process tests: each test starts from fresh shared state (no process group is ever formed here)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from overdrive.state import AcceleratorState, GradientState

# Settings come from the environment too; a developer's exported ACCELERATE_* must not change unit results.
_SETTING_VARS = [v for v in os.environ if v.startswith(("ACCELERATE_", "OVERDRIVE_"))]


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in _SETTING_VARS:
        monkeypatch.delenv(var, raising=False)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
