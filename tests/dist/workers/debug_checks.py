"""Worker for tests/dist/test_debug_watchdog.py: mismatched collectives, a stuck rank, an OOM on one rank.

Usage: torchrun --nproc-per-node 2 debug_checks.py SCENARIO
SCENARIO: skip | shape | op | clean (run with OVERDRIVE_DEBUG=1), stuck (a low OVERDRIVE_WATCHDOG_TIMEOUT), oom,
oom_error (rank 1 raises a ValueError instead).
Each line is written with one sys.stdout.write call (ranks share stdout). Lines the test looks up by their marker
comment (``# <name>``) report their own file:line in the errors.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import timedelta

import torch

from overdrive import Accelerator
from overdrive.utils import InitProcessGroupKwargs
from overdrive.utils.memory import find_executable_batch_size
from overdrive.utils.operations import DistributedOperationException

SCENARIO = sys.argv[1]
acc = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
RANK = acc.process_index


def say(text: str) -> None:
    sys.stdout.write(f"[rank {RANK}] {text}\n")
    sys.stdout.flush()


def caught(started: float, err: Exception) -> None:
    say("CAUGHT " + json.dumps({"seconds": time.monotonic() - started, "message": str(err)}))
    sys.stdout.flush()
    sys.exit(3)


def mismatch_scenarios() -> None:
    x = torch.ones(2, 3) * RANK
    acc.wait_for_everyone()
    started = time.monotonic()
    try:
        if SCENARIO == "skip":
            for step in range(3):
                if not (RANK == 1 and step == 1):  # rank 1 skips the gather of step 1
                    acc.gather(x)  # <skip-gather>
                acc.reduce(torch.tensor(1.0), "sum")  # <skip-reduce>
        elif SCENARIO == "shape":
            y = torch.ones(2, 3 + RANK)  # rank 1 has one more column
            acc.gather(y)  # <shape-gather>
        elif SCENARIO == "op":
            if RANK == 0:
                acc.reduce(x, "sum")  # <op-reduce>
            else:
                acc.gather(x)  # <op-gather>
    except DistributedOperationException as err:
        caught(started, err)
    say("NO ERROR")


def clean() -> None:
    """Debug mode on, every rank agrees: results equal those computed by hand."""
    x = torch.arange(6.0).reshape(2, 3) + 10 * RANK
    world = acc.num_processes
    expect = torch.cat([torch.arange(6.0).reshape(2, 3) + 10 * r for r in range(world)])
    assert torch.equal(acc.gather(x), expect)
    assert torch.equal(acc.reduce(x, "sum"), sum(torch.arange(6.0).reshape(2, 3) + 10 * r for r in range(world)))
    uneven = torch.ones(1 + RANK, 2)
    assert acc.gather(uneven).shape == (sum(1 + r for r in range(world)), 2)  # dim 0 may differ in debug mode too
    assert acc.pad_across_processes(torch.ones(1 + RANK)).shape == (world,)
    assert acc.gather_for_metrics(torch.tensor([RANK])).tolist() == list(range(world))
    with acc.main_process_first():
        if acc.is_main_process:
            time.sleep(0.2)
    acc.wait_for_everyone()
    say("CLEAN OK")


def spin_forever() -> None:
    while True:  # <stuck-loop>
        pass


def stuck() -> None:
    x = torch.ones(2)
    acc.wait_for_everyone()
    say("STUCK START " + json.dumps({"time": time.time()}))
    if RANK == 1:
        spin_forever()
    acc.gather(x)  # <stuck-gather>
    say("NO HANG DETECTED")


class Net(torch.nn.Module):
    """A linear layer that 'runs out of memory' on rank 1 when a batch is larger than LIMIT."""

    LIMIT = int(os.environ.get("OOM_LIMIT", "20"))

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if RANK == 1 and x.shape[0] > self.LIMIT:
            if SCENARIO == "oom_error":
                raise ValueError(f"a bug that is not out-of-memory, at batch {x.shape[0]}")
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated) at batch {x.shape[0]}")
        return self.lin(x)


def oom() -> None:
    start = 64
    halve_state = {"size": start}

    def halve() -> int:
        halve_state["size"] //= 2
        return halve_state["size"]

    g = torch.Generator().manual_seed(0)
    data_x, data_y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    tried: list[int] = []

    @find_executable_batch_size(starting_batch_size=start, reduce_batch_size_fn=halve)
    def train(batch_size: int) -> tuple[int, torch.Tensor]:
        tried.append(batch_size)
        acc.free_memory()
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ds = torch.utils.data.TensorDataset(data_x, data_y)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
        model, opt, loader = acc.prepare(model, opt, loader)
        for xb, yb in loader:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
        return batch_size, acc.unwrap_model(model).lin.weight.detach().clone()

    started = time.monotonic()
    try:
        size, weight = train()
    except (RuntimeError, ValueError) as err:
        if SCENARIO != "oom_error":
            raise
        say("OOM_ERROR " + json.dumps({"type": type(err).__name__, "message": str(err),
                                       "seconds": time.monotonic() - started}))
        return
    # Reference: the same global batches (each rank's `size` consecutive samples, in rank order) in one process.
    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    per_step = size * acc.num_processes
    for i in range(0, 64, per_step):
        loss = torch.nn.functional.mse_loss(ref(data_x[i : i + per_step]), data_y[i : i + per_step])
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
    assert torch.allclose(weight, ref.weight.detach(), atol=1e-6), (weight, ref.weight)
    bound = math.log2(start / size) + 1
    say("OOM RESULT " + json.dumps({"size": size, "tried": tried, "bound": bound}))
    # Afterwards every rank keeps training together at the agreed size.
    acc.wait_for_everyone()
    say("OOM OK")


if __name__ == "__main__":
    {"skip": mismatch_scenarios, "shape": mismatch_scenarios, "op": mismatch_scenarios, "clean": clean,
     "stuck": stuck, "oom": oom,
     "oom_error": oom}[SCENARIO]()
    del acc
    sys.stdout.flush()
