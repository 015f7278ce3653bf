"""Run models bigger than a device, or than memory: meta-device init, device maps, CPU and disk offload.

The usual path, as with Accelerate::

    with init_empty_weights():            # shapes only, no memory
        model = MyModel(config)
    model = load_checkpoint_and_dispatch(  # each weight read once, straight to where the map puts it
        model, "checkpoint_folder", device_map="auto", max_memory={0: "10GB", "cpu": "30GB"},
        no_split_module_classes=["Block"], offload_folder="offload")
    model(inputs)                          # offloaded weights are loaded per module during forward

Example:
    >>> import torch, torch.nn as nn
    >>> with init_empty_weights():
    ...     model = nn.Linear(10_000, 10_000)  # 400 MB of fp32 weights, none allocated
    >>> model.weight.device
    device(type='meta')
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, Union

import torch
import torch.nn as nn

from .hooks import (
    AlignDevicesHook,
    CpuOffload,
    UserCpuOffloadHook,
    add_hook_to_module,
    attach_align_device_hook,
    attach_align_device_hook_on_blocks,
)
from .utils.modeling import (
    check_device_map,
    find_tied_parameters,
    get_balanced_memory,
    infer_auto_device_map,
    load_checkpoint_in_model,
    retie_parameters,
)
from .utils.offload import OffloadedWeightsLoader, extract_submodules_state_dict
from .utils.offload import offload_state_dict as _offload_state_dict

logger = logging.getLogger(__name__)

__all__ = [
    "cpu_offload",
    "cpu_offload_with_hook",
    "disk_offload",
    "dispatch_model",
    "init_empty_weights",
    "init_on_device",
    "load_checkpoint_and_dispatch",
]

Device = Union[int, str, torch.device]
_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _include_buffers_default() -> bool:
    # Accelerate's documented switch; read here because it only concerns these two context managers.
    return os.environ.get("ACCELERATE_INIT_INCLUDE_BUFFERS", "").strip().lower() in ("1", "true", "yes", "on", "y")


@contextlib.contextmanager
def init_empty_weights(include_buffers: bool | None = None) -> Iterator[None]:
    """Within the block, new modules get their parameters (and buffers, with ``include_buffers=True``) on the meta
    device: shapes and dtypes without memory. Load weights afterwards with :func:`load_checkpoint_and_dispatch`.

    ``include_buffers`` defaults to the ``ACCELERATE_INIT_INCLUDE_BUFFERS`` environment variable (off).

    Example:
        >>> import torch.nn as nn
        >>> with init_empty_weights():
        ...     layer = nn.BatchNorm1d(4)
        >>> layer.weight.is_meta, layer.running_mean.is_meta
        (True, False)
    """
    with init_on_device(torch.device("meta"), include_buffers=include_buffers):
        yield


@contextlib.contextmanager
def init_on_device(device: torch.device, include_buffers: bool | None = None) -> Iterator[None]:
    """Within the block, parameters of new modules are created on ``device`` (buffers too with ``include_buffers``).

    Example:
        >>> import torch, torch.nn as nn
        >>> with init_on_device(torch.device("meta")):
        ...     layer = nn.Linear(2, 2)
        >>> layer.weight.device
        device(type='meta')
    """
    if include_buffers is None:
        include_buffers = _include_buffers_default()
    if include_buffers:
        with torch.device(device):  # every tensor created in the block
            yield
        return

    original = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        registered = module._parameters[name]
        # Already there (e.g. a weight tied to one made in this block): keep the very object, so ties survive.
        if registered is not None and registered.device != torch.device(device):
            extra = dict(registered.__dict__)  # attributes set on the parameter (e.g. by a library) survive the move
            moved = type(registered)(registered.to(device), requires_grad=registered.requires_grad)
            moved.__dict__.update(extra)
            module._parameters[name] = moved

    setattr(nn.Module, "register_parameter", register_parameter)  # noqa: B010 (patched for the block only)
    try:
        yield
    finally:
        setattr(nn.Module, "register_parameter", original)  # noqa: B010


def _first_device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def cpu_offload(
    model: nn.Module,
    execution_device: torch.device | None = None,
    offload_buffers: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
    preload_module_classes: list[str] | None = None,
) -> nn.Module:
    """Keep one CPU copy of the weights (``state_dict``, default: the model's own) and load each module's weights to
    ``execution_device`` only during its forward. Outputs come back on the inputs' device.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> expected = model(torch.ones(1, 2))
        >>> model = cpu_offload(model, execution_device=torch.device("cpu"))
        >>> torch.equal(model(torch.ones(1, 2)), expected)
        True
    """
    if execution_device is None:
        execution_device = _first_device(model)
    if state_dict is None:
        state_dict = {name: tensor.to("cpu") for name, tensor in model.state_dict().items()}
    add_hook_to_module(model, AlignDevicesHook(io_same_device=True), append=True)
    attach_align_device_hook(
        model,
        execution_device=execution_device,
        offload=True,
        offload_buffers=offload_buffers,
        weights_map=state_dict,
        preload_module_classes=preload_module_classes,
    )
    return model


def cpu_offload_with_hook(
    model: nn.Module,
    execution_device: int | str | torch.device | None = None,
    prev_module_hook: UserCpuOffloadHook | None = None,
) -> tuple[nn.Module, UserCpuOffloadHook]:
    """Keep ``model`` on the CPU until it runs; it then moves to ``execution_device`` (default: this process's
    device) and stays there until the returned hook's ``offload()``. ``prev_module_hook`` is offloaded when this model
    starts (pipelines where one model runs after another).

    Example:
        >>> import torch, torch.nn as nn
        >>> model, hook = cpu_offload_with_hook(nn.Linear(2, 2), execution_device="cpu")
        >>> model(torch.ones(1, 2)).shape
        torch.Size([1, 2])
        >>> hook.offload(); hook.remove()
    """
    hook = CpuOffload(execution_device=execution_device, prev_module_hook=prev_module_hook)
    add_hook_to_module(model, hook, append=True)
    return model, UserCpuOffloadHook(model, hook)


def disk_offload(
    model: nn.Module,
    offload_dir: str | os.PathLike[str],
    execution_device: torch.device | None = None,
    offload_buffers: bool = False,
    preload_module_classes: list[str] | None = None,
) -> nn.Module:
    """Write the weights to ``offload_dir`` (unless it already holds an offload index) and read each module's weights
    from there, memory-mapped, only during its forward.

    Example:
        >>> import tempfile, torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> expected = model(torch.ones(1, 2))
        >>> model = disk_offload(model, tempfile.mkdtemp(), execution_device=torch.device("cpu"))
        >>> model[0].weight.device.type, torch.equal(model(torch.ones(1, 2)), expected)
        ('meta', True)
    """
    folder = os.fspath(offload_dir)
    if not os.path.isfile(os.path.join(folder, "index.json")):
        _offload_state_dict(folder, model.state_dict())
    if execution_device is None:
        execution_device = _first_device(model)
    add_hook_to_module(model, AlignDevicesHook(io_same_device=True), append=True)
    attach_align_device_hook(
        model,
        execution_device=execution_device,
        offload=True,
        offload_buffers=offload_buffers,
        weights_map=OffloadedWeightsLoader(save_folder=folder),
        preload_module_classes=preload_module_classes,
    )
    return model


def _refuse_moves(method: Callable[..., Any], model: nn.Module) -> Callable[..., Any]:
    """Wrap ``model.to``/``.cuda``: moving a dispatched model would undo the map; with offloaded weights it is an error."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if any(p.device.type == "meta" for p in model.parameters()):
            raise RuntimeError(
                "this model was dispatched with modules offloaded to the CPU or disk, so it cannot be moved; call "
                "overdrive.hooks.remove_hook_from_submodules(model) and reload it to place it differently"
            )
        logger.warning("Moving a model dispatched with a device map; its hooks still move inputs to the mapped devices")
        return method(*args, **kwargs)

    return wrapper


def dispatch_model(
    model: nn.Module,
    device_map: dict[str, Device],
    main_device: torch.device | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    offload_dir: str | os.PathLike[str] | None = None,
    offload_index: dict[str, str] | None = None,
    offload_buffers: bool = False,
    skip_keys: str | list[str] | None = None,
    preload_module_classes: list[str] | None = None,
    force_hooks: bool = False,
) -> nn.Module:
    """Place ``model`` as ``device_map`` says and attach the hooks that make it run across those devices.

    With one device (and no ``"disk"``, no ``force_hooks``) the model is simply moved there. Otherwise every block
    gets an :class:`overdrive.hooks.AlignDevicesHook`: blocks on a device are moved there; blocks on ``"disk"`` (and on
    ``"cpu"`` when the main device is a GPU) are offloaded and loaded during their forward. ``main_device`` (default:
    the first mapped device that is not ``"cpu"``/``"disk"``, else the CPU) runs the offloaded blocks. Disk weights
    come from ``offload_dir`` (written there from the model if its index is missing) or ``offload_index``.
    The map is stored as ``model.hf_device_map``.

    Example:
        >>> import tempfile, torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> expected = model(torch.ones(1, 2))
        >>> model = dispatch_model(model, {"0": "cpu", "1": "disk"}, offload_dir=tempfile.mkdtemp())
        >>> model[1].weight.device.type, torch.equal(model(torch.ones(1, 2)), expected)
        ('meta', True)
    """
    check_device_map(model, device_map)  # before anything is moved or written
    devices = set(device_map.values())
    if len(devices) > 1 or "disk" in devices or force_hooks:
        disk_modules = [name for name, dev in device_map.items() if dev == "disk"]
        if disk_modules and offload_dir is None and offload_index is None:
            raise ValueError(
                f"device_map sends {disk_modules} to 'disk'; pass offload_dir= (a folder for their weights) or "
                "offload_index="
            )
        if main_device is None:
            on_devices = [d for d in device_map.values() if d not in ("cpu", "disk")]
            main_device = on_devices[0] if on_devices else "cpu"  # type: ignore[assignment]
        if main_device != "cpu":
            cpu_modules = [name for name, dev in device_map.items() if dev == "cpu"]
            if state_dict is None and cpu_modules:
                state_dict = extract_submodules_state_dict(model.state_dict(), cpu_modules)
        if disk_modules and offload_index is None:
            folder = os.fspath(offload_dir)  # type: ignore[arg-type]
            if not os.path.isfile(os.path.join(folder, "index.json")):
                _offload_state_dict(folder, extract_submodules_state_dict(model.state_dict(), disk_modules))

        execution_device: dict[str, Any] = {
            name: main_device if dev in ("cpu", "disk") else dev for name, dev in device_map.items()
        }
        execution_device[""] = main_device
        # Without a GPU the CPU is where modules run, so only the disk counts as offloaded.
        offloaded_kinds = ("disk",) if main_device in ("cpu", "mps") or str(main_device) in ("cpu", "mps") else ("cpu", "disk")
        offload = {name: dev in offloaded_kinds for name, dev in device_map.items()}
        save_folder = offload_dir if disk_modules else None
        weights_map = None
        if state_dict is not None or save_folder is not None or offload_index is not None:
            weights_map = OffloadedWeightsLoader(
                state_dict=state_dict,
                save_folder=save_folder,
                index=offload_index,
                device=main_device if offload_index is not None else None,
            )
        tied = find_tied_parameters(model)
        # One shared copy per device of each tied weight that is materialised; keyed by its current data pointer.
        tied_params_map: dict[int, dict[Any, torch.Tensor]] = {}
        for group in tied:
            for name in group:
                param = model.get_parameter(name)
                if param.device.type != "meta":
                    tied_params_map[param.data_ptr()] = {}
        attach_align_device_hook_on_blocks(
            model,
            execution_device=execution_device,
            offload=offload,
            offload_buffers=offload_buffers,
            weights_map=weights_map,
            skip_keys=skip_keys,
            preload_module_classes=preload_module_classes,
            tied_params_map=tied_params_map,
        )
        retie_parameters(model, tied)  # attaching hooks replaces parameters, which unties them
        model.to = _refuse_moves(model.to, model)  # type: ignore[method-assign]
        model.cuda = _refuse_moves(model.cuda, model)  # type: ignore[method-assign]
    else:
        only = next(iter(devices))
        model.to("cuda:%d" % only if isinstance(only, int) else only)
    setattr(model, "hf_device_map", dict(device_map))  # noqa: B010 (read by transformers and users)
    return model


def load_checkpoint_and_dispatch(
    model: nn.Module,
    checkpoint: str | os.PathLike[str],
    device_map: str | dict[str, int | str | torch.device] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    no_split_module_classes: list[str] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    offload_buffers: bool = False,
    dtype: str | torch.dtype | None = None,
    offload_state_dict: bool | None = None,
    skip_keys: str | list[str] | None = None,
    preload_module_classes: list[str] | None = None,
    force_hooks: bool = False,
    strict: bool = False,
    full_state_dict: bool = True,
    broadcast_from_rank0: bool = False,
) -> nn.Module:
    """Load ``checkpoint`` into ``model`` (usually built under :func:`init_empty_weights`) and dispatch it.

    ``device_map`` is a dict, or ``"auto"``/``"balanced"``/``"balanced_low_0"`` (spread over the GPUs within
    ``max_memory``) or ``"sequential"`` (fill GPUs in order), computed by
    :func:`overdrive.utils.infer_auto_device_map`; with None the weights are only loaded (no hooks).
    ``offload_folder`` receives the weights mapped to ``"disk"``. See :func:`overdrive.utils.load_checkpoint_in_model`
    for the checkpoint forms, ``dtype`` and ``strict``.

    Example:
        >>> import tempfile, torch, torch.nn as nn
        >>> from overdrive.checkpointing import save_model_weights
        >>> folder = tempfile.mkdtemp()
        >>> reference = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> _ = save_model_weights(reference.state_dict(), folder, max_shard_size=30)  # several shards + index
        >>> with init_empty_weights():
        ...     model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> model = load_checkpoint_and_dispatch(model, folder, device_map={"0": "cpu", "1": "disk"},
        ...                                      offload_folder=tempfile.mkdtemp())
        >>> torch.equal(model(torch.ones(1, 2)), reference(torch.ones(1, 2)))
        True
    """
    if isinstance(device_map, str):
        if device_map not in _DEVICE_MAP_STRATEGIES:
            raise ValueError(f"device_map={device_map!r} is not one of {_DEVICE_MAP_STRATEGIES}; or pass a dict")
        if device_map != "sequential":
            max_memory = get_balanced_memory(  # type: ignore[assignment]
                model,
                max_memory=max_memory,
                no_split_module_classes=no_split_module_classes,
                dtype=dtype,
                low_zero=(device_map == "balanced_low_0"),
            )
        device_map = infer_auto_device_map(
            model,
            max_memory=max_memory,
            no_split_module_classes=no_split_module_classes,
            dtype=dtype,
            offload_buffers=offload_buffers,
        )
    if device_map is not None:
        check_device_map(model, device_map)  # type: ignore[arg-type]
    if offload_state_dict is None and device_map is not None and "disk" in device_map.values():
        offload_state_dict = True
    load_checkpoint_in_model(
        model,
        checkpoint,
        device_map=device_map,  # type: ignore[arg-type]
        offload_folder=offload_folder,
        dtype=dtype,
        offload_state_dict=bool(offload_state_dict),
        offload_buffers=offload_buffers,
        strict=strict,
        full_state_dict=full_state_dict,
        broadcast_from_rank0=broadcast_from_rank0,
    )
    if device_map is None:
        return model
    return dispatch_model(
        model,
        device_map=device_map,  # type: ignore[arg-type]
        offload_dir=offload_folder,
        offload_buffers=offload_buffers,
        skip_keys=skip_keys,
        preload_module_classes=preload_module_classes,
        force_hooks=force_hooks,
    )
