"""DeepSpeed config translation against Accelerate 1.15 for the same inputs, and the plugin's bad-input errors.

Accelerate's side is its own ``DeepSpeedPlugin`` (fields / env / hf_ds_config), ``set_mixed_precision`` (what its
AcceleratorState does) and ``deepspeed_config_process`` with the values its ``_prepare_deepspeed`` passes (written out
here per case). overdrive's side is :func:`overdrive.utils.deepspeed.finalize_config`, the function its DeepSpeed
strategy calls in ``prepare``. No process group, no DeepSpeed engine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from overdrive import DeepSpeedPlugin
from overdrive.strategies import select_strategy
from overdrive.utils.deepspeed import DummyOptim, DummyScheduler, finalize_config

accelerate_utils = pytest.importorskip("accelerate.utils")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("ACCELERATE_", "OVERDRIVE_")):
            monkeypatch.delenv(name)


def accelerate_config(
    fields: dict[str, Any], mixed_precision: str, steps: int, world: int, micro: int | None,
    hidden: int | None = None, optimizer: Any = None, scheduler: Any = None, split_batches: bool = False,
) -> dict[str, Any]:
    """Accelerate's config for these inputs: its plugin, then the values its _prepare_deepspeed fills in."""
    plugin = accelerate_utils.DeepSpeedPlugin(**fields)
    plugin.set_mixed_precision(mixed_precision)
    plugin.fill_match("gradient_accumulation_steps", must_match=False, gradient_accumulation_steps=steps)
    kwargs: dict[str, Any] = {
        "gradient_clipping": 1.0, "zero_optimization.stage3_gather_16bit_weights_on_model_save": False,
    }
    if micro is not None:
        kwargs["train_micro_batch_size_per_gpu"] = micro
        kwargs["train_batch_size"] = micro * plugin.get_value("gradient_accumulation_steps") * world
    if isinstance(optimizer, torch.optim.Optimizer):
        plugin.deepspeed_config["zero_allow_untested_optimizer"] = True
    if hidden is not None and any(plugin.is_auto(k) for k in (
            "zero_optimization.reduce_bucket_size", "zero_optimization.stage3_prefetch_bucket_size",
            "zero_optimization.stage3_param_persistence_threshold")):
        kwargs["zero_optimization.reduce_bucket_size"] = hidden * hidden
        kwargs["zero_optimization.stage3_prefetch_bucket_size"] = int(0.9 * hidden * hidden)
        kwargs["zero_optimization.stage3_param_persistence_threshold"] = 10 * hidden
    if isinstance(optimizer, DummyOptim):
        kwargs["optimizer.params.lr"] = optimizer.lr
        kwargs["optimizer.params.weight_decay"] = optimizer.weight_decay
    if isinstance(scheduler, DummyScheduler):
        kwargs["scheduler.params.warmup_min_lr"] = 0
        kwargs["scheduler.params.warmup_max_lr"] = optimizer.lr
        kwargs["scheduler.params.warmup_num_steps"] = max(1, scheduler.warmup_num_steps)
        if scheduler.total_num_steps is not None:
            total = scheduler.total_num_steps
            kwargs["scheduler.params.total_num_steps"] = total if split_batches else math.ceil(total / world)
    plugin.deepspeed_config_process(must_match=False, **kwargs)
    return plugin.deepspeed_config  # type: ignore[no-any-return]


def overdrive_config(
    fields: dict[str, Any], mixed_precision: str, steps: int, world: int, batch_sizes: list[int | None],
    model: Any = None, optimizer: Any = None, scheduler: Any = None, split_batches: bool = False,
) -> dict[str, Any]:
    config, _ = finalize_config(
        DeepSpeedPlugin(**fields), mixed_precision, steps, world, batch_sizes, model=model, optimizer=optimizer,
        scheduler=scheduler, split_batches=split_batches,
    )
    return config


def _params() -> Any:
    return torch.nn.Linear(2, 2).parameters()


FIELD_CASES = [
    pytest.param({}, "no", 1, 2, 4, id="defaults"),
    pytest.param({"zero_stage": 1, "gradient_clipping": 0.0}, "fp16", 1, 2, 4, id="zero1-fp16-no-clipping"),
    pytest.param({"zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu",
                  "gradient_clipping": 0.5, "zero3_save_16bit_model": True}, "bf16", 4, 2, 3, id="zero3-offload-bf16"),
    pytest.param({"zero_stage": 2, "gradient_accumulation_steps": 2}, "no", 2, 4, 8, id="plugin-accumulation"),
    pytest.param({"zero_stage": 0, "offload_optimizer_device": "nvme", "offload_optimizer_nvme_path": "/nvme"},
                 "bf16", 1, 1, 2, id="zero0-nvme-path"),
]


@pytest.mark.parametrize(("fields", "mixed_precision", "steps", "world", "micro"), FIELD_CASES)
def test_plugin_fields_match_accelerate(
    fields: dict[str, Any], mixed_precision: str, steps: int, world: int, micro: int
) -> None:
    opt = torch.optim.SGD(_params(), lr=0.1)
    ours = overdrive_config(fields, mixed_precision, steps, world, [micro, micro * 2], optimizer=opt)
    theirs = accelerate_config(fields, mixed_precision, steps, world, micro, optimizer=opt)
    assert ours == theirs


def test_env_variables_match_accelerate(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_GRADIENT_CLIPPING": "0.7",
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
        "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false",
    }.items():
        monkeypatch.setenv(name, value)
    ours, theirs = DeepSpeedPlugin(), accelerate_utils.DeepSpeedPlugin()
    assert ours.deepspeed_config == theirs.deepspeed_config
    assert (ours.zero_stage, ours.gradient_clipping, ours.zero3_init_flag) == (3, 0.7, False)
    assert ours.zero3_init_flag == theirs.zero3_init_flag
    assert overdrive_config({}, "no", 2, 2, [4]) == accelerate_config({}, "no", 2, 2, 4)


def test_config_file_with_auto_values_matches_accelerate(tmp_path: Path) -> None:
    user = {
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 8},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "betas": [0.9, 0.99]}},
        "scheduler": {"type": "WarmupDecayLR",
                      "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto",
                                 "total_num_steps": "auto"}},
        "zero_optimization": {"stage": "auto", "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": "auto",
                              "stage3_gather_16bit_weights_on_model_save": "auto"},
    }
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(user))
    model = torch.nn.Linear(2, 2)
    model.config = SimpleNamespace(hidden_size=64)  # type: ignore[assignment]
    opt = DummyOptim(model.parameters(), lr=3e-4, weight_decay=0.01)
    sched = DummyScheduler(opt, total_num_steps=101, warmup_num_steps=0)
    fields = {"hf_ds_config": str(path), "zero_stage": 3}
    ours = overdrive_config(fields, "fp16", 4, 2, [2], model=model, optimizer=opt, scheduler=sched)
    theirs = accelerate_config(fields, "fp16", 4, 2, 2, hidden=64, optimizer=opt, scheduler=sched)
    assert ours == theirs
    assert ours["zero_optimization"]["stage"] == 3 and ours["optimizer"]["params"]["betas"] == [0.9, 0.99]
    assert ours["scheduler"]["params"]["total_num_steps"] == 51 and ours["fp16"]["enabled"] is True
    assert json.loads(path.read_text()) == user  # the user's file is read, never written


def test_config_dict_explicit_values_win_and_split_batches(tmp_path: Path) -> None:
    user = {"gradient_accumulation_steps": 3, "gradient_clipping": 0.25, "train_micro_batch_size_per_gpu": "auto",
            "zero_optimization": {"stage": 1}, "bf16": {"enabled": True}}
    fields = {"hf_ds_config": user, "zero_stage": 2, "gradient_clipping": 9.0}
    plugin = DeepSpeedPlugin(**fields)
    assert (plugin.zero_stage, plugin.gradient_clipping, plugin.gradient_accumulation_steps) == (1, 0.25, 3)
    ours, steps = finalize_config(plugin, "bf16", 1, 2, [8], split_batches=True)
    theirs = accelerate_config(fields, "bf16", 1, 2, 4)
    assert ours == theirs and steps == 3  # DeepSpeed's explicit accumulation wins (the Accelerator adopts it)
    assert user["train_micro_batch_size_per_gpu"] == "auto"  # the caller's dict is not modified


def test_plugin_attributes_match_accelerate() -> None:
    for fields in ({}, {"zero_stage": 3}, {"zero_stage": 1, "zero3_init_flag": True}):
        if fields.get("zero3_init_flag"):
            with pytest.warns(UserWarning, match="stage 3"):
                ours = DeepSpeedPlugin(**fields)
            with pytest.warns(UserWarning):
                theirs = accelerate_utils.DeepSpeedPlugin(**fields)
        else:
            ours, theirs = DeepSpeedPlugin(**fields), accelerate_utils.DeepSpeedPlugin(**fields)
        for name in ("gradient_accumulation_steps", "gradient_clipping", "zero_stage", "offload_optimizer_device",
                     "offload_param_device", "zero3_init_flag", "zero3_save_16bit_model", "is_train_batch_min"):
            assert getattr(ours, name) == getattr(theirs, name), name


# -- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [4, -1, "two", 2.5])
def test_zero_stage_outside_range_is_an_error(stage: Any) -> None:
    with pytest.raises(ValueError, match=rf"zero_stage={stage!r}.*0 .*1 .*2 .*3"):
        DeepSpeedPlugin(zero_stage=stage)


def test_zero_stage_from_env_or_file_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "4")
    with pytest.raises(ValueError, match="ACCELERATE_DEEPSPEED_ZERO_STAGE.*zero_stage='4'"):
        DeepSpeedPlugin()
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    with pytest.raises(ValueError, match="zero_optimization.stage.*zero_stage=5"):
        DeepSpeedPlugin(hf_ds_config={"zero_optimization": {"stage": 5}})


def test_other_bad_plugin_input() -> None:
    with pytest.raises(ValueError, match="offload_optimizer_device='gpu'"):
        DeepSpeedPlugin(offload_optimizer_device="gpu")
    with pytest.raises(ValueError, match="offload_param_device='cpu'.*zero_stage=3"):
        DeepSpeedPlugin(zero_stage=2, offload_param_device="cpu")
    with pytest.raises(ValueError, match="gradient_accumulation_steps=0"):
        DeepSpeedPlugin(gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="gradient_clipping=-1"):
        DeepSpeedPlugin(gradient_clipping=-1)
    with pytest.raises(ValueError, match="'zero_optimization' section"):
        DeepSpeedPlugin(hf_ds_config={"train_batch_size": 8})
    with pytest.raises(ValueError, match="missing.json"):
        DeepSpeedPlugin(hf_ds_config="missing.json")


def test_unfillable_auto_names_the_key() -> None:
    with pytest.raises(ValueError, match="'train_batch_size' is 'auto'.*pass a data loader"):
        finalize_config(DeepSpeedPlugin(), "no", 1, 2, [])  # prepare() without a data loader
    plugin = DeepSpeedPlugin(hf_ds_config={"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}},
                             gradient_clipping=1.0)
    with pytest.raises(ValueError, match="reduce_bucket_size.*hidden_size"):
        finalize_config(plugin, "no", 1, 2, [4], model=torch.nn.Linear(1, 1))


def test_optimizer_in_config_and_code_is_an_error() -> None:
    plugin = DeepSpeedPlugin(hf_ds_config={"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}})
    with pytest.raises(ValueError, match="'optimizer' and prepare\\(\\) got a torch optimizer"):
        finalize_config(plugin, "no", 1, 2, [4], optimizer=torch.optim.SGD(_params(), lr=0.1))
    with pytest.raises(ValueError, match="DummyOptim needs an 'optimizer' section"):
        finalize_config(DeepSpeedPlugin(), "no", 1, 2, [4], optimizer=DummyOptim(_params()))


def test_mixed_precision_conflicting_with_config_is_an_error() -> None:
    plugin = DeepSpeedPlugin(hf_ds_config={"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}})
    with pytest.raises(ValueError, match="mixed_precision='bf16' conflicts.*fp16"):
        finalize_config(plugin, "bf16", 1, 1, [4])


def test_strategy_selection() -> None:
    assert select_strategy(num_processes=2, deepspeed_plugin=DeepSpeedPlugin()).__name__ == "DeepSpeedStrategy"
    assert select_strategy(num_processes=1, use_deepspeed=True).__name__ == "DeepSpeedStrategy"
    with pytest.raises(ValueError, match="FSDP and DeepSpeed were both requested"):
        select_strategy(num_processes=2, deepspeed_plugin=DeepSpeedPlugin(), use_fsdp=True)
    with pytest.raises(TypeError, match="deepspeed_plugin must be a DeepSpeedPlugin, got dict"):
        select_strategy(num_processes=2, deepspeed_plugin={"a": DeepSpeedPlugin()})


def test_building_a_plugin_imports_no_deepspeed() -> None:
    import subprocess
    import sys

    code = "import sys, overdrive; overdrive.DeepSpeedPlugin(zero_stage=3); print('deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_zero3_init_context_manager_switches_and_restores() -> None:
    plugin = DeepSpeedPlugin(zero_stage=3, zero3_init_flag=True)
    with plugin.zero3_init_context_manager(enable=False):
        assert not plugin.is_zero3_init_enabled()
        with plugin.zero3_init():  # flag off: a plain context, the model is built whole
            built = torch.nn.Linear(3, 2)
        assert built.weight.shape == (2, 3)
    assert plugin.is_zero3_init_enabled()
    with pytest.raises(RuntimeError, match="inside"):
        with plugin.zero3_init_context_manager(enable=False):
            raise RuntimeError("inside")
    assert plugin.is_zero3_init_enabled()  # restored after an error too
    stage2 = DeepSpeedPlugin(zero_stage=2)
    with stage2.zero3_init_context_manager(enable=True):
        assert not stage2.is_zero3_init_enabled()  # ZeRO-3 only, as the constructor rules


def test_set_moe_leaf_modules_marks_the_named_classes() -> None:
    import deepspeed.utils

    class Experts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Experts(), torch.nn.Linear(4, 2))
    DeepSpeedPlugin(zero_stage=3, transformer_moe_cls_names="Experts").set_moe_leaf_modules(model)
    assert deepspeed.utils.z3_leaf_module(model[1]) and not deepspeed.utils.z3_leaf_module(model[0])
    with pytest.raises(ValueError, match="no module class 'Router'"):
        DeepSpeedPlugin(zero_stage=3, transformer_moe_cls_names="Experts, Router").set_moe_leaf_modules(model)
