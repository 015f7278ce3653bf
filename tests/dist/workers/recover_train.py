"""Training that survives a killed rank: ``overdrive launch --max_restarts 1`` restarts the group and one line,
``accelerator.maybe_resume()``, continues from the newest complete checkpoint. Run under overdrive launch:

    recover_train.py PROJECT_DIR OUT KILL_STEP WHERE

2 epochs (64 samples, batch 4 per rank, seedable shuffle, dropout + Adam), ``save_state`` after every optimizer
step (automatic naming, total_limit=2). On the first attempt only (TORCHELASTIC_RESTART_COUNT == 0) rank 1 SIGKILLs
itself after optimizer step KILL_STEP: WHERE=before-save before that step's save_state, WHERE=in-save from inside it
(a save pre-hook, while rank 0 writes). KILL_STEP=-1: no kill (the uninterrupted reference). Rank 0 writes the final
weights to OUT (torch.save) and OUT.json (attempt, resumed-from checkpoint, steps).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from overdrive import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration, set_seed

RANK = int(os.environ["RANK"])
ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
SAMPLES, BATCH, EPOCHS = 64, 4, 2


def die() -> None:
    print(f"rank {RANK}: SIGKILL now (attempt {ATTEMPT})", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def main(project: Path, out: Path, kill_step: int, where: str) -> None:
    acc = Accelerator(
        cpu=True,
        project_config=ProjectConfiguration(project_dir=str(project), automatic_checkpoint_naming=True, total_limit=2),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=20))],
    )
    set_seed(0)
    data = torch.randn(SAMPLES, 4, generator=torch.Generator().manual_seed(1))
    dataset = torch.utils.data.TensorDataset(data, data.sum(1, keepdim=True))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer, dl = acc.prepare(model, optimizer, loader)
    step = [0]

    def kill_in_save(models: Any, weights: Any, folder: str) -> None:
        if where == "in-save" and ATTEMPT == 0 and RANK == 1 and step[0] == kill_step:
            die()

    acc.register_save_state_pre_hook(kill_in_save)

    start = acc.maybe_resume()  # the opt-in: no checkpoint -> fresh start
    print(f"rank {RANK} attempt {ATTEMPT}: {start}", flush=True)
    step[0] = start.epoch * len(dl) + start.batches
    for epoch in range(start.epoch, EPOCHS):
        active = acc.skip_first_batches(dl, start.batches) if epoch == start.epoch and start.batches else dl
        for x, y in active:
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            acc.backward(loss)
            optimizer.step()
            step[0] += 1
            if where == "before-save" and ATTEMPT == 0 and RANK == 1 and step[0] == kill_step:
                die()
            acc.save_state()
    if RANK == 0:
        state = {k: v.detach().clone() for k, v in acc.unwrap_model(model).state_dict().items()}
        torch.save(state, out)
        resumed = None if start.checkpoint is None else start.checkpoint.name
        out.with_suffix(".json").write_text(json.dumps({"attempt": ATTEMPT, "resumed": resumed, "steps": step[0]}))
    del model, optimizer, dl, acc
    gc.collect()  # drop DDP before the process group goes (FACTS.md: gloo exit abort)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "before-save")
