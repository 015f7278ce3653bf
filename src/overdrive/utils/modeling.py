"""Sizes, device maps and checkpoint loading for models too big for one device (Accelerate's ``utils.modeling``).

Everything here works on a model whose weights are still on the meta device (built under
:func:`overdrive.init_empty_weights`): sizes come from shapes and dtypes, and checkpoints are read one tensor at a
time (memory-mapped), each tensor going straight to the device the map gives it.

A device map is a dict from module (or tensor) names to a device: a GPU index (``0``), ``"cpu"``, ``"mps"``,
``"disk"`` (offloaded to a folder) or any ``torch.device`` string. The name ``""`` is the whole model.

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(3)])  # 3 x (16 + 4) fp32 numbers = 3 x 80 bytes
    >>> compute_module_sizes(model)[""]
    240
    >>> dict(infer_auto_device_map(model, max_memory={"cpu": 200}))  # 80 bytes stay free to load a layer back
    {'0': 'cpu', '1': 'disk', '2': 'disk'}
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping
from typing import Any, Union

import torch
import torch.nn as nn

from ..checkpointing import SAFE_WEIGHTS_NAME, WEIGHTS_NAME, convert_file_size_to_int as _size_to_int
from .offload import load_offloaded_weight, offload_weight, save_offload_index

logger = logging.getLogger(__name__)

__all__ = [
    "align_module_device",
    "calculate_maximum_sizes",
    "check_device_map",
    "check_tied_parameters_on_same_device",
    "clean_device_map",
    "compute_module_sizes",
    "compute_module_total_buffer_size",
    "dtype_byte_size",
    "find_tied_parameters",
    "get_balanced_memory",
    "get_max_layer_size",
    "get_max_memory",
    "get_non_persistent_buffers",
    "get_state_dict_offloaded_model",
    "has_offloaded_params",
    "infer_auto_device_map",
    "load_checkpoint_in_model",
    "load_offloaded_weights",
    "load_state_dict",
    "named_module_tensors",
    "retie_parameters",
    "set_module_tensor_to_device",
]

Device = Union[int, str, torch.device]
TiedParamsMap = dict[int, dict[Any, torch.Tensor]]

# Non-floating dtypes are never converted by a ``dtype=`` argument (token ids, masks, quantized weights).
_INTEGRAL = ("torch.uint", "torch.int", "torch.bool")


def _is_integral(dtype: torch.dtype) -> bool:
    return str(dtype).startswith(_INTEGRAL)


def _to_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype; use e.g. torch.float16 or 'bfloat16'")
    return value


def _size(value: int | str, what: str) -> int:
    try:
        return _size_to_int(value)
    except ValueError:
        raise ValueError(f"{what}={value!r} is not a size; use an int of bytes or a string like '10GB' or '500MiB'") from None


def dtype_byte_size(dtype: torch.dtype) -> float:
    """Bytes one element of ``dtype`` takes (``bool`` counts 1/8, 4-bit types 1/2).

    Example:
        >>> dtype_byte_size(torch.float16), dtype_byte_size(torch.bool)
        (2, 0.125)
    """
    if dtype == torch.bool:
        return 1 / 8
    name = str(dtype)
    if name.endswith(("int4", "uint4", "float4_e2m1fn_x2")) and "x2" not in name:
        return 1 / 2
    return torch.empty((), dtype=dtype, device="meta").element_size()


def named_module_tensors(
    module: nn.Module, include_buffers: bool = True, recurse: bool = False, remove_non_persistent: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for the parameters, then the buffers, of ``module`` (direct ones unless ``recurse``).

    ``remove_non_persistent`` leaves out buffers that are not in the state dict.

    Example:
        >>> [n for n, _ in named_module_tensors(nn.BatchNorm1d(2))]
        ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    """
    yield from module.named_parameters(recurse=recurse)
    if include_buffers:
        skip = get_non_persistent_buffers(module, recurse=recurse) if remove_non_persistent else set()
        for name, buf in module.named_buffers(recurse=recurse):
            if name not in skip:
                yield name, buf


def get_non_persistent_buffers(module: nn.Module, recurse: bool = False, fqns: bool = False) -> set[str]:
    """Names of the buffers registered with ``persistent=False`` (full dotted names with ``fqns=True``).

    Example:
        >>> m = nn.Module(); m.register_buffer("cache", torch.zeros(1), persistent=False)
        >>> get_non_persistent_buffers(m)
        {'cache'}
    """
    names = set(module._non_persistent_buffers_set)
    if recurse:
        for prefix, sub in module.named_modules():
            if fqns and prefix:
                names |= {f"{prefix}.{b}" for b in sub._non_persistent_buffers_set}
            else:
                names |= set(sub._non_persistent_buffers_set)
    return names


def _resolve(module: nn.Module, tensor_name: str) -> tuple[nn.Module, str]:
    *path, leaf = tensor_name.split(".")
    for part in path:
        child = getattr(module, part, None)
        if not isinstance(child, nn.Module):
            raise ValueError(f"{type(module).__name__} has no submodule {part!r} (looking for tensor {tensor_name!r})")
        module = child
    return module, leaf


def set_module_tensor_to_device(
    module: nn.Module,
    tensor_name: str,
    device: Device,
    value: torch.Tensor | None = None,
    dtype: str | torch.dtype | None = None,
    fp16_statistics: torch.HalfTensor | None = None,
    tied_params_map: TiedParamsMap | None = None,
    non_blocking: bool = False,
    clear_cache: bool = True,
) -> None:
    """Put the parameter or buffer ``tensor_name`` (dotted, from ``module``) on ``device``, optionally with ``value``.

    ``param.to(device)`` makes a new tensor the module does not see; this replaces the module's own entry instead.
    ``value`` is cast to the current tensor's dtype unless ``dtype`` is given (integral values keep theirs). A tensor
    on the meta device needs a ``value`` to go anywhere else. ``tied_params_map`` (data pointer -> device -> tensor)
    lets tied weights share one copy per device. ``fp16_statistics`` (bitsandbytes) is accepted and ignored.

    Example:
        >>> lin = nn.Linear(2, 2, device="meta")
        >>> set_module_tensor_to_device(lin, "weight", "cpu", value=torch.ones(2, 2))
        >>> lin.weight.device, lin.weight.sum().item()
        (device(type='cpu'), 4.0)
    """
    owner, name = _resolve(module, tensor_name)
    if name not in owner._parameters and name not in owner._buffers:
        raise ValueError(f"{type(owner).__name__} has no parameter or buffer named {name!r} ({tensor_name!r})")
    is_buffer = name in owner._buffers
    old = getattr(owner, name)
    if old is None:
        raise ValueError(f"{tensor_name!r} is None in the model; there is nothing to move")

    if tied_params_map is not None:
        # A tied weight already materialised on this device: point at that copy instead of making another.
        for ptr in ((value.data_ptr(),) if value is not None else ()) + (old.data_ptr(),):
            if ptr in tied_params_map and device in tied_params_map[ptr]:
                owner._parameters[name] = tied_params_map[ptr][device]  # type: ignore[assignment]
                return

    target = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    if old.device.type == "meta" and target.type != "meta" and value is None:
        raise ValueError(f"{tensor_name!r} is on the meta device; pass value= to put it on {device}")
    new_dtype = _to_dtype(dtype)
    if value is not None:
        if tuple(old.shape) != tuple(value.shape):
            raise ValueError(
                f"value for {tensor_name!r} has shape {tuple(value.shape)} but the model's tensor has shape "
                f"{tuple(old.shape)}; the checkpoint does not match this model"
            )
        if new_dtype is None:
            value = value.to(old.dtype, non_blocking=non_blocking)
        elif not _is_integral(value.dtype):
            value = value.to(new_dtype, non_blocking=non_blocking)

    with torch.no_grad():
        if value is None:
            new = old.to(target, non_blocking=non_blocking)
            if new_dtype is not None and target.type == "meta" and not _is_integral(old.dtype):
                new = new.to(new_dtype)
        else:
            new = value.to(target, non_blocking=non_blocking)
        if is_buffer:
            owner._buffers[name] = new
        elif value is not None or new.device != old.device or new.dtype != old.dtype:
            param_cls: Any = type(owner._parameters[name])
            param = param_cls(new, requires_grad=old.requires_grad)
            owner._parameters[name] = param
            new = param
    if clear_cache and target.type not in ("cpu", "meta"):
        from .memory import clear_device_cache

        clear_device_cache()
    if tied_params_map is not None:
        for ptr in (old.data_ptr(),) + ((value.data_ptr(),) if value is not None else ()):
            if ptr in tied_params_map and device not in tied_params_map[ptr]:
                tied_params_map[ptr][device] = new
                break


def find_tied_parameters(model: nn.Module, **kwargs: Any) -> list[list[str]]:
    """Groups of parameter names that are the same ``Parameter`` object, each group sorted.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> m[1].weight = m[0].weight
        >>> find_tied_parameters(m)
        [['0.weight', '1.weight']]
    """
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [sorted(names) for names in groups.values() if len(names) > 1]


def retie_parameters(model: nn.Module, tied_params: list[list[str]]) -> None:
    """Make every name of each group in ``tied_params`` point at the group's first parameter not on the meta device.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> retie_parameters(m, [["0.weight", "1.weight"]])
        >>> m[0].weight is m[1].weight
        True
    """
    for group in tied_params:
        chosen = None
        for name in group:
            owner, leaf = _resolve(model, name)
            param = getattr(owner, leaf)
            if param.device.type != "meta":
                chosen = param
                break
        if chosen is None:
            continue
        for name in group:
            owner, leaf = _resolve(model, name)
            setattr(owner, leaf, chosen)


def _device_of(name: str, device_map: Mapping[str, Any]) -> Any:
    probe = name
    while probe not in device_map:
        if probe == "":
            raise ValueError(f"device_map gives no device for {name!r}; add it (or one of its parent modules)")
        probe = probe.rpartition(".")[0]
    return device_map[probe]


def check_tied_parameters_on_same_device(tied_params: list[list[str]], device_map: Mapping[str, Any]) -> None:
    """Warn when the names of a tied group are mapped to different devices (they would be loaded twice).

    Example:
        >>> check_tied_parameters_on_same_device([["a.w", "b.w"]], {"a": "cpu", "b": "cpu"})
    """
    for group in tied_params:
        devices = {name: _device_of(name, device_map) for name in group}
        if len(set(map(str, devices.values()))) > 1:
            logger.warning(f"Tied parameters are on different devices: {devices}; map them to one device")


def compute_module_sizes(
    model: nn.Module,
    dtype: str | torch.device | None = None,
    special_dtypes: dict[str, str | torch.device] | None = None,
    buffers_only: bool = False,
) -> dict[str, int]:
    """Bytes of every submodule (and tensor) of ``model``, keyed by dotted name; ``""`` is the whole model.

    ``dtype`` is the dtype weights will be loaded in (floating tensors only shrink to it, never grow);
    ``special_dtypes`` overrides it per tensor name.

    Example:
        >>> sizes = compute_module_sizes(nn.Linear(4, 2), dtype=torch.float16)
        >>> sizes[""], sizes["weight"], sizes["bias"]
        (20, 16, 4)
    """
    default = _to_dtype(dtype)  # type: ignore[arg-type]
    special = {k: _to_dtype(v) for k, v in (special_dtypes or {}).items()}  # type: ignore[arg-type]
    sizes: dict[str, int] = defaultdict(int)
    tensors = model.named_buffers(recurse=True) if buffers_only else named_module_tensors(model, recurse=True)
    for name, tensor in tensors:
        if name in special:
            per = dtype_byte_size(special[name])  # type: ignore[arg-type]
        elif default is None or _is_integral(tensor.dtype):
            per = dtype_byte_size(tensor.dtype)
        else:
            per = min(dtype_byte_size(default), dtype_byte_size(tensor.dtype))
        size = int(tensor.numel() * per)
        parts = name.split(".")
        for i in range(len(parts) + 1):
            sizes[".".join(parts[:i])] += size
    return sizes


def compute_module_total_buffer_size(
    model: nn.Module, dtype: str | torch.device | None = None, special_dtypes: dict[str, str | torch.device] | None = None
) -> int:
    """Bytes of all buffers of ``model``.

    Example:
        >>> compute_module_total_buffer_size(nn.BatchNorm1d(4))  # 2 x 4 fp32 + one int64 counter
        40
    """
    return compute_module_sizes(model, dtype=dtype, special_dtypes=special_dtypes, buffers_only=True).get("", 0)


def get_max_layer_size(
    modules: list[tuple[str, nn.Module]], module_sizes: dict[str, int], no_split_module_classes: list[str]
) -> tuple[int, list[str]]:
    """The largest "layer" among ``modules`` and the names that reach it.

    A layer is a module without children, a module whose class is in ``no_split_module_classes``, or a bare tensor.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> get_max_layer_size([("", m)], compute_module_sizes(m), [])
        (80, ['0'])
    """
    best, names = 0, []
    todo = list(modules)
    while todo:
        name, module = todo.pop(0)
        children = list(module.named_children()) if isinstance(module, nn.Module) else []
        if not children or type(module).__name__ in no_split_module_classes:
            size = module_sizes[name]
            if size > best:
                best, names = size, [name]
            elif size == best:
                names.append(name)
        else:
            todo = [(f"{name}.{n}" if name else n, c) for n, c in children] + todo
    return best, names


def _available_ram() -> int:
    try:
        import psutil  # optional: the most accurate figure where installed

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


_KNOWN_MEMORY_KEYS = ("mps", "cpu", "disk")


def get_max_memory(max_memory: dict[int | str, int | str] | None = None) -> dict[int | str, int]:
    """Memory budget per device: the free memory of every GPU and the available RAM when ``max_memory`` is None,
    else ``max_memory`` with sizes such as ``"2GB"`` turned into bytes, in device order (GPUs, mps, cpu, disk).

    Keys are GPU indices (ints), ``"mps"``, ``"cpu"`` and ``"disk"``; any other key is an error.

    Example:
        >>> get_max_memory({"cpu": "1KB", 0: 100})
        {0: 100, 'cpu': 1000}
    """
    if max_memory is None:
        found: dict[int | str, int] = {}
        for i in range(torch.cuda.device_count()):
            found[i] = torch.cuda.mem_get_info(i)[0]
        found["mps" if torch.backends.mps.is_available() else "cpu"] = _available_ram()
        return found
    unknown = [k for k in max_memory if not (isinstance(k, int) and not isinstance(k, bool)) and k not in _KNOWN_MEMORY_KEYS]
    if unknown:
        raise ValueError(
            f"max_memory has unknown device(s) {unknown}; keys are GPU indices (0, 1, ...), 'mps', 'cpu' and 'disk'"
        )
    sizes = {k: _size(v, f"max_memory[{k!r}]") if isinstance(v, str) else int(v) for k, v in max_memory.items()}
    gpus: list[int | str] = sorted(k for k in sizes if isinstance(k, int))
    count = torch.cuda.device_count()
    for gpu in gpus:
        if not 0 <= gpu < count:  # type: ignore[operator]
            logger.warning(f"max_memory names GPU {gpu} but this machine has {count}; it will be filled anyway")
    order: list[int | str] = [*gpus, *[k for k in _KNOWN_MEMORY_KEYS if k in sizes]]
    return {k: sizes[k] for k in order}


def clean_device_map(device_map: dict[str, Device], module_name: str = "") -> dict[str, Device]:
    """Merge the entries under ``module_name`` that all go to one device into a single entry (in place, returned).

    Example:
        >>> clean_device_map({"a.0": "cpu", "a.1": "cpu", "b": "disk"})
        {'b': 'disk', 'a': 'cpu'}
    """
    prefix = f"{module_name}." if module_name else ""
    under = [k for k in device_map if k.startswith(prefix)]
    values = [device_map[k] for k in under]
    if len(under) > 1 and len({str(v) for v in values}) == 1:
        for k in under:
            del device_map[k]
        device_map[module_name] = values[0]
    depth = len(module_name.split(".")) + 1 if module_name else 1
    children = {".".join(k.split(".")[:depth]) for k in device_map if k.startswith(prefix) and len(k) > len(module_name)}
    for child in children:
        clean_device_map(device_map, module_name=child)
    return device_map


def load_offloaded_weights(model: nn.Module, index: dict[str, Any] | None, offload_folder: str | os.PathLike[str]) -> None:
    """Load every weight listed in ``index`` from ``offload_folder`` into ``model``, on the CPU (copied, so the
    folder can be deleted afterwards).

    Example:
        >>> import tempfile
        >>> folder, index = tempfile.mkdtemp(), {}
        >>> _ = offload_weight(torch.ones(2), "bias", folder, index)
        >>> lin = nn.Linear(3, 2, device="meta")
        >>> load_offloaded_weights(lin, index, folder)
        >>> lin.bias
        Parameter containing:
        tensor([1., 1.], requires_grad=True)
    """
    for name, info in (index or {}).items():
        file_name = info.get("safetensors_file", f"{name}.dat")
        weight = load_offloaded_weight(os.path.join(os.fspath(offload_folder), file_name), info).clone()
        set_module_tensor_to_device(model, name, "cpu", value=weight)


def _leaves(module_sizes: Mapping[str, int]) -> list[str]:
    has_children = {name.rpartition(".")[0] for name in module_sizes if "." in name}
    return [n for n in module_sizes if n and n not in has_children]


def _no_split_list(no_split_module_classes: list[str] | str | None) -> list[str]:
    if no_split_module_classes is None:
        return []
    if isinstance(no_split_module_classes, str):
        return [no_split_module_classes]
    return list(no_split_module_classes)


def get_balanced_memory(
    model: nn.Module,
    max_memory: dict[int | str, int | str] | None = None,
    no_split_module_classes: list[str] | None = None,
    dtype: str | torch.dtype | None = None,
    special_dtypes: dict[str, str | torch.device] | None = None,
    low_zero: bool = False,
) -> dict[int | str, int]:
    """A ``max_memory`` for :func:`infer_auto_device_map` that spreads the model evenly over the GPUs.

    Each GPU but the last gets the model size / number of GPUs plus room for one layer; with ``low_zero`` GPU 0 gets
    as little as possible (it is left for activations, e.g. generation). Without GPUs the budget is returned as is.

    Example:
        >>> get_balanced_memory(nn.Linear(4, 4), max_memory={"cpu": 1000})
        {'cpu': 1000}
    """
    user_set = max_memory is not None
    budget = get_max_memory(max_memory)
    gpus = sorted(k for k, v in budget.items() if isinstance(k, int) and v > 0)
    if not gpus:
        return budget
    if len(gpus) == 1:
        low_zero = False
        if not user_set:
            budget[gpus[0]] = int(budget[gpus[0]] * 0.9)  # leave 10% for activations and the allocator
    sizes = compute_module_sizes(model, dtype=dtype, special_dtypes=special_dtypes)  # type: ignore[arg-type]
    per_gpu = sizes[""] // (len(gpus) - 1 if low_zero else len(gpus))
    no_split = _no_split_list(no_split_module_classes)
    buffer = 0
    if no_split:
        for name, module in model.named_modules():
            if name and type(module).__name__ in no_split:
                buffer = max(buffer, sizes[name])
    # One "typical" layer of headroom: the mean size of the parents of the leaves.
    without_leaves = {n: v for n, v in sizes.items() if n not in set(_leaves(sizes))}
    parents = _leaves(without_leaves)
    mean = int(sum(without_leaves[n] for n in parents) / max(len(parents), 1))
    per_gpu += int(1.25 * max(buffer, mean))
    for gpu in gpus[:-1]:
        budget[gpu] = min(budget[0] if low_zero and gpu == 0 else per_gpu, budget[gpu])
    if low_zero:
        budget[0] = min(max(0, sizes[""] - sum(budget[g] for g in gpus[1:])), budget[0])
    return budget


def calculate_maximum_sizes(model: nn.Module) -> tuple[int, tuple[int, list[str]]]:
    """The model's total size and its largest layer ``(size, names)``, tied weights counted once.

    Example:
        >>> calculate_maximum_sizes(nn.Sequential(nn.Linear(4, 4)))
        (80, (80, ['0']))
    """
    sizes = compute_module_sizes(model)
    tied = [n for group in find_tied_parameters(model) for n in group[1:]]
    total = sizes[""] - sum(sizes[n] for n in tied if n in sizes)
    largest = get_max_layer_size(list(model.named_children()), sizes, [])
    return total, largest


def _inside(tensor_name: str, entry: str) -> bool:
    return tensor_name == entry or tensor_name.startswith(entry + ".")


def _children_entries(name: str, module: Any) -> list[tuple[str, Any]]:
    if not isinstance(module, nn.Module):
        return []
    parts = (
        list(module.named_parameters(recurse=False))
        + list(module.named_children())
        + list(module.named_buffers(recurse=False))
    )
    return [(f"{name}.{n}" if name else n, v) for n, v in parts]


def infer_auto_device_map(
    model: nn.Module,
    max_memory: dict[int | str, int | str] | None = None,
    no_split_module_classes: list[str] | None = None,
    dtype: str | torch.dtype | None = None,
    special_dtypes: dict[str, str | torch.dtype] | None = None,
    verbose: bool = False,
    clean_result: bool = True,
    offload_buffers: bool = False,
    fallback_allocation: bool = False,
) -> OrderedDict[str, Device]:
    """Place the model's modules on devices in order: each GPU, then the CPU, then the disk, filling each in turn.

    Rules: a device never holds more than its ``max_memory`` budget; the main device (GPU 0, or the CPU without
    GPUs) keeps room for the largest layer not yet placed, to load offloaded layers back during forward; a module
    that does not fit is split into its children unless it is a leaf or its class is in ``no_split_module_classes``;
    tied parameters go to the device of the first module that uses them, together. ``dtype`` is the dtype weights will be loaded in.
    With ``fallback_allocation``, a device that nothing fits on first is given the first module that does fit.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))  # 80 bytes each
        >>> dict(infer_auto_device_map(model, max_memory={"cpu": 200}))  # 80 kept free for a later layer
        {'0': 'cpu', '1': 'disk', '2': 'disk'}
        >>> dict(infer_auto_device_map(model, max_memory={"cpu": 240}))  # the last layer needs no reserve
        {'': 'cpu'}
    """
    budget = get_max_memory(max_memory)
    devices: list[Any] = list(budget) + ([] if "disk" in budget else ["disk"])
    gpus = [d for d in devices if d not in ("cpu", "disk")]
    main_devices = ["mps"] if "mps" in gpus else [gpus[0], "cpu"] if gpus else ["cpu"]
    no_split = _no_split_list(no_split_module_classes)
    sizes = compute_module_sizes(model, dtype=dtype, special_dtypes=special_dtypes)  # type: ignore[arg-type]
    tied = find_tied_parameters(model)

    todo: list[tuple[str, Any]] = _children_entries("", model)
    device_map: OrderedDict[str, Device] = OrderedDict()
    used = dict.fromkeys(devices, 0)
    current = 0

    def modules_left() -> list[tuple[str, Any]]:
        return [(n, m) for n, m in todo if isinstance(m, nn.Module)]

    largest, largest_names = get_max_layer_size(todo, sizes, no_split)
    while todo:
        name, module = todo.pop(0)
        if verbose:
            print(f"Treating module {name}.")
        largest_names = [n for n in largest_names if not _inside(n, name)]
        if not largest_names:
            largest, largest_names = get_max_layer_size(modules_left(), sizes, no_split)
        size = sizes[name]
        # Tensors tied to one inside this entry but living outside it: they must come along.
        outside = [p for g in tied if any(_inside(p, name) for p in g) for p in g if not _inside(p, name)]
        tied_entries: list[tuple[str, Any]] = []
        for p in outside:
            for entry in todo:
                if _inside(p, entry[0]) and entry not in tied_entries:
                    tied_entries.append(entry)
                    break
        size_with_ties = size + sum(sizes[e] - sizes[p] for p in outside for e, _ in tied_entries if _inside(p, e))

        device = devices[current]
        limit = None if device == "disk" else budget[device]
        reserved = 0
        if limit is not None and device in main_devices:
            limit -= largest
            reserved = largest

        if limit is None or used[device] + size_with_ties <= limit:
            if verbose:
                print(f"Putting {name} (+ tied {[e for e, _ in tied_entries]}) on {device}.")
            used[device] += size_with_ties
            device_map[name] = device
            for entry in tied_entries:
                todo.remove(entry)
                device_map[entry[0]] = device
            continue

        if tied_entries and used[device] + size <= limit:
            # The module fits but not with its tied partners: split a partner so that only the tied part follows.
            split = False
            for entry in tied_entries:
                tname, tmod = entry
                if isinstance(tmod, nn.Module) and list(tmod.children()) and type(tmod).__name__ not in no_split:
                    at = todo.index(entry)
                    todo[at:at + 1] = _children_entries(tname, tmod)
                    todo.insert(0, (name, module))
                    largest, largest_names = get_max_layer_size(modules_left(), sizes, no_split)
                    split = True
                    break
            if split:
                continue

        if used[device] + size >= limit:
            children = list(module.named_children()) if isinstance(module, nn.Module) else []
            if children and type(module).__name__ not in no_split:
                if verbose:
                    print(f"Splitting {name}.")
                todo = _children_entries(name, module) + todo
                largest, largest_names = get_max_layer_size(modules_left(), sizes, no_split)
                continue

        if fallback_allocation and used[device] == 0 and device != "disk":
            room = budget[device] - max(largest, size_with_ties)
            found = _first_fitting(todo, sizes, room, no_split, tied)
            if found is not None:
                todo = [found, (name, module)] + _without(todo, found)
                continue

        # Next device; the reserve for the largest layer counts as used on the one we leave.
        used[device] += reserved
        current += 1
        todo.insert(0, (name, module))

    if clean_result:
        device_map = clean_device_map(device_map)  # type: ignore[assignment]
    return device_map


def _first_fitting(
    todo: list[tuple[str, Any]], sizes: Mapping[str, int], room: int, no_split: list[str], tied: list[list[str]]
) -> tuple[str, Any] | None:
    """Breadth-first search of ``todo`` (and their children) for the first entry of at most ``room`` bytes."""
    queue = list(todo)
    while queue:
        name, module = queue.pop(0)
        tied_out = [p for g in tied if any(_inside(p, name) for p in g) for p in g if not _inside(p, name)]
        if not tied_out and sizes[name] <= room:
            return name, module
        if isinstance(module, nn.Module) and list(module.children()) and type(module).__name__ not in no_split:
            queue.extend(_children_entries(name, module))
    return None


def _without(todo: list[tuple[str, Any]], found: tuple[str, Any]) -> list[tuple[str, Any]]:
    """``todo`` minus ``found``: parents of ``found`` are replaced by their other children."""
    out: list[tuple[str, Any]] = []
    for name, module in todo:
        if name == found[0]:
            continue
        if _inside(found[0], name):
            out.extend(_without(_children_entries(name, module), found))
        else:
            out.append((name, module))
    return out


def _valid_device(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    if value in ("disk", "cpu", "meta", "mps"):
        return True
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return False
    return True


def _check_device_values(device_map: Mapping[str, Any]) -> None:
    bad = {k: v for k, v in device_map.items() if not _valid_device(v)}
    if bad:
        raise ValueError(
            f"device_map has unknown device(s) {bad}; use a GPU index (0, 1, ...), 'cpu', 'disk', 'mps' or a "
            "torch.device string such as 'cuda:0'"
        )
    n_cuda = torch.cuda.device_count()
    for key, value in device_map.items():
        dev = torch.device("cuda", value) if isinstance(value, int) else torch.device(value) if value != "disk" else None
        if dev is not None and dev.type == "cuda" and (dev.index or 0) >= n_cuda:
            raise ValueError(
                f"device_map[{key!r}] = {value!r} but this machine has {n_cuda} CUDA device(s); use 'cpu' or 'disk' "
                "for modules that do not fit, or infer_auto_device_map() to build a map for this machine"
            )


def check_device_map(model: nn.Module, device_map: dict[str, Device]) -> None:
    """Raise if ``device_map`` leaves a tensor of ``model`` without a device or names an unknown device; warn about
    keys that match no submodule.

    Example:
        >>> check_device_map(nn.Sequential(nn.Linear(2, 2)), {"0": "cpu"})
        >>> check_device_map(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), {"0": "cpu"})
        Traceback (most recent call last):
        ...
        ValueError: device_map gives no device for 1.weight, 1.bias; ...
    """
    if not isinstance(device_map, Mapping):
        raise TypeError(f"device_map must be a dict of module name -> device, got {type(device_map).__name__}")
    _check_device_values(device_map)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    stray = [k for k in device_map if k and k not in modules and k not in params and k not in dict(model.named_buffers())]
    if stray:
        warnings.warn(f"device_map keys {stray} match no submodule of the model; they are ignored", UserWarning)
    if "" in device_map:
        return
    uncovered = [n for n in model.state_dict() if not any(_inside(n, k) for k in device_map)]
    if uncovered:
        raise ValueError(
            f"device_map gives no device for {', '.join(uncovered)}; map these tensors or one of their parent "
            "modules (the key '' maps the whole model), or use device_map='auto'"
        )


def _safetensors_keys(path: str) -> list[str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        metadata = f.metadata() or {"format": "pt"}
        if metadata.get("format", "pt") not in ("pt", "tf", "flax"):
            raise OSError(f"{path} has format {metadata.get('format')!r} in its metadata, not one of 'pt', 'tf', 'flax'")
        if metadata.get("format", "pt") != "pt":
            raise ValueError(f"{path} was saved from {metadata['format']}; overdrive reads PyTorch ('pt') files")
        return list(f.keys())


def _iter_checkpoint_file(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of one checkpoint file, one at a time and memory-mapped, so a file never has to fit in memory."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        for key in _safetensors_keys(path):
            # One open per tensor: the file's mapping (and the pages read through it) goes away with the tensor,
            # instead of a whole shard staying resident until the last of its tensors is loaded.
            with safe_open(path, framework="pt", device="cpu") as f:
                tensor = f.get_tensor(key)
            yield key, tensor
            del tensor
    else:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        for key in list(state):
            yield key, state.pop(key)  # drop our reference as we go


def load_state_dict(checkpoint_file: str, device_map: dict[str, Device] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of one checkpoint file (safetensors or a torch file), put where ``device_map`` says (CPU for
    ``"disk"`` and unmapped names).

    Example:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save_file({"a.w": torch.ones(1)}, path, metadata={"format": "pt"})
        >>> load_state_dict(path)
        {'a.w': tensor([1.])}
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in _iter_checkpoint_file(str(checkpoint_file)):
        device: Any = "cpu"
        if device_map is not None:
            with contextlib.suppress(ValueError):
                device = _device_of(key, device_map)
        out[key] = tensor if device in ("cpu", "disk") else tensor.to(device)
    return out


def _checkpoint_files(checkpoint: str | os.PathLike[str]) -> list[str]:
    path = os.fspath(checkpoint)
    index_file = None
    if os.path.isfile(path):
        if not path.endswith(".json"):
            return [path]
        index_file = path
    elif os.path.isdir(path):
        names = os.listdir(path)
        for whole in (WEIGHTS_NAME, SAFE_WEIGHTS_NAME):
            if whole in names:
                return [os.path.join(path, whole)]
        indexes = [n for n in names if n.endswith(".index.json")]
        if not indexes:
            raise ValueError(
                f"checkpoint={path!r} holds no {WEIGHTS_NAME}, no {SAFE_WEIGHTS_NAME} and no *.index.json of a sharded "
                "checkpoint"
            )
        if len(indexes) > 1:
            raise ValueError(f"checkpoint={path!r} holds several index files {sorted(indexes)}; keep only one")
        index_file = os.path.join(path, indexes[0])
    else:
        raise ValueError(
            f"checkpoint={path!r} does not exist; pass a weights file, the .index.json of a sharded checkpoint, or a "
            "folder holding either"
        )
    with open(index_file, encoding="utf-8") as f:
        index = json.load(f)
    weight_map = index.get("weight_map", index)
    folder = os.path.dirname(index_file)
    files = [os.path.join(folder, f) for f in sorted(set(weight_map.values()))]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{index_file} lists shard(s) that do not exist: {missing}")
    return files


def _keep_fp32(name: str, keep_in_fp32_modules: list[str] | None) -> bool:
    return any(name == key or name.startswith(key + ".") or f".{key}." in f".{name}" for key in keep_in_fp32_modules or [])


def _mismatch_message(missing: list[str], unexpected: list[str], checkpoint: Any, model: nn.Module) -> str:
    def few(names: list[str]) -> str:
        shown = ", ".join(sorted(names)[:10])
        return shown + (f" (and {len(names) - 10} more)" if len(names) > 10 else "")

    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {few(missing)}")
    if unexpected:
        parts.append(f"in the checkpoint but not in the model: {few(unexpected)}")
    return (
        f"checkpoint {os.fspath(checkpoint)!r} does not match {type(model).__name__}: {'; '.join(parts)}. Check that "
        "the checkpoint was saved from this model class and configuration (key prefixes such as 'module.' or "
        "'model.' must match too)"
    )


def load_checkpoint_in_model(
    model: nn.Module,
    checkpoint: str | os.PathLike[str],
    device_map: dict[str, Device] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    dtype: str | torch.dtype | None = None,
    offload_state_dict: bool = False,
    offload_buffers: bool = False,
    keep_in_fp32_modules: list[str] | None = None,
    offload_8bit_bnb: bool = False,
    strict: bool = False,
    full_state_dict: bool = True,
    broadcast_from_rank0: bool = False,
) -> None:
    """Load a checkpoint into ``model`` tensor by tensor, each tensor going to the device ``device_map`` gives it.

    ``checkpoint`` is a weights file (``.safetensors`` or a torch file), the ``.index.json`` of a sharded checkpoint,
    or a folder holding ``model.safetensors``, ``pytorch_model.bin`` or one ``*.index.json``. Tensors mapped to
    ``"disk"`` are written to ``offload_folder`` and left on the meta device in the model (run the model through
    :func:`overdrive.dispatch_model`). ``dtype`` converts floating tensors (``keep_in_fp32_modules`` are kept in
    float32 when it is float16). ``offload_state_dict`` parks CPU-bound tensors in a temporary folder until the end.
    Without ``device_map`` each tensor goes to the device its model tensor is on (the CPU for meta tensors).

    Key mismatches: with ``strict=True`` any missing or unexpected key is an error naming them; otherwise unexpected
    keys are skipped with a warning, and missing keys are an error only when the model would be left with meta
    tensors (it could not run). ``full_state_dict``/``broadcast_from_rank0`` (distributed loading) and
    ``offload_8bit_bnb`` (bitsandbytes) are not supported by overdrive.

    Example:
        >>> import tempfile
        >>> from overdrive.checkpointing import save_model_weights
        >>> folder = tempfile.mkdtemp()
        >>> _ = save_model_weights(nn.Linear(2, 2).state_dict(), folder)
        >>> model = nn.Linear(2, 2, device="meta")
        >>> load_checkpoint_in_model(model, folder)
        >>> model.weight.device
        device(type='cpu')
    """
    if offload_8bit_bnb:
        raise ValueError("offload_8bit_bnb=True needs bitsandbytes, which overdrive does not support; leave it False")
    if broadcast_from_rank0:
        raise ValueError(
            "broadcast_from_rank0=True is not supported by overdrive's load_checkpoint_in_model; load on every rank, or "
            "use torch.distributed.checkpoint.state_dict.set_model_state_dict for sharded models"
        )
    if device_map is not None:
        check_device_map(model, device_map)
        if "disk" in device_map.values() and offload_folder is None:
            disk = [k for k, v in device_map.items() if v == "disk"]
            raise ValueError(f"device_map sends {disk} to 'disk'; pass offload_folder= (where to write those weights)")
    new_dtype_all = _to_dtype(dtype)
    files = _checkpoint_files(checkpoint)  # errors about the checkpoint's path come before any work
    tied = find_tied_parameters(model)
    if device_map is not None:
        check_tied_parameters_on_same_device(tied, device_map)
        if "disk" in device_map.values():
            os.makedirs(os.fspath(offload_folder), exist_ok=True)  # type: ignore[arg-type]

    model_keys = set(model.state_dict())
    buffer_names = {n for n, _ in model.named_buffers()}
    current_device = {n: t.device for n, t in model.state_dict().items()}
    offload_index: dict[str, Any] = {}
    parked_folder = tempfile.mkdtemp() if offload_state_dict else None
    parked_index: dict[str, Any] = {}
    seen: set[str] = set()
    unexpected: list[str] = []
    try:
        for path in files:
            for key, tensor in _iter_checkpoint_file(path):
                if key not in model_keys:
                    unexpected.append(key)
                    continue
                seen.add(key)
                target: Any
                if device_map is None:
                    target = current_device[key] if current_device[key].type != "meta" else torch.device("cpu")
                else:
                    target = _device_of(key, device_map)
                new_dtype = new_dtype_all
                if new_dtype is not None and tensor.is_floating_point():
                    if new_dtype == torch.float16 and _keep_fp32(key, keep_in_fp32_modules):
                        new_dtype = torch.float32
                else:
                    new_dtype = None
                if target == "disk" and (offload_buffers or key not in buffer_names):
                    value = tensor if new_dtype is None else tensor.to(new_dtype)
                    set_module_tensor_to_device(model, key, "meta", dtype=value.dtype)
                    offload_weight(value, key, offload_folder, index=offload_index)  # type: ignore[arg-type]
                elif target == "cpu" and parked_folder is not None:
                    value = tensor if new_dtype is None else tensor.to(new_dtype)
                    set_module_tensor_to_device(model, key, "meta", dtype=value.dtype)
                    offload_weight(value, key, parked_folder, index=parked_index)
                else:
                    if target == "disk":  # a buffer of a disk module: it stays with the hook, on the CPU
                        target = "cpu"
                    before = tensor.data_ptr()
                    set_module_tensor_to_device(model, key, target, value=tensor, dtype=new_dtype)
                    owner, leaf = _resolve(model, key)
                    placed = getattr(owner, leaf)
                    if placed.data_ptr() == before and placed.device.type == "cpu":
                        # Still the file's mapping: copy, so the model never depends on the checkpoint file staying put.
                        set_module_tensor_to_device(model, key, "cpu", value=tensor.clone())
                del tensor
            gc.collect()
        missing = sorted(model_keys - seen)
        if strict and (missing or unexpected):
            raise ValueError(_mismatch_message(missing, unexpected, checkpoint, model))
        still_meta = [k for k in missing if model.state_dict()[k].device.type == "meta" and k not in offload_index]
        tied_names = {n for g in tied for n in g}
        still_meta = [k for k in still_meta if k not in tied_names]  # filled by retying below
        if still_meta:
            raise ValueError(_mismatch_message(still_meta, unexpected, checkpoint, model))
        if unexpected:
            logger.warning(
                f"Weights in {os.fspath(checkpoint)!r} not used by {type(model).__name__}: {sorted(unexpected)}"
            )
        save_offload_index(offload_index, offload_folder)  # type: ignore[arg-type]
        if parked_folder is not None:
            load_offloaded_weights(model, parked_index, parked_folder)
    finally:
        if parked_folder is not None:
            shutil.rmtree(parked_folder, ignore_errors=True)
    retie_parameters(model, tied)


def has_offloaded_params(module: nn.Module) -> bool:
    """Whether ``module`` has an :class:`overdrive.hooks.AlignDevicesHook` that offloads its weights.

    Example:
        >>> has_offloaded_params(nn.Linear(2, 2))
        False
    """
    from ..hooks import AlignDevicesHook  # hooks imports this module

    hook = getattr(module, "_hf_hook", None)
    return isinstance(hook, AlignDevicesHook) and hook.offload


@contextlib.contextmanager
def align_module_device(module: nn.Module, execution_device: torch.device | None = None) -> Iterator[None]:
    """Within the block, ``module``'s direct weights are materialised (offloaded ones loaded, others moved to
    ``execution_device``); afterwards they go back where they were.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> with align_module_device(lin, torch.device("meta")):
        ...     print(lin.weight.device)
        meta
        >>> lin.weight.device
        device(type='cpu')
    """
    hook: Any = getattr(module, "_hf_hook", None)
    if has_offloaded_params(module):
        original = hook.execution_device
        if execution_device is not None:
            hook.execution_device = execution_device
        try:
            hook.pre_forward(module)
            yield
        finally:
            hook.post_forward(module, None)
            hook.execution_device = original
    elif execution_device is not None:
        saved = {n: p for n, p in module.named_parameters(recurse=False)}
        try:
            for name in saved:
                set_module_tensor_to_device(module, name, execution_device)
            yield
        finally:
            for name, param in saved.items():
                module._parameters[name] = param  # the very objects we started with
    else:
        yield


def get_state_dict_offloaded_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a dispatched model on the CPU, loading offloaded modules one at a time.

    Example:
        >>> sorted(get_state_dict_offloaded_model(nn.Sequential(nn.Linear(2, 2))))
        ['0.bias', '0.weight']
    """
    out: dict[str, torch.Tensor] = {}
    for name, sub in model.named_modules():
        with align_module_device(sub, torch.device("cpu") if has_offloaded_params(sub) else None):
            for key, tensor in sub.state_dict(keep_vars=False).items():
                full = f"{name}.{key}" if name else key
                if "." in key or full in out:
                    continue  # each tensor is taken from its own module
                if tensor.device.type != "meta":
                    out[full] = tensor.detach().to("cpu").clone()
    return out

