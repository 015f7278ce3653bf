"""A DDP script that keeps its model alive until exit must not die at interpreter shutdown (gloo exit abort).

Without overdrive's exit teardown, torch 2.13 on gloo aborts ~5-20% of plain runs ("terminate called without an
active exception", exit -6) and nearly every run with ``--starve``; 20 launches, half of them starved, must all
exit 0.
"""

from __future__ import annotations

import time

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist

LAUNCHES = 20


def test_ddp_script_exits_cleanly_without_explicit_cleanup() -> None:
    failures: list[str] = []
    start = time.monotonic()
    for i in range(LAUNCHES):
        args = ("--starve",) if i % 2 else ()
        proc = torchrun(WORKERS / "exit_ddp.py", *args, timeout=120, check=False)
        ok_ranks = proc.stdout.count("EXIT_DDP_OK")
        if proc.returncode != 0 or ok_ranks != 2:
            failures.append(
                f"launch {i} args={args} exit={proc.returncode} ok_ranks={ok_ranks}\n--- stdout ---\n{proc.stdout}"
                f"\n--- stderr ---\n{proc.stderr}"
            )
    elapsed = time.monotonic() - start
    print(f"{LAUNCHES} launches in {elapsed:.1f}s, {len(failures)} failed")
    assert not failures, f"{len(failures)} of {LAUNCHES} launches failed:\n\n" + "\n\n".join(failures)
