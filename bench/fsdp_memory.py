"""Per-rank memory of FSDP2 vs DDP at world 2 on CPU: the sharded tensors' bytes and the resident set size.

Each run is a fresh 2-process torchrun launch of this file in worker mode: build an MLP of about 100 MB of fp32
parameters, prepare it with Adam under DDP or FSDP2 (``ACCELERATE_USE_FSDP``), train 2 steps, then report on every
rank the bytes of its parameters + Adam states (local shards under FSDP2) and its RSS growth over the RSS measured
right after the process group formed (``/proc/self/statm``, after ``gc.collect()`` and glibc's ``malloc_trim``). DDP and FSDP2 runs are
interleaved; the fragment gives medians over ranks and runs and the FSDP2 / DDP ratio (goal: tensors <= 0.55).

    python bench/fsdp_memory.py [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FRAGMENTS, ROOT, child_env, summary, versions, write_fragment  # noqa: E402

WIDTH, LAYERS = 2048, 6  # 6 x (2048 x 2048 + 2048) = 25.2M parameters, 101 MB in fp32


def rss_bytes() -> int:
    """Resident memory now, after handing freed heap pages back to the system (glibc keeps them otherwise, so RSS
    would count memory that FSDP2 already freed: the full model before sharding, all-gather buffers)."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: RSS includes the allocator's cache
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(engine: str) -> None:
    import torch

    from overdrive import Accelerator, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="size_based_wrap",
                                            min_num_params=1_000_000) if engine == "fsdp" else None
    acc = Accelerator(cpu=True, fsdp_plugin=plugin)
    gc.collect()
    base = rss_bytes()
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model, optimizer = acc.prepare(model, optimizer)
    for _ in range(2):
        x = torch.randn(8, WIDTH)
        acc.backward(model(x).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    gc.collect()

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    tensors = sum(local(p).numel() * local(p).element_size() for p in model.parameters())
    tensors += sum(local(v).numel() * local(v).element_size() for s in optimizer.state.values()
                   for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    record = {"engine": engine, "rank": acc.process_index, "tensors": tensors, "rss": rss_bytes() - base}
    sys.stdout.write("RESULT " + json.dumps(record) + "\n")
    sys.stdout.flush()
    acc.end_training()


def launch(engine: str) -> list[dict[str, float]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           "--worker", engine]
    env = child_env()
    env["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=True).stdout
    return [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if "RESULT " in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", choices=["ddp", "fsdp"])
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    results: dict[str, list[dict[str, float]]] = {"ddp": [], "fsdp": []}
    for _ in range(args.repeats):
        for engine in ("ddp", "fsdp"):  # interleaved
            results[engine] += launch(engine)
    mib = 1024 * 1024
    stats = {e: {k: summary([r[k] / mib for r in rows]) for k in ("tensors", "rss")} for e, rows in results.items()}
    lines = [
        "## FSDP2 memory per rank (world 2, CPU)",
        "",
        f"{datetime.date.today().isoformat()}; {', '.join(f'{k} {v}' for k, v in versions().items())}; "
        f"{os.cpu_count()} CPUs. `python bench/fsdp_memory.py --repeats {args.repeats}`: an MLP of {LAYERS} x "
        f"Linear({WIDTH}, {WIDTH}) ({LAYERS * (WIDTH * WIDTH + WIDTH) / 1e6:.1f}M parameters), Adam, 2 steps, "
        "DDP and FSDP2 runs interleaved, medians over both ranks of every run.",
        "",
        "| engine | parameters + Adam states per rank (MiB) | RSS growth per rank (MiB) |",
        "|---|---|---|",
    ]
    for engine, label in (("ddp", "DDP"), ("fsdp", "FSDP2")):
        s = stats[engine]
        lines.append(f"| {label} | {s['tensors']['median']:.1f} | {s['rss']['median']:.1f} "
                     f"({s['rss']['min']:.1f}-{s['rss']['max']:.1f}) |")
    t_ratio = stats["fsdp"]["tensors"]["median"] / stats["ddp"]["tensors"]["median"]
    r_ratio = stats["fsdp"]["rss"]["median"] / stats["ddp"]["rss"]["median"]
    lines += ["", f"FSDP2 / DDP: tensors **{t_ratio:.3f}** (goal <= 0.55), RSS growth **{r_ratio:.3f}**. RSS also holds "
              "allocator slack (trimmed before each reading) and torch's own caches, so it is the looser of the two "
              "figures.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_fragment(text, FRAGMENTS / "fsdp_memory.md")


if __name__ == "__main__":
    main()
