"""Start-up cost of a training run: ``Accelerator()`` construction, and launch-to-first-step of 2 processes.

* Construction: a fresh interpreter imports the package (untimed), then times ``Accelerator()`` (overdrive) and
  ``Accelerator(cpu=True)`` (Accelerate) in one process, no process group.
* Launch to first step: from the moment the launcher command starts until rank 0 finishes its first optimizer step
  of a small MLP with DDP (2 processes, gloo): raw ``torchrun`` + hand-written DDP (the baseline), ``overdrive
  launch --cpu`` + overdrive, and ``accelerate launch --multi_gpu`` + Accelerate (``cpu=True``). The child writes the
  wall-clock time of its first step; the parent subtracts the time it started the launcher.

Kinds run interleaved (A, B, C, A, B, C, ...), ``--repeats`` times each, after one untimed warm-up each.

    python bench/startup.py [--repeats 7] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, child_env, ratio, summary, versions, write_fragment  # noqa: E402

FRAGMENT = ROOT / "docs" / "benchmarks.d" / "startup.md"

CONSTRUCT = r"""
import time
{imports}
t0 = time.perf_counter()
acc = {construct}
print(time.perf_counter() - t0)
"""

# One training script for the three launchers; argv[1] picks the library, argv[2] the file for the timestamp.
FIRST_STEP = r"""
import os, sys, time
import torch
kind, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
x, y = torch.randn(16, 64), torch.randn(16, 1)
if kind == "raw":
    import torch.distributed as dist
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(model(x), y).backward()
    rank = dist.get_rank()
else:
    if kind == "overdrive":
        from overdrive import Accelerator
        acc = Accelerator(cpu=True)
    else:
        from accelerate import Accelerator
        acc = Accelerator(cpu=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    acc.backward(torch.nn.functional.mse_loss(model(x), y))
    rank = acc.process_index
opt.step()
if rank == 0:
    with open(out, "w") as f:
        f.write(repr(time.time()))
import torch.distributed as dist
dist.barrier()
dist.destroy_process_group()
os._exit(0)
"""


def construction(kind: str) -> float:
    if kind == "overdrive":
        code = CONSTRUCT.format(imports="from overdrive import Accelerator", construct="Accelerator()")
    else:
        code = CONSTRUCT.format(imports="from accelerate import Accelerator", construct="Accelerator(cpu=True)")
    env = child_env()
    env["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


def launch_to_first_step(kind: str, script: Path, folder: Path) -> float:
    stamp = folder / f"{kind}.txt"
    stamp.unlink(missing_ok=True)
    bindir = Path(sys.executable).parent
    if kind == "raw":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    elif kind == "overdrive":
        cmd = [sys.executable, "-m", "overdrive.commands.cli", "launch", "--num_processes", "2", "--cpu"]
    else:
        # Accelerate refuses --cpu with --multi_gpu; the script's Accelerator(cpu=True) keeps it on gloo (FACTS.md)
        cmd = [str(bindir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = child_env()
    env["PYTHONPATH"] = str(ROOT / "src")
    start = time.time()
    subprocess.run([*cmd, str(script), kind, str(stamp)], capture_output=True, text=True, env=env, check=True,
                   timeout=300)
    return float(stamp.read_text()) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    have_accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) is not None
    libs = ["overdrive"] + (["accelerate"] if have_accelerate else [])
    kinds = ["raw"] + libs
    build: dict[str, list[float]] = {k: [] for k in libs}
    first: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "first_step.py"
        script.write_text(FIRST_STEP)
        for kind in libs:  # warm-up: .pyc files, page cache
            construction(kind)
        for kind in kinds:
            launch_to_first_step(kind, script, folder)
        for _ in range(args.repeats):
            for kind in libs:
                build[kind].append(construction(kind))
            for kind in kinds:
                first[kind].append(launch_to_first_step(kind, script, folder))
    bs = {k: summary([v * 1e3 for v in xs]) for k, xs in build.items()}
    fs = {k: summary(xs) for k, xs in first.items()}
    v = versions()
    lines = [
        "## Start-up: Accelerator() and launch to first step",
        "",
        f"`python bench/startup.py --repeats {args.repeats}` — {_dt.date.today().isoformat()}, Python {v['python']}, "
        f"torch {v['torch']}, overdrive {v['overdrive']}, accelerate {v['accelerate']}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}. Fresh processes, kinds interleaved, one warm-up each; median (min–max).",
        "",
        "| `Accelerator()` in one process (ms) | median | min–max | ratio to overdrive |",
        "|---|---|---|---|",
    ]
    for kind in libs:
        lines.append(f"| {kind} | {bs[kind]['median']:.1f} | {bs[kind]['min']:.1f}–{bs[kind]['max']:.1f} | "
                     f"{ratio(bs[kind], bs['overdrive'])} |")
    lines += [
        "",
        "| launcher start to rank 0's first optimizer step, 2 processes (s) | median | min–max | ratio to raw |",
        "|---|---|---|---|",
    ]
    labels = {"raw": "`torchrun` + hand-written DDP", "overdrive": "`overdrive launch` + overdrive",
              "accelerate": "`accelerate launch --multi_gpu` + Accelerate(cpu=True)"}
    for kind in kinds:
        lines.append(f"| {labels[kind]} | {fs[kind]['median']:.2f} | {fs[kind]['min']:.2f}–{fs[kind]['max']:.2f} | "
                     f"{ratio(fs[kind], fs['raw'])} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_fragment(text, FRAGMENT)


if __name__ == "__main__":
    main()
