"""A rank killed with SIGKILL inside ``save_state`` never leaves a checkpoint that the next ``load_state`` loads.

Each case is two real torchrun launches at world 2 (worker: workers/ckpt_kill.py). The first trains, saves
checkpoint_0, checkpoint_1, ... with automatic naming (total_limit=3) and one rank kills its own process in the
middle of writing checkpoint_STEP; the launch must fail. The second, fresh launch calls ``load_state()`` and must
load, on every rank, exactly the newest checkpoint whose files were all committed, bit for bit what was recorded
before its save, and then save again:

- killed before the rename (no byte yet, half a file, or all of this rank's files written): checkpoint_STEP-1;
- killed after the rename, while the completion marker is being written: checkpoint_STEP (every file in it was
  complete before the rename; the documented rule loads such a markerless folder).

Step, victim rank and file index are drawn from a printed seed. bench/ckpt_kill_soak.py does many more kills.
"""

from __future__ import annotations

import random

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist

SEED = 20240611
# (point, victim ranks allowed): the marker is written by rank 0 only.
CASES = [("before-write", (0, 1)), ("mid-file", (0, 1)), ("marker", (0,))]


def draw(case: int, point: str, victims: tuple[int, ...]) -> tuple[int, int, int]:
    rng = random.Random(SEED * 100 + case)
    return rng.randint(1, 4), rng.choice(victims), rng.randrange(5)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] for c in CASES])
def test_sigkill_inside_save_state_never_loads_a_torn_checkpoint(tmp_path, case):
    point, victims = CASES[case]
    step, victim, index = draw(case, point, victims)
    print(f"seed={SEED} case={case}: kill rank {victim} at {point} (file #{index}) of checkpoint_{step}")
    project = tmp_path / "project"

    save = torchrun(WORKERS / "ckpt_kill.py", "save", str(project), str(step), point, str(victim), str(index),
                    nproc=2, timeout=90, check=False)
    out = save.stdout + save.stderr
    assert save.returncode != 0, f"the launch with a SIGKILLed rank must fail:\n{out}"
    assert f"[rank {victim}] CKPT_KILL_NOW" in out, f"the kill was not injected:\n{out}"
    assert "CKPT_KILL_NO_KILL" not in out, out
    for s in range(step):
        assert f"[rank 0] saved checkpoint_{s}" in out, out
    root = project / "checkpoints"
    committed = point == "marker"
    assert (root / f"checkpoint_{step}").is_dir() == committed, sorted(p.name for p in root.iterdir())
    if committed:
        assert not (root / f"checkpoint_{step}" / "overdrive_complete.json").exists()

    expect = step if committed else step - 1
    load = torchrun(WORKERS / "ckpt_kill.py", "load", str(project), str(expect), nproc=2, timeout=90)
    out = load.stdout + load.stderr
    for rank in range(2):
        assert f"[rank {rank}] CKPT_KILL_LOAD rank={rank} result=ok loaded={expect} expected={expect}" in out, out
        assert f"[rank {rank}] CKPT_KILL_RESAVE ok" in out, out
