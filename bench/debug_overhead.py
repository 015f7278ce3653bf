"""Step-time cost of the failure diagnostics: the hang watchdog (on by default) and debug mode (off by default).

Two processes on gloo (one `torchrun` launch), a small MLP under DDP; each step is forward, `accelerator.backward`,
optimizer step, plus two overdrive collectives (`reduce` of the loss, `gather` of the predictions), so the
per-collective bookkeeping is exercised twice a step. Three modes run interleaved inside the same processes (blocks
of steps in rotating order, the same blocks on both ranks):

- ``without``: the collectives' tracking switched off (``overdrive.debug.TRACKING = False``), i.e. overdrive as if
  it had no watchdog and no debug mode, except the one attribute check each collective makes;
- ``default``: what a user gets (watchdog thread running, progress marks around each collective, debug mode off);
- ``debug``: debug mode on (store agreement before every collective).

Reported: the median step time per mode over the blocks and the ratios to ``without`` (the goal: ``default`` within
1.01).

Run:
    python bench/debug_overhead.py               # prints, writes docs/benchmarks.d/debug_overhead.md
    python bench/debug_overhead.py --no-write    # prints only
    python bench/debug_overhead.py --repeats 15 --steps 200
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import os
import platform
import subprocess
import sys
import tempfile

from _common import ROOT, child_env, ratio, summary, versions, write_fragment  # bench/ is on sys.path when run

FRAGMENT = ROOT / "docs" / "benchmarks.d" / "debug_overhead.md"
GOAL = 1.01
MODES = ("without", "default", "debug")

CHILD = r"""
import sys, time, statistics
import torch
import torch.distributed as dist
import overdrive.debug as debug
from overdrive import Accelerator

repeats, steps = int(sys.argv[1]), int(sys.argv[2])
acc = Accelerator(cpu=True)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
model, opt = acc.prepare(model, opt)
x, y = torch.randn(32, 64), torch.randn(32, 8)
session = debug._SESSION
assert session is not None and session.watchdog is not None, "the watchdog should run by default"
session.store = dist.PrefixStore("overdrive-debug/", debug._clone(debug._default_store()))

def set_mode(mode):
    session.debug = mode == "debug"
    debug._refresh()
    if mode == "without":
        debug.TRACKING = False

def block():
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        pred = model(x)
        loss = torch.nn.functional.mse_loss(pred, y)
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        acc.reduce(loss.detach(), "mean")
        acc.gather(pred.detach())
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6

modes = list({modes!r})
set_mode("default"); block()  # warm-up
out = {{m: [] for m in modes}}
for r in range(repeats):
    order = modes[r % len(modes):] + modes[:r % len(modes)]  # rotate so no mode always runs first
    for m in order:
        set_mode(m)
        acc.wait_for_everyone()
        out[m].append(block())
set_mode("default")
if acc.is_main_process:
    sys.stdout.write("RESULT " + repr(out) + "\n")
acc.wait_for_everyone()
del model, opt
"""


def run(repeats: int, steps: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "child.py")
        with open(script, "w") as f:
            f.write(CHILD.format(modes=MODES))
        env = child_env()
        env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
        env["OVERDRIVE_WATCHDOG_TIMEOUT"] = "600"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", script,
               str(repeats), str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark launch failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    line = next(line for line in proc.stdout.splitlines() if "RESULT " in line)
    return ast.literal_eval(line.split("RESULT ", 1)[1])


def bookkeeping_us() -> float:
    """Microseconds the default mode adds to one collective: ``tracked()`` around a no-op, minus the bare no-op."""
    import timeit

    sys.path.insert(0, str(ROOT / "src"))
    import overdrive.debug as debug

    def noop() -> None:
        return None

    n = 200_000
    wrapped = min(timeit.repeat(lambda: debug.tracked("gather", None, "", noop), number=n, repeat=5))
    bare_call = min(timeit.repeat(lambda: noop(), number=n, repeat=5))  # the lambda layer both sides pay
    return max(0.0, (wrapped - bare_call) / n * 1e6)


def render_markdown(res: dict[str, dict[str, float]], repeats: int, steps: int, per_call_us: float) -> str:
    v = versions()
    base = res["without"]

    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f})"

    labels = {
        "without": "tracking off (as without the feature; one attribute check left)",
        "default": "default: watchdog on, debug mode off",
        "debug": "debug mode on (`OVERDRIVE_DEBUG=1`)",
    }
    rows = [f"| {labels[m]} | {cell(res[m])} | {'–' if m == 'without' else ratio(res[m], base)} |" for m in MODES]
    default_ratio = res["default"]["median"] / base["median"]
    verdict = "within" if default_ratio <= GOAL else "over"
    per_coll = (res["debug"]["median"] - res["default"]["median"]) / 2
    lines = [
        "## Cost of the hang watchdog and debug mode per training step",
        "",
        f"`python bench/debug_overhead.py` — {_dt.date.today().isoformat()}, Python {v['python']}, torch {v['torch']}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}. Two processes (torchrun, gloo), an MLP 64→128→8 under DDP, "
        f"batch 32; a step is forward, backward, SGD step, `reduce(loss)` and `gather(pred)`. The three modes run "
        f"interleaved in the same processes, {repeats} blocks of {steps} steps each (rotating order); µs per step: "
        "median over blocks of each block's median (min–max over blocks).",
        "",
        "| mode | µs per step | ratio to tracking off |",
        "|---|---|---|",
        *rows,
        "",
        f"Default (debug mode off, watchdog on): {default_ratio:.3f}× — {verdict} the {GOAL} goal. On this shared "
        "2-core machine the spread between blocks is far larger than that difference; the deterministic part is "
        f"the bookkeeping around each collective, {per_call_us:.2f} µs per call (`timeit` of `overdrive.debug."
        "tracked` around a no-op), against hundreds of µs for a gloo collective. Debug mode adds "
        f"about {per_coll:.0f} µs per collective (store round trips on one machine); it is meant for finding a bug, "
        "not for production runs.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Step-time cost of the watchdog and of debug mode.")
    p.add_argument("--repeats", type=int, default=11, help="blocks per mode (at least 7)")
    p.add_argument("--steps", type=int, default=150, help="steps per block")
    p.add_argument("--no-write", action="store_true", help=f"print only; do not write {FRAGMENT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    if args.repeats < 7 or args.steps < 10:
        p.error("need --repeats >= 7 (a median and spread) and --steps >= 10")
    raw = run(args.repeats, args.steps)
    res = {m: summary(raw[m]) for m in MODES}
    per_call = bookkeeping_us()
    print(f"  bookkeeping per collective (default mode): {per_call:.2f} µs")
    for m in MODES:
        s = res[m]
        print(f"  {m:<8} {s['median']:8.0f} µs/step median (min {s['min']:.0f}, max {s['max']:.0f}, IQR "
              f"{s['iqr']:.0f}, n={s['n']})   ratio to without {ratio(s, res['without'])}")
    if not args.no_write:
        out = write_fragment(render_markdown(res, args.repeats, args.steps, per_call), FRAGMENT)
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
