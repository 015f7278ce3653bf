"""Crash soak of ``save_state``: SIGKILL a rank inside a checkpoint write, many times, and count torn loads.

Each trial is two real torchrun launches at world 2 of tests/dist/workers/ckpt_kill.py in a fresh project folder
(automatic checkpoint naming, total_limit=3). The first trains and saves one checkpoint per step; inside the save
of checkpoint STEP the victim rank kills its own process at a random point:

    before-write   at its k-th file in the hidden temporary folder, before any byte
    mid-file       its k-th file written and cut to half its size
    after-files    right after its last file (before the ranks agree and the rename)
    marker         rank 0, after the rename, with the completion marker half written
    rotate         rank 0, after the marker, while total_limit deletes an old checkpoint (half its files gone)

The second launch calls ``load_state()`` and compares every rank's loaded state with the hash recorded before each
save. Outcomes: ``ok`` (exactly the newest fully committed checkpoint: STEP-1 when killed before the rename, STEP
after it), ``torn`` (state matching no recorded save of the step it claims), ``wrong`` (a complete but other
checkpoint), ``failed`` (load_state raised although a complete checkpoint exists), ``no-kill`` (the save launch did
not fail). Torn loads and failures must be 0.

Run:
    python bench/ckpt_kill_soak.py                 # 20 kills, prints a table, writes docs/benchmarks.d/ckpt_kill_soak.md
    python bench/ckpt_kill_soak.py --kills 40 --seed 7 --no-write
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import ROOT, child_env, summary, versions, write_fragment  # bench/ is on sys.path when run

FRAGMENT = ROOT / "docs" / "benchmarks.d" / "ckpt_kill_soak.md"
WORKER = ROOT / "tests" / "dist" / "workers" / "ckpt_kill.py"
POINTS = ("before-write", "mid-file", "after-files", "marker", "rotate")
OUTCOMES = ("ok", "torn", "wrong", "failed", "no-kill")
LOAD_LINE = re.compile(r"CKPT_KILL_LOAD rank=(\d+) result=(\w+) loaded=(\S+) expected=(\S+)")


def launch(*args: str, timeout: float = 120) -> tuple[int, str]:
    """One torchrun launch (world 2) of the worker; exit code and everything every rank printed."""
    env = child_env()
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--tee=3",
           str(WORKER), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        return 124, f"timed out after {timeout}s: {err}"
    return proc.returncode, proc.stdout + proc.stderr


def draw(rng: random.Random) -> dict[str, object]:
    point = rng.choice(POINTS)
    victim = 0 if point in ("marker", "rotate") else rng.randrange(2)
    step = rng.randint(3, 5) if point == "rotate" else rng.randint(1, 5)
    return {"point": point, "step": step, "victim": victim, "index": rng.randrange(5)}


def trial(kill: dict[str, object], folder: Path) -> tuple[str, str, float]:
    """Outcome, detail and wall seconds of one kill + reload."""
    t0 = time.perf_counter()
    project = folder / "project"
    step = int(kill["step"])  # type: ignore[call-overload]
    rc, out = launch("save", str(project), str(step), str(kill["point"]), str(kill["victim"]), str(kill["index"]))
    if rc == 0 or "CKPT_KILL_NOW" not in out:
        return "no-kill", f"save exit {rc}", time.perf_counter() - t0
    expect = step if kill["point"] in ("marker", "rotate") else step - 1
    rc, out = launch("load", str(project), str(expect))
    results = {int(m[0]): (m[1], m[2]) for m in LOAD_LINE.findall(out)}
    severity = ("ok", "wrong", "failed", "torn")  # a rank's worst outcome is the trial's
    worst = "ok"
    for rank in range(2):
        got = results.get(rank, ("failed", "none"))[0]
        got = got if got in severity else "failed"
        worst = max(worst, got, key=severity.index)
    if worst == "ok" and (rc != 0 or out.count("CKPT_KILL_RESAVE ok") != 2):
        worst = "failed"  # loaded right, but saving again afterwards did not work
    loaded = ",".join(f"r{r}:{results[r][1]}" for r in sorted(results)) or "none"
    detail = f"expected checkpoint_{expect}, loaded {loaded}, load exit {rc}"
    if worst != "ok":
        detail += "\n" + out[-4000:]
    return worst, detail, time.perf_counter() - t0


def render_markdown(seed: int, rows: list[tuple[dict[str, object], str, str, float]], wall: list[float]) -> str:
    v = versions()
    by_point: dict[str, Counter[str]] = {p: Counter() for p in POINTS}
    for kill, outcome, _, _ in rows:
        by_point[str(kill["point"])][outcome] += 1
    total = Counter(outcome for _, outcome, _, _ in rows)
    table = [f"| {p} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |"
             for p, c in by_point.items()]
    s = summary(wall)
    return "\n".join([
        "## Crash safety of save_state under SIGKILL",
        "",
        f"`python bench/ckpt_kill_soak.py --seed {seed} --kills {len(rows)}` — {_dt.date.today().isoformat()}, "
        f"Python {v['python']}, torch {v['torch']}, overdrive {v['overdrive']}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}. Each trial: a torchrun launch at world 2 trains with automatic checkpoint naming "
        "(total_limit=3) and one rank SIGKILLs itself inside the save of checkpoint STEP (random kill point, step "
        "1–5, victim rank, file index); a fresh launch then calls `load_state()` and compares each rank's model, "
        "Adam, scheduler and registered state with a hash recorded before every save, then saves again. `ok` = "
        "exactly the newest fully committed checkpoint (STEP-1 when killed before the rename, STEP after it). "
        "Torn and failed must be 0.",
        "",
        "| kill point | kills | " + " | ".join(OUTCOMES) + " |",
        "|---|---|" + "---|" * len(OUTCOMES),
        *table,
        f"| **all** | **{len(rows)}** | " + " | ".join(f"**{total[o]}**" for o in OUTCOMES) + " |",
        "",
        f"Wall time per trial (kill launch + load launch): median {s['median']:.1f} s "
        f"({s['min']:.1f}–{s['max']:.1f} s).",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="SIGKILL a rank inside save_state, reload, count torn loads.")
    p.add_argument("--kills", type=int, default=20, help="number of kill + reload trials (at least 20)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and printed)")
    p.add_argument("--no-write", action="store_true", help=f"print only; do not write {FRAGMENT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    if args.kills < 20:
        p.error(f"--kills {args.kills} is too few for a soak; pass --kills 20 or more")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"seed {seed}: {args.kills} kills (re-run with --seed {seed} --kills {args.kills})", flush=True)
    rng = random.Random(seed)
    rows: list[tuple[dict[str, object], str, str, float]] = []
    for i in range(args.kills):
        kill = draw(rng)
        with tempfile.TemporaryDirectory(prefix="ckpt_kill_") as tmp:
            outcome, detail, dt = trial(kill, Path(tmp))
        rows.append((kill, outcome, detail, dt))
        print(f"{i + 1:3d} {kill['point']:<12} step {kill['step']} rank {kill['victim']} file #{kill['index']}: "
              f"{outcome:<7} {detail.splitlines()[0]} ({dt:.1f} s)", flush=True)
        if outcome != "ok":
            print(detail, flush=True)

    text = render_markdown(seed, rows, [r[3] for r in rows])
    print()
    print("\n".join(line for line in text.splitlines() if line.startswith("|")))
    if not args.no_write:
        out = write_fragment(text, FRAGMENT)
        print(f"wrote {out.relative_to(ROOT)}")
    bad = sum(1 for _, outcome, _, _ in rows if outcome != "ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
