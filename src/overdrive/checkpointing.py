"""Writing weights and objects to disk: ``save_model``'s files, in Accelerate's names and format.

Files are written to a temporary name in the target folder and renamed into place, so a crash never leaves a
half-written file under the final name. safetensors is imported only when used.

Example:
    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> save_model_weights({"w": torch.ones(2)}, d)
    ['model.safetensors']
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "convert_file_size_to_int",
    "save_model_weights",
    "save_object",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def convert_file_size_to_int(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as ``"10GB"`` (10**9) or ``"500MiB"`` (2**20).

    Example:
        >>> convert_file_size_to_int("5MB")
        5000000
    """
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size={size} must be positive")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)\s*", str(size).upper())
    if match is None:
        raise ValueError(f"max_shard_size={size!r} is not a size; use an int of bytes or a string like '10GB' or '500MiB'")
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise ValueError(f"max_shard_size={size!r} must be positive")
    return value


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never a partial one
    finally:
        if tmp.exists():
            tmp.unlink()


def _dedupe_shared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep one name per shared storage (tied weights): safetensors refuses aliased tensors."""
    seen: dict[tuple[Any, int, tuple[int, ...]], str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tuple(tensor.shape)) if tensor.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        out[name] = tensor.detach().contiguous()
    return out


def _shards(state_dict: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        # A tensor larger than the limit gets a shard of its own rather than being split.
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def save_model_weights(
    state_dict: dict[str, torch.Tensor],
    save_directory: str | os.PathLike[str],
    max_shard_size: int | str = "10GB",
    safe_serialization: bool = True,
) -> list[str]:
    """Write ``state_dict`` as ``model.safetensors`` (or ``pytorch_model.bin``), sharded with an index when needed.

    Returns the file names written. Stale shards of an earlier save with the same prefix are removed afterwards.

    Example:
        >>> import tempfile, torch
        >>> save_model_weights({"a": torch.ones(4), "b": torch.ones(4)}, tempfile.mkdtemp(), max_shard_size=16)
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
    """
    directory = Path(save_directory)
    if directory.is_file():
        raise ValueError(f"save_directory={str(directory)!r} is a file; pass a directory path")
    max_bytes = convert_file_size_to_int(max_shard_size)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
    if safe_serialization:
        from safetensors.torch import save_file

        tensors = _dedupe_shared(tensors)
        single, index_name, prefix, ext = SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "model", "safetensors"

        def write(shard: dict[str, torch.Tensor], path: str) -> None:
            save_file(shard, path, metadata={"format": "pt"})
    else:
        single, index_name, prefix, ext = WEIGHTS_NAME, WEIGHTS_INDEX_NAME, "pytorch_model", "bin"

        def write(shard: dict[str, torch.Tensor], path: str) -> None:
            torch.save(shard, path)

    shards = _shards(tensors, max_bytes)
    if len(shards) == 1:
        names = [single]
    else:
        names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    for shard, name in zip(shards, names):
        _atomic_write(directory / name, functools.partial(write, shard))
    written = list(names)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {k: name for shard, name in zip(shards, names) for k in shard},
        }
        _atomic_write(directory / index_name, functools.partial(_write_json, index))
        written.append(index_name)
    _remove_stale(directory, prefix, ext, index_name, set(written))
    return written


def _write_json(obj: Any, path: str) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True))


def _remove_stale(directory: Path, prefix: str, ext: str, index_name: str, keep: set[str]) -> None:
    """Delete weight files of an earlier save that the new one does not overwrite (e.g. more shards before)."""
    pattern = re.compile(rf"{re.escape(prefix)}(-\d{{5}}-of-\d{{5}})?\.{ext}")
    for path in directory.iterdir():
        if path.name in keep:
            continue
        if pattern.fullmatch(path.name) or path.name == index_name:
            path.unlink()


def save_object(obj: Any, f: str | os.PathLike[str], safe_serialization: bool = False) -> None:
    """Save ``obj`` atomically: safetensors for a dict of tensors when asked, ``torch.save`` otherwise.

    Example:
        >>> import tempfile, os, torch
        >>> save_object({"w": torch.ones(1)}, os.path.join(tempfile.mkdtemp(), "w.pt"))
    """
    path = Path(f)
    path.parent.mkdir(parents=True, exist_ok=True)
    if safe_serialization:
        from safetensors.torch import save_file

        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise TypeError("save(..., safe_serialization=True) needs a dict of tensors; use the default torch.save")
        _atomic_write(path, lambda p: save_file(_dedupe_shared(obj), p, metadata={"format": "pt"}))
    else:
        _atomic_write(path, lambda p: torch.save(obj, p))
