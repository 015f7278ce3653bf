"""Exact mid-epoch resume through save_state / load_state, the way training scripts do it. Run under torchrun:

    resume_train.py full STYLE DIR           2 epochs uninterrupted (64 samples, batch 4, shuffled, dropout + Adam);
                                             saves DIR/ckpt{S} after global steps S in STOPS; writes each rank's
                                             sample-id stream, the stream length at each save, and the final weights
    resume_train.py resume STYLE DIR S       fresh processes: build everything, load DIR/ckpt{S}, finish the 2 epochs
                                             and write the stream after the save and the final weights

STYLE a: plain loaders; the script skips the batches it already did (accelerator.skip_first_batches(dl, n), n from
its own step counter, saved with register_for_checkpointing). STYLE b: use_stateful_dataloader=True; load_state
restores the position and the script iterates the same loader. STYLE b-skip: like b, but the script also calls
skip_first_batches(dl, n) as an Accelerate script would; it must not skip twice.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from overdrive import Accelerator, DataLoaderConfiguration, set_seed

RANK = int(os.environ["RANK"])
SAMPLES, BATCH, EPOCHS = 64, 4, 2
STOPS = (5, 11)  # 5 of 8 steps into epoch 0, and 3 of 8 into epoch 1


class Steps:
    """The script's own step counter, saved with register_for_checkpointing."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def main(mode: str, style: str, folder: Path, stop: int | None) -> None:
    config = DataLoaderConfiguration(use_stateful_dataloader=style != "a")
    acc = Accelerator(cpu=True, dataloader_config=config)
    set_seed(0)
    data = torch.randn(SAMPLES, 4, generator=torch.Generator().manual_seed(1))
    dataset = torch.utils.data.TensorDataset(data, data.sum(1, keepdim=True), torch.arange(SAMPLES))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer, dl = acc.prepare(model, optimizer, loader)
    steps = Steps()
    acc.register_for_checkpointing(steps)
    if mode == "resume":
        acc.load_state(str(folder / f"ckpt{stop}"))
        assert steps.step == stop, (steps.step, stop)
    start_epoch, done = divmod(steps.step, len(dl))
    stream: list[int] = []
    saved_at: dict[int, int] = {}
    for epoch in range(start_epoch, EPOCHS):
        active = dl
        if epoch == start_epoch and done and style in ("a", "b-skip"):
            active = acc.skip_first_batches(dl, done)
            if style == "b-skip":
                assert active is dl, "a loader restored by load_state must not be skipped again"
        for x, y, ids in active:
            stream += ids.tolist()
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            acc.backward(loss)
            optimizer.step()
            steps.step += 1
            if mode == "full" and steps.step in STOPS:
                acc.save_state(str(folder / f"ckpt{steps.step}"))
                saved_at[steps.step] = len(stream)
    weights = {k: v.tolist() for k, v in acc.unwrap_model(model).state_dict().items()}
    name = f"{mode}-{style}" + ("" if stop is None else f"-{stop}")
    (folder / f"{name}-rank{RANK}.json").write_text(
        json.dumps({"stream": stream, "saved_at": saved_at, "weights": weights, "steps": steps.step})
    )
    del model, optimizer, dl, active, acc
    gc.collect()  # drop DDP before the process group goes (FACTS.md: gloo exit abort)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
