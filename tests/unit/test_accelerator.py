"""Single-process behaviour of the Accelerator, each number checked against plain PyTorch computed here."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed as dist
from torch import nn

from overdrive import Accelerator, DistributedType, GradientAccumulationPlugin
from overdrive.commands.launch import parse_launch_args
from overdrive.optimizer import AcceleratedOptimizer
from overdrive.scheduler import AcceleratedScheduler
from overdrive.strategies import DDPStrategy, SingleDeviceStrategy, select_strategy


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n: int = 24, seed: int = 1) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g))


# -- strategy selection is a pure table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"num_processes": 1}, SingleDeviceStrategy),
        ({"num_processes": 2}, DDPStrategy),
        ({"num_processes": 64}, DDPStrategy),
    ],
)
def test_select_strategy_table(kwargs: dict, expected: type) -> None:
    assert select_strategy(**kwargs) is expected


def test_select_strategy_picks_sharded_engines_and_checks_plugins() -> None:
    from overdrive.strategies.deepspeed import DeepSpeedStrategy
    from overdrive.strategies.fsdp import FSDP2Strategy

    assert select_strategy(num_processes=2, use_deepspeed=True) is DeepSpeedStrategy
    assert select_strategy(num_processes=1, use_fsdp=True) is FSDP2Strategy
    with pytest.raises(TypeError, match="DeepSpeedPlugin"):
        select_strategy(num_processes=1, deepspeed_plugin=object())


# -- basic facade -----------------------------------------------------------------------------------------


def test_properties_at_world_one() -> None:
    acc = Accelerator()
    assert (acc.num_processes, acc.process_index, acc.local_process_index) == (1, 0, 0)
    assert acc.is_main_process and acc.is_local_main_process and acc.is_last_process
    assert acc.distributed_type == DistributedType.NO and not acc.use_distributed
    assert acc.device == torch.device("cpu") and acc.mixed_precision == "no"
    assert acc.gradient_accumulation_steps == 1 and acc.sync_gradients
    assert not acc.optimizer_step_was_skipped
    assert acc.state.num_processes == 1
    assert not dist.is_initialized()


def test_prepare_keeps_order_and_passes_other_objects_through() -> None:
    acc = Accelerator()
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    dl = torch.utils.data.DataLoader(data(), batch_size=4)
    marker = {"keep": 1}
    out = acc.prepare(sched, marker, dl, opt, model)
    assert isinstance(out[0], AcceleratedScheduler) and out[0].optimizers[0] is out[3]
    assert out[1] is marker
    assert isinstance(out[2], torch.utils.data.DataLoader) and len(out[2]) == 6
    assert isinstance(out[3], AcceleratedOptimizer) and isinstance(out[3], torch.optim.Optimizer)
    assert out[4] is model  # single device: no wrapper
    assert acc.prepare(marker) is marker


def test_unimplemented_arguments_raise_naming_them() -> None:
    with pytest.raises(ValueError, match="log_with='aim': the aim tracker is not built into overdrive"):
        Accelerator(log_with="aim")
    with pytest.raises(NotImplementedError, match="torch_tp_plugin"):
        Accelerator(torch_tp_plugin=object())
    # dynamo_backend is implemented (tests/unit/test_compile.py); a name torch does not know is bad input
    with pytest.raises(ValueError, match="dynamo_backend='fastest' is not a torch.compile backend"):
        Accelerator(dynamo_backend="fastest")
    with pytest.raises(NotImplementedError, match="fp8"):
        Accelerator(mixed_precision="fp8")
    assert not dist.is_initialized()


# -- the loop, against a plain PyTorch loop -----------------------------------------------------------------


@pytest.mark.parametrize("accum", [1, 3])
def test_loop_matches_plain_pytorch_with_scheduler(accum: int) -> None:
    ds = data(26)
    ref = mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.5)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4))  # 7 batches: windows of `accum`, last shorter
    for start in range(0, len(batches), accum):
        for x, y in batches[start : start + accum]:
            (nn.functional.mse_loss(ref(x), y) / accum).backward()
        ref_opt.step()
        ref_sched.step()
        ref_opt.zero_grad()

    acc = Accelerator(gradient_accumulation_steps=accum)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model, opt, dl, sched = acc.prepare(model, opt, torch.utils.data.DataLoader(ds, batch_size=4), sched)
    syncs = []
    for x, y in dl:
        with acc.accumulate(model):
            acc.backward(nn.functional.mse_loss(model(x), y))
            syncs.append(acc.sync_gradients)
            opt.step()
            sched.step()
            opt.zero_grad()
    expected_syncs = [(i + 1) % accum == 0 or i == len(batches) - 1 for i in range(len(batches))]
    assert syncs == expected_syncs
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert sched.get_last_lr() == ref_sched.get_last_lr()


def test_clip_grad_norm_returns_torch_norm_and_clips() -> None:
    acc = Accelerator()
    model = acc.prepare(mlp())
    ref = mlp()
    x, y = data(8).tensors
    acc.backward(nn.functional.mse_loss(model(x), y))
    nn.functional.mse_loss(ref(x), y).backward()
    expected = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    norm = acc.clip_grad_norm_(model.parameters(), 0.05)
    torch.testing.assert_close(norm, expected)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    acc.clip_grad_value_(model.parameters(), 1e-3)
    assert max(p.grad.abs().max().item() for p in model.parameters()) == pytest.approx(1e-3)


# -- precision ----------------------------------------------------------------------------------------------


def test_bf16_autocast_produces_bf16_activations_and_fp32_outputs() -> None:
    acc = Accelerator(mixed_precision="bf16")
    model = acc.prepare(mlp())
    seen = {}
    model[0].register_forward_hook(lambda m, i, o: seen.update(hidden=o.dtype))
    out = model(torch.randn(4, 6))
    assert seen["hidden"] == torch.bfloat16
    assert out.dtype == torch.float32  # outputs converted back, as Accelerate does
    with acc.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    plain = acc.unwrap_model(model, keep_fp32_wrapper=False)
    assert plain(torch.randn(2, 6)).dtype == torch.float32 and "forward" not in plain.__dict__


def test_fp16_on_cpu_scales_loss_and_skips_overflow_steps() -> None:
    # Documented behaviour: fp16 works on CPU with torch's CPU GradScaler (slow; bf16 is recommended on CPU).
    acc = Accelerator(mixed_precision="fp16")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    assert acc.scaler is not None and acc.scaler.get_scale() == 65536.0
    seen = {}
    model[0].register_forward_hook(lambda m, i, o: seen.update(hidden=o.dtype))
    x, y = data(8).tensors
    acc.backward(nn.functional.mse_loss(model(x), y))
    assert seen["hidden"] == torch.float16
    before = [p.detach().clone() for p in model.parameters()]
    acc.clip_grad_norm_(model.parameters(), 1.0)  # unscales first: the norm is of true gradients
    opt.step()
    assert not acc.optimizer_step_was_skipped
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad()
    # An inf gradient: the scaler skips the step, halves the scale, and the flag says so.
    acc.backward(nn.functional.mse_loss(model(x), y))
    next(model.parameters()).grad.view(-1)[0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert acc.optimizer_step_was_skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert acc.scaler.get_scale() == 32768.0


# -- weights ---------------------------------------------------------------------------------------------------


def test_save_model_loads_into_a_fresh_plain_module(tmp_path) -> None:
    from safetensors.torch import load_file

    acc = Accelerator(mixed_precision="bf16")
    model = acc.prepare(mlp(3))
    assert type(acc.unwrap_model(model)) is nn.Sequential
    acc.save_model(model, tmp_path / "single")
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == ["model.safetensors"]
    fresh = mlp(99)
    fresh.load_state_dict(load_file(tmp_path / "single" / "model.safetensors"))
    x = torch.randn(5, 6)
    torch.testing.assert_close(fresh(x), mlp(3)(x), rtol=0, atol=0)

    acc.save_model(model, tmp_path / "sharded", max_shard_size=500)  # bytes: forces several shards
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all(f.startswith("model-0000") for f in files)
    merged = {}
    for f in files:
        merged.update(load_file(tmp_path / "sharded" / f))
    fresh = mlp(99)
    fresh.load_state_dict(merged)
    torch.testing.assert_close(fresh(x), mlp(3)(x), rtol=0, atol=0)

    acc.save_model(model, tmp_path / "bin", safe_serialization=False)
    state = torch.load(tmp_path / "bin" / "pytorch_model.bin", weights_only=True)
    assert set(state) == set(mlp().state_dict())


def test_save_model_handles_tied_weights(tmp_path) -> None:
    from safetensors.torch import load_file

    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    Accelerator().save_model(model, tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert list(saved) == ["0.weight"]
    torch.testing.assert_close(saved["0.weight"], model[0].weight.detach())


# -- bad input: a clear error naming the value, before any process group ------------------------------------


@pytest.mark.parametrize(
    ("make", "exc", "needle"),
    [
        (lambda: Accelerator(gradient_accumulation_steps=0), ValueError, "gradient_accumulation_steps=0"),
        (lambda: Accelerator(gradient_accumulation_steps=-1), ValueError, "gradient_accumulation_steps=-1"),
        (lambda: Accelerator(gradient_accumulation_steps=2.5), ValueError, "gradient_accumulation_steps=2.5"),
        (lambda: Accelerator(mixed_precision="fp17"), ValueError, "fp17"),
        (lambda: Accelerator(mixed_precision=16), TypeError, "mixed_precision"),
        (lambda: Accelerator(gradient_accumulation_steps=2,
                             gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=2)),
         ValueError, "only the plugin"),
        (lambda: Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=-2)),
         ValueError, "num_steps=-2"),
        (lambda: Accelerator(kwargs_handlers=[object()]), TypeError, "supported handlers"),
        (lambda: Accelerator(dataloader_config={"split_batches": True}), TypeError, "DataLoaderConfiguration"),
        (lambda: Accelerator().reduce(torch.ones(2), "median"), ValueError, "median"),
        (lambda: Accelerator().backward(torch.ones(3, requires_grad=True)), ValueError, r"shape \(3,\)"),
        (lambda: Accelerator().backward(1.0), TypeError, "float"),
        (lambda: Accelerator().prepare_model("model"), TypeError, "str"),
        (lambda: Accelerator().save_model(nn.Linear(1, 1), "x", max_shard_size="ten"), ValueError, "ten"),
        (lambda: Accelerator().backward(torch.ones((), requires_grad=True), num_items=-3), ValueError, "num_items=-3"),
        (lambda: Accelerator().backward(torch.ones((), requires_grad=True), num_items="7"), TypeError, "str"),
        (lambda: Accelerator().backward(torch.ones((), requires_grad=True), num_items=torch.ones(2)), ValueError,
         r"shape \(2,\)"),
        (lambda: parse_launch_args(["--num_proceses", "2", "train.py"]), ValueError,
         "'--num_proceses'; did you mean '--num_processes'"),
        (lambda: parse_launch_args(["--num_processes", "2", "/nonexistent/train.py"]), ValueError,
         "'/nonexistent/train.py' does not exist"),
        (lambda: parse_launch_args(["--num_processes", "0", "train.py"]), ValueError, "--num_processes=0"),
        (lambda: parse_launch_args(["--mixed_precision", "fp17", "train.py"]), ValueError, "fp17"),
    ],
)
def test_bad_inputs(make, exc: type, needle: str) -> None:
    with pytest.raises(exc, match=needle):
        make()
    assert not dist.is_initialized()


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp17")
    with pytest.raises(ValueError, match=r"'fp17' \(from env ACCELERATE_MIXED_PRECISION='fp17'\)"):
        Accelerator()


def test_env_reaches_accelerator_and_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    acc = Accelerator()
    assert acc.mixed_precision == "bf16" and acc.gradient_accumulation_steps == 3


def test_argument_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERDRIVE_MIXED_PRECISION", "bf16")
    with pytest.warns(UserWarning, match="explicit argument mixed_precision='no'.*overrides mixed_precision='bf16'"):
        assert Accelerator(mixed_precision="no").mixed_precision == "no"


def test_copyable_model_prepared_twice_keeps_one_autocast_wrapper() -> None:
    acc = Accelerator(mixed_precision="bf16")
    model = mlp()
    first = acc.prepare(model)
    assert acc.prepare(model) is first and acc.prepare(first) is first  # never wrapped twice, as in Accelerate
    assert len(acc._models) == 1
    assert model(torch.randn(1, 6)).dtype == torch.float32
    assert copy.deepcopy(acc.unwrap_model(model, keep_fp32_wrapper=False))(torch.randn(1, 6)).dtype == torch.float32


def test_second_accelerator_keeps_the_first_ones_precision_unless_it_asks_otherwise() -> None:
    # As in Accelerate: the state is process-wide; a later Accelerator() without the argument reuses it,
    # asking for a different precision is an error rather than a silent change.
    Accelerator(mixed_precision="bf16")
    assert Accelerator().mixed_precision == "bf16"
    with pytest.raises(ValueError, match="mixed_precision='bf16'.*'fp16'"):
        Accelerator(mixed_precision="fp16")


@pytest.mark.filterwarnings("ignore:accumulate\\(\\) is used while no prepared data loader")
def test_num_items_window_cannot_mix_with_plain_backward() -> None:
    acc = Accelerator(gradient_accumulation_steps=2)
    model = acc.prepare(mlp())
    x, y = data(4).tensors
    with acc.accumulate(model):
        acc.backward(nn.functional.mse_loss(model(x), y, reduction="sum"), num_items=4)
    with pytest.raises(ValueError, match="one style"), acc.accumulate(model):
        acc.backward(nn.functional.mse_loss(model(x), y))


@pytest.mark.filterwarnings("ignore:accumulate\\(\\) is used while no prepared data loader")
def test_num_items_gives_the_exact_mean_over_a_window_of_unequal_batches() -> None:
    acc = Accelerator(gradient_accumulation_steps=2)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    ref = mlp()
    x, y = data(10).tensors
    parts = [(x[:3], y[:3]), (x[3:], y[3:])]  # 3 and 7 samples: a mean of means would weight them equally
    for xb, yb in parts:
        with acc.accumulate(model):
            acc.backward(((model(xb) - yb) ** 2).sum(), num_items=xb.shape[0] * 3)
    (((ref(x) - y) ** 2).sum() / (10 * 3)).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-8)
