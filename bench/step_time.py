"""Training step time: hand-written DDP vs overdrive (vs Accelerate, vs overdrive + torch.compile), 2 processes, CPU.

``--launches`` torchrun launches (2 processes) per (model, mode), their rounds pooled. Inside a launch every kind of
loop is built once on the same model weights, optimizer and per-rank batches, then timed in ``--rounds`` rounds: each
round re-allocates every kind's parameters and optimizer state (:func:`_rehome`) and runs one block of ``--steps``
micro-steps per kind, in an order rotated every round, with a barrier around each block. A sample is rank 0's mean
micro-step time over one block; the figure is the median over rounds of (kind's block / raw block of the same round),
with its 95 % confidence interval. Ranks are pinned to a core under SCHED_FIFO where allowed
(:func:`_quiet_scheduling`), because the default scheduler's wake-up delays dwarf a 1 % difference on this machine.

Kinds: ``raw`` (DistributedDataParallel, ``no_sync`` on accumulation micro-steps, ``torch.autocast`` for bf16),
``raw (2nd copy)`` (the same loop again: the A/A control), ``overdrive`` (``Accelerator`` + ``accumulate`` +
``backward``), ``accelerate`` (``accelerate.Accelerator(cpu=True)``, when installed), ``compiled`` (overdrive with
``dynamo_backend="inductor"``, fp32 plain only).

Run:
    python bench/step_time.py                 # prints, writes docs/benchmarks.d/step_time.md (~15 min here)
    python bench/step_time.py --no-write --rounds 20 --launches 1 --models mlp --modes plain
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from typing import Any

FRAGMENT_NAME = "step_time.md"
MODES = {"plain": (1, "no"), "accum4": (4, "no"), "bf16": (1, "bf16")}
MODELS = ("mlp", "transformer")


# -- the worker (runs under torchrun) ---------------------------------------------------------------------------------


def _model(name: str) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 16))

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(32, 64)
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(64, 16)

        def forward(self, x: Any) -> Any:
            return self.head(self.encoder(self.embed(x)).mean(dim=1))

    return Tiny()


def _batches(name: str, rank: int) -> list[Any]:
    import torch

    g = torch.Generator().manual_seed(100 + rank)
    shape = (32, 256) if name == "mlp" else (8, 32, 32)
    return [(torch.randn(*shape, generator=g), torch.randn(shape[0], 16, generator=g)) for _ in range(8)]


def _rehome(model: Any, optimizer: Any) -> None:
    """Move every parameter and optimizer-state tensor to freshly allocated memory (same values).

    Two identical loops in one process can differ by a few per cent only because of where their tensors happen to
    sit in memory (cache-set conflicts): measured here, three copies of the same hand-written DDP loop differed by up
    to 5 % within one launch. Re-allocating every kind's tensors before each round gives every round a new layout, so
    that luck averages out instead of biasing one kind for the whole run.
    """
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
        for state in optimizer.state.values():
            for key, value in list(state.items()):
                if torch.is_tensor(value) and value.dim() > 0:
                    state[key] = value.clone()


def _quiet_scheduling(local_rank: int) -> str:
    """Pin this rank to its own core and run it under SCHED_FIFO, when the OS allows it; say what was applied.

    Under the default scheduler a gloo collective on this 2-core machine has a median of 0.15 ms but a 95th percentile
    of ~4 ms (a woken thread waits for the scheduler tick), which made single steps vary by +-40 % and hid a 1 %
    difference under noise. A real-time policy wakes threads at once (barrier p95 0.14 ms measured); every kind runs
    under the same policy, so the ratios stay fair. Called before torch starts any thread, which inherit both.
    """
    applied = []
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[local_rank % len(cpus)]})
        applied.append("pinned to one core")
    except (AttributeError, OSError):
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        applied.append("SCHED_FIFO")
    except (AttributeError, OSError):
        pass
    return " + ".join(applied) or "default scheduler"


def _worker(model_name: str, mode: str, rounds: int, steps: int, quiet: bool) -> None:
    scheduling = _quiet_scheduling(int(os.environ.get("LOCAL_RANK", "0"))) if quiet else "default scheduler"
    import random
    import warnings
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    warnings.simplefilter("ignore")  # accumulate() without a prepared loader warns once; not what is measured
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank()
    accum, mp = MODES[mode]
    bf16 = mp == "bf16"
    batches = _batches(model_name, rank)
    steps_fn: dict[str, Any] = {}
    states: list[tuple[Any, Any]] = []  # (model, optimizer) of every kind, re-homed before each round

    def raw_loop() -> Any:
        raw = DistributedDataParallel(_model(model_name))
        raw_opt = torch.optim.AdamW(raw.parameters(), lr=1e-4)
        states.append((raw, raw_opt))

        def raw_step(i: int) -> None:
            x, y = batches[i % len(batches)]
            sync = (i + 1) % accum == 0
            with contextlib.nullcontext() if sync else raw.no_sync():
                if bf16:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        out = raw(x)
                    out = out.float()
                else:
                    out = raw(x)
                loss = F.mse_loss(out, y)
                (loss / accum if accum > 1 else loss).backward()
            if sync:
                raw_opt.step()
                raw_opt.zero_grad()

        return raw_step

    def library_step(acc: Any, model: Any, opt: Any) -> Any:
        states.append((model, opt))

        def step(i: int) -> None:
            x, y = batches[i % len(batches)]
            with acc.accumulate(model):
                loss = F.mse_loss(model(x), y)
                acc.backward(loss)
                opt.step()
                opt.zero_grad()

        return step

    steps_fn["raw"] = raw_loop()
    steps_fn["raw (2nd copy)"] = raw_loop()  # the A/A control: what two identical loops differ by here

    from overdrive import Accelerator

    acc = Accelerator(gradient_accumulation_steps=accum, mixed_precision=mp)
    m = _model(model_name)
    model, opt = acc.prepare(m, torch.optim.AdamW(m.parameters(), lr=1e-4))
    steps_fn["overdrive"] = library_step(acc, model, opt)
    if mode == "plain":
        acc_c = Accelerator(dynamo_backend="inductor")
        m = _model(model_name)
        model_c, opt_c = acc_c.prepare(m, torch.optim.AdamW(m.parameters(), lr=1e-4))
        steps_fn["compiled"] = library_step(acc_c, model_c, opt_c)
    try:
        import accelerate

        a_acc = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accum, mixed_precision=mp)
        m = _model(model_name)
        a_model, a_opt = a_acc.prepare(m, torch.optim.AdamW(m.parameters(), lr=1e-4))
        steps_fn["accelerate"] = library_step(a_acc, a_model, a_opt)
    except ImportError:
        pass

    def block(kind: str) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        for i in range(steps):
            steps_fn[kind](i)
        dist.barrier()
        return (time.perf_counter() - t0) / steps * 1e3

    kinds = list(steps_fn)
    for kind in kinds:
        block(kind)  # warm-up: allocator, autograd caches, compilation
    rng = random.Random(1234)  # the same on every rank: both ranks re-home and run the kinds in the same order
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        for i in rng.sample(range(len(states)), len(states)):
            _rehome(*states[i])
        # Rotate the order so every kind runs in every position (and after every other kind) equally often.
        for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
            samples[kind].append(block(kind))
    if rank == 0:
        sys.stdout.write("SCHEDULING " + scheduling + "\n")
        sys.stdout.write("RESULT " + repr(samples) + "\n")
        sys.stdout.flush()
    dist.barrier()
    steps_fn.clear()  # the closures hold the DDP wrappers: drop them before the group goes
    states.clear()
    dist.destroy_process_group()
    os._exit(0)  # after destroy: avoids gloo's exit-time abort (docs FACTS)


# -- the driver --------------------------------------------------------------------------------------------------------


def _launch(model_name: str, mode: str, rounds: int, steps: int, quiet: bool) -> tuple[dict[str, list[float]], str]:
    from _common import ROOT, child_env

    env = child_env()
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__, "--worker",
           model_name, mode, "--rounds", str(rounds), "--steps", str(steps)]
    if not quiet:
        cmd.append("--default-scheduler")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"step_time worker failed ({model_name}, {mode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    scheduling = next((ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("SCHEDULING ")), "?")
    return dict(ast.literal_eval(lines[0][len("RESULT "):])), scheduling


GOAL = 1.01  # overdrive / raw DDP, median step time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=100, help="interleaved timed blocks per kind and launch (>= 7)")
    parser.add_argument("--launches", type=int, default=3,
                        help="fresh launches per model and mode, their rounds pooled (each launch lays out memory anew)")
    parser.add_argument("--steps", type=int, default=16, help="micro-steps per block (a multiple of 4)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--default-scheduler", action="store_true",
                        help="do not pin ranks to cores or use SCHED_FIFO (noisier; see _quiet_scheduling)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1], args.rounds, args.steps, quiet=not args.default_scheduler)
        return 0
    if args.rounds < 7 or args.steps % 4 or args.launches < 1:
        parser.error(f"--rounds {args.rounds} --steps {args.steps} --launches {args.launches}: need rounds >= 7, steps "
                     "a multiple of 4 (whole accumulation windows per block) and at least one launch")
    from _common import FRAGMENTS, median_ci, summary, versions, write_fragment

    rows: list[str] = []
    verdicts: list[str] = []
    schedulings: set[str] = set()
    for model_name in args.models.split(","):
        for mode in args.modes.split(","):
            samples: dict[str, list[float]] = {}
            per_launch: list[float] = []  # overdrive's median paired ratio in each launch
            for _ in range(args.launches):
                got, scheduling = _launch(model_name, mode, args.rounds, args.steps, not args.default_scheduler)
                schedulings.add(scheduling)
                per_launch.append(summary([a / b for a, b in zip(got["overdrive"], got["raw"])])["median"])
                for kind, xs in got.items():
                    samples.setdefault(kind, []).extend(xs)  # pairs stay aligned: every kind has a block per round
            for kind, xs in samples.items():
                s = summary(xs)
                # Paired: each round's block of this kind over the raw block of the same round (re-homed memory,
                # rotated order), so drifts of the shared machine cancel; its median is the figure to read.
                paired = [a / b for a, b in zip(xs, samples["raw"])]
                lo, hi = median_ci(paired)
                med = summary(paired)["median"]
                goal = ""
                if kind == "overdrive":
                    goal = "yes" if med <= GOAL else "no"
                    verdicts.append(f"{model_name}/{mode} {med:.3f} (launches: "
                                    + ", ".join(f"{x:.3f}" for x in per_launch) + ")")
                ci = "" if kind == "raw" else f"{lo:.3f}–{hi:.3f}"
                row = (f"| {model_name} | {mode} | {kind} | {s['median']:.3f} | {s['iqr']:.3f} | "
                       f"{med:.3f} | {ci} | {goal} |")
                print(row, flush=True)
                rows.append(row)
    v = versions()
    passed = sum(" yes |" in r for r in rows)
    text = "\n".join([
        "## Training step time: hand-written DDP vs overdrive (2 processes, CPU)",
        "",
        f"{_dt.date.today().isoformat()} · {platform.machine()} · {os.cpu_count()} cores · python {v['python']} · "
        f"torch {v['torch']} · overdrive {v['overdrive']} · accelerate {v['accelerate']}",
        "",
        f"`python bench/step_time.py --rounds {args.rounds} --launches {args.launches} --steps {args.steps}"
        f"{' --default-scheduler' if args.default_scheduler else ''}`: {args.launches} torchrun launches (2 processes, "
        f"gloo, 1 thread each; {', '.join(sorted(schedulings))}) per model and mode, their rounds pooled (a fresh "
        "launch lays out everything in memory anew). Inside a launch every kind is built on the "
        f"same weights, optimizer and per-rank batches, then runs {args.rounds} rounds; each round re-allocates every "
        "kind's parameters and optimizer state (so no kind keeps a lucky or unlucky memory layout for the whole run) "
        f"and runs one block of {args.steps} micro-steps per kind, in an order rotated every round, with a barrier "
        "around each block. A sample is rank 0's mean micro-step time over a block. `raw` is a hand-written DDP loop "
        "(`no_sync` on accumulation micro-steps, `torch.autocast` for bf16); `raw (2nd copy)` is a second, identical "
        "raw loop: its ratio is what two identical loops differ by here (the measurement's floor). `compiled` is "
        "overdrive with `dynamo_backend=\"inductor\"`; `accelerate` is `accelerate.Accelerator(cpu=True)`. "
        "Paired ratio = median over rounds of (the kind's block / the raw block of the same round), with the 95 % "
        "distribution-free confidence interval of that median.",
        "",
        "| model | mode | kind | median ms/micro-step | IQR | paired ratio to raw DDP | 95 % CI | overdrive <= 1.01 |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"overdrive / raw DDP (pooled median paired ratio, and each launch's own): {passed} of {len(verdicts)} rows at "
        f"or under {GOAL} — " + "; ".join(verdicts) + ".",
        "",
    ])
    print(text)
    if not args.no_write:
        write_fragment(text, FRAGMENTS / FRAGMENT_NAME)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(main())
