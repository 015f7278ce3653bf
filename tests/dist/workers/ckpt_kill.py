"""A rank SIGKILLed in the middle of ``save_state`` must never leave a checkpoint that the next ``load_state`` loads.

Run under torchrun (world 1 or 2), with ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=3):

    ckpt_kill.py save PROJECT STEP POINT VICTIM [INDEX]
        trains and saves checkpoint_0, checkpoint_1, ... one per step; inside the save of checkpoint_STEP the rank
        VICTIM kills its own process with SIGKILL at POINT:
          before-write  at the INDEX-th file this rank writes into the hidden temporary folder, before any byte
          mid-file      the INDEX-th file is written, cut to half its size, then the kill
          after-files   right after this rank's last file is written (before the ranks agree and the rename)
          marker        (rank 0) after the rename, while the completion marker's temporary file is half written
          rotate        (rank 0) after the marker, while total_limit deletes an old checkpoint (half its files gone)
        Before each save_state every rank records a hash of the state it is about to save (PROJECT/saved/).
    ckpt_kill.py load PROJECT EXPECT
        a fresh launch: load_state() with automatic naming, then compares the loaded model/optimizer/scheduler/
        registered state with the recorded hashes: must equal checkpoint EXPECT's exactly; then saves once more.

Every rank prints ``CKPT_KILL_LOAD rank=R result=ok|torn|wrong|failed loaded=N expected=E``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
POINTS = ("before-write", "mid-file", "after-files", "marker", "rotate")


def say(text: str) -> None:
    print(f"[rank {RANK}] {text}", flush=True)


class Counter:
    """Registered for checkpointing: the step whose state a checkpoint holds."""

    def __init__(self) -> None:
        self.step = -1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def build(project: str) -> tuple[Any, ...]:
    import overdrive
    from overdrive.utils import InitProcessGroupKwargs, ProjectConfiguration

    torch.manual_seed(0)
    config = ProjectConfiguration(project_dir=project, automatic_checkpoint_naming=True, total_limit=3)
    # Short group timeout: the surviving rank must fail fast once its peer is killed.
    acc = overdrive.Accelerator(cpu=True, project_config=config,
                                kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=20))])
    assert acc.num_processes == WORLD, (acc.num_processes, WORLD)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
    model, opt, sched = acc.prepare(model, opt, sched)
    counter = Counter()
    acc.register_for_checkpointing(counter)
    return acc, model, opt, sched, counter


def digest(acc: Any, model: Any, opt: Any, sched: Any, counter: Counter) -> str:
    """sha256 of every tensor (dtype, shape, bytes) and every plain value of the state a checkpoint holds."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, dict):
            h.update(b"{")
            for key in sorted(obj, key=repr):
                feed(key)
                feed(obj[key])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for item in obj:
                feed(item)
            h.update(b"]")
        else:
            h.update(repr(obj).encode())

    feed(acc.unwrap_model(model).state_dict())
    feed(opt.state_dict())
    feed(sched.state_dict())
    feed(counter.state_dict())
    return h.hexdigest()


def record(project: Path, step: int, value: str) -> None:
    """Written atomically before save_state: what checkpoint_STEP must hold for this rank."""
    folder = project / "saved"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".step_{step}_rank{RANK}.json.tmp"
    tmp.write_text(json.dumps({"step": step, "rank": RANK, "hash": value}))
    os.replace(tmp, folder / f"step_{step}_rank{RANK}.json")


def recorded(project: Path, step: int) -> str | None:
    path = project / "saved" / f"step_{step}_rank{RANK}.json"
    return json.loads(path.read_text())["hash"] if path.is_file() else None


def train_step(model: Any, opt: Any, sched: Any, acc: Any, step: int) -> None:
    gen = torch.Generator().manual_seed(1000 * step + RANK)
    loss = model(torch.randn(6, 8, generator=gen)).pow(2).mean()
    acc.backward(loss)
    opt.step()
    sched.step()
    opt.zero_grad()


# -- fault injection --------------------------------------------------------------------------------------------------


def die(what: str) -> None:
    say(f"CKPT_KILL_NOW {what}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Injector:
    """Wraps the writers checkpoint_state uses; fires only on the victim rank, inside the save of checkpoint STEP."""

    def __init__(self, step: int, point: str, index: int, rank_files: int) -> None:
        self.step, self.point, self.armed = step, point, False
        self.index = index % rank_files  # the victim's INDEX-th file, among the ones this rank writes
        self.writes = 0
        self.rank_files = rank_files

    def in_target_tmp(self, path: Any) -> bool:
        return self.armed and Path(os.fspath(path)).parent.name.startswith(f".checkpoint_{self.step}.tmp-")

    def file_write(self, real: Any, obj: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.in_target_tmp(path):
            return real(obj, path, *args, **kwargs)
        n, self.writes = self.writes, self.writes + 1
        name = Path(os.fspath(path)).name
        if self.point == "before-write" and n == self.index:
            die(f"before writing {name}")
        out = real(obj, path, *args, **kwargs)
        if self.point == "mid-file" and n == self.index:
            size = os.path.getsize(path)
            os.truncate(path, size // 2)  # a partial file, as a crash inside the write leaves it
            die(f"mid-file {name} ({size // 2} of {size} bytes)")
        if self.point == "after-files" and n == self.rank_files - 1:
            die(f"after the last file {name}")
        return out

    def install(self) -> None:
        import safetensors.torch
        from overdrive import checkpoint_state, checkpointing

        real_save, real_st = torch.save, safetensors.torch.save_file
        torch.save = lambda obj, f, *a, **k: self.file_write(real_save, obj, f, *a, **k)
        safetensors.torch.save_file = lambda t, f, *a, **k: self.file_write(real_st, t, f, *a, **k)

        real_atomic = checkpointing._atomic_write

        def atomic_write(path: Path, write: Any) -> None:
            if self.armed and self.point == "marker" and path.name == checkpoint_state.COMPLETE_MARKER \
                    and path.parent.name == f"checkpoint_{self.step}":
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                write(str(tmp))
                os.truncate(tmp, os.path.getsize(tmp) // 2)
                die(f"while writing the marker of {path.parent.name} (renamed, no marker)")
            real_atomic(path, write)

        checkpointing._atomic_write = atomic_write

        real_rmtree = shutil.rmtree

        def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
            folder = Path(os.fspath(path))
            if self.armed and self.point == "rotate" and folder.name.startswith("checkpoint_"):
                files = sorted(p for p in folder.iterdir() if p.is_file())
                for p in files[: max(1, len(files) // 2)]:
                    p.unlink()
                die(f"while rotating out {folder.name} ({len(files) // 2 or 1} of {len(files)} files deleted)")
            real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree


# -- phases -----------------------------------------------------------------------------------------------------------


def phase_save(project: Path, step: int, point: str, victim: int, index: int) -> None:
    if point not in POINTS:
        raise SystemExit(f"POINT must be one of {POINTS}, got {point!r}")
    if point in ("marker", "rotate") and victim != 0:
        raise SystemExit(f"POINT {point!r} happens on rank 0 only (it writes the marker and rotates); got victim {victim}")
    if point == "rotate" and step < 3:
        raise SystemExit(f"POINT 'rotate' needs STEP >= 3 (total_limit=3 deletes the oldest from checkpoint_3), got {step}")
    acc, model, opt, sched, counter = build(str(project))
    injector = None
    if RANK == victim:
        # rank 0 writes model, optimizer, scheduler, custom object, its RNG file; the others their RNG file only
        injector = Injector(step, point, index, rank_files=5 if RANK == 0 else 1)
        injector.install()
    for s in range(step + 1):
        train_step(model, opt, sched, acc, s)
        counter.step = s
        record(project, s, digest(acc, model, opt, sched, counter))
        if injector is not None:
            injector.armed = s == step
        acc.save_state()
        say(f"saved checkpoint_{s}")
    say(f"CKPT_KILL_NO_KILL: the save of checkpoint_{step} finished on rank {RANK}")
    finish(acc, model)


def phase_load(project: Path, expect: int) -> None:
    acc, model, opt, sched, counter = build(str(project))
    try:
        acc.load_state()
    except Exception as err:
        say(f"CKPT_KILL_LOAD rank={RANK} result=failed loaded=none expected={expect} error={type(err).__name__}: {err}")
        finish(acc, model, code=1)
    loaded = counter.step
    value = digest(acc, model, opt, sched, counter)
    if value != recorded(project, loaded):
        result = "torn"  # the state differs from what was recorded for the step it claims to be
    elif loaded != expect:
        result = "wrong"
    else:
        result = "ok"
    say(f"CKPT_KILL_LOAD rank={RANK} result={result} loaded={loaded} expected={expect}")
    if result == "ok":
        # Training goes on: the next save after the crash works (numbering past every existing folder).
        root = project / "checkpoints"
        numbers = [int(p.name.split("_")[1]) for p in root.iterdir() if p.name.startswith("checkpoint_")]
        acc.project_configuration.iteration = max(numbers) + 1
        train_step(model, opt, sched, acc, loaded + 1)
        counter.step = loaded + 1
        folder = acc.save_state()
        from overdrive.checkpoint_state import COMPLETE_MARKER

        ok = (folder / COMPLETE_MARKER).is_file()
        say(f"CKPT_KILL_RESAVE {'ok' if ok else 'failed'} {folder.name}")
        finish(acc, model, code=0 if ok else 1)
    finish(acc, model, code=1)


def finish(acc: Any, model: Any, code: int = 0) -> None:
    del model
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no gloo teardown at interpreter exit (FACTS.md: exit abort)


def main() -> None:
    phase, project = sys.argv[1], Path(sys.argv[2])
    if phase == "save":
        step, point, victim = int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        index = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        phase_save(project, step, point, victim, index)
    elif phase == "load":
        phase_load(project, int(sys.argv[3]))
    else:
        raise SystemExit(f"phase must be 'save' or 'load', got {phase!r}")


if __name__ == "__main__":
    main()
