"""Experiment trackers (the ``accelerate.tracking`` module of overdrive): TensorBoard, MLflow, W&B and JSON lines.

``Accelerator(log_with=..., project_dir=...)`` picks the trackers, :meth:`~overdrive.Accelerator.init_trackers`
starts them, :meth:`~overdrive.Accelerator.log` writes values, :meth:`~overdrive.Accelerator.end_training` flushes
and closes them. Each built-in tracker uses the real package, imported only when the tracker starts (``import
overdrive`` imports none of them). Trackers write on the main process only, unless a tracker sets
``main_process_only = False``.

Built-in trackers (``log_with`` names, as in Accelerate, plus ``"jsonl"``):

* ``"tensorboard"``: ``torch.utils.tensorboard.SummaryWriter`` (needs ``pip install tensorboard``) in
  ``{logging_dir}/{project_name}``; the config goes to ``add_hparams`` and ``hparams.yml``.
* ``"mlflow"``: an MLflow run (``pip install mlflow`` or ``mlflow-skinny``); the tracking URI is
  ``MLFLOW_TRACKING_URI`` or, by default, a local file store in ``{logging_dir}/mlruns``.
* ``"wandb"``: a Weights & Biases run (``pip install wandb``); ``WANDB_MODE=offline`` works without a network.
* ``"jsonl"``: dependency-free, one JSON object per line in ``{logging_dir}/{project_name}/log.jsonl``
  (``{"config": ...}`` first, then ``{"step": ..., **values}``).

``log_with="all"`` takes every built-in tracker whose package is installed. Asking for a tracker whose package is
missing is an error that says what to install (Accelerate only logs this at debug level and drops the tracker).

Example:
    >>> import tempfile
    >>> from overdrive import Accelerator
    >>> acc = Accelerator(log_with="jsonl", project_dir=tempfile.mkdtemp())
    >>> acc.init_trackers("demo", config={"lr": 0.1})
    >>> acc.log({"loss": 0.5}, step=1)
    >>> acc.get_tracker("jsonl").name
    'jsonl'
    >>> acc.end_training()
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .logging import get_logger
from .state import PartialState
from .utils.dataclasses import LoggerType

__all__ = [
    "GeneralTracker",
    "JSONLTracker",
    "MLflowTracker",
    "TensorBoardTracker",
    "WandBTracker",
    "filter_trackers",
    "get_available_trackers",
    "on_main_process",
]

logger = get_logger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])


def on_main_process(function: _F) -> _F:
    """Run a tracker method on the main process only when the tracker's ``main_process_only`` is True.

    Checked at call time, so creating a tracker does not need a process group.

    Example:
        >>> class Quiet(GeneralTracker):
        ...     name, requires_logging_directory = "quiet", False
        ...     @on_main_process
        ...     def log(self, values, step=None, **kwargs): return "logged"
        >>> Quiet().log({})
        'logged'
    """

    @functools.wraps(function)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "main_process_only", False) and not PartialState().is_main_process:
            return None
        return function(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class GeneralTracker:
    """Base class of trackers, built-in and custom (pass an instance in ``log_with``).

    A subclass sets ``name`` and ``requires_logging_directory`` and implements :meth:`log`; it may implement
    :meth:`start`, :meth:`store_init_configuration`, :meth:`finish` and the ``tracker`` property (the underlying
    object, e.g. the ``SummaryWriter``).

    Example:
        >>> class Printer(GeneralTracker):
        ...     name, requires_logging_directory = "printer", False
        ...     def log(self, values, step=None, **kwargs): print(step, values)
        >>> Printer().log({"loss": 1.0}, step=3)
        3 {'loss': 1.0}
    """

    name: str
    requires_logging_directory: bool
    main_process_only = True

    def __init__(self, _blank: bool = False) -> None:
        if _blank:
            return
        missing = [attr for attr in ("name", "requires_logging_directory") if not hasattr(self, attr)]
        if missing:
            raise NotImplementedError(
                f"{type(self).__name__} must define {' and '.join(missing)} to be a tracker (see GeneralTracker)"
            )

    def start(self) -> None:
        """Open the run (called by ``init_trackers`` before the configuration is stored)."""

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        """Record the run's hyper-parameters."""

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Record ``values`` at ``step``."""

    def finish(self) -> None:
        """Flush and close the run (called by ``end_training``)."""

    @property
    def tracker(self) -> Any:
        """The underlying object of the tracking package (``None`` for a blank tracker)."""
        return None


def _numbers_and_text(values: dict[str, Any]) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    """Split logged values into numbers, strings and the rest (e.g. dicts of scalars)."""
    numbers: dict[str, float] = {}
    texts: dict[str, str] = {}
    other: dict[str, Any] = {}
    for key, value in values.items():
        item = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
        if isinstance(item, str):
            texts[key] = item
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            other[key] = item
        else:
            numbers[key] = float(item)
    return numbers, texts, other


class TensorBoardTracker(GeneralTracker):
    """TensorBoard through ``torch.utils.tensorboard`` (needs the ``tensorboard`` package).

    Example:
        >>> import tempfile
        >>> tb = TensorBoardTracker("run", tempfile.mkdtemp()); tb.start(); tb.log({"loss": 1.0}, step=0)
        >>> tb.finish()
    """

    name = "tensorboard"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__()
        self.run_name = run_name
        self.logging_dir = os.path.join(os.fspath(logging_dir), run_name)
        self.init_kwargs = kwargs
        self.writer: Any = None

    @on_main_process
    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.logging_dir, **self.init_kwargs)

    @property
    def tracker(self) -> Any:
        return self.writer

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        import yaml

        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}
        # add_hparams writes a run below logging_dir named after the time; name it after the project instead.
        self.writer.add_hparams(flat, metric_dict={}, run_name=".")
        self.writer.flush()
        Path(self.logging_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.logging_dir) / "hparams.yml").write_text(yaml.safe_dump(flat))

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        numbers, texts, other = _numbers_and_text(values)
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, global_step=step, **kwargs)
        for key, text in texts.items():
            self.writer.add_text(key, text, global_step=step, **kwargs)
        for key, group in other.items():
            if isinstance(group, dict):
                self.writer.add_scalars(key, group, global_step=step, **kwargs)
            else:
                raise TypeError(f"log(): {key}={group!r} is not a number, a string or a dict of numbers")
        self.writer.flush()

    @on_main_process
    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowTracker(GeneralTracker):
    """An MLflow run; the tracking URI is ``MLFLOW_TRACKING_URI`` or a local file store in ``{logging_dir}/mlruns``.

    Example:
        >>> tracker = MLflowTracker("run", logging_dir=None)
        >>> tracker.name
        'mlflow'
    """

    name = "mlflow"
    requires_logging_directory = False

    def __init__(self, experiment_name: str | None = None, logging_dir: str | os.PathLike[str] | None = None,
                 run_id: str | None = None, tags: dict[str, Any] | str | None = None, nested_run: bool = False,
                 run_name: str | None = None, description: str | None = None) -> None:
        super().__init__()
        self.experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", experiment_name)
        self.logging_dir = logging_dir
        self.run_id = os.environ.get("MLFLOW_RUN_ID", run_id)
        self.tags = json.loads(tags) if isinstance(tags, str) else tags
        self.nested_run = nested_run
        self.run_name = run_name
        self.description = description
        self.active_run: Any = None

    @on_main_process
    def start(self) -> None:
        import mlflow

        if "MLFLOW_TRACKING_URI" not in os.environ and self.logging_dir is not None:
            # A local file store needs no server or database; MLflow 3 refuses it unless this is set (its choice
            # only covers the default URI: a user's MLFLOW_TRACKING_URI is left alone).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((Path(self.logging_dir) / "mlruns").resolve().as_uri())
        experiment = mlflow.get_experiment_by_name(self.experiment_name) if self.experiment_name else None
        experiment_id = experiment.experiment_id if experiment is not None else (
            mlflow.create_experiment(self.experiment_name) if self.experiment_name else None
        )
        self.active_run = mlflow.start_run(run_id=self.run_id, experiment_id=experiment_id, run_name=self.run_name,
                                           nested=self.nested_run, tags=self.tags, description=self.description)

    @property
    def tracker(self) -> Any:
        return self.active_run

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        import mlflow

        items = list(values.items())
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per call
            mlflow.log_params(dict(items[start:start + 100]))

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        import mlflow

        numbers, _texts, _other = _numbers_and_text(values)
        mlflow.log_metrics(numbers, step=step)

    @on_main_process
    def finish(self) -> None:
        import mlflow

        if self.active_run is not None:
            mlflow.end_run()


class WandBTracker(GeneralTracker):
    """A Weights & Biases run (``WANDB_MODE=offline`` writes it locally, without a network).

    Example:
        >>> WandBTracker("project").name
        'wandb'
    """

    name = "wandb"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_name: str, **kwargs: Any) -> None:
        super().__init__()
        self.run_name = run_name
        self.init_kwargs = kwargs
        self.run: Any = None

    @on_main_process
    def start(self) -> None:
        import wandb

        self.run = wandb.init(project=self.run_name, **self.init_kwargs)

    @property
    def tracker(self) -> Any:
        return self.run

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self.run.log(values, step=step, **kwargs)

    @on_main_process
    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


class JSONLTracker(GeneralTracker):
    """Dependency-free: one JSON object per line in ``{logging_dir}/{run_name}/log.jsonl``, flushed every call.

    Example:
        >>> import json, tempfile
        >>> t = JSONLTracker("run", tempfile.mkdtemp()); t.start(); t.log({"loss": 0.5}, step=2); t.finish()
        >>> json.loads(open(t.path).read())
        {'step': 2, 'loss': 0.5}
    """

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(logging_dir) / run_name / "log.jsonl"
        self._file: Any = None

    @on_main_process
    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    @property
    def tracker(self) -> Any:
        return self._file

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self._write({"config": values})

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self._write({"step": step, **values})

    @on_main_process
    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _jsonable(value: Any) -> Any:
    """Tensors and numpy scalars as numbers or lists; anything else as its string."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# name -> (class, import name of the package it needs, pip install hint)
_BUILTIN: dict[str, tuple[type[GeneralTracker], str | None, str]] = {
    "tensorboard": (TensorBoardTracker, "tensorboard", "pip install tensorboard"),
    "mlflow": (MLflowTracker, "mlflow", "pip install mlflow-skinny"),
    "wandb": (WandBTracker, "wandb", "pip install wandb"),
    "jsonl": (JSONLTracker, None, ""),
}


def get_available_trackers() -> list[str]:
    """Names of the built-in trackers whose package is installed (found without importing it).

    Example:
        >>> "jsonl" in get_available_trackers()
        True
    """
    return [name for name, (_cls, module, _hint) in _BUILTIN.items()
            if module is None or importlib.util.find_spec(module) is not None]


def filter_trackers(log_with: Any, logging_dir: str | os.PathLike[str] | None = None) -> list[Any]:
    """Check ``log_with`` (a name, a :class:`GeneralTracker`, or a list of them, ``"all"`` allowed) and return the
    trackers to start: names of built-in trackers and custom tracker instances, each once.

    Raises ``ValueError`` for an unknown name, a missing package, or a missing ``logging_dir``.

    Example:
        >>> filter_trackers(["jsonl", "jsonl"], logging_dir="logs")
        ['jsonl']
        >>> filter_trackers("all", logging_dir="logs")[-1]
        'jsonl'
    """
    if log_with is None:
        return []
    wanted: Sequence[Any] = log_with if isinstance(log_with, (list, tuple)) else [log_with]
    allowed = [t.value for t in LoggerType]
    chosen: list[Any] = []
    for item in wanted:
        if isinstance(item, GeneralTracker):
            chosen.append(item)
            continue
        name = str(getattr(item, "value", item)).lower()
        if name == "all":
            chosen += [n for n in get_available_trackers() if n not in chosen]
            continue
        if name not in _BUILTIN:
            known = sorted(set(allowed) | set(_BUILTIN))
            if name in allowed:
                raise ValueError(f"log_with={item!r}: the {name} tracker is not built into overdrive; built in are "
                                 f"{sorted(_BUILTIN)}, or pass a GeneralTracker subclass instance")
            raise ValueError(f"log_with={item!r} is not a tracker; use one of {known} or a GeneralTracker instance")
        cls, module, hint = _BUILTIN[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise ValueError(f"log_with={name!r} needs the {module} package, which is not installed; run `{hint}`")
        if cls.requires_logging_directory and logging_dir is None:
            raise ValueError(f"log_with={name!r} writes files and needs a directory: pass project_dir=... (or "
                             "ProjectConfiguration(logging_dir=...)) to Accelerator")
        if name not in chosen:
            chosen.append(name)
    return chosen


def start_trackers(chosen: list[Any], project_name: str, logging_dir: str | os.PathLike[str] | None,
                   config: dict[str, Any] | None, init_kwargs: dict[str, Any]) -> list[GeneralTracker]:
    """Create the trackers ``filter_trackers`` chose, start them and store ``config`` (``init_trackers``)."""
    trackers: list[GeneralTracker] = []
    for item in chosen:
        if isinstance(item, GeneralTracker):
            trackers.append(item)
            continue
        cls: Any = _BUILTIN[item][0]  # each built-in class has its own constructor
        kwargs = dict(init_kwargs.get(item, {}))
        if cls.requires_logging_directory or item == "mlflow":  # mlflow keeps its store in logging_dir by default
            trackers.append(cls(project_name, logging_dir, **kwargs))
        else:
            trackers.append(cls(project_name, **kwargs))
    for tracker in trackers:
        tracker.start()
    if config is not None:
        for tracker in trackers:
            tracker.store_init_configuration(config)
    return trackers
