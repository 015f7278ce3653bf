"""overdrive.big_modeling: meta init, load_checkpoint_and_dispatch of sharded checkpoints, CPU/disk offload (outputs
equal the plain model's), bad input, signatures, and peak RSS under disk offload in a fresh process."""

from __future__ import annotations

import inspect
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import overdrive
from overdrive import (
    cpu_offload,
    cpu_offload_with_hook,
    disk_offload,
    dispatch_model,
    init_empty_weights,
    init_on_device,
    load_checkpoint_and_dispatch,
)
from overdrive.checkpointing import save_model_weights
from overdrive.hooks import remove_hook_from_submodules

ROOT = Path(__file__).resolve().parents[2]


class Block(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * d)
        self.norm = nn.LayerNorm(2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.norm(self.fc1(x))))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 32, d: int = 16, n: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.bn = nn.BatchNorm1d(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.bn(x))


def _reference(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    model = TinyLM()
    model.bn.running_mean.uniform_(-1, 1)  # non-default buffer values, so that loading them is checked
    return model.eval()


IDS = torch.arange(12).reshape(12) % 32


def _plain_output(model: nn.Module) -> torch.Tensor:
    """The plain in-memory model's output, checked against the computation written out by hand in pure PyTorch."""
    with torch.no_grad():
        out = model(IDS)
    torch.testing.assert_close(out, _by_hand(model), rtol=1e-5, atol=1e-5)  # op order differs: not bitwise
    return out


def _by_hand(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        x = model.embed.weight[IDS]
        for b in model.blocks:
            h = torch.nn.functional.linear(x, b.fc1.weight, b.fc1.bias)
            h = torch.nn.functional.layer_norm(h, (h.shape[-1],), b.norm.weight, b.norm.bias, b.norm.eps)
            x = x + torch.nn.functional.linear(torch.relu(h), b.fc2.weight, b.fc2.bias)
        x = (x - model.bn.running_mean) / torch.sqrt(model.bn.running_var + model.bn.eps) * model.bn.weight + model.bn.bias
        return x @ model.embed.weight.T


def _save(model: nn.Module, folder: Path) -> Path:
    files = save_model_weights(model.state_dict(), folder, max_shard_size=3000)  # several shards + an index
    assert len(files) > 3 and "model.safetensors.index.json" in files
    return folder


def test_init_empty_weights_allocates_nothing() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with init_empty_weights():
        big = nn.Sequential(*[nn.Linear(8192, 8192) for _ in range(6)], nn.BatchNorm1d(8192))  # 1.6 GB of fp32
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert all(p.is_meta for p in big.parameters())
    assert not big[-1].running_mean.is_meta  # buffers are real unless include_buffers=True
    assert grown_kb < 100 * 1024, f"peak RSS grew {grown_kb} kB while building a 1.6 GB model on meta"
    with init_empty_weights(include_buffers=True):
        bn = nn.BatchNorm1d(4)
    assert bn.running_mean.is_meta
    with init_on_device(torch.device("cpu")):
        lin = nn.Linear(2, 2)
    assert lin.weight.device.type == "cpu" and isinstance(lin.weight, nn.Parameter)
    assert nn.Module.register_parameter.__qualname__ == "Module.register_parameter"  # restored


@pytest.mark.parametrize("device_map", ["auto", "sequential", "dict", None])
def test_load_checkpoint_and_dispatch_sharded_equals_plain(tmp_path: Path, device_map: str | None) -> None:
    reference = _reference()
    expected = _plain_output(reference)
    ckpt = _save(reference, tmp_path / "ckpt")
    with init_empty_weights():
        model = TinyLM()
    if device_map == "dict":
        dmap: object = {"embed": "cpu", "head": "cpu", "blocks.0": "cpu", "blocks.1": "disk", "blocks.2": "disk",
                        "blocks.3": "cpu", "bn": "disk"}
    else:
        dmap = device_map
    model = load_checkpoint_and_dispatch(
        model, ckpt, device_map=dmap,  # type: ignore[arg-type]
        max_memory={"cpu": 8000}, no_split_module_classes=["Block"], offload_folder=tmp_path / "offload",
    )
    with torch.no_grad():
        out = model.eval()(IDS)  # a freshly built model is in training mode (BatchNorm would use batch statistics)
    assert torch.equal(out, expected)
    if device_map is not None:
        assert "disk" in model.hf_device_map.values()
        assert any(p.is_meta for p in model.parameters())  # offloaded weights are not held by the model
        assert (tmp_path / "offload" / "index.json").is_file()


def test_load_with_dtype_converts(tmp_path: Path) -> None:
    ckpt = _save(_reference(), tmp_path / "ckpt")
    with init_empty_weights():
        model = TinyLM()
    model = load_checkpoint_and_dispatch(model, ckpt, device_map={"": "cpu"}, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.bn.num_batches_tracked.dtype == torch.int64  # integral tensors keep their dtype


def test_disk_offload_equals_in_memory(tmp_path: Path) -> None:
    model = _reference()
    expected = _plain_output(model)
    disk_offload(model, tmp_path / "off", execution_device=torch.device("cpu"))
    assert all(p.is_meta for p in model.parameters())
    files = set(os.listdir(tmp_path / "off"))
    assert "index.json" in files and "blocks.0.fc1.weight.safetensors" in files
    with torch.no_grad():
        assert torch.equal(model(IDS), expected)
        assert torch.equal(model(IDS), expected)  # and again: weights are reloaded each time
    remove_hook_from_submodules(model)


def test_cpu_offload_and_with_hook_equal_in_memory() -> None:
    model = _reference()
    expected = _plain_output(model)
    cpu_offload(model, execution_device=torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(model(IDS), expected)
    other = _reference(1)
    expected_other = _plain_output(other)
    other, hook = cpu_offload_with_hook(other, execution_device="cpu")
    with torch.no_grad():
        assert torch.equal(other(IDS), expected_other)
    hook.offload()
    hook.remove()


def test_dispatch_model_bad_input_names_it(tmp_path: Path) -> None:
    model = _reference()
    with pytest.raises(ValueError, match=r"no device for blocks\.3\.fc1\.weight"):
        dispatch_model(model, {"embed": "cpu", "head": "cpu", "bn": "cpu", "blocks.0": "cpu", "blocks.1": "cpu",
                               "blocks.2": "cpu"})
    with pytest.raises(ValueError, match=r"unknown device\(s\) \{'blocks': 'tpu9'\}"):
        dispatch_model(model, {"embed": "cpu", "head": "cpu", "bn": "cpu", "blocks": "tpu9"})
    with pytest.raises(ValueError, match=r"sends \['blocks'\] to 'disk'; pass offload_dir="):
        dispatch_model(model, {"embed": "cpu", "head": "cpu", "bn": "cpu", "blocks": "disk"})
    assert not any(hasattr(m, "_hf_hook") for m in model.modules())  # nothing touched before the errors
    with pytest.raises(ValueError, match=r"device_map='fastest' is not one of"):
        load_checkpoint_and_dispatch(model, tmp_path, device_map="fastest")


def test_checkpoint_of_another_model_names_the_keys(tmp_path: Path) -> None:
    other = nn.Sequential(nn.Linear(16, 16))
    save_model_weights(other.state_dict(), tmp_path / "ckpt")
    with init_empty_weights():
        model = TinyLM()
    with pytest.raises(ValueError, match=r"missing from the checkpoint: blocks\.0\.fc1\.bias.*\(and 16 more\); in the "
                                         r"checkpoint but not in the model: 0\.bias, 0\.weight"):
        load_checkpoint_and_dispatch(model, tmp_path / "ckpt", device_map={"": "cpu"})


def test_dispatched_model_refuses_to_move(tmp_path: Path) -> None:
    model = _reference()
    dispatch_model(model, {"embed": "cpu", "head": "cpu", "bn": "cpu", "blocks": "disk"}, offload_dir=tmp_path)
    with pytest.raises(RuntimeError, match="cannot be moved"):
        model.to("cpu")
    remove_hook_from_submodules(model)
    assert "to" not in vars(model)


BIG_NAMES = ["init_empty_weights", "init_on_device", "cpu_offload", "cpu_offload_with_hook", "disk_offload",
             "dispatch_model", "load_checkpoint_and_dispatch"]


@pytest.mark.parametrize("name", BIG_NAMES + ["infer_auto_device_map", "load_checkpoint_in_model"])
def test_signatures_match_accelerate(name: str) -> None:
    accelerate = pytest.importorskip("accelerate")

    def shape(fn: object) -> list[tuple[str, str, object]]:
        return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]

    assert shape(getattr(overdrive, name)) == shape(getattr(accelerate, name))
    if name in BIG_NAMES:  # also at Accelerate's module path
        from overdrive import big_modeling

        assert getattr(big_modeling, name) is getattr(overdrive, name)


def test_disk_offload_peak_rss_below_model_size(tmp_path: Path) -> None:
    # ~151 MB model (18 blocks of 8.4 MB); with 40 MB of CPU budget most blocks go to disk. Fresh processes, so the
    # saving process's copy of the weights is not counted; bench/offload_rss.py does the measuring.
    args = ["--folder", str(tmp_path), "--width", "512", "--blocks", "18", "--cap", "40MB"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    results = {}
    for mode in ("save", "offload"):
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "offload_rss.py"), "--child", mode, *args],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    size, run = results["save"]["model_bytes"], results["offload"]
    assert run["equal"], run
    assert run["disk_blocks"] >= 10, run
    # The process's own memory (anonymous pages, sampled every ms): mapped pages of the offload folder are page
    # cache, and how many of them stay mapped varies with the machine's state (ru_maxrss counts them; the bench
    # reports it).
    assert run["anon_delta"] < size / 2, (
        f"peak anonymous RSS grew {run['anon_delta'] / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB model")
