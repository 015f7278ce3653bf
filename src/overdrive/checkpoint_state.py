"""``save_state`` / ``load_state``: Accelerate's checkpoint folder, written atomically and read without running pickles.

Layout (the same file names as Accelerate 1.x, so either library reads the other's folders)::

    model.safetensors | pytorch_model.bin      model 0 (``model_1.safetensors``... for the others)
    optimizer.bin, optimizer_1.bin, ...        optimizer state dicts
    scheduler.bin, scheduler_1.bin, ...        LR scheduler state dicts
    sampler.bin, sampler_1.bin, ...            seedable sampler state {"initial_seed", "epoch"} (loaders that have one)
    dl_state_dict.bin, dl_state_dict_1.bin...  position of loaders built with use_stateful_dataloader=True
    scaler.pt                                  fp16 GradScaler state
    random_states_{rank}.pkl                   step, python/numpy/torch (and CUDA) RNG states of each rank
    overdrive_loaders_{rank}.json              overdrive only: each prepared loader's position on that rank,
                                               [{"iteration", "batches_done", "seed", "global_batch",
                                               "world_size"}, ...] (see below)
    custom_checkpoint_{i}.pkl                  objects given to register_for_checkpointing
    overdrive_complete.json                    written last: every file of the checkpoint with its size

Crash safety: every rank writes into a hidden sibling ``.{name}.tmp-{token}``; once all ranks succeeded the main
process flushes every file to disk (``fsync``), renames the folder to ``{name}`` and then writes the marker (flushed
too), so the marker never vouches for data a power loss or node crash could still lose. A folder without the marker is either Accelerate's
(which writes none) or one caught between the rename and the marker. Markerless folders load when named
explicitly; with automatic naming they count as complete when ``random_states_0.pkl`` and the optimizer, scheduler
and custom-object files this Accelerator needs are all present and non-empty (Accelerate writes those last).

Asynchronous saves (``save_state(async_save=True)``, overdrive only): the calling thread runs the pre-hooks and copies
the state into CPU memory (storage by storage, so views and tied weights stay shared and the files are byte for
byte a synchronous save's, except that CUDA tensors are recorded as CPU ones); a background thread writes the
same files into the temporary folder with the same writer; :func:`wait_for_checkpoint` (or the next save/load,
``end_training``, interpreter exit) commits it as above.
At exit no collective is used: each rank drops a done-file in the temporary folder and the main process commits once
all are there, or leaves the folder uncommitted after ``_EXIT_WAIT_S``. ``torch.distributed.checkpoint.async_save``
is not used because it writes its own format, not these files; FSDP's sharded checkpoints are where it fits.

Resuming mid-epoch: ``load_state`` puts every prepared loader back at the start of the saved epoch (``iteration``,
and the seedable sampler's seed and epoch), so the shuffled order is the uninterrupted run's. The batch position
is restored in Accelerate's two ways: with ``use_stateful_dataloader=True`` from ``dl_state_dict.bin`` (just keep
iterating the loader), otherwise by the script's own ``skip_first_batches(dl, n)``. ``batches_done`` records ``n``
for scripts that want it; a loader already restored from ``dl_state_dict.bin`` takes ``skip_first_batches(dl, n)``
only with ``n == batches_done`` (it is not skipped twice). Checkpoints without the JSON file (Accelerate's) take the
epoch from ``sampler.bin``.

Another world size or global batch: positions are converted through samples (``batches_done`` x the saved
``global_batch``, divided by this run's), stateful loaders skip the converted batches themselves and plain loaders
accept only that count in ``skip_first_batches``; a position no whole number of steps reaches is a
:class:`CheckpointError`. Ranks the saving run lacked restore rank ``r mod saved_world``'s RNG states reseeded by
``_derived_rank_seed`` (documented in docs/data-loading.md).

Safety: every pickle-based file is read with ``torch.load(weights_only=True)``; only numpy's RNG state types are
allowed in addition, and only for ``random_states_*.pkl``. A file that needs anything else is refused, not run.

Example:
    >>> import tempfile, torch
    >>> from overdrive import Accelerator
    >>> acc = Accelerator()
    >>> model = acc.prepare(torch.nn.Linear(2, 2))
    >>> folder = acc.save_state(tempfile.mkdtemp() + "/ckpt")
    >>> sorted(p.name for p in folder.iterdir())
    ['model.safetensors', 'overdrive_complete.json', 'random_states_0.pkl']
    >>> acc.load_state(str(folder))
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from . import checkpointing
from .logging import get_logger
from .utils import operations as ops

if TYPE_CHECKING:
    from .accelerator import Accelerator
    from .utils.dataclasses import ProjectConfiguration

__all__ = [
    "COMPLETE_MARKER",
    "CheckpointError",
    "ResumePoint",
    "check_checkpointable",
    "is_complete_checkpoint",
    "load_state",
    "maybe_resume",
    "register_hook",
    "save_state",
    "validate_project_configuration",
    "wait_for_checkpoint",
]

logger = get_logger(__name__)

COMPLETE_MARKER = "overdrive_complete.json"
SCALER_NAME = "scaler.pt"
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")
# Files this module writes; on a save into an existing folder every other entry is carried over unchanged.
_STATE_FILE = re.compile(
    r"(model|pytorch_model)(_\d+)?\.(safetensors|bin)|(optimizer|scheduler|sampler|dl_state_dict)(_\d+)?\.bin"
    r"|scaler\.pt|random_states_\d+\.pkl|custom_checkpoint_\d+\.pkl|overdrive_loaders_\d+\.json|"
    + re.escape(COMPLETE_MARKER)
)


class CheckpointError(RuntimeError):
    """A checkpoint folder or file that cannot be used: missing, truncated, unsafe, or from another model.

    Example:
        >>> raise CheckpointError("ckpt/optimizer.bin is truncated")
        Traceback (most recent call last):
        ...
        overdrive.checkpoint_state.CheckpointError: ckpt/optimizer.bin is truncated
    """


def _indexed(stem: str, ext: str, index: int) -> str:
    """Accelerate's naming: the first object gets ``stem.ext``, the i-th ``stem_i.ext``."""
    return f"{stem}.{ext}" if index == 0 else f"{stem}_{index}.{ext}"


def _model_file(index: int, safe: bool) -> str:
    return _indexed("model", "safetensors", index) if safe else _indexed("pytorch_model", "bin", index)


def validate_project_configuration(config: ProjectConfiguration) -> None:
    """Raise ``ValueError`` for settings ``save_state`` cannot honour (``total_limit`` < 1, naming without a folder).

    Example:
        >>> from overdrive.utils import ProjectConfiguration
        >>> validate_project_configuration(ProjectConfiguration(project_dir="runs", total_limit=2))
        >>> validate_project_configuration(ProjectConfiguration(total_limit=0))
        Traceback (most recent call last):
        ...
        ValueError: ProjectConfiguration(total_limit=0): total_limit must be None (keep every checkpoint) or an int >= 1 (how many checkpoints to keep)
    """
    limit = config.total_limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(
            f"ProjectConfiguration(total_limit={limit!r}): total_limit must be None (keep every checkpoint) "
            "or an int >= 1 (how many checkpoints to keep)"
        )
    iteration = config.iteration
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f"ProjectConfiguration(iteration={iteration!r}): iteration must be an int >= 0")
    if config.automatic_checkpoint_naming and not config.project_dir:
        raise ValueError(
            "ProjectConfiguration(automatic_checkpoint_naming=True) needs a project_dir: checkpoints go to "
            "{project_dir}/checkpoints/checkpoint_{iteration}; pass project_dir=... to it or to Accelerator"
        )


def register_hook(hooks: dict[int, Callable[..., None]], hook: Callable[..., None]) -> Any:
    """Add ``hook`` to an ordered hook table; the returned handle's ``remove()`` takes it out again.

    Example:
        >>> from collections import OrderedDict
        >>> table = OrderedDict(); handle = register_hook(table, print); handle.remove(); len(table)
        0
    """
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {type(hook).__name__}")
    from torch.utils.hooks import RemovableHandle

    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    return handle


def check_checkpointable(objects: Sequence[Any]) -> list[Any]:
    """Return ``objects`` as a list if each has ``state_dict`` and ``load_state_dict``; else a ``ValueError``.

    Example:
        >>> import torch
        >>> len(check_checkpointable([torch.nn.Linear(1, 1)]))
        1
    """
    bad = [f"#{i} {type(o).__name__} ({o!r:.60})" for i, o in enumerate(objects)
           if not callable(getattr(o, "state_dict", None)) or not callable(getattr(o, "load_state_dict", None))]
    if bad:
        raise ValueError(
            f"register_for_checkpointing: {', '.join(bad)} lack state_dict() and/or load_state_dict(); "
            "only objects with both methods can be saved and restored (wrap the value in a small class with them)"
        )
    return list(objects)


# -- agreement across ranks: a failure on one rank becomes an error on every rank, never a hang ---------------------


def _agree(acc: Accelerator, error: BaseException | None, what: str) -> None:
    """Raise on every rank if ``what`` failed on any rank (one collective per call, on every rank)."""
    if acc.num_processes == 1:
        if error is not None:
            raise error
        return
    messages = ops.gather_object([None if error is None else f"{type(error).__name__}: {error}"])
    if error is not None:
        raise error
    for rank, message in enumerate(messages):
        if message is not None:
            raise CheckpointError(f"{what} failed on rank {rank}: {message}")


# -- reading files safely ---------------------------------------------------------------------------------------------


def _rng_safe_globals() -> list[Any]:
    """Exactly the numpy types a pickled ``np.random.get_state()`` needs (python's state is plain tuples)."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved ``core`` to ``_core``
    allowed: list[Any] = [np.ndarray, np.dtype, core.multiarray._reconstruct]
    uint32 = getattr(getattr(np, "dtypes", None), "UInt32DType", None)  # numpy >= 1.25 pickles the dtype class
    if uint32 is not None:
        allowed.append(uint32)
    return allowed


def _torch_load(path: Path, map_location: Any = None, safe_globals: Sequence[Any] = (), **kwargs: Any) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and say what to do."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing; was the folder written by save_state?")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((line for line in first if "WeightsUnpickler" in line or "Unsupported" in line), first[-1])
        raise CheckpointError(
            f"refused to load {str(path)!r}: it needs Python objects that are not allowed with weights_only=True "
            f"({detail.strip()}); nothing in it was executed. If you trust the file, allowlist its types with "
            "torch.serialization.add_safe_globals([...]) and load again"
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"could not read {str(path)!r} ({type(err).__name__}: {err}); the file is truncated or corrupt"
        ) from err


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise CheckpointError(
                f"could not read {str(path)!r} ({type(err).__name__}: {err}); the file is truncated or corrupt"
            ) from err
    state = _torch_load(path, map_location="cpu")
    if not isinstance(state, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict of tensors")
    return state


# -- folder discovery and completeness --------------------------------------------------------------------------------


def _read_marker(folder: Path) -> dict[str, Any] | None:
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
        return data
    except Exception as err:
        raise CheckpointError(f"completion marker {str(marker)!r} is corrupt ({err}); the save did not finish") from err


def _check_marker(folder: Path, marker: dict[str, Any]) -> None:
    """Every file the marker lists exists with the size it had when the save finished."""
    for name, size in marker["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {str(path)!r} is missing (listed in {COMPLETE_MARKER})")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(
                f"checkpoint file {str(path)!r} has {actual} bytes but was saved with {size}; it is truncated or "
                "was changed after the save"
            )


def _engine_files(acc: Accelerator) -> bool:
    """Whether the strategy (FSDP2, DeepSpeed) writes and reads the model and optimizer files itself."""
    return bool(getattr(acc.strategy, "owns_checkpoint_files", False))


def _torch_optimizers(acc: Accelerator) -> list[torch.optim.Optimizer]:
    return [getattr(opt, "optimizer", opt) for opt in acc._optimizers]


def _markerless_required(acc: Accelerator) -> list[str]:
    names = [] if _engine_files(acc) else [_indexed("optimizer", "bin", i) for i in range(len(acc._optimizers))]
    names += [_indexed("scheduler", "bin", i) for i in range(len(acc._schedulers))]
    names += [f"custom_checkpoint_{i}.pkl" for i in range(len(acc._custom_objects))]
    return names + ["random_states_0.pkl"]


def is_complete_checkpoint(folder: str | os.PathLike[str], required: Sequence[str] = ("random_states_0.pkl",)) -> bool:
    """True when ``folder`` holds a finished checkpoint: its marker checks out, or (no marker, e.g. written by
    Accelerate) every name in ``required`` is a non-empty file.

    Example:
        >>> import tempfile
        >>> is_complete_checkpoint(tempfile.mkdtemp())
        False
    """
    path = Path(folder)
    if not path.is_dir():
        return False
    try:
        marker = _read_marker(path)
        if marker is not None:
            _check_marker(path, marker)
            return True
    except CheckpointError:
        return False
    return all((path / n).is_file() and (path / n).stat().st_size > 0 for n in required)


def _numbered_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``checkpoint_N`` folders under ``root``, oldest first."""
    found = []
    for entry in root.iterdir() if root.is_dir() else ():
        match = _CHECKPOINT_DIR.fullmatch(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _checkpoints_root(acc: Accelerator) -> Path:
    return Path(os.path.expanduser(str(acc.project_configuration.project_dir))) / "checkpoints"


def _resolve_load_dir(acc: Accelerator, input_dir: str | os.PathLike[str] | None) -> Path:
    if input_dir is not None:
        folder = Path(os.path.expanduser(os.fspath(input_dir)))
        if not folder.is_dir():
            what = "is a file, not a checkpoint folder" if folder.exists() else "does not exist"
            raise ValueError(f"load_state(input_dir={str(folder)!r}): the folder {what}; pass a save_state folder")
        return folder
    config = acc.project_configuration
    if not config.automatic_checkpoint_naming:
        raise ValueError(
            "load_state() needs input_dir unless ProjectConfiguration(automatic_checkpoint_naming=True) is set"
        )
    validate_project_configuration(config)
    root = _checkpoints_root(acc)
    choice: list[Any] = [None]
    if acc.is_main_process:  # one rank decides, so that every rank loads the same folder
        required = _markerless_required(acc)
        candidates = _numbered_checkpoints(root)
        complete = [p for _, p in candidates if is_complete_checkpoint(p, required)]
        choice[0] = str(complete[-1]) if complete else None
        if complete and complete[-1] != candidates[-1][1]:
            logger.warning(f"load_state: skipping incomplete checkpoints newer than {complete[-1]}")
        if choice[0] is None:
            choice[0] = ("error", f"no complete checkpoint_N folder under {str(root)!r} "
                                  f"(found {[p.name for _, p in candidates]}); save one with save_state() first")
    ops.broadcast_object_list(choice)
    if isinstance(choice[0], tuple):
        raise ValueError(f"load_state(): {choice[0][1]}")
    return Path(choice[0])


# -- saving -----------------------------------------------------------------------------------------------------------


def _rng_state(step: int) -> dict[str, Any]:
    """Accelerate's keys: ``step``, ``random_state``, ``numpy_random_seed``, ``torch_manual_seed`` (+ CUDA)."""
    state: dict[str, Any] = {"step": step, "random_state": random.getstate()}
    try:
        import numpy as np

        state["numpy_random_seed"] = np.random.get_state()
    except ImportError:
        pass
    state["torch_manual_seed"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["torch_cuda_manual_seed"] = torch.cuda.get_rng_state_all()
    return state


def _seedable_sampler(loader: Any) -> Any:
    sampler = loader.get_sampler() if hasattr(loader, "get_sampler") else None
    return sampler if sampler is not None and hasattr(sampler, "initial_seed") and hasattr(sampler, "epoch") else None


def _global_batch(loader: Any) -> int | None:
    """Samples one step of ``loader`` takes over all ranks (``None`` if unknown)."""
    try:
        size = getattr(loader, "total_batch_size", None)
    except (NotImplementedError, TypeError, AttributeError):
        return None
    return int(size) if isinstance(size, int) and not isinstance(size, bool) else None


def _loader_positions(acc: Accelerator) -> list[dict[str, Any]]:
    """This rank's ``{"iteration", "batches_done", "seed", "global_batch", "world_size"}`` of every prepared loader
    (``None`` values if unknown). ``global_batch`` and ``world_size`` let a resume at another world size convert
    ``batches_done`` into samples."""
    positions = []
    for loader in acc._dataloaders:
        where = loader._resume_position() if hasattr(loader, "_resume_position") else None
        sampler = _seedable_sampler(loader)
        positions.append({
            "iteration": None if where is None else where[0],
            "batches_done": None if where is None else where[1],
            "seed": None if sampler is None else int(sampler.initial_seed),
            "global_batch": _global_batch(loader),
            "world_size": acc.num_processes,
        })
    return positions


@dataclasses.dataclass
class _Snapshot:
    """What one rank writes into a checkpoint, as it stood at one point of the training loop.

    The writer rank (the main process; each node's with ``save_on_each_node``) holds the shared state; every rank
    holds its own RNG states and loader positions.
    """

    rank: int
    writer: bool
    safe: bool
    weights: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    optimizers: list[Any] = dataclasses.field(default_factory=list)
    schedulers: list[Any] = dataclasses.field(default_factory=list)
    samplers: list[dict[str, int] | None] = dataclasses.field(default_factory=list)
    stateful: list[bool] = dataclasses.field(default_factory=list)  # per loader: whether it has a dl_state_dict
    loaders: list[Any] = dataclasses.field(default_factory=list)
    scaler: Any = None
    custom: list[Any] = dataclasses.field(default_factory=list)
    rng: dict[str, Any] = dataclasses.field(default_factory=dict)
    positions: list[dict[str, Any]] | None = None  # None: no prepared loaders, so no overdrive_loaders_{rank}.json
    staged: list[torch.UntypedStorage] = dataclasses.field(default_factory=list)  # CPU buffers of the copy


# CPU buffers of the last background save, by size, for the next one to copy into. Copying into memory that is
# already mapped is ~4x faster than into fresh memory (page faults dominate), and the state has the same storages
# from one save to the next. Holds at most one state's worth; wait_for_checkpoint(release_buffers=True) frees it.
_STAGING: dict[int, list[torch.UntypedStorage]] = {}


def _stage(storage: torch.UntypedStorage, staged: list[torch.UntypedStorage]) -> torch.UntypedStorage:
    """A CPU copy of ``storage``, in a reused buffer of the same size when there is one."""
    free = _STAGING.get(storage.nbytes())
    buffer = free.pop() if free else torch.UntypedStorage(storage.nbytes(), device="cpu")
    buffer.copy_(storage)  # from any device
    staged.append(buffer)
    return buffer


def _clone_tensor(tensor: torch.Tensor, storages: dict[int, torch.UntypedStorage],
                  staged: list[torch.UntypedStorage]) -> torch.Tensor:
    """A CPU copy of ``tensor`` with the same storage offset, size and stride over a copy of its whole storage.

    Copying storages (once each) rather than tensors keeps views and tied weights sharing, so ``torch.save``
    writes the same bytes as for the live tensors and safetensors still sees tied weights as one.
    """
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.layout != torch.strided \
            or tensor.is_quantized or tensor.device.type == "meta" or tensor.is_conj() or tensor.is_neg():
        return tensor.detach().clone()  # exotic tensors: a plain copy is still a consistent snapshot
    storage = tensor.untyped_storage()
    key = storage._cdata  # one id per storage; the originals stay alive in the object being copied
    copied = storages.get(key)
    if copied is None:
        copied = storages[key] = _stage(storage, staged)
    out = torch.empty(0, dtype=tensor.dtype, device="cpu")  # explicit: a default device may be set
    out.set_(copied, tensor.storage_offset(), tensor.size(), tensor.stride())
    if type(tensor) is torch.nn.Parameter:
        return torch.nn.Parameter(out, requires_grad=tensor.requires_grad)
    return out.requires_grad_(tensor.requires_grad) if tensor.requires_grad and tensor.is_leaf else out


def _copy_for_background(obj: Any, staged: list[torch.UntypedStorage]) -> Any:
    """A deep copy of ``obj`` whose tensors are CPU clones (see :func:`_clone_tensor`), safe from later training.

    Tensors reachable through dicts, lists, tuples and sets are cloned here; ``copy.deepcopy`` copies the rest (its
    memo hands it the clones), so objects of any type inside a state dict are snapshotted too. The CPU buffers
    the clones live in are appended to ``staged``.
    """
    storages: dict[int, torch.UntypedStorage] = {}
    memo: dict[int, Any] = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if id(item) not in memo:
                memo[id(item)] = _clone_tensor(item, storages, staged)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return copy.deepcopy(obj, memo)


def _take_snapshot(acc: Accelerator, weights: list[dict[str, Any]], writer: bool, safe: bool, detach: bool) -> _Snapshot:
    """Collect this rank's checkpoint state; with ``detach`` as copies that later training cannot change."""
    snap = _Snapshot(rank=acc.process_index, writer=writer, safe=safe)
    if writer:
        snap.weights = weights
        snap.optimizers = [] if _engine_files(acc) else [opt.state_dict() for opt in acc._optimizers]
        snap.schedulers = [sched.state_dict() for sched in acc._schedulers]
        for loader in acc._dataloaders:
            sampler = _seedable_sampler(loader)
            # Plain ints, not the sampler object: readable with weights_only=True (Accelerate pickles the object).
            snap.samplers.append(
                None if sampler is None else {"initial_seed": int(sampler.initial_seed), "epoch": int(sampler.epoch)}
            )
            snap.stateful.append(bool(getattr(loader, "use_stateful_dataloader", False)))
            snap.loaders.append(loader.state_dict() if snap.stateful[-1] else None)
        snap.scaler = acc.scaler.state_dict() if acc.scaler is not None else None
        snap.custom = [obj.state_dict() for obj in acc._custom_objects]
    snap.rng = _rng_state(acc.step)  # fresh objects from the generators: nothing to copy
    if acc._dataloaders:  # per rank: a rank's loaders could stand elsewhere (e.g. uneven iterable streams)
        snap.positions = _loader_positions(acc)
    if detach:
        # One call for all of it, so that storages shared between state dicts stay shared in the copy.
        (snap.weights, snap.optimizers, snap.schedulers, snap.loaders, snap.scaler, snap.custom) = _copy_for_background(
            (snap.weights, snap.optimizers, snap.schedulers, snap.loaders, snap.scaler, snap.custom), snap.staged
        )
    return snap


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to the disk: a rename is durable only after its contents and folder are."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_snapshot(snap: _Snapshot, tmp: Path) -> None:
    """Write ``snap``'s files into ``tmp`` and flush them to disk: the one writer of synchronous saves and background
    ones alike (so a background save also flushes in the background)."""
    before = set(tmp.iterdir())
    _write_snapshot_files(snap, tmp)
    for path in sorted(set(tmp.iterdir()) - before):
        # The folder is shared by every rank: a new name may be another rank's transient file, gone by now (its own
        # writer flushes it, and the commit flushes every file that stays).
        with contextlib.suppress(FileNotFoundError):
            if path.is_file():
                _fsync(path)


def _write_snapshot_files(snap: _Snapshot, tmp: Path) -> None:
    if snap.writer:
        for i, state in enumerate(snap.weights):
            tensors = {k: v.detach().cpu() for k, v in state.items()}
            path = tmp / _model_file(i, snap.safe)
            if snap.safe:
                from safetensors.torch import save_file

                save_file(checkpointing._dedupe_shared(tensors), str(path), metadata={"format": "pt"})
            else:
                torch.save(tensors, path)
        for i, state in enumerate(snap.optimizers):
            torch.save(state, tmp / _indexed("optimizer", "bin", i))
        for i, state in enumerate(snap.schedulers):
            torch.save(state, tmp / _indexed("scheduler", "bin", i))
        for i, (sampler, stateful, state) in enumerate(zip(snap.samplers, snap.stateful, snap.loaders)):
            if sampler is not None:
                torch.save(sampler, tmp / _indexed("sampler", "bin", i))
            if stateful:
                torch.save(state, tmp / _indexed("dl_state_dict", "bin", i))
        if snap.scaler is not None:
            torch.save(snap.scaler, tmp / SCALER_NAME)
        for i, state in enumerate(snap.custom):
            torch.save(state, tmp / f"custom_checkpoint_{i}.pkl")
    torch.save(snap.rng, tmp / f"random_states_{snap.rank}.pkl")
    if snap.positions is not None:
        (tmp / f"overdrive_loaders_{snap.rank}.json").write_text(json.dumps({"format": 1, "loaders": snap.positions}))


def _manifest(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _commit(tmp: Path, target: Path, token: str, meta: dict[str, Any]) -> None:
    """Move the finished temporary folder to ``target``; the marker is written last.

    Durable, not only atomic: every file is flushed to disk before the rename and the marker after it, so a power
    loss or a node crash (not only a killed process) cannot leave a marker that vouches for unwritten data. Files
    the writer already flushed (``_write_snapshot``) cost little to flush again.
    """
    for path in sorted(tmp.rglob("*")):
        _fsync(path)  # files written by engines, hooks and other ranks, and the folders themselves
    _fsync(tmp)
    files = _manifest(tmp)
    old = None
    if target.exists():
        # The user's own files in the folder survive; this module's files of the earlier save are replaced.
        for entry in target.iterdir():
            if not (tmp / entry.name).exists() and not _STATE_FILE.fullmatch(entry.name):
                os.rename(entry, tmp / entry.name)
        old = target.with_name(f".{target.name}.old-{token}")
        os.rename(target, old)
    os.rename(tmp, target)
    _fsync(target.parent)
    checkpointing._atomic_write(target / COMPLETE_MARKER,
                                functools.partial(checkpointing._write_json, {**meta, "files": files}))
    _fsync(target / COMPLETE_MARKER)
    _fsync(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _rotate(root: Path, total_limit: int, newest: Path, required: Sequence[str]) -> None:
    """Delete the oldest complete checkpoints beyond ``total_limit``; incomplete ones neither count nor go."""
    complete = [p for _, p in _numbered_checkpoints(root) if p == newest or is_complete_checkpoint(p, required)]
    excess = [p for p in complete if p != newest][: max(0, len(complete) - total_limit)]
    if excess:
        logger.info(f"Deleting {len(excess)} old checkpoint(s) to keep total_limit={total_limit}")
    for path in excess:
        shutil.rmtree(path)


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)")  # the hidden folders of a save in progress
_STALE_AFTER_S = 300.0  # a leftover untouched this long, whose writer is not running here, is swept


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for path in folder.rglob("*"):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue  # removed while we looked
    return max(times)


def _sweep_stale(root: Path) -> list[Path]:
    """Remove the hidden ``.{name}.tmp-{pid}`` / ``.{name}.old-{pid}`` folders that crashed saves left in ``root``.

    Only folders named exactly as this module names them, whose writing process (the pid in the name) is not alive on
    this host, that no background save of this process still writes, and in which nothing changed for
    ``_STALE_AFTER_S`` seconds: a save of another job, or of another node on a shared filesystem, is never touched.
    Called by the writer after each commit. Returns what it removed.

    Example:
        >>> import tempfile
        >>> _sweep_stale(Path(tempfile.mkdtemp()))
        []
    """
    pending = {save.tmp for save in _PENDING}
    removed = []
    now = time.time()
    for entry in root.iterdir():
        match = _LEFTOVER.fullmatch(entry.name)
        if match is None or entry in pending or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            if _pid_alive(int(match["pid"])) or now - _newest_mtime(entry) < _STALE_AFTER_S:
                continue
            shutil.rmtree(entry)
        except OSError as err:
            logger.warning(f"could not remove the leftover of an interrupted save {str(entry)!r}: {err}")
            continue
        removed.append(entry)
    if removed:
        logger.info(f"Removed {len(removed)} leftover folder(s) of interrupted saves: {[p.name for p in removed]}")
    return removed


def _user_models(acc: Accelerator) -> list[torch.nn.Module]:
    """The user's modules inside the strategy wrappers: Accelerate's files and hooks use their keys (no ``module.``)."""
    # keep_torch_compile=False: a model the user wrapped in torch.compile loads plain keys (no ``_orig_mod.``) too
    return [acc.unwrap_model(model, keep_torch_compile=False) for model in acc._models]


# -- committing, and saves still being written in the background -------------------------------------------------

_DONE_FILE = ".overdrive_done_{rank}.json"  # exit path only: this rank's background write finished
_EXIT_WAIT_S = 60.0  # at exit, how long the writer waits for the other ranks' files before leaving the save uncommitted
_PENDING: list[_Save] = []  # background saves not yet committed, oldest first (touched by the main thread only)
_exit_hook_installed = False
_WRITER: Any = None  # one long-lived writer thread: starting a thread per save delays the caller by a scheduling slot


def _writer() -> Any:
    """The background writer (a one-thread ``ThreadPoolExecutor``; the interpreter joins it at exit)."""
    global _WRITER
    if _WRITER is None:
        from concurrent.futures import ThreadPoolExecutor

        _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overdrive-checkpoint-writer")
    return _WRITER


class _Save:
    """One save between its snapshot and its commit: where it goes, what the commit writes, and (async) its write."""

    def __init__(self, acc: Accelerator, tmp: Path, target: Path, token: str, writer: bool) -> None:
        self.owner = weakref.ref(acc)
        self.tmp, self.target, self.token, self.writer = tmp, target, token, writer
        self.rank, self.world = acc.process_index, acc.num_processes
        self.config = acc.project_configuration
        self.meta = {"format": 1, "world_size": acc.num_processes, "step": acc.step}
        self.required = _markerless_required(acc)  # for rotation; the exit path has no Accelerator to ask
        self.future: Any = None
        self.staged: list[torch.UntypedStorage] = []

    def start(self, snap: _Snapshot) -> None:
        """Write ``snap`` into the temporary folder in the background writer thread."""
        self.staged = snap.staged
        self.future = _writer().submit(_write_snapshot, snap, self.tmp)

    def join(self) -> BaseException | None:
        """Wait for this rank's writes; the error to report, if they failed."""
        failure = self.future.exception() if self.future is not None else None  # waits; any exception is kept
        if failure is None:
            return None
        error = CheckpointError(
            f"save_state(async_save=True): writing {str(self.target)!r} in the background failed "
            f"({type(failure).__name__}: {failure}); nothing was committed and earlier checkpoints are untouched"
        )
        error.__cause__ = failure
        return error

    def recycle(self) -> None:
        """Offer this save's CPU buffers to the next one (after :meth:`join`: the writer is done with them)."""
        _STAGING.clear()
        for buffer in self.staged:
            _STAGING.setdefault(buffer.nbytes(), []).append(buffer)
        self.staged = []

    def commit(self) -> None:
        """Rename, marker, rotation (writer ranks only)."""
        _commit(self.tmp, self.target, self.token, self.meta)
        if self.config.automatic_checkpoint_naming and self.config.total_limit is not None:
            _rotate(self.target.parent, self.config.total_limit, self.target, self.required)
        _sweep_stale(self.target.parent)

    def finish_at_exit(self, timeout: float) -> None:
        """Commit without collectives: every rank drops a done-file, the writer polls for all of them (bounded)."""
        error = self.join()
        done = {"error": None if error is None else str(error)}
        checkpointing._atomic_write(self.tmp / _DONE_FILE.format(rank=self.rank),  # atomic: never read half-written
                                    functools.partial(checkpointing._write_json, done))
        if not self.writer:
            return
        files = [self.tmp / _DONE_FILE.format(rank=r) for r in range(self.world)]
        deadline = time.monotonic() + timeout
        while not all(f.is_file() for f in files):
            if time.monotonic() > deadline:
                missing = [r for r, f in enumerate(files) if not f.is_file()]
                logger.warning(
                    f"exit: rank(s) {missing} did not finish writing {str(self.tmp)!r} within {timeout:.0f} s; "
                    f"{self.target.name} is left uncommitted (it is never loaded; delete it)", main_process_only=False
                )
                return
            time.sleep(0.05)
        reports = [json.loads(f.read_text())["error"] for f in files]
        for f in files:
            f.unlink()  # before the commit lists the folder's files in the marker
        failed = [(r, message) for r, message in enumerate(reports) if message]
        if failed:
            shutil.rmtree(self.tmp, ignore_errors=True)
            logger.warning(f"exit: {self.target.name} was not committed: rank {failed[0][0]}: {failed[0][1]}",
                           main_process_only=False)
            return
        self.commit()
        self.config.iteration += 1
        logger.info(f"Saved state to {self.target} (committed at exit)", main_process_only=False)


def _finish(acc: Accelerator, save: _Save) -> Path:
    """Commit ``save`` on the writer ranks; collective, so a failure on one rank is an error on every rank."""
    error: BaseException | None = None
    try:
        if save.writer:
            save.commit()
    except Exception as err:
        error = err
    _agree(acc, error, f"committing {str(save.target)!r}")
    save.config.iteration += 1
    logger.info(f"Saved state to {save.target}")
    return save.target


def wait_for_checkpoint(acc: Accelerator, release_buffers: bool = False) -> Path | None:
    """Finish the pending ``save_state(async_save=True)`` of ``acc``: wait for its files, then commit it.

    Returns the committed folder, or ``None`` when no save is pending. Collective, like ``save_state``: every rank
    calls it. A failed background write raises :class:`CheckpointError` on every rank; its temporary folder is
    removed and earlier checkpoints are untouched. The CPU buffers of the copy are kept for the next async save
    unless ``release_buffers`` (``end_training`` passes it).

    Example:
        >>> import tempfile, torch
        >>> from overdrive import Accelerator
        >>> acc = Accelerator(); _ = acc.prepare(torch.nn.Linear(1, 1))
        >>> folder = save_state(acc, tempfile.mkdtemp() + "/ckpt", async_save=True)
        >>> wait_for_checkpoint(acc) == folder, wait_for_checkpoint(acc)
        (True, None)
    """
    save = next((s for s in _PENDING if s.owner() is acc), None)
    if save is None:
        if release_buffers:
            _STAGING.clear()
        return None
    error = save.join()
    _PENDING.remove(save)  # after the join: interrupted there, the exit handler still finishes it
    save.recycle()
    if release_buffers:
        _STAGING.clear()
    try:
        _agree(acc, error, f"save_state(async_save=True) writing {str(save.target)!r}")
    except BaseException:
        if save.writer:
            shutil.rmtree(save.tmp, ignore_errors=True)  # every rank's writes are over: nothing writes there
        raise
    return _finish(acc, save)


def _finish_pending_at_exit() -> None:
    """At interpreter exit: commit background saves nobody waited for. File-based, bounded, never raises.

    Runs before the process group is torn down (``state._teardown`` calls it first); collectives are not used because
    another rank may already be gone.
    """
    while _PENDING:
        save = _PENDING.pop(0)
        try:
            save.finish_at_exit(_EXIT_WAIT_S)
        except Exception as err:
            logger.warning(f"exit: could not commit {str(save.target)!r} ({type(err).__name__}: {err}); it is left "
                           "uncommitted and is never loaded", main_process_only=False)


def save_state(
    acc: Accelerator, output_dir: str | os.PathLike[str] | None = None, safe_serialization: bool = True,
    async_save: bool = False, **save_model_func_kwargs: Any,
) -> Path:
    """Write ``acc``'s models, optimizers, schedulers, loaders, scaler, RNG states and registered objects.

    With ``automatic_checkpoint_naming`` the folder is ``{project_dir}/checkpoints/checkpoint_{iteration}`` (as in
    Accelerate, ``output_dir`` is then ignored) and ``total_limit`` keeps that many complete checkpoints. Returns
    the folder. ``save_model_func_kwargs`` go to engines with their own writers (DeepSpeed's ``save_checkpoint``).

    ``async_save=True`` (an overdrive extension) returns once a consistent copy of the state is in CPU memory (save
    pre-hooks run before, in this thread); a background thread writes the same files into the temporary folder,
    and :func:`wait_for_checkpoint` commits it: explicitly, or at the next ``save_state``/``load_state``/
    ``maybe_resume``/``end_training``, or at interpreter exit. Until then the folder does not exist and the copy
    holds as much CPU memory as the state. ``torch.distributed.checkpoint.async_save`` is not used: it writes its
    own sharded format, not Accelerate's files.

    Example:
        >>> import tempfile, torch
        >>> from overdrive import Accelerator
        >>> acc = Accelerator(); _ = acc.prepare(torch.nn.Linear(1, 1))
        >>> save_state(acc, tempfile.mkdtemp()).is_dir()
        True
    """
    config = acc.project_configuration
    validate_project_configuration(config)
    if not isinstance(async_save, bool):
        raise TypeError(f"save_state(async_save={async_save!r}): pass True (write in the background) or False")
    if not config.automatic_checkpoint_naming:
        if output_dir is None:
            raise ValueError(
                "save_state() needs output_dir unless ProjectConfiguration(automatic_checkpoint_naming=True)"
            )
        target = Path(os.path.expanduser(os.fspath(output_dir)))
        if target.exists() and not target.is_dir():
            raise ValueError(f"save_state(output_dir={str(target)!r}): that path is a file; pass a folder path")
    # An earlier background save commits first: it takes its number, rotates, and reports a failure here.
    wait_for_checkpoint(acc)
    if config.automatic_checkpoint_naming:
        target = _checkpoints_root(acc) / f"checkpoint_{config.iteration}"
        if target.exists():
            raise ValueError(
                f"save_state: checkpoint folder {str(target)!r} already exists; set "
                "accelerator.project_configuration.iteration to the next free number (e.g. after load_state)"
            )
    writer = acc.is_main_process or (config.save_on_each_node and acc.is_local_main_process)
    token = str(ops.broadcast_object_list([os.getpid()])[0])  # every rank writes into the same temporary folder
    tmp = target.with_name(f".{target.name}.tmp-{token}")

    error: BaseException | None = None
    try:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
    except Exception as err:
        error = err
    _agree(acc, error, f"creating {str(tmp)!r}")

    error = None
    snap: _Snapshot | None = None
    try:
        models = _user_models(acc)
        if _engine_files(acc):
            # A collective of every rank: its shards (FSDP2 torch.distributed.checkpoint folders, DeepSpeed engine
            # files), written now also for async saves (the engine's own state cannot be copied aside cheaply).
            acc.strategy.save_checkpoint_files(acc._models, _torch_optimizers(acc), tmp, safe_serialization,
                                               **save_model_func_kwargs)
            weights: list[dict[str, Any]] = []
        else:
            weights = [acc.get_state_dict(model) for model in models]
        for hook in list(acc._save_model_state_pre_hook.values()):
            hook(models, weights, str(tmp))  # files a hook writes there become part of the checkpoint
        snap = _take_snapshot(acc, weights, writer, safe_serialization, detach=async_save)
        if not async_save:
            _write_snapshot(snap, tmp)
    except Exception as err:
        error = err
    try:
        _agree(acc, error, f"save_state({str(target)!r})")
    except BaseException:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)  # the earlier checkpoint in target stays untouched
        raise

    save = _Save(acc, tmp, target, token, writer)
    if not async_save:
        return _finish(acc, save)
    global _exit_hook_installed
    if not _exit_hook_installed:
        atexit.register(_finish_pending_at_exit)  # state._teardown also calls it first, whichever runs first
        _exit_hook_installed = True
    assert snap is not None
    save.start(snap)
    _PENDING.append(save)
    logger.info(f"Writing state to {target} in the background")
    return target


# -- loading ----------------------------------------------------------------------------------------------------------


def _match_keys(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add or strip DDP's ``module.`` prefix when only that differs (a checkpoint from another world size).

    ``_orig_mod.`` (written by Accelerate for torch.compile'd models) is dropped first: compiled and plain
    checkpoints are interchangeable.
    """
    if any("_orig_mod." in k for k in loaded) and not any("_orig_mod." in k for k in own):
        loaded = {k.replace("_orig_mod.", ""): v for k, v in loaded.items()}
    own_keys, keys = set(own), set(loaded)
    if own_keys == keys or not own_keys or not keys:
        return loaded
    if all(k.startswith("module.") for k in own_keys) and not any(k.startswith("module.") for k in keys):
        return {f"module.{k}": v for k, v in loaded.items()}
    if all(k.startswith("module.") for k in keys) and not any(k.startswith("module.") for k in own_keys):
        return {k[len("module."):]: v for k, v in loaded.items()}
    return loaded


def _check_model_state(
    model: torch.nn.Module, loaded: dict[str, torch.Tensor], path: Path, strict: bool
) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    loaded = _match_keys(own, loaded)
    # Tied weights were saved once (safetensors refuses aliases); fill the other names from their storage twin.
    by_storage: dict[tuple[int, int], str] = {}
    for key, tensor in own.items():
        if tensor.numel():
            by_storage.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset()), key)
    for key, tensor in own.items():
        twin = by_storage.get((tensor.untyped_storage().data_ptr(), tensor.storage_offset())) if tensor.numel() else None
        if key not in loaded and twin is not None and twin in loaded:
            loaded[key] = loaded[twin]
    if strict:
        missing = [k for k in own if k not in loaded]
        if missing:
            raise CheckpointError(
                f"{str(path)!r} does not fit the model: it has no {missing[0]!r} ({len(missing)} of the model's keys "
                "are missing); it was saved from a different model. Pass strict=False to load_state to allow this"
            )
        unexpected = [k for k in loaded if k not in own]
        if unexpected:
            raise CheckpointError(
                f"{str(path)!r} does not fit the model: its key {unexpected[0]!r} is not in the model "
                f"({len(unexpected)} unexpected keys); it was saved from a different model"
            )
    for key, mine in own.items():  # the model's order: the first mismatch a reader of the model would see
        if key in loaded and tuple(mine.shape) != tuple(loaded[key].shape):
            raise CheckpointError(
                f"{str(path)!r} does not fit the model: {key!r} has shape {tuple(loaded[key].shape)} in the file "
                f"but {tuple(mine.shape)} in the model"
            )
    return loaded


def _check_optimizer_state(opt: Any, state: Any, path: Path) -> None:
    groups = opt.state_dict()["param_groups"]
    saved = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(saved, list) or "state" not in state:
        raise CheckpointError(f"{str(path)!r} is not an optimizer state dict")
    shape = [len(g["params"]) for g in groups]
    saved_shape = [len(g.get("params", ())) for g in saved]
    if shape != saved_shape:
        raise CheckpointError(
            f"{str(path)!r} does not fit the optimizer: parameters per group {saved_shape} in the file, {shape} in "
            "the optimizer; it was saved for a different model or optimizer"
        )


def _read_all(
    acc: Accelerator, folder: Path, models: list[torch.nn.Module], map_location: Any, load_kwargs: dict[str, Any],
    strict: bool,
) -> dict[str, Any]:
    """Phase one: read and check every file, so that a bad one leaves the training state untouched."""
    marker = _read_marker(folder)
    if marker is not None:
        _check_marker(folder, marker)
    plan: dict[str, Any] = {"models": [], "optimizers": [], "schedulers": [], "samplers": [], "loaders": []}
    plan["positions"] = _read_positions(folder, acc.process_index, len(acc._dataloaders))
    engine_files = _engine_files(acc)
    if engine_files:
        acc.strategy.check_checkpoint_files(folder, len(acc._models), len(acc._optimizers))
    for i, model in enumerate([] if engine_files else models):
        path = folder / _model_file(i, True)
        if not path.is_file():
            path = folder / _model_file(i, False)
        if not path.is_file():
            raise CheckpointError(
                f"{str(folder)!r} has no weights for model {i}: expected {_model_file(i, True)!r} or "
                f"{_model_file(i, False)!r}; was it saved with {len(models)} prepared models?"
            )
        plan["models"].append(_check_model_state(model, _load_weights(path), path, strict))
    for i, opt in enumerate([] if engine_files else acc._optimizers):
        path = folder / _indexed("optimizer", "bin", i)
        state = _torch_load(path, map_location=map_location, **load_kwargs)
        _check_optimizer_state(opt, state, path)
        plan["optimizers"].append(state)
    for i in range(len(acc._schedulers)):
        plan["schedulers"].append(_torch_load(folder / _indexed("scheduler", "bin", i), **load_kwargs))
    for i, loader in enumerate(acc._dataloaders):
        sampler_path = folder / _indexed("sampler", "bin", i)
        sampler = _seedable_sampler(loader)
        state = _torch_load(sampler_path) if sampler is not None and sampler_path.is_file() else None
        if state is not None and not (isinstance(state, dict) and {"initial_seed", "epoch"} <= set(state)):
            raise CheckpointError(f"{str(sampler_path)!r} is not a sampler state {{'initial_seed', 'epoch'}}")
        plan["samplers"].append(state)
        dl_path = folder / _indexed("dl_state_dict", "bin", i)
        stateful = getattr(loader, "use_stateful_dataloader", False) and dl_path.is_file()
        plan["loaders"].append(_torch_load(dl_path, **load_kwargs) if stateful else None)
    metas = [state.get("_overdrive") if isinstance(state, dict) else None for state in plan["loaders"]]
    plan["positions"] = _remap_positions(acc, folder, plan["positions"], metas)
    for i, position in enumerate(plan["positions"]):
        if position is not None and position.get("remapped") and plan["loaders"][i] is not None:
            # torchdata's position counts this rank's batches of the saving run's sharding: keep only the shuffle
            # state of the pass start; the loader skips the converted number of batches itself.
            plan["loaders"][i] = {"_overdrive": metas[i]} if metas[i] is not None else None
    if acc.scaler is not None and (folder / SCALER_NAME).is_file():
        plan["scaler"] = _torch_load(folder / SCALER_NAME)
    elif acc.scaler is not None:
        # Accelerate on CPU runs fp16 as fp32 and writes no scaler.pt; the scaler then keeps its current scale.
        logger.warning(f"load_state: {folder / SCALER_NAME} not found; the fp16 GradScaler keeps its current state")
    plan["rng"], plan["rng_seed"] = _read_rng(folder, acc.process_index, _saved_world_size(folder))
    custom = sorted(p.name for p in folder.iterdir() if re.fullmatch(r"custom_checkpoint_\d+\.pkl", p.name))
    if len(custom) != len(acc._custom_objects):
        raise CheckpointError(
            f"{str(folder)!r} holds {len(custom)} custom_checkpoint_*.pkl files but {len(acc._custom_objects)} "
            "objects are registered with register_for_checkpointing; register the same objects, in the same order, "
            "as when the checkpoint was saved"
        )
    plan["custom"] = [
        _torch_load(folder / f"custom_checkpoint_{i}.pkl", map_location="cpu") for i in range(len(custom))
    ]
    return plan


def _read_positions(folder: Path, rank: int, count: int) -> list[dict[str, Any] | None]:
    """Loader positions of this rank (rank 0's when the checkpoint had fewer ranks); ``None`` for unknown ones."""
    path = folder / f"overdrive_loaders_{rank}.json"
    if not path.is_file():
        path = folder / "overdrive_loaders_0.json"
    if not path.is_file():
        return [None] * count  # Accelerate's checkpoint (or one without loaders): sampler.bin gives the epoch
    return _read_position_file(path, count)


def _read_position_file(path: Path, count: int) -> list[dict[str, Any] | None]:
    try:
        saved = json.loads(path.read_text())["loaders"]
        entries = [dict(e) for e in saved]
        for entry in entries:
            for key in ("iteration", "batches_done", "seed", "global_batch", "world_size"):
                if entry.get(key) is not None and (isinstance(entry[key], bool) or not isinstance(entry[key], int)):
                    raise TypeError(f"{key}={entry[key]!r} is not an int")
    except Exception as err:
        raise CheckpointError(f"{str(path)!r} is corrupt ({type(err).__name__}: {err}); the save did not finish") from err
    if len(entries) != count:
        raise CheckpointError(
            f"{str(path)!r} holds positions of {len(entries)} data loaders but {count} are prepared; prepare the same "
            "data loaders, in the same order, as when the checkpoint was saved"
        )
    return list(entries)


# -- resuming at another world size or global batch ---------------------------------------------------------------


def _saved_world_size(folder: Path) -> int:
    """Ranks of the run that wrote ``folder``: the marker's record, else its ``random_states_{rank}.pkl`` files."""
    marker = _read_marker(folder)
    if marker is not None and isinstance(marker.get("world_size"), int):
        return int(marker["world_size"])
    return max(1, len(list(folder.glob("random_states_*.pkl"))))


def _portable_order(loader: Any, meta: dict[str, Any] | None) -> bool:
    """Whether ``loader`` replays a pass in an order that does not depend on the number of ranks.

    True for the seedable and sequential samplers (the order is a function of seed and epoch), iterable datasets
    (the stream is the dataset's) and stateful loaders that saved the shuffle generator's state at the pass start.
    """
    from torch.utils.data import IterableDataset, SequentialSampler

    from .data_loader import IterableDatasetShard, SeedableRandomSampler

    if isinstance(getattr(loader, "dataset", None), (IterableDataset, IterableDatasetShard)):
        return True
    sampler = loader.get_sampler() if hasattr(loader, "get_sampler") else None
    if isinstance(sampler, (SeedableRandomSampler, SequentialSampler)):
        return True
    return meta is not None and meta.get("generator") is not None


def _remap_positions(
    acc: Accelerator, folder: Path, positions: list[dict[str, Any] | None], loader_metas: list[dict[str, Any] | None],
) -> list[dict[str, Any] | None]:
    """Convert the saved positions to this run's world size and global batches (``"remapped": True`` entries).

    The position is carried as *samples* of the saved epoch: ``batches_done * global_batch`` of the saving run,
    divided by this run's global batch. Every rank of the saving run must have stood at the same position. Raises
    :class:`CheckpointError` when no whole number of steps continues the stream exactly.
    """
    saved_world = _saved_world_size(folder)
    out: list[dict[str, Any] | None] = []
    others: dict[int, list[dict[str, Any] | None]] = {}
    for i, (loader, entry) in enumerate(zip(acc._dataloaders, positions)):
        new_batch = _global_batch(loader)
        if entry is None or (
            entry.get("world_size", saved_world) == acc.num_processes and entry.get("global_batch", new_batch) == new_batch
        ):
            out.append(entry)  # same world and batch (or Accelerate's checkpoint): positions carry over as saved
            continue
        where = f"load_state({str(folder)!r}): data loader {i}"
        if saved_world > 1:  # a position only maps if every saving rank stood at the same place
            for rank in range(saved_world):
                path = folder / f"overdrive_loaders_{rank}.json"
                if rank not in others and path.is_file():
                    others[rank] = _read_position_file(path, len(acc._dataloaders))
                theirs = others.get(rank, [entry])[i] or {}
                if (theirs.get("iteration"), theirs.get("batches_done")) != (entry.get("iteration"), entry.get("batches_done")):
                    raise CheckpointError(
                        f"{where} stood at different positions on the {saved_world} saving ranks (rank 0: batch "
                        f"{entry.get('batches_done')} of epoch {entry.get('iteration')}, rank {rank}: batch "
                        f"{theirs.get('batches_done')} of epoch {theirs.get('iteration')}), so it cannot be mapped to "
                        f"{acc.num_processes} ranks; resume with {saved_world} processes"
                    )
        batches = int(entry.get("batches_done") or 0)
        saved_batch = entry.get("global_batch")
        if batches and not _portable_order(loader, loader_metas[i]):
            raise CheckpointError(
                f"{where} stopped after {batches} batches of epoch {entry.get('iteration')} at world size "
                f"{entry.get('world_size', saved_world)}, but its sampler ({type(loader.get_sampler()).__name__}) "
                "draws an order that is not recorded, so the rest of the epoch cannot be replayed on "
                f"{acc.num_processes} ranks; use DataLoaderConfiguration(use_seedable_sampler=True) or resume with "
                "the saving world size"
            )
        if batches and (saved_batch is None or new_batch is None):
            raise CheckpointError(
                f"{where} stopped after {batches} batches at world size {entry.get('world_size', saved_world)} and "
                f"its global batch size is unknown ({saved_batch} saved, {new_batch} now), so the position cannot be "
                f"mapped to {acc.num_processes} ranks; resume with the saving world size and batch size"
            )
        samples = batches * int(saved_batch or 0)
        if batches and samples % int(new_batch or 1):
            raise CheckpointError(
                f"{where} stopped after {batches} steps of {saved_batch} samples ({samples} samples of epoch "
                f"{entry.get('iteration')}) at world size {entry.get('world_size', saved_world)}; this run takes "
                f"{new_batch} samples per step at world size {acc.num_processes}, and {samples} is not a multiple of "
                f"{new_batch}, so no whole number of steps continues the stream exactly. Resume with a global batch "
                f"(per-process batch size x processes) that divides {samples}, e.g. {saved_batch}"
            )
        out.append({**entry, "batches_done": samples // int(new_batch or 1) if batches else 0, "remapped": True})
    return out


def _derived_rank_seed(donor: dict[str, Any], rank: int) -> int:
    """The seed of a rank the saving run did not have: a hash of the donor rank's torch RNG state and ``rank``."""
    digest = hashlib.blake2b(donor["torch_manual_seed"].numpy().tobytes() + rank.to_bytes(8, "little"), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1  # 63 bits: valid for torch, random and (mod 2**32) numpy


def _read_rng(folder: Path, rank: int, saved_world: int) -> tuple[dict[str, Any] | None, int | None]:
    """This rank's saved RNG states, or for a rank the saving run lacked, rank ``rank % saved_world``'s states and
    the seed to reseed them with (see :func:`_derived_rank_seed`)."""
    path = folder / f"random_states_{rank}.pkl"
    seed = None
    if not path.is_file() and rank >= saved_world:
        path = folder / f"random_states_{rank % saved_world}.pkl"
        seed = -1
    if not path.is_file():
        logger.warning(f"load_state: {path} not found; this rank keeps its current random states")
        return None, None
    state = _torch_load(path, safe_globals=_rng_safe_globals())
    if not isinstance(state, dict) or "torch_manual_seed" not in state:
        raise CheckpointError(f"{str(path)!r} is not a random-state dict")
    return state, (None if seed is None else _derived_rank_seed(state, rank))


def _apply_rng(state: dict[str, Any]) -> None:
    random.setstate(state["random_state"])
    if "numpy_random_seed" in state:
        import numpy as np

        np.random.set_state(state["numpy_random_seed"])
    torch.set_rng_state(state["torch_manual_seed"])
    if torch.cuda.is_available() and "torch_cuda_manual_seed" in state:
        torch.cuda.set_rng_state_all(state["torch_cuda_manual_seed"])


def _reseed(seed: int) -> None:
    """Seed python's, numpy's and torch's (and CUDA's) generators for a rank the saving run did not have."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device


def load_state(
    acc: Accelerator, input_dir: str | os.PathLike[str] | None = None, load_kwargs: dict[str, Any] | None = None,
    **load_model_func_kwargs: Any,
) -> None:
    """Restore what :func:`save_state` wrote (or Accelerate's ``save_state``) into ``acc``'s prepared objects.

    ``input_dir=None`` with automatic naming picks the newest complete ``checkpoint_N``. ``load_kwargs`` go to
    ``torch.load`` (always with ``weights_only=True``); ``map_location`` ('cpu' or 'on_device') and ``strict`` are
    read from ``load_model_func_kwargs``. Every file is read and checked before anything is changed.

    Example:
        >>> import tempfile, torch
        >>> from overdrive import Accelerator
        >>> acc = Accelerator(); _ = acc.prepare(torch.nn.Linear(1, 1))
        >>> load_state(acc, save_state(acc, tempfile.mkdtemp()))
    """
    load_kwargs = dict(load_kwargs or {})
    if load_kwargs.pop("weights_only", True) is not True:
        raise ValueError(
            "load_state(load_kwargs={'weights_only': False}) is not supported: checkpoints are always read with "
            "weights_only=True so that no pickled code runs; allowlist extra types with "
            "torch.serialization.add_safe_globals instead"
        )
    map_location = load_model_func_kwargs.pop("map_location", None)
    if map_location not in (None, "cpu", "on_device"):
        raise ValueError(f"load_state(map_location={map_location!r}): use None, 'cpu' or 'on_device'")
    map_location = acc.device if map_location == "on_device" else "cpu"
    strict = bool(load_model_func_kwargs.pop("strict", True))
    engine_kwargs: dict[str, Any] = {}
    if _engine_files(acc):  # the rest are the engine's own options (e.g. DeepSpeed's load_optimizer_states=False)
        engine_kwargs, load_model_func_kwargs = dict(load_model_func_kwargs), {}
    if load_model_func_kwargs:
        raise TypeError(f"load_state got unsupported keyword arguments {sorted(load_model_func_kwargs)}")
    folder = _resolve_load_dir(acc, input_dir)

    error: BaseException | None = None
    plan: dict[str, Any] = {}
    try:
        models = _user_models(acc)
        for hook in list(acc._load_model_state_pre_hook.values()):
            hook(models, str(folder))  # a hook may load some models itself and remove them from the list
        plan = _read_all(acc, folder, models, map_location, load_kwargs, strict)
    except Exception as err:
        error = err
    _agree(acc, error, f"load_state({str(folder)!r})")

    if _engine_files(acc):  # collective: every rank reads its shards, resharded to this world size where possible
        acc.strategy.load_checkpoint_files(acc._models, _torch_optimizers(acc), folder, strict=strict, **engine_kwargs)
    for model, state in zip(models, plan["models"]):
        model.load_state_dict(state, strict=strict)
    for opt, state in zip(acc._optimizers, plan["optimizers"]):
        opt.load_state_dict(state)
    for sched, state in zip(acc._schedulers, plan["schedulers"]):
        sched.load_state_dict(state)
    for loader, sampler_state, position, loader_state in zip(
        acc._dataloaders, plan["samplers"], plan["positions"], plan["loaders"]
    ):
        sampler = _seedable_sampler(loader)
        if sampler_state is not None:
            sampler.initial_seed, sampler.epoch = sampler_state["initial_seed"], sampler_state["epoch"]
        if position is not None and sampler is not None and position.get("seed") is not None:
            sampler.initial_seed = position["seed"]
        iteration = position.get("iteration") if position is not None else None
        if iteration is None and sampler_state is not None:
            iteration = int(sampler_state["epoch"])  # Accelerate's checkpoint: the sampler's epoch is the pass's
        if iteration is not None and hasattr(loader, "_restore_position"):
            # Without this the next pass would reshuffle with the fresh loader's epoch 0, not the saved one.
            loader._restore_position(iteration)
        if loader_state is not None:
            loader.load_state_dict(loader_state)
        if position is not None and position.get("remapped") and iteration is not None:
            stateful = bool(getattr(loader, "use_stateful_dataloader", False))
            loader._remap_position(iteration, int(position["batches_done"]), self_positioned=stateful)
    if "scaler" in plan:
        acc.scaler.load_state_dict(plan["scaler"])  # type: ignore[union-attr]
    if plan["rng"] is not None:
        _apply_rng(plan["rng"])
        if plan["rng_seed"] is not None:
            _reseed(plan["rng_seed"])
        if "step" in plan["rng"]:
            acc.step = int(plan["rng"]["step"])
    for obj, state in zip(acc._custom_objects, plan["custom"]):
        obj.load_state_dict(state)
    logger.info(f"Loaded state from {folder}")


# -- automatic recovery -----------------------------------------------------------------------------------------------


class ResumePoint(NamedTuple):
    """Where a run continues: the checkpoint loaded (``None``: fresh start), and the loader's epoch and batch.

    Example:
        >>> ResumePoint(None, 0, 0).checkpoint is None
        True
    """

    checkpoint: Path | None
    epoch: int
    batches: int


def maybe_resume(acc: Accelerator, dataloader: Any = None) -> ResumePoint:
    """Load the newest complete ``checkpoint_N`` if there is one; say where ``dataloader`` (default: the first
    prepared loader) continues. Needs ``ProjectConfiguration(automatic_checkpoint_naming=True)``.

    After a load, the next ``save_state`` gets the number after every existing ``checkpoint_N`` (complete or not).
    Resume the loop with ``skip_first_batches(dl, point.batches)`` in epoch ``point.epoch``: a plain loader skips
    those batches, a stateful one (already positioned by the load) is returned unchanged.

    Example:
        >>> import tempfile, torch
        >>> from overdrive import Accelerator, ProjectConfiguration
        >>> acc = Accelerator(project_config=ProjectConfiguration(tempfile.mkdtemp(), automatic_checkpoint_naming=True))
        >>> _ = acc.prepare(torch.nn.Linear(1, 1))
        >>> maybe_resume(acc)
        ResumePoint(checkpoint=None, epoch=0, batches=0)
    """
    config = acc.project_configuration
    if not config.automatic_checkpoint_naming:
        raise ValueError(
            "maybe_resume() looks for {project_dir}/checkpoints/checkpoint_N folders; create the Accelerator with "
            "ProjectConfiguration(project_dir=..., automatic_checkpoint_naming=True) and save with save_state()"
        )
    validate_project_configuration(config)
    if dataloader is None:
        index = 0 if acc._dataloaders else None
    else:
        index = next((i for i, dl in enumerate(acc._dataloaders) if dl is dataloader), None)
        if index is None:
            raise ValueError(
                f"maybe_resume(dataloader={type(dataloader).__name__}): that loader was not returned by this "
                "Accelerator's prepare(); pass the prepared loader (or None for the first prepared one)"
            )
    found: list[Any] = [None, config.iteration]
    if acc.is_main_process:  # one rank decides, so that every rank loads the same folder and numbers alike
        numbered = _numbered_checkpoints(_checkpoints_root(acc))
        required = _markerless_required(acc)
        complete = [p for _, p in numbered if is_complete_checkpoint(p, required)]
        found = [str(complete[-1]) if complete else None, max([config.iteration] + [n + 1 for n, _ in numbered])]
    ops.broadcast_object_list(found)
    if found[0] is None:
        loader = acc._dataloaders[index] if index is not None else None
        return ResumePoint(None, int(getattr(loader, "iteration", 0)), 0)
    folder = Path(found[0])
    load_state(acc, folder)
    config.iteration = int(found[1])  # save_state refuses to overwrite an existing checkpoint_N
    if index is None:
        return ResumePoint(folder, 0, 0)
    loader = acc._dataloaders[index]
    position = _read_positions(folder, acc.process_index, len(acc._dataloaders))[index]
    batches = position.get("batches_done") if position is not None else None
    # Converted by load_state from another world size or global batch, or restored by a stateful loader.
    converted = getattr(loader, "_expected_skip", None)
    if converted is None:
        converted = getattr(loader, "_restored_position", None)
    if converted is not None:
        batches = converted
    if batches is None:
        logger.warning(f"maybe_resume: {folder} does not record the batch position; resuming at the epoch's start")
    return ResumePoint(folder, int(getattr(loader, "iteration", 0)), int(batches or 0))
