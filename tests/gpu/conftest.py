"""GPU tests: skipped on machines without CUDA; run them on a GPU machine with `pytest tests/gpu`."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run tests/gpu on a GPU machine)")
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(skip)
