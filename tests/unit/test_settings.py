"""Settings precedence as a table: explicit argument > flag > OVERDRIVE_* env > ACCELERATE_* env > config file > default."""

from __future__ import annotations

import itertools
import json
import warnings

import pytest

from overdrive.commands.launch import build_env, parse_launch_args
from overdrive.settings import _WARNED, SETTINGS, SOURCES_VAR, parse_bool, resolve, resolve_all


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _WARNED.clear()  # "warn once" is per process; each test starts as a new process would

CASES = [
    # name, explicit, env, expected value, expected source
    ("mixed_precision", None, {}, "no", "default"),
    ("mixed_precision", None, {"ACCELERATE_MIXED_PRECISION": "bf16"}, "bf16", "env ACCELERATE_MIXED_PRECISION"),
    ("mixed_precision", None, {"OVERDRIVE_MIXED_PRECISION": "fp16"}, "fp16", "env OVERDRIVE_MIXED_PRECISION"),
    ("mixed_precision", None, {"OVERDRIVE_MIXED_PRECISION": "fp16", "ACCELERATE_MIXED_PRECISION": "bf16"}, "fp16",
     "env OVERDRIVE_MIXED_PRECISION"),
    ("mixed_precision", "no", {"OVERDRIVE_MIXED_PRECISION": "fp16", "ACCELERATE_MIXED_PRECISION": "bf16"}, "no",
     "argument"),
    ("mixed_precision", "bf16", {}, "bf16", "argument"),
    ("mixed_precision", None, {"ACCELERATE_MIXED_PRECISION": "BF16"}, "bf16", "env ACCELERATE_MIXED_PRECISION"),
    ("mixed_precision", None, {"ACCELERATE_MIXED_PRECISION": ""}, "no", "default"),
    ("cpu", None, {}, False, "default"),
    ("cpu", None, {"ACCELERATE_USE_CPU": "true"}, True, "env ACCELERATE_USE_CPU"),
    ("cpu", None, {"OVERDRIVE_USE_CPU": "0", "ACCELERATE_USE_CPU": "1"}, False, "env OVERDRIVE_USE_CPU"),
    ("cpu", True, {"OVERDRIVE_USE_CPU": "0"}, True, "argument"),
    ("gradient_accumulation_steps", None, {}, 1, "default"),
    ("gradient_accumulation_steps", None, {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, 4,
     "env ACCELERATE_GRADIENT_ACCUMULATION_STEPS"),
    ("gradient_accumulation_steps", 2, {"OVERDRIVE_GRADIENT_ACCUMULATION_STEPS": "8"}, 2, "argument"),
    ("debug", None, {"ACCELERATE_DEBUG_MODE": "yes"}, True, "env ACCELERATE_DEBUG_MODE"),
    ("dynamo_backend", None, {}, "no", "default"),
]


@pytest.mark.parametrize(("name", "explicit", "env", "value", "source"), CASES)
def test_precedence_table(name: str, explicit: object, env: dict[str, str], value: object, source: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an argument over an OVERDRIVE_* value warns; tested below
        assert resolve(name, explicit, env) == (value, source)


@pytest.mark.parametrize(
    ("name", "env", "needle"),
    [
        ("mixed_precision", {"ACCELERATE_MIXED_PRECISION": "fp17"}, "fp17"),
        ("cpu", {"OVERDRIVE_USE_CPU": "maybe"}, "maybe"),
        ("gradient_accumulation_steps", {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "0"}, "ACCELERATE_GRADIENT"),
        ("gradient_accumulation_steps", {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "-1"}, "-1"),
    ],
)
def test_bad_env_values_name_the_variable(name: str, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        resolve(name, None, env)


def test_explicit_value_is_checked_too() -> None:
    with pytest.raises(ValueError, match="'fp17'.*argument.*'no', 'fp16', 'bf16'"):
        resolve("mixed_precision", "fp17", {})


def test_every_training_setting_has_an_overdrive_and_accelerate_name() -> None:
    for setting in SETTINGS.values():
        assert setting.group in ("training", "launch", "fsdp", "deepspeed"), setting.name
        assert setting.help, setting.name
        if setting.group != "training":
            continue
        assert setting.env[0].startswith("OVERDRIVE_"), setting.name
        if setting.name in ("debug_timeout", "watchdog_timeout"):  # overdrive's own: Accelerate has no such setting
            continue
        assert any(v.startswith("ACCELERATE_") for v in setting.env), setting.name
        assert setting.help


@pytest.mark.parametrize(("text", "value"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("no", False)])
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


# -- every combination of the four layers: argument / flag / env / file present -> value and source --------------
# Distinct values per layer (default 1), so the value alone already shows which layer won.
LAYER_VALUES = {"argument": 2, "flag": 3, "env": 4, "file": 5}
PATH = "/cfg/default_config.yaml"


def _expected(present: dict[str, bool]) -> tuple[int, str]:
    for layer, source in (("argument", "argument"), ("flag", "flag --gradient_accumulation_steps"),
                          ("env", "env ACCELERATE_GRADIENT_ACCUMULATION_STEPS"), ("file", f"file {PATH}")):
        if present[layer]:
            return LAYER_VALUES[layer], source
    return 1, "default"


COMBINATIONS = [dict(zip(LAYER_VALUES, bits)) for bits in itertools.product((False, True), repeat=4)]


@pytest.mark.parametrize("present", COMBINATIONS, ids=lambda p: "+".join(k for k, v in p.items() if v) or "none")
def test_precedence_over_every_combination(present: dict[str, bool]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # conflicts warn; tested separately
        got = resolve(
            "gradient_accumulation_steps",
            LAYER_VALUES["argument"] if present["argument"] else None,
            {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"} if present["env"] else {},
            flag="3" if present["flag"] else None,
            file={"gradient_accumulation_steps": 5} if present["file"] else None,
            file_path=PATH,
        )
    assert got == _expected(present)


@pytest.mark.parametrize("present", COMBINATIONS, ids=lambda p: "+".join(k for k, v in p.items() if v) or "none")
def test_precedence_through_the_launcher_to_the_worker(present: dict[str, bool], tmp_path: object,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The real path: `overdrive launch` resolves flag > env > file and exports the winner with its source; the worker
    # then resolves its explicit argument against what it inherited.
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    user_env = {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"} if present["env"] else {}
    argv = (["--gradient_accumulation_steps", "3"] if present["flag"] else []) + ["-m", "pkg.train"]
    config = {"gradient_accumulation_steps": 5} if present["file"] else {}
    args = parse_launch_args(argv, config=config, environ=user_env)
    args.config_path = PATH  # the sources name the file that was read
    if present["file"] and not present["flag"] and not present["env"]:
        args.sources["gradient_accumulation_steps"] = f"file {PATH}"
    worker_env = {**user_env, **build_env(args)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = resolve("gradient_accumulation_steps", 2 if present["argument"] else None, worker_env)
    value, source = _expected(present)
    assert got[0] == value
    kind = source.split()[0]
    assert got[1].split()[0] == kind, (got, source)


def test_sources_record_names_the_launch_flag_on_the_worker() -> None:
    env = {"OVERDRIVE_MIXED_PRECISION": "bf16", SOURCES_VAR: json.dumps({"mixed_precision": ["flag --mixed_precision",
                                                                                           "bf16"]})}
    assert resolve("mixed_precision", None, env) == ("bf16", "flag --mixed_precision")
    # A value changed after the launch (the record no longer matches) is reported as the plain variable.
    env["OVERDRIVE_MIXED_PRECISION"] = "fp16"
    assert resolve("mixed_precision", None, env) == ("fp16", "env OVERDRIVE_MIXED_PRECISION")


def test_conflict_between_argument_and_launcher_value_warns_once_naming_both() -> None:
    env = {"OVERDRIVE_MIXED_PRECISION": "bf16", SOURCES_VAR: json.dumps({"mixed_precision": ["flag --mixed_precision",
                                                                                           "bf16"]})}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # the accelerator resolves a setting more than once
            assert resolve("mixed_precision", "fp16", env) == ("fp16", "argument")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "mixed_precision='fp16'" in messages[0] and "'bf16' from flag --mixed_precision" in messages[0]


@pytest.mark.parametrize(
    ("env", "file", "warns"),
    [
        ({"ACCELERATE_MIXED_PRECISION": "bf16"}, None, False),  # accelerate launch exports every ACCELERATE_* name
        ({}, {"mixed_precision": "no"}, False),  # a file stating the default chose nothing
        ({}, {"mixed_precision": "bf16"}, True),
        ({"OVERDRIVE_MIXED_PRECISION": "fp8"}, None, True),
        ({"OVERDRIVE_MIXED_PRECISION": "fp16"}, None, False),  # same value: no conflict
    ],
)
def test_which_conflicts_warn(env: dict[str, str], file: dict[str, str] | None, warns: bool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolve("mixed_precision", "fp16", env, file=file, file_path="x.yaml")
    assert bool(caught) is warns, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    ("name", "file", "value"),
    [
        ("cpu", {"use_cpu": True}, True),
        ("use_fsdp", {"distributed_type": "FSDP"}, True),
        ("use_fsdp", {"distributed_type": "MULTI_GPU"}, False),
        ("use_deepspeed", {"distributed_type": "DEEPSPEED"}, True),
        ("dynamo_backend", {"dynamo_config": {"dynamo_backend": "INDUCTOR"}}, "inductor"),
        ("gradient_accumulation_steps", {"deepspeed_config": {"gradient_accumulation_steps": 8}}, 8),
        ("num_processes", {"num_processes": -1}, None),  # Accelerate's "not set"
        ("fsdp_offload_params", {"fsdp_config": {"fsdp_offload_params": True}}, "true"),
        ("fsdp_offload_params", {"fsdp_config": {"offload_params": False}}, "false"),
        ("zero_stage", {"deepspeed_config": {"zero_stage": 3}}, "3"),
    ],
)
def test_accelerate_file_keys(name: str, file: dict[str, object], value: object) -> None:
    assert resolve(name, None, {}, file=file)[0] == value


def test_bad_file_value_names_the_file_and_key() -> None:
    with pytest.raises(ValueError, match=r"'fp17' \(from file c.yaml: mixed_precision\) is not one of"):
        resolve("mixed_precision", None, {}, file={"mixed_precision": "fp17"}, file_path="c.yaml")


def test_derived_values_sit_at_the_environment_level() -> None:
    derived = {"num_machines": (4, "env SLURM_NNODES")}
    assert resolve("num_machines", None, {}, file={"num_machines": 2}, derived=derived) == (4, "env SLURM_NNODES")
    assert resolve("num_machines", None, {}, flag="3", derived=derived) == (3, "flag --num_machines")


def test_resolve_all_covers_every_setting() -> None:
    out = resolve_all(environ={})
    assert set(out) == set(SETTINGS) and all(source == "default" for _, source in out.values())
