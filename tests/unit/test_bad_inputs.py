"""The bad-input table of docs/errors.md, as one parametrised test.

Each row calls a public entry point with one wrong input and checks: the documented error type, a message fragment
naming the value (and the fix), no hang (a 30 s alarm per case) and no file changed in the case's folder (which
holds an existing file and a finished checkpoint that a careless error path could overwrite). Rows whose fix belongs
to a module another change owns are ``xfail`` with the reason; the table in docs/errors.md says the same.
"""

from __future__ import annotations

import hashlib
import re
import signal
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from overdrive import Accelerator
from overdrive.checkpoint_state import CheckpointError
from overdrive.debug import read_timeouts
from overdrive.precision import make_precision
from overdrive.state import AcceleratorState, GradientState
from overdrive.utils import (
    AutocastKwargs,
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    GradientAccumulationPlugin,
    GradScalerKwargs,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    set_seed,
)
from overdrive.utils.memory import find_executable_batch_size
from overdrive.utils.operations import reduce

DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(2, 1)


def _loader(batch_size: int = 2) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(12, 2)), batch_size=batch_size)


def _fresh() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# -- the rows' actions (each gets the case folder) -------------------------------------------------------------------


def _backward_twice(tmp: Path) -> None:
    acc = Accelerator()
    model = acc.prepare(_model())
    loss = model(torch.ones(1, 2)).sum()
    acc.backward(loss)
    acc.backward(loss)


def _accumulate_unprepared_loader(tmp: Path) -> None:
    acc = Accelerator(gradient_accumulation_steps=2)
    model = acc.prepare(_model())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is the documented answer: raise it to check it
        for (x,) in _loader():  # not prepared: the end of the epoch cannot force the last sync
            with acc.accumulate(model):
                acc.backward(model(x).sum())


def _mp_env(tmp: Path) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("OVERDRIVE_MIXED_PRECISION", "fp17")
    try:
        Accelerator()
    finally:
        mp.undo()


def _fesb(start: object) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        find_executable_batch_size(lambda batch_size: batch_size, starting_batch_size=start)()  # type: ignore[arg-type]

    return run


def _fesb_passes_batch_size(tmp: Path) -> None:
    @find_executable_batch_size(starting_batch_size=8)
    def train(batch_size: int) -> int:
        return batch_size

    train(8)


def _clip(value: object) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        acc = Accelerator()
        model = acc.prepare(_model())
        model(torch.ones(1, 2)).sum().backward()
        acc.clip_grad_norm_(model.parameters(), value)  # type: ignore[arg-type]

    return run


def _skip_negative(tmp: Path) -> None:
    acc = Accelerator()
    acc.skip_first_batches(acc.prepare(_loader()), -1)


def _save_state_onto_file(tmp: Path) -> None:
    acc = Accelerator()
    acc.prepare(_model())
    acc.save_state(str(tmp / "notes.txt"))


def _save_model_onto_file(tmp: Path) -> None:
    acc = Accelerator()
    model = acc.prepare(_model())
    acc.save_model(model, str(tmp / "notes.txt"))


def _save_model_bad_shard(tmp: Path) -> None:
    acc = Accelerator()
    model = acc.prepare(_model())
    acc.save_model(model, str(tmp / "ckpt_model"), max_shard_size="10XB")


def _load_missing(tmp: Path) -> None:
    acc = Accelerator()
    acc.prepare(_model())
    acc.load_state(str(tmp / "no_such_checkpoint"))


def _load_no_checkpoints(tmp: Path) -> None:
    config = ProjectConfiguration(project_dir=str(tmp / "empty_project"), automatic_checkpoint_naming=True)
    Accelerator(project_config=config).load_state()


def _resume_other_batch(tmp: Path) -> None:
    """The existing checkpoint stopped 3 batches of 2 into the epoch; 6 samples are no whole number of batches of 4."""
    acc = Accelerator()
    acc.prepare(_model(), _loader(batch_size=4))
    acc.load_state(str(tmp / "ckpt"))


def _register_no_state_dict(tmp: Path) -> None:
    Accelerator().register_for_checkpointing(object())


def _debug_env(var: str, value: str) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        read_timeouts(environ={var: value})

    return run


@dataclass(frozen=True)
class Case:
    id: str
    entry: str  # the call, as the docs table shows it
    action: Callable[[Path], None]
    error: type[BaseException]
    fragment: str  # a regex the message must contain: names the value and/or the fix
    xfail: str | None = None  # the fix belongs to a module another change owns


CASES = [
    Case("mp-unknown", 'Accelerator(mixed_precision="fp17")', lambda t: Accelerator(mixed_precision="fp17"),
         ValueError, r"mixed_precision='fp17'.*'no', 'fp16', 'bf16'"),
    Case("mp-type", "Accelerator(mixed_precision=16)", lambda t: Accelerator(mixed_precision=16),  # type: ignore
         TypeError, r"mixed_precision must be a string such as 'bf16', got int"),
    Case("mp-fp8", 'Accelerator(mixed_precision="fp8")', lambda t: Accelerator(mixed_precision="fp8"),
         NotImplementedError, r"fp8.*use 'bf16'"),
    Case("mp-env", "OVERDRIVE_MIXED_PRECISION=fp17, Accelerator()", _mp_env, ValueError,
         r"env OVERDRIVE_MIXED_PRECISION='fp17'"),
    Case("fp16-device", 'mixed_precision="fp16" on a device without autocast (meta)',
         lambda t: make_precision("fp16", torch.device("meta")), ValueError, r"'fp16' needs autocast.*'meta'.*'no'"),
    Case("gas-zero", "Accelerator(gradient_accumulation_steps=0)",
         lambda t: Accelerator(gradient_accumulation_steps=0), ValueError, r"gradient_accumulation_steps=0.*positive"),
    Case("gas-str", 'Accelerator(gradient_accumulation_steps="2")',
         lambda t: Accelerator(gradient_accumulation_steps="2"),  # type: ignore[arg-type]
         ValueError, r"gradient_accumulation_steps='2' must be a positive integer"),
    Case("gas-and-plugin", "Accelerator(gradient_accumulation_steps=2, gradient_accumulation_plugin=...)",
         lambda t: Accelerator(gradient_accumulation_steps=2,
                               gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=3)),
         ValueError, r"both given; pass only the plugin"),
    Case("plugin-steps", "GradientAccumulationPlugin(num_steps=0)", lambda t: GradientAccumulationPlugin(num_steps=0),
         ValueError, r"num_steps=0.*>= 1"),
    Case("log-with", 'Accelerator(log_with="nonexistent")', lambda t: Accelerator(log_with="nonexistent"),
         ValueError, r"log_with='nonexistent' is not a tracker; use one of"),
    Case("total-limit", "ProjectConfiguration(total_limit=0)",
         lambda t: ProjectConfiguration(project_dir=str(t), total_limit=0), ValueError, r"total_limit=0.*>= 1"),
    Case("iteration", "ProjectConfiguration(iteration=-1)", lambda t: ProjectConfiguration(iteration=-1),
         ValueError, r"iteration=-1.*>= 0"),
    Case("pg-timeout", "InitProcessGroupKwargs(timeout=30)", lambda t: InitProcessGroupKwargs(timeout=30),  # type: ignore
         TypeError, r"timeout=30.*timedelta\(seconds=30\)"),
    Case("handler-unknown", "Accelerator(kwargs_handlers=[object()])",
         lambda t: Accelerator(kwargs_handlers=[object()]), TypeError, r"kwargs_handlers got .*supported handlers"),
    Case("handler-twice", "Accelerator(kwargs_handlers=[GradScalerKwargs(), GradScalerKwargs()])",
         lambda t: Accelerator(kwargs_handlers=[GradScalerKwargs(), GradScalerKwargs()]), ValueError,
         r"more than one GradScalerKwargs; pass each kind once"),
    Case("ddp-bucket", "DistributedDataParallelKwargs(bucket_cap_mb=-1)",
         lambda t: DistributedDataParallelKwargs(bucket_cap_mb=-1), ValueError, r"bucket_cap_mb=-1.*> 0"),
    Case("autocast-enabled", 'AutocastKwargs(enabled="yes")', lambda t: AutocastKwargs(enabled="yes"),  # type: ignore
         TypeError, r"enabled='yes'.*True or False"),
    Case("scaler-scale", "GradScalerKwargs(init_scale=-1)", lambda t: GradScalerKwargs(init_scale=-1), ValueError,
         r"init_scale=-1.*> 0"),
    Case("loader-config", 'DataLoaderConfiguration(split_batches="yes")',
         lambda t: DataLoaderConfiguration(split_batches="yes"),  # type: ignore[arg-type]
         TypeError, r"split_batches='yes'.*True or False"),
    Case("backward-twice", "accelerator.backward(loss) twice on one graph", _backward_twice, RuntimeError,
         r"backward through the graph a second time.*retain_graph=True"),
    Case("backward-type", "accelerator.backward(1.0)", lambda t: Accelerator().backward(1.0),  # type: ignore
         TypeError, r"needs a tensor loss, got float"),
    Case("backward-shape", "accelerator.backward(loss of shape (3,))",
         lambda t: Accelerator().backward(torch.ones(3, requires_grad=True)), ValueError,
         r"scalar loss, got a tensor of shape \(3,\).*loss.mean\(\)"),
    Case("accumulate-unprepared", "accumulate() over a data loader that was not prepared",
         _accumulate_unprepared_loader, UserWarning, r"no prepared data loader is being iterated.*accelerator.prepare"),
    Case("device-placement", "accelerator.prepare(m1, m2, device_placement=[True])",
         lambda t: Accelerator().prepare(_model(), _model(), device_placement=[True]), ValueError,
         r"device_placement has 1 entries but prepare\(\) got 2 objects"),
    Case("clip-negative", "accelerator.clip_grad_norm_(params, max_norm=-1)", _clip(-1.0), ValueError,
         r"max_norm=-1.*number >= 0"),
    Case("project-dir", "Accelerator(project_dir=3)", lambda t: Accelerator(project_dir=3),  # type: ignore
         TypeError, r"project_dir=3.*folder path"),
    Case("reduce-op", 'reduce(t, reduction="avg")', lambda t: reduce(torch.ones(1), "avg"), ValueError,
         r"reduction='avg'; allowed values are 'mean', 'sum'"),
    Case("fesb-zero", "find_executable_batch_size(starting_batch_size=0)", _fesb(0), ValueError,
         r"starting_batch_size=0.*int >= 1"),
    Case("fesb-str", 'find_executable_batch_size(starting_batch_size="64")', _fesb("64"), TypeError,
         r"starting_batch_size='64'.*int >= 1"),
    Case("fesb-explicit", "calling a find_executable_batch_size function with the batch size",
         _fesb_passes_batch_size, TypeError, r"supplies it; call `train\(\)` instead"),
    Case("set-seed", 'set_seed("abc")', lambda t: set_seed("abc"), TypeError,  # type: ignore[arg-type]
         r"seed='abc'.*pass an integer"),
    Case("skip-negative", "accelerator.skip_first_batches(loader, -1)", _skip_negative, ValueError,
         r"num_batches=-1 must be an int >= 0"),
    Case("save-state-file", "accelerator.save_state(<an existing file>)", _save_state_onto_file, ValueError,
         r"notes\.txt.*is a file"),
    Case("save-model-file", "accelerator.save_model(model, <an existing file>)", _save_model_onto_file, ValueError,
         r"notes\.txt.*is a file; pass a directory"),
    Case("shard-size", 'accelerator.save_model(model, dir, max_shard_size="10XB")', _save_model_bad_shard,
         ValueError, r"max_shard_size='10XB' is not a size"),
    Case("load-missing", "accelerator.load_state(<missing folder>)", _load_missing, ValueError,
         r"no_such_checkpoint.*does not exist"),
    Case("load-none-saved", "load_state() with automatic naming and no checkpoint yet", _load_no_checkpoints,
         ValueError, r"no complete checkpoint_N folder.*save one with save_state\(\) first"),
    Case("resume-batch", "load_state() mid-epoch with another global batch (world size x batch size)",
         _resume_other_batch, CheckpointError, r"6 samples.*world size 1.*not a multiple of 4.*Resume with a global batch"),
    Case("register", "accelerator.register_for_checkpointing(object())", _register_no_state_dict, ValueError,
         r"lack state_dict\(\).*wrap the value"),
    Case("watchdog-env", "OVERDRIVE_WATCHDOG_TIMEOUT=abc", _debug_env("OVERDRIVE_WATCHDOG_TIMEOUT", "abc"),
         ValueError, r"OVERDRIVE_WATCHDOG_TIMEOUT='abc' is not a number of seconds"),
    Case("debug-timeout-env", "OVERDRIVE_DEBUG_TIMEOUT=0", _debug_env("OVERDRIVE_DEBUG_TIMEOUT", "0"), ValueError,
         r"OVERDRIVE_DEBUG_TIMEOUT=0 would fail every collective"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def case_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder with a file and a finished checkpoint (3 batches of 2 into an epoch) that no error may touch."""
    (tmp_path / "notes.txt").write_text("keep me")
    acc = Accelerator()
    _model_p, loader = acc.prepare(_model(), _loader(batch_size=2))
    for i, _batch in enumerate(loader):
        if i == 2:
            acc.save_state(str(tmp_path / "ckpt"))
            break
    _fresh()
    yield tmp_path


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError("the bad input hung instead of raising")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input_raises_documented_error(case: Case, case_dir: Path) -> None:
    before = _snapshot(case_dir)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(30)
    try:
        with pytest.raises(case.error) as info:
            case.action(case_dir)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert re.search(case.fragment, str(info.value), re.S), f"{case.id}: {info.value}"
    assert _snapshot(case_dir) == before, f"{case.id} changed files in {case_dir}"


def test_table_has_enough_rows_and_matches_the_docs() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", DOCS.read_text(), re.M))
    assert documented == {c.id for c in CASES}, "docs/errors.md and CASES must list the same rows"


def test_timedelta_still_accepted() -> None:
    assert InitProcessGroupKwargs(timeout=timedelta(seconds=5)).timeout == timedelta(seconds=5)
