"""Exact mid-epoch resume with use_stateful_dataloader=True, in a fresh process. Run under torchrun, twice:

    data_loader_resume.py save DIR    runs epochs 0-2 uninterrupted, saves each rank's state_dict() after batch K of
                                      epoch 1 to DIR, and writes what the uninterrupted run saw after it
    data_loader_resume.py resume DIR  rebuilds the same loaders (with a different global RNG), loads the states,
                                      and checks the rest of epoch 1 and all of epoch 2 equal the uninterrupted run
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from overdrive.data_loader import prepare_data_loader

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
SIZE, K = 29, 3
CONFIGS = [(kind, workers) for kind in ("seedable", "generator", "dispatch") for workers in (0, 2)]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"[rank {RANK}] {message}")


def build(kind: str, workers: int):
    loader = DataLoader(list(range(SIZE)), batch_size=2, shuffle=True, num_workers=workers)
    options = {"use_stateful_dataloader": True, "use_seedable_sampler": kind == "seedable"}
    if kind == "dispatch":
        options.update(put_on_device=True, device=torch.device("cpu"), dispatch_batches=True)
    return prepare_data_loader(loader, **options)


def ids(dl) -> list[list[int]]:
    return [batch.tolist() for batch in dl]


def save(folder: Path) -> None:
    torch.manual_seed(100 + RANK)  # ranks differ: the loaders must agree by themselves
    expected = {}
    for kind, workers in CONFIGS:
        name = f"{kind}-w{workers}"
        dl = build(kind, workers)
        ids(dl)  # epoch 0, so the interrupted pass is not the first one
        epoch1 = []
        for step, batch in enumerate(dl):
            epoch1.append(batch.tolist())
            if step == K - 1:
                torch.save(dl.state_dict(), folder / f"{name}-rank{RANK}.pt")
        check(len(epoch1) > K + 1, f"{name}: epoch too short to test a resume: {epoch1}")
        expected[name] = {"rest": epoch1[K:], "next_epoch": ids(dl)}
    (folder / f"expected-rank{RANK}.json").write_text(json.dumps(expected))


def resume(folder: Path) -> None:
    torch.manual_seed(500 + RANK)  # a different global RNG than the saving run: only the state may decide the order
    expected = json.loads((folder / f"expected-rank{RANK}.json").read_text())
    for kind, workers in CONFIGS:
        name = f"{kind}-w{workers}"
        dl = build(kind, workers)
        dl.load_state_dict(torch.load(folder / f"{name}-rank{RANK}.pt", weights_only=True))
        check(dl.iteration == 1, f"{name}: resumed at iteration {dl.iteration}, not 1")
        rest = []
        for batch in dl:
            rest.append(batch.tolist())
        check(rest == expected[name]["rest"], f"{name}: resumed {rest}, uninterrupted {expected[name]['rest']}")
        check(dl.end_of_dataloader and dl.iteration == 2, f"{name}: pass not completed after resume")
        next_epoch = ids(dl)
        check(next_epoch == expected[name]["next_epoch"], f"{name}: next epoch {next_epoch} differs")


def main() -> None:
    phase, folder = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    save(folder) if phase == "save" else resume(folder)
    print(f"[rank {RANK}] DATA_RESUME_{phase.upper()}_OK", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
