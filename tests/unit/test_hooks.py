"""overdrive.hooks: adding and removing hooks restores a module exactly; hooks compose; offload hooks give the
same outputs as the plain module."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import torch.nn as nn

from overdrive.hooks import (
    CpuOffload,
    ModelHook,
    SequentialHook,
    UserCpuOffloadHook,
    add_hook_to_module,
    attach_align_device_hook,
    attach_align_device_hook_on_blocks,
    remove_hook_from_module,
    remove_hook_from_submodules,
)


class Scale(ModelHook):
    """Multiplies the input by ``a`` and adds ``b`` to the output, and logs its events."""

    def __init__(self, a: float, b: float, log: list[str]) -> None:
        self.a, self.b, self.log = a, b, log

    def init_hook(self, module: nn.Module) -> nn.Module:
        self.log.append(f"init{self.a}")
        return module

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (args[0] * self.a,), kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        return output + self.b

    def detach_hook(self, module: nn.Module) -> nn.Module:
        self.log.append(f"detach{self.a}")
        return module


def _snapshot(module: nn.Module) -> tuple[set[str], dict[str, torch.Tensor]]:
    return set(vars(module)), {k: v.clone() for k, v in module.state_dict().items()}


def test_add_then_remove_restores_the_module_exactly() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    plain = lin(x)
    keys, state = _snapshot(lin)
    log: list[str] = []
    add_hook_to_module(lin, Scale(2.0, 1.0, log))
    assert lin._old_forward.__func__ is nn.Linear.forward  # the original, bound to the module
    assert lin.forward.__wrapped__ == lin._old_forward and lin.forward.__name__ == "forward"
    assert torch.equal(lin(x), lin._old_forward(2 * x) + 1)
    remove_hook_from_module(lin)
    assert log == ["init2.0", "detach2.0"]
    assert set(vars(lin)) == keys  # no _hf_hook, _old_forward or instance-level forward left behind
    assert lin.forward.__func__ is nn.Linear.forward
    assert all(torch.equal(lin.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(lin(x), plain)


def test_an_instance_forward_is_put_back() -> None:
    lin = nn.Linear(2, 2)

    def custom(x: torch.Tensor) -> torch.Tensor:
        return x * 0

    lin.forward = custom  # type: ignore[method-assign]
    add_hook_to_module(lin, ModelHook())
    remove_hook_from_module(lin)
    assert lin.forward is custom


def test_hooks_compose_in_order_and_replace_without_append() -> None:
    lin = nn.Linear(2, 2)
    x = torch.ones(1, 2)
    log: list[str] = []
    add_hook_to_module(lin, Scale(2.0, 1.0, log))
    add_hook_to_module(lin, Scale(3.0, 10.0, log), append=True)
    assert isinstance(lin._hf_hook, SequentialHook)
    # pre: x*2 then *3; post: +1 then +10
    assert torch.equal(lin(x), lin._old_forward(6 * x) + 11)
    assert lin._old_forward.__func__ is nn.Linear.forward  # still the true original, not the first wrapper
    add_hook_to_module(lin, Scale(5.0, 0.0, log))  # no append: replaces
    assert torch.equal(lin(x), lin._old_forward(5 * x))
    remove_hook_from_module(lin)
    assert "forward" not in vars(lin) and not hasattr(lin, "_hf_hook")


def test_no_grad_hook_and_recursive_removal() -> None:
    class NoGrad(ModelHook):
        no_grad = True

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    add_hook_to_module(model[0], NoGrad())
    add_hook_to_module(model[1], ModelHook())
    assert not model[0](torch.ones(1, 2)).requires_grad
    remove_hook_from_module(model, recurse=True)
    assert not any(hasattr(m, "_hf_hook") or "forward" in vars(m) for m in model.modules())


def test_align_devices_hook_offload_and_detach() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    x = torch.randn(5, 3)
    expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attach_align_device_hook(model, execution_device=torch.device("cpu"), offload=True)
    assert model[0].weight.device.type == "meta" and model[2].running_mean.device.type == "cpu"  # buffers stay
    assert torch.equal(model(x), expected)
    assert model[3].weight.device.type == "meta"  # back to meta after forward
    remove_hook_from_submodules(model)  # detach_hook puts the weights back
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(model(x), expected)


def test_attach_on_blocks_with_a_map() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    x = torch.randn(2, 3)
    expected = model(x)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    devices = {"": "cpu", "0": "cpu", "1": "cpu", "2": "cpu"}
    attach_align_device_hook_on_blocks(model, devices, {"0": False, "1": True, "2": True}, weights_map=weights)
    assert [m.weight.device.type for m in model] == ["cpu", "meta", "meta"]
    assert torch.equal(model(x), expected)
    remove_hook_from_submodules(model)
    assert torch.equal(model(x), expected)


def test_cpu_offload_hook_and_user_hook() -> None:
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    x = torch.ones(1, 2)
    expected = second(first(x))
    h1 = CpuOffload(execution_device="cpu")
    add_hook_to_module(first, h1)
    user1 = UserCpuOffloadHook(first, h1)
    add_hook_to_module(second, CpuOffload(execution_device="cpu", prev_module_hook=user1))
    assert torch.equal(second(first(x)), expected)
    user1.remove()
    assert not hasattr(first, "_hf_hook")
    assert CpuOffload().execution_device == torch.device("cpu")  # default: this process's device


HOOK_NAMES = ["ModelHook", "SequentialHook", "add_hook_to_module", "remove_hook_from_module",
              "remove_hook_from_submodules", "AlignDevicesHook", "CpuOffload", "UserCpuOffloadHook",
              "attach_align_device_hook", "attach_align_device_hook_on_blocks", "attach_execution_device_hook"]
HOOK_METHODS = {"ModelHook": ["init_hook", "pre_forward", "post_forward", "detach_hook"],
                "UserCpuOffloadHook": ["offload", "remove"]}


def _params(fn: Any) -> list[tuple[str, str, Any]]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_signatures_match_accelerate(name: str) -> None:
    acc_hooks = pytest.importorskip("accelerate.hooks")
    import overdrive.hooks as od_hooks

    ours, theirs = getattr(od_hooks, name), getattr(acc_hooks, name)
    if inspect.isclass(ours):
        if "__init__" in vars(theirs):
            assert _params(ours.__init__) == _params(theirs.__init__)
        for method in HOOK_METHODS.get(name, []):
            assert _params(getattr(ours, method)) == _params(getattr(theirs, method))
    else:
        assert _params(ours) == _params(theirs)
