"""Trackers, progress bar and straggler report in a real multi-process run. Run under torchrun:

    tracking_progress.py DIR SLOW_RANK    log to jsonl + tensorboard in DIR; rank SLOW_RANK sleeps 30 ms in every
                                          step; rank 0 writes DIR/reports.json (the stats reports, every 5 steps)
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from overdrive import Accelerator, set_seed
from overdrive.progress import TrainingProgress

STEPS, BATCH = 20, 4


def main(folder: Path, slow_rank: int) -> None:
    acc = Accelerator(cpu=True, log_with=["jsonl", "tensorboard"], project_dir=str(folder))
    acc.init_trackers("run", config={"world": acc.num_processes, "batch": BATCH})
    set_seed(0)
    data = torch.randn(STEPS * BATCH * acc.num_processes, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, data.sum(1, keepdim=True)),
                                         batch_size=BATCH)
    model, optimizer, dl = acc.prepare(torch.nn.Linear(8, 1), torch.optim.SGD(torch.nn.Linear(8, 1).parameters(),
                                                                               lr=0.01), loader)
    optimizer = acc.prepare(torch.optim.SGD(model.parameters(), lr=0.01))
    reports = []
    with TrainingProgress(acc, total=len(dl), stats_every=5, log_to_trackers=True) as progress:
        for x, y in progress.wrap(dl):
            if acc.process_index == slow_rank:
                time.sleep(0.03)  # the straggler: slow outside backward, the others wait for it inside
            loss = torch.nn.functional.mse_loss(model(x), y)
            acc.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            report = progress.step(samples=len(x))
            acc.log({"loss": loss.item(), "rank": acc.process_index}, step=progress.steps)
            if report is not None:
                reports.append(report)
    if acc.is_main_process:
        (folder / "reports.json").write_text(json.dumps(reports))
    acc.end_training()
    del model, optimizer, dl, acc
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
