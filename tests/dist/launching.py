"""Launch helpers for real multi-process tests: every launch has a wall-clock bound and shows each rank's output on failure.

A plain module, not conftest.py: tests import it by name (`from launching import ...`), which would be ambiguous
with tests/unit/conftest.py in one pytest run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for worker processes: one thread each (2 cores), the source tree importable."""
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")})
    env.update(extra or {})
    return env


def run_cmd(cmd: list[str], *, timeout: float = 120, env: dict[str, str] | None = None, cwd: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with a hard timeout; on failure (or timeout) fail the test with everything every rank printed."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=worker_env(env), cwd=cwd)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        errs = (err.stderr or b"").decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
        pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n--- stdout ---\n{out}\n--- stderr ---\n{errs}")
    if check and proc.returncode != 0:
        pytest.fail(
            f"exit {proc.returncode}: {' '.join(cmd)}\n--- stdout (all ranks) ---\n{proc.stdout}\n"
            f"--- stderr (all ranks) ---\n{proc.stderr}"
        )
    return proc


def torchrun(script: str | Path, *args: str, nproc: int = 2, timeout: float = 120,
             env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Launch ``script`` under plain torchrun on this host (free port chosen by the standalone rendezvous)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--tee=3", str(script), *args]
    return run_cmd(cmd, timeout=timeout, env=env, check=check)


def overdrive_launch(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
                     check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``overdrive launch ARGS`` through the installed console entry point's module."""
    cmd = [sys.executable, "-m", "overdrive.commands.cli", "launch", *args]
    return run_cmd(cmd, timeout=timeout, env=env, check=check)
