"""Trackers write with the real packages, and what they wrote is read back with those packages' own readers (or,
for W&B's offline transaction log, its documented record format): values, steps and config must match."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from overdrive import Accelerator
from overdrive import tracking

VALUES = [{"loss": 1.0 / (step + 1), "acc": 0.25 * step} for step in range(4)]
CONFIG = {"lr": 0.001, "batch_size": 32, "model": "mlp"}


def run(log_with: object, folder: Path) -> Accelerator:
    acc = Accelerator(log_with=log_with, project_dir=str(folder))
    assert not any(folder.iterdir()) if folder.exists() else True, "written before init_trackers"
    acc.init_trackers("proj", config=CONFIG)
    for step, values in enumerate(VALUES):
        acc.log(values, step=step)
    acc.log({"note": "hello"}, step=4)
    acc.end_training()
    return acc


def test_jsonl(tmp_path: Path) -> None:
    run("jsonl", tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "proj" / "log.jsonl").read_text().splitlines()]
    assert lines[0] == {"config": CONFIG}
    assert lines[1:] == [{"step": s, **v} for s, v in enumerate(VALUES)] + [{"step": 4, "note": "hello"}]


def test_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = run("tensorboard", tmp_path)
    assert acc.get_tracker("tensorboard").name == "tensorboard"
    events = EventAccumulator(str(tmp_path / "proj"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for key in ("loss", "acc"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(s, pytest.approx(v[key])) for s, v in enumerate(VALUES)]
    note = events.Tensors("note/text_summary")
    assert [e.step for e in note] == [4] and b"hello" in note[0].tensor_proto.string_val[0]
    import yaml

    assert yaml.safe_load((tmp_path / "proj" / "hparams.yml").read_text()) == CONFIG


def test_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="mlflow is not installed: pip install mlflow-skinny")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    run("mlflow", tmp_path)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("proj")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.data.params == {k: str(v) for k, v in CONFIG.items()}
    for key in ("loss", "acc"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        assert history == [(s, pytest.approx(v[key])) for s, v in enumerate(VALUES)]
    assert found.info.status == "FINISHED"


def _wandb_records(path: Path) -> list[bytes]:
    """Records of a W&B transaction log (.wandb): a 7-byte header, then LevelDB-log blocks of 32 KiB whose records
    carry a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    raw = path.read_bytes()
    assert raw[:4] == b":W&B", "not a W&B transaction log"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left  # block padding
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(data)
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            records.append(pending + data)
    return records


def test_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed: pip install wandb")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run("wandb", tmp_path / "proj-dir")
    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    config, history, project = {}, [], None
    for data in _wandb_records(log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            project = record.run.project
        elif kind == "config":
            config.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                           for item in record.config.update})
        elif kind == "history":
            # newer W&B writes the name in nested_key instead of key
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    assert project == "proj"
    assert {k: config[k] for k in CONFIG} == CONFIG
    logged = [{k: h[k] for k in ("_step", "loss", "acc") if k in h} for h in history if "loss" in h]
    assert logged == [{"_step": s, **v} for s, v in enumerate(VALUES)]


def test_all_takes_every_installed_tracker(tmp_path: Path) -> None:
    acc = Accelerator(log_with=["all"], project_dir=str(tmp_path))
    assert acc.log_with == tracking.get_available_trackers()
    assert "jsonl" in acc.log_with


def test_bad_tracker_requests_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="log_with='nope' is not a tracker; use one of"):
        Accelerator(log_with="nope", project_dir=str(tmp_path))
    with pytest.raises(ValueError, match="log_with='jsonl' writes files and needs a directory: pass project_dir"):
        Accelerator(log_with="jsonl")
    # A tracker whose package is absent: named, with the install command (never silently dropped).
    monkeypatch.setitem(tracking._BUILTIN, "wandb", (tracking.WandBTracker, "a_package_that_is_not_installed",
                                                      "pip install wandb"))
    with pytest.raises(ValueError, match="needs the a_package_that_is_not_installed package.*pip install wandb"):
        Accelerator(log_with="wandb")
    assert "wandb" not in tracking.get_available_trackers()
    with pytest.raises(ValueError, match="get_tracker\\('wandb'\\): no such tracker"):
        acc = Accelerator(log_with="jsonl", project_dir=str(tmp_path))
        acc.init_trackers("p")
        acc.get_tracker("wandb")


def test_custom_tracker_and_get_tracker(tmp_path: Path) -> None:
    class Collect(tracking.GeneralTracker):
        name, requires_logging_directory = "collect", False

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[int | None, dict]] = []

        def log(self, values: dict, step: int | None = None, **kwargs: object) -> None:
            self.seen.append((step, values))

    mine = Collect()
    acc = Accelerator(log_with=[mine, "jsonl"], project_dir=str(tmp_path))
    assert acc.get_tracker("collect").tracker is None  # blank before init_trackers, as in Accelerate
    acc.init_trackers("p")
    acc.log({"x": 1}, step=7)
    assert acc.get_tracker("collect") is mine and mine.seen == [(7, {"x": 1})]
    assert acc.get_tracker("jsonl", unwrap=True) is not None
    acc.end_training()


def test_import_overdrive_imports_no_tracker_package() -> None:
    # tqdm is left out: torch itself imports it (torch.hub)
    code = ("import sys, overdrive; from overdrive import Accelerator, tracking; "
            "print(sorted(m for m in ('tensorboard', 'mlflow', 'wandb', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
