"""Operations on nested structures of tensors (lists, tuples, dicts, namedtuples), and collectives over them.

Every collective is a no-op (returns its input) when no process group spans more than one process; the world size
is read from ``torch.distributed`` directly, so these work with or without an ``Accelerator``.

Collectives check shapes before moving data: ``gather``, ``broadcast`` and ``pad_across_processes`` first exchange
one small fixed-size integer tensor describing every tensor in the structure (dtype and shape). A mismatch then
raises :class:`DistributedOperationException` on *every* rank at the same time, naming each rank's shape, instead of
hanging or returning garbage. That costs one extra 64-integer all-gather per call, whatever the number of tensors.

In debug mode (``OVERDRIVE_DEBUG=1``) every collective here first agrees with the other ranks on the operation, the
shapes and the caller's file:line through the process group's store (see :mod:`overdrive.debug`), so a skipped or
mismatched collective fails within seconds on every rank, naming each rank's call site; the hang watchdog sees each
collective enter and leave. With neither, a collective pays one module attribute check.

Example:
    >>> import torch
    >>> send_to_device({"x": torch.ones(2)}, "cpu")["x"].device.type
    'cpu'
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import update_wrapper
from typing import Any

import torch
import torch.distributed as dist

from .. import debug as _debug

__all__ = [
    "CannotPadNestedTensorWarning",
    "ConvertOutputsToFp32",
    "DistributedOperationException",
    "TensorInformation",
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
    "is_tensor_like",
    "is_torch_tensor",
    "listify",
    "pad_across_processes",
    "recursively_apply",
    "reduce",
    "send_to_device",
    "slice_tensors",
]


class DistributedOperationException(RuntimeError):
    """A collective could not run because the processes passed incompatible data (shapes, dtypes, structure).

    Raised on every rank at once, so no process is left waiting in a collective.

    Example:
        >>> issubclass(DistributedOperationException, RuntimeError)
        True
    """


class CannotPadNestedTensorWarning(UserWarning):
    """Warned when :func:`pad_across_processes` meets a nested tensor, which it leaves as is.

    Example:
        >>> issubclass(CannotPadNestedTensorWarning, UserWarning)
        True
    """


@dataclass
class TensorInformation:
    """Shape and dtype of a tensor, enough to allocate an empty one (see :func:`initialize_tensors`).

    Example:
        >>> TensorInformation(shape=torch.Size([2]), dtype=torch.float32).shape
        torch.Size([2])
    """

    shape: torch.Size
    dtype: torch.dtype


# -- structure helpers ---------------------------------------------------------------------------------------------


def is_torch_tensor(tensor: Any) -> bool:
    """True for ``torch.Tensor`` instances.

    Example:
        >>> is_torch_tensor(torch.ones(1)), is_torch_tensor([1])
        (True, False)
    """
    return isinstance(tensor, torch.Tensor)


def is_tensor_information(tensor_info: Any) -> bool:
    """True for :class:`TensorInformation` instances.

    Example:
        >>> is_tensor_information(TensorInformation(torch.Size([1]), torch.float32))
        True
    """
    return isinstance(tensor_info, TensorInformation)


def is_namedtuple(data: Any) -> bool:
    """True for namedtuple instances (tuples with ``_fields`` and ``_asdict``).

    Example:
        >>> from collections import namedtuple
        >>> is_namedtuple(namedtuple("P", "x y")(1, 2)), is_namedtuple((1, 2))
        (True, False)
    """
    return isinstance(data, tuple) and hasattr(data, "_asdict") and hasattr(data, "_fields")


def is_tensor_like(obj: Any) -> bool:
    """True for tensors and objects that behave like one for device moves (have ``.to``).

    Example:
        >>> is_tensor_like(torch.ones(1)), is_tensor_like("text")
        (True, False)
    """
    return isinstance(obj, torch.Tensor) or (hasattr(obj, "to") and callable(obj.to) and not isinstance(obj, type))


def honor_type(obj: Any, generator: Any) -> Any:
    """Build a sequence of ``obj``'s type (tuple, list, namedtuple) from ``generator``.

    Example:
        >>> honor_type((1, 2), (x * 2 for x in (1, 2)))
        (2, 4)
    """
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple: positional constructor
        return type(obj)(*list(generator))
    return type(obj)(generator)


def _same_mapping_type(original: Mapping[Any, Any], items: dict[Any, Any]) -> Any:
    """Rebuild ``items`` as the concrete mapping type of ``original`` (dict, OrderedDict, BatchEncoding-like...)."""
    # the concrete class takes a dict positionally; abstract Mapping's type gives mypy no such constructor
    mapping_type: Callable[[dict[Any, Any]], Any] = type(original)
    return mapping_type(items)


def recursively_apply(
    func: Callable[..., Any],
    data: Any,
    *args: Any,
    test_type: Callable[[Any], bool] = is_torch_tensor,
    error_on_other_type: bool = False,
    **kwargs: Any,
) -> Any:
    """Apply ``func`` to every leaf of ``data`` that passes ``test_type``, keeping the container structure.

    Example:
        >>> import torch
        >>> recursively_apply(lambda t: t * 2, [torch.tensor(1), {"a": torch.tensor(2)}])
        [tensor(2), {'a': tensor(4)}]
    """
    if isinstance(data, (tuple, list)):
        return honor_type(
            data,
            (
                recursively_apply(
                    func, o, *args, test_type=test_type, error_on_other_type=error_on_other_type, **kwargs
                )
                for o in data
            ),
        )
    if isinstance(data, Mapping):
        return _same_mapping_type(
            data,
            {
                k: recursively_apply(
                    func, v, *args, test_type=test_type, error_on_other_type=error_on_other_type, **kwargs
                )
                for k, v in data.items()
            },
        )
    if test_type(data):
        return func(data, *args, **kwargs)
    if error_on_other_type:
        raise TypeError(
            f"{getattr(func, '__name__', 'this operation')} only works on tensors and nested lists/tuples/dicts of "
            f"tensors; got a {type(data).__name__} leaf ({data!r:.80}). Remove it or convert it to a tensor first"
        )
    return data


def _already_on(items: Iterable[Any], device: torch.device | str | int) -> bool:
    """True when every item is a plain tensor already on ``device`` (a flat batch that needs no move)."""
    target = device if isinstance(device, torch.device) else torch.device(device)
    if target.type != "cpu" and target.index is None:
        return False  # "cuda" means the current device: let .to() decide
    seen = False
    for item in items:
        if type(item) is not torch.Tensor or item.device != target:
            return False
        seen = True
    return seen


def send_to_device(
    tensor: Any, device: torch.device | str | int, non_blocking: bool = False, skip_keys: list[str] | str | None = None
) -> Any:
    """Move every tensor in a nested structure to ``device``; other leaves are returned unchanged.

    ``skip_keys`` names dict keys whose values are left where they are.

    Example:
        >>> import torch
        >>> send_to_device([torch.ones(1), "label"], "cpu")
        [tensor([1.]), 'label']
    """
    if isinstance(skip_keys, str):
        skip_keys = [skip_keys]
    if isinstance(tensor, (tuple, list)):
        if _already_on(tensor, device):
            return tensor  # the common batch on CPU: nothing to move, no per-step rebuild of the structure
        return honor_type(tensor, (send_to_device(t, device, non_blocking, skip_keys) for t in tensor))
    if isinstance(tensor, Mapping):
        if not skip_keys and _already_on(tensor.values(), device):
            return tensor
        skip = skip_keys or ()
        return _same_mapping_type(
            tensor,
            {k: v if k in skip else send_to_device(v, device, non_blocking, skip_keys) for k, v in tensor.items()},
        )
    if isinstance(tensor, torch.Tensor):
        return tensor.to(device, non_blocking=non_blocking)
    if is_tensor_like(tensor) and not isinstance(tensor, (str, bytes, int, float, bool)):
        try:
            return tensor.to(device, non_blocking=non_blocking)
        except TypeError:
            return tensor.to(device)
    return tensor


def get_data_structure(data: Any) -> Any:
    """Replace every tensor in ``data`` by its :class:`TensorInformation` (shape and dtype).

    Example:
        >>> get_data_structure({"x": torch.ones(2)})["x"].shape
        torch.Size([2])
    """

    def _info(tensor: torch.Tensor) -> TensorInformation:
        return TensorInformation(shape=tensor.shape, dtype=tensor.dtype)

    return recursively_apply(_info, data)


def get_shape(data: Any) -> Any:
    """Replace every tensor in ``data`` by its shape as a list of ints.

    Example:
        >>> get_shape([torch.ones(2, 3)])
        [[2, 3]]
    """

    def _shape(tensor: torch.Tensor) -> list[int]:
        return list(tensor.shape)

    return recursively_apply(_shape, data)


def initialize_tensors(data_structure: Any) -> Any:
    """Allocate an empty tensor for every :class:`TensorInformation` in ``data_structure``.

    Example:
        >>> initialize_tensors([TensorInformation(torch.Size([2]), torch.int64)])[0].shape
        torch.Size([2])
    """

    def _empty(info: TensorInformation) -> torch.Tensor:
        return torch.empty(*info.shape, dtype=info.dtype)

    return recursively_apply(_empty, data_structure, test_type=is_tensor_information)


def find_batch_size(data: Any) -> int:
    """Size of dim 0 of the first tensor found in ``data`` (first element of lists/tuples, first key of dicts).

    Example:
        >>> find_batch_size({"input_ids": torch.zeros(4, 7), "labels": torch.zeros(4)})
        4
    """
    if isinstance(data, (tuple, list, Mapping)) and len(data) == 0:
        raise ValueError(f"Cannot find the batch size of an empty {type(data).__name__}: it holds no tensor")
    if isinstance(data, (tuple, list)):
        return find_batch_size(data[0])
    if isinstance(data, Mapping):
        return find_batch_size(next(iter(data.values())))
    if not isinstance(data, torch.Tensor):
        raise TypeError(
            f"Can only find the batch size of tensors (or lists/tuples/dicts of them); got a {type(data).__name__}"
        )
    if data.ndim == 0:
        raise ValueError("Cannot find the batch size of a 0-d tensor: it has no dim 0")
    return data.shape[0]


def ignorant_find_batch_size(data: Any) -> int | None:
    """Like :func:`find_batch_size` but returns ``None`` instead of raising when there is no batch size.

    Example:
        >>> ignorant_find_batch_size(["text"]) is None
        True
    """
    try:
        return find_batch_size(data)
    except (ValueError, TypeError):
        return None


def listify(data: Any) -> Any:
    """Turn every tensor in ``data`` into Python numbers (nested lists), on CPU; bf16 goes through fp32.

    Example:
        >>> listify({"a": torch.tensor([1, 2])})
        {'a': [1, 2]}
    """

    def _to_list(tensor: torch.Tensor) -> Any:
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.to(torch.float32)  # NumPy and .tolist() paths have no bfloat16
        return tensor.tolist()

    return recursively_apply(_to_list, data)


def slice_tensors(
    data: Any, tensor_slice: Any, process_index: int | None = None, num_processes: int | None = None
) -> Any:
    """Index every tensor in ``data`` with ``tensor_slice`` (``process_index``/``num_processes`` are unused).

    Example:
        >>> slice_tensors({"x": torch.arange(5)}, slice(0, 2))
        {'x': tensor([0, 1])}
    """

    def _slice(tensor: torch.Tensor, tensor_slice: Any) -> torch.Tensor:
        return tensor[tensor_slice]

    return recursively_apply(_slice, data, tensor_slice)


def concatenate(data: Any, dim: int = 0) -> Any:
    """Concatenate a list of same-structured batches (tensors or nested lists/tuples/dicts of tensors) along ``dim``.

    A list holding a single non-tensor item returns that item.

    Example:
        >>> concatenate([{"x": torch.ones(1)}, {"x": torch.zeros(2)}])
        {'x': tensor([1., 0., 0.])}
    """
    if not isinstance(data, (tuple, list)) or len(data) == 0:
        raise TypeError(
            f"concatenate expects a non-empty list/tuple of batches to join; got {type(data).__name__}"
            + (" of length 0" if isinstance(data, (tuple, list)) else "")
        )
    first = data[0]
    if isinstance(first, (tuple, list)):
        return honor_type(first, (concatenate([d[i] for d in data], dim=dim) for i in range(len(first))))
    if isinstance(first, Mapping):
        return _same_mapping_type(first, {k: concatenate([d[k] for d in data], dim=dim) for k in first})
    if isinstance(first, torch.Tensor):
        return torch.cat(list(data), dim=dim)
    if len(data) == 1:
        return first
    raise TypeError(f"Can only concatenate tensors (or nested lists/tuples/dicts of them); got {type(first).__name__}")


def find_device(data: Any) -> torch.device | None:
    """Device of the first tensor found in a nested structure, or ``None`` when it holds no tensor.

    Example:
        >>> find_device([1, {"x": torch.ones(1)}])
        device(type='cpu')
    """
    if isinstance(data, Mapping):
        data = list(data.values())
    if isinstance(data, (tuple, list)):
        for obj in data:
            device = find_device(obj)
            if device is not None:
                return device
        return None
    if isinstance(data, torch.Tensor):
        return data.device
    return None


# -- precision -----------------------------------------------------------------------------------------------------


def convert_to_fp32(tensor: Any) -> Any:
    """Cast every fp16/bf16 tensor in a nested structure to fp32; other leaves are unchanged.

    Example:
        >>> convert_to_fp32({"y": torch.ones(1, dtype=torch.bfloat16)})["y"].dtype
        torch.float32
    """

    def _is_half(obj: Any) -> bool:
        return (isinstance(obj, torch.Tensor) or hasattr(obj, "dtype")) and getattr(obj, "dtype", None) in (
            torch.float16,
            torch.bfloat16,
        )

    def _to_fp32(obj: Any) -> Any:
        return obj.float()

    return recursively_apply(_to_fp32, tensor, test_type=_is_half)


class ConvertOutputsToFp32:
    """Wrap a forward function so its fp16/bf16 outputs come back as fp32 (used by mixed precision).

    Cannot be pickled: unwrap the model first (``accelerator.unwrap_model``).

    Example:
        >>> f = ConvertOutputsToFp32(lambda x: x.half())
        >>> f(torch.ones(1)).dtype
        torch.float32
    """

    def __init__(self, model_forward: Callable[..., Any]) -> None:
        self.model_forward = model_forward
        update_wrapper(self, model_forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return convert_to_fp32(self.model_forward(*args, **kwargs))

    def __getstate__(self) -> Any:
        raise pickle.PicklingError(
            "Cannot pickle a model whose forward casts mixed-precision outputs to fp32; unwrap it first with "
            "accelerator.unwrap_model(model) and pickle that"
        )


def convert_outputs_to_fp32(model_forward: Callable[..., Any]) -> Callable[..., Any]:
    """Return a function calling ``model_forward`` and casting fp16/bf16 outputs to fp32.

    The result's ``__wrapped__`` is the :class:`ConvertOutputsToFp32` object, so unwrapping code can remove it.

    Example:
        >>> forward = convert_outputs_to_fp32(lambda x: x.to(torch.bfloat16))
        >>> forward(torch.ones(1)).dtype
        torch.float32
    """
    converter = ConvertOutputsToFp32(model_forward)

    def forward(*args: Any, **kwargs: Any) -> Any:
        return converter(*args, **kwargs)

    forward.__wrapped__ = converter  # type: ignore[attr-defined]
    return forward


# -- collectives: shared machinery ---------------------------------------------------------------------------------


def _world_size() -> int:
    """Processes in the default group; 1 when torch.distributed is unavailable or not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _comm_device(hint: torch.device | None) -> torch.device:
    """Device for small metadata tensors: the data's own device, so the same backend carries both."""
    if hint is not None:
        return hint
    if "nccl" in str(dist.get_backend()) and "gloo" not in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())  # nccl only moves GPU tensors
    return torch.device("cpu")


def _leaves(data: Any, name: str) -> list[torch.Tensor]:
    """Tensors of ``data`` in traversal order; any non-tensor leaf is a TypeError naming ``name``."""
    found: list[torch.Tensor] = []

    def _collect(tensor: torch.Tensor) -> torch.Tensor:
        found.append(tensor)
        return tensor

    _collect.__name__ = name
    recursively_apply(_collect, data, error_on_other_type=True)
    return found


def _rebuild(data: Any, new_leaves: list[Any]) -> Any:
    """``data`` with its tensors replaced, in traversal order, by ``new_leaves``."""
    it = iter(new_leaves)
    return recursively_apply(lambda _t: next(it), data)


# Stable integer codes so dtypes can travel in an int64 tensor.
_DTYPES: list[torch.dtype] = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8, torch.int16, torch.int32,
    torch.int64, torch.bool, torch.complex64, torch.complex128,
]  # fmt: skip
_DTYPE_CODE = {dt: i for i, dt in enumerate(_DTYPES)}
_HEADER = 64  # int64 slots in the one-shot metadata exchange; longer descriptions take a second exchange


def _all_gather_ints(values: list[int], device: torch.device) -> tuple[list[int], list[list[int]]]:
    """All-gather a list of ints whose length may differ per rank; returns ``(lengths, rows)``.

    One small collective when every list is shorter than 64. Rows are complete when the lengths are equal (a
    second exchange carries long lists) or all short; otherwise they hold each rank's first 63 values, and every
    rank sees the same lengths, so every rank can raise the same error.
    """
    world = dist.get_world_size()
    head = torch.zeros(_HEADER, dtype=torch.int64)
    head[0] = len(values)
    first = values[: _HEADER - 1]
    if first:
        head[1 : 1 + len(first)] = torch.tensor(first, dtype=torch.int64)
    head = head.to(device)
    outs = [torch.empty_like(head) for _ in range(world)]
    dist.all_gather(outs, head)
    table = torch.stack(outs).cpu().tolist()
    lengths = [int(row[0]) for row in table]
    rows = [row[1 : 1 + min(n, _HEADER - 1)] for row, n in zip(table, lengths)]
    if len(set(lengths)) == 1 and lengths[0] > _HEADER - 1:
        full = torch.tensor(values, dtype=torch.int64).to(device)
        outs = [torch.empty_like(full) for _ in range(world)]
        dist.all_gather(outs, full)
        rows = [o.cpu().tolist() for o in outs]
    return lengths, rows


def _exchange(values: list[int], count: int, problem: str | None, op: str, device: torch.device) -> list[list[int]]:
    """Share per-tensor integers with every rank, after a count and a poison check that all ranks see alike.

    ``count`` is the number of tensors ``values`` describes. ``problem`` is this rank's local input error (a
    non-tensor leaf): it is announced to the others as a count of -1, so they raise too instead of waiting in the
    next collective.
    """
    lengths, rows = _all_gather_ints([-1] if problem is not None else [count, *values], device)
    counts = [row[0] for row in rows]
    bad = [r for r, c in enumerate(counts) if c < 0]
    if problem is not None:
        raise TypeError(problem)
    if bad:
        raise DistributedOperationException(
            f"{op}: rank(s) {bad} passed something that is not a nested structure of tensors (see the error on "
            f"those ranks) (rank {dist.get_rank()} reporting)"
        )
    if len(set(counts)) > 1:
        raise DistributedOperationException(
            f"{op}: the processes passed different structures (tensor counts per rank: {counts}); every rank must "
            f"call {op} with the same nested structure of tensors (rank {dist.get_rank()} reporting)"
        )
    if len(set(lengths)) > 1 and max(lengths) > _HEADER - 1:
        raise DistributedOperationException(
            f"{op}: the processes passed tensors with different numbers of dimensions; every rank must call {op} "
            f"with tensors of matching shapes (rank {dist.get_rank()} reporting)"
        )
    return [row[1:] for row in rows]


def _describe(tensors: list[torch.Tensor]) -> list[int]:
    """Self-delimiting description of each tensor: [dtype code, ndim, *shape] back to back."""
    out: list[int] = []
    for t in tensors:
        out += [_DTYPE_CODE.get(t.dtype, len(_DTYPES)), t.ndim, *t.shape]
    return out


def _parse(row: list[int]) -> list[tuple[int, tuple[int, ...]]]:
    parsed: list[tuple[int, tuple[int, ...]]] = []
    i = 0
    while i < len(row):
        code, ndim = row[i], row[i + 1]
        parsed.append((code, tuple(row[i + 2 : i + 2 + ndim])))
        i += 2 + ndim
    return parsed


def _fmt(code: int, shape: tuple[int, ...]) -> str:
    name = str(_DTYPES[code]).replace("torch.", "") if code < len(_DTYPES) else "other-dtype"
    return f"{name}{list(shape)}"


def _exchange_layouts(data: Any, op: str) -> tuple[list[torch.Tensor], list[list[tuple[int, tuple[int, ...]]]]]:
    """This rank's tensors of ``data`` and every rank's (dtype, shape) per tensor, checked alike on all ranks."""
    try:
        tensors, problem = _leaves(data, op), None
    except TypeError as err:
        tensors, problem = [], str(err)
    if op == "gather":
        tensors = [t.reshape(1) if t.ndim == 0 else t.contiguous() for t in tensors]  # 0-d gathers as 1 element
    device = _comm_device(tensors[0].device if tensors else None)
    rows = _exchange(_describe(tensors), len(tensors), problem, op, device)
    return tensors, [_parse(row) for row in rows]


def _mismatch(op: str, index: int, layouts: list[list[tuple[int, tuple[int, ...]]]], rule: str, fix: str) -> Exception:
    per_rank = ", ".join(f"rank {r}: {_fmt(*lay[index])}" for r, lay in enumerate(layouts))
    return DistributedOperationException(
        f"{op}: tensor #{index} in the structure differs across processes ({per_rank}); {rule}. {fix} "
        f"(rank {dist.get_rank()} reporting)"
    )


# -- collectives ---------------------------------------------------------------------------------------------------


def gather(tensor: Any) -> Any:
    """All-gather every tensor in a nested structure and concatenate the pieces along dim 0, in rank order.

    0-d tensors are gathered as 1-element tensors. At world size 1 the input is returned unchanged (as Accelerate
    does). Tensors must have the same dtype and the same sizes apart from dim 0 on every rank, otherwise
    :class:`DistributedOperationException` is raised on every rank; use :func:`pad_across_processes` first.
    Unlike Accelerate, dim-0 sizes may differ across ranks: each rank's piece keeps its own length.

    Example:
        >>> gather({"preds": torch.tensor([1, 2])})  # two ranks with [1, 2] and [3, 4] -> tensor([1, 2, 3, 4])
        {'preds': tensor([1, 2])}
    """
    world = _world_size()
    if world == 1:
        return tensor
    if _debug.TRACKING:
        return _debug.tracked("gather", tensor, "", _gather, tensor, world)
    return _gather(tensor, world)


def _gather(tensor: Any, world: int) -> Any:
    leaves, layouts = _exchange_layouts(tensor, "gather")
    gathered: list[torch.Tensor] = []
    for i, t in enumerate(leaves):
        kinds = {(code, shape[1:]) for code, shape in (lay[i] for lay in layouts)}
        if len(kinds) > 1:
            raise _mismatch(
                "gather",
                i,
                layouts,
                "gather needs the same dtype and the same sizes in every dim except dim 0",
                "Pad with pad_across_processes(tensor, dim=<the differing dim>) or cast to one dtype before gathering.",
            )
        sizes = [lay[i][1][0] for lay in layouts]
        gathered.append(_gather_one(t, sizes, world))
    return _rebuild(tensor, gathered)


def _gather_one(t: torch.Tensor, sizes: list[int], world: int) -> torch.Tensor:
    longest = max(sizes)
    if t.shape[0] < longest:  # uneven dim 0: pad to the longest, gather, cut each piece back
        pad = t.new_zeros((longest - t.shape[0], *t.shape[1:]))
        t = torch.cat([t, pad])
    if dist.get_backend() == "gloo":  # gloo: list form, the one every supported torch version implements
        pieces = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(pieces, t)
    else:
        flat = torch.empty((world * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        dist.all_gather_into_tensor(flat, t)
        if len(set(sizes)) == 1:
            return flat
        pieces = list(flat.split(longest))
    if len(set(sizes)) > 1:
        pieces = [p[:n] for p, n in zip(pieces, sizes)]
    return torch.cat(pieces, dim=0)


def gather_object(object: Any) -> Any:
    """All-gather a picklable object from every rank into one flat list, in rank order.

    Each rank usually passes a list; the lists are concatenated (``[a, b]`` and ``[c]`` -> ``[a, b, c]``). A
    non-list object is appended as one item. At world size 1 the object is returned unchanged (as Accelerate does).

    Example:
        >>> gather_object(["from rank 0"])  # two ranks -> ['from rank 0', 'from rank 1']
        ['from rank 0']
    """
    world = _world_size()
    if world == 1:
        return object
    if _debug.TRACKING:
        return _debug.tracked("gather_object", object, "", _gather_object, object, world)
    return _gather_object(object, world)


def _gather_object(object: Any, world: int) -> list[Any]:
    outputs: list[Any] = [None] * world
    dist.all_gather_object(outputs, object)
    flat: list[Any] = []
    for item in outputs:
        if isinstance(item, (list, tuple)):
            flat.extend(item)
        else:
            flat.append(item)  # Accelerate would iterate it (a string into characters); one item is what users mean
    return flat


_REDUCTIONS = ("mean", "sum", "none", "max", "min")


def reduce(tensor: Any, reduction: str = "mean", scale: float = 1.0) -> Any:
    """All-reduce every tensor in a nested structure; every rank gets the result (a new tensor).

    ``reduction``: ``"sum"``; ``"mean"`` (sum / world size; integer tensors give a float mean); ``"none"`` (sums,
    exactly as Accelerate 1.x does in practice); ``"max"``/``"min"`` (``"min"`` is an overdrive extension). The result
    is multiplied by ``scale`` when it is not 1 (Accelerate documents this but applies it only on TPU). At world
    size 1 each tensor is cloned (and scaled).

    Example:
        >>> reduce({"loss": torch.tensor(2.0)}, reduction="sum")  # two ranks with 2.0 and 4.0 -> tensor(6.)
        {'loss': tensor(2.)}
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"reduce got reduction={reduction!r}; allowed values are {', '.join(repr(r) for r in _REDUCTIONS)}"
        )
    world = _world_size()
    op = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}.get(reduction, dist.ReduceOp.SUM)

    def _reduce_one(t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        if world > 1:
            dist.all_reduce(out, op)
            if reduction == "mean":
                out = out / world if not (out.is_floating_point() or out.is_complex()) else out.div_(world)
        if scale != 1.0:
            out = out * scale
        return out

    _reduce_one.__name__ = "reduce"
    if world > 1 and _debug.TRACKING:
        return _debug.tracked("reduce", tensor, f"reduction={reduction!r}", _apply_strict, _reduce_one, tensor)
    return _apply_strict(_reduce_one, tensor)


def _apply_strict(func: Callable[[torch.Tensor], torch.Tensor], data: Any) -> Any:
    return recursively_apply(func, data, error_on_other_type=True)


def _check_source(from_process: int, world: int, op: str) -> None:
    if not isinstance(from_process, int) or not 0 <= from_process < world:
        raise ValueError(
            f"{op} got from_process={from_process!r}; it must be a rank between 0 and {world - 1} (the world size "
            f"is {world})"
        )


def broadcast(tensor: Any, from_process: int = 0) -> Any:
    """Copy every tensor in a nested structure from rank ``from_process`` into the same tensors on every rank.

    Works in place (the receiving tensors are overwritten) and returns the structure. Every rank must pass tensors
    of the source's shapes and dtypes, otherwise :class:`DistributedOperationException` is raised on every rank.
    At world size 1 the input is returned unchanged.

    Example:
        >>> broadcast([torch.zeros(2)])  # on rank 1 the zeros become rank 0's values
        [tensor([0., 0.])]
    """
    world = _world_size()
    if world == 1:
        return tensor
    _check_source(from_process, world, "broadcast")
    if _debug.TRACKING:
        return _debug.tracked("broadcast", tensor, f"from_process={from_process}", _broadcast, tensor, from_process)
    return _broadcast(tensor, from_process)


def _broadcast(tensor: Any, from_process: int) -> Any:
    leaves, layouts = _exchange_layouts(tensor, "broadcast")
    for i in range(len(leaves)):
        if any(lay[i] != layouts[from_process][i] for lay in layouts):
            raise _mismatch(
                "broadcast",
                i,
                layouts,
                f"every rank must pass a tensor of the same shape and dtype as rank {from_process}'s",
                "Allocate the receiving tensors with the source's shape and dtype (or use broadcast_object_list).",
            )
    for t in leaves:
        if t.is_contiguous():
            dist.broadcast(t, src=from_process)
        else:  # collectives need contiguous memory; copy back into the caller's (strided) tensor
            buf = t.contiguous()
            dist.broadcast(buf, src=from_process)
            t.copy_(buf)
    return tensor


def broadcast_object_list(object_list: list[Any], from_process: int = 0) -> list[Any]:
    """Replace, in place, the items of ``object_list`` on every rank by those of rank ``from_process``.

    Every rank must pass a list of the same length. At world size 1 the list is returned unchanged.

    Example:
        >>> broadcast_object_list([{"step": 3}])  # every rank ends with rank 0's items
        [{'step': 3}]
    """
    world = _world_size()
    if world == 1:
        return object_list
    _check_source(from_process, world, "broadcast_object_list")
    if not isinstance(object_list, list):
        raise TypeError(
            f"broadcast_object_list needs a list (its items are replaced in place); got a "
            f"{type(object_list).__name__}. Wrap it: broadcast_object_list([obj])[0]"
        )
    if _debug.TRACKING:
        _debug.tracked("broadcast_object_list", object_list, f"from_process={from_process}",
                       dist.broadcast_object_list, object_list, from_process)
    else:
        dist.broadcast_object_list(object_list, src=from_process)
    return object_list


def pad_across_processes(tensor: Any, dim: int = 0, pad_index: Any = 0, pad_first: bool = False) -> Any:
    """Pad every tensor in a nested structure along ``dim`` to the largest size any rank has, so it can be gathered.

    Padding is filled with ``pad_index``, after the data (or before it with ``pad_first=True``). Tensors with fewer
    than ``dim + 1`` dimensions are left as they are, as are nested tensors (with a warning).

    Example:
        >>> pad_across_processes(torch.tensor([1, 2]))  # with rank 1 holding 3 items -> tensor([1, 2, 0])
        tensor([1, 2])
    """
    if _world_size() == 1:
        return _rebuild(tensor, _leaves(tensor, "pad_across_processes"))  # same tensors, containers rebuilt
    if _debug.TRACKING:
        return _debug.tracked("pad_across_processes", tensor, f"dim={dim}", _pad, tensor, dim, pad_index, pad_first)
    return _pad(tensor, dim, pad_index, pad_first)


def _pad(tensor: Any, dim: int, pad_index: Any, pad_first: bool) -> Any:
    try:
        leaves, problem = _leaves(tensor, "pad_across_processes"), None
    except TypeError as err:
        leaves, problem = [], str(err)

    def _axis(t: torch.Tensor) -> int | None:
        if getattr(t, "is_nested", False) or not -t.ndim <= dim < t.ndim:
            return None
        return dim % t.ndim

    axes = [_axis(t) for t in leaves]
    # -1 marks "not padded here"; max() over ranks then ignores it.
    sizes = [t.shape[a] if a is not None else -1 for t, a in zip(leaves, axes)]
    device = _comm_device(leaves[0].device if leaves else None)
    rows = _exchange(sizes, len(sizes), problem, "pad_across_processes", device)
    out: list[torch.Tensor] = []
    for i, (t, axis) in enumerate(zip(leaves, axes)):
        if getattr(t, "is_nested", False):
            warnings.warn(
                "pad_across_processes cannot pad a nested tensor (its sizes vary per row); it is left unchanged",
                CannotPadNestedTensorWarning,
                stacklevel=3,
            )
        if axis is None:
            out.append(t)
            continue
        longest = max(row[i] for row in rows)
        if longest == t.shape[axis]:
            out.append(t)
            continue
        new_shape = list(t.shape)
        new_shape[axis] = longest
        padded = t.new_full(new_shape, pad_index)
        start = longest - t.shape[axis] if pad_first else 0
        padded.narrow(axis, start, t.shape[axis]).copy_(t)
        out.append(padded)
    return _rebuild(tensor, out)
