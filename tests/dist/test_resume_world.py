"""Save at world 2, resume at world 1 and 4 with the same global batch, in fresh processes.

The reference is a single-process PyTorch loop over the global batches the uninterrupted world-2 run drew: its
losses must match the world-2 run and every resumed run to 1e-5. After load, model and optimizer equal the state at
save time exactly; the resumed global batches are the uninterrupted run's, so each epoch covers every sample once.
New ranks (2 and 3 when resuming at 4) get RNG streams reseeded as documented in overdrive.checkpoint_state.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from launching import WORKERS, torchrun
from overdrive.checkpoint_state import _derived_rank_seed

WORKER = WORKERS / "resume_world.py"
SAMPLES, STEPS_PER_EPOCH = 64, 8


def reference_losses(steps: list[dict]) -> list[float]:
    """Pure PyTorch: the same init (seed 0), the same data, Adam over the given global batches."""
    torch.manual_seed(0)
    data = torch.randn(SAMPLES, 4, generator=torch.Generator().manual_seed(1))
    target = torch.sin(data).sum(1, keepdim=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in steps:
        ids = torch.tensor(step["ids"])
        loss = torch.nn.functional.mse_loss(model(data[ids]), target[ids])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[float]]:
    folder = tmp_path_factory.mktemp("world")
    torchrun(WORKER, "save", str(folder), nproc=2, timeout=120)
    steps = json.loads((folder / "save.json").read_text())["steps"]
    assert [s["step"] for s in steps] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for epoch in range(2):
        ids = [i for s in steps[epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH] for i in s["ids"]]
        assert sorted(ids) == list(range(SAMPLES)), f"uninterrupted run, epoch {epoch}: not every sample once"
    expected = reference_losses(steps)
    assert [s["loss"] for s in steps] == pytest.approx(expected, abs=1e-5), "world-2 run vs the PyTorch reference"
    return folder, steps, expected


@pytest.mark.parametrize("world, style, stop", [(1, "a", 5), (1, "b", 11), (4, "a", 11), (4, "b", 5)])
def test_resume_at_another_world_size(saved: tuple[Path, list[dict], list[float]], world: int, style: str,
                                      stop: int) -> None:
    folder, full, expected = saved
    torchrun(WORKER, "resume", style, str(folder), str(stop), nproc=world, timeout=150)
    report = json.loads((folder / f"resume-{style}-{world}-{stop}.json").read_text())
    assert report["model_equal"] and report["optimizer_equal"], "state after load differs from the state at save"
    resumed = report["steps"]
    assert [s["step"] for s in resumed] == list(range(stop + 1, 2 * STEPS_PER_EPOCH + 1))
    for mine, theirs in zip(resumed, full[stop:]):
        assert sorted(mine["ids"]) == sorted(theirs["ids"]), f"step {mine['step']}: another global batch"
    epoch = stop // STEPS_PER_EPOCH
    seen = [i for s in full[epoch * STEPS_PER_EPOCH:stop] for i in s["ids"]]
    seen += [i for s in resumed[: (epoch + 1) * STEPS_PER_EPOCH - stop] for i in s["ids"]]
    assert sorted(seen) == list(range(SAMPLES)), f"epoch {epoch} after resume: duplicates or missing samples"
    assert [s["loss"] for s in resumed] == pytest.approx(expected[stop:], abs=1e-5)
    digests = [(folder / f"rng-{style}-{world}-{stop}-rank{r}.txt").read_text() for r in range(world)]
    saved_states = [torch.load(folder / f"ckpt{stop}" / f"random_states_{r}.pkl", weights_only=False)
                    for r in range(2)]
    for rank, digest in enumerate(digests):
        if rank < 2:
            state = saved_states[rank]["torch_manual_seed"]  # a rank the saving run had: its own saved stream
        else:
            torch.manual_seed(_derived_rank_seed(saved_states[rank % 2], rank))  # documented derivation
            state = torch.get_rng_state()
        assert digest == hashlib.sha256(state.numpy().tobytes()).hexdigest(), f"rank {rank}: RNG state"
    # set_seed(0) gave ranks 0 and 1 one stream; every derived rank gets a stream of its own
    assert len(set(digests)) == len(set(digests[:2])) + max(0, world - 2), "a derived rank shares an RNG stream"
