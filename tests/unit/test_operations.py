"""Nested-structure operations and collectives at world size 1 (no process group), with Accelerate as reference."""

from __future__ import annotations

import inspect
import pickle
from collections import OrderedDict, namedtuple

import pytest
import torch

import overdrive.utils.operations as ops

acc_ops = pytest.importorskip("accelerate.utils.operations")

Pair = namedtuple("Pair", "a b")

PUBLIC = [
    "broadcast",
    "broadcast_object_list",
    "concatenate",
    "convert_outputs_to_fp32",
    "convert_to_fp32",
    "find_batch_size",
    "find_device",
    "gather",
    "gather_object",
    "get_data_structure",
    "get_shape",
    "honor_type",
    "ignorant_find_batch_size",
    "initialize_tensors",
    "is_namedtuple",
    "is_torch_tensor",
    "listify",
    "pad_across_processes",
    "recursively_apply",
    "reduce",
    "send_to_device",
    "slice_tensors",
]


def _params(fn):
    out = []
    for p in inspect.signature(fn).parameters.values():
        default = p.default
        if callable(default) and default is not inspect.Parameter.empty:
            default = default.__name__  # compare default functions by name (is_torch_tensor)
        out.append((p.name, p.kind, default))
    return out


@pytest.fixture(autouse=True)
def _no_process_group():
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())


@pytest.mark.parametrize("name", PUBLIC)
def test_signature_matches_accelerate(name):
    assert _params(getattr(ops, name)) == _params(getattr(acc_ops, name))


def test_convert_outputs_class_signature_matches_accelerate():
    assert _params(ops.ConvertOutputsToFp32) == _params(acc_ops.ConvertOutputsToFp32)


def _nested(scalar: bool = True):
    return {
        "x": torch.arange(6.0).reshape(3, 2),
        "pair": Pair(
            torch.tensor([1, 2, 3]),
            [torch.tensor(0.5) if scalar else torch.full((3,), 0.5), (torch.ones(3, 1, dtype=torch.bfloat16),)],
        ),
        "od": OrderedDict(k=torch.zeros(3, dtype=torch.bool)),
    }


def _same(a, b):
    """Structural + value equality for nested outputs (types included)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


# -- collectives are no-ops at world size 1 -------------------------------------------------------------------------


def test_gather_world1_returns_input_like_accelerate():
    data = _nested()
    assert ops.gather(data) is data
    scalar = torch.tensor(3.0)
    assert ops.gather(scalar) is scalar  # Accelerate: 0-d stays 0-d when there is no group
    assert acc_ops.gather(scalar).shape == ops.gather(scalar).shape


def test_gather_object_world1():
    obj = ["a", {"b": 1}]
    assert ops.gather_object(obj) is obj


def test_reduce_world1_clones_and_validates():
    data = {"a": torch.tensor([1.0, 2.0]), "b": [torch.tensor(3)]}
    for reduction in ("mean", "sum", "none", "max", "min"):
        out = ops.reduce(data, reduction=reduction)
        _same(out, data)
        assert out["a"] is not data["a"]  # a new tensor, as Accelerate's clone
    _same(ops.reduce(data), acc_ops.reduce(data))
    scaled = ops.reduce(torch.tensor([1.0, 2.0]), "sum", scale=3.0)
    assert torch.equal(scaled, torch.tensor([3.0, 6.0]))


def test_reduce_rejects_unknown_reduction():
    with pytest.raises(ValueError) as info:
        ops.reduce(torch.ones(2), reduction="median")
    msg = str(info.value)
    assert "'median'" in msg
    for allowed in ("'mean'", "'sum'", "'none'", "'max'", "'min'"):
        assert allowed in msg


def test_reduce_non_tensor_leaf_is_type_error():
    with pytest.raises(TypeError, match="str"):
        ops.reduce({"a": "text"})


def test_broadcast_world1():
    data = [torch.ones(2)]
    assert ops.broadcast(data) is data
    objs = [{"a": 1}]
    assert ops.broadcast_object_list(objs) is objs


def test_pad_across_processes_world1_keeps_tensors():
    data = _nested()
    out = ops.pad_across_processes(data, dim=1, pad_index=-1, pad_first=True)
    _same(out, data)
    assert out["x"] is data["x"]
    _same(out, acc_ops.pad_across_processes(data, dim=1, pad_index=-1, pad_first=True))
    with pytest.raises(TypeError, match="str"):
        ops.pad_across_processes({"a": torch.ones(1), "b": "label"})


# -- structure helpers, checked against Accelerate -------------------------------------------------------------------


def test_concatenate_matches_accelerate_and_torch():
    batches = [_nested(scalar=False), _nested(scalar=False)]
    ours = ops.concatenate(batches)
    _same(ours, acc_ops.concatenate(batches))
    assert torch.equal(ours["x"], torch.cat([batches[0]["x"], batches[1]["x"]]))
    assert isinstance(ours["pair"], Pair)
    two_d = [torch.ones(2, 3), torch.zeros(2, 1)]
    assert torch.equal(ops.concatenate(two_d, dim=1), torch.cat(two_d, dim=1))
    assert ops.concatenate(["only"]) == "only"
    with pytest.raises(TypeError, match="str"):
        ops.concatenate(["a", "b"])


def test_find_batch_size():
    data = _nested()
    assert ops.find_batch_size(data) == acc_ops.find_batch_size(data) == 3
    assert ops.find_batch_size([(torch.zeros(5, 2),)]) == 5
    with pytest.raises(ValueError, match="empty"):
        ops.find_batch_size([])
    with pytest.raises(TypeError, match="str"):
        ops.find_batch_size(["text"])
    assert ops.ignorant_find_batch_size(["text"]) is None
    assert ops.ignorant_find_batch_size({"a": torch.zeros(2)}) == 2


def test_listify_matches_accelerate():
    data = _nested()
    ours = ops.listify(data)
    assert ours == acc_ops.listify(data)
    assert ours["x"] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


def test_convert_to_fp32():
    data = {"h": torch.ones(2, dtype=torch.float16), "b": torch.ones(1, dtype=torch.bfloat16),
            "i": torch.ones(1, dtype=torch.int64), "s": "keep"}
    out = ops.convert_to_fp32(data)
    assert out["h"].dtype == out["b"].dtype == torch.float32
    assert out["i"].dtype == torch.int64 and out["s"] == "keep"
    _same(out, acc_ops.convert_to_fp32(data))


def test_convert_outputs_to_fp32_wraps_forward():
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    original = model.forward
    model.forward = ops.convert_outputs_to_fp32(model.forward)
    x = torch.ones(1, 2, dtype=torch.bfloat16)
    out = model(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, original(x).float())
    assert isinstance(model.forward.__wrapped__, ops.ConvertOutputsToFp32)
    assert model.forward.__wrapped__.model_forward == original
    with pytest.raises(pickle.PicklingError, match="unwrap"):
        pickle.dumps(model.forward.__wrapped__)


def test_slice_get_shape_find_device_structure():
    data = _nested(scalar=False)
    sliced = ops.slice_tensors(data, slice(0, 2))
    _same(sliced, acc_ops.slice_tensors(data, slice(0, 2)))
    assert sliced["x"].shape == (2, 2)
    assert ops.get_shape(data) == acc_ops.get_shape(data)
    assert ops.find_device([1, data]) == torch.device("cpu")
    assert ops.find_device(["a", {}]) is None
    info = ops.get_data_structure(data)
    assert info["x"].shape == torch.Size([3, 2]) and info["x"].dtype == torch.float32
    empty = ops.initialize_tensors(info)
    assert empty["pair"].a.shape == (3,) and empty["od"]["k"].dtype == torch.bool
    assert ops.is_namedtuple(Pair(1, 2)) and not ops.is_namedtuple((1, 2))


def test_recursively_apply_keeps_types():
    data = _nested()
    out = ops.recursively_apply(lambda t: t + 1, data)
    assert isinstance(out["od"], OrderedDict) and isinstance(out["pair"], Pair)
    assert torch.equal(out["x"], data["x"] + 1)
    with pytest.raises(TypeError, match="int"):
        ops.recursively_apply(lambda t: t, [torch.ones(1), 3], error_on_other_type=True)
