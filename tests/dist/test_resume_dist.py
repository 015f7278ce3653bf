"""Exact mid-epoch resume through save_state / load_state on 2 ranks, in fresh processes, for both script styles.

(a) plain loaders + the script's own ``skip_first_batches(dl, n)``; (b) ``use_stateful_dataloader=True``, where
load_state restores the position (and a script that also skips must not skip twice). The resumed sample stream
must continue the uninterrupted one exactly and the final weights (dropout + Adam) must be bitwise equal.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from launching import WORKERS, torchrun

WORKER = WORKERS / "resume_train.py"
SAMPLES, WORLD, STEPS_PER_EPOCH = 64, 2, 8


def read(folder: Path, name: str, rank: int) -> dict:
    return json.loads((folder / f"{name}-rank{rank}.json").read_text())


def check_epochs(streams: list[list[int]]) -> None:
    """Per epoch, the ranks together see every sample exactly once."""
    per_epoch = SAMPLES // WORLD
    for epoch in range(2):
        seen = Counter(i for s in streams for i in s[epoch * per_epoch:(epoch + 1) * per_epoch])
        duplicates = {i: c for i, c in seen.items() if c > 1}
        missing = sorted(set(range(SAMPLES)) - set(seen))
        assert not duplicates and not missing, f"epoch {epoch}: duplicates {duplicates}, missing {missing}"


@pytest.mark.parametrize("style, resumes", [("a", [(11, "a")]), ("b", [(11, "b"), (5, "b-skip")])])
def test_resume_continues_the_stream_exactly(tmp_path: Path, style: str, resumes: list[tuple[int, str]]) -> None:
    torchrun(WORKER, "full", style, str(tmp_path), timeout=120)
    full = [read(tmp_path, f"full-{style}", r) for r in range(WORLD)]
    check_epochs([f["stream"] for f in full])
    assert all(f["steps"] == 2 * STEPS_PER_EPOCH for f in full)
    for stop, resume_style in resumes:
        torchrun(WORKER, "resume", resume_style, str(tmp_path), str(stop), timeout=120)
        for rank in range(WORLD):
            before = full[rank]["stream"][: full[rank]["saved_at"][str(stop)]]
            after = read(tmp_path, f"resume-{resume_style}-{stop}", rank)
            assert before + after["stream"] == full[rank]["stream"], (
                f"rank {rank}, resumed ({resume_style}) after step {stop}: stream differs from the uninterrupted run"
            )
            assert after["weights"] == full[rank]["weights"], f"rank {rank}: final weights differ (resume {stop})"
        streams = [full[r]["stream"][: full[r]["saved_at"][str(stop)]]
                   + read(tmp_path, f"resume-{resume_style}-{stop}", r)["stream"] for r in range(WORLD)]
        check_epochs(streams)
