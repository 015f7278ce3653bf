"""save_state(async_save=True) with DDP on 2 ranks. Run under torchrun:

    async_ckpt.py wait PROJECT    save async, keep training (DDP all-reduces while the files are written), then
                                  wait_for_checkpoint; load it in this process and check every rank's state equals
                                  the state at save time (and the parameters a plain-PyTorch loop computes)
    async_ckpt.py exit PROJECT    save async, keep training, and end the script without waiting; the background
                                  write is still running at exit (a slow object on rank 0, a late exit on rank 1),
                                  so the checkpoint must be committed by the exit handler
    async_ckpt.py check PROJECT   a fresh launch: load the newest complete checkpoint and check it as in `wait`
"""

from __future__ import annotations

import atexit
import collections
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overdrive import Accelerator
from overdrive.utils import InitProcessGroupKwargs, ProjectConfiguration

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
SAVE_AT = 3


def say(text: str) -> None:
    sys.stdout.write(f"[rank {RANK}] {text}\n")  # one write per line: ranks share stdout
    sys.stdout.flush()


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"[rank {RANK}] {message}")


class SlowToWrite:
    """Pickling it takes a while: keeps the background writer busy past the end of the script."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __deepcopy__(self, memo: dict[int, Any]) -> SlowToWrite:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        time.sleep(self.seconds)
        return (collections.OrderedDict, ())


class Counter:
    def __init__(self, slow: float = 0.0) -> None:
        self.count, self.slow = 0, slow

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "slow": SlowToWrite(self.slow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


def model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def build(project: Path, slow: float = 0.0) -> tuple[Any, ...]:
    config = ProjectConfiguration(str(project), automatic_checkpoint_naming=True, total_limit=2)
    acc = Accelerator(cpu=True, project_config=config,
                      kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
    check(acc.num_processes == WORLD, f"{acc.num_processes} processes, torchrun started {WORLD}")
    model, opt, sched = acc.prepare(*model_and_optimizer())
    counter = Counter(slow)
    acc.register_for_checkpointing(counter)
    return acc, model, opt, sched, counter


def global_batch(step: int) -> torch.Tensor:
    return torch.randn(4 * WORLD, 8, generator=torch.Generator().manual_seed(1000 + step))


def train(acc: Any, model: Any, opt: Any, sched: Any, counter: Counter, steps: range) -> None:
    for step in steps:
        x = global_batch(step)[RANK * 4:(RANK + 1) * 4]  # this rank's share of the global batch
        acc.backward(model(x).pow(2).mean())
        opt.step()
        sched.step()
        opt.zero_grad()
        counter.count += 1
        acc.step += 1


def reference(steps: int) -> list[torch.Tensor]:
    """The same global batches in one plain-PyTorch process (DDP averages the ranks' gradients of equal shares; as in
    Accelerate, the prepared scheduler steps once per process for each optimizer step)."""
    model, opt, sched = model_and_optimizer()
    for step in range(steps):
        model(global_batch(step)).pow(2).mean().backward()
        opt.step()
        for _ in range(WORLD):
            sched.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def state_now(acc: Any, model: Any, opt: Any, sched: Any, counter: Counter) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "adam": {k: {n: v.clone() for n, v in s.items()} for k, s in opt.state_dict()["state"].items()},
        "sched": sched.state_dict(),
        "count": counter.count,
        "step": acc.step,
    }


def draws() -> list[Any]:
    return [random.random(), float(np.random.rand()), torch.rand(3)]


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


def save_async(objs: tuple[Any, ...], project: Path) -> Path:
    acc = objs[0]
    train(*objs, range(SAVE_AT))
    random.seed(10 + RANK), np.random.seed(10 + RANK), torch.manual_seed(10 + RANK)  # each rank its own streams
    expected = state_now(*objs)
    folder = acc.save_state(async_save=True)
    expected["draws"] = draws()
    torch.save(expected, project / f"expected-rank{RANK}.pt")
    check(not folder.exists(), f"{folder} is visible before it was committed")
    train(*objs, range(SAVE_AT, SAVE_AT + 3))  # DDP all-reduces while the background thread writes
    return folder


def load_and_check(objs: tuple[Any, ...], project: Path, folder: Path | None) -> None:
    acc, model = objs[0], objs[1]
    random.seed(77), np.random.seed(77), torch.manual_seed(77)
    acc.load_state(folder)  # None: the newest complete checkpoint_N
    expected = torch.load(project / f"expected-rank{RANK}.pt", weights_only=False)
    got = state_now(*objs)
    got["draws"] = draws()
    same(expected, got, "state after load")
    for p, q in zip(model.parameters(), reference(SAVE_AT)):
        check(torch.allclose(p, q, rtol=0, atol=1e-6), f"parameters differ from the plain-PyTorch loop by {(p - q).abs().max():.3g}")


class Unpicklable:
    """A registered object holding a lambda: only rank 0 writes registered objects, so only its write fails."""

    def __init__(self) -> None:
        self.schedule = lambda step: 0.5 ** step

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule = state["schedule"]


def fail_on_rank_0(acc: Any) -> None:
    """A background write that fails on rank 0 only is an error at the wait on every rank, and commits nothing."""
    from overdrive.checkpoint_state import CheckpointError

    acc.register_for_checkpointing(Unpicklable())
    acc.save_state(async_save=True)
    try:
        acc.wait_for_checkpoint()
    except CheckpointError as err:
        expected = "in the background failed" if RANK == 0 else "failed on rank 0"
        check(expected in str(err), f"unexpected error text: {err}")
    else:
        raise AssertionError(f"[rank {RANK}] the failed background write was not reported")
    acc._custom_objects.pop()
    acc.wait_for_everyone()  # rank 0 removed the temporary folder before it raised
    names = sorted(p.name for p in (Path(acc.project_configuration.project_dir) / "checkpoints").iterdir())
    check(names == ["checkpoint_0"], f"after the failed save the checkpoints are {names}")


def main() -> None:
    phase, project = sys.argv[1], Path(sys.argv[2])
    if phase == "wait":
        objs = build(project)
        folder = save_async(objs, project)
        committed = objs[0].wait_for_checkpoint()
        check(committed == folder and (folder / "overdrive_complete.json").is_file(), f"not committed: {committed}")
        load_and_check(objs, project, folder)
        fail_on_rank_0(objs[0])
        objs[0].end_training()
    elif phase == "exit":
        objs = build(project, slow=1.5 if RANK == 0 else 0.0)
        save_async(objs, project)
        if RANK == 1:
            atexit.register(time.sleep, 1.0)  # runs before overdrive's handler: rank 0 must wait for this rank
        say("ASYNC_CKPT_EXIT_OK (leaving without wait_for_checkpoint)")
        return
    elif phase == "check":
        objs = build(project)
        load_and_check(objs, project, None)
        objs[0].end_training()
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    say(f"ASYNC_CKPT_{phase.upper()}_OK")


if __name__ == "__main__":
    main()
