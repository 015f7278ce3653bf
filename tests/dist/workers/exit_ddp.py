"""Worker: an Accelerate-style script that trains under DDP and simply ends, with the prepared model still global.

No explicit cleanup on purpose: overdrive's exit teardown alone must make the process exit 0 (the gloo exit
abort, FACTS.md). ``--starve`` pins the process to one core and puts every helper thread (the gloo workers) in
SCHED_IDLE, so that they only run when the main thread blocks; that makes the exit race near-certain without the
teardown. Prints ``EXIT_DDP_OK rank=R`` after training.
"""

from __future__ import annotations

import os
import sys
import threading

import torch

from overdrive import Accelerator


def _starve_helper_threads() -> None:
    core = {int(os.environ.get("LOCAL_RANK", "0")) % (os.cpu_count() or 1)}
    main = threading.get_native_id()
    os.sched_setaffinity(0, core)
    for tid in map(int, os.listdir("/proc/self/task")):
        if tid != main:
            os.sched_setaffinity(tid, core)
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


accelerator = Accelerator()  # forms the gloo group under torchrun and registers the exit teardown
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
model, optimizer = accelerator.prepare(net, torch.optim.SGD(net.parameters(), lr=0.05))
assert type(model).__name__ == "DistributedDataParallel", type(model)
if "--starve" in sys.argv:
    _starve_helper_threads()
generator = torch.Generator().manual_seed(1 + accelerator.process_index)
for _ in range(20):
    x = torch.randn(16, 32, generator=generator)
    loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
    optimizer.zero_grad()
    accelerator.backward(loss)
    optimizer.step()
print(f"EXIT_DDP_OK rank={accelerator.process_index} loss={loss.item():.4f}", flush=True)
# Last training statement: the final backward's all-reduce may still be being freed by a gloo thread right now.
loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
accelerator.backward(loss)
