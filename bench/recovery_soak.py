"""Soak test of automatic recovery: how often a run whose rank is SIGKILLed finishes unattended, bitwise equal.

Each trial launches tests/dist/workers/recover_train.py with ``overdrive launch --num_processes 2 --max_restarts 1
--monitor_interval 0.5``; rank 1 kills itself on the first attempt after a random optimizer step (2..15 of 16), half
the trials between the step and its save_state, half from inside save_state. The restarted group resumes with
``accelerator.maybe_resume()``. A trial passes when the launcher exits 0 and rank 0's final weights equal, bit for
bit, those of one uninterrupted run of the same script. Reports passes, failures with their reason, and the wall
time per trial.

Run:
    python bench/recovery_soak.py               # 20 trials; writes docs/benchmarks.d/recovery_soak.md
    python bench/recovery_soak.py --trials 5 --no-write
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, child_env, summary, versions, write_fragment  # bench/ is on sys.path when run

FRAGMENT = ROOT / "docs" / "benchmarks.d" / "recovery_soak.md"
SCRIPT = ROOT / "tests" / "dist" / "workers" / "recover_train.py"
TOTAL_STEPS = 16


def launch(folder: Path, kill_step: int, where: str, timeout: float = 180) -> tuple[bool, str, float]:
    """One launch; ``(launcher exited 0, last output lines on failure, wall seconds)``."""
    env = child_env()
    env["PYTHONPATH"] = str(ROOT / "src")
    cmd = [sys.executable, "-m", "overdrive.commands.cli", "launch", "--num_processes", "2", "--max_restarts", "1",
           "--monitor_interval", "0.5", str(SCRIPT), str(folder / "project"), str(folder / "weights.pt"),
           str(kill_step), where]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    tail = "" if proc.returncode == 0 else f"exit {proc.returncode}: " + " | ".join(
        (proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return proc.returncode == 0, tail, time.perf_counter() - t0


def bitwise_equal(a: Path, b: Path) -> bool:
    import torch

    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help=f"print only; do not write {FRAGMENT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "ref"
        ok, why, _ = launch(ref, -1, "before-save")
        if not ok:
            print(f"uninterrupted reference run failed: {why}")
            return 1
        rows, times = [], []
        for trial in range(args.trials):
            kill, where = rng.randint(2, TOTAL_STEPS - 1), ("before-save", "in-save")[trial % 2]
            folder = Path(tmp) / f"t{trial}"
            ok, why, secs = launch(folder, kill, where)
            same = ok and bitwise_equal(folder / "weights.pt", ref / "weights.pt")
            if ok and not same:
                why = "finished, but the weights differ"
            times.append(secs)
            rows.append((trial, kill, where, same, why, secs))
            print(f"trial {trial}: kill after step {kill} ({where}): {'ok' if same else 'FAIL ' + why} ({secs:.1f} s)")
    passed = sum(r[3] for r in rows)
    t = summary(times)
    v = versions()
    lines = [
        "## Recovery after a killed rank (`bench/recovery_soak.py`)",
        "",
        f"{_dt.date.today().isoformat()}; Python {v['python']}, torch {v['torch']}, overdrive {v['overdrive']}; "
        f"{platform.machine()}, {platform.system()}, CPU, gloo. Each trial: `overdrive launch --num_processes 2 "
        "--max_restarts 1 --monitor_interval 0.5` of a 16-step run (MLP + dropout + Adam, seedable shuffle, "
        "`save_state` every step, automatic naming, `total_limit=2`); rank 1 SIGKILLs itself on the first attempt "
        "after a random step (seed "
        f"{args.seed}), alternately before that step's `save_state` and from inside it; the restarted group resumes "
        "with `accelerator.maybe_resume()`. Pass: launcher exit 0 and final weights bitwise equal to an "
        "uninterrupted run.",
        "",
        "| trials | finished, bitwise equal | failed | wall s per trial (median, min–max) |",
        "|---|---|---|---|",
        f"| {len(rows)} | {passed} | {len(rows) - passed} | {t['median']:.1f} ({t['min']:.1f}–{t['max']:.1f}) |",
        "",
    ]
    failures = [r for r in rows if not r[3]]
    if failures:
        lines += ["Failures:", ""] + [f"- trial {r[0]}, kill after step {r[1]} ({r[2]}): {r[4]}" for r in failures]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_fragment(text, FRAGMENT)
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
