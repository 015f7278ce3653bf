"""How long a training loop is blocked by `save_state(async_save=True)` vs a synchronous `save_state`, ~200 MB state.

One process on the CPU: an MLP of ~16.8M fp32 parameters trained with Adam (weights 67 MB + two Adam moments
134 MB = ~200 MB of checkpointed state), small steps (batch 8). Each sample is a fresh interpreter that takes one
untimed save of each kind (first-touch costs: page cache, the async copy's buffers), then ROUNDS rounds of: a few
training steps, a save, a few more steps (the next save's point), with the two kinds interleaved (sync, async,
async, sync, ...). Blocked time:

    sync    the save_state call
    async   the save_state call (the consistent CPU copy is taken there) + the wait_for_checkpoint at the next
            save point (zero when the background write finished during the steps in between)

The goal for overdrive: async blocked time at most 10 % of the synchronous save's. Also reported: the floor for the
copy (the same bytes copied into buffers that are already mapped, measured in the same process), how much longer
the steps after an async save take than those after a sync save (the background writer shares the CPU and the
GIL), and a check that the last async checkpoint loads to tensors equal to the state at its save.

Run:
    python bench/async_save.py               # prints, writes docs/benchmarks.d/async_save.md
    python bench/async_save.py --no-write    # prints only
    python bench/async_save.py --samples 5 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys

from _common import ROOT, child_env, summary, versions, write_fragment  # bench/ is on sys.path when run

FRAGMENT = ROOT / "docs" / "benchmarks.d" / "async_save.md"
GOAL = 0.10

# Child program: build, warm up, time interleaved rounds; print one JSON line.
CHILD = r"""
import json, shutil, statistics, tempfile, time
from pathlib import Path
import torch
from overdrive import Accelerator

WIDTH, STEPS_BETWEEN, ROUNDS = {width}, {steps}, {rounds}
torch.manual_seed(0)
acc = Accelerator()
layers = []
for _ in range(4):
    layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
model = torch.nn.Sequential(*layers, torch.nn.Linear(WIDTH, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
model, opt = acc.prepare(model, opt)
params = sum(p.numel() for p in model.parameters())

def step():
    acc.backward(model(torch.randn(8, WIDTH)).pow(2).mean())
    opt.step()
    opt.zero_grad()

def steps(n):
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0

root = Path(tempfile.mkdtemp(prefix="od-async-bench-"))
def save(kind, name):
    t0 = time.perf_counter()
    acc.save_state(root / name, async_save=kind == "async")
    return time.perf_counter() - t0

step()
for kind in ("sync", "async"):  # untimed: first-touch costs
    save(kind, "warm-" + kind)
    steps(STEPS_BETWEEN)
    acc.wait_for_checkpoint()
    shutil.rmtree(root / ("warm-" + kind))

out = {{"params": params, "sync": [], "async": [], "async_call": [], "async_wait": [], "after_sync": [],
       "after_async": [], "floor": []}}
state_bytes = sum(p.numel() * 4 for p in model.parameters()) + sum(
    t.numel() * t.element_size() for s in opt.state_dict()["state"].values() for t in s.values())
out["state_mb"] = state_bytes / 1e6
for r in range(ROUNDS):
    for kind in (("sync", "async") if r % 2 == 0 else ("async", "sync")):
        steps(STEPS_BETWEEN)
        blocked = save(kind, f"r{{r}}-{{kind}}")
        after = steps(STEPS_BETWEEN)  # up to the next save point
        t0 = time.perf_counter()
        acc.wait_for_checkpoint()  # what the next save_state would wait for
        waited = time.perf_counter() - t0
        if kind == "async":
            out["async"].append(blocked + waited)
            out["async_call"].append(blocked)
            out["async_wait"].append(waited)
            out["after_async"].append(after)
        else:
            out["sync"].append(blocked)
            out["after_sync"].append(after)
        shutil.rmtree(root / f"r{{r}}-{{kind}}")
    # The floor for the copy: the same storages into buffers already mapped (what the async save reuses).
    sources = [p.detach() for p in model.parameters()] + [
        t for s in opt.state_dict()["state"].values() for t in s.values() if t.dim()]
    buffers = [torch.empty_like(t) for t in sources]
    for b, t in zip(buffers, sources):
        b.copy_(t)
    t0 = time.perf_counter()
    for b, t in zip(buffers, sources):
        b.copy_(t)
    out["floor"].append(time.perf_counter() - t0)
    del buffers

# Correctness: the async checkpoint holds the state of its save point, not of later steps.
expected = [p.detach().clone() for p in model.parameters()] + [
    t.clone() for s in opt.state_dict()["state"].values() for t in s.values()]
acc.save_state(root / "check", async_save=True)
steps(2)
acc.wait_for_checkpoint()
acc.load_state(root / "check")
got = [p.detach() for p in model.parameters()] + [t for s in opt.state_dict()["state"].values() for t in s.values()]
out["verified"] = len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
out["tensors"] = len(expected)
shutil.rmtree(root)
print(json.dumps(out))
"""


def sample(cfg: dict[str, int]) -> dict[str, object] | None:
    """One fresh interpreter; None (with its output printed) if it failed."""
    env = child_env()
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.run([sys.executable, "-c", CHILD.format(**cfg)], capture_output=True, text=True, env=env,
                          timeout=900)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(samples: int, cfg: dict[str, int]) -> dict[str, object]:
    keys = ("sync", "async", "async_call", "async_wait", "after_sync", "after_async", "floor")
    xs: dict[str, list[float]] = {k: [] for k in keys}
    verified, meta = [], {}
    for i in range(samples):
        res = sample(cfg)
        if res is None:
            raise SystemExit(f"sample {i} failed (output above)")
        for k in keys:
            xs[k].extend(res[k])  # type: ignore[arg-type]
        verified.append(bool(res["verified"]))
        meta = {"params": res["params"], "state_mb": res["state_mb"], "tensors": res["tensors"]}
        print(f"  sample {i + 1}/{samples}: sync {statistics.median(res['sync']) * 1e3:.0f} ms, "  # type: ignore
              f"async {statistics.median(res['async']) * 1e3:.0f} ms", flush=True)
    return {"stats": {k: summary(v) for k, v in xs.items()}, "verified": verified, **meta}


def ms(s: dict[str, float]) -> str:
    return f"{s['median'] * 1e3:.0f} ({s['min'] * 1e3:.0f}–{s['max'] * 1e3:.0f})"


def render_markdown(res: dict[str, object], samples: int, cfg: dict[str, int]) -> str:
    """The docs fragment: one `##` section, self-contained, regenerated whole on every run."""
    v = versions()
    st: dict[str, dict[str, float]] = res["stats"]  # type: ignore[assignment]
    ratio = st["async"]["median"] / st["sync"]["median"]
    floor_ratio = st["floor"]["median"] / st["sync"]["median"]
    slowdown = st["after_async"]["median"] - st["after_sync"]["median"]
    verified: list[bool] = res["verified"]  # type: ignore[assignment]
    n = st["sync"]["n"]
    lines = [
        "## Asynchronous checkpoint saves",
        "",
        f"`python bench/async_save.py` — {_dt.date.today().isoformat()}, Python {v['python']}, torch {v['torch']}, "
        f"overdrive {v['overdrive']}, {os.cpu_count()} CPUs, {platform.machine()}, one thread per process. One "
        f"process on the CPU: an MLP of {res['params'] / 1e6:.1f}M fp32 parameters with Adam, "
        f"{res['state_mb']:.0f} MB of model and optimizer state, batch 8; checkpoints written to the local disk "
        f"(both kinds flush every file with fsync before the commit; this disk absorbs that fast). {samples} fresh processes × {cfg['rounds']} rounds, "
        f"the two kinds interleaved, {cfg['steps']} training steps between a save and the next save point; one "
        f"untimed save of each kind first. Times in ms: median (min–max) over {n:.0f} saves of each kind.",
        "",
        "| | ms | share of the synchronous save |",
        "|---|---|---|",
        f"| synchronous `save_state` (loop blocked) | {ms(st['sync'])} | 100 % |",
        f"| `save_state(async_save=True)` + wait at the next save point (loop blocked) | {ms(st['async'])} | "
        f"{ratio:.1%} |",
        f"| … of which the `save_state` call (the CPU copy) | {ms(st['async_call'])} | |",
        f"| … of which the wait at the next save point | {ms(st['async_wait'])} | |",
        f"| floor: copying the same bytes into mapped buffers | {ms(st['floor'])} | {floor_ratio:.1%} |",
        f"| {cfg['steps']} steps after a synchronous save | {ms(st['after_sync'])} | |",
        f"| {cfg['steps']} steps after an async save (writer running) | {ms(st['after_async'])} | |",
        "",
        f"The loop is blocked {ratio:.1%} as long by an async save as by a synchronous one: "
        f"{'within' if ratio <= GOAL else 'over'} the {GOAL:.0%} goal. Nearly all of the blocked time is the copy "
        "of the state into CPU memory (the floor row: the same bytes copied by a plain loop), which the save must "
        "take before it returns to be a consistent snapshot. On this machine a synchronous save, fsync included, "
        "runs at about memory-copy speed, so no async save that copies the state can get below the floor's share "
        "here; with slower storage or a GPU (device-to-host copy) the synchronous write costs far more than the "
        f"copy. While the background thread writes, the next "
        f"{cfg['steps']} steps took {slowdown * 1e3:+.0f} ms: the writer competes with the loop for this "
        "machine's cores and memory bandwidth. "
        f"The async checkpoint loaded back equal to the state at its save point: {sum(verified)} of "
        f"{len(verified)} processes, {res['tensors']} tensors each, compared with `torch.equal`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Loop time blocked by async vs synchronous save_state, ~200 MB state.")
    p.add_argument("--samples", type=int, default=3, help="fresh processes")
    p.add_argument("--rounds", type=int, default=3, help="saves of each kind per process")
    p.add_argument("--steps", type=int, default=4, help="training steps between a save and the next save point")
    p.add_argument("--width", type=int, default=2048, help="MLP width (2048: ~16.8M parameters, ~200 MB state)")
    p.add_argument("--no-write", action="store_true", help=f"print only; do not write {FRAGMENT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    if args.samples * args.rounds < 5:
        p.error("need at least 5 saves of each kind: raise --samples or --rounds")
    if args.steps < 1 or args.width < 16:
        p.error("need --steps >= 1 and --width >= 16")
    cfg = {"width": args.width, "steps": args.steps, "rounds": args.rounds}
    res = run(args.samples, cfg)
    text = render_markdown(res, args.samples, cfg)
    print(text)
    if not args.no_write:
        out = write_fragment(text, FRAGMENT)
        print(f"wrote {out.relative_to(ROOT)}")
    return 0 if all(res["verified"]) else 1  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
