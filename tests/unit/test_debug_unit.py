"""Single-process parts of overdrive.debug: settings parsing, call sites, what must agree, progress marks."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

import overdrive.debug as debug


def test_timeouts_defaults_and_overrides():
    assert debug.read_timeouts(environ={}) == (10.0, 600.0)
    assert debug.read_timeouts(timedelta(seconds=60), environ={}) == (10.0, 54.0)  # 90% of an explicit pg timeout
    assert debug.read_timeouts(environ={"OVERDRIVE_DEBUG_TIMEOUT": "2.5", "OVERDRIVE_WATCHDOG_TIMEOUT": "0"}) == (2.5, 0)
    with pytest.raises(ValueError, match=r"OVERDRIVE_WATCHDOG_TIMEOUT='-1' must be >= 0"):
        debug.read_timeouts(environ={"OVERDRIVE_WATCHDOG_TIMEOUT": "-1"})


def test_call_site_is_the_first_frame_outside_overdrive():
    site, via = debug.call_site()
    assert site.endswith(f"test_debug_unit.py:{test_call_site_is_the_first_frame_outside_overdrive.__code__.co_firstlineno + 1}")
    assert via == ""


def test_layout_keys_say_what_must_agree():
    a, b = torch.ones(2, 3), torch.ones(5, 3)
    assert debug._layout("gather", a, "")[0] == debug._layout("gather", b, "")[0]  # dim 0 may differ
    assert debug._layout("reduce", a, "reduction='sum'")[0] != debug._layout("reduce", b, "reduction='sum'")[0]
    assert debug._layout("gather", torch.ones(2, 4), "")[0] != debug._layout("gather", a, "")[0]
    assert debug._layout("gather", {"x": a, "y": torch.ones(2, dtype=torch.int64)}, "")[1] == "float32[2, 3], int64[2]"


def test_disagreement_message_lists_each_rank():
    entries = {0: ["gather", "k", "float32[2, 3]", "a.py:3", "", 0], 1: ["reduce", "k", "float32[]", "a.py:4", "", 1]}
    text = str(debug._disagreement(7, entries, 1))
    assert "collective #7" in text and "rank 0: gather(float32[2, 3]) at a.py:3" in text
    assert "rank 1: reduce(float32[]) at a.py:4" in text and "different collectives" in text


def test_tracked_marks_progress_and_sync_hook_runs_first():
    calls: list[str] = []
    before = debug._P.count
    debug.set_sync_hook(lambda: calls.append("hook"))
    try:
        assert debug.TRACKING
        assert debug.tracked("gather", None, "", lambda: calls.append("op") or "done") == "done"
    finally:
        debug.set_sync_hook(None)
    assert calls == ["hook", "op"] and debug._P.count == before + 2 and debug._P.op is None
    assert not debug.TRACKING  # no session in one process, no hook: collectives pay one attribute check


def test_patient_and_waiting_blocks():
    with debug.patient():
        assert debug._P.patient == 1
        with debug.waiting("checkpoint commit"):
            assert debug._P.op == "checkpoint commit"
        assert debug._P.op is None
    assert debug._P.patient == 0
