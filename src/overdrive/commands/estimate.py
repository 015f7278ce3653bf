"""``overdrive estimate-memory MODEL``: training memory per rank for each precision and sharding engine.

``MODEL`` is a local model, built on the meta device (no weights allocated, nothing downloaded):

* ``package.module:factory`` or ``path/to/file.py:factory``: a callable returning an ``nn.Module``;
* ``config.json``: ``{"factory": "package.module:factory", "kwargs": {...}}``, the factory's keyword arguments.

The estimate is activation-free: parameters, gradients and optimizer states, per rank, for ``fp32``, ``bf16`` and
``fp16`` training under DDP, FSDP2 and DeepSpeed ZeRO-1/2/3 (optimizer: ``adam`` keeps two fp32 states per
parameter, ``sgd`` with momentum one, ``sgd0`` none). How each engine holds them, with ``P`` parameters on ``N``
ranks:

========  ===========================================  ================================  ===========================
engine    parameters                                   gradients                         optimizer states
========  ===========================================  ================================  ===========================
DDP       4P (fp32; autocast keeps fp32 parameters)    4P                                4kP
FSDP2     4P/N (fp32 shards; bf16/fp16 copies of one   4P/N (reduced in fp32)            4kP/N
          block at a time are activations' business)
ZeRO-1    hP (h = 2 in bf16/fp16, 4 in fp32)           hP                                (4kP + mP)/N
ZeRO-2    hP                                           hP/N                              (4kP + mP)/N
ZeRO-3    hP/N                                         hP/N                              (4kP + mP)/N
========  ===========================================  ================================  ===========================

``k`` is the number of optimizer states per parameter and ``m`` the fp32 master copy DeepSpeed keeps in bf16/fp16
(4 bytes, 0 in fp32). Shards round up: a rank holds ``ceil(P/N)`` parameters.

Example:
    >>> rows = estimate(1000, world_size=2, dtype="fp32", optimizer="adam")
    >>> rows["DDP"], rows["FSDP2"]["total"]
    ({'parameters': 4000, 'gradients': 4000, 'optimizer': 8000, 'total': 16000}, 8000)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import command_parser

__all__ = ["ENGINES", "count_parameters", "estimate", "estimate_command_parser", "estimate_main"]

ENGINES = ("DDP", "FSDP2", "ZeRO-1", "ZeRO-2", "ZeRO-3")
_STATES = {"adam": 2, "sgd": 1, "sgd0": 0}
_HALF = {"fp32": 4, "bf16": 2, "fp16": 2}
DESCRIPTION = ("Estimate training memory per rank (parameters, gradients, optimizer states; no activations) of a "
               "local model built on the meta device, for DDP, FSDP2 and ZeRO-1/2/3.")


def estimate(num_params: int, world_size: int, dtype: str, optimizer: str = "adam") -> dict[str, dict[str, int]]:
    """Bytes per rank for each engine: ``{engine: {"parameters", "gradients", "optimizer", "total"}}``.

    Example:
        >>> estimate(10, 1, "bf16")["ZeRO-3"]  # bf16 weights and gradients, fp32 master + Adam
        {'parameters': 20, 'gradients': 20, 'optimizer': 120, 'total': 160}
    """
    if dtype not in _HALF:
        raise ValueError(f"dtype={dtype!r}: use one of {sorted(_HALF)}")
    if optimizer not in _STATES:
        raise ValueError(f"optimizer={optimizer!r}: use one of {sorted(_STATES)}")
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: use at least 1")
    shard = math.ceil(num_params / world_size)
    states = 4 * _STATES[optimizer]
    half = _HALF[dtype]
    master = 4 if dtype != "fp32" else 0
    layouts = {
        "DDP": (4 * num_params, 4 * num_params, states * num_params),
        "FSDP2": (4 * shard, 4 * shard, states * shard),
        "ZeRO-1": (half * num_params, half * num_params, (states + master) * shard),
        "ZeRO-2": (half * num_params, half * shard, (states + master) * shard),
        "ZeRO-3": (half * shard, half * shard, (states + master) * shard),
    }
    return {
        engine: {"parameters": p, "gradients": g, "optimizer": o, "total": p + g + o}
        for engine, (p, g, o) in layouts.items()
    }


def _load_factory(spec: str) -> tuple[Any, dict[str, Any]]:
    """The callable and keyword arguments named by ``spec`` (``module:factory``, ``file.py:factory``, a JSON file)."""
    kwargs: dict[str, Any] = {}
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"estimate-memory: config file {spec!r} does not exist")
        config = json.loads(path.read_text())
        if not isinstance(config, dict) or not isinstance(config.get("factory"), str):
            raise ValueError(f'estimate-memory: {spec!r} must hold {{"factory": "module:callable", "kwargs": {{...}}}}')
        spec, kwargs = config["factory"], dict(config.get("kwargs") or {})
    if ":" not in spec:
        raise ValueError(f"estimate-memory: {spec!r} is not MODULE:FACTORY, FILE.py:FACTORY or a .json config")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        file = Path(where)
        if not file.is_file():
            raise ValueError(f"estimate-memory: {where!r} does not exist")
        loaded = importlib.util.spec_from_file_location(file.stem, file)
        assert loaded is not None and loaded.loader is not None
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(f"estimate-memory: cannot import {where!r} ({err})") from err
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"estimate-memory: {where!r} has no callable {name!r}")
    return factory, kwargs


def count_parameters(spec: str) -> int:
    """Build the model ``spec`` names on the meta device and count its parameters (tied ones once).

    Example:
        >>> count_parameters("torch.nn:Identity")
        0
    """
    factory, kwargs = _load_factory(spec)
    from ..big_modeling import init_empty_weights

    with init_empty_weights():
        try:
            model = factory(**kwargs)
        except Exception as err:
            raise ValueError(
                f"estimate-memory: building {spec!r} failed ({type(err).__name__}: {err}); pass the factory's "
                'arguments in a JSON file {"factory": "module:callable", "kwargs": {...}}'
            ) from err
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"estimate-memory: {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied parameter once


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def estimate_command_parser(subparsers: Any = None) -> argparse.ArgumentParser:
    """The ``estimate-memory`` parser.

    Example:
        >>> estimate_command_parser().parse_args(["m:f"]).num_processes
        [1, 2, 8]
    """
    parser = command_parser(subparsers, "estimate-memory", DESCRIPTION)
    parser.add_argument("model", help="MODULE:FACTORY, FILE.py:FACTORY, or a JSON file {factory, kwargs}")
    parser.add_argument("--num_processes", type=int, nargs="+", default=[1, 2, 8], help="world sizes to show")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"], choices=sorted(_HALF))
    parser.add_argument("--optimizer", default="adam", choices=sorted(_STATES))
    parser.add_argument("--bytes", action="store_true", help="print exact byte counts instead of KiB/MiB/GiB")
    return parser


def estimate_main(argv: Sequence[str]) -> int:
    """Print the estimate table; 2 with a message for bad input.

    Example:
        >>> estimate_main(["no_such_module:f"])
        2
    """
    args = estimate_command_parser().parse_args(list(argv))
    try:
        if any(n < 1 for n in args.num_processes):
            raise ValueError(f"--num_processes {args.num_processes}: every world size must be >= 1")
        params = count_parameters(args.model)
    except ValueError as err:
        print(f"overdrive estimate-memory: error: {err}", file=sys.stderr)
        return 2
    show = (lambda n: str(n)) if args.bytes else _human
    print(f"{args.model}: {params:,} parameters; optimizer {args.optimizer}; per rank, activations not included")
    header = f"{'world':>5}  {'dtype':<5}  {'engine':<7}  {'parameters':>12}  {'gradients':>12}  {'optimizer':>12}  {'total':>12}"
    print(header)
    print("-" * len(header))
    for world in args.num_processes:
        for dtype in args.dtypes:
            for engine, row in estimate(params, world, dtype, args.optimizer).items():
                print(f"{world:>5}  {dtype:<5}  {engine:<7}  {show(row['parameters']):>12}  {show(row['gradients']):>12}  "
                      f"{show(row['optimizer']):>12}  {show(row['total']):>12}")
    return 0
