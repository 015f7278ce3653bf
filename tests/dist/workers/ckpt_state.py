"""save_state / load_state across fresh processes, with overdrive and with Accelerate. Run under torchrun:

    ckpt_state.py od-save DIR         overdrive (fp16 scaler when OD_FP16=1) trains, saves DIR/od, writes what
                                      each rank must see after a load (params, Adam, scheduler, custom, RNG draws)
    ckpt_state.py acc-load-save DIR   Accelerate(cpu=True) loads DIR/od and checks it, then trains on and saves DIR/acc
    ckpt_state.py od-load DIR         overdrive loads DIR/od (and DIR/acc when present) in a fresh process and checks
"""

from __future__ import annotations

import gc
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
FP16 = os.environ.get("OD_FP16") == "1"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"[rank {RANK}] {message}")


class Counter:
    def __init__(self) -> None:
        self.count, self.history = 0, torch.zeros(3)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "history": self.history.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.history = state["count"], state["history"].clone()


def build(lib: str) -> tuple[Any, ...]:
    torch.manual_seed(0)
    if lib == "accelerate":
        import accelerate

        acc = accelerate.Accelerator(cpu=True)
    else:
        import overdrive
        from overdrive.utils import InitProcessGroupKwargs
        from datetime import timedelta

        handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=60))]
        acc = overdrive.Accelerator(cpu=True, mixed_precision="fp16" if FP16 else None, kwargs_handlers=handlers)
    check(acc.num_processes == WORLD, f"{lib} sees {acc.num_processes} processes, torchrun started {WORLD}")
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    counter = Counter()
    acc.register_for_checkpointing(counter)
    return acc, model, opt, sched, counter


def train(acc: Any, model: Any, opt: Any, sched: Any, counter: Counter, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed * 10 + RANK)
    for _ in range(steps):
        with acc.autocast():
            loss = model(torch.randn(4, 3, generator=gen)).float().pow(2).mean()
        acc.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        counter.count += 1
        counter.history += 1  # registered objects are saved once, from the main process: ranks must agree


def snapshot(acc: Any, model: Any, opt: Any, sched: Any, counter: Counter) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "adam": opt.state_dict()["state"],
        "sched": dict(sched.state_dict()),
        "counter": counter.state_dict(),
        "scale": acc.scaler.get_scale() if getattr(acc, "scaler", None) is not None else None,
        "step": acc.step,
    }


def draws() -> list[Any]:
    return [random.random(), float(np.random.rand()), torch.rand(3)]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        check(torch.equal(torch.as_tensor(a), torch.as_tensor(b)), f"{where}: {a} != {b}")
    elif isinstance(a, dict):
        check(set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}")
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        check(len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        check(a == b, f"{where}: {a!r} != {b!r}")


def save(lib: str, objs: tuple[Any, ...], folder: Path, name: str) -> None:
    acc = objs[0]
    seed_all(100 + RANK)  # every rank has its own streams, and they must come back per rank
    acc.step = 11
    expected = snapshot(*objs)
    acc.save_state(str(folder / name))
    expected["draws"] = draws()
    torch.save(expected, folder / f"{name}-expected-rank{RANK}.pt")


def load_and_check(lib: str, objs: tuple[Any, ...], folder: Path, name: str, check_scale: bool) -> None:
    acc = objs[0]
    train(*objs, steps=2, seed=50)  # move every value away from the checkpoint's
    seed_all(999)
    acc.load_state(str(folder / name))
    expected = torch.load(folder / f"{name}-expected-rank{RANK}.pt", weights_only=False)
    got = snapshot(*objs)
    got["draws"] = draws()
    if not check_scale:
        expected.pop("scale"), got.pop("scale")
    same(expected, got, f"{lib} loading {name}")


def main() -> None:
    phase, folder = sys.argv[1], Path(sys.argv[2])
    lib = "accelerate" if phase.startswith("acc") else "overdrive"
    objs = build(lib)
    train(*objs, steps=3, seed=1)
    if phase == "od-save":
        save(lib, objs, folder, "od")
    elif phase == "acc-load-save":
        load_and_check(lib, objs, folder, "od", check_scale=False)
        train(*objs, steps=2, seed=2)
        save(lib, objs, folder, "acc")
    elif phase == "od-load":
        load_and_check(lib, objs, folder, "od", check_scale=True)
        if (folder / "acc").is_dir():
            load_and_check(lib, objs, folder, "acc", check_scale=False)
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    print(f"[rank {RANK}] CKPT_{phase.upper()}_OK", flush=True)
    objs[0].wait_for_everyone()
    del objs
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
