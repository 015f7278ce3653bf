"""Worker for tests/dist/test_collectives.py: every collective, seeding and logging check on 2+ gloo ranks.

Usage: torchrun --nproc-per-node 2 collectives_checks.py SHARED_LOG_FILE
Every rank prints ``OK <check> rank <r>`` after each check passes; any failure raises (non-zero exit).
"""

from __future__ import annotations

import logging
import random
import sys
from collections import namedtuple
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from overdrive.utils.operations import (
    DistributedOperationException,
    broadcast,
    broadcast_object_list,
    gather,
    gather_object,
    pad_across_processes,
    reduce,
)

Pair = namedtuple("Pair", "a b")


def ok(name: str) -> None:
    print(f"OK {name} rank {RANK}", flush=True)


def same(a, b) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        assert a.shape == b.shape, (a.shape, b.shape)
        assert torch.equal(a, b), (a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b), (list(a), list(b))
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    else:
        assert a == b, (a, b)


def batch_of(rank: int) -> dict:
    """What rank ``rank`` holds: every rank can rebuild every other rank's data locally."""
    return {
        "x": torch.arange(6.0).reshape(3, 2) + 100 * rank,
        "seq": [torch.tensor([rank, rank + 1]), (torch.tensor(float(rank)),)],  # includes a 0-d tensor
        "pair": Pair(torch.full((2, 2), rank, dtype=torch.bfloat16), torch.tensor([rank % 2 == 0])),
    }


def expect_error(fn, *fragments: str) -> str:
    try:
        fn()
    except DistributedOperationException as err:
        msg = str(err)
        for fragment in fragments:
            assert fragment in msg, (fragment, msg)
        return msg
    raise AssertionError(f"{fn} did not raise")


def check_gather() -> None:
    out = gather(batch_of(RANK))
    parts = [batch_of(r) for r in range(WORLD)]
    expected = {
        "x": torch.cat([p["x"] for p in parts]),
        "seq": [torch.cat([p["seq"][0] for p in parts]), (torch.stack([p["seq"][1][0] for p in parts]),)],
        "pair": Pair(torch.cat([p["pair"].a for p in parts]), torch.cat([p["pair"].b for p in parts])),
    }
    same(out, expected)
    ok("gather_nested")

    # Uneven dim 0 (overdrive extension): rank r contributes r + 1 rows, kept at its own length.
    mine = torch.arange(RANK + 1).repeat_interleave(3).reshape(RANK + 1, 3) + 10 * RANK
    ref = torch.cat([torch.arange(r + 1).repeat_interleave(3).reshape(r + 1, 3) + 10 * r for r in range(WORLD)])
    same(gather(mine), ref)
    ok("gather_uneven_dim0")

    # Many tensors: the shape description outgrows the one-shot header and takes the second exchange.
    many = [torch.full((2 + RANK, 3), float(i + RANK)) for i in range(40)]
    same(gather(many), [torch.cat([torch.full((2 + r, 3), float(i + r)) for r in range(WORLD)]) for i in range(40)])
    expect_error(lambda: gather(many + [torch.zeros(2) if RANK == 0 else torch.zeros(2, 1)]), "numbers of dimensions")
    expect_error(lambda: gather(many[:-1] + [torch.zeros(2, 3 + RANK)]), "tensor #39", "float32[2, 3]")
    ok("gather_many_tensors")

    # Non-batch dims differ: a clear error on every rank, and the group still works afterwards.
    msg = expect_error(lambda: gather({"logits": torch.zeros(2, 3 + RANK)}), "pad_across_processes", "rank 0",
                       "rank 1", f"rank {RANK} reporting")
    assert "float32[2, 3]" in msg and "float32[2, 4]" in msg, msg
    expect_error(lambda: gather(torch.zeros(2, dtype=torch.float32 if RANK == 0 else torch.float64)), "dtype")
    counts = str([r + 1 for r in range(WORLD)])
    expect_error(lambda: gather([torch.zeros(1)] * (RANK + 1)), "different structures", counts)
    expect_error(lambda: pad_across_processes([torch.zeros(1)] * (RANK + 1)), "different structures", counts)
    expect_error(lambda: gather(torch.zeros(3) if RANK == 0 else torch.zeros(3, 1)), "float32[3]", "float32[3, 1]")
    # A non-tensor leaf on one rank only: that rank gets the TypeError, the others are told instead of hanging.
    for op in (gather, broadcast, pad_across_processes):
        bad = {"a": torch.zeros(1), "b": "label" if RANK == 1 else torch.zeros(1)}
        if RANK == 1:
            try:
                op(bad)
            except TypeError as err:
                assert "str" in str(err), err
            else:
                raise AssertionError(f"{op.__name__} accepted a str leaf")
        else:
            expect_error(lambda: op(bad), "rank(s) [1]", "not a nested structure of tensors")
    same(gather(torch.tensor([RANK])), torch.arange(WORLD))
    ok("gather_mismatch_errors")

    objs = gather_object([f"r{RANK}", {"rank": RANK}])
    assert objs == [x for r in range(WORLD) for x in (f"r{r}", {"rank": r})], objs
    assert gather_object(RANK * 10) == [r * 10 for r in range(WORLD)]
    ok("gather_object")


def check_reduce() -> None:
    values = {"a": torch.tensor([1.0, 2.0]) * (RANK + 1), "b": [torch.tensor(3.0 + RANK)]}
    per_rank = [{"a": torch.tensor([1.0, 2.0]) * (r + 1), "b": [torch.tensor(3.0 + r)]} for r in range(WORLD)]
    total_a = sum(p["a"] for p in per_rank)
    total_b = sum(p["b"][0] for p in per_rank)
    same(reduce(values, "sum"), {"a": total_a, "b": [total_b]})
    same(reduce(values, "mean"), {"a": total_a / WORLD, "b": [total_b / WORLD]})
    same(reduce(values), {"a": total_a / WORLD, "b": [total_b / WORLD]})  # default is mean
    same(reduce(values, "none"), {"a": total_a, "b": [total_b]})  # Accelerate 1.x sums for "none"
    same(reduce(values["a"], "max"), torch.stack([p["a"] for p in per_rank]).amax(0))
    same(reduce(values["a"], "min"), torch.stack([p["a"] for p in per_rank]).amin(0))
    same(reduce(values["a"], "sum", scale=0.5), total_a * 0.5)
    same(reduce(torch.tensor([RANK + 1]), "mean"), torch.tensor([sum(range(1, WORLD + 1)) / WORLD]))
    assert values["a"].equal(torch.tensor([1.0, 2.0]) * (RANK + 1))  # input untouched
    try:
        reduce(values, "median")
    except ValueError as err:
        assert "'median'" in str(err)
    else:
        raise AssertionError("reduce('median') did not raise")
    ok("reduce")


def check_broadcast() -> None:
    for src in range(WORLD):
        data = {"w": torch.full((2, 3), float(RANK)), "t": (torch.tensor([RANK, RANK]),)}
        out = broadcast(data, from_process=src)
        assert out is data
        same(out, {"w": torch.full((2, 3), float(src)), "t": (torch.tensor([src, src]),)})
    strided = torch.zeros(3, 4)[:, ::2]
    if RANK == 0:
        strided.copy_(torch.arange(6.0).reshape(3, 2))
    broadcast(strided)
    same(strided, torch.arange(6.0).reshape(3, 2))
    expect_error(lambda: broadcast(torch.zeros(2 + RANK)), "same shape and dtype")
    objs = [None, f"from {RANK}"]
    out = broadcast_object_list(objs, from_process=WORLD - 1)
    assert out is objs and objs == [None, f"from {WORLD - 1}"], objs
    try:
        broadcast(torch.zeros(1), from_process=WORLD)
    except ValueError as err:
        assert f"from_process={WORLD}" in str(err)
    else:
        raise AssertionError("broadcast from an invalid rank did not raise")
    ok("broadcast")


def check_pad() -> None:
    lengths = [2 + r for r in range(WORLD)]
    longest = max(lengths)
    mine = torch.arange(lengths[RANK]) + 1
    for pad_first in (False, True):
        padded = pad_across_processes({"ids": mine, "scalar": torch.tensor(5)}, dim=0, pad_index=-1,
                                      pad_first=pad_first)
        fill = torch.full((longest - lengths[RANK],), -1)
        expected_mine = torch.cat([fill, mine] if pad_first else [mine, fill])
        same(padded, {"ids": expected_mine, "scalar": torch.tensor(5)})
        gathered = gather(padded["ids"])
        ref = []
        for r in range(WORLD):
            theirs = torch.arange(lengths[r]) + 1
            their_fill = torch.full((longest - lengths[r],), -1)
            ref.append(torch.cat([their_fill, theirs] if pad_first else [theirs, their_fill]))
        same(gathered, torch.cat(ref))
    # Along dim 1 of a 2-d tensor, and a 1-d tensor left alone (dim out of range), as in Accelerate.
    logits = torch.ones(2, lengths[RANK])
    out = pad_across_processes([logits, torch.ones(3)], dim=1)
    same(out[0], torch.cat([logits, torch.zeros(2, longest - lengths[RANK])], dim=1))
    same(out[1], torch.ones(3))
    same(gather(out[0]).shape, torch.Size([2 * WORLD, longest]))
    ok("pad_across_processes")


def draw():
    return torch.cat([torch.rand(3), torch.tensor([random.random(), float(np.random.rand())])])


def check_seeds() -> None:
    from overdrive.utils.random import set_seed, synchronize_rng_states

    set_seed(1000, device_specific=True)
    mine = draw()
    set_seed(1000 + RANK)
    same(draw(), mine)
    everyone = gather(mine[None])
    assert len({tuple(row.tolist()) for row in everyone}) == WORLD, everyone  # each rank its own stream
    ok("set_seed_device_specific")

    set_seed(7, device_specific=True)
    rank0_next = torch.Generator().manual_seed(7)  # rank 0's torch stream: seed 7 + 0
    synchronize_rng_states(["torch"])
    drawn = torch.rand(5)
    same(drawn, torch.rand(5, generator=rank0_next))
    everyone = gather(drawn[None])
    assert all(torch.equal(row, everyone[0]) for row in everyone), everyone
    gen = torch.Generator().manual_seed(50 + RANK)
    synchronize_rng_states(["generator", "cuda"], generator=gen)
    picks = gather(torch.randperm(10, generator=gen)[None])
    same(picks[RANK], torch.randperm(10, generator=torch.Generator().manual_seed(50)))
    assert all(torch.equal(row, picks[0]) for row in picks), picks
    ok("synchronize_rng_states")


def check_logging(shared_file: Path) -> None:
    from overdrive.logging import get_logger
    from overdrive.state import PartialState

    state = PartialState()
    assert state.num_processes == WORLD and state.process_index == RANK
    logger = get_logger("collectives.worker", log_level="INFO")
    handler = logging.FileHandler(shared_file, mode="a")  # O_APPEND: each record lands whole
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.logger.addHandler(handler)
    logger.logger.propagate = False
    logger.info("default-main-only")
    logger.info("everyone", main_process_only=False)
    for i in range(3):
        logger.info(f"ordered {i}", in_order=True)
    logger.debug("too-verbose", main_process_only=False)
    handler.close()
    state.wait_for_everyone()
    lines = shared_file.read_text().splitlines()
    assert lines.count("[RANK 0] default-main-only") == 1, lines
    assert not any("default-main-only" in line and "[RANK 0]" not in line for line in lines), lines
    assert sorted(line for line in lines if "everyone" in line) == [f"[RANK {r}] everyone" for r in range(WORLD)]
    ordered = [line for line in lines if "ordered" in line]
    assert ordered == [f"[RANK {r}] ordered {i}" for i in range(3) for r in range(WORLD)], ordered
    assert not any("too-verbose" in line for line in lines)
    ok("logging")


if __name__ == "__main__":
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    RANK, WORLD = dist.get_rank(), dist.get_world_size()
    # Collectives first, with no PartialState: they read the world size from torch.distributed alone.
    check_gather()
    check_reduce()
    check_broadcast()
    check_pad()
    check_seeds()
    check_logging(Path(sys.argv[1]))
    dist.barrier()
    print(f"DONE rank {RANK}", flush=True)
    dist.destroy_process_group()
