"""Every docstring example in the package runs and prints what it says (examples cannot rot)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import overdrive
from overdrive.state import AcceleratorState, GradientState

MODULES = sorted(m.name for m in pkgutil.walk_packages(overdrive.__path__, "overdrive."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
