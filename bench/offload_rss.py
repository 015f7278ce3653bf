"""Peak memory of running a model with disk offload under a `max_memory` cap, vs the model's size.

An MLP of residual blocks (`x + fc2(gelu(fc1(x)))`, width d, 4d hidden) is built and saved as a sharded safetensors
checkpoint (with index) by one process, with its output on a fixed input. Then, each in a fresh process:

    offload  build the model under `init_empty_weights`, `load_checkpoint_and_dispatch(device_map="auto",
             max_memory={"cpu": CAP}, no_split_module_classes=["Block"], offload_folder=...)`, one forward
    plain    the same model loaded whole into memory (`load_checkpoint_in_model`, no device map), one forward

Memory is the peak resident set (`ru_maxrss`, which counts the pages of memory-mapped files that were read too)
minus the resident set just before loading started (after `import torch`, `import overdrive` and building the empty
model). That difference is what loading and running the model cost; the interpreter and torch themselves take
~200-300 MB here either way. Both outputs are compared with the saving process's output (`torch.equal`). The two
kinds are interleaved (offload, plain, offload, ...), SAMPLES of each.

Run:
    python bench/offload_rss.py              # prints, writes docs/benchmarks.d/offload_rss.md
    python bench/offload_rss.py --no-write   # prints only
    python bench/offload_rss.py --width 1024 --blocks 10 --cap 100MB --samples 3

The child modes (`--child save|offload|plain`) are also used by tests/unit/test_big_modeling.py.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, child_env, summary, versions, write_fragment  # bench/ is on sys.path when run

FRAGMENT = ROOT / "docs" / "benchmarks.d" / "offload_rss.md"
HERE = Path(__file__).resolve()


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _anon_rss() -> int:
    """Resident anonymous memory (the process's own; mapped file pages are page cache the kernel can drop)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class _AnonPeak:
    """Samples :func:`_anon_rss` every millisecond in a thread; ``peak`` is the largest value seen."""

    def __init__(self) -> None:
        import threading

        self.peak = _anon_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _anon_rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _anon_rss())


def _build(width: int, blocks: int):  # type: ignore[no-untyped-def]
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(width, 4 * width)
            self.fc2 = nn.Linear(4 * width, width)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return x + self.fc2(nn.functional.gelu(self.fc1(x)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(blocks))

        def forward(self, x):  # type: ignore[no-untyped-def]
            for block in self.blocks:
                x = block(x)
            return x

    return Net()


def child(mode: str, folder: str, width: int, blocks: int, cap: str) -> dict[str, object]:
    import torch

    torch.set_num_threads(1)
    ckpt, ref = os.path.join(folder, "ckpt"), os.path.join(folder, "ref.pt")
    x = torch.linspace(-1, 1, 4 * width).reshape(4, width)
    if mode == "save":
        from overdrive.checkpointing import save_model_weights

        torch.manual_seed(0)
        model = _build(width, blocks)
        files = save_model_weights(model.state_dict(), ckpt, max_shard_size="40MB")
        with torch.no_grad():
            torch.save(model(x), ref)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        return {"model_bytes": size, "files": len(files)}

    import overdrive
    from overdrive.utils import load_checkpoint_in_model

    with overdrive.init_empty_weights():
        model = _build(width, blocks)
    base = _current_rss()
    anon_base, anon = _anon_rss(), _AnonPeak()
    t0 = time.perf_counter()
    disk = 0
    if mode == "offload":
        offload = os.path.join(folder, "offload")
        model = overdrive.load_checkpoint_and_dispatch(
            model, ckpt, device_map="auto", max_memory={"cpu": cap}, no_split_module_classes=["Block"],
            offload_folder=offload,
        )
        disk = sum(1 for d in model.hf_device_map.values() if d == "disk")
    else:
        load_checkpoint_in_model(model, ckpt)
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model(x)
    t2 = time.perf_counter()
    peak = _peak_rss()
    anon_delta = anon.stop() - anon_base
    expected = torch.load(ref)
    return {
        "mode": mode, "base": base, "peak": peak, "delta": peak - base, "anon_delta": anon_delta,
        "equal": bool(torch.equal(out, expected)),
        "load_s": t1 - t0, "forward_s": t2 - t1, "disk_blocks": disk,
    }


def run_child(mode: str, folder: str, width: int, blocks: int, cap: str) -> dict[str, object]:
    """One fresh process in MODE; its JSON result."""
    cmd = [sys.executable, str(HERE), "--child", mode, "--folder", folder, "--width", str(width),
           "--blocks", str(blocks), "--cap", cap]
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f"{n / 2**20:.0f}"


def render_markdown(saved: dict[str, object], res: dict[str, list[dict[str, object]]], cfg: dict[str, object]) -> str:
    v = versions()
    size = float(saved["model_bytes"])  # type: ignore[arg-type]
    off = summary([float(r["delta"]) for r in res["offload"]])  # type: ignore[arg-type]
    plain = summary([float(r["delta"]) for r in res["plain"]])  # type: ignore[arg-type]
    base = summary([float(r["base"]) for r in res["offload"] + res["plain"]])  # type: ignore[arg-type]
    load_off = summary([float(r["load_s"]) for r in res["offload"]])  # type: ignore[arg-type]
    load_plain = summary([float(r["load_s"]) for r in res["plain"]])  # type: ignore[arg-type]
    fwd_off = summary([float(r["forward_s"]) for r in res["offload"]])  # type: ignore[arg-type]
    fwd_plain = summary([float(r["forward_s"]) for r in res["plain"]])  # type: ignore[arg-type]
    equal = sum(bool(r["equal"]) for rs in res.values() for r in rs)
    total = sum(len(rs) for rs in res.values())
    disk = res["offload"][0]["disk_blocks"]

    def cell(s: dict[str, float]) -> str:
        return f"{mb(s['median'])} ({mb(s['min'])}–{mb(s['max'])})"

    def secs(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"

    lines = [
        "## Disk offload: peak memory vs model size",
        "",
        f"`python bench/offload_rss.py` — {_dt.date.today().isoformat()}, Python {v['python']}, torch {v['torch']}, "
        f"overdrive {v['overdrive']}, {os.cpu_count()} CPUs, {platform.machine()}, one thread per process. "
        f"An MLP of {cfg['blocks']} residual blocks (width {cfg['width']}, hidden {4 * int(cfg['width'])}), "  # type: ignore[call-overload]
        f"{mb(size)} MiB of fp32 weights, saved as {saved['files']} files (sharded safetensors + index). "
        f"`offload`: built under `init_empty_weights`, `load_checkpoint_and_dispatch(device_map=\"auto\", "
        f"max_memory={{\"cpu\": \"{cfg['cap']}\"}}, no_split_module_classes=[\"Block\"])` put {disk} of "
        f"{cfg['blocks']} blocks on `\"disk\"`, then one forward pass (batch 4) streams them from the offload folder. "
        f"`plain`: the same checkpoint loaded whole into memory, same forward. Memory: peak RSS (`ru_maxrss`, "
        "mapped file pages included) minus the RSS just before loading, in MiB, median (min–max) of "
        f"{off['n']:.0f} fresh processes per kind, interleaved. The RSS before loading (interpreter, torch, "
        f"overdrive, empty model) was {cell(base)} MiB.",
        "",
        "| | peak RSS over the baseline (MiB) | share of the model size | load (s) | forward (s) |",
        "|---|---|---|---|---|",
        f"| model size (fp32 weights) | {mb(size)} | 100 % | | |",
        f"| `offload` (cpu cap {cfg['cap']}) | {cell(off)} | {off['median'] / size:.0%} | {secs(load_off)} | "
        f"{secs(fwd_off)} |",
        f"| `plain` (whole model in memory) | {cell(plain)} | {plain['median'] / size:.0%} | {secs(load_plain)} | "
        f"{secs(fwd_plain)} |",
        "",
        f"With disk offload the process peaked at {off['median'] / size:.0%} of the model's size above its "
        f"baseline ({'below' if off['max'] < size else 'NOT below'} the model size in every run), against "
        f"{plain['median'] / size:.0%} when the model is held in memory. Outputs equal to the saving process's "
        f"(`torch.equal`): {equal} of {total} runs. Loading with offload includes writing the offloaded weights to "
        "the offload folder; the forward pass reads them back through memory maps (here from the page cache).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Peak RSS of disk offload under a max_memory cap vs the model size.")
    p.add_argument("--child", choices=["save", "offload", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, default=1024, help="block width d (1024: 33.6 MB per block)")
    p.add_argument("--blocks", type=int, default=10, help="number of blocks (10 x 1024: ~320 MiB)")
    p.add_argument("--cap", default="100MB", help="max_memory for the CPU")
    p.add_argument("--samples", type=int, default=3, help="fresh processes per kind")
    p.add_argument("--no-write", action="store_true", help=f"print only; do not write {FRAGMENT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.width, args.blocks, args.cap)))
        return 0
    if args.samples < 1 or args.width < 8 or args.blocks < 2:
        p.error("need --samples >= 1, --width >= 8, --blocks >= 2")
    cfg = {"width": args.width, "blocks": args.blocks, "cap": args.cap}
    res: dict[str, list[dict[str, object]]] = {"offload": [], "plain": []}
    with tempfile.TemporaryDirectory() as folder:
        saved = run_child("save", folder, args.width, args.blocks, args.cap)
        for i in range(args.samples):
            for mode in ("offload", "plain") if i % 2 == 0 else ("plain", "offload"):
                import shutil

                shutil.rmtree(os.path.join(folder, "offload"), ignore_errors=True)  # each run writes its own
                r = run_child(mode, folder, args.width, args.blocks, args.cap)
                print(f"{mode}: +{mb(float(r['delta']))} MiB, equal={r['equal']}", flush=True)  # type: ignore[arg-type]
                res[mode].append(r)
    text = render_markdown(saved, res, cfg)
    print(text)
    if not args.no_write:
        out = write_fragment(text, FRAGMENT)
        print(f"wrote {out.relative_to(ROOT)}")
    return 0 if all(r["equal"] for rs in res.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
