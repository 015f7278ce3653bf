"""Per-batch overhead of a prepared data loader: `Accelerator().prepare(DataLoader(...))` vs the plain DataLoader.

One process, CPU, small batches of a `TensorDataset` (so the loader's own work dominates). Every sample is a fresh
interpreter that builds one loader kind (plain torch, overdrive's prepared loader, and Accelerate's prepared loader
with `Accelerator(cpu=True)` as the reference when it is installed), iterates one untimed warm-up pass, then times
several full passes and reports the median microseconds per batch. The kinds are run interleaved (A, B, C, A, B, C,
...) so that machine noise hits them alike; the table reports the median over samples and the difference to the
plain loader (the goal for overdrive: at most 50 µs per batch).

Run:
    python bench/dataloader_overhead.py               # prints, writes docs/benchmarks.d/dataloader_overhead.md
    python bench/dataloader_overhead.py --no-write    # prints only
    python bench/dataloader_overhead.py --repeats 11
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import os
import platform
import subprocess
import sys

from _common import ROOT, child_env, ratio, summary, versions, write_fragment  # bench/ is on sys.path when run

FRAGMENT = ROOT / "docs" / "benchmarks.d" / "dataloader_overhead.md"
GOAL_US = 50.0

# Child program: build the loader of one kind, warm up one pass, time PASSES passes; print (median us/batch, batches).
CHILD = r"""
import statistics, time
import torch
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
data = TensorDataset(torch.randn({samples}, {features}), torch.randint(0, 10, ({samples},)))
loader = DataLoader(data, batch_size={batch_size}, shuffle=False)
kind = {kind!r}
if kind == "overdrive":
    from overdrive import Accelerator
    loader = Accelerator().prepare(loader)
elif kind == "accelerate":
    from accelerate import Accelerator
    loader = Accelerator(cpu=True).prepare(loader)
def one_pass():
    n = 0
    t0 = time.perf_counter()
    for x, y in loader:
        n += 1
    return time.perf_counter() - t0, n
one_pass()  # warm-up: first-iteration costs (imports, caches) are not per-batch overhead
times = []
for _ in range({passes}):
    dt, n = one_pass()
    times.append(dt / n * 1e6)
print(repr((statistics.median(times), n)))
"""

KINDS = ("plain", "overdrive", "accelerate")
LABELS = {
    "plain": "plain `torch.utils.data.DataLoader`",
    "overdrive": "overdrive `Accelerator().prepare(loader)`",
    "accelerate": "accelerate `Accelerator(cpu=True).prepare(loader)` (reference)",
}




def sample(kind: str, cfg: dict[str, int]) -> tuple[float, int] | None:
    """One fresh interpreter: median µs per batch over cfg['passes'] timed passes, and batches per pass."""
    code = CHILD.format(kind=kind, **cfg)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=300)
    if proc.returncode != 0:
        return None
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])




def run(repeats: int, cfg: dict[str, int]) -> dict[str, dict[str, float] | None]:
    """Interleaved samples of every kind; a kind that fails (e.g. Accelerate not installed) is 'not available'."""
    usable = {k: sample(k, {**cfg, "passes": 1}) is not None for k in KINDS}  # untimed: compiles .pyc, checks imports
    xs: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(repeats):
        for k in KINDS:
            if not usable[k]:
                continue
            s = sample(k, cfg)
            if s is None:
                usable[k] = False
                continue
            xs[k].append(s[0])
    return {k: summary(xs[k]) if usable[k] and xs[k] else None for k in KINDS}




def diff(a: dict[str, float] | None, base: dict[str, float] | None) -> str:
    return "n/a" if a is None or base is None else f"{a['median'] - base['median']:+.1f}"




def render_markdown(res: dict[str, dict[str, float] | None], repeats: int, cfg: dict[str, int]) -> str:
    """The docs fragment: one `##` section, self-contained, regenerated whole on every run."""
    v = versions()
    base = res["plain"]

    def cell(s: dict[str, float] | None) -> str:
        return "not available" if s is None else f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f})"

    rows = [f"| {LABELS[k]} | {cell(res[k])} | {'–' if k == 'plain' else diff(res[k], base)} | "
            f"{'–' if k == 'plain' else ratio(res[k], base)} |" for k in KINDS]
    over = res["overdrive"]
    verdict = "n/a"
    if over is not None and base is not None:
        extra = over["median"] - base["median"]
        verdict = f"{extra:+.1f} µs per batch: {'within' if extra <= GOAL_US else 'over'} the {GOAL_US:.0f} µs goal"
    lines = [
        "## Prepared data loader overhead per batch",
        "",
        f"`python bench/dataloader_overhead.py` — {_dt.date.today().isoformat()}, Python {v['python']}, "
        f"torch {v['torch']}, overdrive {v['overdrive']}, accelerate {v['accelerate']}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}. One process on the CPU, `TensorDataset` of {cfg['samples']} samples × "
        f"{cfg['features']} floats plus an int label, `batch_size={cfg['batch_size']}` "
        f"({cfg['samples'] // cfg['batch_size']} batches a pass), `num_workers=0`. Each sample is a fresh "
        f"interpreter: one warm-up pass, then the median of {cfg['passes']} timed passes; the three loaders "
        f"interleaved, {repeats} samples each. µs per batch: median (min–max) over samples.",
        "",
        "| loader | µs per batch | difference to plain (µs) | ratio to plain |",
        "|---|---|---|---|",
        *rows,
        "",
        f"overdrive's prepared loader adds {verdict}.",
        "",
    ]
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Per-batch overhead of a prepared DataLoader vs the plain one.")
    p.add_argument("--repeats", type=int, default=9, help="fresh-process samples per loader kind (at least 7)")
    p.add_argument("--samples", type=int, default=4096, help="dataset size")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (small, so per-batch overhead shows)")
    p.add_argument("--passes", type=int, default=5, help="timed passes per sample")
    p.add_argument("--no-write", action="store_true", help=f"print only; do not write {FRAGMENT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    if args.repeats < 7:
        p.error(f"--repeats {args.repeats} is too few for a median and spread; pass --repeats 7 or more")
    if args.samples < args.batch_size or args.batch_size < 1 or args.passes < 1:
        p.error("need --batch-size >= 1, --samples >= --batch-size and --passes >= 1")
    cfg = {"samples": args.samples, "features": 16, "batch_size": args.batch_size, "passes": args.passes}

    res = run(args.repeats, cfg)
    base = res["plain"]
    print(f"µs per batch ({args.repeats} interleaved fresh processes each; batch_size={args.batch_size}, "
          f"{args.samples // args.batch_size} batches a pass)")
    for k in KINDS:
        s = res[k]
        text = "not available" if s is None else (
            f"{s['median']:8.1f} median (min {s['min']:.1f}, max {s['max']:.1f}, IQR {s['iqr']:.1f}, n={s['n']})")
        extra = "" if k == "plain" else f"   diff to plain {diff(s, base)} µs, ratio {ratio(s, base)}"
        print(f"  {k:<10} {text}{extra}")
    if not args.no_write:
        out = write_fragment(render_markdown(res, args.repeats, cfg), FRAGMENT)
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
