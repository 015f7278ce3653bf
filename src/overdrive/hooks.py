"""Hooks around a module's ``forward`` that receive its keyword arguments too (Accelerate's ``accelerate.hooks``).

:func:`add_hook_to_module` replaces ``module.forward`` with a wrapper that calls ``hook.pre_forward``, the original
forward (kept as ``module._old_forward``) and ``hook.post_forward``; :func:`remove_hook_from_module` puts the
original back, leaving the module as it was. The hook lives in ``module._hf_hook`` (the attribute other libraries
look for). :class:`AlignDevicesHook` is what makes a dispatched model run: it moves inputs to the module's execution
device and, for offloaded modules, loads the weights before forward and drops them (back to the meta device) after.

Example:
    >>> import torch, torch.nn as nn
    >>> class Double(ModelHook):
    ...     def post_forward(self, module, output):
    ...         return output * 2
    >>> lin = nn.Linear(2, 2)
    >>> x = torch.ones(1, 2)
    >>> _ = add_hook_to_module(lin, Double())
    >>> torch.equal(lin(x), 2 * lin._old_forward(x))
    True
    >>> _ = remove_hook_from_module(lin)
    >>> hasattr(lin, "_hf_hook"), "forward" in vars(lin)
    (False, False)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Union

import torch
import torch.nn as nn

from .utils.modeling import get_non_persistent_buffers, named_module_tensors, set_module_tensor_to_device
from .utils.offload import PrefixedDataset
from .utils.operations import find_device, send_to_device

__all__ = [
    "AlignDevicesHook",
    "CpuOffload",
    "ModelHook",
    "SequentialHook",
    "UserCpuOffloadHook",
    "add_hook_to_module",
    "attach_align_device_hook",
    "attach_align_device_hook_on_blocks",
    "attach_execution_device_hook",
    "remove_hook_from_module",
    "remove_hook_from_submodules",
]

Device = Union[int, str, torch.device]
TiedParamsMap = dict[int, dict[Any, torch.Tensor]]

# Methods dispatch_model wraps on the instance (to refuse moving an offloaded model); removal takes them away.
_ADDED_ATTRIBUTES = ("to", "cuda", "npu", "xpu", "mlu", "sdaa", "musa")


class ModelHook:
    """Callbacks run around a module's forward; subclass and override what you need. Each default does nothing.

    ``no_grad = True`` runs the wrapped forward under ``torch.no_grad()``.

    Example:
        >>> hook = ModelHook()
        >>> hook.pre_forward(None, 1, a=2)
        ((1,), {'a': 2})
    """

    no_grad = False

    def init_hook(self, module: nn.Module) -> nn.Module:
        """Called when the hook is attached; returns the module."""
        return module

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Called before forward; returns the ``(args, kwargs)`` forward will get."""
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        """Called after forward; returns what the call returns."""
        return output

    def detach_hook(self, module: nn.Module) -> nn.Module:
        """Called when the hook is removed; returns the module."""
        return module


class SequentialHook(ModelHook):
    """Several hooks run one after the other, in the order given, for every event.

    Example:
        >>> class Add(ModelHook):
        ...     def __init__(self, n): self.n = n
        ...     def post_forward(self, module, output): return output * 10 + self.n
        >>> SequentialHook(Add(1), Add(2)).post_forward(None, 0)
        12
    """

    def __init__(self, *hooks: ModelHook) -> None:
        self.hooks = hooks

    def init_hook(self, module: nn.Module) -> nn.Module:
        for hook in self.hooks:
            module = hook.init_hook(module)
        return module

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        for hook in self.hooks:
            args, kwargs = hook.pre_forward(module, *args, **kwargs)
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        for hook in self.hooks:
            output = hook.post_forward(module, output)
        return output

    def detach_hook(self, module: nn.Module) -> nn.Module:
        for hook in self.hooks:
            module = hook.detach_hook(module)
        return module


def _hooked_forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    hook: ModelHook = module._hf_hook  # type: ignore[assignment]
    args, kwargs = hook.pre_forward(module, *args, **kwargs)
    if hook.no_grad:
        with torch.no_grad():
            output = module._old_forward(*args, **kwargs)  # type: ignore[operator]
    else:
        output = module._old_forward(*args, **kwargs)  # type: ignore[operator]
    return hook.post_forward(module, output)


def _is_graph_module_impl(module: nn.Module) -> bool:
    # fx GraphModules generate their class per instance; an instance-level forward would freeze the graph's code.
    return "GraphModuleImpl" in str(type(module))


def add_hook_to_module(module: nn.Module, hook: ModelHook, append: bool = False) -> nn.Module:
    """Run ``hook`` around ``module``'s forward (in place; the module is returned).

    A hook already there is replaced, or with ``append=True`` chained before the new one in a :class:`SequentialHook`.

    Example:
        >>> import torch.nn as nn
        >>> lin = add_hook_to_module(nn.Linear(2, 2), ModelHook())
        >>> type(lin._hf_hook).__name__
        'ModelHook'
    """
    target: Any = module  # attributes set here are not declared on nn.Module
    if append and getattr(target, "_hf_hook", None) is not None:
        previous = target._hf_hook
        remove_hook_from_module(target)
        hook = SequentialHook(previous, hook)

    if hasattr(target, "_hf_hook") and hasattr(target, "_old_forward"):
        old_forward = target._old_forward  # replacing a hook: keep wrapping the true original
    else:
        old_forward = target.forward
        target._old_forward = old_forward

    target = hook.init_hook(target)
    target._hf_hook = hook
    wrapped = functools.update_wrapper(functools.partial(_hooked_forward, target), old_forward)
    if _is_graph_module_impl(target):
        target.__class__.forward = wrapped
    else:
        target.forward = wrapped
    return target


def remove_hook_from_module(module: nn.Module, recurse: bool = False) -> nn.Module:
    """Detach the hook of ``module`` (and of all its submodules with ``recurse=True``) and restore its forward.

    A forward that was the class's own method is restored by deleting the instance attribute, so the module ends up
    exactly as before the hook was added.

    Example:
        >>> import torch.nn as nn
        >>> lin = add_hook_to_module(nn.Linear(2, 2), ModelHook())
        >>> _ = remove_hook_from_module(lin)
        >>> lin.forward.__func__ is nn.Linear.forward
        True
    """
    target: Any = module
    if hasattr(target, "_hf_hook"):
        target._hf_hook.detach_hook(target)
        delattr(target, "_hf_hook")
    if hasattr(target, "_old_forward"):
        original = target._old_forward
        if _is_graph_module_impl(target):
            target.__class__.forward = original
        elif getattr(original, "__self__", None) is target and getattr(original, "__func__", None) is getattr(
            type(target), "forward", None
        ):
            target.__dict__.pop("forward", None)  # it was the class method: no instance attribute left behind
        else:
            target.forward = original
        delattr(target, "_old_forward")
    for attr in _ADDED_ATTRIBUTES:
        module.__dict__.pop(attr, None)
    if recurse:
        for child in module.children():
            remove_hook_from_module(child, recurse)
    return module


class AlignDevicesHook(ModelHook):
    """Put a module's inputs (and, unless offloaded, its weights) on ``execution_device``; with ``offload=True`` load
    the weights from ``weights_map`` before forward and send them back to the meta device after.

    Args:
        execution_device: where inputs and weights go for the forward pass.
        offload: keep the weights out of the module between calls (loaded from ``weights_map``).
        io_same_device: return outputs on the device the inputs came from.
        weights_map: name -> tensor for offloaded weights (a dict, or a lazy loader such as
            :class:`overdrive.utils.OffloadedWeightsLoader`); defaults to a CPU copy of the module's weights.
        offload_buffers: offload buffers too (otherwise they stay on ``execution_device``).
        place_submodules: treat the tensors of all submodules as this module's (one hook for a whole block).
        skip_keys: keys of dict inputs/outputs that are never moved.
        tied_params_map: data pointer -> device -> tensor, so tied weights are loaded once per device.

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = nn.Linear(2, 2)
        >>> _ = add_hook_to_module(lin, AlignDevicesHook(execution_device="cpu", offload=True))
        >>> lin.weight.device.type  # only materialised during forward
        'meta'
        >>> lin(torch.ones(1, 2)).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        execution_device: Device | None = None,
        offload: bool = False,
        io_same_device: bool = False,
        weights_map: Mapping[str, Any] | None = None,
        offload_buffers: bool = False,
        place_submodules: bool = False,
        skip_keys: str | list[str] | None = None,
        tied_params_map: TiedParamsMap | None = None,
    ) -> None:
        self.execution_device = execution_device
        self.offload = offload
        self.io_same_device = io_same_device
        self.weights_map = weights_map
        self.offload_buffers = offload_buffers
        self.place_submodules = place_submodules
        self.skip_keys = skip_keys
        self.input_device: torch.device | None = None
        self.param_original_devices: dict[str, torch.device] = {}
        self.buffer_original_devices: dict[str, torch.device] = {}
        self.original_devices: dict[str, torch.device] = {}
        self.tied_params_names: set[str] = set()
        self.tied_params_map = tied_params_map
        self.tied_pointers_to_remove: set[tuple[int, Any]] = set()

    def __repr__(self) -> str:
        return (
            f"AlignDevicesHook(execution_device={self.execution_device}, offload={self.offload}, "
            f"io_same_device={self.io_same_device}, offload_buffers={self.offload_buffers}, "
            f"place_submodules={self.place_submodules}, skip_keys={self.skip_keys!r})"
        )

    def _offloaded(self, module: nn.Module) -> list[str]:
        return [
            name
            for name, _ in named_module_tensors(
                module, include_buffers=self.offload_buffers, recurse=self.place_submodules, remove_non_persistent=True
            )
        ]

    def init_hook(self, module: nn.Module) -> nn.Module:
        if self.execution_device is not None and torch.device(self.execution_device).type == "meta":
            self.tied_params_map = None  # every meta tensor has data pointer 0: ties cannot be told apart
        if not self.offload:
            if self.execution_device is not None:
                for name, _ in list(named_module_tensors(module, recurse=self.place_submodules)):
                    set_module_tensor_to_device(module, name, self.execution_device, tied_params_map=self.tied_params_map)
            return module
        self.original_devices = {n: t.device for n, t in named_module_tensors(module, recurse=self.place_submodules)}
        if self.weights_map is None:
            self.weights_map = {
                n: t.to("cpu")
                for n, t in named_module_tensors(
                    module, include_buffers=self.offload_buffers, recurse=self.place_submodules
                )
            }
        offloaded = dict(
            named_module_tensors(
                module, include_buffers=self.offload_buffers, recurse=self.place_submodules, remove_non_persistent=True
            )
        )
        for name, tensor in offloaded.items():
            if self.tied_params_map is not None and tensor.data_ptr() in self.tied_params_map:
                self.tied_params_names.add(name)
            set_module_tensor_to_device(module, name, "meta")
        if self.execution_device is not None:
            # Buffers that are not offloaded (all of them, or the non-persistent ones) live on the execution device.
            stay = (
                [n for n, _ in module.named_buffers(recurse=self.place_submodules)]
                if not self.offload_buffers
                else list(get_non_persistent_buffers(module, recurse=self.place_submodules))
            )
            for name in stay:
                set_module_tensor_to_device(module, name, self.execution_device, tied_params_map=self.tied_params_map)
        return module

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.io_same_device:
            self.input_device = find_device([args, kwargs])
        if self.offload:
            assert self.weights_map is not None  # set in init_hook
            self.tied_pointers_to_remove = set()
            for name in self._offloaded(module):
                value = self.weights_map[name]
                if self.tied_params_map is not None:
                    ptr = value.data_ptr()
                    if name in self.tied_params_names and ptr not in self.tied_params_map:
                        self.tied_params_map[ptr] = {}
                    if ptr in self.tied_params_map and self.execution_device not in self.tied_params_map[ptr]:
                        self.tied_pointers_to_remove.add((ptr, self.execution_device))
                set_module_tensor_to_device(
                    module, name, self.execution_device, value=value, tied_params_map=self.tied_params_map  # type: ignore[arg-type]
                )
        if self.execution_device is None:
            return args, kwargs
        return (
            send_to_device(args, self.execution_device),
            send_to_device(kwargs, self.execution_device, skip_keys=self.skip_keys),
        )

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        if self.offload:
            for name in self._offloaded(module):
                set_module_tensor_to_device(module, name, "meta")
            # Forget the per-call copies of tied weights so that their memory can be freed.
            for ptr, device in self.tied_pointers_to_remove:
                if self.tied_params_map is not None:
                    self.tied_params_map.get(ptr, {}).pop(device, None)
            self.tied_pointers_to_remove = set()
        if self.io_same_device and self.input_device is not None:
            output = send_to_device(output, self.input_device, skip_keys=self.skip_keys)
        return output

    def detach_hook(self, module: nn.Module) -> nn.Module:
        if self.offload and self.weights_map is not None:
            for name, device in self.original_devices.items():
                if device.type != "meta" and name in self.weights_map:
                    set_module_tensor_to_device(module, name, device, value=self.weights_map[name])
        return module


def attach_execution_device_hook(
    module: nn.Module,
    execution_device: Device,
    skip_keys: str | list[str] | None = None,
    preload_module_classes: list[str] | None = None,
    tied_params_map: TiedParamsMap | None = None,
) -> None:
    """Give every submodule with weights and no hook yet an :class:`AlignDevicesHook` that only moves its inputs to
    ``execution_device`` (stopping below modules whose class is in ``preload_module_classes``).

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> attach_execution_device_hook(m, "cpu")
        >>> type(m[0]._hf_hook).__name__
        'AlignDevicesHook'
    """
    if not hasattr(module, "_hf_hook") and len(module.state_dict()) > 0:
        add_hook_to_module(module, AlignDevicesHook(execution_device, skip_keys=skip_keys, tied_params_map=tied_params_map))
    if preload_module_classes is not None and type(module).__name__ in preload_module_classes:
        return
    for child in module.children():
        attach_execution_device_hook(child, execution_device, skip_keys, preload_module_classes, tied_params_map)


def attach_align_device_hook(
    module: nn.Module,
    execution_device: torch.device | None = None,
    offload: bool = False,
    weights_map: Mapping[str, Any] | None = None,
    offload_buffers: bool = False,
    module_name: str = "",
    skip_keys: str | list[str] | None = None,
    preload_module_classes: list[str] | None = None,
    tied_params_map: TiedParamsMap | None = None,
) -> None:
    """Attach an :class:`AlignDevicesHook` to every submodule of ``module`` that has direct weights (chained after
    any hook already there). ``weights_map`` is keyed by names relative to the model; ``module_name`` is the name of
    ``module`` in it. Modules of a class in ``preload_module_classes`` get one hook loading all their weights at once.

    Example:
        >>> import torch, torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> attach_align_device_hook(m, execution_device="cpu", offload=True)
        >>> sorted(n for n, s in m.named_modules() if hasattr(s, "_hf_hook"))
        ['0', '2']
    """
    full_offload = bool(offload and preload_module_classes and type(module).__name__ in preload_module_classes)
    if any(True for _ in named_module_tensors(module)) or full_offload:
        prefixed = PrefixedDataset(weights_map, f"{module_name}." if module_name else "") if weights_map is not None else None
        hook = AlignDevicesHook(
            execution_device=execution_device,
            offload=offload,
            weights_map=prefixed,
            offload_buffers=offload_buffers,
            place_submodules=full_offload,
            skip_keys=skip_keys,
            tied_params_map=tied_params_map,
        )
        add_hook_to_module(module, hook, append=True)
    if full_offload:
        return
    for child_name, child in module.named_children():
        attach_align_device_hook(
            child,
            execution_device=execution_device,
            offload=offload,
            weights_map=weights_map,
            offload_buffers=offload_buffers,
            module_name=f"{module_name}.{child_name}" if module_name else child_name,
            skip_keys=skip_keys,
            preload_module_classes=preload_module_classes,
            tied_params_map=tied_params_map,
        )


def remove_hook_from_submodules(module: nn.Module) -> None:
    """Remove the hooks of ``module`` and of all its submodules.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> attach_align_device_hook(m, execution_device="cpu")
        >>> remove_hook_from_submodules(m)
        >>> hasattr(m[0], "_hf_hook")
        False
    """
    remove_hook_from_module(module, recurse=True)


def attach_align_device_hook_on_blocks(
    module: nn.Module,
    execution_device: torch.device | dict[str, torch.device] | None = None,
    offload: bool | dict[str, bool] = False,
    weights_map: Mapping[str, Any] | None = None,
    offload_buffers: bool = False,
    module_name: str = "",
    skip_keys: str | list[str] | None = None,
    preload_module_classes: list[str] | None = None,
    tied_params_map: TiedParamsMap | None = None,
) -> None:
    """Attach hooks per block of a device map: ``execution_device`` and ``offload`` are one value for the whole
    module or dicts keyed by the block names of a device map (``""`` the model itself).

    A block that is not offloaded gets one hook that places all its weights on its device; an offloaded block gets a
    hook per submodule that loads its weights from ``weights_map`` during forward. The top module returns outputs
    on the device of its inputs.

    Example:
        >>> import torch, torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> attach_align_device_hook_on_blocks(m, {"": "cpu", "0": "cpu", "1": "cpu"}, {"0": False, "1": True})
        >>> m[0].weight.device.type, m[1].weight.device.type
        ('cpu', 'meta')
    """
    if not isinstance(execution_device, Mapping) and not isinstance(offload, dict):
        if not offload:
            add_hook_to_module(
                module,
                AlignDevicesHook(
                    execution_device=execution_device,
                    io_same_device=True,
                    skip_keys=skip_keys,
                    place_submodules=True,
                    tied_params_map=tied_params_map,
                ),
            )
        else:
            attach_align_device_hook(
                module,
                execution_device=execution_device,
                offload=True,
                weights_map=weights_map,
                offload_buffers=offload_buffers,
                module_name=module_name,
                skip_keys=skip_keys,
                tied_params_map=tied_params_map,
            )
        return

    devices: Mapping[str, Any] = (
        execution_device if isinstance(execution_device, Mapping) else dict.fromkeys(offload, execution_device)  # type: ignore[arg-type]
    )
    offloads: Mapping[str, bool] = offload if isinstance(offload, Mapping) else dict.fromkeys(devices, offload)

    if module_name in devices and module_name in offloads and not offloads[module_name]:
        add_hook_to_module(
            module,
            AlignDevicesHook(
                execution_device=devices[module_name],
                offload_buffers=offload_buffers,
                io_same_device=(module_name == ""),
                place_submodules=True,
                skip_keys=skip_keys,
                tied_params_map=tied_params_map,
            ),
        )
        attach_execution_device_hook(module, devices[module_name], skip_keys=skip_keys, tied_params_map=tied_params_map)
    elif module_name in devices and module_name in offloads:
        attach_align_device_hook(
            module,
            execution_device=devices[module_name],
            offload=True,
            weights_map=weights_map,
            offload_buffers=offload_buffers,
            module_name=module_name,
            skip_keys=skip_keys,
            preload_module_classes=preload_module_classes,
            tied_params_map=tied_params_map,
        )
        if not hasattr(module, "_hf_hook"):
            add_hook_to_module(
                module,
                AlignDevicesHook(
                    execution_device=devices[module_name],
                    io_same_device=(module_name == ""),
                    skip_keys=skip_keys,
                    tied_params_map=tied_params_map,
                ),
            )
        attach_execution_device_hook(
            module,
            devices[module_name],
            skip_keys=skip_keys,
            preload_module_classes=preload_module_classes,
            tied_params_map=tied_params_map,
        )
    elif module_name == "":
        add_hook_to_module(
            module,
            AlignDevicesHook(
                execution_device=devices.get(""), io_same_device=True, skip_keys=skip_keys, tied_params_map=tied_params_map
            ),
        )

    for child_name, child in module.named_children():
        attach_align_device_hook_on_blocks(
            child,
            execution_device=devices,  # type: ignore[arg-type]
            offload=dict(offloads),
            weights_map=weights_map,
            offload_buffers=offload_buffers,
            module_name=f"{module_name}.{child_name}" if module_name else child_name,
            skip_keys=skip_keys,
            preload_module_classes=preload_module_classes,
            tied_params_map=tied_params_map,
        )


class CpuOffload(ModelHook):
    """Keep a model on the CPU until its forward runs, then move it to ``execution_device`` and leave it there (call
    ``init_hook`` again, or :meth:`UserCpuOffloadHook.offload`, to send it back). ``prev_module_hook`` is offloaded
    just before this model runs (pipelines of models).

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = add_hook_to_module(nn.Linear(2, 2), CpuOffload(execution_device="cpu"))
        >>> lin(torch.ones(1, 2)).device
        device(type='cpu')
    """

    def __init__(
        self, execution_device: str | int | torch.device | None = None, prev_module_hook: UserCpuOffloadHook | None = None
    ) -> None:
        self.prev_module_hook = prev_module_hook
        if execution_device is None:
            from .state import PartialState  # state imports utils; import it only when needed

            execution_device = PartialState().default_device
        self.execution_device = execution_device

    def init_hook(self, module: nn.Module) -> nn.Module:
        return module.to("cpu")

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if isinstance(self.prev_module_hook, UserCpuOffloadHook):
            previous = next(self.prev_module_hook.model.parameters(), None)
            if previous is not None and previous.device.type != "cpu":
                self.prev_module_hook.offload()
                from .utils.memory import clear_device_cache

                clear_device_cache()
        first = next(module.parameters(), None)
        target = torch.device(self.execution_device) if not isinstance(self.execution_device, int) else torch.device(
            "cuda", self.execution_device
        )
        if first is not None and first.device == target:
            return args, kwargs
        module.to(target)
        return send_to_device(args, target), send_to_device(kwargs, target)


class UserCpuOffloadHook:
    """What :func:`overdrive.cpu_offload_with_hook` returns: ``offload()`` sends the model back to the CPU,
    ``remove()`` takes the hook away.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(2, 2)
        >>> hook = CpuOffload(execution_device="cpu")
        >>> user = UserCpuOffloadHook(add_hook_to_module(lin, hook), hook)
        >>> user.remove(); hasattr(lin, "_hf_hook")
        False
    """

    def __init__(self, model: nn.Module, hook: ModelHook) -> None:
        self.model = model
        self.hook = hook

    def offload(self) -> None:
        self.hook.init_hook(self.model)

    def remove(self) -> None:
        remove_hook_from_module(self.model)
