"""The offload folder: weights written to disk one file each and read back memory-mapped, on first use.

Layout of a folder (``index.json`` plus one file per weight)::

    index.json                   {"<name>": {"dtype": "float32", "shape": [4, 4],
                                             "safetensors_file": "<name>.safetensors", "weight_name": "<name>"}}
    <name>.safetensors           one tensor, in the safetensors format

A read opens the weight's file with ``safetensors.safe_open``, which maps the file instead of reading it: pages are
loaded when the forward pass touches them and the mapping goes away when the returned tensor is dropped, so an
offloaded weight costs memory only while it is in use. Folders written by Accelerate (raw ``<name>.dat`` files,
index entries with only ``dtype`` and ``shape``) are read too, also memory-mapped. safetensors is imported when a
weight is written or read, never at import time.

Example:
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> offload_state_dict(folder, {"w": torch.arange(4.0)})
    >>> OffloadedWeightsLoader(save_folder=folder)["w"]
    tensor([0., 1., 2., 3.])
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "OffloadedWeightsLoader",
    "PrefixedDataset",
    "extract_submodules_state_dict",
    "load_offloaded_weight",
    "offload_state_dict",
    "offload_weight",
    "save_offload_index",
]

INDEX_NAME = "index.json"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} in an offload index is not a torch dtype (e.g. 'float32', 'bfloat16')")
    return dtype


def offload_weight(
    weight: torch.Tensor, weight_name: str, offload_folder: str | os.PathLike[str], index: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Write ``weight`` to ``offload_folder/<weight_name>.safetensors``; record it in ``index`` (returned) if given.

    The index is not written to disk here: call :func:`save_offload_index` once all weights are written.

    Example:
        >>> import tempfile, torch
        >>> offload_weight(torch.zeros(2, 3), "layer.weight", tempfile.mkdtemp(), index={})["layer.weight"]["shape"]
        [2, 3]
    """
    from safetensors.torch import save_file

    file_name = f"{weight_name}.safetensors"
    # safetensors refuses views into larger storages and non-contiguous tensors; a compact copy is what we store.
    tensor = weight.detach().to("cpu").contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    save_file({weight_name: tensor}, os.path.join(os.fspath(offload_folder), file_name), metadata={"format": "pt"})
    if index is not None:
        index[weight_name] = {
            "dtype": _dtype_name(tensor.dtype),
            "shape": list(tensor.shape),
            "safetensors_file": file_name,
            "weight_name": weight_name,
        }
    return index


def _read_safetensors(path: str, key: str, device: Any = None) -> torch.Tensor:
    from safetensors import safe_open

    # safe_open maps the file: the returned tensor's pages are read when touched and released when it is freed.
    with safe_open(path, framework="pt", device="cpu") as f:
        tensor = f.get_tensor(key)
    return tensor if device is None or torch.device(device) == tensor.device else tensor.to(device)


def load_offloaded_weight(weight_file: str | os.PathLike[str], weight_info: Mapping[str, Any]) -> torch.Tensor:
    """Read one offloaded weight, memory-mapped: ``weight_file`` is its ``.safetensors`` file or a raw ``.dat`` file.

    ``weight_info`` is the weight's entry in the folder index (``dtype`` and ``shape``; ``weight_name`` for a
    safetensors file holding a differently named tensor).

    Example:
        >>> import tempfile, os, torch
        >>> folder = tempfile.mkdtemp()
        >>> info = offload_weight(torch.ones(2), "b", folder, index={})["b"]
        >>> load_offloaded_weight(os.path.join(folder, "b.safetensors"), info)
        tensor([1., 1.])
    """
    path = os.fspath(weight_file)
    if path.endswith(".safetensors"):
        key = weight_info.get("weight_name")
        if key is None:
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                keys = list(f.keys())
            if len(keys) != 1:
                raise ValueError(f"{path} holds {len(keys)} tensors; name the one to read with 'weight_name'")
            key = keys[0]
        tensor = _read_safetensors(path, key)
        if "dtype" in weight_info and _dtype_name(tensor.dtype) != weight_info["dtype"]:
            tensor = tensor.to(_torch_dtype(weight_info["dtype"]))
        return tensor
    # A raw file (Accelerate's layout): the bytes of the tensor, 0-d tensors stored as one element.
    shape = tuple(weight_info["shape"])
    dtype = _torch_dtype(weight_info["dtype"])
    numel = 1
    for dim in shape:
        numel *= dim
    flat = torch.from_file(path, shared=False, size=max(numel, 1), dtype=dtype)  # private, lazily read mapping
    return flat[0] if shape == () else flat.view(shape)


def save_offload_index(index: dict[str, Any] | None, offload_folder: str | os.PathLike[str]) -> None:
    """Merge ``index`` into ``offload_folder/index.json`` (created if missing); nothing happens for an empty index.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> save_offload_index({"w": {"dtype": "float32", "shape": [1]}}, folder)
        >>> os.listdir(folder)
        ['index.json']
    """
    if not index:
        return
    path = os.path.join(os.fspath(offload_folder), INDEX_NAME)
    current: dict[str, Any] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            current = json.load(f)
    current.update(index)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(current, f, indent=2)
    os.replace(tmp, path)  # a reader never sees a half-written index


def offload_state_dict(save_dir: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write every tensor of ``state_dict`` to the offload folder ``save_dir`` and update its ``index.json``.

    Example:
        >>> import tempfile, torch
        >>> folder = tempfile.mkdtemp()
        >>> offload_state_dict(folder, {"a": torch.ones(1), "b": torch.zeros(1)})
        >>> sorted(OffloadedWeightsLoader(save_folder=folder))
        ['a', 'b']
    """
    os.makedirs(save_dir, exist_ok=True)
    index: dict[str, Any] = {}
    for name, tensor in state_dict.items():
        offload_weight(tensor, name, save_dir, index=index)
    save_offload_index(index, save_dir)


class PrefixedDataset(Mapping[str, Any]):
    """A read-only view of ``dataset`` whose keys are looked up with ``prefix`` in front.

    Example:
        >>> view = PrefixedDataset({"block.weight": 1, "other": 2}, "block.")
        >>> view["weight"], list(view)
        (1, ['block.weight'])
    """

    def __init__(self, dataset: Mapping[str, Any], prefix: str) -> None:
        self.dataset = dataset
        self.prefix = prefix

    def __getitem__(self, key: str) -> Any:
        return self.dataset[f"{self.prefix}{key}"]

    def __iter__(self) -> Iterator[str]:
        # Accelerate iterates the full keys (with the prefix); kept for code that relies on it.
        return iter([key for key in self.dataset if key.startswith(self.prefix)])

    def __len__(self) -> int:
        return len(self.dataset)


class OffloadedWeightsLoader(Mapping[str, torch.Tensor]):
    """A mapping from weight names to tensors kept in a ``state_dict`` (in memory) or in an offload folder (on disk).

    In-memory entries win over the folder's. Folder entries are read on each lookup, memory-mapped; drop the returned
    tensor to release it. ``index`` defaults to ``save_folder/index.json``; an entry with ``safetensors_file`` points
    at a safetensors file (relative paths are taken from ``save_folder``), one without at ``<name>.dat``.
    ``device`` is where safetensors-backed tensors are placed (default: CPU).

    Example:
        >>> import tempfile, torch
        >>> folder = tempfile.mkdtemp()
        >>> offload_state_dict(folder, {"on_disk": torch.ones(2)})
        >>> loader = OffloadedWeightsLoader(state_dict={"in_ram": torch.zeros(1)}, save_folder=folder)
        >>> sorted(loader), loader["on_disk"]
        (['in_ram', 'on_disk'], tensor([1., 1.]))
    """

    def __init__(
        self,
        state_dict: dict[str, torch.Tensor] | None = None,
        save_folder: str | os.PathLike[str] | None = None,
        index: Mapping[str, Any] | None = None,
        device: Any = None,
    ) -> None:
        if state_dict is None and save_folder is None and index is None:
            raise ValueError(
                "OffloadedWeightsLoader needs weights: pass state_dict=, save_folder= (a folder with index.json) or "
                "index="
            )
        self.state_dict = {} if state_dict is None else state_dict
        self.save_folder = None if save_folder is None else os.fspath(save_folder)
        if index is None and self.save_folder is not None:
            path = os.path.join(self.save_folder, INDEX_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"save_folder={self.save_folder!r} has no {INDEX_NAME}; write it with offload_state_dict() first"
                )
            with open(path, encoding="utf-8") as f:
                index = json.load(f)
        self.index: Mapping[str, Any] = {} if index is None else index
        self.all_keys = list(self.state_dict)
        self.all_keys.extend(key for key in self.index if key not in self.state_dict)
        self.device = device

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.state_dict:
            return self.state_dict[key]
        if key not in self.index:
            raise KeyError(key)
        info = self.index[key]
        st_file = info.get("safetensors_file")
        if st_file is not None:
            if not os.path.isabs(st_file) and self.save_folder is not None:
                st_file = os.path.join(self.save_folder, st_file)
            tensor = _read_safetensors(st_file, info.get("weight_name", key))
            if "dtype" in info and _dtype_name(tensor.dtype) != info["dtype"]:
                tensor = tensor.to(_torch_dtype(info["dtype"]))
            if self.device is not None and tensor.device != torch.device(self.device):
                tensor = tensor.to(self.device)
            return tensor
        if self.save_folder is None:
            raise KeyError(f"{key!r} is stored as a raw file but the loader has no save_folder to read it from")
        return load_offloaded_weight(os.path.join(self.save_folder, f"{key}.dat"), info)

    def __iter__(self) -> Iterator[str]:
        return iter(self.all_keys)

    def __len__(self) -> int:
        return len(self.all_keys)


def extract_submodules_state_dict(
    state_dict: Mapping[str, torch.Tensor], submodule_names: list[str]
) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` that belong to the named submodules (``h.1`` takes ``h.1.*``, not ``h.10.*``).

    Example:
        >>> sorted(extract_submodules_state_dict({"h.1.w": 1, "h.10.w": 2, "h.1": 3}, ["h.1"]))
        ['h.1', 'h.1.w']
    """
    out: dict[str, torch.Tensor] = {}
    for module_name in submodule_names:
        out.update({k: v for k, v in state_dict.items() if k == module_name or k.startswith(module_name + ".")})
    return out
