"""Start-up cost of overdrive against Accelerate: `import X` on top of torch, and `X --help`.

Every sample is a fresh interpreter. For the import cost the child imports torch first (not timed) and then times
`import overdrive` (or `import accelerate`), so the number is what the package adds over bare torch. The two
packages are run interleaved (A, B, A, B, ...) so that machine noise hits both alike, after one untimed warm-up
each (to compile .pyc files). The same is done for the wall time of `overdrive --help` vs `accelerate --help`.

Run:
    python bench/import_time.py               # prints results and writes docs/benchmarks.d/import_time.md
    python bench/import_time.py --no-write    # prints only
    python bench/import_time.py --repeats 15

Accelerate is only the reference: when it is not installed its rows read "not available", and the same holds for
the overdrive CLI while it does not exist.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, child_env, ratio, summary, versions, write_fragment  # bench/ is on sys.path when run

FRAGMENT = ROOT / "docs" / "benchmarks.d" / "import_time.md"

# Child program: import torch untimed, then time STMT and report what else it pulled in.
CHILD = r"""
import sys, time
import torch
before = set(sys.modules)
t0 = time.perf_counter()
{stmt}
dt = time.perf_counter() - t0
new = sorted(set(sys.modules) - before)
std = set(sys.stdlib_module_names)
third = sorted({{m.split(".")[0] for m in new}} - std - {{"{pkg}", "torch", "_distutils_hack"}})
print(repr((dt, len(new), third)))
"""

# What is timed: the bare import (overdrive resolves its names lazily) and the import a training script does.
STATEMENTS = {"import": "import {pkg}", "from": "from {pkg} import Accelerator"}




def import_sample(pkg: str, kind: str = "import") -> tuple[float, int, list[str]] | None:
    """One fresh interpreter: seconds STATEMENTS[kind] took on top of torch, modules added, non-stdlib names."""
    code = CHILD.format(stmt=STATEMENTS[kind].format(pkg=pkg), pkg=pkg)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=child_env(), timeout=120)
    if proc.returncode != 0:
        return None
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def cli_command(name: str) -> list[str]:
    """How to run NAME's CLI: the console script beside this interpreter, else on PATH, else `python -m`."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {"overdrive": "overdrive.commands.cli", "accelerate": "accelerate.commands.accelerate_cli"}[name]
    return [sys.executable, "-m", module]


def cli_sample(cmd: list[str]) -> float | None:
    """Wall seconds of one `CMD --help` in a fresh process, or None when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=child_env(), timeout=120)
    dt = time.perf_counter() - t0
    return dt if proc.returncode == 0 else None




def fmt_ms(s: dict[str, float] | None) -> str:
    if s is None:
        return "not available"
    return (f"{s['median'] * 1e3:8.1f} ms median  (min {s['min'] * 1e3:.1f}, max {s['max'] * 1e3:.1f}, "
            f"IQR {s['iqr'] * 1e3:.1f}, n={s['n']})")




def run(repeats: int) -> dict[str, object]:
    """Interleaved measurements for both packages; a package that fails once is reported as not available."""
    pkgs = ["overdrive", "accelerate"]
    kinds = list(STATEMENTS)
    # Untimed warm-up: byte-compiles sources and tells us which packages import at all.
    usable = {(p, k): import_sample(p, k) is not None for p in pkgs for k in kinds}
    imports: dict[tuple[str, str], list[float]] = {(p, k): [] for p in pkgs for k in kinds}
    extra: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for _ in range(repeats):
        for k in kinds:
            for p in pkgs:
                if not usable[(p, k)]:
                    continue
                s = import_sample(p, k)
                if s is None:
                    usable[(p, k)] = False
                    continue
                imports[(p, k)].append(s[0])
                extra[(p, k)] = (s[1], s[2])

    clis = {p: cli_command(p) for p in pkgs}
    cli_ok = {p: cli_sample(clis[p]) is not None for p in pkgs}  # untimed warm-up, and does it run at all
    helps: dict[str, list[float]] = {p: [] for p in pkgs}
    for _ in range(repeats):
        for p in pkgs:
            if not cli_ok[p]:
                continue
            t = cli_sample(clis[p])
            if t is None:
                cli_ok[p] = False
                continue
            helps[p].append(t)

    return {
        "import": {key: summary(xs) if usable[key] and xs else None for key, xs in imports.items()},
        "modules": extra,
        "help": {p: summary(helps[p]) if cli_ok[p] and helps[p] else None for p in pkgs},
        "cli": {p: " ".join(Path(c).name if i == 0 else c for i, c in enumerate(clis[p])) for p in pkgs},
    }




def render_markdown(res: dict[str, object], repeats: int) -> str:
    """The docs fragment: one `##` section, self-contained, regenerated whole on every run."""
    imp, hlp, mods, cli = res["import"], res["help"], res["modules"], res["cli"]  # type: ignore[index]
    v = versions()

    def cell(s: dict[str, float] | None) -> str:
        return "not available" if s is None else f"{s['median'] * 1e3:.1f} ({s['min'] * 1e3:.1f}–{s['max'] * 1e3:.1f})"

    def added(key: tuple[str, str]) -> str:
        if key not in mods:
            return "–"
        n, third = mods[key]
        return f"{n}" + (f" (non-stdlib: {', '.join(third)})" if third else "")

    rows = []
    for k, stmt in STATEMENTS.items():
        label = stmt.format(pkg="X")
        o, a = imp[("overdrive", k)], imp[("accelerate", k)]
        rows.append(f"| `{label}` after `import torch` | {cell(o)} | {cell(a)} | {ratio(o, a)} |")
        rows.append(f"| modules `{label}` adds | {added(('overdrive', k))} | {added(('accelerate', k))} | |")

    lines = [
        "## Import and CLI start-up cost",
        "",
        f"`python bench/import_time.py` — {_dt.date.today().isoformat()}, Python {v['python']}, torch {v['torch']}, "
        f"overdrive {v['overdrive']}, accelerate {v['accelerate']}, {os.cpu_count()} CPUs, {platform.machine()}. "
        f"Fresh interpreter per sample, the two packages interleaved, {repeats} samples each after one warm-up. "
        "Times in ms: median (min–max).",
        "",
        "| measurement | overdrive | accelerate (reference) | overdrive / accelerate |",
        "|---|---|---|---|",
        *rows,
        f"| `X --help` wall time | {cell(hlp['overdrive'])} | {cell(hlp['accelerate'])} | "
        f"{ratio(hlp['overdrive'], hlp['accelerate'])} |",
        "",
        f"CLI commands timed: `{cli['overdrive']} --help`, `{cli['accelerate']} --help`.",
        "",
    ]
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Import and --help start-up cost: overdrive vs accelerate.")
    p.add_argument("--repeats", type=int, default=9, help="samples per measurement and package (at least 7)")
    p.add_argument("--no-write", action="store_true", help=f"print only; do not write {FRAGMENT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    if args.repeats < 7:
        p.error(f"--repeats {args.repeats} is too few for a median and spread; pass --repeats 7 or more")

    res = run(args.repeats)
    imp, hlp, mods = res["import"], res["help"], res["modules"]  # type: ignore[index]
    for k, stmt in STATEMENTS.items():
        print(f"{stmt.format(pkg='X')} after import torch ({args.repeats} interleaved fresh interpreters each)")
        for pkg in ("overdrive", "accelerate"):
            extra = ""
            if (pkg, k) in mods:
                n, third = mods[(pkg, k)]
                extra = f"  [+{n} modules{'; non-stdlib: ' + ', '.join(third) if third else ''}]"
            print(f"  {pkg:<10} {fmt_ms(imp[(pkg, k)])}{extra}")
        print(f"  ratio overdrive/accelerate: {ratio(imp[('overdrive', k)], imp[('accelerate', k)])}")
    print("X --help wall time")
    for pkg in ("overdrive", "accelerate"):
        print(f"  {pkg:<10} {fmt_ms(hlp[pkg])}   ({res['cli'][pkg]} --help)")  # type: ignore[index]
    print(f"  ratio overdrive/accelerate: {ratio(hlp['overdrive'], hlp['accelerate'])}")

    if not args.no_write:
        out = write_fragment(render_markdown(res, args.repeats), FRAGMENT)
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
