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
                                               [{"iteration", "batches_done", "seed"}, ...] (see below)
    custom_checkpoint_{i}.pkl                  objects given to register_for_checkpointing
    overdrive_complete.json                    written last: every file of the checkpoint with its size

Crash safety: every rank writes into a hidden sibling ``.{name}.tmp-{token}``; once all ranks succeeded the main
process renames it to ``{name}`` and then writes the marker. A folder without the marker is either Accelerate's
(which writes none) or one caught between the rename and the marker. Markerless folders load when named
explicitly; with automatic naming they count as complete when ``random_states_0.pkl`` and the optimizer, scheduler
and custom-object files this Accelerator needs are all present and non-empty (Accelerate writes those last).

Resuming mid-epoch: ``load_state`` puts every prepared loader back at the start of the saved epoch (``iteration``,
and the seedable sampler's seed and epoch), so the shuffled order is the uninterrupted run's. The batch position
is restored in Accelerate's two ways: with ``use_stateful_dataloader=True`` from ``dl_state_dict.bin`` (just keep
iterating the loader), otherwise by the script's own ``skip_first_batches(dl, n)``. ``batches_done`` records ``n``
for scripts that want it; a loader already restored from ``dl_state_dict.bin`` takes ``skip_first_batches(dl, n)``
only with ``n == batches_done`` (it is not skipped twice). Checkpoints without the JSON file (Accelerate's) take the
epoch from ``sampler.bin``.

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

import functools
import json
import os
import pickle
import random
import re
import shutil
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


def _markerless_required(acc: Accelerator) -> list[str]:
    names = [_indexed("optimizer", "bin", i) for i in range(len(acc._optimizers))]
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


def _loader_positions(acc: Accelerator) -> list[dict[str, Any]]:
    """This rank's ``{"iteration", "batches_done", "seed"}`` of every prepared loader (``None`` values if unknown)."""
    positions = []
    for loader in acc._dataloaders:
        where = loader._resume_position() if hasattr(loader, "_resume_position") else None
        sampler = _seedable_sampler(loader)
        positions.append({
            "iteration": None if where is None else where[0],
            "batches_done": None if where is None else where[1],
            "seed": None if sampler is None else int(sampler.initial_seed),
        })
    return positions


def _write_shared_files(acc: Accelerator, tmp: Path, weights: list[dict[str, Any]], safe: bool) -> None:
    """Everything but the per-rank RNG file: model, optimizer, scheduler, loader, scaler and custom states."""
    for i, state in enumerate(weights):
        tensors = {k: v.detach().cpu() for k, v in state.items()}
        path = tmp / _model_file(i, safe)
        if safe:
            from safetensors.torch import save_file

            save_file(checkpointing._dedupe_shared(tensors), str(path), metadata={"format": "pt"})
        else:
            torch.save(tensors, path)
    for i, opt in enumerate(acc._optimizers):
        torch.save(opt.state_dict(), tmp / _indexed("optimizer", "bin", i))
    for i, sched in enumerate(acc._schedulers):
        torch.save(sched.state_dict(), tmp / _indexed("scheduler", "bin", i))
    for i, loader in enumerate(acc._dataloaders):
        sampler = _seedable_sampler(loader)
        if sampler is not None:
            # Plain ints, not the sampler object: readable with weights_only=True (Accelerate pickles the object).
            torch.save({"initial_seed": int(sampler.initial_seed), "epoch": int(sampler.epoch)},
                       tmp / _indexed("sampler", "bin", i))
        if getattr(loader, "use_stateful_dataloader", False):
            torch.save(loader.state_dict(), tmp / _indexed("dl_state_dict", "bin", i))
    if acc.scaler is not None:
        torch.save(acc.scaler.state_dict(), tmp / SCALER_NAME)
    for i, obj in enumerate(acc._custom_objects):
        torch.save(obj.state_dict(), tmp / f"custom_checkpoint_{i}.pkl")


def _manifest(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _commit(tmp: Path, target: Path, token: str, meta: dict[str, Any]) -> None:
    """Move the finished temporary folder to ``target``; the marker is written last."""
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
    checkpointing._atomic_write(target / COMPLETE_MARKER,
                                functools.partial(checkpointing._write_json, {**meta, "files": files}))
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


def _user_models(acc: Accelerator) -> list[torch.nn.Module]:
    """The user's modules inside the strategy wrappers: Accelerate's files and hooks use their keys (no ``module.``)."""
    return [acc.unwrap_model(model) for model in acc._models]


def save_state(
    acc: Accelerator, output_dir: str | os.PathLike[str] | None = None, safe_serialization: bool = True,
    **save_model_func_kwargs: Any,
) -> Path:
    """Write ``acc``'s models, optimizers, schedulers, loaders, scaler, RNG states and registered objects.

    With ``automatic_checkpoint_naming`` the folder is ``{project_dir}/checkpoints/checkpoint_{iteration}`` (as in
    Accelerate, ``output_dir`` is then ignored) and ``total_limit`` keeps that many complete checkpoints. Returns
    the folder. ``save_model_func_kwargs`` are for engines with their own writers (DeepSpeed) and unused here.

    Example:
        >>> import tempfile, torch
        >>> from overdrive import Accelerator
        >>> acc = Accelerator(); _ = acc.prepare(torch.nn.Linear(1, 1))
        >>> save_state(acc, tempfile.mkdtemp()).is_dir()
        True
    """
    config = acc.project_configuration
    validate_project_configuration(config)
    if config.automatic_checkpoint_naming:
        target = _checkpoints_root(acc) / f"checkpoint_{config.iteration}"
        if target.exists():
            raise ValueError(
                f"save_state: checkpoint folder {str(target)!r} already exists; set "
                "accelerator.project_configuration.iteration to the next free number (e.g. after load_state)"
            )
    elif output_dir is None:
        raise ValueError("save_state() needs output_dir unless ProjectConfiguration(automatic_checkpoint_naming=True)")
    else:
        target = Path(os.path.expanduser(os.fspath(output_dir)))
        if target.exists() and not target.is_dir():
            raise ValueError(f"save_state(output_dir={str(target)!r}): that path is a file; pass a folder path")
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
    try:
        models = _user_models(acc)
        weights = [acc.get_state_dict(model) for model in models]
        for hook in list(acc._save_model_state_pre_hook.values()):
            hook(models, weights, str(tmp))  # files a hook writes there become part of the checkpoint
        if writer:
            _write_shared_files(acc, tmp, weights, safe_serialization)
        torch.save(_rng_state(acc.step), tmp / f"random_states_{acc.process_index}.pkl")
        if acc._dataloaders:  # per rank: a rank's loaders could stand elsewhere (e.g. uneven iterable streams)
            (tmp / f"overdrive_loaders_{acc.process_index}.json").write_text(
                json.dumps({"format": 1, "loaders": _loader_positions(acc)})
            )
    except Exception as err:
        error = err
    try:
        _agree(acc, error, f"save_state({str(target)!r})")
    except BaseException:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)  # the earlier checkpoint in target stays untouched
        raise

    error = None
    try:
        if writer:
            meta = {"format": 1, "world_size": acc.num_processes, "step": acc.step}
            _commit(tmp, target, token, meta)
            if config.automatic_checkpoint_naming and config.total_limit is not None:
                _rotate(target.parent, config.total_limit, target, _markerless_required(acc))
    except Exception as err:
        error = err
    _agree(acc, error, f"committing {str(target)!r}")
    config.iteration += 1
    logger.info(f"Saved state to {target}")
    return target


# -- loading ----------------------------------------------------------------------------------------------------------


def _match_keys(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add or strip DDP's ``module.`` prefix when only that differs (a checkpoint from another world size)."""
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
    for i, model in enumerate(models):
        path = folder / _model_file(i, True)
        if not path.is_file():
            path = folder / _model_file(i, False)
        if not path.is_file():
            raise CheckpointError(
                f"{str(folder)!r} has no weights for model {i}: expected {_model_file(i, True)!r} or "
                f"{_model_file(i, False)!r}; was it saved with {len(models)} prepared models?"
            )
        plan["models"].append(_check_model_state(model, _load_weights(path), path, strict))
    for i, opt in enumerate(acc._optimizers):
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
    if acc.scaler is not None and (folder / SCALER_NAME).is_file():
        plan["scaler"] = _torch_load(folder / SCALER_NAME)
    elif acc.scaler is not None:
        # Accelerate on CPU runs fp16 as fp32 and writes no scaler.pt; the scaler then keeps its current scale.
        logger.warning(f"load_state: {folder / SCALER_NAME} not found; the fp16 GradScaler keeps its current state")
    rng_path = folder / f"random_states_{acc.process_index}.pkl"
    # As in Accelerate, a rank without an RNG file (the checkpoint had fewer ranks) keeps its current streams.
    plan["rng"] = _torch_load(rng_path, safe_globals=_rng_safe_globals()) if rng_path.is_file() else None
    if plan["rng"] is None:
        logger.warning(f"load_state: {rng_path} not found; this rank keeps its current random states")
    elif not isinstance(plan["rng"], dict):
        raise CheckpointError(f"{str(rng_path)!r} is not a random-state dict")
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
    try:
        saved = json.loads(path.read_text())["loaders"]
        entries = [dict(e) for e in saved]
        for entry in entries:
            for key in ("iteration", "batches_done", "seed"):
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


def _apply_rng(state: dict[str, Any]) -> None:
    random.setstate(state["random_state"])
    if "numpy_random_seed" in state:
        import numpy as np

        np.random.set_state(state["numpy_random_seed"])
    torch.set_rng_state(state["torch_manual_seed"])
    if torch.cuda.is_available() and "torch_cuda_manual_seed" in state:
        torch.cuda.set_rng_state_all(state["torch_cuda_manual_seed"])


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
    if "scaler" in plan:
        acc.scaler.load_state_dict(plan["scaler"])  # type: ignore[union-attr]
    if plan["rng"] is not None:
        _apply_rng(plan["rng"])
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
    if batches is None:  # Accelerate's checkpoint: only a stateful loader knows its batch
        batches = getattr(loader, "_restored_position", None)
    if batches is None:
        logger.warning(f"maybe_resume: {folder} does not record the batch position; resuming at the epoch's start")
    return ResumePoint(folder, int(getattr(loader, "iteration", 0)), int(batches or 0))
