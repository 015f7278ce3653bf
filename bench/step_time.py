"""Training step time: hand-written DDP vs overdrive (vs Accelerate, vs overdrive + torch.compile), 2 processes, CPU.

One ``torchrun --nproc-per-node 2`` launch per (model, mode). Inside it every kind of loop is built once on the same
model weights, optimizer and per-rank batches, then timed in interleaved blocks (raw, overdrive, accelerate, raw,
overdrive, ...; ``--rounds`` blocks of ``--steps`` micro-steps each, after one untimed warm-up block per kind), so
machine noise hits every kind alike. A sample is rank 0's mean micro-step time over one block (a barrier before and
after each block). The table gives the median and spread over the samples and the ratio to raw DDP.

Kinds: ``raw`` (DistributedDataParallel, ``no_sync`` on accumulation micro-steps, ``torch.autocast`` for bf16),
``overdrive`` (``Accelerator`` + ``accumulate`` + ``backward``), ``accelerate`` (``accelerate.Accelerator(cpu=True)``,
when installed), ``compiled`` (overdrive with ``dynamo_backend="inductor"``, fp32 plain only).

Run:
    python bench/step_time.py                 # prints, writes docs/benchmarks.d/step_time.md
    python bench/step_time.py --no-write --rounds 7 --steps 20
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


def _worker(model_name: str, mode: str, rounds: int, steps: int) -> None:
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

    raw = DistributedDataParallel(_model(model_name))
    raw_opt = torch.optim.AdamW(raw.parameters(), lr=1e-4)

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

    steps_fn["raw"] = raw_step

    def library_step(acc: Any, model: Any, opt: Any) -> Any:
        def step(i: int) -> None:
            x, y = batches[i % len(batches)]
            with acc.accumulate(model):
                loss = F.mse_loss(model(x), y)
                acc.backward(loss)
                opt.step()
                opt.zero_grad()

        return step

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

    for kind in steps_fn:
        block(kind)  # warm-up: allocator, autograd caches, compilation
    samples: dict[str, list[float]] = {k: [] for k in steps_fn}
    for _ in range(rounds):
        for kind in steps_fn:
            samples[kind].append(block(kind))
    if rank == 0:
        sys.stdout.write("RESULT " + repr(samples) + "\n")
        sys.stdout.flush()
    dist.barrier()
    steps_fn.clear()  # the closures hold the DDP wrappers: drop them before the group goes
    dist.destroy_process_group()
    os._exit(0)  # after destroy: avoids gloo's exit-time abort (docs FACTS)


# -- the driver --------------------------------------------------------------------------------------------------------


def _launch(model_name: str, mode: str, rounds: int, steps: int) -> dict[str, list[float]]:
    from _common import ROOT, child_env

    env = child_env()
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__, "--worker",
           model_name, mode, "--rounds", str(rounds), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"step_time worker failed ({model_name}, {mode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return dict(ast.literal_eval(lines[0][len("RESULT "):]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timed blocks per kind (>= 7)")
    parser.add_argument("--steps", type=int, default=20, help="micro-steps per block")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1], args.rounds, args.steps)
        return 0
    from _common import FRAGMENTS, ratio, summary, versions, write_fragment

    rows = []
    for model_name in args.models.split(","):
        for mode in args.modes.split(","):
            samples = _launch(model_name, mode, args.rounds, args.steps)
            stats = {k: summary(v) for k, v in samples.items()}
            base = stats["raw"]
            for kind, s in stats.items():
                # Paired: each round's block of this kind over the raw block run next to it, so slow drifts of the
                # shared machine cancel; the median of those ratios is the figure to read.
                paired = summary([a / b for a, b in zip(samples[kind], samples["raw"])])
                row = (f"| {model_name} | {mode} | {kind} | {s['median']:.2f} | {s['min']:.2f}–{s['max']:.2f} | "
                       f"{s['iqr']:.2f} | {ratio(s, base)} | {paired['median']:.3f} (IQR {paired['iqr']:.3f}) |")
                print(row, flush=True)
                rows.append(row)
    v = versions()
    text = "\n".join([
        "## Training step time: hand-written DDP vs overdrive (2 processes, CPU)",
        "",
        f"{_dt.date.today().isoformat()} · {platform.machine()} · {os.cpu_count()} cores · python {v['python']} · "
        f"torch {v['torch']} · overdrive {v['overdrive']} · accelerate {v['accelerate']}",
        "",
        f"`python bench/step_time.py --rounds {args.rounds} --steps {args.steps}`: one torchrun launch (2 processes, "
        "gloo, 1 thread each) per model and mode; inside it each kind runs interleaved blocks of "
        f"{args.steps} micro-steps ({args.rounds} timed blocks per kind after one warm-up block). A sample is rank "
        "0's mean micro-step time in one block. `raw` is a hand-written DDP loop, `compiled` is overdrive with "
        "`dynamo_backend=\"inductor\"` (model compiled inside DDP). Ratio = median / raw DDP's median; paired = "
        "median over rounds of (this kind's block / the raw block of the same round).",
        "",
        "| model | mode | kind | median ms/step | min–max | IQR | vs raw DDP | paired ratio |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(text)
    if not args.no_write:
        write_fragment(text, FRAGMENTS / FRAGMENT_NAME)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(main())
