"""overdrive.utils.modeling / offload: sizes, device maps by hand computation, checkpoint loading, bad input."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from overdrive.checkpointing import save_model_weights
from overdrive.utils import (
    OffloadedWeightsLoader,
    check_device_map,
    compute_module_sizes,
    find_tied_parameters,
    get_max_memory,
    infer_auto_device_map,
    load_checkpoint_in_model,
    named_module_tensors,
    offload_state_dict,
    set_module_tensor_to_device,
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)  # 64 + 8 floats = 288 bytes
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Net(nn.Module):
    """embed 16x8 (512 B), 3 blocks of 576 B, head tied to embed (no bias): 2240 bytes in all."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_module_sizes_by_hand() -> None:
    sizes = compute_module_sizes(Net())
    assert sizes["blocks.0.fc1"] == (64 + 8) * 4 == 288
    assert sizes["blocks.0"] == 576 and sizes["blocks"] == 3 * 576
    assert sizes["embed"] == 16 * 8 * 4 == 512
    assert sizes[""] == 512 + 3 * 576  # the tied head weight counts once
    assert compute_module_sizes(Net(), dtype=torch.float16)[""] == (512 + 3 * 576) // 2


def test_infer_auto_device_map_matches_hand_computation() -> None:
    # Devices fill in order cpu -> disk; the CPU (the main device without GPUs) keeps room for the largest layer not
    # yet placed (a whole Block, 576 B, since Block is no-split), to load offloaded layers back during forward.
    #   embed (512) + tied head (0 more): 512 <= 2000 - 576        -> cpu, head comes along (tied weights together)
    #   blocks (1728): 512 + 1728 > 2000 (no layer left to reserve) -> split into blocks.0..2
    #   blocks.0: 512 + 576 = 1088 <= 2000 - 576                    -> cpu
    #   blocks.1: 1088 + 576 = 1664 > 1424, a Block is not split    -> next device: disk; blocks.2 follows it
    model = Net()
    device_map = infer_auto_device_map(model, max_memory={"cpu": 2000}, no_split_module_classes=["Block"])
    assert dict(device_map) == {"embed": "cpu", "head": "cpu", "blocks.0": "cpu", "blocks.1": "disk", "blocks.2": "disk"}
    # Everything fits: one entry for the whole model.
    assert dict(infer_auto_device_map(model, max_memory={"cpu": 10_000})) == {"": "cpu"}
    # Without no-split classes the largest layer is a Linear (288 B), so the reserve is smaller and blocks.1 fits:
    #   blocks.1: 1088 + 576 = 1664 <= 2000 - 288; blocks.2 is split, its fc1 does not fit (1952 > 1712) -> disk.
    split = infer_auto_device_map(model, max_memory={"cpu": 2000})
    assert dict(split) == {"embed": "cpu", "head": "cpu", "blocks.0": "cpu", "blocks.1": "cpu", "blocks.2": "disk"}


@pytest.mark.parametrize("cap", [600, 1200, 1500, 2000, 2300, 3000])
@pytest.mark.parametrize("no_split", [None, ["Block"]])
def test_infer_auto_device_map_agrees_with_accelerate(cap: int, no_split: list[str] | None) -> None:
    acc = pytest.importorskip("accelerate.utils")
    model = Net()
    ours = infer_auto_device_map(model, max_memory={"cpu": cap}, no_split_module_classes=no_split)
    theirs = acc.infer_auto_device_map(model, max_memory={"cpu": cap}, no_split_module_classes=no_split)
    assert dict(ours) == dict(theirs)


def test_get_max_memory_converts_and_rejects_unknown_devices() -> None:
    assert get_max_memory({"disk": "1GB", "cpu": "2KiB"}) == {"cpu": 2048, "disk": 10**9}
    assert "cpu" in get_max_memory()
    with pytest.raises(ValueError, match=r"unknown device\(s\) \['gpu'\]"):
        get_max_memory({"gpu": 100})
    with pytest.raises(ValueError, match=r"max_memory\['cpu'\]='lots' is not a size"):
        get_max_memory({"cpu": "lots"})


def test_check_device_map_names_the_problem() -> None:
    model = Net()
    with pytest.raises(ValueError, match=r"no device for blocks\.2\.fc1\.weight, blocks\.2\.fc1\.bias"):
        check_device_map(model, {"embed": "cpu", "head": "cpu", "blocks.0": "cpu", "blocks.1": "disk"})
    with pytest.raises(ValueError, match=r"unknown device\(s\) \{'blocks': 'gpu7'\}"):
        check_device_map(model, {"embed": "cpu", "head": "cpu", "blocks": "gpu7"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device_map\['blocks'\] = 'cuda:0' but this machine has 0 CUDA"):
            check_device_map(model, {"embed": "cpu", "head": "cpu", "blocks": "cuda:0"})
    with pytest.warns(UserWarning, match=r"\['nope'\] match no submodule"):
        check_device_map(model, {"": "cpu", "nope": "cpu"})


def test_tied_and_named_tensors() -> None:
    model = Net()
    assert find_tied_parameters(model) == [["embed.weight", "head.weight"]]
    bn = nn.BatchNorm1d(2)
    bn.register_buffer("scratch", torch.zeros(1), persistent=False)
    assert [n for n, _ in named_module_tensors(bn, remove_non_persistent=True)] == [
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert "scratch" in [n for n, _ in named_module_tensors(bn)]


def test_set_module_tensor_to_device() -> None:
    lin = nn.Linear(2, 3, device="meta")
    with pytest.raises(ValueError, match="'weight' is on the meta device; pass value="):
        set_module_tensor_to_device(lin, "weight", "cpu")
    with pytest.raises(ValueError, match=r"shape \(2, 3\) but the model's tensor has shape \(3, 2\)"):
        set_module_tensor_to_device(lin, "weight", "cpu", value=torch.ones(2, 3))
    set_module_tensor_to_device(lin, "weight", "cpu", value=torch.ones(3, 2, dtype=torch.float64))
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.dtype == torch.float32  # cast to the model's dtype
    set_module_tensor_to_device(lin, "bias", "cpu", value=torch.ones(3), dtype=torch.float16)
    assert lin.bias.dtype == torch.float16
    with pytest.raises(ValueError, match="no parameter or buffer named 'nope'"):
        set_module_tensor_to_device(lin, "nope", "cpu")


def test_offload_folder_round_trip(tmp_path: Path) -> None:
    tensors = {"a.weight": torch.randn(3, 4), "b": torch.tensor(2.5), "c": torch.randn(5).to(torch.bfloat16),
               "view": torch.arange(10.0)[2:5]}
    offload_state_dict(tmp_path, tensors)
    assert (tmp_path / "index.json").is_file() and (tmp_path / "a.weight.safetensors").is_file()
    loader = OffloadedWeightsLoader(save_folder=tmp_path)
    assert sorted(loader) == sorted(tensors)
    for name, expected in tensors.items():
        assert loader[name].dtype == expected.dtype and torch.equal(loader[name], expected), name


def test_offload_folder_reads_accelerates_raw_layout(tmp_path: Path) -> None:
    acc = pytest.importorskip("accelerate.utils")
    tensors = {"w": torch.randn(2, 3), "h": torch.randn(4).to(torch.bfloat16), "s": torch.tensor(1.5)}
    acc.offload_state_dict(str(tmp_path), tensors)  # Accelerate writes <name>.dat files
    loader = OffloadedWeightsLoader(save_folder=tmp_path)
    for name, expected in tensors.items():
        assert torch.equal(loader[name], expected), name


def _reference_and_checkpoint(tmp_path: Path, shard: int | str = 700) -> tuple[Net, Path]:
    torch.manual_seed(0)
    model = Net()
    files = save_model_weights(model.state_dict(), tmp_path / "ckpt", max_shard_size=shard)
    assert "model.safetensors.index.json" in files
    return model, tmp_path / "ckpt"


def test_load_checkpoint_in_model_sharded_with_dtype(tmp_path: Path) -> None:
    reference, ckpt = _reference_and_checkpoint(tmp_path)
    with torch.device("meta"):
        model = Net()
    load_checkpoint_in_model(model, ckpt / "model.safetensors.index.json", dtype=torch.float16)
    assert model.head.weight is model.embed.weight  # still tied
    for name, tensor in reference.state_dict().items():
        got = model.state_dict()[name]
        assert got.dtype == torch.float16 and torch.equal(got, tensor.half()), name


def test_load_checkpoint_in_model_torch_file_and_disk(tmp_path: Path) -> None:
    reference = Net()
    torch.save(reference.state_dict(), tmp_path / "weights.bin")
    model = Net()
    load_checkpoint_in_model(
        model, tmp_path / "weights.bin", device_map={"embed": "cpu", "head": "cpu", "blocks": "disk"},
        offload_folder=tmp_path / "off",
    )
    assert model.blocks[0].fc1.weight.device.type == "meta" and torch.equal(model.embed.weight, reference.embed.weight)
    loader = OffloadedWeightsLoader(save_folder=tmp_path / "off")
    assert torch.equal(loader["blocks.2.fc2.bias"], reference.blocks[2].fc2.bias)


def test_load_checkpoint_key_mismatch_names_keys(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in Net().state_dict().items() if not k.startswith("blocks.2.")}
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing from the checkpoint: blocks\.2\.fc1\.bias.*not in the model: "
                                         r"extra\.weight"):
        load_checkpoint_in_model(Net(), tmp_path, strict=True)
    with torch.device("meta"):
        empty = Net()
    with pytest.raises(ValueError, match=r"missing from the checkpoint: blocks\.2\.fc1\.bias"):
        load_checkpoint_in_model(empty, tmp_path)  # would leave meta tensors: the model could not run
    load_checkpoint_in_model(Net(), tmp_path)  # a materialised model may take a partial checkpoint (as Accelerate)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint_in_model(Net(), tmp_path / "missing")
    with pytest.raises(ValueError, match=r"'disk'.*offload_folder="):
        load_checkpoint_in_model(Net(), tmp_path, device_map={"": "disk"})


MODELING_NAMES = [
    "compute_module_sizes", "get_max_memory", "get_balanced_memory", "infer_auto_device_map",
    "named_module_tensors", "set_module_tensor_to_device", "find_tied_parameters", "retie_parameters",
    "load_checkpoint_in_model", "check_device_map", "dtype_byte_size", "get_max_layer_size", "load_state_dict",
    "load_offloaded_weights", "check_tied_parameters_on_same_device", "calculate_maximum_sizes",
    "has_offloaded_params", "align_module_device", "clean_device_map", "get_non_persistent_buffers",
    "compute_module_total_buffer_size", "get_state_dict_offloaded_model",
]
OFFLOAD_NAMES = ["offload_state_dict", "offload_weight", "load_offloaded_weight", "save_offload_index",
                 "OffloadedWeightsLoader", "PrefixedDataset", "extract_submodules_state_dict"]


def _params(obj: object) -> list[tuple[str, str, object]]:
    fn = obj.__init__ if inspect.isclass(obj) else obj  # type: ignore[misc]
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


@pytest.mark.parametrize(("module", "name"), [("modeling", n) for n in MODELING_NAMES] + [("offload", n) for n in OFFLOAD_NAMES])
def test_signatures_match_accelerate(module: str, name: str) -> None:
    pytest.importorskip("accelerate")
    import importlib

    ours = getattr(importlib.import_module(f"overdrive.utils.{module}"), name)
    theirs = getattr(importlib.import_module(f"accelerate.utils.{module}"), name)
    assert _params(ours) == _params(theirs)
    if module == "modeling" and name in ("infer_auto_device_map", "load_checkpoint_in_model", "compute_module_sizes"):
        import overdrive.utils

        assert getattr(overdrive.utils, name) is ours  # exported at Accelerate's accelerate.utils names too
    assert ours.__module__ == f"overdrive.utils.{module}"  # at Accelerate's module path
