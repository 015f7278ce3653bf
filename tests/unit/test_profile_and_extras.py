"""Accelerator.profile / ProfileKwargs (a real torch.profiler trace) and the smaller Accelerate members: on_local_process,
set_device, parallelism properties, verify_device_map, use_stateful_dataloader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from overdrive import Accelerator, DataLoaderConfiguration, PartialState, ProfileKwargs


def test_profile_records_ops_and_writes_a_chrome_trace_per_process(tmp_path: Path) -> None:
    out = tmp_path / "traces"
    acc = Accelerator(kwargs_handlers=[ProfileKwargs(activities=["cpu"], record_shapes=True, output_trace_dir=str(out))])
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    with acc.profile() as prof:
        torch.mm(a, b)
    assert "aten::mm" in {e.key for e in prof.key_averages()}
    trace = json.loads((out / "profile_0.json").read_text())
    mm = [e for e in trace["traceEvents"] if e.get("name") == "aten::mm"]
    assert mm and mm[0]["args"]["Input Dims"] == [[64, 32], [32, 16]]  # record_shapes reached the profiler


def test_profile_schedule_calls_on_trace_ready_for_each_active_window() -> None:
    windows: list[int] = []
    handler = ProfileKwargs(schedule_option={"wait": 1, "warmup": 1, "active": 2, "repeat": 2},
                            on_trace_ready=lambda p: windows.append(len(p.events())))
    with Accelerator().profile(handler) as prof:  # an explicit handler wins over none configured
        for _ in range(10):
            torch.ones(8).add_(1)
            prof.step()
    assert len(windows) == 2 and all(n > 0 for n in windows)  # repeat=2: two recorded windows, each with events


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activities": "cpu"}, r"activities='cpu'.*one of \['cpu', 'cuda', 'xpu'\].*as a list"),
        ({"activities": ["tpu"]}, r"activities=\['tpu'\]"),
        ({"schedule_option": {"wait": 1, "length": 3}}, r"unknown key\(s\) \['length'\]"),
        ({"with_stack": "yes"}, r"with_stack"),
    ],
)
def test_profile_kwargs_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        ProfileKwargs(**kwargs)


def test_on_local_process_and_set_device() -> None:
    acc = Accelerator()
    calls: list[str] = []

    @acc.on_local_process(local_process_index=0)
    def here() -> str:
        calls.append("here")
        return "ran"

    @PartialState().on_local_process(local_process_index=1)
    def elsewhere() -> str:
        calls.append("elsewhere")
        return "ran"

    assert here() == "ran" and elsewhere() is None and calls == ["here"]
    with pytest.raises(ValueError, match="local_process_index"):
        PartialState().on_local_process(lambda: None)
    PartialState().set_device()  # CPU: nothing to select, and no error


def test_parallelism_properties_without_a_parallelism_config() -> None:
    acc = Accelerator(dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True))
    assert (acc.multi_device, acc.is_fsdp2, acc.is_composable_parallelism_enabled) == (False, False, False)
    assert acc.parallelism_config is None and acc.torch_device_mesh is None
    assert acc.should_save_model is True and acc.use_stateful_dataloader is True
    for name in ("data_parallel_rank", "data_parallel_shard_rank", "tensor_parallel_rank"):
        with pytest.raises(RuntimeError, match="not configured.*process_index"):
            getattr(acc, name)
    for name in ("pipeline_parallel_rank", "context_parallel_rank"):
        with pytest.raises(NotImplementedError):
            getattr(acc, name)


def test_verify_device_map() -> None:
    acc = Accelerator()
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert acc.verify_device_map(model) is False
    model[1].hf_device_map = {"": "cpu"}  # one device: fine
    assert acc.verify_device_map(model) is False
    model[1].hf_device_map = {"0": "cpu", "1": "disk"}
    assert acc.verify_device_map(model) is True
