"""The public surface: signatures equal Accelerate 1.x's, imports stay light, strategy checks stay in strategies/."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

accelerate = pytest.importorskip("accelerate", reason="accelerate is the reference for signatures (test extra)")

import accelerate.utils as acc_utils  # noqa: E402

import overdrive  # noqa: E402
import overdrive.utils as od_utils  # noqa: E402
from overdrive import Accelerator  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src" / "overdrive"

ACCELERATOR_METHODS = [
    "__init__", "prepare", "prepare_model", "prepare_optimizer", "prepare_data_loader", "prepare_scheduler",
    "backward", "accumulate", "no_sync", "autocast", "clip_grad_norm_", "clip_grad_value_", "unwrap_model",
    "get_state_dict", "save_model", "save", "free_memory", "gather", "gather_for_metrics", "reduce",
    "pad_across_processes", "wait_for_everyone", "main_process_first", "local_main_process_first",
    "on_main_process", "on_local_main_process", "on_process", "on_last_process", "split_between_processes",
    "print", "skip_first_batches", "join_uneven_inputs", "save_state", "load_state", "register_for_checkpointing",
    "register_save_state_pre_hook", "register_load_state_pre_hook", "set_trigger", "check_trigger", "unscale_gradients", "end_training",
    "init_trackers", "get_tracker", "log", "on_local_process", "profile", "trigger_sync_in_backward",
    "verify_device_map",
]
ACCELERATOR_PROPERTIES = [
    "device", "process_index", "local_process_index", "num_processes", "is_main_process", "is_local_main_process",
    "is_last_process", "distributed_type", "mixed_precision", "gradient_accumulation_steps", "sync_gradients",
    "use_distributed", "optimizer_step_was_skipped", "split_batches", "even_batches", "use_seedable_sampler",
    "non_blocking", "project_dir", "logging_dir", "multi_device", "is_fsdp2", "is_composable_parallelism_enabled",
    "parallelism_config", "torch_device_mesh", "should_save_model", "use_stateful_dataloader", "data_parallel_rank",
    "data_parallel_shard_rank", "tensor_parallel_rank", "pipeline_parallel_rank", "context_parallel_rank",
]
UTILS_FUNCTIONS = [
    "set_seed", "gather", "gather_object", "reduce", "broadcast", "broadcast_object_list", "pad_across_processes",
    "send_to_device", "find_executable_batch_size", "recursively_apply", "concatenate", "find_batch_size",
    "convert_to_fp32", "convert_outputs_to_fp32", "honor_type", "slice_tensors", "release_memory",
    "extract_model_from_parallel", "wait_for_everyone", "save", "synchronize_rng_state", "synchronize_rng_states",
    "convert_file_size_to_int", "tqdm",
]
DATACLASSES = [
    "DataLoaderConfiguration", "GradientAccumulationPlugin", "DistributedDataParallelKwargs", "InitProcessGroupKwargs",
    "GradScalerKwargs", "ProjectConfiguration", "AutocastKwargs", "FullyShardedDataParallelPlugin", "DeepSpeedPlugin",
    "TorchDynamoPlugin", "ProfileKwargs",
]
STATE_METHODS = [
    "__init__", "wait_for_everyone", "main_process_first", "local_main_process_first", "on_main_process",
    "on_local_main_process", "on_process", "on_last_process", "split_between_processes", "print",
    "on_local_process", "set_device",
]


def _norm_default(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return "<required>"
    if isinstance(value, enum.Enum):
        return value.value
    if type(value) is object:  # Accelerate's private sentinels (e.g. split_batches)
        return "<sentinel>"
    if callable(value) and hasattr(value, "__name__"):
        return f"<function {value.__name__}>"  # e.g. a default predicate; compared by name
    return value


def _decorated(fn: Any) -> Any:
    """The function inside a decorator that hides its signature behind (*args, **kwargs), e.g. Accelerate's
    ``@on_main_process`` on ``init_trackers`` and ``log``; ``fn`` itself otherwise."""
    kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
    if kinds <= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
        for cell in fn.__closure__ or ():
            inner = cell.cell_contents
            if inspect.isfunction(inner):
                return _decorated(inner)
    return fn


def _shape(fn: Any) -> list[tuple[str, str, Any]]:
    sig = inspect.signature(_decorated(fn))
    return [(p.name, p.kind.name, _norm_default(p.default)) for p in sig.parameters.values()]


# Documented overdrive extensions: keyword parameters Accelerate lacks, each with a default that keeps Accelerate's
# behaviour. (method, parameter) -> default. save_state(async_save=True) writes in the background (docs/recovery.md).
EXTENSIONS = {("save_state", "async_save"): False}


@pytest.mark.parametrize("name", ACCELERATOR_METHODS)
def test_accelerator_method_signature(name: str) -> None:
    ours = _shape(getattr(Accelerator, name))
    theirs = _shape(getattr(accelerate.Accelerator, name))
    for (method, param), default in EXTENSIONS.items():
        if method == name:
            assert (param, "POSITIONAL_OR_KEYWORD", default) in ours and param not in [p[0] for p in theirs]
            ours = [p for p in ours if p[0] != param]
    assert ours == theirs


@pytest.mark.parametrize("name", ACCELERATOR_PROPERTIES)
def test_accelerator_property_exists(name: str) -> None:
    assert isinstance(inspect.getattr_static(accelerate.Accelerator, name), property)
    assert isinstance(inspect.getattr_static(Accelerator, name), property)


@pytest.mark.parametrize("name", UTILS_FUNCTIONS)
def test_utils_function_signature(name: str) -> None:
    assert _shape(getattr(od_utils, name)) == _shape(getattr(acc_utils, name))


# Documented, deliberate default differences from Accelerate: (class, field) -> (overdrive's, Accelerate's).
# use_seedable_sampler: on by default so the shuffle order is a pure function of (seed, epoch), for exact resume.
DEFAULT_DIFFERENCES = {("DataLoaderConfiguration", "use_seedable_sampler"): (True, False)}


@pytest.mark.parametrize("name", DATACLASSES)
def test_dataclass_fields(name: str) -> None:
    ours = [(f.name, _norm_default(f.default)) for f in dataclasses.fields(getattr(od_utils, name))]
    theirs = [(f.name, _norm_default(f.default)) for f in dataclasses.fields(getattr(acc_utils, name))]
    for (cls, field), (our_default, their_default) in DEFAULT_DIFFERENCES.items():
        if cls == name:
            assert (field, our_default) in ours and (field, their_default) in theirs  # the difference is still real
            theirs = [(f, our_default if f == field else d) for f, d in theirs]
    assert ours == theirs


@pytest.mark.parametrize("name", STATE_METHODS)
def test_partial_state_signature(name: str) -> None:
    assert _shape(getattr(overdrive.PartialState, name)) == _shape(getattr(accelerate.PartialState, name))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("overdrive:skip_first_batches", "accelerate:skip_first_batches"),
        ("overdrive.data_loader:skip_first_batches", "accelerate.data_loader:skip_first_batches"),
        ("overdrive.data_loader:prepare_data_loader", "accelerate.data_loader:prepare_data_loader"),
        ("overdrive.logging:get_logger", "accelerate.logging:get_logger"),
        ("overdrive:find_executable_batch_size", "accelerate:find_executable_batch_size"),
        ("overdrive.state:GradientState.__init__", "accelerate.state:GradientState.__init__"),
        ("overdrive:notebook_launcher", "accelerate:notebook_launcher"),
        ("overdrive:debug_launcher", "accelerate:debug_launcher"),
        ("overdrive.launchers:notebook_launcher", "accelerate.launchers:notebook_launcher"),
    ],
)
def test_module_path_signatures(ours: str, theirs: str) -> None:
    def load(spec: str) -> Any:
        module, _, attr = spec.partition(":")
        obj: Any = __import__(module, fromlist=["_"])
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    assert _shape(load(ours)) == _shape(load(theirs))


@pytest.mark.parametrize("name", ["DistributedType", "PrecisionType", "DDPCommunicationHookType"])
def test_enum_values_are_accelerates(name: str) -> None:
    theirs = {m.value for m in getattr(acc_utils, name)}
    ours = {m.value for m in getattr(od_utils, name)}
    assert ours <= theirs and ours


OPTIONAL = ["deepspeed", "safetensors", "yaml", "tqdm", "tensorboard", "wandb", "mlflow", "accelerate", "numpy.f2py"]


def test_import_pulls_in_no_optional_dependency() -> None:
    code = (
        "import sys\n"
        "import torch\n"
        "base = set(sys.modules)  # what torch itself loads (torch 2.13 imports tqdm) is not ours\n"
        "import overdrive\n"
        "from overdrive import *\n"
        "from overdrive.utils import *\n"
        "import overdrive.data_loader, overdrive.optimizer, overdrive.scheduler, overdrive.logging\n"
        f"bad = [m for m in {OPTIONAL!r} if m in sys.modules and m not in base]\n"
        "print('LOADED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr


# Accelerate's top-level big-model names (docs/big-models.md); their signatures are checked in test_big_modeling.py.
BIG_MODELING_NAMES = [
    "cpu_offload", "cpu_offload_with_hook", "disk_offload", "dispatch_model", "infer_auto_device_map",
    "init_empty_weights", "init_on_device", "load_checkpoint_and_dispatch", "load_checkpoint_in_model",
]


def test_public_api_is_frozen() -> None:
    # Adding a public name is a decision: update this list in the same commit.
    assert sorted(overdrive.__all__) == sorted([
        "Accelerator", "AcceleratorState", "AutocastKwargs", "DataLoaderConfiguration", "DeepSpeedPlugin",
        "DistributedDataParallelKwargs", "DistributedType", "FullyShardedDataParallelPlugin",
        "GradScalerKwargs", "GradientAccumulationPlugin", "GradientState", "InitProcessGroupKwargs", "PartialState",
        "ProfileKwargs", "ProjectConfiguration", "debug_launcher", "find_executable_batch_size", "get_logger", "notebook_launcher",
        "send_to_device", "set_seed", "skip_first_batches", "__version__",
    ] + BIG_MODELING_NAMES)
    for name in overdrive.__all__:
        assert getattr(overdrive, name) is not None


STRATEGY_CHECK = re.compile(
    r"distributed_type\s*(==|!=|\bin\b|\bis\b)|DistributedType\.\w+\s*(==|!=)|"
    r"isinstance\([^)]*(Strategy|DistributedDataParallel)\b"
)


def test_no_strategy_checks_outside_strategies() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if "strategies" in path.relative_to(SRC).parts:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if STRATEGY_CHECK.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{lineno}: {line.strip()}")
    assert not offenders, "strategy checks belong in strategies/:\n" + "\n".join(offenders)


def test_strategy_check_pattern_catches_the_usual_forms() -> None:
    # Guard the guard: the pattern must flag the forms it is meant to forbid.
    for line in ("if self.distributed_type == DistributedType.MULTI_GPU:", "isinstance(model, DistributedDataParallel)",
                 "if isinstance(s, DDPStrategy):", "if state.distributed_type in (A, B):"):
        assert STRATEGY_CHECK.search(line), line
