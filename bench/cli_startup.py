"""Start-up time of the overdrive CLI's help screens against `accelerate --help`.

Each sample is a fresh process running the installed console script (`overdrive --help`, `overdrive launch --help`,
`overdrive config --help`, `accelerate --help`), wall time measured around it. The commands run interleaved (round
robin, so machine noise hits all alike) after one untimed warm-up each (to compile .pyc files). The issue's goal is
<= 0.3 s for the overdrive commands; `accelerate --help` imports torch and is the reference.

Run:
    python bench/cli_startup.py               # prints results and writes docs/benchmarks.d/cli_startup.md
    python bench/cli_startup.py --no-write    # prints only
    python bench/cli_startup.py --repeats 15
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, child_env, ratio, summary, versions, write_fragment  # bench/ is on sys.path when run

FRAGMENT = ROOT / "docs" / "benchmarks.d" / "cli_startup.md"
COMMANDS = {
    "overdrive --help": ["overdrive", "--help"],
    "overdrive launch --help": ["overdrive", "launch", "--help"],
    "overdrive config --help": ["overdrive", "config", "--help"],
    "accelerate --help": ["accelerate", "--help"],
}
GOAL_S = 0.3


def resolve(cmd: list[str]) -> list[str] | None:
    """The console script next to this interpreter (the venv's), else on PATH; None when not installed."""
    local = Path(sys.executable).with_name(cmd[0])
    exe = str(local) if local.exists() else shutil.which(cmd[0])
    return None if exe is None else [exe, *cmd[1:]]


def sample(cmd: list[str]) -> float | None:
    """Wall seconds of one run of ``cmd``; None if it failed."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=child_env(), timeout=120)
    dt = time.perf_counter() - t0
    return dt if proc.returncode == 0 else None


def run(repeats: int) -> dict[str, dict[str, float] | None]:
    cmds = {name: resolve(cmd) for name, cmd in COMMANDS.items()}
    for cmd in cmds.values():
        if cmd is not None:
            sample(cmd)  # warm-up, untimed
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            if cmd is not None:
                dt = sample(cmd)
                if dt is not None:
                    times[name].append(dt)
    return {name: summary(xs) if xs else None for name, xs in times.items()}


def render(res: dict[str, dict[str, float] | None], repeats: int) -> str:
    v = versions()
    base = res["accelerate --help"]
    lines = [
        "## CLI start-up",
        "",
        f"`python bench/cli_startup.py` — {_dt.date.today()}, Python {v['python']}, torch {v['torch']}, "
        f"overdrive {v['overdrive']}, accelerate {v['accelerate']}, {os.cpu_count()} CPUs, {platform.machine()}. "
        f"Fresh process per sample (the installed console scripts), the four commands interleaved, {repeats} samples "
        f"each after one warm-up. Wall time in ms: median (min–max). Goal for overdrive: <= {GOAL_S * 1000:.0f} ms.",
        "",
        "| command | wall time | vs `accelerate --help` | goal met |",
        "|---|---|---|---|",
    ]
    for name, s in res.items():
        if s is None:
            lines.append(f"| `{name}` | not available | | |")
            continue
        cell = f"{s['median'] * 1000:.1f} ({s['min'] * 1000:.1f}–{s['max'] * 1000:.1f})"
        goal = "" if name.startswith("accelerate") else ("yes" if s["median"] <= GOAL_S else "no")
        lines.append(f"| `{name}` | {cell} | {'' if name.startswith('accelerate') else ratio(s, base)} | {goal} |")
    lines += ["", "None of the overdrive commands imports torch (tests/unit/test_cli_config.py checks `sys.modules`); "
              "`accelerate --help` does."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CLI --help start-up: overdrive vs accelerate.")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-write", action="store_true", help=f"print only; do not write {FRAGMENT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    if args.repeats < 7:
        p.error(f"--repeats={args.repeats}: use at least 7 samples per command for a stable median")
    text = render(run(args.repeats), args.repeats)
    print(text)
    if not args.no_write:
        print(f"wrote {write_fragment(text, FRAGMENT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
