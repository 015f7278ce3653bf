"""Two ranks: only the main process writes tracker files, the progress bar appears once (captured from a real
terminal), and the rank slowed on purpose is named the slowest in the stats report."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from launching import WORKERS, worker_env

WORKER = WORKERS / "tracking_progress.py"


def run_in_terminal(cmd: list[str], timeout: float) -> str:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal (as a user's shell would) and return what it shows."""
    master, slave = pty.openpty()
    # A terminal 120 columns wide: a new pty reports 0 columns, and tqdm would draw a bar of width 0.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=worker_env())
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n{b''.join(chunks).decode(errors='replace')}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    proc.wait(timeout=30)
    out = b"".join(chunks).decode(errors="replace")
    if proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}: {' '.join(cmd)}\n{out}")
    return out


def test_two_ranks_track_progress_and_name_the_straggler(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
           str(tmp_path), "1"]
    shown = run_in_terminal(cmd, timeout=150)
    # The bar: rank 0 only. tqdm draws a bar's empty start (0/20) once, then redraws it in place with \r.
    starts = re.findall(r"train:   0%\|[^\r\n|]*\| 0/20", shown)
    assert len(starts) == 1, f"expected one progress bar, saw {len(starts)}:\n{shown}"
    final = re.findall(r"train: 100%\|[^\r\n]*20/20[^\r\n]*", shown)[-1]
    assert re.search(r"\d+\.\d+(step/s|s/step)", final) and "samples/s=" in final, f"no rates in {final!r}"

    reports = json.loads((tmp_path / "reports.json").read_text())
    assert [r["step"] for r in reports] == [5, 10, 15, 20]
    # Named within 10 steps of the interval: every report from step 10 on names rank 1.
    assert all(r["slowest_rank"] == 1 for r in reports[1:]), [r["step_time_per_rank_s"] for r in reports]
    assert all(r["samples"] == 5 * 4 * 2 for r in reports)
    for r in reports[1:]:
        fast, slow = r["step_time_per_rank_s"]
        assert slow - fast > 0.015, r  # the 30 ms sleep shows on rank 1, not on rank 0

    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lines[0] == {"config": {"world": 2, "batch": 4}}
    logged = [x for x in lines[1:] if "loss" in x]
    assert [x["step"] for x in logged] == list(range(1, 21)) and {x["rank"] for x in logged} == {0}
    assert [x["step"] for x in lines[1:] if "perf/samples_per_s" in x] == [5, 10, 15, 20]

    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 21))  # one writer: no step twice
    assert {e.value for e in events.Scalars("rank")} == {0.0}
