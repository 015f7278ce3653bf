"""FullyShardedDataParallelPlugin: Accelerate's fields and FSDP_* variables, normalisation, bad input; strategy
selection and the FSDP2 strategy's single-process parts (block choice, policies, checkpoint checks). No process group.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, StateDictType

from overdrive import Accelerator, DeepSpeedPlugin, FullyShardedDataParallelPlugin
from overdrive.checkpoint_state import CheckpointError
from overdrive.precision import Precision, make_precision
from overdrive.state import PartialState
from overdrive.strategies import DDPStrategy, FSDP2Strategy, SingleDeviceStrategy, select_strategy

FSDP_VARS = [
    "FSDP_VERSION", "FSDP_AUTO_WRAP_POLICY", "FSDP_TRANSFORMER_CLS_TO_WRAP", "FSDP_MIN_NUM_PARAMS",
    "FSDP_RESHARD_AFTER_FORWARD", "FSDP_OFFLOAD_PARAMS", "FSDP_STATE_DICT_TYPE", "FSDP_ACTIVATION_CHECKPOINTING",
    "FSDP_ACTIVATION_CHECKPOINTING_OFFLOAD", "FSDP_CPU_RAM_EFFICIENT_LOADING", "FSDP_BACKWARD_PREFETCH",
    "FSDP_IGNORED_MODULES", "FSDP_SHARDING_STRATEGY", "ACCELERATE_USE_FSDP", "OVERDRIVE_USE_FSDP",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FSDP_VARS:
        monkeypatch.delenv(name, raising=False)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def strategy(precision: Precision | None = None, **plugin_kwargs: object) -> FSDP2Strategy:
    plugin = FullyShardedDataParallelPlugin(**plugin_kwargs)  # type: ignore[arg-type]
    return FSDP2Strategy(PartialState(), precision or Precision(), fsdp_plugin=plugin)


# -- the plugin ------------------------------------------------------------------------------------------------


def test_defaults_are_fsdp2_sharded() -> None:
    p = FullyShardedDataParallelPlugin()
    assert p.fsdp_version == 2 and p.reshard_after_forward is True
    assert p.state_dict_type == StateDictType.SHARDED_STATE_DICT
    assert p.auto_wrap_policy is None and p.mixed_precision_policy is None
    assert type(p.cpu_offload) is OffloadPolicy  # no offload
    assert (p.activation_checkpointing, p.activation_checkpointing_offload, p.cpu_ram_efficient_loading) == (
        False, False, False)


ENV_TABLE = [
    ({"FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_TRANSFORMER_CLS_TO_WRAP": "Block,Other"},
     {"auto_wrap_policy": "transformer_based_wrap", "transformer_cls_names_to_wrap": ["Block", "Other"]}),
    ({"FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP", "FSDP_MIN_NUM_PARAMS": "100"},
     {"auto_wrap_policy": "size_based_wrap", "min_num_params": 100}),
    ({"FSDP_AUTO_WRAP_POLICY": "NO_WRAP"}, {"auto_wrap_policy": None}),
    ({"FSDP_RESHARD_AFTER_FORWARD": "false"}, {"reshard_after_forward": False}),
    ({"FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}, {"state_dict_type": StateDictType.FULL_STATE_DICT}),
    ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, {"activation_checkpointing": True}),
    ({"FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, {"cpu_ram_efficient_loading": True}),
    ({"FSDP_VERSION": "2"}, {"fsdp_version": 2}),
]


@pytest.mark.parametrize(("env", "expected"), ENV_TABLE)
def test_environment_variables(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: dict) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    p = FullyShardedDataParallelPlugin()
    assert {k: getattr(p, k) for k in expected} == expected


def test_offload_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    assert isinstance(FullyShardedDataParallelPlugin().cpu_offload, CPUOffloadPolicy)


@pytest.mark.parametrize(("env", "fields"), [
    ({"FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_TRANSFORMER_CLS_TO_WRAP": "Block,Other"},
     ["transformer_cls_names_to_wrap"]),
    ({"FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP", "FSDP_MIN_NUM_PARAMS": "100"}, ["min_num_params"]),
    ({"FSDP_RESHARD_AFTER_FORWARD": "false", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
      "FSDP_ACTIVATION_CHECKPOINTING": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"},
     ["reshard_after_forward", "state_dict_type", "activation_checkpointing", "cpu_ram_efficient_loading"]),
    ({}, ["reshard_after_forward", "state_dict_type", "activation_checkpointing", "cpu_ram_efficient_loading"]),
])
def test_environment_reads_like_accelerate(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fields: list) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin as Theirs

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ours = FullyShardedDataParallelPlugin()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = Theirs(fsdp_version=2)
    for field in fields:
        assert getattr(ours, field) == getattr(theirs, field), field
    assert type(ours.cpu_offload) is type(theirs.cpu_offload)


def test_explicit_argument_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT")
    p = FullyShardedDataParallelPlugin(reshard_after_forward=True, state_dict_type="sharded_state_dict")
    assert p.reshard_after_forward is True and p.state_dict_type == StateDictType.SHARDED_STATE_DICT


def test_accelerate_spellings_are_normalised() -> None:
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

    assert FullyShardedDataParallelPlugin(sharding_strategy="SHARD_GRAD_OP").reshard_after_forward is False
    assert FullyShardedDataParallelPlugin(reshard_after_forward="FULL_SHARD").reshard_after_forward is True
    p = FullyShardedDataParallelPlugin(auto_wrap_policy=transformer_auto_wrap_policy,
                                       transformer_cls_names_to_wrap="Block, Other")
    assert (p.auto_wrap_policy, p.transformer_cls_names_to_wrap) == ("transformer_based_wrap", ["Block", "Other"])
    p = FullyShardedDataParallelPlugin(auto_wrap_policy=size_based_auto_wrap_policy)
    assert (p.auto_wrap_policy, p.min_num_params) == ("size_based_wrap", 0)
    assert FullyShardedDataParallelPlugin(cpu_offload=True).cpu_offload == CPUOffloadPolicy()
    mp = FullyShardedDataParallelPlugin(mixed_precision_policy="bf16").mixed_precision_policy
    assert mp == MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    mp = FullyShardedDataParallelPlugin(mixed_precision_policy={"param_dtype": "fp16"}).mixed_precision_policy
    assert mp == MixedPrecisionPolicy(param_dtype=torch.float16)
    assert FullyShardedDataParallelPlugin(backward_prefetch="BACKWARD_PRE").backward_prefetch is None


@pytest.mark.parametrize(("kwargs", "env", "match"), [
    ({"fsdp_version": 1}, {}, r"fsdp_version=1.*not implemented.*fsdp_version=2"),
    ({}, {"FSDP_VERSION": "1"}, r"fsdp_version=1.*FSDP_VERSION=2"),
    ({"fsdp_version": 3}, {}, r"fsdp_version=3"),
    ({}, {"FSDP_VERSION": "two"}, r"FSDP_VERSION='two' is not an integer"),
    ({"auto_wrap_policy": "layer_wrap"}, {}, r"auto_wrap_policy='layer_wrap'.*'transformer_based_wrap'"),
    ({}, {"FSDP_AUTO_WRAP_POLICY": "nope"}, r"auto_wrap_policy='nope'.*FSDP_AUTO_WRAP_POLICY"),
    ({"reshard_after_forward": "sometimes"}, {}, r"reshard_after_forward='sometimes'"),
    ({"reshard_after_forward": 2}, {}, r"reshard_after_forward=2.*bool"),
    ({"sharding_strategy": "HYBRID_SHARD"}, {}, r"sharding_strategy='HYBRID_SHARD'"),
    ({"state_dict_type": "LOCAL_STATE_DICT"}, {}, r"LOCAL_STATE_DICT.*FULL_STATE_DICT"),
    ({}, {"FSDP_STATE_DICT_TYPE": "everything"}, r"state_dict_type='everything'"),
    ({"auto_wrap_policy": "size_based_wrap", "min_num_params": -1}, {}, r"min_num_params=-1"),
    ({}, {"FSDP_OFFLOAD_PARAMS": "maybe"}, r"FSDP_OFFLOAD_PARAMS='maybe'"),
    ({"cpu_offload": "yes"}, {}, r"cpu_offload='yes'"),
    ({"activation_checkpointing_offload": True}, {}, r"activation_checkpointing=True"),
    ({"forward_prefetch": True}, {}, r"forward_prefetch=True"),
    ({"mixed_precision_policy": "fp8"}, {}, r"mixed_precision_policy='fp8'"),
    ({"mixed_precision_policy": {"buffer_dtype": "bf16"}}, {}, r"unknown keys \['buffer_dtype'\]"),
])
def test_bad_input(monkeypatch: pytest.MonkeyPatch, kwargs: dict, env: dict[str, str], match: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        FullyShardedDataParallelPlugin(**kwargs)


# -- strategy selection and the Accelerator's checks ---------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"num_processes": 1}, SingleDeviceStrategy),
    ({"num_processes": 2}, DDPStrategy),
    ({"num_processes": 1, "use_fsdp": True}, FSDP2Strategy),
    ({"num_processes": 2, "use_fsdp": True}, FSDP2Strategy),
    ({"num_processes": 8, "fsdp_plugin": FullyShardedDataParallelPlugin()}, FSDP2Strategy),
])
def test_select_strategy_table(kwargs: dict, expected: type) -> None:
    assert select_strategy(**kwargs) is expected


def test_fsdp_and_deepspeed_together_is_an_error() -> None:
    with pytest.raises(ValueError, match="FSDP and DeepSpeed were both requested"):
        select_strategy(num_processes=2, fsdp_plugin=FullyShardedDataParallelPlugin(), use_deepspeed=True)
    with pytest.raises(ValueError, match="FSDP and DeepSpeed were both requested"):
        Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(), deepspeed_plugin=DeepSpeedPlugin())
    with pytest.raises(TypeError, match="fsdp_plugin must be a FullyShardedDataParallelPlugin, got dict"):
        Accelerator(fsdp_plugin={"fsdp_version": 2})
    assert not dist.is_initialized()


def test_bad_fsdp_environment_fails_before_any_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "by_magic")
    with pytest.raises(ValueError, match="auto_wrap_policy='by_magic'"):
        Accelerator()
    assert not dist.is_initialized()


# -- the strategy's single-process parts ---------------------------------------------------------------------------


def test_blocks_by_class_name_size_and_callable() -> None:
    model = Net()
    s = strategy(auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["Block"])
    assert s.blocks(model) == list(model.blocks)
    s = strategy(auto_wrap_policy="size_based_wrap", min_num_params=50)  # Linear(8, 8): 72 parameters
    assert s.blocks(model) == [model.blocks[0].fc, model.blocks[0], model.blocks[1].fc, model.blocks[1]]
    assert strategy().blocks(model) == []
    s = strategy(auto_wrap_policy=lambda m: isinstance(m, nn.Linear) and m.out_features == 2)
    assert s.blocks(model) == [model.head]


def test_unknown_layer_class_names_it_and_lists_the_model_classes() -> None:
    s = strategy(auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["Block", "DecoderLayer"])
    with pytest.raises(ValueError, match=r"no module of class 'DecoderLayer'.*\['Block', 'Linear', 'ModuleList', 'Net'\]"):
        s.blocks(Net())
    with pytest.raises(ValueError, match="set transformer_cls_names_to_wrap"):
        strategy(auto_wrap_policy="transformer_based_wrap").blocks(Net())


def test_layer_classes_default_to_no_split_modules() -> None:
    model = Net()
    model._no_split_modules = ["Block"]  # what Transformers models declare
    assert strategy(auto_wrap_policy="transformer_based_wrap").blocks(model) == list(model.blocks)


def test_precision_and_offload_policies() -> None:
    cpu = torch.device("cpu")
    assert strategy(make_precision("bf16", cpu)).mixed_precision_policy() == MixedPrecisionPolicy(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert strategy(make_precision("no", cpu)).mixed_precision_policy() == MixedPrecisionPolicy()
    explicit = MixedPrecisionPolicy(param_dtype=torch.float16)
    assert strategy(make_precision("bf16", cpu), mixed_precision_policy=explicit).mixed_precision_policy() is explicit
    # Pinned memory needs an accelerator: on a CPU device the strategy turns it off.
    assert strategy(cpu_offload=True).offload_policy() == CPUOffloadPolicy(pin_memory=False)
    assert type(strategy().offload_policy()) is OffloadPolicy


def test_checkpoint_check_names_a_missing_shard_or_folder(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    s = strategy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": {"w": torch.ones(4)}}, checkpoint_id=str(tmp_path / "pytorch_model_fsdp_0"))
        dcp.save({"optimizer": {"s": torch.ones(4)}}, checkpoint_id=str(tmp_path / "optimizer_0"))
    s.check_checkpoint_files(tmp_path, 1, 1)
    with pytest.raises(CheckpointError, match="has no model 1: expected the sharded folder 'pytorch_model_fsdp_1'"):
        s.check_checkpoint_files(tmp_path, 2, 1)
    (tmp_path / "optimizer_0" / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer_0' is missing the shard file '__0_0.distcp'"):
        s.check_checkpoint_files(tmp_path, 1, 1)
    (tmp_path / "pytorch_model_fsdp_0" / ".metadata").unlink()
    with pytest.raises(CheckpointError, match="'.metadata' file is missing"):
        s.check_checkpoint_files(tmp_path, 1, 0)
