"""Seeding, out-of-memory retries and multi-process logging in one process (no process group).

Accelerate's own functions are the reference where they run on this machine.
"""

from __future__ import annotations

import inspect
import logging
import random

import numpy as np
import pytest
import torch

import overdrive.logging as od_logging
import overdrive.utils.memory as mem
import overdrive.utils.random as rnd
from overdrive.state import PartialState

acc_logging = pytest.importorskip("accelerate.logging")
acc_mem = pytest.importorskip("accelerate.utils.memory")
acc_rnd = pytest.importorskip("accelerate.utils.random")


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (rnd.set_seed, acc_rnd.set_seed),
        (rnd.synchronize_rng_state, acc_rnd.synchronize_rng_state),
        (rnd.synchronize_rng_states, acc_rnd.synchronize_rng_states),
        (mem.find_executable_batch_size, acc_mem.find_executable_batch_size),
        (mem.release_memory, acc_mem.release_memory),
        (mem.should_reduce_batch_size, acc_mem.should_reduce_batch_size),
        (mem.clear_device_cache, acc_mem.clear_device_cache),
        (od_logging.get_logger, acc_logging.get_logger),
        (od_logging.MultiProcessAdapter.log, acc_logging.MultiProcessAdapter.log),
    ],
    ids=lambda f: getattr(f, "__qualname__", str(f)),
)
def test_signature_matches_accelerate(ours, theirs):
    assert _params(ours) == _params(theirs)


# -- find_executable_batch_size -------------------------------------------------------------------------------------


def _cuda_style_oom(batch_size: int, limit: int) -> None:
    if batch_size > limit:
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch_size} GiB.")


def _run_trials(decorator, limit: int, start: int):
    tried: list[int] = []

    @decorator(starting_batch_size=start)
    def train(batch_size, scale):
        tried.append(batch_size)
        _cuda_style_oom(batch_size, limit)
        return batch_size * scale

    return train(2), tried


def test_batch_size_sequence_matches_formula_and_accelerate():
    result, tried = _run_trials(mem.find_executable_batch_size, limit=30, start=64)
    expected = [64]
    while expected[-1] > 30:
        expected.append(int(expected[-1] * 0.9))  # Accelerate 1.15: shrink by 10% per OOM
    assert tried == expected
    assert result == expected[-1] * 2
    ref_result, ref_tried = _run_trials(acc_mem.find_executable_batch_size, limit=30, start=64)
    assert (result, tried) == (ref_result, ref_tried)


def test_real_cpu_allocator_failure_shrinks_batch():
    tried: list[int] = []

    @mem.find_executable_batch_size(starting_batch_size=64)
    def allocate(batch_size):
        tried.append(batch_size)
        # 2**62 bytes cannot be allocated: torch's CPU allocator raises its real RuntimeError
        return torch.empty(2**62 if batch_size > 60 else batch_size, dtype=torch.uint8).numel()

    assert allocate() == 57
    assert tried == [64, 57]


def test_custom_reduce_fn_and_size_is_remembered():
    state = {"bs": 100}

    def halve() -> int:
        state["bs"] //= 2
        return state["bs"]

    tried: list[int] = []

    @mem.find_executable_batch_size(starting_batch_size=100, reduce_batch_size_fn=halve)
    def train(batch_size):
        tried.append(batch_size)
        _cuda_style_oom(batch_size, 30)
        return batch_size

    assert train() == 25
    assert tried == [100, 50, 25]
    assert train() == 25 and tried[-1] == 25  # the next call starts from the size that worked


def test_reaches_zero():
    @mem.find_executable_batch_size(starting_batch_size=4)
    def never_fits(batch_size):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB.")

    with pytest.raises(RuntimeError, match="No executable batch size found, reached zero."):
        never_fits()


def test_non_oom_errors_propagate_unchanged():
    boom = ValueError("shapes do not match")
    calls: list[int] = []

    @mem.find_executable_batch_size(starting_batch_size=16)
    def train(batch_size):
        calls.append(batch_size)
        raise boom

    with pytest.raises(ValueError) as info:
        train()
    assert info.value is boom
    assert calls == [16]


def test_explicit_batch_size_is_refused():
    @mem.find_executable_batch_size(starting_batch_size=8)
    def train(batch_size, lr):
        return batch_size, lr

    with pytest.raises(TypeError, match="batch size"):
        train(8, 0.1)
    with pytest.raises(TypeError, match="batch_size=8"):
        train(lr=0.1, batch_size=8)
    assert train(0.1) == (8, 0.1)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes"),
        RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
        RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if ..."),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB"),
        RuntimeError("shape mismatch"),
        ValueError("CUDA out of memory."),
        RuntimeError("two", "args out of memory."),
    ],
)
def test_should_reduce_batch_size_matches_accelerate(exc):
    assert mem.should_reduce_batch_size(exc) == acc_mem.should_reduce_batch_size(exc)


def test_out_of_memory_error_type_is_enough():
    # overdrive extension: torch's dedicated OOM type counts whatever its message says
    assert mem.should_reduce_batch_size(torch.OutOfMemoryError("allocator gave up"))


def test_release_memory_and_clear_cache():
    a, b = torch.ones(8), torch.ones(8)
    a, b = mem.release_memory(a, b)
    assert a is None and b is None
    mem.clear_device_cache()
    mem.clear_device_cache(garbage_collection=True)


# -- seeding --------------------------------------------------------------------------------------------------------


def _draw():
    return torch.rand(4), random.random(), np.random.rand(3)


def _equal(x, y):
    return torch.equal(x[0], y[0]) and x[1] == y[1] and np.array_equal(x[2], y[2])


def test_set_seed_reproduces_all_streams_and_matches_accelerate():
    rnd.set_seed(1234)
    first = _draw()
    rnd.set_seed(1234)
    assert _equal(first, _draw())
    acc_rnd.set_seed(1234)
    assert _equal(first, _draw())
    rnd.set_seed(1235)
    assert not _equal(first, _draw())


def test_set_seed_device_specific_adds_process_index():
    rank = PartialState().process_index
    rnd.set_seed(77, device_specific=True)
    mine = _draw()
    rnd.set_seed(77 + rank)
    assert _equal(mine, _draw())


def test_set_seed_deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        rnd.set_seed(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_set_seed_bad_input():
    with pytest.raises(TypeError, match="'abc'"):
        rnd.set_seed("abc")
    with pytest.raises(TypeError, match="1.5"):
        rnd.set_seed(1.5)
    with pytest.raises(ValueError, match="-1"):
        rnd.set_seed(-1)


def test_synchronize_rng_state_single_process():
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    rnd.synchronize_rng_state("generator", generator=gen)
    rnd.synchronize_rng_states(["torch", "cuda"])
    assert torch.equal(gen.get_state(), before)
    with pytest.raises(ValueError, match="'xla'.*'torch'"):
        rnd.synchronize_rng_state("xla")
    with pytest.raises(ValueError, match="generator="):
        rnd.synchronize_rng_states(["generator"])
    with pytest.raises(TypeError, match="wrap it"):
        rnd.synchronize_rng_states("torch")


# -- logging --------------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_levels():
    root, levels = logging.getLogger(), {}
    levels[""] = root.level
    yield levels
    root.setLevel(levels[""])


def test_logger_needs_partial_state(restore_levels):
    saved = dict(PartialState._shared_state)
    PartialState._shared_state.clear()
    try:
        logger = od_logging.get_logger("od.needs_state")
        with pytest.raises(RuntimeError, match=r"PartialState\(\)"):
            logger.info("hello")
    finally:
        PartialState._shared_state.update(saved)


def test_logger_logs_with_rank_prefix_and_caller_location(caplog, restore_levels):
    PartialState()
    logger = od_logging.get_logger("od.test.prefix", log_level="info")
    assert isinstance(logger, logging.LoggerAdapter)
    assert logger.logger.level == logging.INFO
    with caplog.at_level(logging.INFO, logger="od.test.prefix"):
        logger.info("main only %d", 1)
        logger.info("everyone", main_process_only=False)
        logger.info("ordered", in_order=True)
        logger.debug("hidden")
    messages = [r.getMessage() for r in caplog.records if r.name == "od.test.prefix"]
    assert messages == ["[RANK 0] main only 1", "[RANK 0] everyone", "[RANK 0] ordered"]
    assert all(r.filename == "test_utils_misc.py" for r in caplog.records if r.name == "od.test.prefix")


def test_warning_once(caplog, restore_levels):
    PartialState()
    logger = od_logging.get_logger("od.test.once")
    with caplog.at_level(logging.WARNING, logger="od.test.once"):
        for _ in range(3):
            logger.warning_once("deprecated")
        logger.warning_once("other")
    assert [r.getMessage() for r in caplog.records if r.name == "od.test.once"] == [
        "[RANK 0] deprecated",
        "[RANK 0] other",
    ]


def test_log_level_from_env_and_bad_level(monkeypatch, restore_levels):
    monkeypatch.setenv("ACCELERATE_LOG_LEVEL", "debug")
    assert od_logging.get_logger("od.test.env").logger.level == logging.DEBUG
    monkeypatch.setenv("ACCELERATE_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="ACCELERATE_LOG_LEVEL='loud'.*DEBUG"):
        od_logging.get_logger("od.test.env2")
    monkeypatch.delenv("ACCELERATE_LOG_LEVEL")
    with pytest.raises(ValueError, match="log_level='verbose'"):
        od_logging.get_logger("od.test.bad", log_level="verbose")
