"""overdrive.data_loader across real processes (torchrun, gloo): ranks agree on the shuffle order, every way of
sharding sees each sample once per epoch, and stateful loaders resume exactly in a fresh process."""

from __future__ import annotations

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist


def test_two_ranks_partition_every_shuffled_epoch():
    proc = torchrun(WORKERS / "data_loader_shuffle.py", nproc=2, timeout=120)
    out = proc.stdout + proc.stderr
    for rank in range(2):
        assert f"[rank {rank}] DATA_LOADER_OK" in out, out


def test_map_iterable_and_dispatched_loaders_see_each_sample_once_with_and_without_workers():
    proc = torchrun(WORKERS / "data_loader_modes.py", nproc=2, timeout=180)
    out = proc.stdout + proc.stderr
    for rank in range(2):
        assert f"[rank {rank}] DATA_MODES_OK" in out, out


@pytest.mark.parametrize("world", [1, 2])
def test_stateful_loader_resumes_mid_epoch_in_a_fresh_process(world, tmp_path):
    """Save after K batches of epoch 1 in one launch; a second launch loads the state and must see exactly the rest
    (and then the same next epoch) that the first launch saw uninterrupted. Map-style shuffled (seedable sampler,
    plain generator) and dispatched loaders, num_workers 0 and 2."""
    for phase in ("save", "resume"):
        proc = torchrun(WORKERS / "data_loader_resume.py", phase, str(tmp_path), nproc=world, timeout=180)
        out = proc.stdout + proc.stderr
        for rank in range(world):
            assert f"[rank {rank}] DATA_RESUME_{phase.upper()}_OK" in out, out
    written = sorted(p.name for p in tmp_path.glob("expected-rank*.json"))
    assert written == [f"expected-rank{r}.json" for r in range(world)]
