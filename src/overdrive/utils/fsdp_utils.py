"""FSDP helpers at Accelerate's path (``accelerate.utils.fsdp_utils``): consolidate a sharded checkpoint.

Example:
    >>> import tempfile
    >>> merge_fsdp_weights(tempfile.mkdtemp(), tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    ValueError: merge_fsdp_weights: ... holds no sharded model checkpoint (a folder with a '.metadata' file, or a save_state folder with pytorch_model_fsdp_0/); pass the folder save_state wrote
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = ["merge_fsdp_weights"]


def _shard_folder(checkpoint_dir: Path) -> Path:
    """The ``torch.distributed.checkpoint`` folder of model 0: ``checkpoint_dir`` itself or its model sub-folder."""
    for candidate in (checkpoint_dir, checkpoint_dir / "pytorch_model_fsdp_0"):
        if (candidate / ".metadata").is_file():
            return candidate
    raise ValueError(
        f"merge_fsdp_weights: {str(checkpoint_dir)!r} holds no sharded model checkpoint (a folder with a '.metadata' "
        "file, or a save_state folder with pytorch_model_fsdp_0/); pass the folder save_state wrote"
    )


def merge_fsdp_weights(
    checkpoint_dir: str | os.PathLike[str], output_path: str | os.PathLike[str], safe_serialization: bool = True,
    remove_checkpoint_dir: bool = False,
) -> list[str]:
    """Read a sharded FSDP model checkpoint (any number of shards, no process group needed) and write the full
    weights to ``output_path`` as ``model.safetensors`` (``pytorch_model.bin`` without ``safe_serialization``),
    sharded with an index above 10 GB. Returns the file names written.

    ``checkpoint_dir`` is a ``save_state`` folder (its ``pytorch_model_fsdp_0/`` is read) or that sub-folder.
    ``remove_checkpoint_dir`` deletes the shards after the merged weights are on disk.

    Example:
        >>> merge_fsdp_weights("no/such/folder", "out")
        Traceback (most recent call last):
        ...
        ValueError: merge_fsdp_weights: 'no/such/folder' holds no sharded model checkpoint (a folder with a '.metadata' file, or a save_state folder with pytorch_model_fsdp_0/); pass the folder save_state wrote
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from ..checkpointing import save_model_weights

    source = _shard_folder(Path(checkpoint_dir))
    target = Path(output_path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"merge_fsdp_weights: output_path {str(target)!r} is a file; pass a folder")
    target.mkdir(parents=True, exist_ok=True)
    # torch's own converter reads every shard into one full state dict in this process.
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        full_path = Path(scratch) / "full.pt"
        dcp_to_torch_save(str(source), str(full_path))
        state = torch.load(full_path, map_location="cpu", weights_only=True)
    weights = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"merge_fsdp_weights: {str(source)!r} does not hold a model state dict of tensors")
    written = save_model_weights(weights, target, safe_serialization=safe_serialization)
    if remove_checkpoint_dir:
        shutil.rmtree(source)
    return written
