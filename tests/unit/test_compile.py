"""torch.compile through Accelerate's API: dynamo_backend, TorchDynamoPlugin, ACCELERATE_DYNAMO_*, checkpoints.

One process. ``aot_eager`` checks the wiring (compiles in ~1 s); one inductor smoke test on a tiny MLP. Every numeric
check compares with an eager hand-written loop computed in the same test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from overdrive import Accelerator
from overdrive.strategies import compile_model, is_compiled, repeated_blocks
from overdrive.utils import DynamoBackend, TorchDynamoPlugin


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))


def _batches(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 6, generator=g), torch.randn(4, 2, generator=g)) for _ in range(n)]


def _eager_reference(accum: int = 1) -> dict[str, torch.Tensor]:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i, (x, y) in enumerate(_batches()):
        (F.mse_loss(model(x), y) / accum).backward()
        if (i + 1) % accum == 0:
            opt.step()
            opt.zero_grad()
    return model.state_dict()


def _train(acc: Accelerator, model: nn.Module) -> tuple[nn.Module, set[str]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    grad_fns = set()
    for x, y in _batches():
        out = model(x)
        grad_fns.add(type(out.grad_fn).__name__)
        acc.backward(F.mse_loss(out, y))
        opt.step()
        opt.zero_grad()
    return model, grad_fns


# -- the plugin: Accelerate's fields, environment variables, validation --------------------------------------------


def test_plugin_fields_match_accelerate() -> None:
    accelerate_dc = pytest.importorskip("accelerate.utils.dataclasses")
    ours = [f.name for f in dataclasses.fields(TorchDynamoPlugin)]
    theirs = [f.name for f in dataclasses.fields(accelerate_dc.TorchDynamoPlugin)]
    assert ours == theirs


def test_plugin_reads_accelerate_dynamo_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TorchDynamoPlugin().backend == DynamoBackend.NO and not TorchDynamoPlugin().enabled
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "AOT_EAGER")
    monkeypatch.setenv("ACCELERATE_DYNAMO_MODE", "max-autotune")
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_FULLGRAPH", "true")
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_DYNAMIC", "false")
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "1")
    plugin = TorchDynamoPlugin()
    assert (plugin.backend, plugin.mode, plugin.fullgraph, plugin.dynamic, plugin.use_regional_compilation) == (
        DynamoBackend.AOT_EAGER, "max-autotune", True, False, True)
    assert plugin.compile_kwargs() == {"backend": "aot_eager", "mode": "max-autotune", "fullgraph": True,
                                       "dynamic": False}
    monkeypatch.setenv("OVERDRIVE_DYNAMO_BACKEND", "eager")  # overdrive's name wins over Accelerate's
    assert TorchDynamoPlugin().backend == DynamoBackend.EAGER
    assert TorchDynamoPlugin(backend="inductor").backend == DynamoBackend.INDUCTOR  # an argument wins over both
    acc = Accelerator()
    assert acc.state.dynamo_plugin.backend == DynamoBackend.EAGER


@pytest.mark.parametrize(("call", "error", "fragment"), [
    (lambda: Accelerator(dynamo_backend="aot_eager", dynamo_plugin=TorchDynamoPlugin()), ValueError,
     r"both given; pass only the plugin"),
    (lambda: Accelerator(dynamo_backend="turbo"), ValueError, r"dynamo_backend='turbo' is not a torch.compile backend"),
    (lambda: Accelerator(dynamo_backend=3), TypeError, r"dynamo_backend=3: pass a backend name"),
    (lambda: Accelerator(dynamo_plugin={"backend": "inductor"}), TypeError, r"must be a TorchDynamoPlugin"),
    (lambda: TorchDynamoPlugin(backend="inductor", mode="fastest"), ValueError, r"mode='fastest'.*'max-autotune'"),
    (lambda: TorchDynamoPlugin(backend="inductor", fullgraph="yes"), TypeError, r"fullgraph='yes'"),
    (lambda: TorchDynamoPlugin(backend="inductor", mode="max-autotune", options={"a": 1}), ValueError,
     r"a mode or options, not both"),
], ids=["both", "unknown", "type", "plugin-type", "mode", "fullgraph", "mode-and-options"])
def test_bad_compile_inputs_raise_clear_errors(call: object, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        call()  # type: ignore[operator]
    assert not torch.distributed.is_initialized()


def test_env_with_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_FULLGRAPH", "maybe")
    with pytest.raises(ValueError, match="ACCELERATE_DYNAMO_USE_FULLGRAPH"):
        TorchDynamoPlugin(backend="aot_eager")


def test_deepspeed_with_compile_is_refused_before_anything_starts() -> None:
    from overdrive import DeepSpeedPlugin

    with pytest.raises(NotImplementedError, match="dynamo_backend='aot_eager' is not supported with DeepSpeedStrategy"):
        Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2), dynamo_backend="aot_eager")


# -- compiling: the graph runs, results equal eager -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["argument", "plugin", "env"])
def test_compiled_training_runs_the_graph_and_equals_eager(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "env":
        monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "aot_eager")
        acc = Accelerator()
    elif how == "plugin":
        acc = Accelerator(dynamo_plugin=TorchDynamoPlugin(backend="aot_eager", fullgraph=True))
    else:
        acc = Accelerator(dynamo_backend="aot_eager")
    torch._dynamo.reset()  # a fresh cache: the counters then count this test's compilations
    counters.clear()
    model, grad_fns = _train(acc, _mlp())
    assert grad_fns == {"CompiledFunctionBackward"}  # every forward went through the compiled graph
    # fullgraph=True does not count frames; unique_graphs counts captured graphs either way
    assert counters["stats"]["unique_graphs"] >= 1 and sum(counters["graph_break"].values()) == 0
    assert is_compiled(model) and type(model) is nn.Sequential  # compiled in place: same class, same keys
    ref = _eager_reference()
    got = acc.get_state_dict(model)
    assert list(got) == list(ref)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6)


def test_no_backend_leaves_the_model_eager() -> None:
    model, grad_fns = _train(Accelerator(), _mlp())
    assert not is_compiled(model) and grad_fns == {"AddmmBackward0"}


def test_a_model_compiled_by_the_user_is_not_compiled_again() -> None:
    user = torch.compile(_mlp(), backend="aot_eager")
    acc = Accelerator(dynamo_backend="aot_eager")
    model, grad_fns = _train(acc, user)
    assert model is user and grad_fns == {"CompiledFunctionBackward"}
    assert getattr(user._orig_mod, "_compiled_call_impl", None) is None


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.lin(x))


def _stack(depth: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Sequential(*[_Block() for _ in range(depth)]), nn.Linear(8, 1))


def test_repeated_blocks_finds_the_identical_children_only() -> None:
    model = _stack(3)
    assert repeated_blocks(model) == list(model[1])
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2, enable_nested_tensor=False)
    assert repeated_blocks(enc) == list(enc.layers)
    assert repeated_blocks(_mlp()) == []  # Linear, Tanh, Linear: not one class


def test_regional_compilation_compiles_each_block_once_and_equals_eager() -> None:
    depth = 12  # more blocks than dynamo's recompile limit (8): the blocks must share their compiled code
    plugin = TorchDynamoPlugin(backend="aot_eager", use_regional_compilation=True)
    model = compile_model(_stack(depth), plugin)
    compiled = [name for name, m in model.named_modules() if is_compiled(m)]
    assert compiled == [f"1.{i}" for i in range(depth)]  # the blocks; the outer layers stay eager
    torch._dynamo.reset()  # a fresh cache: the counters then count this test's compilations
    counters.clear()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    out = model(x)
    out.sum().backward()
    assert counters["frames"]["ok"] >= 1 and sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # not one graph per block
    assert not any("cache_size_limit" in str(k) or "recompile" in str(k) for k in counters["graph_break"])
    eager = _stack(depth)
    ref = eager(x)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for (name, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert list(model.state_dict()) == list(eager.state_dict())  # no _orig_mod. inside the blocks either


# -- checkpoints: compiled and plain are interchangeable --------------------------------------------------------------


def _fresh() -> None:
    from overdrive.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_compiled_checkpoint_loads_into_plain_model_and_back(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    acc = Accelerator(dynamo_backend="aot_eager")
    compiled, _ = _train(acc, _mlp())
    acc.save_state(tmp_path / "compiled")
    acc.save_model(compiled, tmp_path / "weights")
    trained = {k: v.clone() for k, v in acc.get_state_dict(compiled).items()}

    # compiled checkpoint -> plain module, by hand and through load_state
    plain = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    plain.load_state_dict(load_file(str(tmp_path / "weights" / "model.safetensors")))  # strict: keys match
    plain.load_state_dict(load_file(str(tmp_path / "compiled" / "model.safetensors")))
    _fresh()
    acc_plain = Accelerator()
    plain2 = acc_plain.prepare(_mlp())
    acc_plain.load_state(tmp_path / "compiled")
    for key, value in trained.items():
        assert torch.equal(plain.state_dict()[key], value) and torch.equal(plain2.state_dict()[key], value)

    # plain checkpoint -> compiled model
    acc_plain.save_state(tmp_path / "plain")
    _fresh()
    acc2 = Accelerator(dynamo_backend="aot_eager")
    model = acc2.prepare(_mlp())
    acc2.load_state(tmp_path / "plain")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    assert type(model(torch.ones(1, 6)).grad_fn).__name__ == "CompiledFunctionBackward"


def test_torch_compile_wrapper_keys_are_stripped(tmp_path: Path) -> None:
    """A model the user wrapped in torch.compile (keys ``_orig_mod.*``), and an Accelerate file with those keys."""
    from safetensors.torch import load_file, save_file

    acc = Accelerator()
    wrapped, _ = _train(acc, torch.compile(_mlp(), backend="aot_eager"))
    assert all(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    plain_keys = list(_mlp().state_dict())
    assert list(acc.get_state_dict(wrapped)) == plain_keys
    assert type(acc.unwrap_model(wrapped, keep_torch_compile=False)) is nn.Sequential
    acc.save_model(wrapped, tmp_path / "w")
    assert set(load_file(str(tmp_path / "w" / "model.safetensors"))) == set(plain_keys)
    acc.save_state(tmp_path / "ck")
    acc.load_state(tmp_path / "ck")  # plain keys load back into the wrapped model

    # A checkpoint written with `_orig_mod.` keys (as Accelerate writes compiled models) loads into a plain model.
    (tmp_path / "accelerate").mkdir()
    save_file({f"_orig_mod.{k}": v.contiguous() for k, v in acc.get_state_dict(wrapped).items()},
              str(tmp_path / "accelerate" / "model.safetensors"))
    _fresh()
    acc_plain = Accelerator()
    plain = acc_plain.prepare(_mlp())
    acc_plain.load_state(tmp_path / "accelerate")
    for key, value in acc.get_state_dict(wrapped).items():
        assert torch.equal(plain.state_dict()[key], value)


# -- inductor: one smoke test (a cold compile of a tiny MLP costs ~15 s on 2 cores) ------------------------------------


def test_inductor_smoke_tiny_mlp() -> None:
    acc = Accelerator(dynamo_backend="inductor")
    torch._dynamo.reset()  # a fresh cache: the counters then count this test's compilations
    counters.clear()
    model, grad_fns = _train(acc, _mlp())
    assert grad_fns == {"CompiledFunctionBackward"} and counters["inductor"]  # inductor really generated code
    ref = _eager_reference()
    for key, value in acc.get_state_dict(model).items():
        torch.testing.assert_close(value, ref[key], rtol=1e-4, atol=1e-5)


def test_launch_dynamo_flags_reach_the_plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`overdrive launch --dynamo_*` exports Accelerate's variables; the worker's TorchDynamoPlugin reads them."""
    from overdrive.commands.launch import build_env, parse_launch_args
    from overdrive.utils.dataclasses import TorchDynamoPlugin

    (tmp_path / "train.py").write_text("")
    env = build_env(parse_launch_args(["--dynamo_backend", "aot_eager", "--dynamo_mode", "max-autotune",
                                       "--dynamo_use_fullgraph", "--dynamo_use_regional_compilation",
                                       str(tmp_path / "train.py")]))
    assert env["ACCELERATE_DYNAMO_MODE"] == "max-autotune" and env["ACCELERATE_DYNAMO_USE_FULLGRAPH"] == "true"
    for key, value in env.items():
        if "DYNAMO" in key:
            monkeypatch.setenv(key, value)
    plugin = TorchDynamoPlugin()
    assert (plugin.mode, plugin.fullgraph, plugin.use_regional_compilation) == ("max-autotune", True, True)
    assert str(getattr(plugin.backend, "value", plugin.backend)).lower() == "aot_eager"
