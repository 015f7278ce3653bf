"""Save at one world size, resume at another. Run under torchrun:

    resume_world.py save DIR          world 2, 4 samples per rank (global batch 8), 64 samples, 2 epochs, Adam, a
                                      stateful loader; saves DIR/ckpt{S} after global steps S in STOPS and the
                                      model/optimizer state at that moment in DIR/snap{S}.pt; rank 0 writes
                                      DIR/save.json: per global step, the sample ids of the global batch and the loss
    resume_world.py resume STYLE DIR S  any world size N with 8 // N samples per rank (the same global batch): load
                                      DIR/ckpt{S}, check model/optimizer equal DIR/snap{S}.pt, finish the 2 epochs;
                                      rank 0 writes DIR/resume-{STYLE}-{N}-{S}.json, every rank its RNG digest

STYLE a: plain loader and the script's own skip_first_batches(dl, n) with n from its saved step counter. STYLE b:
use_stateful_dataloader=True and no skip: load_state positions the loader.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from overdrive import Accelerator, DataLoaderConfiguration, set_seed

RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
SAMPLES, GLOBAL_BATCH, EPOCHS = 64, 8, 2
STOPS = (5, 11)


class Steps:
    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def same(a: Any, b: Any) -> bool:
    """Exact equality of nested state dicts (tensors bitwise)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main(mode: str, style: str, folder: Path, stop: int | None) -> None:
    acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=style != "a"))
    set_seed(0)
    data = torch.randn(SAMPLES, 4, generator=torch.Generator().manual_seed(1))
    dataset = torch.utils.data.TensorDataset(data, torch.sin(data).sum(1, keepdim=True), torch.arange(SAMPLES))
    loader = torch.utils.data.DataLoader(dataset, batch_size=GLOBAL_BATCH // WORLD, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer, dl = acc.prepare(model, optimizer, loader)
    steps = Steps()
    acc.register_for_checkpointing(steps)
    report: dict[str, Any] = {"steps": []}
    if mode == "resume":
        acc.load_state(str(folder / f"ckpt{stop}"))
        snap = torch.load(folder / f"snap{stop}.pt", weights_only=True)
        report["model_equal"] = same(acc.unwrap_model(model).state_dict(), snap["model"])
        report["optimizer_equal"] = same(optimizer.state_dict(), snap["optimizer"])
        digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
        (folder / f"rng-{style}-{WORLD}-{stop}-rank{RANK}.txt").write_text(digest)
    start_epoch, done = divmod(steps.step, len(dl))
    for epoch in range(start_epoch, EPOCHS):
        active = dl
        if epoch == start_epoch and done and style == "a":
            active = acc.skip_first_batches(dl, done)
        for x, y, ids in active:
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            acc.backward(loss)
            optimizer.step()
            steps.step += 1
            report["steps"].append({"step": steps.step, "ids": acc.gather(ids).tolist(),
                                    "loss": acc.reduce(loss.detach(), "mean").item()})
            if mode == "save" and steps.step in STOPS:
                acc.save_state(str(folder / f"ckpt{steps.step}"))
                if RANK == 0:
                    torch.save({"model": acc.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict()},
                               folder / f"snap{steps.step}.pt")
    if RANK == 0:
        name = "save.json" if mode == "save" else f"resume-{style}-{WORLD}-{stop}.json"
        (folder / name).write_text(json.dumps(report))
    del model, optimizer, dl, active, acc
    gc.collect()  # drop DDP before the process group goes (FACTS.md: gloo exit abort)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "save":
        main("save", "b", Path(sys.argv[2]), None)
    else:
        main("resume", sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
