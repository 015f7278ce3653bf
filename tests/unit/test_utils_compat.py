"""The smaller ``accelerate.utils`` names scripts import, at ``overdrive.utils``: same signatures, same answers as the
installed accelerate here, and the environment helpers restore what they change."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

accelerate_utils = pytest.importorskip("accelerate.utils", reason="accelerate is the reference (test extra)")

import torch  # noqa: E402

import overdrive.utils as od_utils  # noqa: E402
from overdrive.commands.config import load_config  # noqa: E402
from overdrive.utils import _IMPORT_CHECKS  # noqa: E402

HELPERS = [
    "compare_versions", "is_torch_version", "str_to_bool", "parse_flag_from_env", "parse_choice_from_env",
    "get_int_from_env", "patch_environment", "clear_environment", "convert_bytes", "get_pretty_name", "merge_dicts",
    "recursive_getattr", "is_compiled_module", "is_port_in_use", "id_tensor_storage", "is_peft_model",
    "is_namedtuple", "is_torch_tensor", "listify", "write_basic_config",
]
CONSTANTS = [
    "MODEL_NAME", "SAFE_MODEL_NAME", "OPTIMIZER_NAME", "SCHEDULER_NAME", "SAMPLER_NAME", "RNG_STATE_NAME",
    "SCALER_NAME", "WEIGHTS_NAME", "SAFE_WEIGHTS_NAME", "WEIGHTS_INDEX_NAME", "SAFE_WEIGHTS_INDEX_NAME",
    "WEIGHTS_PATTERN_NAME", "SAFE_WEIGHTS_PATTERN_NAME", "PROFILE_PATTERN_NAME",
]


def _params(fn: object) -> list[tuple[str, str]]:
    return [(p.name, p.kind.name) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(_IMPORT_CHECKS) + HELPERS)
def test_same_parameters_as_accelerate(name: str) -> None:
    assert _params(getattr(od_utils, name)) == _params(getattr(accelerate_utils, name))


def test_availability_checks_agree_with_accelerate_on_this_machine() -> None:
    disagree = {}
    for name in _IMPORT_CHECKS:
        ours = getattr(od_utils, name)()
        assert isinstance(ours, bool), name
        if ours != bool(getattr(accelerate_utils, name)()):
            disagree[name] = ours
    assert not disagree
    # packages the test extra installs, so the checks are seen answering True as well as False
    assert od_utils.is_tensorboard_available() and od_utils.is_torchdata_stateful_dataloader_available()
    assert not od_utils.is_cuda_available() or torch.cuda.is_available()


@pytest.mark.parametrize("name", CONSTANTS)
def test_checkpoint_file_names_equal_accelerate(name: str) -> None:
    assert getattr(od_utils, name) == getattr(accelerate_utils, name)


def test_versions() -> None:
    assert od_utils.is_torch_version(">=", "2.4") and not od_utils.is_torch_version("<", "2.4")
    assert od_utils.compare_versions("torch", "==", torch.__version__) is True  # the installed distribution's version
    for required in ("2.13", "2.13.0", "3.0"):  # a local tag such as +cpu counts as Accelerate counts it
        assert od_utils.compare_versions("torch", ">=", required) == accelerate_utils.compare_versions(
            "torch", ">=", required)
    assert od_utils.compare_versions("1.2.3", "<", "1.10")  # numeric, not text, order
    with pytest.raises(ValueError, match="operation '=>'"):
        od_utils.compare_versions("1.0", "=>", "1.0")


def test_environment_helpers_restore_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERDRIVE_TEST_KEEP", "before")
    monkeypatch.delenv("OVERDRIVE_TEST_NEW", raising=False)
    with od_utils.patch_environment(overdrive_test_keep=1, overdrive_test_new="on"):
        assert os.environ["OVERDRIVE_TEST_KEEP"] == "1" and od_utils.parse_flag_from_env("OVERDRIVE_TEST_NEW")
        assert od_utils.get_int_from_env(["OVERDRIVE_TEST_MISSING", "OVERDRIVE_TEST_KEEP"], 7) == 1
    assert os.environ["OVERDRIVE_TEST_KEEP"] == "before" and "OVERDRIVE_TEST_NEW" not in os.environ
    before = dict(os.environ)
    with od_utils.clear_environment():
        assert not os.environ
        os.environ["OVERDRIVE_TEST_INSIDE"] = "x"
    assert dict(os.environ) == before
    assert od_utils.parse_choice_from_env("OVERDRIVE_TEST_MISSING", "bf16") == "bf16"
    for text in ("y", "YES", "t", "True", "on", "1", "n", "no", "F", "false", "off", "0"):
        assert od_utils.str_to_bool(text) == accelerate_utils.str_to_bool(text)
        assert od_utils.str_to_bool(text, to_bool=True) is bool(accelerate_utils.str_to_bool(text))
    with pytest.raises(ValueError, match="invalid truth value 'maybe'"):
        od_utils.str_to_bool("maybe")


def test_small_helpers_equal_accelerate() -> None:
    for size in (0, 1023, 1024, 123456789, 5 * 1024**5):
        assert od_utils.convert_bytes(size) == accelerate_utils.convert_bytes(size)
    for obj in (od_utils.convert_bytes, torch.nn.Linear, 3, torch.nn.Linear(1, 1)):
        assert od_utils.get_pretty_name(obj) == accelerate_utils.get_pretty_name(obj)
    src, dst = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}, {"a": {"x": 0, "c": {"y": 1}}, "e": 0}
    assert od_utils.merge_dicts(src, dict(dst)) == accelerate_utils.merge_dicts(src, dict(dst))
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    assert od_utils.recursive_getattr(model, "0.weight") is model[0].weight
    assert od_utils.is_compiled_module(torch.compile(model)) and not od_utils.is_compiled_module(model)
    w = torch.ones(6)
    assert od_utils.id_tensor_storage(w[2:]) == od_utils.id_tensor_storage(w) != od_utils.id_tensor_storage(w.clone())
    assert od_utils.is_peft_model(model) is False


def test_is_port_in_use_sees_a_real_listener() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("localhost", 0))
        server.listen()
        port = server.getsockname()[1]
        assert od_utils.is_port_in_use(port)
    assert not od_utils.is_port_in_use(port)


def test_write_basic_config_writes_a_loadable_file_and_never_replaces_one(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "default_config.yaml"
    assert od_utils.write_basic_config("bf16", save_location=str(path)) == path
    config = load_config(path)
    assert config["mixed_precision"] == "bf16" and config["num_processes"] >= 1
    path.write_text("mixed_precision: fp16\n")
    assert od_utils.write_basic_config("no", save_location=str(path)) is False
    assert path.read_text() == "mixed_precision: fp16\n" and "not replaced" in capsys.readouterr().out
